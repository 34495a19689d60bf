/*
 * tests/sa_test.h — helpers shared by the cmocka tests (unit, integration, stress).
 *
 * Include this first: it sets _GNU_SOURCE and pulls in cmocka's prerequisites in the right order,
 * then the library's internal header (tests link the static library and may use hidden names).
 *
 * Helpers:
 *   capture_begin/capture_end  redirect fd 2 into a temporary file and read it back (messages of
 *                              the library are written with write(2), never through stdio)
 *   count_substr               occurrences of a string in another
 *   pin_to_cpu / unpin         sched_setaffinity of the calling thread
 *   expect_fallback_mode       which per-CPU mode this run should be in (environment)
 *   running_on_valgrind, SA_TEST_SANITIZER
 *   stress_seconds             a stress test's duration (argv[1], SA_STRESS_SECONDS, 5)
 *   get_stats                  sa_cache_stats that must succeed
 *   check_no_duplicates        sort a pointer array and assert all distinct
 */
#ifndef SA_TEST_H
#define SA_TEST_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "alloc/internal.h"

/* ------------------------------------------------------------------ stderr capture ---------- */
struct capture {
	int saved_fd;
	FILE *tmp;
	char *text; /* filled by capture_end; freed by capture_free */
};

/* Runs this test binary again (/proc/self/exe) with argv and envp, its stderr captured, and
 * waits for it: returns the wait status, and the child's stderr (NUL-terminated, at most len - 1
 * bytes) in err. For the tests whose child must die (an abort, a SIGSEGV) with a report. */
static inline int spawn_self(char *const argv[], char *const envp[], char *err, size_t len)
{
	char path[] = "/tmp/sa_child_XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fd, 2);
	pid_t pid;
	assert_int_equal(posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, envp), 0);
	posix_spawn_file_actions_destroy(&fa);
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	ssize_t n = pread(fd, err, len - 1, 0);
	err[n > 0 ? n : 0] = 0;
	close(fd);
	return st;
}

static inline void capture_begin(struct capture *cap)
{
	fflush(stderr);
	cap->text = NULL;
	cap->tmp = tmpfile();
	assert_non_null(cap->tmp);
	cap->saved_fd = dup(2);
	assert_true(cap->saved_fd >= 0);
	assert_true(dup2(fileno(cap->tmp), 2) >= 0);
}

/* Restores fd 2 and returns what was written to it meanwhile (NUL-terminated). */
static inline const char *capture_end(struct capture *cap)
{
	fflush(stderr);
	dup2(cap->saved_fd, 2);
	close(cap->saved_fd);
	int fd = fileno(cap->tmp);
	off_t len = lseek(fd, 0, SEEK_END);
	if (len < 0)
		len = 0;
	cap->text = calloc(1, (size_t)len + 1);
	assert_non_null(cap->text);
	lseek(fd, 0, SEEK_SET);
	size_t got = 0;
	while (got < (size_t)len) {
		ssize_t r = read(fd, cap->text + got, (size_t)len - got);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	cap->text[got] = 0;
	fclose(cap->tmp);
	cap->tmp = NULL;
	return cap->text;
}

static inline void capture_free(struct capture *cap)
{
	free(cap->text);
	cap->text = NULL;
}

static inline int count_substr(const char *hay, const char *needle)
{
	int n = 0;
	size_t l = strlen(needle);
	if (!hay || !l)
		return 0;
	for (const char *p = strstr(hay, needle); p; p = strstr(p + l, needle))
		n++;
	return n;
}

/* ------------------------------------------------------------------ CPU pinning ------------- */
static inline int allowed_cpus(cpu_set_t *set)
{
	CPU_ZERO(set);
	if (sched_getaffinity(0, sizeof(*set), set) != 0)
		return -1;
	return CPU_COUNT(set);
}

static inline int first_allowed_cpu(void)
{
	cpu_set_t set;
	if (allowed_cpus(&set) <= 0)
		return -1;
	for (int i = 0; i < CPU_SETSIZE; i++)
		if (CPU_ISSET(i, &set))
			return i;
	return -1;
}

/* Pin the calling thread to one CPU; 0 on success. */
static inline int pin_to_cpu(int cpu)
{
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	if (sched_setaffinity(0, sizeof(one), &one) != 0)
		return -1;
	sched_yield();
	return 0;
}

static inline void set_affinity(const cpu_set_t *set)
{
	sched_setaffinity(0, sizeof(*set), set);
}

/* ------------------------------------------------------------------ modes ------------------- */
/*
 * The per-CPU mode this run must be in: SA_TEST_EXPECT_PERCPU=rseq|fallback (set by run.sh for
 * valgrind, where rseq is ENOSYS), else fallback iff SHEAFALLOC_OPTIONS asks for it.
 */
static inline int expect_fallback_mode(void)
{
	const char *e = getenv("SA_TEST_EXPECT_PERCPU");
	if (e && *e)
		return strcmp(e, "fallback") == 0;
	const char *o = getenv("SHEAFALLOC_OPTIONS");
	return o && strstr(o, "percpu=fallback") != NULL;
}

/* Under valgrind the client's LD_PRELOAD names valgrind's preload objects. */
static inline int running_on_valgrind(void)
{
	const char *p = getenv("LD_PRELOAD");
	return p && strstr(p, "vgpreload") != NULL;
}

/* A stress test's seconds: argv[1], else SA_STRESS_SECONDS, else (or not positive) 5. */
static inline double stress_seconds(int argc, char **argv)
{
	const char *e = getenv("SA_STRESS_SECONDS");
	double s = argc > 1 ? atof(argv[1]) : e && *e ? atof(e) : 0;
	return s > 0 ? s : 5;
}

/* Built with ASan or TSan (their runtimes make system calls of their own). */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SA_TEST_SANITIZER 1
#else
#define SA_TEST_SANITIZER 0
#endif

/* ------------------------------------------------------------------ stats ------------------- */
static inline struct sa_cache_stats get_stats(struct sa_cache *c)
{
	struct sa_cache_stats s;
	assert_int_equal(sa_cache_stats(c, &s), 0);
	return s;
}

static inline uint64_t stats_out(const struct sa_cache_stats *s)
{
	return s->alloc_fast + s->alloc_slow + s->sheaf_alloc_objects;
}

static inline uint64_t stats_in(const struct sa_cache_stats *s)
{
	return s->free_fast + s->free_slow;
}

/*
 * At a quiescent point with no user-held sheaf: every object out of the slabs is either in use
 * or cached in a sheaf, and the slab layer's count moves exactly with refills, flushes and the
 * direct (slow) allocations and frees.
 */
static inline void assert_stats_consistent(struct sa_cache *c, uint64_t expect_in_use)
{
	struct sa_cache_stats s = get_stats(c);
	uint64_t slab_out = sa_slab_inuse_racy(c);
	if (stats_out(&s) - stats_in(&s) != expect_in_use || s.objects_in_use != expect_in_use ||
	    s.objects_in_use + s.objects_cached != slab_out ||
	    s.refill_objects + s.alloc_slow - s.flush_objects - s.free_slow != slab_out ||
	    s.slabs_allocated - s.slabs_freed != s.slabs)
		print_error(
			"cache %s: expect in_use %llu; stats: alloc_fast %llu alloc_slow %llu "
			"sheaf_alloc %llu free_fast %llu free_slow %llu in_use %llu cached %llu "
			"refill_obj %llu flush_obj %llu slab_out %llu slabs %llu (+%llu -%llu)\n",
			sa_cache_name(c), (unsigned long long)expect_in_use,
			(unsigned long long)s.alloc_fast, (unsigned long long)s.alloc_slow,
			(unsigned long long)s.sheaf_alloc_objects, (unsigned long long)s.free_fast,
			(unsigned long long)s.free_slow, (unsigned long long)s.objects_in_use,
			(unsigned long long)s.objects_cached, (unsigned long long)s.refill_objects,
			(unsigned long long)s.flush_objects, (unsigned long long)slab_out,
			(unsigned long long)s.slabs, (unsigned long long)s.slabs_allocated,
			(unsigned long long)s.slabs_freed);
	assert_int_equal(stats_out(&s) - stats_in(&s), expect_in_use);
	assert_int_equal(s.objects_in_use, expect_in_use);
	assert_int_equal(s.objects_in_use + s.objects_cached, slab_out);
	assert_int_equal(s.refill_objects + s.alloc_slow - s.flush_objects - s.free_slow, slab_out);
	assert_int_equal(s.slabs_allocated - s.slabs_freed, s.slabs);
}

/* ------------------------------------------------------------------ pointers ---------------- */
static inline int ptr_cmp(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
	return x < y ? -1 : x > y;
}

/* Sorts a copy of objs[0..n) and asserts that no pointer occurs twice. */
static inline void check_no_duplicates(void *const *objs, size_t n)
{
	void **tmp = malloc((n ? n : 1) * sizeof(void *));
	assert_non_null(tmp);
	memcpy(tmp, objs, n * sizeof(void *));
	qsort(tmp, n, sizeof(void *), ptr_cmp);
	for (size_t i = 1; i < n; i++) {
		if (tmp[i] == tmp[i - 1])
			print_error("object %p handed out twice\n", tmp[i]);
		assert_ptr_not_equal(tmp[i], tmp[i - 1]);
	}
	free(tmp);
}

/* The object is a proper object of cache c: in one of its slabs, at an object boundary. */
static inline void check_object_of(struct sa_cache *c, const void *obj)
{
	assert_non_null(obj);
	struct sa_slab *s = sa_slab_of(obj);
	assert_non_null(s);
	assert_ptr_equal(s->cache, c);
	assert_non_null(s->head);
	size_t off = (size_t)((const char *)obj - sa_slab_base(s->head));
	assert_int_equal(off % c->stride, 0);
	assert_true(off / c->stride < s->head->nobjs);
	int node = sa_object_node(obj);
	assert_true(node >= 0 && node < sa_numa_nodes());
}

#endif
