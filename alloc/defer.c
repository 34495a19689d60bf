/*
 * alloc/defer.c — frees that a context which may not wait had to put off (docs/design.md §12).
 *
 * Owns: the deferred list, a fixed array of tagged pointers (no allocation, no lock): a
 * NOWAIT free that finds a lock busy (or would need a system call: munmap, madvise) claims an
 * empty slot with a compare-and-swap and leaves its work there. Whoever next may wait runs
 * them: the start of a slow path that may block, the end of a NOWAIT scope, sa_trim. An entry
 * runs on the thread whose exchange took it out of its slot, so each runs exactly once.
 *
 * The end of a NOWAIT scope runs only what can be done with every lock tried and no system
 * call (sa_deferred_run_try): a scope may end in a signal handler that interrupted its own
 * thread inside the allocator, holding a lock this work needs.
 *
 * Entry: the pointer with its kind in the low 3 bits (objects are at least 8-byte aligned, unit
 * records 64-byte aligned). When every slot is taken, the caller does the work itself as a
 * context that may wait: the one wait left to a NOWAIT free, after SA_DEFER_SLOTS frees were
 * put off with no slow path in between.
 */
#include "alloc/scope.h"

#define SA_DEFER_SLOTS 4096

static uintptr_t _Atomic slots[SA_DEFER_SLOTS];
_Atomic size_t sa_deferred_n;
static _Atomic unsigned hint;

void (*sa_defer_test_hook)(void);

static void run_one(uintptr_t e)
{
	void *p = (void *)(e & ~(uintptr_t)7);
	switch ((enum sa_defer_kind)(e & 7)) {
	case SA_DEFER_FREE:
		sa_free(p);
		break;
	case SA_DEFER_SLAB:
		sa_slab_release_deferred(p);
		break;
	case SA_DEFER_RUN:
		sa_segment_release_deferred(p);
		break;
	case SA_DEFER_RCU:
		sa_free_rcu(p);
		break;
	case SA_DEFER_UNITS:
		sa_segment_units_deferred(p);
		break;
	}
}

void sa_defer(void *p, enum sa_defer_kind kind)
{
	uintptr_t e = (uintptr_t)p | (uintptr_t)kind;
	unsigned start = atomic_load_explicit(&hint, memory_order_relaxed);
	for (unsigned k = 0; k < SA_DEFER_SLOTS; k++) {
		unsigned i = (start + k) & (SA_DEFER_SLOTS - 1);
		uintptr_t expect = 0;
		if (atomic_load_explicit(&slots[i], memory_order_relaxed) == 0 &&
		    atomic_compare_exchange_strong_explicit(
			    &slots[i], &expect, e, memory_order_release, memory_order_relaxed)) {
			atomic_store_explicit(&hint, i + 1, memory_order_relaxed);
			if (SA_UNLIKELY(sa_defer_test_hook != NULL))
				sa_defer_test_hook();
			atomic_fetch_add(&sa_deferred_n, 1);
			sa_gstat_add(SA_G_DEFERRED, 1);
			return;
		}
	}
	/* full: do it now, as a context that may wait (the one wait left to a NOWAIT free) */
	sa_flags_t saved = sa_scope_tls.flags;
	sa_scope_tls.flags &= ~SA_NOWAIT;
	run_one(e);
	sa_scope_tls.flags = saved;
}

void sa_deferred_run(void)
{
	if (!atomic_load_explicit(&sa_deferred_n, memory_order_relaxed) &&
	    !atomic_load_explicit(&sa_deferred_sheaves, memory_order_relaxed))
		return;
	if (!sa_may_block(sa_flags_effective(0)))
		return;
	if (atomic_load_explicit(&sa_deferred_sheaves, memory_order_relaxed)) {
		/* sheaves NOWAIT paths parked on their caches' deferred stacks */
		pthread_mutex_lock(&sa_caches_lock);
		for (struct sa_cache *c = sa_caches; c; c = c->next)
			sa_sheaf_deferred_run(c, 0);
		pthread_mutex_unlock(&sa_caches_lock);
	}
	for (unsigned i = 0; i < SA_DEFER_SLOTS; i++) {
		if (!atomic_load_explicit(&slots[i], memory_order_relaxed))
			continue;
		uintptr_t e = atomic_exchange_explicit(&slots[i], 0, memory_order_acquire);
		if (!e)
			continue;
		atomic_fetch_sub(&sa_deferred_n, 1);
		run_one(e);
	}
}

/* The end of a NOWAIT scope: parked sheaves and object frees, run as NOWAIT (every lock only
 * tried, no system call), at most as many entries as were waiting (one put off again lands in
 * another slot and is not chased). Slab, run and unit releases (system calls) and RCU hand-offs
 * stay for the next context that may wait. */
void sa_deferred_run_try(void)
{
	size_t budget = atomic_load_explicit(&sa_deferred_n, memory_order_relaxed);
	bool sheaves = atomic_load_explicit(&sa_deferred_sheaves, memory_order_relaxed) != 0;
	if (!budget && !sheaves)
		return;
	sa_flags_t saved = sa_scope_tls.flags;
	sa_scope_tls.flags |= SA_NOWAIT;
	if (sheaves && pthread_mutex_trylock(&sa_caches_lock) == 0) {
		for (struct sa_cache *c = sa_caches; c; c = c->next)
			sa_sheaf_deferred_run(c, SA_NOWAIT);
		pthread_mutex_unlock(&sa_caches_lock);
	}
	for (unsigned i = 0; i < SA_DEFER_SLOTS && budget; i++) {
		uintptr_t e = atomic_load_explicit(&slots[i], memory_order_relaxed);
		if (!e || (enum sa_defer_kind)(e & 7) != SA_DEFER_FREE)
			continue;
		if (!atomic_compare_exchange_strong_explicit(&slots[i], &e, 0, memory_order_acquire,
							     memory_order_relaxed))
			continue;
		atomic_fetch_sub(&sa_deferred_n, 1);
		budget--;
		run_one(e); /* sa_free as NOWAIT: put off again if a lock is still busy */
	}
	sa_scope_tls.flags = saved;
}

size_t sa_deferred_count(void)
{
	return atomic_load(&sa_deferred_n) + atomic_load(&sa_deferred_sheaves);
}

/* In the child, with sa_caches_lock held and no other thread: the counters are updated apart
 * from the slots and stacks they count (sa_defer fills a slot, then counts it; a run empties
 * it, then uncounts it; a sheaf is counted, then pushed, and taken, then uncounted), and a
 * parent thread between the two steps never takes the second one here. A count short of the
 * slots leaves an entry that sa_deferred_run skips (it looks only when a count is non-zero) and
 * then, run, underflows the count; a count above them never drops to 0 (deferred_now, and every
 * slow path walking the slots for nothing). The counts are made to match what is there; the
 * entries and sheaves a parent thread had taken out are lost to the child, like every object
 * another parent thread held. */
void sa_deferred_after_fork(void)
{
	size_t n = 0;
	for (unsigned i = 0; i < SA_DEFER_SLOTS; i++)
		n += atomic_load_explicit(&slots[i], memory_order_relaxed) != 0;
	atomic_store(&sa_deferred_n, n);
	size_t sheaves = 0;
	for (struct sa_cache *c = sa_caches; c; c = c->next) {
		uint64_t objs = 0;
		for (struct sa_sheaf *s = atomic_load(&c->deferred); s; s = s->next, sheaves++)
			objs += s->size;
		atomic_store(&c->deferred_objs, objs);
	}
	atomic_store(&sa_deferred_sheaves, sheaves);
}

/* Units of the runs parked as SA_DEFER_UNITS (free and dirty in the counters, not yet in their
 * segments' bitmaps); for the child's recount of the page layer (no other thread). */
uint64_t sa_deferred_units_parked(void)
{
	uint64_t n = 0;
	for (unsigned i = 0; i < SA_DEFER_SLOTS; i++) {
		uintptr_t e = atomic_load_explicit(&slots[i], memory_order_relaxed);
		if (e && (enum sa_defer_kind)(e & 7) == SA_DEFER_UNITS)
			n += ((struct sa_slab *)(e & ~(uintptr_t)7))->nunits;
	}
	return n;
}
