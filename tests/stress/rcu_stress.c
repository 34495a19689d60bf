/*
 * tests/stress/rcu_stress.c — sa_free_rcu under load for a given time.
 *
 * The readers-and-writers scenario of tests/unit/rcu_common.h with every kind of object at once
 * (64 B and 1 KiB caches, sa_malloc small sizes, large 100 KiB and huge 3 MiB blocks, and a
 * typesafe cache with a constructor), writers that never registered with liburcu, registered
 * readers that check every object they hold inside their sections, a thread that shrinks the
 * caches, calls sa_trim and churns another cache of the typesafe cache's size, and a thread that
 * frees objects of a cache of its own with sa_free_rcu and calls sa_rcu_barrier, in a loop (when
 * the barrier returns, those objects must be freed, whatever the others submit meanwhile).
 * Checks: no object freed with sa_free_rcu is reused, purged or
 * unmapped while a reader that saw it is inside its section, typesafe objects always carry
 * their type tag, and at the end (after sa_rcu_barrier) every rcu counter settles
 * (rcu_queued == rcu_freed, rcu_sheaves == rcu_callbacks, rcu_waiting == 0), nothing is in use,
 * every slab of the test caches can be released, and sa_malloc's classes and huge blocks are
 * back where they started.
 *
 * Duration: argv[1] or SA_STRESS_SECONDS (default 5) seconds of writing; writers:
 * SA_STRESS_THREADS (default 2, at most 8); readers: 2.
 */
#include "unit/rcu_common.h"

static double seconds = 5;
static int nwriters = 2;

static void test_rcu_stress(void **state)
{
	(void)state;
	struct rk_scenario sc = {
		.kinds = RK_ALL,
		.nwriters = nwriters,
		.nreaders = 2,
		.seconds = seconds,
		.shrinker = 1,
		.barrier = 1,
	};
	rk_scenario_full(&sc);
}

int main(int argc, char **argv)
{
	seconds = stress_seconds(argc, argv);
	const char *e = getenv("SA_STRESS_THREADS");
	if (e && atoi(e) > 0)
		nwriters = atoi(e) > 8 ? 8 : atoi(e);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rcu_stress),
	};
	return cmocka_run_group_tests_name("rcu_stress", tests, NULL, NULL);
}
