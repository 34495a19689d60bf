/*
 * alloc/cache_inline.h — the allocation fast path of a cache, for sa_cache_alloc and the
 * malloc classes (alloc/cache.c, alloc/malloc.c): one thread-local load for the scope layer,
 * one rseq pop; everything else out of line, as tail calls (no stack frame).
 *
 * Inlined into the public entry points, so __builtin_return_address(0) is the program's call
 * site: only the slow paths keep it (sa_caller), for the owner tracking of debugged caches
 * (alloc/debug.c). keyed (a constant): a malloc class, whose objects' second word held the
 * free key (sa_free_keyed), cleared here on the fast path when the class is keyed (not under
 * free_check=light or debug=, where the block is not touched); the slow paths clear it
 * themselves (every keyed cache's object), so a later free is not mistaken for a double free.
 */
#ifndef SA_CACHE_INLINE_H
#define SA_CACHE_INLINE_H

#include "alloc/scope.h"
#include "sheaf/pcs_inline.h"

static inline __attribute__((always_inline)) void *sa_cache_alloc_fast(struct sa_cache *c,
								       sa_flags_t flags, bool keyed)
{
	/* the scope layer's one thread-local load; SA_ZERO and SA_PIN leave the fast path too */
	if (SA_UNLIKELY(sa_scope_flags() | (flags & (SA_ZERO | SA_PIN)))) {
		sa_caller = __builtin_return_address(0);
		return sa_cache_alloc_special(c, flags);
	}
	int why = 0;
	void *obj = sa_pcs_pop_fast(c, &why);
	if (SA_LIKELY(obj != NULL)) {
		if (keyed && (c->flags & SA_CACHE_KEYED_)) /* not under free_check=light */
			((uint64_t *)obj)[1] = 0;
		return obj;
	}
	sa_caller = __builtin_return_address(0);
	return sa_pcs_alloc_slow(c, flags, why);
}

#endif
