/*
 * tests/stress/fork_many.c — fork from many threads at once, repeated, never deadlocks.
 *
 * tests/fork_many.h's storm with the library's own API: 8 threads fork concurrently in a loop
 * while 3 workers allocate and free (the sa_malloc family: small classes, large runs, huge
 * mappings, realloc, calloc, posix_memalign; caches with 3-object sheaves, so barn and slab
 * locks change hands all the time; sa_free_rcu, so the RCU thread and its grace-period lock
 * are busy; now and then sa_cache_shrink and sa_trim). Each child allocates every kind of
 * block, uses the caches, creates and destroys one, sometimes waits for an RCU barrier, forks
 * once more (the grandchild allocates) and exits 0.
 *
 * Criteria, by count: REQUIRED completed forks (each: child and grandchild exited 0), no
 * corrupted block. Independent of speed: the seconds argument (argv[1] or SA_STRESS_SECONDS)
 * only lets a run go on past REQUIRED forks (up to MAX); a deadlock is a completed fork count
 * that has not moved for 60 s (tests/sa_watch.h, which then prints every thread of every
 * process of the scenario with its stack), or a child waiting for a mutex whose owner thread
 * does not exist in it (reported at once).
 * The preload variant is tests/preload/fork_many_preload.c.
 */
#include "sa_test.h"
#include "sa_watch.h"

#include <stdatomic.h>

#ifdef __SANITIZE_THREAD__
/* fork's prepare handler holds more mutexes at once than TSan's deadlock detector can track
 * (tests/run.sh turns it off for tests/stress/fork the same way) */
__attribute__((visibility("default"))) const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
	return "detect_deadlocks=0";
}
#endif

#define REQUIRED (SA_TEST_SANITIZER ? 500 : 2000) /* a sanitizer's fork is 10-20x slower */
#define MAX	 20000

static struct sa_cache *fm_caches[2];

static void fm_worker_extra(uint64_t x)
{
	switch (x % 64) {
	case 0:
	case 1:
	case 2:
	case 3: {
		struct sa_cache *c = fm_caches[(x >> 8) & 1];
		void *o[8];
		unsigned n = 1 + (unsigned)((x >> 12) % 8);
		for (unsigned i = 0; i < n; i++)
			if (!(o[i] = sa_cache_alloc(c, 0)))
				n = i;
		for (unsigned i = 0; i < n; i++)
			sa_cache_free(c, o[i]);
		break;
	}
	case 4:
		sa_free_rcu(sa_malloc(16 + (x >> 8) % 3000));
		break;
	case 5:
		if ((x >> 8) % 64 == 0)
			sa_cache_shrink(fm_caches[(x >> 16) & 1]);
		break;
	case 6:
		if ((x >> 8) % 2048 == 0)
			sa_trim();
		break;
	default:
		break;
	}
}

static int fm_child_extra(uint64_t x)
{
	for (int k = 0; k < 2; k++) {
		void *o[40];
		if (sa_cache_alloc_bulk(fm_caches[k], 0, 40, o) != 40)
			return 70;
		sa_cache_free_bulk(fm_caches[k], 40, o);
		if (sa_cache_shrink(fm_caches[k]) != 0)
			return 71;
	}
	struct sa_cache *c = sa_cache_create("fork_many-child", 72, NULL);
	if (!c)
		return 72;
	void *p = sa_cache_alloc(c, 0);
	if (!p)
		return 73;
	sa_cache_free(c, p);
	sa_cache_destroy(c);
	/* sanitizers: no new thread (the RCU thread) in the child of a multi-threaded fork. TSan
	 * refuses it; ASan's thread start allocates from its own allocator, whose lock another
	 * parent thread may have held at the fork (seen: the child's RCU thread waited there) */
#if !SA_TEST_SANITIZER
	if (x % 8 == 0) {
		sa_free_rcu(sa_malloc(100));
		sa_rcu_barrier();
	}
#else
	(void)x;
#endif
	return 0;
}

#define FM_MALLOC(n)	       sa_malloc(n)
#define FM_FREE(p)	       sa_free(p)
#define FM_REALLOC(p, n)       sa_realloc(p, n)
#define FM_CALLOC(k, n)	       sa_calloc(k, n)
#define FM_MEMALIGN(pp, al, n) sa_posix_memalign(pp, al, n)
#define FM_WORKER_EXTRA(x)     fm_worker_extra(x)
#define FM_CHILD_EXTRA(x)      fm_child_extra(x)
#include "fork_many.h"

static double seconds = 5;

static int scenario(struct sa_watch *w, void *arg)
{
	for (int k = 0; k < 2; k++) {
		struct sa_cache_args a = {.sheaf_capacity = 3};
		fm_caches[k] =
			sa_cache_create(k ? "fork_many-200" : "fork_many-40", k ? 200 : 40, &a);
		if (!fm_caches[k])
			return 2;
	}
	printf("fork_many: per-CPU mode %s, %d node(s), %d forking threads, %d workers\n",
	       sa_percpu_mode(), sa_numa_nodes(), FM_FORKERS, FM_WORKERS);
	return fm_scenario(w, arg);
}

static void test_fork_many(void **state)
{
	(void)state;
	struct fm_opts o = {.required = REQUIRED, .max = MAX, .seconds = seconds};
	struct sa_watch *w = watch_new();
	assert_non_null(w);
	int rc = watch_run(w, "fork_many", scenario, &o);
	if (rc)
		print_error("fork_many: %s (%llu forks completed)\n",
			    w->note[0] ? w->note : "see above",
			    (unsigned long long)atomic_load(&w->ctr[FM_FORKS]));
	watch_free(w);
	assert_int_equal(rc, 0);
}

int main(int argc, char **argv)
{
	seconds = stress_seconds(argc, argv);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fork_many),
	};
	return cmocka_run_group_tests_name("fork_many", tests, NULL, NULL);
}
