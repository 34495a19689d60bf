/*
 * alloc/override/cxx.c — C++'s global operator new and delete, for build/libsheafalloc_malloc.so
 * only (docs/design.md §10). Without them a C++ program reaches us through libstdc++'s operators,
 * one more call and a PLT jump per allocation (mimalloc-bench's alloc-test: 3% of its time);
 * jemalloc and mimalloc replace them too.
 *
 * Semantics, as libstdc++'s: new never returns NULL; on failure it calls the new-handler
 * (std::get_new_handler) and retries while there is one, else throws std::bad_alloc (through
 * libstdc++'s std::__throw_bad_alloc, weak: a C program has no libstdc++ and never calls these).
 * The nothrow forms of new are left to libstdc++, which calls ours inside a try block: a
 * handler that throws bad_alloc must make them return nullptr, and C cannot catch it
 * (gperftools' tcmalloc_unittest checks that the handler runs). Sized and aligned deletes ignore the size and alignment: every
 * block knows its own. new(0) returns a unique pointer.
 * The unwind tables of this file (-fasynchronous-unwind-tables, the x86_64 default) let
 * bad_alloc propagate through new_failed.
 */
#include <stdlib.h>

#include "alloc/internal.h"

typedef void (*sa_new_handler_t)(void);
/* libstdc++: std::get_new_handler() and std::__throw_bad_alloc() */
extern sa_new_handler_t _ZSt15get_new_handlerv(void) __attribute__((weak));
extern void _ZSt17__throw_bad_allocv(void) __attribute__((weak, noreturn));

static void *try_alloc(size_t size, size_t align)
{
	return align ? sa_memalign(align, size) : sa_malloc(size);
}

static SA_NOINLINE void *new_failed(size_t size, size_t align)
{
	for (;;) {
		sa_new_handler_t h = _ZSt15get_new_handlerv ? _ZSt15get_new_handlerv() : NULL;
		if (!h)
			break;
		h(); /* may throw, or free memory */
		void *p = try_alloc(size, align);
		if (p)
			return p;
	}
	if (_ZSt17__throw_bad_allocv)
		_ZSt17__throw_bad_allocv();
	sa_msg("sheafalloc: operator new(%zu): out of memory and no std::bad_alloc to throw\n",
	       size);
	abort();
}

static inline void *op_new(size_t size)
{
	void *p = sa_malloc(size);
	return SA_LIKELY(p != NULL) ? p : new_failed(size, 0);
}

static inline void *op_new_aligned(size_t size, size_t align)
{
	void *p = sa_memalign(align, size);
	return SA_LIKELY(p != NULL) ? p : new_failed(size, align);
}

/* operator new(size_t), new[](size_t). The nothrow forms are libstdc++'s: they call these and
 * catch bad_alloc, which C cannot do, so the new-handler runs for them as the standard says. */
SA_API void *_Znwm(size_t size)
{
	return op_new(size);
}
SA_API void *_Znam(size_t size)
{
	return op_new(size);
}

/* operator new(size_t, align_val_t) (C++17); the nothrow forms: as above */
SA_API void *_ZnwmSt11align_val_t(size_t size, size_t align)
{
	return op_new_aligned(size, align);
}
SA_API void *_ZnamSt11align_val_t(size_t size, size_t align)
{
	return op_new_aligned(size, align);
}

/* operator delete: plain, sized (C++14), nothrow, aligned (C++17) */
SA_API void _ZdlPv(void *p)
{
	sa_free(p);
}
SA_API void _ZdaPv(void *p)
{
	sa_free(p);
}
SA_API void _ZdlPvm(void *p, size_t size)
{
	(void)size;
	sa_free(p);
}
SA_API void _ZdaPvm(void *p, size_t size)
{
	(void)size;
	sa_free(p);
}
SA_API void _ZdlPvRKSt9nothrow_t(void *p, const void *nt)
{
	(void)nt;
	sa_free(p);
}
SA_API void _ZdaPvRKSt9nothrow_t(void *p, const void *nt)
{
	(void)nt;
	sa_free(p);
}
SA_API void _ZdlPvSt11align_val_t(void *p, size_t align)
{
	(void)align;
	sa_free(p);
}
SA_API void _ZdaPvSt11align_val_t(void *p, size_t align)
{
	(void)align;
	sa_free(p);
}
SA_API void _ZdlPvmSt11align_val_t(void *p, size_t size, size_t align)
{
	(void)size;
	(void)align;
	sa_free(p);
}
SA_API void _ZdaPvmSt11align_val_t(void *p, size_t size, size_t align)
{
	(void)size;
	(void)align;
	sa_free(p);
}
SA_API void _ZdlPvSt11align_val_tRKSt9nothrow_t(void *p, size_t align, const void *nt)
{
	(void)align;
	(void)nt;
	sa_free(p);
}
SA_API void _ZdaPvSt11align_val_tRKSt9nothrow_t(void *p, size_t align, const void *nt)
{
	(void)align;
	(void)nt;
	sa_free(p);
}
