/*
 * tests/unit/fork.c — fork() must leave the child with usable per-CPU slots, barns and slabs.
 *
 * Deterministic forms of "another thread was inside the allocator when we forked": a helper
 * thread holds one of the allocator's locks for a short while (exactly as the library's own code
 * takes it), the main thread forks meanwhile. The allocator's atfork handlers must either wait
 * for the lock or reset it in the child; a child that cannot allocate within CHILD_SECONDS is
 * deadlocked on a lock owned by a thread that does not exist in it. The child's work takes
 * milliseconds; CHILD_SECONDS is a generous guard that no load or valgrind run comes near (it
 * was 5 s, a bound a loaded machine or valgrind could approach), and only a hang reaches it.
 *
 *   test_fork_while_slot_locked   fallback mode's per-CPU slot spinlock (c->slots[cpu].lock);
 *                                 in rseq mode the lock is unused and the test passes trivially
 *   test_fork_while_node_locked   a cache node's mutex (cnode->lock, taken by atfork already)
 *   test_fork_while_draining      a thread in sa_pcs_drain holds drain_lock and then wants a slot
 *                                 lock (fallback mode): fork must not deadlock against it
 *   test_fork_child_allocates     plain fork: the child allocates, frees, creates caches
 *   test_fork_mid_run_release     a thread held in release_run between giving a run back and
 *                                 counting it (sa_segment_release_test_hook): the child's units
 *                                 in use and dirty bytes match its segments and stashes
 *   test_fork_mid_defer           a thread held in sa_defer between its slot and its count
 *                                 (sa_defer_test_hook), and a sheaf counted for a deferred stack
 *                                 but not pushed (simulated: the counters raised): the child's
 *                                 counts match its slots and stacks, and its deferred free runs
 */
#include "sa_test.h"

#include <signal.h>
#include <stdatomic.h>
#include <time.h>

#define CHILD_SECONDS 60 /* a child that has not finished by then is deadlocked */

struct holder {
	void (*lock)(struct holder *);
	void (*unlock)(struct holder *);
	struct sa_cache *c;
	int cpu;
	atomic_int held;
	int hold_ms;
};

static void *holder_main(void *p)
{
	struct holder *h = p;
	pin_to_cpu(h->cpu);
	h->lock(h);
	atomic_store(&h->held, 1);
	struct timespec ts = {0, (long)h->hold_ms * 1000000L};
	nanosleep(&ts, NULL);
	h->unlock(h);
	return NULL;
}

static void slot_lock(struct holder *h)
{
	uint32_t *l = &h->c->slots[h->cpu].lock;
	while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
		sched_yield();
}

static void slot_unlock(struct holder *h)
{
	__atomic_store_n(&h->c->slots[h->cpu].lock, 0, __ATOMIC_RELEASE);
}

static void node_lock(struct holder *h)
{
	pthread_mutex_lock(&h->c->nodes[0]->lock);
}

static void node_unlock(struct holder *h)
{
	pthread_mutex_unlock(&h->c->nodes[0]->lock);
}

/* Child: on the holder's CPU, allocate and free through the per-CPU layer and the slabs. */
static int child_work(struct sa_cache *c, int cpu)
{
	alarm(CHILD_SECONDS);
	if (pin_to_cpu(cpu) != 0)
		return 10;
	void *objs[500];
	if (sa_cache_alloc_bulk(c, 0, 500, objs) != 500)
		return 2;
	sa_cache_free_bulk(c, 500, objs);
	if (sa_cache_shrink(c) != 0)
		return 3;
	struct sa_cache *d = sa_cache_create("fork-child", 40, NULL);
	if (!d)
		return 4;
	void *p = sa_cache_alloc(d, 0);
	if (!p)
		return 5;
	sa_free(p);
	sa_cache_destroy(d);
	return 0;
}

static void fork_with_holder(struct holder *h)
{
	struct sa_cache *c = h->c;
	/* give the cache installed sheaves on the CPU first */
	pin_to_cpu(h->cpu);
	void *objs[200];
	assert_int_equal(sa_cache_alloc_bulk(c, 0, 200, objs), 200);
	sa_cache_free_bulk(c, 200, objs);

	pthread_t t;
	atomic_store(&h->held, 0);
	assert_int_equal(pthread_create(&t, NULL, holder_main, h), 0);
	while (!atomic_load(&h->held))
		sched_yield();
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork(); /* the lock is held by the other thread right now */
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(child_work(c, h->cpu));
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	pthread_join(t, NULL);
	if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)
		print_error(
			"child hung for %d s: deadlocked on a lock held at fork time by a thread "
			"that does not exist in the child (mode %s)\n",
			CHILD_SECONDS, sa_percpu_mode());
	else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		print_error("child failed: %s %d\n", WIFEXITED(st) ? "status" : "signal",
			    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	/* the parent is fine too */
	assert_int_equal(sa_cache_alloc_bulk(c, 0, 200, objs), 200);
	sa_cache_free_bulk(c, 200, objs);
	assert_stats_consistent(c, 0);
}

/*
 * A thread inside sa_cache_shrink/destroy (sa_pcs_drain) holds c->drain_lock and, in fallback
 * mode, then takes each CPU's slot lock. fork() must not deadlock with it: the atfork handler may
 * not hold a slot lock while it waits for drain_lock. The fork runs in a child process (with an
 * alarm) so that a deadlock fails the test instead of hanging it.
 */
static void drain_lock_then_slot(struct holder *h)
{
	pthread_mutex_lock(&h->c->drain_lock); /* as sa_pcs_drain: drain_lock first ... */
}

static void drain_unlock_after_slot(struct holder *h)
{
	slot_lock(h); /* ... then the slot lock (what sa_pcs_drain does in fallback mode) */
	slot_unlock(h);
	pthread_mutex_unlock(&h->c->drain_lock);
}

static void test_fork_while_draining(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("fork-drain", 64, NULL);
	assert_non_null(c);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(CHILD_SECONDS);
		struct holder h = {.lock = drain_lock_then_slot,
				   .unlock = drain_unlock_after_slot,
				   .c = c,
				   .cpu = first_allowed_cpu(),
				   .hold_ms = 300};
		pthread_t t;
		if (pthread_create(&t, NULL, holder_main, &h) != 0)
			_exit(10);
		while (!atomic_load(&h.held))
			sched_yield();
		pid_t g = fork(); /* drain_lock is held by the other thread right now */
		if (g < 0)
			_exit(11);
		if (g == 0)
			_exit(child_work(c, h.cpu));
		int gs = 0;
		waitpid(g, &gs, 0);
		pthread_join(t, NULL);
		_exit(WIFEXITED(gs) ? WEXITSTATUS(gs) : 12);
	}
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)
		print_error("fork() deadlocked for %d s against a thread holding drain_lock (as in "
			    "sa_cache_shrink) that waits for a slot lock (mode %s)\n",
			    CHILD_SECONDS, sa_percpu_mode());
	else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		print_error("failed: %s %d\n", WIFEXITED(st) ? "status" : "signal",
			    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	sa_cache_destroy(c);
}

static cpu_set_t saved;

static int setup(void **state)
{
	(void)state;
	allowed_cpus(&saved);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	set_affinity(&saved);
	return 0;
}

static void test_fork_while_slot_locked(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("fork-slot", 64, NULL);
	assert_non_null(c);
	struct holder h = {.lock = slot_lock,
			   .unlock = slot_unlock,
			   .c = c,
			   .cpu = first_allowed_cpu(),
			   .hold_ms = 300};
	fork_with_holder(&h);
	sa_cache_destroy(c);
}

static void test_fork_while_node_locked(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("fork-node", 64, NULL);
	assert_non_null(c);
	struct holder h = {.lock = node_lock,
			   .unlock = node_unlock,
			   .c = c,
			   .cpu = first_allowed_cpu(),
			   .hold_ms = 300};
	fork_with_holder(&h);
	sa_cache_destroy(c);
}

static void test_fork_child_allocates(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("fork-plain", 128, NULL);
	assert_non_null(c);
	void *keep[100];
	assert_int_equal(sa_cache_alloc_bulk(c, 0, 100, keep), 100);
	for (int i = 0; i < 100; i++)
		memset(keep[i], i, 128);
	for (int round = 0; round < 5; round++) {
		fflush(stdout);
		fflush(stderr);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			/* the parent's objects are the child's too: intact, freeable */
			for (int i = 0; i < 100; i++)
				for (int k = 0; k < 128; k++)
					if (((unsigned char *)keep[i])[k] != (unsigned char)i)
						_exit(20);
			sa_cache_free_bulk(c, 100, keep);
			_exit(child_work(c, first_allowed_cpu()));
		}
		int st = 0;
		assert_int_equal(waitpid(pid, &st, 0), pid);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 0);
	}
	sa_cache_free_bulk(c, 100, keep);
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
}

/* ------------------------------------------------------------------ mid-update forks ------ */
/*
 * A thread stopped between two steps of an update that no lock of the fork handlers covers
 * (a test hook of the library), the main thread forks meanwhile: in the child that thread does
 * not exist, its second step never happens, and the child's counters must still match what is
 * there.
 */
static atomic_int mid_held, mid_release;
static __thread int mid_armed; /* only the victim thread stops in the hook */

static void mid_hook(void)
{
	if (!mid_armed)
		return;
	mid_armed = 0;
	atomic_store(&mid_held, 1);
	while (!atomic_load(&mid_release)) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
}

/* Run victim(arg) on a thread until it is held in the hook, fork, run child(arg) in the child
 * (its exit status: 0 good), release the victim. */
static void fork_mid(void *(*victim)(void *), int (*child)(void *), void *arg,
		     void (*before_fork)(void *), void (*after_fork)(void *))
{
	atomic_store(&mid_held, 0);
	atomic_store(&mid_release, 0);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, victim, arg), 0);
	for (int i = 0; i < CHILD_SECONDS * 1000 && !atomic_load(&mid_held); i++) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	int held = atomic_load(&mid_held), st = 0;
	if (held) {
		if (before_fork)
			before_fork(arg);
		fflush(stdout);
		fflush(stderr);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			alarm(CHILD_SECONDS);
			_exit(child(arg));
		}
		if (after_fork)
			after_fork(arg);
		assert_int_equal(waitpid(pid, &st, 0), pid);
	}
	atomic_store(&mid_release, 1);
	pthread_join(t, NULL);
	assert_true(held); /* the victim reached the hook */
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		print_error("child failed: %s %d (mode %s)\n", WIFEXITED(st) ? "status" : "signal",
			    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), sa_percpu_mode());
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* release_run: a 256 KiB block's run (4 units: it goes to the CPU's stash) is given back, its
 * counters (units_used down, dirty_bytes up) not yet updated when the fork comes. */
#define MID_BLOCK (256u << 10)
static size_t mid_used0;

static void *run_victim(void *arg)
{
	(void)arg;
	void *p = sa_malloc(MID_BLOCK);
	assert_non_null(p);
	memset(p, 1, MID_BLOCK);
	mid_armed = 1;
	sa_free(p); /* held in release_run, the run free but still counted in use */
	return NULL;
}

static int run_child(void *arg)
{
	(void)arg;
	size_t used = sa_segment_used_bytes();
	if (used != mid_used0) {
		fprintf(stderr,
			"child: units in use %zu bytes, %zu before the block (the freed run "
			"still counted)\n",
			used, mid_used0);
		return 2;
	}
	sa_trim(); /* every dirty unit purged: none left to count */
	size_t dirty = sa_segment_dirty_bytes();
	if (dirty != 0) {
		fprintf(stderr, "child: %zu dirty bytes after sa_trim\n", dirty);
		return 3;
	}
	void *q = sa_malloc(MID_BLOCK); /* the page layer still works */
	if (!q)
		return 4;
	memset(q, 2, MID_BLOCK);
	sa_free(q);
	return 0;
}

static void test_fork_mid_run_release(void **state)
{
	(void)state;
	sa_trim();
	mid_used0 = sa_segment_used_bytes();
	sa_segment_release_test_hook = mid_hook;
	fork_mid(run_victim, run_child, NULL, NULL, NULL);
	sa_segment_release_test_hook = NULL;
	assert_int_equal(sa_segment_used_bytes(), mid_used0); /* the parent's went on */
}

/* sa_defer: an entry is in its slot, not yet counted, when the fork comes; and (simulated: the
 * counters raised with nothing pushed) a sheaf counted for a cache's deferred stack, not yet
 * pushed (sa_sheaf_dispose_flags). */
#define MID_SHEAF_OBJS 7
static void *defer_victim(void *arg)
{
	mid_armed = 1;
	sa_defer(arg, SA_DEFER_FREE); /* held between the slot and sa_deferred_n */
	return NULL;
}

static struct sa_cache *mid_cache;

static void sheaf_counted_not_pushed(void *arg)
{
	(void)arg;
	atomic_fetch_add(&mid_cache->deferred_objs, MID_SHEAF_OBJS);
	atomic_fetch_add(&sa_deferred_sheaves, 1);
}

static void sheaf_counted_undo(void *arg)
{
	(void)arg;
	atomic_fetch_sub(&sa_deferred_sheaves, 1);
	atomic_fetch_sub(&mid_cache->deferred_objs, MID_SHEAF_OBJS);
}

extern _Atomic size_t sa_deferred_n; /* alloc/defer.c */

static int defer_child(void *obj)
{
	size_t n = atomic_load(&sa_deferred_n), sh = atomic_load(&sa_deferred_sheaves);
	uint64_t objs = atomic_load(&mid_cache->deferred_objs);
	if (n != 1 || sh != 0 || objs != 0) {
		fprintf(stderr,
			"child: %zu deferred frees counted (1 in a slot), %zu sheaves and "
			"%llu objects (none pushed)\n",
			n, sh, (unsigned long long)objs);
		return 2;
	}
	sa_deferred_run();
	if (sa_deferred_count() != 0) {
		fprintf(stderr, "child: deferred_now %zu after sa_deferred_run\n",
			sa_deferred_count());
		return 3;
	}
	if (!sa_pcs_holds_racy(mid_cache, obj) && !sa_slab_holds(mid_cache, obj)) {
		fprintf(stderr, "child: the deferred free did not run\n");
		return 4;
	}
	return 0;
}

static void test_fork_mid_defer(void **state)
{
	(void)state;
	mid_cache = sa_cache_create("fork-defer", 64, NULL);
	assert_non_null(mid_cache);
	void *obj = sa_cache_alloc(mid_cache, 0);
	assert_non_null(obj);
	sa_deferred_run();
	assert_int_equal(sa_deferred_count(), 0);
	sa_defer_test_hook = mid_hook;
	fork_mid(defer_victim, defer_child, obj, sheaf_counted_not_pushed, sheaf_counted_undo);
	sa_defer_test_hook = NULL;
	sa_deferred_run(); /* the parent's entry, counted once the victim went on */
	assert_int_equal(sa_deferred_count(), 0);
	sa_cache_destroy(mid_cache);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fork_child_allocates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fork_while_node_locked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fork_while_slot_locked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fork_while_draining, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fork_mid_run_release, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fork_mid_defer, setup, teardown),
	};
	return cmocka_run_group_tests_name("fork", tests, NULL, NULL);
}
