/*
 * alloc/scope.h — the calling thread's scope as the fast paths see it (alloc/scope.c owns it).
 *
 * sa_scope_tls.flags is the union of the flags of every open scope of whatever scope state is
 * current on this thread (the thread's own, or a coroutine's installed with sa_scope_swap):
 * the one thread-local load an allocation pays for the scope layer. Written only by the
 * owning thread (scope save, restore, swap), so it is never read stale by that thread.
 */
#ifndef SA_SCOPE_H
#define SA_SCOPE_H

#include "alloc/policy.h"

#define SA_SCOPE_MAX_SET   9  /* open scopes that set a flag: disjoint bits, at most 9 */
#define SA_SCOPE_MAX_EARLY 16 /* scopes restored out of order, waiting for inner ones */

/* One scope state (a thread's, or a coroutine's: struct sa_scope_state is its public face). */
struct sa_scope_rec {
	sa_flags_t flags; /* union of set[].bits */
	uint32_t depth;	  /* open scopes (saves not restored yet) */
	uint32_t nset;	  /* entries in set[] */
	uint32_t nearly;  /* entries in early[] */
	struct {
		uint32_t depth;	  /* the save that set these bits */
		sa_flags_t bits;  /* bits it newly set (disjoint from every other entry's) */
		const void *site; /* where it was saved (named in misuse reports) */
	} set[SA_SCOPE_MAX_SET];
	uint32_t early[SA_SCOPE_MAX_EARLY]; /* depths restored early, ascending */
	uint32_t *early_ext;		    /* more of them: metadata, early_cap entries */
	uint32_t early_cap;
};

/* per-thread counters (alloc/scope.c): [flag bit] allocations under a scope with it, saves,
 * swaps */
#define SA_SCOPE_C_SAVES  9
#define SA_SCOPE_C_SWAPS  10
#define SA_SCOPE_COUNTERS 11

struct sa_scope_tls {
	sa_flags_t flags; /* == cur()->flags: what the fast paths read */
	uint32_t pad;
	struct sa_scope_rec *cur; /* NULL: &own */
	_Atomic uint64_t *counts; /* this thread's counters, claimed at first use */
	struct sa_scope_rec own;
};

#pragma GCC visibility push(hidden)
extern __thread struct sa_scope_tls sa_scope_tls __attribute__((tls_model("initial-exec")));
#pragma GCC visibility pop

/* The scope's flags, for the fast paths: one thread-local load. */
static inline __attribute__((always_inline)) sa_flags_t sa_scope_flags(void)
{
	return sa_scope_tls.flags;
}

/* The flags an allocation runs with: the call's, the scope's, and what they imply. */
static inline sa_flags_t sa_flags_effective(sa_flags_t flags)
{
	flags |= sa_scope_tls.flags;
	if (flags & SA_NOIO)
		flags |= SA_NOFS;
	return flags;
}

_Atomic uint64_t *sa_scope_claim_counters(void);

/* Only the owning thread writes its counters: a plain increment (relaxed load and store). */
static inline void sa_scope_bump(_Atomic uint64_t *n, unsigned i)
{
	atomic_store_explicit(&n[i], atomic_load_explicit(&n[i], memory_order_relaxed) + 1,
			      memory_order_relaxed);
}

/* Count an allocation made under scope flags sf (sf != 0), once per flag. */
static inline void sa_scope_count_alloc(sa_flags_t sf)
{
	_Atomic uint64_t *n = sa_scope_tls.counts;
	if (SA_UNLIKELY(!n))
		n = sa_scope_claim_counters();
	do
		sa_scope_bump(n, (unsigned)__builtin_ctz(sf));
	while ((sf &= sf - 1) != 0);
}

#endif
