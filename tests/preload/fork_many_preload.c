/*
 * tests/preload/fork_many_preload.c — fork from many threads at once, repeated, never deadlocks,
 * under LD_PRELOAD=build/libsheafalloc_malloc.so.
 *
 * tests/fork_many.h's storm with the standard names: 8 threads fork concurrently in a loop
 * while 3 workers malloc and free (small classes, large runs, huge mappings, realloc, calloc,
 * posix_memalign; now and then malloc_trim); each child allocates every kind of block, uses
 * strdup and malloc_usable_size, forks once more (the grandchild allocates) and exits 0.
 * Criteria, by count: FORKS completed forks (child and grandchild exited 0), no corrupted block.
 * A deadlock is no completed fork for 60 s, or a child waiting for a mutex whose owner thread
 * does not exist in it, or a process whose threads all sleep in private futex waits
 * (tests/sa_watch.h); no time limit decides anything.
 *
 * Run as LD_PRELOAD=$PWD/build/libsheafalloc_malloc.so build/tests/preload/fork_many_preload
 * (tests/run.sh does, in every per-CPU mode); SA_PRELOAD_ALLOW_OTHER=1 runs it against the
 * process's own malloc (glibc's passes).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <malloc.h>

#include "sa_watch.h"

#define FORKS 2000

static void *(*volatile f_malloc)(size_t) = malloc;
static void (*volatile f_free)(void *) = free;
static void *(*volatile f_realloc)(void *, size_t) = realloc;
static void *(*volatile f_calloc)(size_t, size_t) = calloc;
static int (*volatile f_memalign)(void **, size_t, size_t) = posix_memalign;

static void worker_extra(uint64_t x)
{
	if (x % 8192 == 0)
		malloc_trim(0);
}

static int child_extra(uint64_t x)
{
	char *s = strdup("a string from a fork child");
	if (!s || strcmp(s, "a string from a fork child"))
		return 80;
	free(s);
	void *p = f_malloc(100 + x % 1000);
	if (!p || malloc_usable_size(p) < 100 + x % 1000)
		return 81;
	f_free(p);
	return 0;
}

#define FM_MALLOC(n)	       f_malloc(n)
#define FM_FREE(p)	       f_free(p)
#define FM_REALLOC(p, n)       f_realloc(p, n)
#define FM_CALLOC(k, n)	       f_calloc(k, n)
#define FM_MEMALIGN(pp, al, n) f_memalign(pp, al, n)
#define FM_WORKER_EXTRA(x)     worker_extra(x)
#define FM_CHILD_EXTRA(x)      child_extra(x)
#include "fork_many.h"

static void test_fork_many_preload(void **state)
{
	(void)state;
	struct fm_opts o = {.required = FORKS, .max = FORKS, .seconds = 0};
	struct sa_watch *w = watch_new();
	assert_non_null(w);
	int rc = watch_run(w, "fork_many_preload", fm_scenario, &o);
	if (rc)
		print_error("fork_many_preload: %s (%llu forks completed)\n",
			    w->note[0] ? w->note : "see above",
			    (unsigned long long)atomic_load(&w->ctr[FM_FORKS]));
	watch_free(w);
	assert_int_equal(rc, 0);
}

int main(void)
{
	if (!getenv("LD_PRELOAD") && !getenv("SA_PRELOAD_ALLOW_OTHER")) {
		fprintf(stderr,
			"fork_many_preload: run with LD_PRELOAD=.../libsheafalloc_malloc.so\n");
		return 1;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fork_many_preload),
	};
	return cmocka_run_group_tests_name("fork_many_preload", tests, NULL, NULL);
}
