/*
 * alloc/rcu.c — RCU-deferred frees batched in sheaves, and typesafe-by-RCU caches
 * (docs/design.md §13).
 *
 * Owns: the RCU thread, the lists of submitted rcu sheaves and of typesafe slabs waiting for a
 * grace period, and their counters.
 *
 * sa_free_rcu(obj) pushes obj into this CPU's rcu sheaf of its cache (slot->rcu: one rseq
 * section, sheaf/arch/x86_64/rseq_pcs.h; the slot lock in fallback mode). Large and huge malloc
 * blocks use the rcu sheaf of the smallest malloc class (their marker caches have no sheaves).
 * A full rcu sheaf is exchanged for an empty one and submitted: pushed onto `pending`, a
 * lock-free stack, and the RCU thread is woken. The thread takes everything pending, waits for
 * one grace period of each liburcu flavor among it (flavor->update_synchronize_rcu: every
 * read-side section that had begun has ended), then frees the objects: a sheaf whose objects
 * all belong to its cache and one node goes whole into that node's barn as a full sheaf (the
 * objects refill sheaves, not slabs), any other object goes through sa_free. One grace period
 * per batch of sheaves, one "callback" (a sheaf processed) per sheaf, never one per object.
 * The thread also releases the slabs of SA_CACHE_TYPESAFE_RCU caches after a grace period
 * (sa_rcu_slab_release): objects of such a cache are reused at once, but its memory only leaves
 * the cache after every reader that might still look at it is gone.
 *
 * Why our own thread and synchronize_rcu, not liburcu's call_rcu: call_rcu must be called from a
 * thread registered with the flavor (sa_free_rcu is called from any thread, registered or not),
 * its worker threads do not survive fork without the program's own before/after-fork calls, and
 * its callbacks would run our frees inside liburcu's threads. synchronize_rcu needs no
 * registration from the updater, and our thread is ours to stop at fork.
 *
 * Nothing is stranded: a partial rcu sheaf goes to the thread when sa_rcu_barrier, sa_trim or
 * sa_cache_shrink/destroy drain the slots; and the thread itself, every tick (SA_RCU_TICK_MS),
 * drains the rcu sheaves of caches whose sheaves it saw non-empty at the previous tick. So a
 * queued object is freed at most two ticks plus SA_RCU_GATHER_US plus one grace period after
 * sa_free_rcu, even if the program never frees again. A thread's exit leaves nothing behind
 * (the sheaves are per CPU).
 *
 * A bound (option rcu_max_pending): a submission that finds more bytes waiting for a grace
 * period than the bound waits for the thread, at most SA_RCU_THROTTLE_US, never where a grace
 * period could wait for the caller (throttle, may_wait_for_gp).
 *
 * Contexts that may not wait (SA_NOWAIT): the push and the exchange are rseq sections; a new
 * sheaf comes only from the barn's try-lock or existing metadata; a submission does not wake
 * the thread (a futex call): the next tick finds it. When there is no sheaf to be had, the
 * object is deferred (SA_DEFER_RCU, alloc/defer.c) and counted (rcu_deferred): it is queued by
 * the next slow path that may wait. sa_rcu_barrier does nothing there.
 *
 * Locking: rcu_lock (a leaf: nothing is taken under it) protects the thread's state and the
 * generation counters; the condition variables wake the thread and barrier waiters. gp_lock is
 * held by the thread from taking a batch to having freed it (it takes allocator locks under
 * it, never rcu_lock); fork's prepare handler takes it first, so a fork never happens in the
 * middle of a grace period or of the frees. The child has no RCU thread: it starts one when
 * it needs one, and processes what was pending.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <time.h>
#include <urcu/urcu-memb.h>

#include "alloc/scope.h"
#include "sheaf/pcs_inline.h"

#define SA_RCU_TICK_MS 500
/* Grace periods are gathered: after a batch, or when work arrives at an idle thread, the thread
 * waits up to SA_RCU_GATHER_US for SA_RCU_GATHER sheaves (or slabs) to be pending before it
 * waits for the next grace period, unless a barrier, sa_trim or a drain asks it to hurry. A
 * grace period of urcu_memb is a membarrier system call that interrupts every CPU running one
 * of the process's threads: one per sheaf, at tens of millions of frees a second, interrupted
 * the freeing thread itself so often that it ran at a third of its speed (measured: bimodal
 * rcu_bench runs of 4.4 and 9-14 ms per 262,144 objects, the slow ones with 40% of the RCU
 * thread in the kernel's IPI code). The cost: a freed object waits up to SA_RCU_GATHER_US more,
 * and up to SA_RCU_GATHER - 1 sheaves more are in flight. */
#define SA_RCU_GATHER	 16
#define SA_RCU_GATHER_US 1000

static struct sa_sheaf *_Atomic pending;      /* submitted rcu sheaves, chained by next */
static struct sa_slab *_Atomic pending_slabs; /* typesafe slabs to release after a GP */
static _Atomic uint64_t submitted;	      /* sheaves and slabs submitted so far */
static _Atomic unsigned pending_n; /* sheaves and slabs on pending and pending_slabs now */
static uint64_t done;		   /* rcu_lock: of those, processed */

static pthread_mutex_t rcu_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t rcu_wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t rcu_done = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t gp_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int thread_state; /* 0 none, 1 being created, 2 running */
static bool kicked;		 /* rcu_lock: work arrived since the thread last looked */
static bool hurry;		 /* rcu_lock: a barrier, trim or drain waits: do not gather */
static _Atomic bool idle = true; /* the thread sleeps its tick (or there is none yet): wake it */

/* Back-pressure (throttle): bytes of the objects on pending and of the slabs on pending_slabs
 * (sheaf_bytes), the liburcu flavors of every cache (their read-side sections must not wait),
 * and the RCU thread's own marker. */
static _Atomic uint64_t pending_bytes;
#define SA_RCU_FLAVORS	   16
#define SA_RCU_THROTTLE_US 2000
static const struct rcu_flavor_struct *_Atomic flavors[SA_RCU_FLAVORS];
static _Atomic bool flavors_overflow; /* more flavors than slots: never throttle */
static _Atomic uint64_t throttle_timed_out_at = UINT64_MAX; /* `done` at a wait that timed out */
static __thread bool in_rcu_thread;

static void start_thread(void);
static void ensure_thread(void);
static void kick(bool now);
static struct timespec deadline_us(long us);

void (*sa_rcu_submit_test_hook)(void);

/* What a submitted sheaf holds, for pending_bytes: its objects at their cache's object size;
 * the smallest malloc class's rcu sheaves also carry large and huge blocks, counted at their
 * usable size (one lookup per object, on that class's submissions only; a huge block aligned
 * to 4 MiB, which only a list under a lock knows, counts as a small object). The same value at
 * submission and after the grace period: the objects are untouched in between. */
static uint64_t sheaf_bytes(const struct sa_sheaf *s)
{
	struct sa_cache *c = s->cache;
	if (c != sa_rcu_block_cache())
		return (uint64_t)s->size * c->size;
	uint64_t b = 0;
	for (unsigned i = 0; i < s->size; i++) {
		struct sa_slab *sl = sa_slab_of(s->objects[i]);
		struct sa_cache *oc = sl ? __atomic_load_n(&sl->cache, __ATOMIC_ACQUIRE) : NULL;
		/* a block in units: its size from its records, no lock (a NOWAIT submission may
		 * come here); a 4 MiB-aligned huge block has no record and counts as an object */
		b += oc && sa_malloc_marker(oc) ? sa_malloc_usable_size(s->objects[i]) : c->size;
	}
	return b;
}

void sa_rcu_cache_init(struct sa_cache *c, const struct rcu_flavor_struct *flavor)
{
	c->rcu = flavor ? flavor : &urcu_memb_flavor;
	for (int i = 0; i < SA_RCU_FLAVORS; i++) {
		const struct rcu_flavor_struct *f = NULL;
		if (atomic_compare_exchange_strong(&flavors[i], &f, c->rcu) || f == c->rcu)
			return;
	}
	atomic_store(&flavors_overflow, true);
}

/* May this thread wait for a grace period now? Not in a context that may not block, not in the
 * RCU thread, and not inside a read-side section of any flavor in use (a QSBR thread that is
 * online counts as inside: its grace periods wait for its next quiescent state). */
static bool may_wait_for_gp(sa_flags_t flags)
{
	if (in_rcu_thread || !sa_may_block(flags) || atomic_load(&flavors_overflow))
		return false;
	for (int i = 0; i < SA_RCU_FLAVORS; i++) {
		const struct rcu_flavor_struct *f = atomic_load(&flavors[i]);
		if (!f)
			break;
		if (f->read_ongoing && f->read_ongoing())
			return false;
	}
	return true;
}

/*
 * After a submission: when more than rcu_max_pending bytes wait for a grace period (the RCU
 * thread has fallen behind a thread that frees faster than it can process), the freeing thread
 * gives it time: it hurries the thread (no gathering) and waits until half the bound is left
 * or SA_RCU_THROTTLE_US passed. The wait is bounded because a grace period may depend on this
 * very thread (a reader waiting for a lock the caller holds, as with synchronize_rcu under a
 * lock): after a wait that timed out, nobody waits again until the thread has finished a
 * batch. So the memory queued for a grace period stays near the bound while the thread can
 * keep up at all, and sa_free_rcu never deadlocks.
 */
static void throttle(struct sa_cache *c, sa_flags_t flags)
{
	uint64_t max = sa_opt.rcu_max_pending;
	if (!max || atomic_load_explicit(&pending_bytes, memory_order_relaxed) <= max ||
	    !may_wait_for_gp(flags))
		return;
	pthread_mutex_lock(&rcu_lock);
	bool skip = done == atomic_load(&throttle_timed_out_at);
	pthread_mutex_unlock(&rcu_lock);
	if (skip)
		return;
	sa_stat_add(c, SA_STAT_RCU_THROTTLED, 1);
	kick(true);
	int nc = sa_nocancel_begin(); /* a cancelled wait would return holding rcu_lock */
	pthread_mutex_lock(&rcu_lock);
	struct timespec ts = deadline_us(SA_RCU_THROTTLE_US);
	int r = 0;
	while (atomic_load(&pending_bytes) > max / 2 && r != ETIMEDOUT)
		r = pthread_cond_timedwait(&rcu_done, &rcu_lock, &ts);
	if (r == ETIMEDOUT)
		atomic_store(&throttle_timed_out_at, done);
	pthread_mutex_unlock(&rcu_lock);
	sa_nocancel_end(nc);
}

/* ------------------------------------------------------------------ submission ------------- */
/* One more sheaf or slab pending: the thread is woken when it sleeps its tick (it starts
 * gathering) and at the SA_RCU_GATHER-th (enough gathered); otherwise it is busy or counting
 * down its gathering wait, and a kick would only cost a lock. */
static void submitted_one(void)
{
	unsigned n = atomic_fetch_add(&pending_n, 1) + 1;
	if (n == SA_RCU_GATHER || atomic_load(&idle)) /* seq_cst: pairs with the thread's store */
		sa_rcu_kick();
}

void sa_rcu_submit(struct sa_cache *c, struct sa_sheaf *s)
{
	if (s == &sa_sheaf_sentinel)
		return;
	if (!s->size) { /* nothing to wait for: an empty sheaf is just a sheaf */
		s->flags &= ~SA_SHEAF_RCU;
		sa_sheaf_dispose_flags(c, s, sa_flags_effective(0));
		return;
	}
	s->flags |= SA_SHEAF_RCU;
	sa_stat_add(c, SA_STAT_RCU_SUBMITTED, 1);
	sa_stat_add(c, SA_STAT_RCU_QUEUED, s->size);
	/* counted before it can be taken: a barrier's target never runs ahead of the work */
	atomic_fetch_add(&submitted, 1);
	if (SA_UNLIKELY(sa_rcu_submit_test_hook != NULL))
		sa_rcu_submit_test_hook();
	atomic_fetch_add_explicit(&pending_bytes, sheaf_bytes(s), memory_order_relaxed);
	struct sa_sheaf *head = atomic_load_explicit(&pending, memory_order_relaxed);
	do
		s->next = head;
	while (!atomic_compare_exchange_weak_explicit(&pending, &head, s, memory_order_release,
						      memory_order_relaxed));
	submitted_one();
}

bool sa_rcu_slab_release(struct sa_cache *c, struct sa_slab *s)
{
	if (!(c->flags & SA_CACHE_TYPESAFE_RCU))
		return false;
	sa_stat_add(c, SA_STAT_RCU_SLABS_DELAYED, 1);
	atomic_fetch_add(&submitted, 1);
	atomic_fetch_add_explicit(&pending_bytes, (uint64_t)s->nunits * SA_UNIT_SIZE,
				  memory_order_relaxed);
	struct sa_slab *head = atomic_load_explicit(&pending_slabs, memory_order_relaxed);
	do
		s->next = head;
	while (!atomic_compare_exchange_weak_explicit(&pending_slabs, &head, s,
						      memory_order_release, memory_order_relaxed));
	submitted_one();
	return true;
}

/* An empty sheaf for cache c's rcu slot: from this node's barn, or new. */
static struct sa_sheaf *empty_sheaf(struct sa_cache *c, sa_flags_t flags)
{
	int node = sa_pcs_current_node(c);
	struct sa_sheaf *s = sa_barn_get_empty(&c->nodes[node]->barn, flags);
	if (!s)
		s = sa_sheaf_new(c, c->capacity, node, flags);
	return s;
}

/* The push failed (full, a stopped slot, no sheaf yet): make room and try again, or put the
 * object into a sheaf of its own and submit that; under NOWAIT with no sheaf to be had, defer. */
static SA_NOINLINE void free_rcu_slow(struct sa_cache *c, void *obj, int why)
{
	sa_flags_t flags = sa_flags_effective(0);
	if (SA_UNLIKELY(sa_deferred_pending_racy()) && sa_may_block(flags))
		sa_deferred_run();
	for (int tries = 0; tries < 4; tries++) {
		if (why == SA_WHY_FULL) {
			struct sa_sheaf *nw = empty_sheaf(c, flags), *old;
			if (!nw)
				break;
			if (sa_pcs_rcu_xchg(c, nw, &old)) {
				sa_sheaf_dispose_flags(c, nw, flags);
				break; /* stopped: a drain owns the slot now */
			}
			sa_rcu_submit(c, old);
			ensure_thread(); /* its tick must find this sheaf, whoever fills it */
			throttle(c, flags);
		} else if (why != SA_WHY_UNREG) {
			break;
		}
		why = sa_pcs_rcu_push(c, obj, flags); /* the fallback's lock, or a registration */
		if (!why)
			return;
	}
	/* a sheaf of its own */
	struct sa_sheaf *s = empty_sheaf(c, flags);
	if (!s) {
		sa_stat_add(c, SA_STAT_RCU_DEFERRED, 1);
		sa_defer(obj, SA_DEFER_RCU);
		return;
	}
	s->objects[s->size++] = obj;
	sa_rcu_submit(c, s);
	throttle(c, flags);
}

SA_API void sa_free_rcu(void *obj)
{
	if (!obj)
		return;
	struct sa_slab *s = sa_slab_of(obj);
	struct sa_cache *c = s ? __atomic_load_n(&s->cache, __ATOMIC_ACQUIRE) : NULL;
	/* a cache object's boundary is checked when it is freed after the grace period (sa_free,
	 * the flush); a block's start at once: a block is freed whole */
	if (SA_UNLIKELY(!c || (sa_malloc_marker(c) && !sa_rcu_block_ok(c, s, obj)))) {
		if (!c && !s && sa_malloc_usable_size(obj)) { /* a 4 MiB-aligned huge block */
			c = sa_rcu_block_cache();
		} else {
			sa_cache_bad_free(
				c && !sa_malloc_marker(c) ? c : NULL, obj,
				!s   ? "sa_free_rcu of a pointer that is not ours"
				: !c ? "sa_free_rcu of a block that is not allocated"
				     : "sa_free_rcu of a pointer into a block, not its start");
			return;
		}
	}
	if (sa_malloc_marker(c))
		c = sa_rcu_block_cache(); /* large and huge blocks: the smallest class's sheaves */
	SA_TSAN_RELEASE(obj);
	/* the rseq section inline; the fallback mode's area never registers: UNREG, slow path */
	int why = sa_rseq_rcu_push(SA_CACHE_SLOTS(c), sa_rseq_off, obj);
	if (SA_UNLIKELY(why))
		free_rcu_slow(c, obj, why);
}

/* ------------------------------------------------------------------ the RCU thread ---------- */
/* Free the objects of a processed rcu sheaf: whole into its barn when they are all of its cache
 * and one node (and the barn has room), else one by one. */
static void free_sheaf(struct sa_sheaf *s)
{
	struct sa_cache *c = s->cache;
	unsigned n = s->size;
	int node = -1;
	bool pure = true;
#ifdef SA_TSAN
	for (unsigned i = 0; i < n; i++) /* every object: the grace period is invisible to TSan */
		SA_TSAN_ACQUIRE(s->objects[i]);
#endif
	/* whole into the barn only if every object is one of c's, at an object's start (sa_free_rcu
	 * leaves that check to here, off the caller's path), and of one node */
	for (unsigned i = 0; i < n && pure; i++) {
		struct sa_slab *sl = sa_slab_of(s->objects[i]);
		if (!sl || sl->cache != c || !sa_slab_obj_ok(c, sl, s->objects[i]) ||
		    (node >= 0 && sl->node != node))
			pure = false;
		else
			node = sl->node;
	}
	sa_stat_add(c, SA_STAT_RCU_CALLBACKS, 1);
	sa_stat_add(c, SA_STAT_RCU_FREED, n);
	s->flags &= ~SA_SHEAF_RCU;
	if (pure && node >= 0 && node < sa_nr_nodes && !c->parent && !c->debug) {
		s->node = node;
		if (n == s->capacity &&
		    sa_barn_nr_full_racy(&c->nodes[node]->barn) < c->barn_max_full) {
			/* the objects refill sheaves: a full sheaf of node's barn, with no
			 * per-object work (they stay out of their slabs: cached, as after any free
			 * into a sheaf) */
			sa_stat_add(c, SA_STAT_FREE_FAST, n); /* as if pushed one by one */
			sa_barn_put_full(&c->nodes[node]->barn, s);
			return;
		}
		/* the barn has enough: back to their slabs in one batch, one lock */
		sa_stat_add(c, SA_STAT_FREE_FAST, n);
		sa_sheaf_flush(c, s);
		sa_sheaf_dispose(c, s);
		return;
	}
	for (unsigned i = 0; i < n; i++)
		sa_free(s->objects[i]);
	s->size = 0;
	sa_sheaf_dispose(c, s);
}

/* One batch: everything pending now, one grace period per flavor in it, then the frees. */
static bool run_batch(void)
{
	struct sa_sheaf *sh = atomic_exchange_explicit(&pending, NULL, memory_order_acquire);
	struct sa_slab *sl = atomic_exchange_explicit(&pending_slabs, NULL, memory_order_acquire);
	if (!sh && !sl)
		return false;
	uint64_t n = 0, bytes = 0;
	/* the distinct flavors of the batch (a handful at most: one per cache's args.rcu) */
	const struct rcu_flavor_struct *fl[16];
	unsigned nfl = 0;
	bool overflow = false;
	for (struct sa_sheaf *s = sh; s; s = s->next, n++) {
		bytes += sheaf_bytes(s); /* as sa_rcu_submit counted it */
		unsigned i = 0;
		while (i < nfl && fl[i] != s->cache->rcu)
			i++;
		if (i == nfl) {
			if (nfl < 16)
				fl[nfl++] = s->cache->rcu;
			else
				overflow = true;
		}
	}
	for (struct sa_slab *s = sl; s; s = s->next, n++) {
		bytes += (uint64_t)s->nunits * SA_UNIT_SIZE;
		const struct rcu_flavor_struct *f = s->cache->rcu;
		unsigned i = 0;
		while (i < nfl && fl[i] != f)
			i++;
		if (i == nfl) {
			if (nfl < 16)
				fl[nfl++] = f;
			else
				overflow = true;
		}
	}
	atomic_fetch_sub(&pending_n, (unsigned)n);
	for (unsigned i = 0; i < nfl; i++)
		fl[i]->update_synchronize_rcu();
	if (overflow) { /* more than 16 flavors in one batch: wait for each one's own */
		for (struct sa_sheaf *s = sh; s; s = s->next)
			s->cache->rcu->update_synchronize_rcu();
		for (struct sa_slab *s = sl; s; s = s->next)
			s->cache->rcu->update_synchronize_rcu();
	}
	while (sh) {
		struct sa_sheaf *next = sh->next;
		sh->next = NULL;
		free_sheaf(sh);
		sh = next;
	}
	while (sl) {
		struct sa_slab *next = sl->next;
		sl->next = NULL;
#ifdef SA_TSAN
		/* every object a reader may have released at its section's end: as in free_sheaf,
		 * the grace period is invisible to TSan, and the slab's memory changes owner now */
		for (uint32_t i = 0; i < sl->nobjs; i++)
			SA_TSAN_ACQUIRE(sa_slab_base(sl) + (size_t)i * sl->cache->stride);
#endif
		sa_slab_release_after_gp(sl->cache, sl);
		sl = next;
	}
	atomic_fetch_sub(&pending_bytes, bytes);
	pthread_mutex_lock(&rcu_lock);
	done += n;
	pthread_cond_broadcast(&rcu_done);
	pthread_mutex_unlock(&rcu_lock);
	return true;
}

/* Every tick: the caches whose rcu sheaves were not empty at the previous tick get drained, so
 * no object waits longer than two ticks to be submitted. */
static void tick(void)
{
	static struct sa_cache *seen[256];
	static unsigned nseen;
	struct sa_cache *now[256];
	unsigned nnow = 0;
	pthread_mutex_lock(&sa_caches_lock);
	for (struct sa_cache *c = sa_caches; c && nnow < 256; c = c->next)
		if (sa_pcs_rcu_waiting_racy(c))
			now[nnow++] = c;
	pthread_mutex_unlock(&sa_caches_lock);
	for (unsigned i = 0; i < nnow; i++) {
		bool again = false;
		for (unsigned k = 0; k < nseen; k++)
			again |= seen[k] == now[i];
		if (!again)
			continue;
		/* the cache stays alive: drains of a cache that is being destroyed take its
		 * drain_lock too, and destroy keeps caches that still hold objects */
		for (struct sa_sheaf *s = sa_pcs_drain_rcu(now[i]); s;) {
			struct sa_sheaf *next = s->next;
			sa_rcu_submit(now[i], s);
			s = next;
		}
	}
	for (unsigned i = 0; i < nnow; i++)
		seen[i] = now[i];
	nseen = nnow;
}

/* The CLOCK_REALTIME time us microseconds from now, for pthread_cond_timedwait. */
static struct timespec deadline_us(long us)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += us * 1000L;
	ts.tv_sec += ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	return ts;
}

/* Before a batch: give the work SA_RCU_GATHER_US to reach SA_RCU_GATHER pending, unless none
 * is pending (the batch finds nothing and the thread sleeps its tick) or someone hurries it. */
static void gather(void)
{
	pthread_mutex_lock(&rcu_lock);
	if (!hurry && atomic_load(&pending_n) > 0 && atomic_load(&pending_n) < SA_RCU_GATHER) {
		struct timespec ts = deadline_us(SA_RCU_GATHER_US);
		while (!hurry && atomic_load(&pending_n) < SA_RCU_GATHER &&
		       pthread_cond_timedwait(&rcu_wake, &rcu_lock, &ts) != ETIMEDOUT)
			;
	}
	hurry = false;
	kicked = false; /* what woke it is in the batch that follows */
	pthread_mutex_unlock(&rcu_lock);
}

static void *rcu_main(void *arg)
{
	(void)arg;
	/* the thread's allocations must not wait for itself: it never opens scopes, and its
	 * frees run as any thread's */
	atomic_store(&idle, false); /* awake: submissions kick only at SA_RCU_GATHER */
	in_rcu_thread = true;	    /* its own submissions (tick) never wait for itself */
	for (;;) {
		gather();
		pthread_mutex_lock(&gp_lock);
		bool worked = run_batch();
		pthread_mutex_unlock(&gp_lock);
		if (worked)
			continue;
		pthread_mutex_lock(&rcu_lock);
		/* idle, then pending_n (both seq_cst): a submission either sees idle and kicks,
		 * or is counted in pending_n here */
		atomic_store(&idle, true);
		if (!kicked && atomic_load(&pending_n) == 0) {
			struct timespec ts = deadline_us((long)SA_RCU_TICK_MS * 1000L);
			pthread_cond_timedwait(&rcu_wake, &rcu_lock, &ts);
		}
		bool was_kicked = kicked;
		kicked = false;
		atomic_store(&idle, false);
		pthread_mutex_unlock(&rcu_lock);
		if (!was_kicked)
			tick();
	}
	return NULL;
}

/* The RCU thread exists (or is being made) from now on; not in a NOWAIT context. */
static void ensure_thread(void)
{
	if (atomic_load_explicit(&thread_state, memory_order_relaxed) != 0 ||
	    !sa_may_syscall(sa_flags_effective(0)))
		return;
	start_thread();
}

static void kick(bool now)
{
	if (!sa_may_syscall(sa_flags_effective(0)))
		return; /* a NOWAIT context: the thread's next tick finds the work */
	pthread_mutex_lock(&rcu_lock);
	kicked = true;
	hurry |= now;
	pthread_cond_signal(&rcu_wake);
	pthread_mutex_unlock(&rcu_lock);
	start_thread();
}

void sa_rcu_kick(void)
{
	kick(false);
}

static void start_thread(void)
{
	int expect = 0;
	if (atomic_load(&thread_state) == 0 &&
	    atomic_compare_exchange_strong(&thread_state, &expect, 1)) {
		/* not under rcu_lock: pthread_create allocates (through us, when we are malloc) */
		pthread_t t;
		pthread_attr_t a;
		pthread_attr_init(&a);
		pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
		pthread_attr_setstacksize(&a, 256 << 10);
		int r = pthread_create(&t, &a, rcu_main, NULL);
		pthread_attr_destroy(&a);
		atomic_store(&thread_state, r == 0 ? 2 : 0);
	}
}

/* Every partial rcu sheaf of every cache goes to the thread now. */
void sa_rcu_submit_all(void)
{
	struct sa_cache *list[512];
	unsigned n = 0;
	pthread_mutex_lock(&sa_caches_lock);
	for (struct sa_cache *c = sa_caches; c && n < 512; c = c->next)
		if (sa_pcs_rcu_waiting_racy(c))
			list[n++] = c;
	pthread_mutex_unlock(&sa_caches_lock);
	for (unsigned i = 0; i < n; i++)
		for (struct sa_sheaf *s = sa_pcs_drain_rcu(list[i]); s;) {
			struct sa_sheaf *next = s->next;
			sa_rcu_submit(list[i], s);
			s = next;
		}
}

SA_API void sa_rcu_barrier(void)
{
	sa_ensure_init();
	if (!sa_may_block(sa_flags_effective(0)))
		return;	   /* waiting is what a NOWAIT context may not do */
	sa_deferred_run(); /* deferred sa_free_rcu calls are queued now */
	sa_rcu_submit_all();
	/* a batch may queue more work of its own (a typesafe cache's slabs that its frees emptied
	 * wait for a grace period too): wait for that as well, a few rounds at most */
	for (int round = 0; round < 3; round++) {
		uint64_t target = atomic_load(&submitted);
		if (!target)
			return;
		kick(true); /* no gathering: someone waits */
		/* a cancelled condition wait returns holding rcu_lock, for good: not here */
		int nc = sa_nocancel_begin();
		pthread_mutex_lock(&rcu_lock);
		while (done < target)
			pthread_cond_wait(&rcu_done, &rcu_lock);
		pthread_mutex_unlock(&rcu_lock);
		sa_nocancel_end(nc);
		if (!atomic_load(&pending_slabs) && !atomic_load(&pending))
			return;
	}
}

/* In the child, with gp_lock and rcu_lock held and no other thread: a parent thread that was
 * inside sa_rcu_submit at the fork may have counted its sheaf in `submitted` (and pending_n,
 * pending_bytes) without pushing it, and that push never happens here, so a barrier would wait forever for
 * it (its objects stay out, like every object another parent thread held). The counters are
 * made to match the lists: what was processed, plus what is pending. */
static void recount_after_fork(void)
{
	uint64_t n = 0, bytes = 0;
	for (struct sa_sheaf *s = atomic_load(&pending); s; s = s->next, n++)
		bytes += sheaf_bytes(s);
	for (struct sa_slab *s = atomic_load(&pending_slabs); s; s = s->next, n++)
		bytes += (uint64_t)s->nunits * SA_UNIT_SIZE;
	atomic_store(&submitted, done + n);
	atomic_store(&pending_n, (unsigned)n);
	atomic_store(&pending_bytes, bytes);
	atomic_store(&throttle_timed_out_at, UINT64_MAX);
}

/* fork: gp_lock before every allocator lock (the thread takes those under it), rcu_lock after
 * them all (a leaf, taken with allocator locks held by sa_rcu_kick). phase: 0 take gp_lock,
 * 1 take rcu_lock, 2 release both (parent), 3 release both (child: no RCU thread there; one
 * starts when needed and takes what was pending). */
void sa_rcu_atfork(int phase)
{
	switch (phase) {
	case 0:
		pthread_mutex_lock(&gp_lock);
		break;
	case 1:
		pthread_mutex_lock(&rcu_lock);
		break;
	default:
		if (phase == 3) {
			/* no RCU thread in the child; the condition variables may carry the
			 * parent's waiters (the thread, a barrier): start them afresh */
			atomic_store(&thread_state, 0);
			atomic_store(&idle, true); /* the next submission starts a thread */
			recount_after_fork();
			pthread_cond_init(&rcu_wake, NULL);
			pthread_cond_init(&rcu_done, NULL);
		}
		pthread_mutex_unlock(&rcu_lock);
		pthread_mutex_unlock(&gp_lock);
	}
}
