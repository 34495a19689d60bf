/*
 * alloc/policy.h — the whole allocation policy: what each flag lets a slow path do
 * (docs/scopes.md has the reasoning; docs/design.md §12 the machinery).
 *
 * Every slow path asks these questions instead of testing flag bits itself, with the flags
 * the allocation really runs with: the call's flags merged with the calling thread's scope
 * (sa_current_flags, alloc/scope.h). The fast paths (a pop from or push to this CPU's main
 * sheaf) never block, never map and never reclaim, so no flag changes them; only SA_ZERO and
 * SA_PIN (and a scope, for counting) send an allocation off the fast path.
 *
 *   question              no for                          used by
 *   may_block             SA_NOWAIT                       every lock: try-lock instead; a
 *                                                         free that finds a lock busy defers
 *   may_syscall           SA_NOWAIT                       mmap, munmap, madvise, mlock,
 *                                                         membarrier, futex waits, the rseq
 *                                                         registration of a new thread
 *   may_reclaim           SA_NOWAIT, SA_NORECLAIM,        the limit and a failed mapping:
 *                         inside reclaim (sa_in_reclaim)  give back our free memory, then call
 *                                                         shrinkers, then retry
 *   shrinker_allowed      NOWAIT, NORECLAIM, and: NOFS    a registered shrinker of these
 *                         forbids SA_SHRINK_FS; SA_NOIO   classes
 *                         forbids SA_SHRINK_IO and FS
 *   may_use_reserve       all but SA_HIGH, SA_NORECLAIM,  the emergency reserve, once the
 *                         SA_NOFAIL                       limit or the try-locks said no
 *   must_not_fail         all but SA_NOFAIL               keep reclaiming (not under
 *                                                         SA_NOWAIT: abort there, a misuse)
 *   warn                  SA_NOWARN                       a message on failure
 *
 * Scopable flags (sa_memalloc_flags_save): those that only narrow what reclaim may do
 * (NOFS, NOIO, NORECLAIM), NOWAIT, and modifiers that stay correct when nested (ZERO, NOWARN,
 * HIGH, PIN). SA_NOFAIL is not: a scoped NOFAIL would turn every nested allocation whose
 * caller can handle NULL into one that never returns.
 */
#ifndef SA_POLICY_H
#define SA_POLICY_H

#include "alloc/internal.h"

#define SA_SCOPABLE \
	(SA_NOWAIT | SA_NOFS | SA_NOIO | SA_NORECLAIM | SA_ZERO | SA_NOWARN | SA_HIGH | SA_PIN)

#pragma GCC visibility push(hidden)
extern __thread int sa_in_reclaim __attribute__((tls_model("initial-exec")));
#pragma GCC visibility pop

static inline bool sa_may_block(sa_flags_t f)
{
	return !(f & SA_NOWAIT);
}

static inline bool sa_may_syscall(sa_flags_t f)
{
	return !(f & SA_NOWAIT);
}

static inline bool sa_may_reclaim(sa_flags_t f)
{
	return !(f & (SA_NOWAIT | SA_NORECLAIM)) && !sa_in_reclaim;
}

/* (asked by a reclaim round, which has checked sa_may_reclaim at its start) */
static inline bool sa_shrinker_allowed(sa_flags_t f, unsigned classes)
{
	if (f & (SA_NOWAIT | SA_NORECLAIM))
		return false;
	if ((classes & SA_SHRINK_FS) && (f & (SA_NOFS | SA_NOIO)))
		return false;
	if ((classes & SA_SHRINK_IO) && (f & SA_NOIO))
		return false;
	return true;
}

static inline bool sa_may_use_reserve(sa_flags_t f)
{
	return (f & (SA_HIGH | SA_NORECLAIM | SA_NOFAIL)) && !(f & SA_F_NORESERVE);
}

static inline bool sa_must_not_fail(sa_flags_t f)
{
	return f & SA_NOFAIL;
}

static inline bool sa_warn(sa_flags_t f)
{
	return !(f & SA_NOWARN);
}

#endif
