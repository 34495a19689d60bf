/*
 * alloc/cache_inline.h — the allocation fast path of a cache, for sa_cache_alloc and the
 * malloc classes (alloc/cache.c, alloc/malloc.c): one thread-local load for the scope layer,
 * one rseq pop; everything else out of line.
 *
 * ra is the return address at the public entry (the program's call site): only the slow paths
 * keep it (sa_caller), for the owner tracking of debugged caches (alloc/debug.c).
 */
#ifndef SA_CACHE_INLINE_H
#define SA_CACHE_INLINE_H

#include "alloc/scope.h"
#include "sheaf/pcs_inline.h"

static inline __attribute__((always_inline)) void *
sa_cache_alloc_ra(struct sa_cache *c, sa_flags_t flags, const void *ra)
{
	/* the scope layer's one thread-local load; SA_ZERO and SA_PIN leave the fast path too */
	if (SA_UNLIKELY(sa_scope_flags() | (flags & (SA_ZERO | SA_PIN)))) {
		sa_caller = ra;
		return sa_cache_alloc_special(c, flags);
	}
	int why = 0;
	void *obj = sa_pcs_pop_fast(c, &why);
	if (SA_LIKELY(obj != NULL))
		return obj;
	sa_caller = ra;
	return sa_pcs_alloc_slow(c, flags, why);
}

#endif
