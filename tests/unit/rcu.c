/*
 * tests/unit/rcu.c — sa_free_rcu, sa_rcu_barrier and SA_CACHE_TYPESAFE_RCU caches (issue 15).
 *
 *   test_section_holds_object      a reader inside urcu_memb_read_lock holds an object that is
 *                                  freed with sa_free_rcu (cache 64 B and 1 KiB, sa_malloc small,
 *                                  large 100 KiB, huge 3 MiB); meanwhile the main thread
 *                                  allocates, frees, trims and shrinks: the object is never
 *                                  handed out again and its contents stay intact until the reader
 *                                  leaves; after sa_rcu_barrier it is freed
 *   test_readers_writers_*         writer threads (never registered with liburcu) replace
 *                                  RCU-protected pointers and free the old objects with
 *                                  sa_free_rcu while registered readers check every object they
 *                                  hold (tests/unit/rcu_common.h): no violation; after the
 *                                  barrier every rcu counter settles, nothing is in use, and every
 *                                  slab can be released (no object was lost)
 *   test_typesafe_readers          the same on a typesafe cache with a constructor, objects freed
 *                                  at once or with sa_free_rcu, while a thread shrinks and trims
 *                                  and churns another cache of the same size: readers always see
 *                                  the right type tag; constructor calls == slabs * objects/slab
 *   test_typesafe_ctor_once        the constructor runs once per slab object, never per
 *                                  allocation: 100k allocations, constructor calls == slabs made
 *                                  x objects per slab, fewer than a tenth of the allocations
 *   test_typesafe_slab_waits_for_reader   a reader holds a section over every object of a
 *                                  typesafe cache (three slabs' worth); everything is freed (two
 *                                  slabs' objects at once, one slab's with sa_free_rcu), shrunk
 *                                  and trimmed, and another cache churns: slabs_freed does not
 *                                  move, rcu_slabs_delayed grows by at least 2, the tags stay
 *                                  intact; after the reader leaves and a barrier, the slabs are
 *                                  freed
 *   test_unregistered_thread       sa_free_rcu and sa_rcu_barrier from a thread that never
 *                                  registered with liburcu
 *   test_nowait_scope              sa_free_rcu inside a NOWAIT scope while a reader blocks every
 *                                  grace period: it returns, sa_rcu_barrier there returns at once
 *                                  (does not wait); after the scope, sa_rcu_barrier frees all
 *   test_nowait_no_syscall         in a fresh process (this binary run again), a thread traps
 *                                  every system call with seccomp and calls sa_free_rcu 2000
 *                                  times inside a NOWAIT scope: no system call (no mmap, munmap,
 *                                  madvise, futex, membarrier, ...; the first one would end the
 *                                  process); then another thread runs sa_rcu_barrier: all freed
 *   test_stats_consistency         exact counters while a reader blocks grace periods (waiting ==
 *                                  objects queued, objects still in use, nothing freed), one
 *                                  callback per sheaf, never per object; settled after the barrier
 *   test_stats_print               sa_stats_print and sa_stats_print_json show every rcu field with
 *                                  the value sa_cache_stats gives
 *   test_custom_flavor             a cache's struct sa_cache_args.rcu flavor is the one whose grace
 *                                  period its frees wait for
 *   test_destroy_typesafe          sa_cache_destroy of a typesafe cache whose slabs just emptied
 *                                  leaves no work behind that touches the destroyed cache: its
 *                                  flavor holds the grace period until a new cache was created
 *                                  (at the same address, as it happens); that cache's counters
 *                                  must stay consistent
 *
 *   test_throttle                  rcu_max_pending while a reader blocks grace periods: a thread
 *                                  inside a section of its own never waits, one outside waits
 *                                  once (the wait times out) and goes on, 0 means no bound
 *   test_throttle_blocks           a 3 MiB block freed with sa_free_rcu counts at its size
 *                                  toward the bound (not at the 16-byte class's that carries it)
 *
 * fork() and the bounded time of sa_free_rcu are in tests/unit/rcu_fork.c (their forks need
 * TSan's deadlock detector off, see there).
 *
 * No clock decides a result. Waits for another thread have no-progress guards of 60 s that only
 * a hang reaches; they then report what was stuck.
 */
#include "unit/rcu_common.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <ucontext.h>

#define STALL_SEC 60 /* no progress for this long: something is stuck */
#ifndef NOWAIT_FREES
#define NOWAIT_FREES 2000
#endif

static char self_exe[4096];

/* ------------------------------------------------------------------ a reader that holds ---- */
/*
 * A registered reader thread that enters one read-side section, runs its check there on every
 * request of the main thread, and leaves when asked. If the main thread makes no request for
 * STALL_SEC seconds (a call of the main thread waits for this reader's grace period), it leaves
 * on its own and says so.
 */
struct holder {
	int (*check)(struct holder *);	  /* run inside the section: returns problems found */
	void (*release)(struct holder *); /* TSan: release what it read (rcu_common.h) */
	void *arg;
	uint64_t gen;
	atomic_int state; /* 0 starting, 1 inside, 2 asked to leave, 3 left */
	atomic_long req, done;
	atomic_int bad;
	atomic_int stalled;
	pthread_t tid;
};

static void *holder_main(void *p)
{
	struct holder *h = p;
	urcu_memb_register_thread();
	urcu_memb_read_lock();
	atomic_fetch_add(&h->bad, h->check(h));
	atomic_store(&h->state, 1);
	double moved = rk_now();
	for (;;) {
		long r = atomic_load(&h->req);
		if (r != atomic_load(&h->done)) {
			atomic_fetch_add(&h->bad, h->check(h));
			atomic_store(&h->done, r);
			moved = rk_now();
		}
		if (atomic_load(&h->state) == 2)
			break;
		if (rk_now() - moved > STALL_SEC) {
			atomic_store(&h->stalled, 1);
			break;
		}
		struct timespec ts = {0, 200000};
		nanosleep(&ts, NULL);
	}
	if (h->release)
		h->release(h);
	RK_TSAN_SECTION_END();
	urcu_memb_read_unlock();
	atomic_store(&h->state, 3);
	urcu_memb_unregister_thread();
	return NULL;
}

static void holder_start(struct holder *h)
{
	atomic_store(&h->state, 0);
	atomic_store(&h->req, 0);
	atomic_store(&h->done, 0);
	atomic_store(&h->bad, 0);
	atomic_store(&h->stalled, 0);
	assert_int_equal(pthread_create(&h->tid, NULL, holder_main, h), 0);
	while (atomic_load(&h->state) == 0)
		sched_yield();
}

/* Ask the reader to run its check now, inside its section; returns when it did (or left). */
static void holder_ask(struct holder *h)
{
	long r = atomic_fetch_add(&h->req, 1) + 1;
	while (atomic_load(&h->done) < r && atomic_load(&h->state) == 1)
		sched_yield();
}

static void holder_leave(struct holder *h, const char *what)
{
	atomic_store(&h->state, 2);
	pthread_join(h->tid, NULL);
	if (atomic_load(&h->stalled))
		print_error(
			"%s: a call of the main thread made no progress for %d s while a reader "
			"was inside its read-side section (it waited for that reader's grace "
			"period)\n",
			what, STALL_SEC);
	assert_int_equal(atomic_load(&h->stalled), 0);
}

/* ------------------------------------------------------------------ helpers ---------------- */
/* In a child: die with the test (a hung child must not outlive a killed test binary). */
static void die_with_parent(void)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static cpu_set_t saved_cpus;

static int pin_first(void **state)
{
	(void)state;
	allowed_cpus(&saved_cpus);
	return pin_to_cpu(first_allowed_cpu());
}

static int unpin(void **state)
{
	(void)state;
	set_affinity(&saved_cpus);
	return 0;
}

/* The cache whose rcu counters an sa_free_rcu of obj moves. */
static struct sa_cache *rcu_cache_of(void *obj)
{
	struct sa_slab *s = sa_slab_of(obj);
	struct sa_cache *c = s ? s->cache : NULL;
	if (!c || sa_malloc_marker(c))
		return sa_rcu_block_cache();
	return c;
}

/* ------------------------------------------------------------------ 1: a section holds ----- */
struct hold_obj {
	void *_Atomic slot;
	void *seen;
};

static int check_held(struct holder *h)
{
	struct hold_obj *o = h->arg;
	if (!o->seen) { /* first call: dereference the slot */
		o->seen = __atomic_load_n(&o->slot, __ATOMIC_ACQUIRE);
		h->gen = 0;
	}
	const char *why = rk_verify(o->seen, &h->gen);
	if (why)
		print_error("reader: held object %p: %s\n", o->seen, why);
	return why != NULL;
}

static void release_held(struct holder *h)
{
	RK_TSAN_READ_DONE(((struct hold_obj *)h->arg)->seen);
}

static void hold_one_kind(int kind)
{
	struct rk_scenario sc = {.kinds = RK_BIT(kind)};
	rk_setup(&sc);
	sa_rcu_barrier();
	size_t size;
	void *p = rk_alloc(&sc, kind, 1, &size); /* small: 200 B */
	assert_non_null(p);
	rk_stamp(p, size, 4242);
	struct hold_obj o = {.slot = p};
	struct holder h = {.check = check_held, .release = release_held, .arg = &o};
	holder_start(&h);
	assert_ptr_equal(o.seen, p);

	void *old = __atomic_exchange_n(&o.slot, NULL, __ATOMIC_ACQ_REL);
#if RCU_TEST_SABOTAGE
	sa_free(old);
#else
	sa_free_rcu(old);
#endif
	struct sa_cache *rc = rcu_cache_of(p);
	unsigned m = kind == RK_HUGE	? 6
		     : kind == RK_LARGE ? 48
					: 4 * sa_cache_sheaf_capacity(rc) + 64;
	void **objs = calloc(m, sizeof(void *));
	assert_non_null(objs);
	long reused = 0;
	for (int round = 0; round < 4; round++) {
		for (unsigned i = 0; i < m; i++) {
			size_t sz;
			objs[i] = rk_alloc(&sc, kind, 1, &sz);
			assert_non_null(objs[i]);
			reused += objs[i] == p;
			rk_stamp(objs[i], sz, 100000 + i); /* a new owner writes at once */
		}
		holder_ask(&h);
		for (unsigned i = 0; i < m; i++) {
			if (round == 1)
				sa_free_rcu(objs[i]);
			else
				sa_free(objs[i]);
		}
		sa_trim();
		if (sc.c64)
			sa_cache_shrink(sc.c64);
		if (sc.c1k)
			sa_cache_shrink(sc.c1k);
		holder_ask(&h);
	}
	struct sa_cache_stats s = get_stats(rc);
	print_message("%s: object %p held by a reader; %ld of %u x 4 allocations returned it; "
		      "rcu_waiting %llu\n",
		      rk_name[kind], p, reused, m, (unsigned long long)s.rcu_waiting);
	int bad = atomic_load(&h.bad);
	holder_leave(&h, rk_name[kind]);
	if (reused)
		print_error("%s: an object freed with sa_free_rcu was handed out again while a "
			    "reader that saw it was inside its read-side section\n",
			    rk_name[kind]);
	assert_int_equal(reused, 0);
	assert_int_equal(bad, 0);
	assert_true(s.rcu_waiting >= 1);
	sa_rcu_barrier();
	rk_assert_rcu_done(rc);
	free(objs);
	if (sc.c64)
		rk_assert_cache_empty(sc.c64);
	if (sc.c1k)
		rk_assert_cache_empty(sc.c1k);
	sa_cache_destroy(sc.c64);
	sa_cache_destroy(sc.c1k);
	free((void *)sc.slots[kind]);
}

static void test_section_holds_object(void **state)
{
	(void)state;
	rk_install_segv();
	const int kinds[] = {RK_C64, RK_C1K, RK_SMALL, RK_LARGE, RK_HUGE};
	for (unsigned i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		hold_one_kind(kinds[i]);
}

/* ------------------------------------------------------------------ 1: readers, writers ---- */
static void readers_writers(unsigned kinds, long iters)
{
	struct rk_scenario sc = {.kinds = kinds, .nwriters = 2, .nreaders = 2};
	sc.iters = iters / rk_scale();
	rk_scenario_full(&sc);
}

static void test_readers_writers_cache64(void **state)
{
	(void)state;
	readers_writers(RK_BIT(RK_C64), 20000);
}

static void test_readers_writers_cache1k(void **state)
{
	(void)state;
	readers_writers(RK_BIT(RK_C1K), 20000);
}

static void test_readers_writers_small(void **state)
{
	(void)state;
	readers_writers(RK_BIT(RK_SMALL), 20000);
}

static void test_readers_writers_large(void **state)
{
	(void)state;
	readers_writers(RK_BIT(RK_LARGE), 20000);
}

static void test_readers_writers_huge(void **state)
{
	(void)state;
	readers_writers(RK_BIT(RK_HUGE), 20000);
}

static void test_readers_writers_all(void **state)
{
	(void)state;
	readers_writers(RK_BIT(RK_C64) | RK_BIT(RK_C1K) | RK_BIT(RK_SMALL) | RK_BIT(RK_LARGE) |
				RK_BIT(RK_HUGE),
			10000);
}

/* ------------------------------------------------------------------ 2: typesafe ------------ */
static void test_typesafe_readers(void **state)
{
	(void)state;
	struct rk_scenario sc = {
		.kinds = RK_BIT(RK_TS), .nwriters = 2, .nreaders = 2, .shrinker = 1};
	sc.iters = 20000 / rk_scale();
	rk_scenario_full(&sc);
}

static void test_typesafe_ctor_once(void **state)
{
	(void)state;
	struct sa_cache_args a = {.ctor = rk_ts_ctor,
				  .flags = RCU_TEST_SABOTAGE ? 0 : SA_CACHE_TYPESAFE_RCU};
	struct sa_cache *c = sa_cache_create("rcu-ctor-once", sizeof(struct rk_ts_obj), &a);
	assert_non_null(c);
	long c0 = atomic_load(&rk_ctor_calls);
	enum { N = 100, ROUNDS = 1000 };
	void *objs[N];
	long bad = 0;
	for (int r = 0; r < ROUNDS; r++) {
		assert_int_equal(sa_cache_alloc_bulk(c, 0, N, objs), N);
		for (int i = 0; i < N; i++) {
			struct rk_ts_obj *o = objs[i];
			bad += o->tag != RK_TAG_TS || o->self != (uint64_t)(uintptr_t)o;
			o->gen = (uint64_t)r; /* users write their own fields only */
		}
		for (int i = 0; i < N; i++) {
			if (i % 2)
				sa_free_rcu(objs[i]);
			else
				sa_cache_free(c, objs[i]);
		}
		if (r % 100 == 99)
			sa_rcu_barrier();
	}
	sa_rcu_barrier();
	struct sa_cache_stats s = get_stats(c);
	long ctors = atomic_load(&rk_ctor_calls) - c0;
	print_message("%llu allocations, %ld constructor calls, %llu slabs of %u objects\n",
		      (unsigned long long)stats_out(&s), ctors,
		      (unsigned long long)s.slabs_allocated, c->slab_objs);
	assert_int_equal(bad, 0);
	assert_int_equal((uint64_t)ctors, s.slabs_allocated * c->slab_objs);
	assert_int_equal(stats_out(&s), (uint64_t)N * ROUNDS);
	assert_true((uint64_t)ctors * 10 < stats_out(&s)); /* not one per allocation */
	rk_assert_cache_empty(c);
	sa_cache_destroy(c);
}

struct ts_hold {
	struct rk_ts_obj **objs;
	size_t n;
};

static int check_ts_all(struct holder *h)
{
	struct ts_hold *t = h->arg;
	int bad = 0;
	for (size_t i = 0; i < t->n; i++) {
		const char *why = rk_verify_ts(t->objs[i]);
		if (why && !bad++)
			print_error("reader: object %p: %s\n", (void *)t->objs[i], why);
	}
	return bad;
}

static void release_ts_all(struct holder *h)
{
	struct ts_hold *t = h->arg;
	for (size_t i = 0; i < t->n; i++)
		RK_TSAN_READ_DONE(t->objs[i]);
}

static void test_typesafe_slab_waits_for_reader(void **state)
{
	(void)state;
	rk_install_segv();
	struct sa_cache_args a = {.ctor = rk_ts_ctor,
				  .flags = RCU_TEST_SABOTAGE ? 0 : SA_CACHE_TYPESAFE_RCU};
	struct sa_cache *c = sa_cache_create("rcu-ts-hold", sizeof(struct rk_ts_obj), &a);
	struct sa_cache_args f = {.ctor = rk_foreign_ctor};
	struct sa_cache *foreign = sa_cache_create("rcu-ts-foreign", sizeof(struct rk_ts_obj), &f);
	assert_non_null(c);
	assert_non_null(foreign);
	size_t n = (size_t)c->slab_objs * 3;
	struct rk_ts_obj **objs = calloc(n, sizeof(*objs));
	void **fobjs = calloc(n * 2, sizeof(void *));
	assert_non_null(objs);
	assert_non_null(fobjs);
	assert_int_equal(sa_cache_alloc_bulk(c, 0, n, (void **)objs), n);
	sa_rcu_barrier();
	struct ts_hold th = {objs, n};
	struct holder h = {.check = check_ts_all, .release = release_ts_all, .arg = &th};
	holder_start(&h); /* the reader now holds every object */
	struct sa_cache_stats s0 = get_stats(c);

	/* free everything (at once: a typesafe cache may reuse objects), then shrink and trim,
	 * and let another cache of the same size take whatever memory comes free */
	/* the objects of one slab go through sa_free_rcu (that slab stays), the others are
	 * freed at once: at least two slabs (3 slabs' worth of objects) empty completely */
	struct sa_slab *keep = sa_slab_of(objs[0])->head;
	for (size_t i = 0; i < n; i++) {
		if (sa_slab_of(objs[i])->head == keep)
			sa_free_rcu(objs[i]);
		else
			sa_cache_free(c, objs[i]);
	}
	for (int round = 0; round < 3; round++) {
		sa_cache_shrink(c);
		sa_trim();
		size_t got = sa_cache_alloc_bulk(foreign, 0, n * 2, fobjs);
		for (size_t i = 0; i < got; i++)
			((struct rk_ts_obj *)fobjs[i])->self = 0xdead;
		holder_ask(&h);
		sa_cache_free_bulk(foreign, got, fobjs);
		sa_cache_shrink(foreign);
		sa_trim();
		holder_ask(&h);
	}
	struct sa_cache_stats s1 = get_stats(c);
	int bad = atomic_load(&h.bad);
	print_message("during the section: slabs_freed %llu -> %llu, rcu_slabs_delayed %llu -> "
		      "%llu, reader found %d bad object(s)\n",
		      (unsigned long long)s0.slabs_freed, (unsigned long long)s1.slabs_freed,
		      (unsigned long long)s0.rcu_slabs_delayed,
		      (unsigned long long)s1.rcu_slabs_delayed, bad);
	holder_leave(&h, "typesafe slabs");
	assert_int_equal(bad, 0);
	assert_int_equal(s1.slabs_freed, s0.slabs_freed);
	assert_true(s1.rcu_slabs_delayed >= s0.rcu_slabs_delayed + 2);

	sa_rcu_barrier();
	struct sa_cache_stats s2 = get_stats(c);
	print_message("after the reader left and a barrier: slabs_freed %llu, slabs %llu\n",
		      (unsigned long long)s2.slabs_freed, (unsigned long long)s2.slabs);
	assert_true(s2.slabs_freed >=
		    s0.slabs_freed + (s1.rcu_slabs_delayed - s0.rcu_slabs_delayed));
	rk_assert_cache_empty(c);
	rk_assert_cache_empty(foreign);
	sa_cache_destroy(c);
	sa_cache_destroy(foreign);
	free(objs);
	free(fobjs);
}

/* ------------------------------------------------------------------ 3: contexts ------------ */
struct unreg_job {
	struct sa_cache *c;
	int ok;
};

static void *unregistered_main(void *p)
{
	struct unreg_job *j = p;
	/* never calls urcu_memb_register_thread */
	enum { N = 3000 };
	static void *objs[N];
	for (int i = 0; i < N; i++) {
		objs[i] = i % 3 ? sa_cache_alloc(j->c, 0) : sa_malloc(8 + (size_t)(i % 500));
		if (!objs[i])
			return NULL;
		memset(objs[i], 0x5a, 8);
	}
	for (int i = 0; i < N; i++)
		sa_free_rcu(objs[i]);
	void *big = sa_malloc(RK_LARGE_SIZE);
	sa_free_rcu(big);
	sa_rcu_barrier();
	j->ok = 1;
	return NULL;
}

static void test_unregistered_thread(void **state)
{
	(void)state;
	struct rk_baseline b;
	sa_rcu_barrier();
	rk_baseline_take(&b);
	struct unreg_job j = {.c = sa_cache_create("rcu-unreg", 48, NULL)};
	assert_non_null(j.c);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, unregistered_main, &j), 0);
	pthread_join(t, NULL);
	assert_int_equal(j.ok, 1);
	/* the barrier of that thread covered its frees: nothing left, without one of ours */
	rk_assert_rcu_done(j.c);
	struct sa_cache_stats s = get_stats(j.c);
	assert_int_equal(s.rcu_freed, 2000);
	rk_assert_malloc_back(&b);
	rk_assert_cache_empty(j.c);
	sa_cache_destroy(j.c);
}

static int check_nothing(struct holder *h)
{
	(void)h;
	return 0;
}

static void test_nowait_scope(void **state)
{
	(void)state;
	struct sa_cache_args a = {.sheaf_capacity = 16};
	struct sa_cache *c = sa_cache_create("rcu-nowait", 64, &a);
	assert_non_null(c);
	enum { N = 16 * 40 + 7 };
	static void *objs[N];
	assert_int_equal(sa_cache_alloc_bulk(c, 0, N, objs), N);
	sa_rcu_barrier();
	struct sa_cache_stats s0 = get_stats(c);
	struct holder h = {.check = check_nothing};
	holder_start(&h); /* no grace period can end while it is inside */

	unsigned cookie = sa_memalloc_nowait_save();
	for (int i = 0; i < N; i++)
		sa_free_rcu(objs[i]);
	sa_rcu_barrier(); /* may not wait here: returns at once (else: the holder's guard) */
	holder_ask(&h);
	struct sa_cache_stats s1 = get_stats(c);
	sa_memalloc_nowait_restore(cookie);

	uint64_t deferred = s1.rcu_deferred - s0.rcu_deferred;
	print_message("inside NOWAIT: %d sa_free_rcu calls, %llu waiting, %llu deferred, %llu "
		      "freed\n",
		      N, (unsigned long long)s1.rcu_waiting, (unsigned long long)deferred,
		      (unsigned long long)(s1.rcu_freed - s0.rcu_freed));
	holder_leave(&h, "sa_rcu_barrier inside a NOWAIT scope");
	/* nothing can have been freed: the reader blocked every grace period */
	assert_int_equal(s1.rcu_freed, s0.rcu_freed);
	assert_int_equal(s1.rcu_waiting + deferred, N);
	assert_int_equal(s1.objects_in_use, N);

	sa_rcu_barrier();
	struct sa_scope_stats g;
	assert_int_equal(sa_scope_stats(&g), 0);
	assert_int_equal(g.deferred_now, 0);
	struct sa_cache_stats s2 = get_stats(c);
	assert_int_equal(s2.rcu_freed - s0.rcu_freed, N);
	rk_assert_cache_empty(c);
	sa_cache_destroy(c);
}

/* ---- the same without any system call, proven with seccomp in a forked child ---- */
struct trap_log {
	atomic_int count;
	int first_nr[8];
	atomic_int armed;
	atomic_int done;
};
static struct trap_log *tlog;

static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	/* the call was not made; one made while armed is counted and ends the process (a lock's
	 * futex wait that fails would otherwise spin forever): the parent reports it */
	if (atomic_load(&tlog->armed)) {
		int n = atomic_fetch_add(&tlog->count, 1);
		if (n < 8)
			tlog->first_nr[n] = si->si_syscall;
		syscall(SYS_exit_group, 7);
	}
	((ucontext_t *)uc)->uc_mcontext.gregs[REG_RAX] = -ENOSYS;
}

/* This thread only: every system call but rt_sigreturn, exit and exit_group traps. */
static int trap_all_syscalls(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_rt_sigreturn, 3, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_exit_group, 2, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_exit, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0 ? 0 : -1;
}

struct trapped_job {
	struct sa_cache *c;
	void **objs;
	int setup_failed;
};

static void *trapped_main(void *p)
{
	struct trapped_job *j = p;
	if (pin_to_cpu(first_allowed_cpu()) != 0) {
		j->setup_failed = 1;
		atomic_store(&tlog->done, 1);
		return NULL;
	}
	/* warm up this thread (rseq registration, its slot's rcu sheaf) */
	void *w = sa_cache_alloc(j->c, 0);
	sa_free_rcu(w);
	sa_rcu_barrier();
	for (int i = 0; i < NOWAIT_FREES; i++)
		if (!(j->objs[i] = sa_cache_alloc(j->c, 0)))
			j->setup_failed = 1;
	struct sigaction sa = {.sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO};
	sigaction(SIGSYS, &sa, NULL);
	/* sabotage: no scope, so a full sheaf's submission wakes the RCU thread (futex) */
	unsigned cookie = RCU_TEST_SABOTAGE ? 0 : sa_memalloc_nowait_save();
	if (j->setup_failed || trap_all_syscalls() != 0) {
		j->setup_failed = 1;
		atomic_store(&tlog->done, 1);
		return NULL;
	}
	atomic_store(&tlog->armed, 1);
	for (int i = 0; i < NOWAIT_FREES; i++)
		sa_free_rcu(j->objs[i]);
	sa_rcu_barrier(); /* a no-op inside NOWAIT */
	atomic_store(&tlog->armed, 0);
	(void)cookie;
	atomic_store(&tlog->done, 1);
	/* Park inside the scope: every system call of this thread traps from now on (its exit
	 * too: glibc's madvise of the stack), so it never ends; the process's exit ends it. */
	for (;;)
		__builtin_ia32_pause();
	return NULL;
}

static int trapped_child(void)
{
	struct sa_cache_args a = {.sheaf_capacity = 16};
	struct sa_cache *c = sa_cache_create("rcu-nowait-trap", 64, &a);
	if (!c)
		return 2;
	/* the RCU thread exists before the filter (it is created unfiltered) */
	void *w = sa_cache_alloc(c, 0);
	sa_free_rcu(w);
	sa_rcu_barrier();
	struct trapped_job j = {.c = c, .objs = calloc(NOWAIT_FREES, sizeof(void *))};
	if (!j.objs)
		return 2;
	pthread_t t;
	if (pthread_create(&t, NULL, trapped_main, &j) != 0)
		return 2;
	while (!atomic_load(&tlog->done))
		sched_yield();
	if (j.setup_failed)
		return 3;
	if (atomic_load(&tlog->count))
		return 1;
	/* the scope's thread is parked: this thread may wait */
	sa_rcu_barrier();
	struct sa_cache_stats s;
	sa_cache_stats(c, &s);
	if (s.rcu_queued != s.rcu_freed || s.rcu_waiting || s.objects_in_use ||
	    s.rcu_freed != NOWAIT_FREES + 2) {
		fprintf(stderr,
			"nowait child: after the barrier: rcu_queued %llu rcu_freed %llu "
			"rcu_waiting %llu in use %llu (expected %d freed)\n",
			(unsigned long long)s.rcu_queued, (unsigned long long)s.rcu_freed,
			(unsigned long long)s.rcu_waiting, (unsigned long long)s.objects_in_use,
			NOWAIT_FREES + 2);
		return 6;
	}
	fprintf(stderr,
		"nowait child: %d sa_free_rcu calls inside NOWAIT without a system call; %llu "
		"deferred; all freed by the barrier afterwards\n",
		NOWAIT_FREES, (unsigned long long)s.rcu_deferred);
	return 0;
}

/* The body of the fresh process (this binary run with --nowait-trap FD; FD: the shared log). */
static int trapped_process(int fd)
{
	tlog = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (tlog == MAP_FAILED)
		return 2;
	int r = trapped_child();
	fflush(stderr);
	_exit(r); /* exit_group: the parked thread too */
}

/*
 * Runs in a fresh process (this binary executed again), not in a forked child: a child forked
 * from this multi-threaded test inherits the RCU thread's condition-variable state and can hang
 * in sa_rcu_kick (test_fork is about that); here only the NOWAIT property is under test.
 */
static void test_nowait_no_syscall(void **state)
{
	(void)state;
	if (running_on_valgrind() || SA_TEST_SANITIZER) {
		print_message("under valgrind or a sanitizer: skipped (their runtimes make system "
			      "calls of their own)\n");
		skip();
	}
	int fd = memfd_create("rcu-trap-log", 0);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 4096), 0);
	tlog = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(tlog != MAP_FAILED);
	char fdarg[16];
	snprintf(fdarg, sizeof(fdarg), "%d", fd);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		die_with_parent();
		execl(self_exe, self_exe, "--nowait-trap", fdarg, (char *)NULL);
		_exit(2);
	}
	close(fd);
	int st = 0;
	/* the child's work takes milliseconds; only a hang reaches this guard */
	double t0 = rk_now();
	while (waitpid(pid, &st, WNOHANG) != pid) {
		if (rk_now() - t0 > STALL_SEC) {
			print_error("the child did not finish within %d s: killed\n", STALL_SEC);
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			break;
		}
		struct timespec ts = {0, 2000000};
		nanosleep(&ts, NULL);
	}
	if (WIFEXITED(st) && (WEXITSTATUS(st) == 2 || WEXITSTATUS(st) == 3)) {
		munmap(tlog, 4096);
		print_message("could not set the test up (step %d): skipped\n", WEXITSTATUS(st));
		skip();
	}
	int count = atomic_load(&tlog->count);
	if (count) {
		char buf[128] = "";
		for (int i = 0; i < count && i < 8; i++)
			snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), " %d",
				 tlog->first_nr[i]);
		print_error("sa_free_rcu inside a NOWAIT scope made a system call (the first "
			    "ended the process), numbers:%s (9 mmap, 11 munmap, 28 madvise, "
			    "202 futex, 324 membarrier)\n",
			    buf);
	}
	munmap(tlog, 4096);
	assert_int_equal(count, 0);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* ------------------------------------------------------------------ 5: statistics ---------- */
static void test_stats_consistency(void **state)
{
	(void)state;
	enum { CAP = 32, N = CAP * 10 + 5 };
	struct sa_cache_args a = {.sheaf_capacity = CAP};
	struct sa_cache *c = sa_cache_create("rcu-stats", 64, &a);
	assert_non_null(c);
	static void *objs[N];
	assert_int_equal(sa_cache_alloc_bulk(c, 0, N, objs), N);
	sa_rcu_barrier();
	struct holder h = {.check = check_nothing};
	holder_start(&h);
	double t0 = rk_now();
	for (int i = 0; i < N; i++)
		sa_free_rcu(objs[i]);
	holder_ask(&h);
	struct sa_cache_stats s1 = get_stats(c);
	double held = rk_now() - t0;
	holder_leave(&h, "statistics");
	print_message("reader inside: rcu_waiting %llu rcu_queued %llu rcu_sheaves %llu rcu_freed "
		      "%llu in use %llu\n",
		      (unsigned long long)s1.rcu_waiting, (unsigned long long)s1.rcu_queued,
		      (unsigned long long)s1.rcu_sheaves, (unsigned long long)s1.rcu_freed,
		      (unsigned long long)s1.objects_in_use);
	assert_int_equal(s1.rcu_waiting, N);
	assert_int_equal(s1.rcu_freed, 0);
	assert_int_equal(s1.rcu_callbacks, 0);
	assert_int_equal(s1.objects_in_use, N); /* in use until freed */
	assert_true(s1.rcu_queued <= N);
	assert_true(s1.rcu_queued >= N - CAP); /* pinned: one slot's sheaf holds the rest */
	assert_true(s1.rcu_sheaves <= s1.rcu_queued);
	assert_true(s1.rcu_sheaves * CAP >= s1.rcu_queued);

	double t1 = rk_now();
	sa_rcu_barrier();
	struct sa_cache_stats s2 = get_stats(c);
	assert_int_equal(s2.rcu_queued, N);
	assert_int_equal(s2.rcu_freed, N);
	assert_int_equal(s2.rcu_waiting, 0);
	assert_int_equal(s2.rcu_sheaves, s2.rcu_callbacks);
	/* one callback per sheaf, never per object: full sheaves, plus the partial ones a tick
	 * (every 500 ms, at most one per CPU slot) or the barrier drained */
	uint64_t ticks = (uint64_t)((held + rk_now() - t1) / 0.5) + 2;
	print_message("after the barrier: %llu objects in %llu callbacks (%.1f objects per "
		      "callback)\n",
		      (unsigned long long)s2.rcu_freed, (unsigned long long)s2.rcu_callbacks,
		      (double)s2.rcu_freed / (double)s2.rcu_callbacks);
	assert_true(s2.rcu_callbacks <= (uint64_t)(N / CAP) + 1 + ticks * (uint64_t)sa_nr_cpus);
	assert_true(s2.rcu_callbacks >= (uint64_t)(N + CAP - 1) / CAP);
	rk_assert_cache_empty(c);
	sa_cache_destroy(c);
}

/*
 * rcu_max_pending (alloc/rcu.c throttle) while a reader blocks every grace period, so that the
 * objects queued pass the bound and nothing is processed: a thread inside a read-side section
 * of its own never waits (it could be what the grace period waits for); a thread outside waits
 * exactly once (its wait times out: no batch can finish), then nobody waits again until the
 * RCU thread finishes a batch, so the frees go on; with rcu_max_pending=0 nobody waits. After
 * the reader leaves, a barrier frees everything.
 */
static void test_throttle(void **state)
{
	(void)state;
	enum { N = 8000 }; /* 500 KiB of 64-byte objects per phase: 8x the bound */
	size_t saved = sa_opt.rcu_max_pending;
	sa_opt.rcu_max_pending = 64 << 10;
	struct sa_cache *c = sa_cache_create("rcu-throttle", 64, NULL);
	assert_non_null(c);
	static void *objs[3][N];
	for (int k = 0; k < 3; k++)
		assert_int_equal(sa_cache_alloc_bulk(c, 0, N, objs[k]), N);
	/* a batch finishes here, so no earlier test's timed-out wait carries over */
	void *one = sa_cache_alloc(c, 0);
	assert_non_null(one);
	sa_free_rcu(one);
	sa_rcu_barrier();
	assert_int_equal(get_stats(c).rcu_throttled, 0);

	struct holder h = {.check = check_nothing};
	holder_start(&h);
	/* 1: inside a section of the default flavor: never waits */
	urcu_memb_register_thread();
	urcu_memb_read_lock();
	for (int i = 0; i < N; i++)
		sa_free_rcu(objs[0][i]);
	urcu_memb_read_unlock();
	urcu_memb_unregister_thread();
	holder_ask(&h);
	struct sa_cache_stats s1 = get_stats(c);
	assert_int_equal(s1.rcu_throttled, 0);
	assert_true(s1.rcu_queued * 64 > 2 * sa_opt.rcu_max_pending); /* the bound was passed */
	assert_int_equal(s1.rcu_freed, 1);
	/* 2: outside every section: one wait (it times out), then none while nothing finishes */
	for (int i = 0; i < N; i++)
		sa_free_rcu(objs[1][i]);
	holder_ask(&h);
	struct sa_cache_stats s2 = get_stats(c);
	assert_int_equal(s2.rcu_throttled, 1);
	assert_int_equal(s2.rcu_freed, 1);
	assert_int_equal(s2.rcu_waiting, 2 * N);
	/* 3: no bound */
	sa_opt.rcu_max_pending = 0;
	for (int i = 0; i < N; i++)
		sa_free_rcu(objs[2][i]);
	holder_ask(&h);
	assert_int_equal(get_stats(c).rcu_throttled, 1);
	holder_leave(&h, "throttle");
	assert_int_equal(atomic_load(&h.bad), 0);

	sa_rcu_barrier();
	struct sa_cache_stats s4 = get_stats(c);
	assert_int_equal(s4.rcu_freed, 3 * N + 1);
	assert_int_equal(s4.rcu_waiting, 0);
	assert_int_equal(s4.rcu_throttled, 1);
	rk_assert_cache_empty(c);
	sa_cache_destroy(c);
	sa_opt.rcu_max_pending = saved;
}

/* A huge block in the smallest class's rcu sheaf counts at its size, not the class's: with a
 * 1 MiB bound, one 3 MiB block and small objects that fill the sheaf make its submission wait
 * (once: a reader blocks the grace period). Pinned: one CPU's rcu sheaf carries them all. */
static void test_throttle_blocks(void **state)
{
	(void)state;
	enum { SMALL = 2000 }; /* 31 KiB at 16 B each: far below the bound alone */
	size_t saved = sa_opt.rcu_max_pending;
	sa_opt.rcu_max_pending = 1 << 20;
	struct sa_cache *bc = rcu_cache_of(sa_malloc(16)); /* the 16-byte class (leaked: 16 B) */
	static void *small[SMALL];
	for (int i = 0; i < SMALL; i++)
		assert_non_null(small[i] = sa_malloc(16));
	void *huge = sa_malloc((size_t)3 << 20);
	assert_non_null(huge);
	assert_ptr_equal(rcu_cache_of(huge), bc);
	void *one = sa_malloc(16);
	sa_free_rcu(one);
	sa_rcu_barrier(); /* a batch finishes: no earlier timed-out wait carries over */
	uint64_t t0 = get_stats(bc).rcu_throttled;
	struct holder h = {.check = check_nothing};
	holder_start(&h);
	sa_free_rcu(huge);
	for (int i = 0; i < SMALL; i++)
		sa_free_rcu(small[i]);
	holder_ask(&h);
	struct sa_cache_stats s1 = get_stats(bc);
	holder_leave(&h, "throttle of blocks");
	sa_rcu_barrier();
	sa_opt.rcu_max_pending = saved;
	assert_true(s1.rcu_sheaves > 0); /* the sheaf with the block was submitted */
	assert_int_equal(s1.rcu_throttled - t0, 1);
	assert_int_equal(get_stats(bc).rcu_waiting, 0);
}

/* Value of "field" in the block of one cache: text ("  field   N") or JSON ("field": N). */
static long long stat_in_text(const char *text, const char *cache, const char *field, int json)
{
	char key[128];
	snprintf(key, sizeof(key), json ? "\"name\": \"%s\"" : "cache %s:", cache);
	const char *blk = strstr(text, key);
	if (!blk)
		return -1;
	const char *end = strstr(blk + 1, json ? "}" : "\ncache ");
	if (!end)
		end = blk + strlen(blk);
	snprintf(key, sizeof(key), json ? "\"%s\": " : "  %s ", field);
	const char *f = strstr(blk, key);
	if (!f || f > end)
		return -1;
	return strtoll(f + strlen(key), NULL, 10);
}

static char *print_to_string(void (*print)(int))
{
	FILE *tmp = tmpfile();
	assert_non_null(tmp);
	print(fileno(tmp));
	off_t len = lseek(fileno(tmp), 0, SEEK_END);
	assert_true(len > 0);
	char *text = calloc(1, (size_t)len + 1);
	assert_non_null(text);
	assert_int_equal(pread(fileno(tmp), text, (size_t)len, 0), len);
	fclose(tmp);
	return text;
}

static void test_stats_print(void **state)
{
	(void)state;
	struct sa_cache_args a = {.sheaf_capacity = 8};
	struct sa_cache *c = sa_cache_create("rcu-print", 64, &a);
	assert_non_null(c);
	void *objs[37];
	assert_int_equal(sa_cache_alloc_bulk(c, 0, 37, objs), 37);
	for (int i = 0; i < 37; i++)
		sa_free_rcu(objs[i]);
	sa_rcu_barrier();
	struct sa_cache_stats s = get_stats(c);
	char *text = print_to_string(sa_stats_print);
	char *json = print_to_string(sa_stats_print_json);
	const struct {
		const char *name;
		uint64_t v;
	} f[] = {
		{"rcu_queued", s.rcu_queued},	    {"rcu_sheaves", s.rcu_sheaves},
		{"rcu_callbacks", s.rcu_callbacks}, {"rcu_freed", s.rcu_freed},
		{"rcu_deferred", s.rcu_deferred},   {"rcu_slabs_delayed", s.rcu_slabs_delayed},
		{"rcu_waiting", s.rcu_waiting},	    {"rcu_throttled", s.rcu_throttled},
	};
	for (unsigned i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		long long t = stat_in_text(text, "rcu-print", f[i].name, 0);
		long long j = stat_in_text(json, "rcu-print", f[i].name, 1);
		if (t != (long long)f[i].v || j != (long long)f[i].v)
			print_error("%s: sa_cache_stats %llu, sa_stats_print %lld, "
				    "sa_stats_print_json %lld (-1: missing)\n",
				    f[i].name, (unsigned long long)f[i].v, t, j);
		assert_int_equal(t, (long long)f[i].v);
		assert_int_equal(j, (long long)f[i].v);
	}
	assert_int_equal(s.rcu_queued, 37);
	free(text);
	free(json);
	rk_assert_cache_empty(c);
	sa_cache_destroy(c);
}

/* ------------------------------------------------------------------ flavors ---------------- */
static atomic_long custom_syncs;

static void counting_synchronize(void)
{
	atomic_fetch_add(&custom_syncs, 1);
	urcu_memb_synchronize_rcu();
}

static void test_custom_flavor(void **state)
{
	(void)state;
	static struct rcu_flavor_struct counting;
	counting = urcu_memb_flavor;
	counting.update_synchronize_rcu = counting_synchronize;
	struct sa_cache_args a = {.rcu = &counting};
	struct sa_cache *c = sa_cache_create("rcu-flavor", 64, &a);
	struct sa_cache *d = sa_cache_create("rcu-default-flavor", 64, NULL);
	assert_non_null(c);
	assert_non_null(d);
	sa_rcu_barrier();
	long s0 = atomic_load(&custom_syncs);
	for (int i = 0; i < 1000; i++)
		sa_free_rcu(sa_cache_alloc(d, 0));
	sa_rcu_barrier();
	long s1 = atomic_load(&custom_syncs);
	for (int i = 0; i < 1000; i++)
		sa_free_rcu(sa_cache_alloc(c, 0));
	sa_rcu_barrier();
	long s2 = atomic_load(&custom_syncs);
	print_message("custom flavor grace periods: %ld during the default cache's frees, %ld "
		      "during its own cache's\n",
		      s1 - s0, s2 - s1);
	assert_int_equal(s1, s0);
	assert_true(s2 > s1);
	rk_assert_cache_empty(c);
	rk_assert_cache_empty(d);
	sa_cache_destroy(c);
	sa_cache_destroy(d);
}

/* ------------------------------------------------------------------ destroy ---------------- */
/*
 * A flavor whose grace periods wait at a gate: the slab releases that sa_cache_destroy leaves to
 * the RCU thread cannot run before the test opens it (after creating a new cache). If
 * sa_cache_destroy waits for that grace period itself (the kernel's kmem_cache_destroy calls
 * rcu_barrier for SLAB_TYPESAFE_BY_RCU caches), it cannot return while the gate is shut: the
 * test opens the gate after GATE_SEC without destroy returning, and then passes.
 */
#define GATE_SEC 20
static atomic_int gate_open, gate_entered;

static void gated_synchronize(void)
{
	atomic_store(&gate_entered, 1);
	while (!atomic_load(&gate_open)) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	urcu_memb_synchronize_rcu();
}

static atomic_int destroyed;

static void *destroy_main(void *p)
{
	sa_cache_destroy(p);
	atomic_store(&destroyed, 1);
	return NULL;
}

static void test_destroy_typesafe(void **state)
{
	(void)state;
	static struct rcu_flavor_struct gated;
	gated = urcu_memb_flavor;
	gated.update_synchronize_rcu = gated_synchronize;
	atomic_store(&gate_open, 0);
	atomic_store(&destroyed, 0);
	struct sa_cache_args a = {
		.ctor = rk_ts_ctor, .flags = SA_CACHE_TYPESAFE_RCU, .rcu = &gated};
	struct sa_cache *t = sa_cache_create("rcu-ts-destroy", sizeof(struct rk_ts_obj), &a);
	assert_non_null(t);
	size_t n = (size_t)t->slab_objs * 2;
	void **objs = calloc(n, sizeof(void *));
	assert_non_null(objs);
	assert_int_equal(sa_cache_alloc_bulk(t, 0, n, objs), n);
	sa_cache_free_bulk(t, n, objs);
	free(objs);
	pthread_t d_thread;
	assert_int_equal(pthread_create(&d_thread, NULL, destroy_main, t), 0);
	double t0 = rk_now();
	while (!atomic_load(&destroyed) && rk_now() - t0 < GATE_SEC)
		sched_yield();
	int returned_early = atomic_load(&destroyed);
	/* a new cache of the same size may get the destroyed cache's memory */
	struct sa_cache *d = NULL;
	if (returned_early)
		d = sa_cache_create("rcu-after-destroy", sizeof(struct rk_ts_obj), NULL);
	atomic_store(&gate_open, 1);
	pthread_join(d_thread, NULL);
	if (!d)
		d = sa_cache_create("rcu-after-destroy", sizeof(struct rk_ts_obj), NULL);
	assert_non_null(d);
	sa_rcu_barrier();
	struct sa_cache_stats s = get_stats(d);
	print_message("sa_cache_destroy %s before the grace period of its slab releases; the new "
		      "cache %s the destroyed one's memory: slabs_allocated %llu slabs_freed %llu "
		      "slabs %llu\n",
		      returned_early ? "returned" : "did not return",
		      (void *)d == (void *)t ? "reuses" : "does not reuse",
		      (unsigned long long)s.slabs_allocated, (unsigned long long)s.slabs_freed,
		      (unsigned long long)s.slabs);
	if (s.slabs_freed)
		print_error("the RCU thread released the destroyed typesafe cache's slabs after "
			    "sa_cache_destroy had freed the cache: it counted them into the cache "
			    "created next at the same address (and read the flavor it waited for "
			    "from freed memory)\n");
	assert_int_equal(s.slabs_freed, 0);
	assert_stats_consistent(d, 0);
	sa_cache_destroy(d);
}

int main(int argc, char **argv)
{
	if (argc > 2 && strcmp(argv[1], "--nowait-trap") == 0)
		return trapped_process(atoi(argv[2]));
	ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
	if (n > 0)
		self_exe[n] = 0;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_section_holds_object),
		cmocka_unit_test(test_readers_writers_cache64),
		cmocka_unit_test(test_readers_writers_cache1k),
		cmocka_unit_test(test_readers_writers_small),
		cmocka_unit_test(test_readers_writers_large),
		cmocka_unit_test(test_readers_writers_huge),
		cmocka_unit_test(test_readers_writers_all),
		cmocka_unit_test(test_typesafe_readers),
		cmocka_unit_test(test_typesafe_ctor_once),
		cmocka_unit_test(test_typesafe_slab_waits_for_reader),
		cmocka_unit_test(test_unregistered_thread),
		cmocka_unit_test_setup_teardown(test_nowait_scope, pin_first, unpin),
		cmocka_unit_test(test_nowait_no_syscall),
		cmocka_unit_test_setup_teardown(test_stats_consistency, pin_first, unpin),
		cmocka_unit_test(test_stats_print),
		cmocka_unit_test(test_custom_flavor),
		cmocka_unit_test(test_destroy_typesafe),
		cmocka_unit_test(test_throttle),
		cmocka_unit_test_setup_teardown(test_throttle_blocks, pin_first, unpin),
	};
	const char *filter = getenv("RCU_TEST_FILTER"); /* by hand: one test, e.g. "*fork*" */
	if (filter && *filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("rcu", tests, NULL, NULL);
}
