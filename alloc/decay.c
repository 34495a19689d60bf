/*
 * alloc/decay.c — giving back what the program stopped using (docs/design.md §14).
 *
 * Owns: the decay clock (sa_decay_next), each cache's idleness signature (c->decay_ops), and
 * the background thread of background=1 (below).
 *
 * Free objects wait in three places before their memory can leave: per-CPU sheaves, the barns'
 * full sheaves, and empty slabs a cache node keeps for reuse. All three are there for a reuse
 * that is coming; when none comes, they pin slabs (one cached object keeps a whole slab), the
 * slabs pin units, and the units are never purged: after a program's peak, a few dozen cached
 * objects of each size class kept 90% of the peak resident (bench/rss_bench: 140 MiB held for
 * 5 MiB live, where sa_trim brought it to 21 MiB). Decay returns them by itself, a little at a
 * time, from what the program did not use:
 *   - every decay_ms (option, default 250; 0: never), the first slow path of any cache after the
 *     deadline runs one decay pass (decay_tick in sheaf/pcs.c looks at one slow path in 32 of
 *     each thread; one thread at a time runs it, by a compare-exchange on the deadline);
 *   - a barn gives three quarters (rounded up) of its low watermark of full sheaves back to the
 *     slabs: sheaves that stayed in the barn through the whole interval (barn/barn.c);
 *   - a cache node releases its low watermark of empty slabs: slabs no refill took
 *     (alloc/slab.c);
 *   - a cache with no allocation or free at all in the interval (its cumulative counters and its
 *     installed sheaves' operation counts unchanged) gives everything back: barns, every empty
 *     slab, and its per-CPU main and spare sheaves when they hold anything (the rcu sheaves are
 *     the RCU thread's, alloc/rcu.c; a drain, which fences every CPU:
 *     at most SA_DECAY_DRAINS caches a pass, and once per idle spell: a drained idle cache has
 *     nothing left to drain). However small the objects, each one cached can keep a slab.
 *   - freed huge mappings kept for reuse longer than purge_ms are unmapped (otherwise only the
 *     next huge allocation or free looks at their age);
 *   - the page layer's purge round (its own purge_ms clock) goes on a step, and between passes a
 *     step at each thread's 32nd slow path: before, only unit allocations and frees drove it,
 *     and a program that works from the slabs it has makes neither (a round left open kept
 *     33 MiB of freed units resident through the whole idle end of bench/rss_bench);
 *   - a pass has a budget (SA_DECAY_*: two drains, 32 sheaves, 32 slabs); one that spends it
 *     stops, and the next comes soon and starts where it stopped. The unit frees a pass makes
 *     do not step the purge round each (sa_in_decay): each step drops up to 1 MiB of pages,
 *     and forty of them in one pass made an allocation wait 3 ms.
 * What decay costs the program: a sheaf or slab given back and then needed again is a refill
 * from slabs or a new slab, once per interval at most for each.
 *
 * Locking: the pass holds sa_caches_lock (tried: a busy list skips this pass) and takes barn,
 * cnode and drain locks under it in rank order; drain locks only by try (a thread that holds
 * one may come here through an allocation). It runs only where the caller may block and call
 * the system, and never inside a reclaim round. c->decay_ops is written only by the pass.
 */
#include <errno.h>
#include <signal.h>
#include <time.h>

#include "alloc/scope.h"

_Atomic uint64_t sa_decay_next; /* sa_now_ns() of the next pass; 0: not yet armed */
static unsigned resume_at;	/* sa_caches_lock: where a pass cut short goes on */
__thread bool sa_in_decay;

/* A pass's budget: what one allocation that happens to run it may be made to wait for. A pass
 * that spends it stops there and the next one comes after decay_ms / SA_DECAY_SOON_DIV,
 * starting at the cache it stopped at: a big backlog (after a program's peak) goes back in
 * steps of about a hundred microseconds instead of one pause (the first pass after rss_bench's
 * free took 20 ms in one go before the budget). */
#define SA_DECAY_DRAINS	  2  /* per-CPU drains (a fence of every CPU each) */
#define SA_DECAY_SHEAVES  32 /* full sheaves flushed to their slabs */
#define SA_DECAY_SLABS	  32 /* empty slabs released */
#define SA_DECAY_SOON_DIV 16

struct budget {
	unsigned drains, sheaves, slabs;
	bool cut; /* something was left for the next pass */
};

/* Every allocation and free this cache ever made, as far as the statistics see it now: the
 * folded counters plus the installed sheaves' operations. Unchanged across an interval: idle.
 * *cached: the objects in its per-CPU sheaves now. */
static uint64_t ops_signature(struct sa_cache *c, uint64_t *cached)
{
	uint64_t a, f;
	sa_pcs_stats_racy(c, &a, &f, cached);
	return a + f + sa_cache_stat_racy(c, SA_STAT_ALLOC_FAST) +
	       sa_cache_stat_racy(c, SA_STAT_FREE_FAST) +
	       sa_cache_stat_racy(c, SA_STAT_ALLOC_SLOW) +
	       sa_cache_stat_racy(c, SA_STAT_FREE_SLOW) +
	       sa_cache_stat_racy(c, SA_STAT_SHEAF_ALLOC);
}

static void decay_cache(struct sa_cache *c, struct budget *bud)
{
	uint64_t cached;
	uint64_t sig = ops_signature(c, &cached);
	bool idle = sig == c->decay_ops;
	c->decay_ops = sig;
	if (idle) {
		if (cached && !bud->drains)
			bud->cut = true;
		else if (cached && sa_pcs_drain_try(c))
			bud->drains--;
	}
	for (int i = 0; i < sa_nr_nodes && !bud->cut; i++) {
		struct sa_barn *b = &c->nodes[i]->barn;
		for (struct sa_sheaf *s = sa_barn_take_unused(b, idle, bud->sheaves); s;) {
			struct sa_sheaf *next = s->next;
			s->next = NULL;
			sa_sheaf_flush(c, s);
			sa_sheaf_dispose(c, s);
			s = next;
			bud->sheaves--;
		}
		bud->slabs -= sa_slab_decay(c, i, idle, bud->slabs);
		if (!bud->sheaves || !bud->slabs)
			bud->cut = true;
	}
}

/* ------------------------------------------------------------------ background thread ------ */
/* With background=1 a thread runs what the slow paths would: a pass every decay_ms and the purge
 * round's steps, so a program that stops making allocator calls altogether still gets its
 * memory back (without it, what was freed and not yet purged stays until the next call). It
 * starts at the first pass a slow path runs (pthread_create allocates: not under a lock, not
 * in a NOWAIT context), never exits, and does not exist in a forked child until the child's
 * own first pass. When a pass and the purge find nothing to do, it sleeps twice as long next
 * time, up to SA_BG_SLEEP_MAX_MS: an idle program is woken a few times a minute, not four
 * times a second. It never allocates in its loop and opens no scope. */
#define SA_BG_SLEEP_MAX_MS 8000
static _Atomic int bg_state; /* 0 none, 1 being created, 2 running */

static bool pass_now(void);
static bool run_pass(uint64_t now, uint64_t ivl);

static void *bg_main(void *arg)
{
	(void)arg;
	unsigned sleep_ms = sa_opt.decay_ms ? sa_opt.decay_ms : 250;
	for (;;) {
		struct timespec ts = {(time_t)(sleep_ms / 1000),
				      (long)(sleep_ms % 1000) * 1000000L};
		while (nanosleep(&ts, &ts) && errno == EINTR)
			;
		bool worked = sa_opt.decay_ms && pass_now();
		/* the purge round as far as it is due, a step (at most 1 MiB) at a time */
		for (int i = 0; i < 64 && sa_segment_purge_tick(); i++)
			worked = true;
		unsigned base = sa_opt.decay_ms ? sa_opt.decay_ms : 250;
		sleep_ms = worked || sa_segment_dirty_bytes() ? base : sleep_ms * 2;
		if (sleep_ms > SA_BG_SLEEP_MAX_MS)
			sleep_ms = SA_BG_SLEEP_MAX_MS;
	}
	return NULL;
}

static void bg_start(void)
{
	int expect = 0;
	if (!sa_opt.background || atomic_load_explicit(&bg_state, memory_order_relaxed) ||
	    !atomic_compare_exchange_strong(&bg_state, &expect, 1))
		return;
	pthread_t t;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&a, 128 << 10);
	/* every signal blocked in the thread: the program's handlers run in its own threads */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = pthread_create(&t, &a, bg_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&a);
	atomic_store(&bg_state, r == 0 ? 2 : 0);
}

void sa_decay_atfork_child(void)
{
	atomic_store(&bg_state, 0);
}

bool sa_decay_background_running(void)
{
	return atomic_load(&bg_state) == 2;
}

/* ------------------------------------------------------------------ the pass ---------------- */
void sa_decay_run(sa_flags_t flags)
{
	uint64_t ivl = (uint64_t)sa_opt.decay_ms * 1000000ull;
	if (!ivl || !sa_may_block(flags) || sa_in_reclaim)
		return;
	uint64_t now = sa_now_ns();
	uint64_t next = atomic_load_explicit(&sa_decay_next, memory_order_relaxed);
	if (now < next) {
		/* between passes: a purge round under way goes on a step (8 madvise calls) at a
		 * time; it used to advance only at unit allocations and frees, which a program
		 * that works from the slabs it has never makes */
		sa_segment_purge_tick();
		return;
	}
	if (!atomic_compare_exchange_strong(&sa_decay_next, &next, now + ivl))
		return; /* another thread runs this pass */
	bg_start();
	if (!next)
		return; /* the first call arms the clock: an interval must pass first */
	run_pass(now, ivl);
}

/* The background thread's pass: when the slow paths have not run one for an interval. True if
 * it gave anything back. */
static bool pass_now(void)
{
	uint64_t ivl = (uint64_t)sa_opt.decay_ms * 1000000ull;
	uint64_t now = sa_now_ns();
	uint64_t next = atomic_load_explicit(&sa_decay_next, memory_order_relaxed);
	if (now < next || !atomic_compare_exchange_strong(&sa_decay_next, &next, now + ivl))
		return false; /* a slow path ran one lately, or runs one now */
	return run_pass(now, ivl);
}

/* One pass (the caller won the deadline's compare-exchange); true if it gave anything back. */
static bool run_pass(uint64_t now, uint64_t ivl)
{
	if (pthread_mutex_trylock(&sa_caches_lock))
		return false;
	struct budget bud = {SA_DECAY_DRAINS, SA_DECAY_SHEAVES, SA_DECAY_SLABS, false};
	unsigned i = 0;
	sa_in_decay = true;
	for (struct sa_cache *c = sa_caches; c && !bud.cut; c = c->next, i++)
		if (i >= resume_at)
			decay_cache(c, &bud);
	sa_in_decay = false;
	resume_at = bud.cut ? i - 1 : 0; /* the cache it stopped in gets its turn again */
	pthread_mutex_unlock(&sa_caches_lock);
	if (bud.cut)
		atomic_store(&sa_decay_next, now + ivl / SA_DECAY_SOON_DIV);
	sa_malloc_huge_cache_age();
	sa_segment_purge_tick();
	/* gave something back (a drain, a sheaf, a slab) or left some for the next pass */
	return bud.cut || bud.drains != SA_DECAY_DRAINS || bud.sheaves != SA_DECAY_SHEAVES ||
	       bud.slabs != SA_DECAY_SLABS;
}
