/*
 * tests/unit/sheaf_api.c — guaranteed allocation: sa_sheaf_prefill / sa_sheaf_alloc /
 * sa_sheaf_refill / sa_sheaf_return / sa_sheaf_size, normal and oversize sheaves, and the
 * counters they move.
 *
 * Contract: after sa_sheaf_prefill(c, f, n) succeeds, the next n sa_sheaf_alloc on it succeed
 * (inside SA_NOWAIT too); an allocation may fail only when the sheaf is empty.
 */
#include "sa_test.h"

static cpu_set_t saved_affinity;

/* Pinned: the spare and the barn seen by prefill and return are those of one CPU. */
static int pin_setup(void **state)
{
	(void)state;
	allowed_cpus(&saved_affinity);
	return pin_to_cpu(first_allowed_cpu());
}

static int pin_teardown(void **state)
{
	(void)state;
	set_affinity(&saved_affinity);
	return 0;
}

/* Takes exactly n objects, then drains the rest: a NULL only when sa_sheaf_size says empty. */
static size_t take_all(struct sa_cache *c, struct sa_sheaf *s, unsigned n, void **out, size_t max)
{
	size_t k = 0;
	assert_true(sa_sheaf_size(s) >= n);
	for (unsigned i = 0; i < n; i++) {
		void *p = sa_sheaf_alloc(c, SA_NOWAIT, s);
		assert_non_null(p);
		check_object_of(c, p);
		assert_true(k < max);
		out[k++] = p;
	}
	for (;;) {
		unsigned left = sa_sheaf_size(s);
		void *p = sa_sheaf_alloc(c, SA_NOWAIT, s);
		if (!p) {
			assert_int_equal(left, 0);
			assert_int_equal(sa_sheaf_size(s), 0);
			break;
		}
		assert_true(left > 0);
		assert_int_equal(sa_sheaf_size(s), left - 1);
		check_object_of(c, p);
		assert_true(k < max);
		out[k++] = p;
	}
	assert_null(sa_sheaf_alloc(c, 0, s)); /* stays empty */
	return k;
}

static void test_prefill_exact(void **state)
{
	(void)state;
	enum { MAX = 20000 };
	static void *objs[MAX];
	struct sa_cache *c = sa_cache_create("prefill", 64, NULL);
	assert_non_null(c);
	unsigned cap = sa_cache_sheaf_capacity(c);
	assert_true(cap >= 2);
	unsigned ns[] = {1, 2, cap / 2, cap - 1, cap, cap + 1, 2 * cap, 3 * cap + 7, 5000};
	for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
		unsigned n = ns[k];
		struct sa_cache_stats before = get_stats(c);
		struct sa_sheaf *s = sa_sheaf_prefill(c, 0, n);
		assert_non_null(s);
		unsigned size = sa_sheaf_size(s);
		assert_true(size >= n);
		struct sa_cache_stats mid = get_stats(c);
		if (n > cap) {
			assert_int_equal(mid.prefill_oversize, before.prefill_oversize + 1);
		} else {
			assert_int_equal(mid.prefill_oversize, before.prefill_oversize);
			assert_true(size <= cap);
			assert_int_equal(mid.prefill_fast + mid.prefill_slow,
					 before.prefill_fast + before.prefill_slow + 1);
		}
		size_t got = take_all(c, s, n, objs, MAX);
		assert_int_equal(got, size);
		check_no_duplicates(objs, got);
		sa_sheaf_return(c, 0, s);
		struct sa_cache_stats after = get_stats(c);
		assert_int_equal(after.sheaf_alloc_objects, before.sheaf_alloc_objects + got);
		assert_int_equal(after.return_fast + after.return_slow,
				 before.return_fast + before.return_slow + 1);
		assert_stats_consistent(c, got);
		sa_cache_free_bulk(c, got, objs);
		assert_stats_consistent(c, 0);
	}
	sa_cache_destroy(c);
}

static void test_prefill_partial_use(void **state)
{
	(void)state;
	enum { MAX = 4096 };
	static void *objs[MAX];
	struct sa_cache *c = sa_cache_create("prefill-partial", 300, NULL);
	assert_non_null(c);
	unsigned cap = sa_cache_sheaf_capacity(c);
	size_t held = 0;
	for (int round = 0; round < 50; round++) {
		unsigned n = 1 + (unsigned)(round * 7) % (2 * cap);
		struct sa_sheaf *s = sa_sheaf_prefill(c, 0, n);
		assert_non_null(s);
		/* use part of it, with a NOWAIT request: must still succeed */
		unsigned use = n / 2 + 1;
		for (unsigned i = 0; i < use && held < MAX; i++) {
			objs[held] = sa_sheaf_alloc(c, SA_NOWAIT | SA_NOWARN, s);
			assert_non_null(objs[held]);
			held++;
		}
		sa_sheaf_return(c, 0, s);
		if (round % 5 == 4) {
			sa_cache_free_bulk(c, held, objs);
			held = 0;
		}
		assert_stats_consistent(c, held);
	}
	check_no_duplicates(objs, held);
	sa_cache_free_bulk(c, held, objs);
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
}

static void test_refill(void **state)
{
	(void)state;
	enum { MAX = 4096 };
	static void *objs[MAX];
	size_t k = 0;
	struct sa_cache *c = sa_cache_create("refill", 128, NULL);
	assert_non_null(c);
	unsigned cap = sa_cache_sheaf_capacity(c);
	struct sa_sheaf *s = sa_sheaf_prefill(c, 0, 4);
	assert_non_null(s);
	while (sa_sheaf_size(s) > 0)
		objs[k++] = sa_sheaf_alloc(c, 0, s);
	/* refill within the capacity keeps the sheaf */
	struct sa_sheaf *orig = s;
	assert_int_equal(sa_sheaf_refill(c, 0, &s, cap), 0);
	assert_ptr_equal(s, orig);
	assert_true(sa_sheaf_size(s) >= cap);
	/* asking for no more than it holds changes nothing */
	unsigned sz = sa_sheaf_size(s);
	assert_int_equal(sa_sheaf_refill(c, 0, &s, 1), 0);
	assert_ptr_equal(s, orig);
	assert_int_equal(sa_sheaf_size(s), sz);
	for (unsigned i = 0; i < cap / 2; i++)
		objs[k++] = sa_sheaf_alloc(c, 0, s);
	/* growing beyond the capacity replaces the sheaf */
	struct sa_cache_stats before = get_stats(c);
	unsigned big = 2 * cap + 1;
	assert_int_equal(sa_sheaf_refill(c, 0, &s, big), 0);
	assert_non_null(s);
	assert_ptr_not_equal(s, orig);
	assert_true(sa_sheaf_size(s) >= big);
	struct sa_cache_stats after = get_stats(c);
	assert_int_equal(after.prefill_oversize, before.prefill_oversize + 1);
	/* the objects taken from the replaced sheaf were accounted when it went back */
	assert_int_equal(after.sheaf_alloc_objects, before.sheaf_alloc_objects + k);
	for (unsigned i = 0; i < big; i++) {
		objs[k] = sa_sheaf_alloc(c, SA_NOWAIT, s);
		assert_non_null(objs[k]);
		k++;
	}
	/* and an oversize sheaf can grow further */
	assert_int_equal(sa_sheaf_refill(c, 0, &s, 3 * cap), 0);
	assert_true(sa_sheaf_size(s) >= 3 * cap);
	for (unsigned i = 0; i < 3 * cap; i++) {
		objs[k] = sa_sheaf_alloc(c, 0, s);
		assert_non_null(objs[k]);
		k++;
	}
	sa_sheaf_return(c, 0, s);
	check_no_duplicates(objs, k);
	assert_stats_consistent(c, k);
	sa_cache_free_bulk(c, k, objs);
	assert_stats_consistent(c, 0);

	/* bad arguments */
	assert_int_equal(sa_sheaf_refill(c, 0, NULL, 1), -EINVAL);
	struct sa_sheaf *none = NULL;
	assert_int_equal(sa_sheaf_refill(c, 0, &none, 1), -EINVAL);
	sa_cache_destroy(c);
}

static void test_return_counters(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("return", 256, NULL);
	assert_non_null(c);
	unsigned cap = sa_cache_sheaf_capacity(c);
	void *objs[4096];
	size_t k = 0;
	struct sa_cache_stats s0 = get_stats(c);

	/* fresh cache, this CPU has no spare: a returned normal sheaf is kept (fast) */
	struct sa_sheaf *a = sa_sheaf_prefill(c, 0, cap);
	assert_non_null(a);
	objs[k++] = sa_sheaf_alloc(c, 0, a);
	sa_sheaf_return(c, 0, a);
	struct sa_cache_stats s1 = get_stats(c);
	assert_int_equal(s1.return_fast, s0.return_fast + 1);
	assert_int_equal(s1.return_slow, s0.return_slow);
	assert_int_equal(s1.sheaf_alloc_objects, s0.sheaf_alloc_objects + 1);

	/* prefill now finds the kept sheaf: no new sheaf structure */
	struct sa_sheaf *b = sa_sheaf_prefill(c, 0, 1);
	assert_non_null(b);
	struct sa_cache_stats s2 = get_stats(c);
	assert_int_equal(s2.sheaf_new, s1.sheaf_new);
	assert_int_equal(s2.prefill_fast + s2.prefill_slow, s1.prefill_fast + s1.prefill_slow + 1);
	/* a second one at the same time needs a new sheaf (no spare now, barn empty) */
	struct sa_sheaf *d = sa_sheaf_prefill(c, 0, cap);
	assert_non_null(d);
	assert_ptr_not_equal(b, d);
	objs[k++] = sa_sheaf_alloc(c, 0, b);
	objs[k++] = sa_sheaf_alloc(c, 0, d);
	sa_sheaf_return(c, 0, b); /* spare slot free again: fast */
	sa_sheaf_return(c, 0, d); /* spare taken: slow (barn or flushed) */
	struct sa_cache_stats s3 = get_stats(c);
	assert_int_equal(s3.return_fast, s2.return_fast + 1);
	assert_int_equal(s3.return_slow, s2.return_slow + 1);

	/* an oversize sheaf is never kept */
	struct sa_sheaf *o = sa_sheaf_prefill(c, 0, 2 * cap + 3);
	assert_non_null(o);
	objs[k++] = sa_sheaf_alloc(c, 0, o);
	uint64_t freed_before = get_stats(c).sheaf_freed;
	sa_sheaf_return(c, 0, o);
	struct sa_cache_stats s4 = get_stats(c);
	assert_int_equal(s4.return_slow, s3.return_slow + 1);
	assert_int_equal(s4.return_fast, s3.return_fast);
	assert_int_equal(s4.sheaf_freed, freed_before + 1);
	assert_int_equal(s4.sheaf_alloc_objects, s0.sheaf_alloc_objects + k);
	assert_stats_consistent(c, k);
	sa_cache_free_bulk(c, k, objs);
	assert_stats_consistent(c, 0);

	/* NULL arguments: harmless */
	sa_sheaf_return(c, 0, NULL);
	assert_int_equal(sa_sheaf_size(NULL), 0);
	assert_null(sa_sheaf_alloc(c, 0, NULL));
	errno = 0;
	assert_null(sa_sheaf_prefill(NULL, 0, 1));
	assert_int_equal(errno, EINVAL);

	assert_int_equal(sa_cache_shrink(c), 0);
	struct sa_cache_stats s5 = get_stats(c);
	assert_int_equal(s5.slabs, 0);
	assert_int_equal(s5.objects_cached, 0);
	sa_cache_destroy(c);
}

/* Many sheaves held at once, all returned: counts add up and nothing is handed out twice. */
static void test_many_sheaves(void **state)
{
	(void)state;
	enum { NS = 40, MAX = 20000 };
	static void *objs[MAX];
	size_t k = 0;
	struct sa_cache_args a = {.sheaf_capacity = 16};
	struct sa_cache *c = sa_cache_create("many-sheaves", 32, &a);
	assert_non_null(c);
	assert_int_equal(sa_cache_sheaf_capacity(c), 16);
	struct sa_sheaf *s[NS];
	for (int i = 0; i < NS; i++) {
		s[i] = sa_sheaf_prefill(c, 0, (unsigned)(1 + i * 3));
		assert_non_null(s[i]);
		assert_true(sa_sheaf_size(s[i]) >= (unsigned)(1 + i * 3));
	}
	for (int i = 0; i < NS; i++)
		k += take_all(c, s[i], (unsigned)(1 + i * 3), objs + k, MAX - k);
	check_no_duplicates(objs, k);
	for (int i = NS - 1; i >= 0; i--)
		sa_sheaf_return(c, 0, s[i]);
	assert_stats_consistent(c, k);
	sa_cache_free_bulk(c, k, objs);
	assert_stats_consistent(c, 0);
	/* and again, the returned sheaves get reused */
	for (int i = 0; i < NS; i++) {
		s[i] = sa_sheaf_prefill(c, 0, 16);
		assert_non_null(s[i]);
	}
	for (int i = 0; i < NS; i++)
		sa_sheaf_return(c, 0, s[i]);
	assert_stats_consistent(c, 0);
	assert_int_equal(sa_cache_shrink(c), 0);
	assert_int_equal(get_stats(c).slabs, 0);
	sa_cache_destroy(c);
}

static void test_prefill_exact_unpinned(void **state)
{
	test_prefill_exact(state);
}

/*
 * A refill that runs out (NOWAIT: no new mapping) returns -ENOMEM and leaves the caller its
 * sheaf with every object it held; an in-place refill may have added some (docs/api.md), and
 * each of them is a good object. A replacement that fails leaves the old sheaf as it was.
 */
static void test_refill_fails(void **state)
{
	(void)state;
	enum { BIG = 566257 }; /* a few objects per MiB: a refill soon needs new memory */
	struct sa_cache *c = sa_cache_create("refill-fails", BIG, NULL);
	assert_non_null(c);
	unsigned cap = sa_cache_sheaf_capacity(c);
	struct sa_sheaf *s = sa_sheaf_prefill(c, 0, cap);
	assert_non_null(s);
	static void *objs[1024];
	size_t k = 0;
	for (unsigned i = 0; i < cap / 2 + 1; i++)
		objs[k++] = sa_sheaf_alloc(c, 0, s);
	struct sa_sheaf *old = s;
	unsigned before = sa_sheaf_size(s);
	unsigned nw = sa_memalloc_nowait_save();
	int in_place = sa_sheaf_refill(c, SA_NOWARN, &s, cap);
	int oversize = sa_sheaf_refill(c, SA_NOWARN, &s, 8 * cap); /* 8 x cap x 553 KiB: no */
	sa_memalloc_nowait_restore(nw);
	assert_true(in_place == 0 || in_place == -ENOMEM);
	assert_ptr_equal(s, old);
	assert_int_equal(oversize, -ENOMEM);
	unsigned after = sa_sheaf_size(s);
	assert_true(after >= before);
	if (in_place == 0)
		assert_true(after >= cap);
	/* every object the sheaf holds is a distinct, usable object */
	while (sa_sheaf_size(s) > 0) {
		void *o = sa_sheaf_alloc(c, 0, s);
		assert_non_null(o);
		memset(o, 0xA5, BIG);
		objs[k++] = o;
	}
	assert_int_equal(k, cap / 2 + 1 + after);
	check_no_duplicates(objs, k);
	sa_sheaf_return(c, 0, s);
	for (size_t i = 0; i < k; i++)
		sa_cache_free(c, objs[i]);
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_prefill_exact, pin_setup, pin_teardown),
		cmocka_unit_test(test_prefill_exact_unpinned),
		cmocka_unit_test_setup_teardown(test_prefill_partial_use, pin_setup, pin_teardown),
		cmocka_unit_test_setup_teardown(test_refill, pin_setup, pin_teardown),
		cmocka_unit_test_setup_teardown(test_refill_fails, pin_setup, pin_teardown),
		cmocka_unit_test_setup_teardown(test_return_counters, pin_setup, pin_teardown),
		cmocka_unit_test(test_many_sheaves),
	};
	return cmocka_run_group_tests_name("sheaf_api", tests, NULL, NULL);
}
