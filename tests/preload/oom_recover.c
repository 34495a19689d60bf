/*
 * tests/preload/oom_recover.c — out of address space once is not out of it forever.
 *
 * Under an address-space limit (RLIMIT_AS, as `ulimit -v`, containers and batch schedulers set
 * it), 1 or 4 threads malloc blocks of one size until malloc returns NULL (errno ENOMEM, no
 * crash), free everything they got, and then the program must get memory again: first a block
 * of the size that ran out, then one block of half the limit. Block sizes cover every kind of
 * block of the malloc front end (small classes, large unit runs, huge mappings; 1 KiB to
 * 64 MiB). Each scenario runs in a forked child that sets the limit itself, so the limit never
 * reaches the test runner.
 *
 * What it catches: freed memory that stays mapped (purged, not unmapped) keeps its address
 * space from the program, so after the frees a fresh mapping (a huge block, a new segment)
 * fails although nothing is in use. glibc, mimalloc and tcmalloc pass this; jemalloc does not.
 *
 * Run as LD_PRELOAD=$PWD/build/libsheafalloc_malloc.so build/tests/preload/oom_recover (tests/run.sh
 * does); SA_PRELOAD_ALLOW_OTHER=1 runs it against the process's own malloc (glibc passes).
 * Timing plays no part: each child runs until its threads have seen NULL, however long that
 * takes; the only clock is a generous guard against a hang (300 s a scenario).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void *(*volatile f_malloc)(size_t) = malloc;
static void (*volatile f_free)(void *) = free;

#define MiB(x)	  ((size_t)(x) << 20)
#define LIMIT	  MiB(1024)
#define MAX_PTRS  (1u << 21) /* per thread: 1 GiB of 1 KiB blocks is 2^20 */
#define MAX_THR	  4
#define GUARD_SEC 120

struct worker {
	size_t size;
	void **ptrs;
	size_t n;
	int err;      /* errno of the NULL */
	int overflow; /* MAX_PTRS blocks and still no NULL */
	pthread_barrier_t *start;
};

static void *exhaust(void *arg)
{
	struct worker *w = arg;
	pthread_barrier_wait(w->start);
	for (;;) {
		if (w->n == MAX_PTRS) {
			w->overflow = 1;
			break;
		}
		errno = 0;
		char *p = f_malloc(w->size);
		if (!p) {
			w->err = errno;
			break;
		}
		p[0] = 1; /* the block is really usable */
		p[w->size - 1] = 2;
		w->ptrs[w->n++] = p;
	}
	return NULL;
}

/* The child: returns 0 when the scenario holds, else a code that names the broken step. */
static int scenario(size_t size, int nthreads)
{
	struct worker w[MAX_THR];
	pthread_t tid[MAX_THR];
	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, (unsigned)nthreads + 1);
	for (int i = 0; i < nthreads; i++) {
		/* pointer arrays outside malloc, mapped before the limit (never touched beyond use) */
		void *m = mmap(NULL, MAX_PTRS * sizeof(void *), PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (m == MAP_FAILED)
			return 10;
		w[i] = (struct worker){.size = size, .ptrs = m, .start = &start};
		if (pthread_create(&tid[i], NULL, exhaust, &w[i]))
			return 11;
	}
	struct rlimit rl = {LIMIT, LIMIT};
	if (setrlimit(RLIMIT_AS, &rl))
		return 12;
	pthread_barrier_wait(&start);
	size_t total = 0;
	for (int i = 0; i < nthreads; i++) {
		pthread_join(tid[i], NULL);
		total += w[i].n;
	}
	for (int i = 0; i < nthreads; i++) {
		if (w[i].overflow) {
			dprintf(2, "size %zu: %zu blocks and no NULL\n", size, w[i].n);
			return 13;
		}
		if (w[i].err != ENOMEM) {
			dprintf(2, "size %zu: NULL with errno %d, not ENOMEM\n", size, w[i].err);
			return 14;
		}
	}
	if (total * size < LIMIT / 4) { /* something else than the limit stopped it */
		dprintf(2, "size %zu: only %zu blocks before NULL\n", size, total);
		return 15;
	}
	for (int i = 0; i < nthreads; i++)
		for (size_t k = 0; k < w[i].n; k++)
			f_free(w[i].ptrs[k]);
	/* memory again: the size that ran out, then half the limit in one block */
	char *p = f_malloc(size);
	if (!p) {
		dprintf(2,
			"size %zu, %d thread(s): no block of the same size after freeing "
			"%zu blocks\n",
			size, nthreads, total);
		return 16;
	}
	f_free(p);
	size_t half = LIMIT / 2;
	p = f_malloc(half);
	if (!p) {
		dprintf(2, "size %zu, %d thread(s): no block of %zu MiB after freeing %zu blocks\n",
			size, nthreads, half >> 20, total);
		return 17;
	}
	for (size_t off = 0; off < half; off += MiB(1)) /* one write a MiB: usable */
		p[off] = (char)off;
	f_free(p);
	/* and the first size again, many times: nothing was lost */
	for (int round = 0; round < 2; round++) {
		size_t n = 0;
		while (n < MAX_PTRS && n * size < LIMIT / 8) {
			void *q = f_malloc(size);
			if (!q) {
				dprintf(2, "size %zu: round %d failed after %zu blocks\n", size,
					round, n);
				return 18;
			}
			w[0].ptrs[n++] = q;
		}
		for (size_t k = 0; k < n; k++)
			f_free(w[0].ptrs[k]);
	}
	return 0;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* 0 when the scenario held; otherwise prints why and returns 1 (every size runs anyway) */
static int run_scenario(size_t size, int nthreads)
{
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(scenario(size, nthreads));
	int st = 0;
	pid_t r;
	double deadline = now_s() + GUARD_SEC;
	while ((r = waitpid(pid, &st, WNOHANG)) == 0 && now_s() < deadline)
		usleep(10000);
	if (r == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		print_error("size %zu, %d thread(s): no exit within %d s\n", size, nthreads,
			    GUARD_SEC);
		return 1;
	}
	if (WIFSIGNALED(st)) {
		print_error("size %zu, %d thread(s): killed by signal %d\n", size, nthreads,
			    WTERMSIG(st));
		return 1;
	}
	if (WEXITSTATUS(st) != 0) {
		print_error("size %zu, %d thread(s): step %d failed (see above)\n", size, nthreads,
			    WEXITSTATUS(st));
		return 1;
	}
	return 0;
}

static const size_t sizes[] = {1024, 24 << 10, 200 << 10, 1 << 20, 4 << 20, 64 << 20};

static void every_size(int nthreads)
{
	int failed = 0;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		failed += run_scenario(sizes[i], nthreads);
	assert_int_equal(failed, 0);
}

static void test_one_thread(void **state)
{
	(void)state;
	every_size(1);
}

static void test_four_threads(void **state)
{
	(void)state;
	every_size(4);
}

int main(void)
{
	if (!getenv("LD_PRELOAD") && !getenv("SA_PRELOAD_ALLOW_OTHER")) {
		fprintf(stderr, "oom_recover: run with LD_PRELOAD=.../libsheafalloc_malloc.so\n");
		return 1;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_thread),
		cmocka_unit_test(test_four_threads),
	};
	return cmocka_run_group_tests_name("oom_recover", tests, NULL, NULL);
}
