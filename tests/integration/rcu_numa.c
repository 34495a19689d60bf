/*
 * tests/integration/rcu_numa.c — sa_free_rcu on a synthetic two-node topology.
 *
 * HWLOC_SYNTHETIC="node:2 core:1 pu:1" is set first thing in main (before the library starts):
 * PU 0 is on node 0, PU 1 on node 1. run.sh runs this binary in every per-CPU mode, so the
 * scenario of tests/unit/rcu_common.h runs there on two nodes too:
 *   test_two_nodes                  the topology is in use (2 nodes)
 *   test_readers_writers_two_nodes  writers pinned to CPU 0 and CPU 1 share the slots, so objects
 *                                   of one node are freed with sa_free_rcu on the other; readers
 *                                   on both CPUs: no object reused inside a section; after the
 *                                   barrier every counter settles and every slab can be released
 *   test_typesafe_two_nodes         the typesafe scenario (shrinker, foreign cache) on two nodes
 *   test_cross_node_free_rcu        node-1 objects freed with sa_free_rcu on CPU 0 (a sheaf of
 *                                   them only, then mixed with node-0 objects): after the barrier
 *                                   they are back on node 1, and CPU 0 keeps getting node-0
 *                                   objects only (none of the other node's objects lands in its
 *                                   sheaves); the cache empties completely
 * Skipped (cmocka skip) with fewer than 2 usable CPUs (CPUs 0 and 1).
 */
#include "unit/rcu_common.h"

#define SYNTH "node:2 core:1 pu:1"

static int have_two_cpus(void)
{
	cpu_set_t set;
	if (allowed_cpus(&set) < 2)
		return 0;
	return CPU_ISSET(0, &set) && CPU_ISSET(1, &set);
}

static void need_two_cpus(void)
{
	if (!have_two_cpus()) {
		print_message("fewer than 2 usable CPUs (0 and 1): skipped\n");
		skip();
	}
}

static void test_two_nodes(void **state)
{
	(void)state;
	need_two_cpus();
	assert_int_equal(sa_numa_nodes(), 2);
}

static void test_readers_writers_two_nodes(void **state)
{
	(void)state;
	need_two_cpus();
	struct rk_scenario sc = {
		.kinds = RK_BIT(RK_C64) | RK_BIT(RK_C1K) | RK_BIT(RK_SMALL) | RK_BIT(RK_LARGE) |
			 RK_BIT(RK_HUGE),
		.nwriters = 2,
		.nreaders = 2,
		.writer_cpu1 = {1, 2},
		.reader_cpu1 = {2, 1},
	};
	sc.iters = 10000 / rk_scale();
	rk_scenario_full(&sc);
}

static void test_typesafe_two_nodes(void **state)
{
	(void)state;
	need_two_cpus();
	struct rk_scenario sc = {
		.kinds = RK_BIT(RK_TS),
		.nwriters = 2,
		.nreaders = 2,
		.shrinker = 1,
		.writer_cpu1 = {1, 2},
		.reader_cpu1 = {2, 1},
	};
	sc.iters = 10000 / rk_scale();
	rk_scenario_full(&sc);
}

/* ------------------------------------------------------------------ cross-node ------------- */
struct job {
	int cpu;
	void (*fn)(struct job *);
	struct sa_cache *c;
	void **objs;
	size_t n;
	int bad;
	char why[256];
};

static void *job_thread(void *p)
{
	struct job *j = p;
	if (pin_to_cpu(j->cpu) != 0) {
		j->bad = 1;
		snprintf(j->why, sizeof(j->why), "cannot pin to CPU %d", j->cpu);
		return NULL;
	}
	j->fn(j);
	return NULL;
}

static void run_on_cpu(struct job *j)
{
	pthread_t t;
	j->bad = 0;
	j->why[0] = 0;
	assert_int_equal(pthread_create(&t, NULL, job_thread, j), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	if (j->bad)
		print_error("on CPU %d: %s\n", j->cpu, j->why);
	assert_false(j->bad);
}

static void job_alloc(struct job *j)
{
	for (size_t i = 0; i < j->n; i++) {
		j->objs[i] = sa_cache_alloc(j->c, 0);
		if (!j->objs[i] || sa_object_node(j->objs[i]) != j->cpu) {
			j->bad = 1;
			snprintf(j->why, sizeof(j->why), "object %p of node %d allocated on CPU %d",
				 j->objs[i], sa_object_node(j->objs[i]), j->cpu);
			return;
		}
	}
}

static void job_free_rcu(struct job *j)
{
	for (size_t i = 0; i < j->n; i++)
		sa_free_rcu(j->objs[i]);
}

static void job_free(struct job *j)
{
	for (size_t i = 0; i < j->n; i++)
		sa_free(j->objs[i]);
}

static void test_cross_node_free_rcu(void **state)
{
	(void)state;
	need_two_cpus();
	struct sa_cache_args a = {.sheaf_capacity = 16};
	struct sa_cache *c = sa_cache_create("rcu-numa", 64, &a);
	assert_non_null(c);
	enum { N = 16 * 20 };
	static void *one[N], *zero[N], *mixed[2 * N], *check[4 * N];
	struct job j1 = {.cpu = 1, .fn = job_alloc, .c = c, .objs = one, .n = N};
	struct job j0 = {.cpu = 0, .fn = job_alloc, .c = c, .objs = zero, .n = N};

	/* round 1: only node-1 objects go through CPU 0's rcu sheaves */
	run_on_cpu(&j1);
	struct sa_cache_stats s0 = get_stats(c);
	struct job f = {.cpu = 0, .fn = job_free_rcu, .c = c, .objs = one, .n = N};
	run_on_cpu(&f);
	/* round 2: node-0 and node-1 objects mixed in CPU 0's rcu sheaves */
	run_on_cpu(&j1);
	run_on_cpu(&j0);
	for (size_t i = 0; i < N; i++) {
		mixed[2 * i] = one[i];
		mixed[2 * i + 1] = zero[i];
	}
	struct job fm = {.cpu = 0, .fn = job_free_rcu, .c = c, .objs = mixed, .n = 2 * N};
	run_on_cpu(&fm);
	sa_rcu_barrier();
	struct sa_cache_stats s1 = get_stats(c);
	print_message("node-1 objects freed with sa_free_rcu on CPU 0: %llu rcu callbacks, %llu "
		      "remote frees\n",
		      (unsigned long long)(s1.rcu_callbacks - s0.rcu_callbacks),
		      (unsigned long long)(s1.remote_free - s0.remote_free));
	rk_assert_rcu_done(c);
	assert_int_equal(s1.rcu_freed - s0.rcu_freed, 3 * N);
	assert_stats_consistent(c, 0);

	/* CPU 0 gets node-0 objects only: nothing of node 1 landed in its sheaves */
	struct job c0 = {.cpu = 0, .fn = job_alloc, .c = c, .objs = check, .n = 4 * N};
	run_on_cpu(&c0);
	struct job c0f = {.cpu = 0, .fn = job_free, .c = c, .objs = check, .n = 4 * N};
	run_on_cpu(&c0f);
	/* and CPU 1 node-1 objects */
	struct job c1 = {.cpu = 1, .fn = job_alloc, .c = c, .objs = check, .n = 4 * N};
	run_on_cpu(&c1);
	struct job c1f = {.cpu = 1, .fn = job_free, .c = c, .objs = check, .n = 4 * N};
	run_on_cpu(&c1f);
	rk_assert_cache_empty(c);
	sa_cache_destroy(c);
}

int main(void)
{
	/* before any sa_* call: the topology is loaded once, at initialization */
	setenv("HWLOC_SYNTHETIC", SYNTH, 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_two_nodes),
		cmocka_unit_test(test_readers_writers_two_nodes),
		cmocka_unit_test(test_typesafe_two_nodes),
		cmocka_unit_test(test_cross_node_free_rcu),
	};
	return cmocka_run_group_tests_name("rcu_numa", tests, NULL, NULL);
}
