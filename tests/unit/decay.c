/*
 * tests/unit/decay.c — what the program stopped using goes back by itself (alloc/decay.c).
 *
 *   test_barn_watermark     sa_barn_take_unused gives back three quarters (rounded up) of the
 *                           full sheaves no refill took since the last pass, all with `all`
 *   test_idle_cache         passes run by hand (sa_decay_run with the clock due): the first one
 *                           only looks; a cache with no operation since gives everything back
 *                           (per-CPU sheaves, barn, empty slabs); a cache in use keeps what it
 *                           used; objects handed out afterwards are whole and distinct; the
 *                           counters add up at every step
 *   test_live_objects_kept  decay never touches objects in use: their slabs and contents stay
 *   test_automatic          with decay_ms=10, another cache's slow paths drive the passes: the
 *                           idle cache's slabs go (30 s deadline), and its units' pages are
 *                           purged (sa_segment_dirty_bytes falls back)
 *   test_off                decay_ms=0: no pass runs, however long the other cache works
 *   test_nowait             inside a SA_NOWAIT scope a due pass does not run
 *   test_budget             a pass stops when its budget is spent (here: two drains) and the
 *                           next one, due soon, goes on from there until everything is back
 *   test_background         background=1 (in a child process): after one slow path has started
 *                           the thread, a cache's free objects and their pages go back while
 *                           the program makes no allocator call at all (30 s deadline); with
 *                           background=0 nothing moves in the same time
 *   test_huge_cache_ages    a freed huge block kept for reuse is unmapped by a pass once it is
 *                           older than purge_ms, not before
 */
#include "sa_test.h"

#include "alloc/scope.h"

#include <time.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Run one decay pass now, whatever the clock says. */
static void pass(void)
{
	atomic_store(&sa_decay_next, 1); /* armed and due */
	sa_decay_run(0);
}

enum { N = 4000 };
static void *objs[N];

static void fill_and_free(struct sa_cache *c, int n)
{
	for (int i = 0; i < n; i++) {
		objs[i] = sa_cache_alloc(c, 0);
		assert_non_null(objs[i]);
		memset(objs[i], 0x5a, 64);
	}
	for (int i = 0; i < n; i++)
		sa_cache_free(c, objs[i]);
}

static void test_barn_watermark(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("decay-barn", 64, NULL);
	assert_non_null(c);
	struct sa_barn *b = &c->nodes[0]->barn;
	struct sa_sheaf *sh[8];
	for (int i = 0; i < 8; i++) {
		sh[i] = sa_sheaf_new(c, c->capacity, 0, 0);
		assert_non_null(sh[i]);
		sa_sheaf_fill(c, sh[i], 3, 0);
		assert_int_equal(sh[i]->size, 3);
		sa_barn_put_full(b, sh[i]);
	}
	/* the watermark starts at 0 (a new barn): nothing is unused yet */
	assert_null(sa_barn_take_unused(b, false, 100));
	assert_int_equal(sa_barn_nr_full_racy(b), 8);
	/* two refills take sheaves: the low watermark is 6, three quarters of it (5) go */
	struct sa_sheaf *g1 = sa_barn_get_full(b, 0), *g2 = sa_barn_get_full(b, 0);
	assert_non_null(g1);
	assert_non_null(g2);
	sa_barn_put_full(b, g1);
	sa_barn_put_full(b, g2);
	int n = 0;
	for (struct sa_sheaf *s = sa_barn_take_unused(b, false, 100); s;) {
		struct sa_sheaf *next = s->next;
		assert_int_equal(s->size, 3);
		sa_sheaf_flush(c, s);
		sa_sheaf_free(c, s);
		s = next;
		n++;
	}
	assert_int_equal(n, 5);
	assert_int_equal(sa_barn_nr_full_racy(b), 3);
	/* all: every full sheaf */
	n = 0;
	for (struct sa_sheaf *s = sa_barn_take_unused(b, true, 100); s;) {
		struct sa_sheaf *next = s->next;
		sa_sheaf_flush(c, s);
		sa_sheaf_free(c, s);
		s = next;
		n++;
	}
	assert_int_equal(n, 3);
	assert_int_equal(sa_barn_nr_full_racy(b), 0);
	assert_int_equal(sa_cache_shrink(c), 0);
	assert_int_equal(get_stats(c).slabs, 0);
	assert_int_equal(sa_slab_inuse_racy(c), 0);
	sa_cache_destroy(c);
}

static void test_idle_cache(void **state)
{
	(void)state;
	unsigned saved = sa_opt.decay_ms;
	sa_opt.decay_ms = 3600000; /* only the passes this test runs */
	atomic_store(&sa_decay_next, 0);
	struct sa_cache *idle = sa_cache_create("decay-idle", 1024, NULL);
	struct sa_cache *busy = sa_cache_create("decay-busy", 1024, NULL);
	assert_non_null(idle);
	assert_non_null(busy);
	fill_and_free(idle, N);
	fill_and_free(busy, N);
	struct sa_cache_stats si = get_stats(idle), sb = get_stats(busy);
	assert_true(si.objects_cached > 0);
	assert_true(si.slabs > 0);
	assert_int_equal(si.objects_in_use, 0);
	assert_stats_consistent(idle, 0);
	assert_stats_consistent(busy, 0);

	pass(); /* the first pass after the frees only takes the caches' signatures */
	struct sa_cache_stats si1 = get_stats(idle);
	assert_int_equal(si1.slabs, si.slabs);
	assert_int_equal(si1.objects_cached, si.objects_cached);

	/* busy works between the passes; idle does nothing */
	fill_and_free(busy, N);
	sb = get_stats(busy);
	pass();
	si = get_stats(idle);
	assert_int_equal(si.objects_cached, 0);
	assert_int_equal(si.slabs, 0);
	assert_int_equal(si.bytes_held, 0);
	assert_int_equal(si.objects_in_use, 0);
	assert_int_equal(si.slabs_allocated, si.slabs_freed);
	assert_int_equal(sa_slab_inuse_racy(idle), 0);
	assert_stats_consistent(idle, 0);
	/* busy was used: its per-CPU sheaves stay, and so do its slabs */
	struct sa_cache_stats sb2 = get_stats(busy);
	assert_true(sb2.slabs > 0);
	assert_true(sb2.objects_cached > 0);
	assert_true(sb2.objects_cached <= sb.objects_cached);
	assert_stats_consistent(busy, 0);

	/* the idle cache works again as before: N distinct whole objects */
	for (int i = 0; i < N; i++) {
		objs[i] = sa_cache_alloc(idle, 0);
		assert_non_null(objs[i]);
		assert_int_equal((uintptr_t)objs[i] % 8, 0);
		memset(objs[i], i & 0xff, 1024);
	}
	check_no_duplicates(objs, N);
	for (int i = 0; i < N; i++) {
		const unsigned char *p = objs[i];
		assert_int_equal(p[0], i & 0xff);
		assert_int_equal(p[1023], i & 0xff);
	}
	for (int i = 0; i < N; i++)
		sa_cache_free(idle, objs[i]);
	assert_stats_consistent(idle, 0);
	sa_cache_destroy(idle);
	sa_cache_destroy(busy);
	sa_opt.decay_ms = saved;
}

static void test_live_objects_kept(void **state)
{
	(void)state;
	unsigned saved = sa_opt.decay_ms;
	sa_opt.decay_ms = 3600000;
	struct sa_cache *c = sa_cache_create("decay-live", 256, NULL);
	assert_non_null(c);
	for (int i = 0; i < N; i++) {
		objs[i] = sa_cache_alloc(c, 0);
		assert_non_null(objs[i]);
		memset(objs[i], (i * 7) & 0xff, 256);
	}
	/* every fourth stays live */
	for (int i = 0; i < N; i++)
		if (i % 4)
			sa_cache_free(c, objs[i]);
	for (int k = 0; k < 3; k++)
		pass();
	struct sa_cache_stats s = get_stats(c);
	assert_int_equal(s.objects_in_use, N / 4);
	assert_int_equal(s.objects_cached, 0);
	assert_true(s.slabs > 0);
	assert_stats_consistent(c, N / 4);
	for (int i = 0; i < N; i += 4) {
		const unsigned char *p = objs[i];
		for (int j = 0; j < 256; j += 51)
			assert_int_equal(p[j], (i * 7) & 0xff);
		sa_cache_free(c, objs[i]);
	}
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
	sa_opt.decay_ms = saved;
}

/* busy's slow paths, until cond(idle) or the deadline; returns whether cond held */
static bool work_until(struct sa_cache *busy, struct sa_cache *idle,
		       bool (*cond)(struct sa_cache *), double secs)
{
	double end = now_s() + secs;
	while (now_s() < end) {
		fill_and_free(busy, 512);
		if (cond(idle))
			return true;
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	return cond(idle);
}

static bool no_slabs(struct sa_cache *c)
{
	return get_stats(c).slabs == 0;
}

static size_t dirty_before;
static bool purged(struct sa_cache *c)
{
	(void)c;
	return sa_segment_dirty_bytes() < dirty_before;
}

static void test_automatic(void **state)
{
	(void)state;
	unsigned saved = sa_opt.decay_ms, saved_purge = sa_opt.purge_ms;
	sa_opt.decay_ms = 10;
	sa_opt.purge_ms = 10;
	atomic_store(&sa_decay_next, 0);
	struct sa_cache *idle = sa_cache_create("decay-auto-idle", 2048, NULL);
	struct sa_cache *busy = sa_cache_create("decay-auto-busy", 64, NULL);
	assert_non_null(idle);
	assert_non_null(busy);
	fill_and_free(idle, N);
	assert_true(get_stats(idle).slabs > 0);
	bool gone = work_until(busy, idle, no_slabs, 30);
	struct sa_cache_stats s = get_stats(idle);
	print_message("automatic: idle cache slabs %llu, cached %llu after the passes\n",
		      (unsigned long long)s.slabs, (unsigned long long)s.objects_cached);
	assert_true(gone);
	assert_int_equal(s.objects_cached, 0);
	assert_stats_consistent(idle, 0);
	/* its units went dirty; a later pass purges them */
	dirty_before = sa_segment_dirty_bytes();
	if (dirty_before)
		assert_true(work_until(busy, idle, purged, 30));
	sa_cache_destroy(idle);
	sa_cache_destroy(busy);
	sa_opt.decay_ms = saved;
	sa_opt.purge_ms = saved_purge;
}

static void test_off(void **state)
{
	(void)state;
	unsigned saved = sa_opt.decay_ms;
	sa_opt.decay_ms = 0;
	atomic_store(&sa_decay_next, 1); /* due, if decay were on */
	struct sa_cache *idle = sa_cache_create("decay-off-idle", 2048, NULL);
	struct sa_cache *busy = sa_cache_create("decay-off-busy", 64, NULL);
	assert_non_null(idle);
	assert_non_null(busy);
	fill_and_free(idle, N);
	struct sa_cache_stats s0 = get_stats(idle);
	assert_true(s0.slabs > 0);
	/* many slow paths of busy (each 32nd of a thread looks at the clock) */
	uint64_t slow0 = get_stats(busy).refills + get_stats(busy).flushes;
	for (int k = 0; k < 200; k++)
		fill_and_free(busy, N);
	struct sa_cache_stats sb = get_stats(busy);
	assert_true(sb.refills + sb.flushes - slow0 >= 64);
	struct sa_cache_stats s = get_stats(idle);
	assert_int_equal(s.slabs, s0.slabs);
	assert_int_equal(s.objects_cached, s0.objects_cached);
	sa_cache_destroy(idle);
	sa_cache_destroy(busy);
	sa_opt.decay_ms = saved;
}

static void test_nowait(void **state)
{
	(void)state;
	unsigned saved = sa_opt.decay_ms;
	sa_opt.decay_ms = 3600000;
	struct sa_cache *idle = sa_cache_create("decay-nowait", 2048, NULL);
	assert_non_null(idle);
	fill_and_free(idle, N);
	pass(); /* signatures */
	struct sa_cache_stats s0 = get_stats(idle);
	assert_true(s0.slabs > 0);
	atomic_store(&sa_decay_next, 1);
	unsigned sc = sa_memalloc_nowait_save();
	sa_decay_run(sa_flags_effective(0));
	sa_memalloc_nowait_restore(sc);
	struct sa_cache_stats s = get_stats(idle);
	assert_int_equal(s.slabs, s0.slabs);
	assert_int_equal(s.objects_cached, s0.objects_cached);
	/* outside the scope the same pass runs */
	atomic_store(&sa_decay_next, 1);
	sa_decay_run(0);
	assert_int_equal(get_stats(idle).slabs, 0);
	sa_cache_destroy(idle);
	sa_opt.decay_ms = saved;
}

static void test_budget(void **state)
{
	(void)state;
	enum { NC = 5 };
	unsigned saved = sa_opt.decay_ms;
	sa_opt.decay_ms = 3600000;
	struct sa_cache *cs[NC];
	char name[32];
	for (int k = 0; k < NC; k++) {
		snprintf(name, sizeof(name), "decay-budget-%d", k);
		cs[k] = sa_cache_create(name, 1024, NULL);
		assert_non_null(cs[k]);
		fill_and_free(cs[k], N);
		assert_true(get_stats(cs[k]).objects_cached > 0);
	}
	pass(); /* signatures */
	uint64_t before = sa_now_ns();
	pass(); /* every cache is idle with objects in its per-CPU sheaves: two drains, then cut */
	int back = 0;
	for (int k = 0; k < NC; k++)
		back += get_stats(cs[k]).slabs == 0;
	print_message("budget: %d of %d idle caches back after one pass\n", back, NC);
	assert_true(back >= 1);
	assert_true(back < NC);
	/* cut short: the next pass is due in a sixteenth of the interval, not a whole one */
	uint64_t next = atomic_load(&sa_decay_next);
	assert_true(next < before + (uint64_t)sa_opt.decay_ms * 1000000ull / 2);
	int passes = 1;
	while (back < NC && passes < 20) {
		pass();
		passes++;
		back = 0;
		for (int k = 0; k < NC; k++)
			back += get_stats(cs[k]).slabs == 0;
	}
	assert_int_equal(back, NC);
	for (int k = 0; k < NC; k++) {
		struct sa_cache_stats s = get_stats(cs[k]);
		assert_int_equal(s.objects_cached, 0);
		assert_stats_consistent(cs[k], 0);
		sa_cache_destroy(cs[k]);
	}
	sa_opt.decay_ms = saved;
}

/* In a child: an idle cache, then no allocator call; 0 if its slabs and the dirty pages went
 * within 30 s, 1 if not, 2 if something else failed. */
static int background_child(int on)
{
	sa_opt.background = on;
	sa_opt.decay_ms = 20;
	sa_opt.purge_ms = 20;
	struct sa_cache *c = sa_cache_create("decay-bg", 2048, NULL);
	if (!c)
		return 2;
	for (int i = 0; i < N; i++)
		if (!(objs[i] = sa_cache_alloc(c, 0)))
			return 2;
	for (int i = 0; i < N; i++)
		sa_cache_free(c, objs[i]);
	if (get_stats(c).slabs == 0)
		return 2;
	/* due, so this slow path runs a pass, and (on) starts the thread */
	atomic_store(&sa_decay_next, 1);
	sa_decay_run(0);
	if (on != sa_decay_background_running())
		return 2;
	double end = now_s() + (on ? 30 : 1);
	while (now_s() < end) {
		struct sa_cache_stats s;
		sa_cache_stats(c, &s);
		if (s.slabs == 0 && sa_segment_dirty_bytes() == 0)
			return 0;
		struct timespec ts = {0, 10000000};
		nanosleep(&ts, NULL);
	}
	return 1;
}

static void test_background(void **state)
{
	(void)state;
	for (int on = 1; on >= 0; on--) {
		fflush(stdout);
		fflush(stderr);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0)
			_exit(background_child(on));
		int st = 0;
		assert_int_equal(waitpid(pid, &st, 0), pid);
		assert_true(WIFEXITED(st));
		print_message("background=%d: child exit %d (0: all back while idle)\n", on,
			      WEXITSTATUS(st));
		assert_int_equal(WEXITSTATUS(st), on ? 0 : 1);
	}
}

static size_t huge_cached(void)
{
	struct sa_malloc_totals t;
	sa_malloc_totals(&t);
	return t.huge_cached;
}

static void test_huge_cache_ages(void **state)
{
	(void)state;
	unsigned saved = sa_opt.decay_ms, saved_purge = sa_opt.purge_ms;
	sa_opt.decay_ms = 3600000;
	sa_opt.purge_ms = 3600000;
	sa_trim(); /* no cached mapping from before */
	assert_int_equal(huge_cached(), 0);
	/* a mapping is kept only while it is at most a quarter of the live huge bytes */
	void *keep = sa_malloc(32u << 20);
	assert_non_null(keep);
	void *p = sa_malloc(6u << 20);
	assert_non_null(p);
	memset(p, 1, 4096);
	sa_free(p);
	assert_true(huge_cached() >= (6u << 20));
	pass(); /* younger than purge_ms: kept */
	assert_true(huge_cached() >= (6u << 20));
	sa_opt.purge_ms = 1;
	struct timespec ts = {0, 20000000};
	nanosleep(&ts, NULL);
	pass();
	assert_int_equal(huge_cached(), 0);
	sa_free(keep);
	sa_trim();
	sa_opt.decay_ms = saved;
	sa_opt.purge_ms = saved_purge;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_barn_watermark),
		cmocka_unit_test(test_idle_cache),
		cmocka_unit_test(test_live_objects_kept),
		cmocka_unit_test(test_automatic),
		cmocka_unit_test(test_off),
		cmocka_unit_test(test_nowait),
		cmocka_unit_test(test_budget),
		cmocka_unit_test(test_huge_cache_ages),
		cmocka_unit_test(test_background),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
