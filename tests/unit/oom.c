/*
 * tests/unit/oom.c — out of memory inside a cache and inside sa_sheaf_prefill: a clean failure
 * (NULL / ENOMEM, nothing corrupted, no object handed out twice), and memory again once objects
 * are freed, including address space that only an unmapped segment can give back.
 *
 * Each case runs in a forked child under RLIMIT_AS (the address-space limit of `ulimit -v`):
 * the limit is the child's current address space plus a budget, so the failure is real (the
 * kernel refuses the mapping) and comes after a predictable amount of work, not after a time.
 * Skipped under ASan/TSan (their shadow memory needs terabytes of address space) and valgrind
 * (its own address-space manager ignores the limit in ways that differ between versions).
 */
#include "sa_test.h"

#include <sys/resource.h>

#define MiB(x) ((size_t)(x) << 20)

/* current address space of this process, from /proc/self/statm (pages) */
static size_t vm_size(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	unsigned long pages = 0;
	if (f) {
		if (fscanf(f, "%lu", &pages) != 1)
			pages = 0;
		fclose(f);
	}
	return pages * (size_t)sysconf(_SC_PAGESIZE);
}

static int limit_as(size_t budget)
{
	size_t lim = vm_size() + budget;
	struct rlimit rl = {lim, lim};
	return setrlimit(RLIMIT_AS, &rl);
}

/* Run body in a child; its exit code must be 0 (each step returns its own code). */
static void in_child(int (*body)(void))
{
	if (SA_TEST_SANITIZER || running_on_valgrind())
		skip();
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(body());
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (WIFSIGNALED(st))
		fail_msg("child killed by signal %d", WTERMSIG(st));
	if (WEXITSTATUS(st) != 0)
		fail_msg("child failed at step %d", WEXITSTATUS(st));
}

#define MAXOBJ (1u << 18)
static void *objs[MAXOBJ];

static int ptrcmp(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
	return x < y ? -1 : x > y;
}

static int distinct(void **v, size_t n)
{
	qsort(v, n, sizeof(void *), ptrcmp);
	for (size_t i = 1; i < n; i++)
		if (v[i] == v[i - 1])
			return 0;
	return 1;
}

/* sa_cache_alloc until NULL; then prefill fails cleanly; after the frees both work again */
static int cache_and_prefill(void)
{
	struct sa_cache *c = sa_cache_create("oom-4k", 4096, NULL);
	if (!c)
		return 2;
	if (limit_as(MiB(256)))
		return 3;
	size_t n = 0;
	for (;;) {
		if (n == MAXOBJ)
			return 4; /* never ran out */
		errno = 0;
		char *p = sa_cache_alloc(c, SA_NOWARN);
		if (!p) {
			if (errno != ENOMEM)
				return 5;
			break;
		}
		memset(p, (int)(n & 0xff), 64);
		objs[n++] = p;
	}
	if (n < 1000)
		return 6; /* stopped by something else than the limit */
	/* a prefill that needs new slabs fails cleanly now: NULL and ENOMEM, and a message
	 * unless SA_NOWARN */
	errno = 0;
	struct sa_sheaf *s = sa_sheaf_prefill(c, SA_NOWARN, 20000);
	if (s) {
		sa_sheaf_return(c, 0, s);
		return 7;
	}
	if (errno != ENOMEM)
		return 8;
	/* nothing corrupted: every object still holds its pattern, none twice */
	for (size_t i = 0; i < n; i++)
		if (((unsigned char *)objs[i])[63] != (unsigned char)(i & 0xff))
			return 9;
	if (!distinct(objs, n))
		return 10;
	for (size_t i = 0; i < n; i++)
		sa_cache_free(c, objs[i]);
	/* memory again: a prefill of many objects, then plain allocations */
	s = sa_sheaf_prefill(c, SA_NOWARN, 20000);
	if (!s)
		return 11;
	for (unsigned i = 0; i < 20000; i++) {
		objs[i] = sa_sheaf_alloc(c, 0, s);
		if (!objs[i])
			return 12;
	}
	sa_sheaf_return(c, 0, s);
	for (unsigned i = 0; i < 20000; i++)
		sa_cache_free(c, objs[i]);
	for (unsigned i = 0; i < 20000; i++) {
		objs[i] = sa_cache_alloc(c, SA_NOWARN);
		if (!objs[i])
			return 13;
	}
	if (!distinct(objs, 20000))
		return 14;
	for (unsigned i = 0; i < 20000; i++)
		sa_cache_free(c, objs[i]);
	return 0;
}

static void test_cache_and_prefill(void **state)
{
	(void)state;
	in_child(cache_and_prefill);
}

/* Objects of one cache fill the address space; after they are freed, another cache (other
 * slabs) and a huge block need that address space back: the segments must be unmapped. */
static int other_cache_after(void)
{
	struct sa_cache *a = sa_cache_create("oom-a", 2000, NULL);
	struct sa_cache *b = sa_cache_create("oom-b", 30000, NULL);
	if (!a || !b)
		return 2;
	if (limit_as(MiB(256)))
		return 3;
	size_t n = 0;
	while (n < MAXOBJ && (objs[n] = sa_cache_alloc(a, SA_NOWARN)) != NULL)
		n++;
	if (n == MAXOBJ || n < 1000)
		return 4;
	for (size_t i = 0; i < n; i++)
		sa_cache_free(a, objs[i]);
	size_t m = 0;
	while (m < MAXOBJ && (objs[m] = sa_cache_alloc(b, SA_NOWARN)) != NULL)
		m++;
	/* b gets most of what a had: at least half of the bytes */
	if (m * 30000 < n * 2000 / 2) {
		dprintf(2, "cache a had %zu objects (%zu MiB), cache b got only %zu (%zu MiB)\n", n,
			n * 2000 >> 20, m, m * 30000 >> 20);
		return 5;
	}
	for (size_t i = 0; i < m; i++)
		sa_cache_free(b, objs[i]);
	void *h = sa_malloc(MiB(128));
	if (!h)
		return 6;
	memset(h, 1, MiB(128));
	sa_free(h);
	return 0;
}

static void test_other_cache_after(void **state)
{
	(void)state;
	in_child(other_cache_after);
}

/* sa_trim gives address space back: the mapped segment bytes fall to what is in use */
static void test_trim_unmaps_free_segments(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("trim-unmap", 8192, NULL);
	assert_non_null(c);
	size_t n = 20000; /* 160 MiB: 40 segments */
	for (size_t i = 0; i < n; i++) {
		objs[i] = sa_cache_alloc(c, 0);
		assert_non_null(objs[i]);
	}
	size_t mapped_full = sa_segment_mapped_bytes();
	assert_true(mapped_full >= n * 8192);
	for (size_t i = 0; i < n; i++)
		sa_cache_free(c, objs[i]);
	sa_trim();
	size_t mapped_after = sa_segment_mapped_bytes();
	print_message("segments mapped: %zu MiB with the objects, %zu MiB after free + trim\n",
		      mapped_full >> 20, mapped_after >> 20);
	assert_true(mapped_after + MiB(120) <= mapped_full);
	/* and the cache works on */
	for (size_t i = 0; i < 1000; i++) {
		objs[i] = sa_cache_alloc(c, 0);
		assert_non_null(objs[i]);
		memset(objs[i], 7, 8192);
	}
	check_no_duplicates(objs, 1000);
	for (size_t i = 0; i < 1000; i++)
		sa_cache_free(c, objs[i]);
	sa_cache_destroy(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cache_and_prefill),
		cmocka_unit_test(test_other_cache_after),
		cmocka_unit_test(test_trim_unmaps_free_segments),
	};
	return cmocka_run_group_tests_name("oom", tests, NULL, NULL);
}
