/*
 * alloc/decay.c — giving back what the program stopped using (docs/design.md §14).
 *
 * Owns: the decay clock (sa_decay_next) and each cache's idleness signature (c->decay_ops).
 *
 * Free objects wait in three places before their memory can leave: per-CPU sheaves, the barns'
 * full sheaves, and empty slabs a cache node keeps for reuse. All three are there for a reuse
 * that is coming; when none comes, they pin slabs (one cached object keeps a whole slab), the
 * slabs pin units, and the units are never purged: after a program's peak, a few dozen cached
 * objects of each size class kept 90% of the peak resident (bench/rss_bench: 140 MiB held for
 * 5 MiB live, where sa_trim brought it to 21 MiB). Decay returns them by itself, a little at a
 * time, from what the program did not use:
 *   - every decay_ms (option, default 250; 0: never), the first slow path of any cache after the
 *     deadline runs one decay pass (sa_decay_tick; one thread at a time, by a compare-exchange
 *     on the deadline);
 *   - a barn gives three quarters (rounded up) of its low watermark of full sheaves back to the
 *     slabs: sheaves that stayed in the barn through the whole interval (barn/barn.c);
 *   - a cache node releases its low watermark of empty slabs: slabs no refill took
 *     (alloc/slab.c);
 *   - a cache with no allocation or free at all in the interval (its cumulative counters and its
 *     installed sheaves' operation counts unchanged) gives everything back: barns, every empty
 *     slab, and its per-CPU sheaves when they hold anything (a drain, which fences every CPU:
 *     at most SA_DECAY_DRAINS caches a pass, and once per idle spell: a drained idle cache has
 *     nothing left to drain). However small the objects, each one cached can keep a slab.
 *   - freed huge mappings kept for reuse longer than purge_ms are unmapped (otherwise only the
 *     next huge allocation or free looks at their age);
 *   - then the page layer's purge round goes on (its own purge_ms clock), up to
 *     SA_DECAY_PURGE_STEPS steps: a program that only allocates from slabs it has never frees or
 *     allocates units, which is what drives a round otherwise (a round left open kept 33 MiB of
 *     freed units resident through the whole idle end of bench/rss_bench).
 * What decay costs the program: a sheaf or slab given back and then needed again is a refill
 * from slabs or a new slab, once per interval at most for each.
 *
 * Locking: the pass holds sa_caches_lock (tried: a busy list skips this pass) and takes barn,
 * cnode and drain locks under it in rank order; drain locks only by try (a thread that holds
 * one may come here through an allocation). It runs only where the caller may block and call
 * the system, and never inside a reclaim round. c->decay_ops is written only by the pass.
 */
#include "alloc/scope.h"

_Atomic uint64_t sa_decay_next; /* sa_now_ns() of the next pass; 0: not yet armed */

#define SA_DECAY_DRAINS	     8
#define SA_DECAY_PURGE_STEPS 64 /* of a purge round (8 madvise calls each) in one pass */

/* Every allocation and free this cache ever made, as far as the statistics see it now: the
 * folded counters plus the installed sheaves' operations. Unchanged across an interval: idle. */
static uint64_t ops_signature(struct sa_cache *c)
{
	uint64_t a, f, cached;
	sa_pcs_stats_racy(c, &a, &f, &cached);
	return a + f + sa_cache_stat_racy(c, SA_STAT_ALLOC_FAST) +
	       sa_cache_stat_racy(c, SA_STAT_FREE_FAST) +
	       sa_cache_stat_racy(c, SA_STAT_ALLOC_SLOW) +
	       sa_cache_stat_racy(c, SA_STAT_FREE_SLOW) +
	       sa_cache_stat_racy(c, SA_STAT_SHEAF_ALLOC);
}

static void decay_cache(struct sa_cache *c, unsigned *drains)
{
	uint64_t sig = ops_signature(c);
	bool idle = sig == c->decay_ops;
	c->decay_ops = sig;
	if (idle && *drains < SA_DECAY_DRAINS) {
		uint64_t a, f, cached;
		sa_pcs_stats_racy(c, &a, &f, &cached);
		if (cached && sa_pcs_drain_try(c))
			(*drains)++;
	}
	for (int i = 0; i < sa_nr_nodes; i++) {
		struct sa_barn *b = &c->nodes[i]->barn;
		for (struct sa_sheaf *s = sa_barn_take_unused(b, idle); s;) {
			struct sa_sheaf *next = s->next;
			s->next = NULL;
			sa_sheaf_flush(c, s);
			sa_sheaf_dispose(c, s);
			s = next;
		}
		sa_slab_decay(c, i, idle);
	}
}

void sa_decay_run(sa_flags_t flags)
{
	uint64_t now = sa_now_ns();
	uint64_t next = atomic_load_explicit(&sa_decay_next, memory_order_relaxed);
	uint64_t ivl = (uint64_t)sa_opt.decay_ms * 1000000ull;
	if (!ivl || now < next || !sa_may_block(flags) || sa_in_reclaim)
		return;
	if (!atomic_compare_exchange_strong(&sa_decay_next, &next, now + ivl))
		return; /* another thread runs this pass */
	if (!next)
		return; /* the first call arms the clock: an interval must pass first */
	if (pthread_mutex_trylock(&sa_caches_lock))
		return;
	unsigned drains = 0;
	for (struct sa_cache *c = sa_caches; c; c = c->next)
		decay_cache(c, &drains);
	pthread_mutex_unlock(&sa_caches_lock);
	sa_malloc_huge_cache_age();
	/* a round is a few madvise calls per step, each step set off by a unit allocation or free;
	 * a program that no longer makes those would leave it unfinished: finish it here */
	for (int i = 0; i < SA_DECAY_PURGE_STEPS && sa_segment_purge_tick(); i++)
		;
}
