/*
 * alloc/override/override.c — the standard malloc family, for build/libsheafalloc_malloc.so
 * only (docs/design.md §10). Every function forwards to its sa_* counterpart, but the
 * statistics functions at the end (mallinfo, mallinfo2, malloc_stats, malloc_info), which
 * report sa_malloc_totals. glibc's rules for a replacement malloc: malloc, free, calloc,
 * realloc and the aligned family must all be replaced together, malloc_usable_size must agree
 * with them, and
 * the replacement must cope with being called before its own initialization (it does: a NULL
 * class table entry sends the call to the initializing slow path).
 */
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>

#include "alloc/internal.h"

SA_API void *malloc(size_t size)
{
	return sa_malloc(size);
}

SA_API void free(void *p)
{
	if (p)
		sa_free(p);
}

SA_API void *calloc(size_t nmemb, size_t size)
{
	return sa_calloc(nmemb, size);
}

SA_API void *realloc(void *p, size_t size)
{
	return sa_realloc(p, size);
}

SA_API void *reallocarray(void *p, size_t nmemb, size_t size)
{
	return sa_reallocarray(p, nmemb, size);
}

SA_API void *aligned_alloc(size_t align, size_t size)
{
	return sa_aligned_alloc(align, size);
}

SA_API int posix_memalign(void **memptr, size_t align, size_t size)
{
	return sa_posix_memalign(memptr, align, size);
}

SA_API void *memalign(size_t align, size_t size)
{
	return sa_memalign(align, size);
}

SA_API void *valloc(size_t size)
{
	return sa_valloc(size);
}

SA_API void *pvalloc(size_t size)
{
	return sa_pvalloc(size);
}

SA_API size_t malloc_usable_size(void *p)
{
	return sa_malloc_usable_size(p);
}

SA_API int malloc_trim(size_t pad)
{
	(void)pad;
	size_t before = sa_memory_held();
	sa_trim();
	return sa_memory_held() < before;
}

/*
 * Statistics with glibc's interfaces: without them a call reaches glibc's own malloc, which
 * describes a heap nobody uses (glibc's tests tst-mallinfo2 and tst-malloc-tcache-leak then fail,
 * as they do under jemalloc). The numbers come from sa_malloc_totals:
 *   arena     bytes of segment memory that may be resident (small and large blocks, free
 *             objects, dirty free units)
 *   uordblks  bytes of objects in use in every cache (at their class size) and of large blocks
 *   fordblks  arena - uordblks
 *   ordblks   free objects kept in sheaves and barns, ready for reuse
 *   hblks, hblkhd  huge blocks (each its own mapping) and their bytes
 *   keepcost  dirty free bytes: what malloc_trim would give back now
 *   smblks, fsmblks, usmblks  0 (no fastbins; glibc's usmblks is always 0)
 */
static struct mallinfo2 info2(void)
{
	struct sa_malloc_totals t;
	sa_malloc_totals(&t);
	size_t cached_objs = 0;
	for (unsigned i = 0; i < SA_MALLOC_CLASSES; i++)
		cached_objs += t.cls[i].cached;
	struct mallinfo2 m = {0};
	m.arena = t.resident;
	m.ordblks = cached_objs;
	m.hblks = t.huge_blocks;
	m.hblkhd = t.huge;
	m.uordblks = t.in_use;
	m.fordblks = t.resident > t.in_use ? t.resident - t.in_use : 0;
	m.keepcost = t.dirty;
	return m;
}

SA_API struct mallinfo2 mallinfo2(void)
{
	return info2();
}

static int clamp_int(size_t v)
{
	return v > INT_MAX ? INT_MAX : (int)v;
}

/* The int version: each field clamped to INT_MAX (glibc lets them wrap). */
SA_API struct mallinfo mallinfo(void)
{
	struct mallinfo2 m2 = info2();
	struct mallinfo m = {0};
	m.arena = clamp_int(m2.arena);
	m.ordblks = clamp_int(m2.ordblks);
	m.hblks = clamp_int(m2.hblks);
	m.hblkhd = clamp_int(m2.hblkhd);
	m.uordblks = clamp_int(m2.uordblks);
	m.fordblks = clamp_int(m2.fordblks);
	m.keepcost = clamp_int(m2.keepcost);
	return m;
}

/* To stderr, with the lines glibc's has (tools grep for them); not a cancellation point. */
SA_API void malloc_stats(void)
{
	struct sa_malloc_totals t;
	sa_malloc_totals(&t);
	int old;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
	fprintf(stderr,
		"sheafalloc segments (blocks up to 2 MiB):\n"
		"system bytes     = %10zu\n"
		"in use bytes     = %10zu\n"
		"Total (incl. mmap):\n"
		"system bytes     = %10zu\n"
		"in use bytes     = %10zu\n"
		"max mmap regions = %10zu\n"
		"max mmap bytes   = %10zu\n",
		t.resident, t.in_use, t.resident + t.huge + t.huge_cached, t.in_use + t.huge,
		t.huge_max_blocks, t.huge_max);
	fflush(stderr);
	pthread_setcancelstate(old, NULL);
}

/* XML in the shape of glibc's (one heap: the segments; huge blocks as its "mmap" total).
 * As glibc's: options other than 0 return EINVAL (the value, not errno). */
SA_API int malloc_info(int options, FILE *fp)
{
	if (options != 0 || !fp)
		return EINVAL;
	struct sa_malloc_totals t;
	sa_malloc_totals(&t);
	size_t free_bytes = t.resident > t.in_use ? t.resident - t.in_use : 0, free_objs = 0;
	fputs("<malloc version=\"1\">\n<heap nr=\"0\">\n<sizes>\n", fp);
	for (unsigned i = 0, from = 1; i < SA_MALLOC_CLASSES; from = t.cls[i].size + 1, i++) {
		free_objs += t.cls[i].cached;
		if (t.cls[i].cached)
			fprintf(fp, "  <size from=\"%u\" to=\"%u\" total=\"%zu\" count=\"%zu\"/>\n",
				from, t.cls[i].size, (size_t)t.cls[i].cached * t.cls[i].size,
				(size_t)t.cls[i].cached);
	}
	fprintf(fp,
		"</sizes>\n"
		"<total type=\"fast\" count=\"0\" size=\"0\"/>\n"
		"<total type=\"rest\" count=\"%zu\" size=\"%zu\"/>\n"
		"<system type=\"current\" size=\"%zu\"/>\n"
		"<system type=\"max\" size=\"%zu\"/>\n"
		"<aspace type=\"total\" size=\"%zu\"/>\n"
		"<aspace type=\"mprotect\" size=\"%zu\"/>\n"
		"</heap>\n",
		free_objs, free_bytes, t.resident, t.mapped, t.mapped, t.mapped);
	fprintf(fp,
		"<total type=\"fast\" count=\"0\" size=\"0\"/>\n"
		"<total type=\"rest\" count=\"%zu\" size=\"%zu\"/>\n"
		"<total type=\"mmap\" count=\"%zu\" size=\"%zu\"/>\n"
		"<system type=\"current\" size=\"%zu\"/>\n"
		"<system type=\"max\" size=\"%zu\"/>\n"
		"<aspace type=\"total\" size=\"%zu\"/>\n"
		"<aspace type=\"mprotect\" size=\"%zu\"/>\n"
		"</malloc>\n",
		free_objs, free_bytes, t.huge_blocks, t.huge, t.resident + t.huge + t.huge_cached,
		t.mapped + t.huge_max, t.mapped + t.huge + t.huge_cached,
		t.mapped + t.huge + t.huge_cached);
	return 0;
}
