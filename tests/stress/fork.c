/*
 * tests/stress/fork.c — fork() while other threads allocate and free.
 *
 * Worker threads churn on caches with tiny sheaves and barns (so that sheaf structures, barns,
 * slabs and segments are created and freed all the time, taking every lock the allocator has);
 * the main thread forks repeatedly. Each child, now single-threaded, must be able to use every
 * cache on every CPU (it pins itself to each allowed CPU in turn, since per-CPU state is per
 * CPU), create and destroy a cache, and exit; a child that does not finish within
 * CHILD_SECONDS is a deadlock (a lock held by a thread that does not exist in the child) and
 * fails the test. A watchdog thread reports the forking thread itself stuck in one fork() call
 * (the atfork handlers) for STALL_SECONDS. Both bounds are far above what the work takes on a
 * loaded machine or under a sanitizer (milliseconds): only a hang reaches them. (They were 5 s
 * for the child and 12 s without a completed fork, which also counted the time spent waiting
 * for the child.)
 *
 * Duration: argv[1] or SA_STRESS_SECONDS (default 5) seconds of forking; the forks done are
 * counted, not required.
 */
#include "sa_test.h"

#include <signal.h>
#include <stdatomic.h>
#include <time.h>

#define NC	      4
#define CHILD_SECONDS 60 /* a child that has not finished by then is deadlocked */
#define STALL_SECONDS 60 /* one fork() call that has not returned by then is deadlocked */

static struct sa_cache *caches[NC];
static atomic_int stop;
static double seconds = 5;
static cpu_set_t all_cpus;
static int ncpus;

static void *worker(void *arg)
{
	uint64_t x = 0x9E3779B97F4A7C15ull * (uint64_t)((intptr_t)arg + 1);
	void *h[256];
	int n = 0;
	unsigned long ops = 0;
	while (!atomic_load(&stop)) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		struct sa_cache *c = caches[x % NC];
		if (++ops % 64 == 0) {
			cpu_set_t one;
			CPU_ZERO(&one);
			int k = (int)((x >> 20) % (uint64_t)ncpus);
			for (int i = 0; i < CPU_SETSIZE; i++)
				if (CPU_ISSET(i, &all_cpus) && k-- == 0) {
					CPU_SET(i, &one);
					break;
				}
			sched_setaffinity(0, sizeof(one), &one);
		}
		switch ((x >> 8) % 8) {
		case 0:
		case 1:
		case 2:
			if (n < 256) {
				void *p = sa_cache_alloc(c, 0);
				if (p)
					h[n++] = p;
			}
			break;
		case 3:
		case 4:
		case 5:
			if (n)
				sa_free(h[--n]);
			break;
		case 6: {
			struct sa_sheaf *s = sa_sheaf_prefill(c, 0, 1 + (unsigned)((x >> 30) % 40));
			if (s)
				sa_sheaf_return(c, 0, s);
			break;
		}
		default:
			if ((x >> 40) % 64 == 0)
				sa_cache_shrink(c);
			break;
		}
	}
	while (n)
		sa_free(h[--n]);
	return NULL;
}

/* In the child: use everything on every CPU. Returns 0 on success. */
static int child_work(void)
{
	alarm(CHILD_SECONDS);
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, &all_cpus))
			continue;
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		sched_setaffinity(0, sizeof(one), &one);
		for (int i = 0; i < NC; i++) {
			void *objs[300];
			if (sa_cache_alloc_bulk(caches[i], 0, 300, objs) != 300)
				return 2;
			sa_cache_free_bulk(caches[i], 300, objs);
			struct sa_sheaf *s = sa_sheaf_prefill(caches[i], 0, 50);
			if (!s)
				return 3;
			sa_sheaf_return(caches[i], 0, s);
			if (sa_cache_shrink(caches[i]) != 0)
				return 4;
		}
		struct sa_cache *c = sa_cache_create("in-child", 72, NULL);
		if (!c)
			return 5;
		void *p = sa_cache_alloc(c, 0);
		if (!p)
			return 6;
		sa_free(p);
		sa_cache_destroy(c);
		struct sa_cache_stats st;
		if (sa_cache_stats(caches[0], &st) != 0)
			return 7;
	}
	return 0;
}

/* The forking thread itself can deadlock in fork() (atfork handlers): a watchdog reports one
 * fork() call that has not returned for STALL_SECONDS (waiting for the child does not count). */
static atomic_long forks_done; /* fork() calls returned in the parent */
static atomic_int in_fork;     /* the main thread is inside fork() */
static void *watchdog(void *arg)
{
	(void)arg;
	long last = -1;
	int still = 0;
	while (!atomic_load(&stop)) {
		sleep(1);
		long now = atomic_load(&forks_done);
		still = now == last && atomic_load(&in_fork) ? still + 1 : 0;
		last = now;
		if (still >= STALL_SECONDS) {
			fprintf(stderr,
				"fork: a fork() call has not returned for %d s (after %ld forks): "
				"the parent is deadlocked (per-CPU mode %s)\n",
				STALL_SECONDS, now, sa_percpu_mode());
			fprintf(stderr,
				"[  PASSED  ] 0 test(s).\n[  FAILED  ] 1 test(s), listed below:\n"
				"[  FAILED  ] test_fork_while_allocating\n");
			fflush(stderr);
			_exit(3);
		}
	}
	return NULL;
}

static void test_fork_while_allocating(void **state)
{
	(void)state;
	ncpus = allowed_cpus(&all_cpus);
	assert_true(ncpus >= 1);
	for (int i = 0; i < NC; i++) {
		struct sa_cache_args a = {.sheaf_capacity = (unsigned)(1 + i)};
		char name[32];
		snprintf(name, sizeof(name), "fork-%d", i);
		caches[i] = sa_cache_create(name, 16 + 40 * (size_t)i, &a);
		assert_non_null(caches[i]);
	}
	enum { T = 4 };
	pthread_t t[T];
	for (intptr_t i = 0; i < T; i++)
		assert_int_equal(pthread_create(&t[i], NULL, worker, (void *)i), 0);
	pthread_t wd;
	assert_int_equal(pthread_create(&wd, NULL, watchdog, NULL), 0);
	struct timespec t0, now;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int forks = 0, bad = 0;
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9 >=
		    seconds)
			break;
		fflush(stdout);
		fflush(stderr);
		atomic_store(&in_fork, 1);
		pid_t pid = fork();
		if (pid == 0)
			_exit(child_work());
		atomic_fetch_add(&forks_done, 1);
		atomic_store(&in_fork, 0);
		assert_true(pid >= 0);
		int st = 0;
		assert_int_equal(waitpid(pid, &st, 0), pid);
		forks++;
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			if (bad++ < 5) {
				if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)
					print_error("fork %d: child hung for %d s (deadlock after "
						    "fork)\n",
						    forks, CHILD_SECONDS);
				else if (WIFSIGNALED(st))
					print_error("fork %d: child killed by signal %d\n", forks,
						    WTERMSIG(st));
				else
					print_error("fork %d: child failed with status %d\n", forks,
						    WEXITSTATUS(st));
			}
			if (bad >= 3 || (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM))
				break; /* enough evidence; a hang costs CHILD_SECONDS */
		}
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < T; i++)
		pthread_join(t[i], NULL);
	pthread_join(wd, NULL);
	print_message("fork: %d forks in %.1f s, %d bad children, per-CPU mode %s\n", forks,
		      seconds, bad, sa_percpu_mode());
	for (int i = 0; i < NC; i++) {
		assert_int_equal(sa_cache_shrink(caches[i]), 0);
		assert_stats_consistent(caches[i], 0);
		sa_cache_destroy(caches[i]);
	}
	assert_int_equal(bad, 0);
}

int main(int argc, char **argv)
{
	seconds = stress_seconds(argc, argv);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fork_while_allocating),
	};
	return cmocka_run_group_tests_name("fork", tests, NULL, NULL);
}
