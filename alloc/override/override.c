/*
 * alloc/override/override.c — the standard malloc family, for build/libsheafalloc_malloc.so
 * only (docs/design.md §10). Every function forwards to its sa_* counterpart; nothing else
 * lives here. glibc's rules for a replacement malloc: malloc, free, calloc, realloc and the
 * aligned family must all be replaced together, malloc_usable_size must agree with them, and
 * the replacement must cope with being called before its own initialization (it does: a NULL
 * class table entry sends the call to the initializing slow path).
 */
#include <errno.h>
#include <stddef.h>

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
