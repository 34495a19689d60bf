/*
 * bench/programs/glibc_malloc.c — an LD_PRELOAD library that gives a program glibc's malloc back.
 *
 * For the "glibc" column of bench/programs.sh when the program itself is linked with another
 * malloc (Debian links redis-server with libjemalloc.so.2, which then serves malloc/free for the
 * whole process: without a preload the "glibc" column would measure jemalloc). Every name that
 * the malloc replacements on this system export and glibc also has is forwarded to glibc's own
 * entry point (__libc_*), and malloc_usable_size to libc.so.6's (looked up in that object, not
 * in the global scope, where the linked malloc would win). Names only the linked allocator has
 * (jemalloc's mallctl, nallocx, ...) stay the linked allocator's: a program only asks them
 * about sizes and statistics.
 *
 * Built by bench/programs.sh: cc -O2 -shared -fPIC -o libglibc_malloc.so glibc_malloc.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>

extern void *__libc_malloc(size_t size);
extern void __libc_free(void *p);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_memalign(size_t align, size_t size);
extern void *__libc_valloc(size_t size);
extern void *__libc_pvalloc(size_t size);

#define API __attribute__((visibility("default")))

API void *malloc(size_t size)
{
	return __libc_malloc(size);
}
API void free(void *p)
{
	__libc_free(p);
}
API void *calloc(size_t n, size_t size)
{
	return __libc_calloc(n, size);
}
API void *realloc(void *p, size_t size)
{
	return __libc_realloc(p, size);
}
API void *memalign(size_t align, size_t size)
{
	return __libc_memalign(align, size);
}
API void *valloc(size_t size)
{
	return __libc_valloc(size);
}
API void *pvalloc(size_t size)
{
	return __libc_pvalloc(size);
}

API void *aligned_alloc(size_t align, size_t size)
{
	if (!align || (align & (align - 1))) {
		errno = EINVAL;
		return NULL;
	}
	return __libc_memalign(align, size);
}

API int posix_memalign(void **memptr, size_t align, size_t size)
{
	if (!align || (align & (align - 1)) || align % sizeof(void *))
		return EINVAL;
	void *p = __libc_memalign(align, size);
	if (!p)
		return ENOMEM;
	*memptr = p;
	return 0;
}

API void *reallocarray(void *p, size_t n, size_t size)
{
	size_t bytes;
	if (__builtin_mul_overflow(n, size, &bytes)) {
		errno = ENOMEM;
		return NULL;
	}
	return __libc_realloc(p, bytes);
}

API size_t malloc_usable_size(void *p)
{
	static size_t (*libc_usable)(void *);
	if (!libc_usable) {
		void *h = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
		libc_usable = h ? (size_t(*)(void *))dlsym(h, "malloc_usable_size") : NULL;
		if (!libc_usable)
			return 0;
	}
	return libc_usable(p);
}
