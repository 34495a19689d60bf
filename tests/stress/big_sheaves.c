/*
 * tests/stress/big_sheaves.c — sheaves larger than 64 KiB (sheaf_capacity > 8184, inside the
 * documented range 0..65536): their memory is mapped on creation and unmapped when they are
 * freed, so any access to a sheaf that another thread frees meanwhile faults.
 *
 *   test_big_sheaves_churn   threads allocate and free in bursts of 1000..20000 objects, moving
 *                            between CPUs; empty sheaves are freed at once (barn_max_empty 0)
 *   test_big_sheaves_stats   the same, plus threads reading sa_cache_stats all the time (the
 *                            stats walk reads the sheaves installed in every CPU's slot)
 *
 * Each scenario runs in a child process so that a crash is reported as a failed test (with the
 * signal) instead of ending the binary. Counters must add up at the end.
 * Duration: argv[1] or SA_STRESS_SECONDS (default 5, at most 20) seconds per scenario.
 */
#include "sa_test.h"

#include <signal.h>
#include <stdatomic.h>
#include <time.h>

#define CAPACITY 9000 /* 64 + 9000 * 8 bytes: above the 64 KiB metadata classes */

static double seconds = 5;
static struct sa_cache *cache;
static atomic_int stop;
static atomic_long bad;
static cpu_set_t all_cpus;
static int ncpus;

static void *churn(void *arg)
{
	uint64_t x = 0x9E3779B97F4A7C15ull * (uint64_t)((intptr_t)arg + 1);
	enum { MAXB = 20000 };
	uint64_t **h = malloc(sizeof(*h) * MAXB);
	if (!h)
		return NULL;
	while (!atomic_load(&stop)) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		int n = 1000 + (int)((x >> 33) % (MAXB - 1000));
		for (int i = 0; i < n; i++) {
			h[i] = sa_cache_alloc(cache, 0);
			if (!h[i]) {
				atomic_fetch_add(&bad, 1);
				continue;
			}
			h[i][0] = (uint64_t)h[i];
		}
		/* move to another CPU between the bursts */
		cpu_set_t one;
		CPU_ZERO(&one);
		int k = (int)((x >> 20) % (uint64_t)ncpus);
		for (int i = 0; i < CPU_SETSIZE; i++)
			if (CPU_ISSET(i, &all_cpus) && k-- == 0) {
				CPU_SET(i, &one);
				break;
			}
		sched_setaffinity(0, sizeof(one), &one);
		for (int i = 0; i < n; i++) {
			if (!h[i])
				continue;
			if (h[i][0] != (uint64_t)h[i])
				atomic_fetch_add(&bad, 1);
			sa_free(h[i]);
		}
	}
	free(h);
	return NULL;
}

static void *stats_reader(void *arg)
{
	(void)arg;
	struct sa_cache_stats st;
	while (!atomic_load(&stop))
		sa_cache_stats(cache, &st);
	return NULL;
}

/* The scenario, in the child. Returns the exit status. */
static int scenario(int readers)
{
	ncpus = allowed_cpus(&all_cpus);
	struct sa_cache_args a = {.sheaf_capacity = CAPACITY};
	cache = sa_cache_create("big-sheaves", 16, &a);
	if (!cache)
		return 2;
	cache->barn_max_empty =
		0; /* white box: every emptied sheaf is freed (as barn_max_empty=0) */
	enum { W = 5, R = 2 };
	pthread_t t[W + R];
	int nt = 0;
	for (intptr_t i = 0; i < W; i++)
		pthread_create(&t[nt++], NULL, churn, (void *)i);
	for (int i = 0; i < readers && i < R; i++)
		pthread_create(&t[nt++], NULL, stats_reader, NULL);
	struct timespec ts = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
	nanosleep(&ts, NULL);
	atomic_store(&stop, 1);
	for (int i = 0; i < nt; i++)
		pthread_join(t[i], NULL);
	struct sa_cache_stats st;
	if (sa_cache_stats(cache, &st) != 0)
		return 3;
	if (st.alloc_fast + st.alloc_slow + st.sheaf_alloc_objects != st.free_fast + st.free_slow)
		return 4;
	if (sa_cache_shrink(cache) != 0)
		return 5;
	if (sa_cache_stats(cache, &st) != 0 || st.slabs != 0 || st.objects_cached != 0)
		return 6;
	return atomic_load(&bad) ? 7 : 0;
}

static void run_scenario(int readers)
{
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* cmocka's handlers would catch a crash in this child: report it as a signal */
		signal(SIGSEGV, SIG_DFL);
		signal(SIGBUS, SIG_DFL);
		signal(SIGILL, SIG_DFL);
		signal(SIGFPE, SIG_DFL);
		signal(SIGABRT, SIG_DFL);
		_exit(scenario(readers));
	}
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (WIFSIGNALED(st))
		print_error("the process died of signal %d (%s) with %d-object sheaves%s\n",
			    WTERMSIG(st), strsignal(WTERMSIG(st)), CAPACITY,
			    readers ? " and sa_cache_stats readers" : "");
	else if (WEXITSTATUS(st))
		print_error("scenario failed at check %d\n", WEXITSTATUS(st));
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

static void test_big_sheaves_churn(void **state)
{
	(void)state;
	run_scenario(0);
}

static void test_big_sheaves_stats(void **state)
{
	(void)state;
	run_scenario(2);
}

int main(int argc, char **argv)
{
	seconds = stress_seconds(argc, argv);
	if (seconds > 20)
		seconds = 20;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_big_sheaves_churn),
		cmocka_unit_test(test_big_sheaves_stats),
	};
	return cmocka_run_group_tests_name("big_sheaves", tests, NULL, NULL);
}
