/*
 * bench/lib_of.h — which shared library a function lives in, for the benchmarks' labels and
 * their check that an LD_PRELOAD or dlopen really serves the calls (core_bench.c, malloc_bench.c,
 * rcu_bench.c, rss_bench.c). The including file defines _GNU_SOURCE first (dladdr).
 */
#ifndef SAB_LIB_OF_H
#define SAB_LIB_OF_H

#include <dlfcn.h>
#include <string.h>

/* The file name (no directory) of the object that holds fn; "?" when dladdr cannot tell. */
static inline const char *lib_of(const void *fn)
{
	Dl_info info;
	if (!fn || !dladdr(fn, &info) || !info.dli_fname)
		return "?";
	const char *slash = strrchr(info.dli_fname, '/');
	return slash ? slash + 1 : info.dli_fname;
}

#endif
