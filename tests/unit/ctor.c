/*
 * tests/unit/ctor.c — constructors: run once per object when it is carved from a new slab, never
 * again while the slab lives; a free object keeps its constructed state (nothing is written into
 * a free object), through sheaves and through the slabs' free bitmaps.
 */
#include "sa_test.h"

#define CTOR_MAGIC 0xC0DEC0DEC0DEC0DEull
#define MAX_LOG	   65536

/* ctor call log: addresses constructed (single-threaded tests) */
static void *ctor_log[MAX_LOG];
static size_t ctor_calls;
static size_t cur_size; /* bytes the ctor fills, for the cache under test */

static void ctor(void *obj)
{
	if (ctor_calls < MAX_LOG)
		ctor_log[ctor_calls] = obj;
	ctor_calls++;
	uint64_t *w = obj;
	for (size_t i = 0; i < cur_size / 8; i++)
		w[i] = CTOR_MAGIC ^ i;
	for (size_t i = cur_size / 8 * 8; i < cur_size; i++)
		((unsigned char *)obj)[i] = (unsigned char)(0xC0 + i);
}

static int constructed(const void *obj, size_t size)
{
	const uint64_t *w = obj;
	for (size_t i = 0; i < size / 8; i++)
		if (w[i] != (CTOR_MAGIC ^ i))
			return 0;
	for (size_t i = size / 8 * 8; i < size; i++)
		if (((const unsigned char *)obj)[i] != (unsigned char)(0xC0 + i))
			return 0;
	return 1;
}

static void check_ctor_log_unique(void)
{
	size_t n = ctor_calls < MAX_LOG ? ctor_calls : MAX_LOG;
	check_no_duplicates(ctor_log, n);
}

static void run_ctor_case(size_t size)
{
	enum { M = 600 };
	char name[32];
	snprintf(name, sizeof(name), "ctor-%zu", size);
	struct sa_cache_args a = {.ctor = ctor};
	ctor_calls = 0;
	cur_size = size;
	/* one CPU throughout: objects cached in another CPU's sheaves after a migration would
	 * (rightly) make this CPU carve a new slab, which the counts below do not expect */
	cpu_set_t saved_affinity;
	allowed_cpus(&saved_affinity);
	pin_to_cpu(first_allowed_cpu());
	struct sa_cache *c = sa_cache_create(name, size, &a);
	assert_non_null(c);
	assert_int_equal(ctor_calls, 0); /* nothing carved yet */
	assert_true(sa_cache_object_size(c) >= size);
	static void *objs[M];

	/* first allocations: every object handed out is constructed; ctor ran once per carved
	 * object, for whole slabs at a time */
	for (int i = 0; i < M; i++) {
		objs[i] = sa_cache_alloc(c, 0);
		assert_non_null(objs[i]);
		check_object_of(c, objs[i]);
		assert_true(constructed(objs[i], size));
	}
	check_no_duplicates(objs, M);
	struct sa_cache_stats st = get_stats(c);
	assert_int_equal(st.slabs_freed, 0);
	assert_int_equal(ctor_calls, st.slabs_allocated * c->slab_objs);
	check_ctor_log_unique();
	size_t calls_after_carve = ctor_calls;

	/* free and allocate again through the sheaves: no new constructor calls, state intact */
	for (int round = 0; round < 5; round++) {
		for (int i = 0; i < M; i++)
			sa_cache_free(c, objs[i]);
		for (int i = 0; i < M; i++) {
			objs[i] = sa_cache_alloc(c, 0);
			assert_non_null(objs[i]);
			if (!constructed(objs[i], size))
				print_error("%s: object %p lost its constructed state\n", name,
					    objs[i]);
			assert_true(constructed(objs[i], size));
		}
	}
	st = get_stats(c);
	if (st.slabs_freed == 0)
		assert_int_equal(ctor_calls, calls_after_carve);

	/* free every other object and flush the sheaves to the slabs: the freed objects sit in
	 * their slabs (bits set) while the slabs stay alive, then come back */
	for (int i = 0; i < M; i += 2)
		sa_cache_free(c, objs[i]);
	assert_int_equal(sa_cache_shrink(c), 0);
	st = get_stats(c);
	assert_int_equal(st.objects_cached, 0);
	size_t calls_before = ctor_calls;
	uint64_t slabs_alloc_before = st.slabs_allocated;
	for (int i = 0; i < M; i += 2) {
		objs[i] = sa_cache_alloc(c, 0);
		assert_non_null(objs[i]);
		if (!constructed(objs[i], size))
			print_error("%s: object %p back from its slab lost its constructed state\n",
				    name, objs[i]);
		assert_true(constructed(objs[i], size));
	}
	check_no_duplicates(objs, M);
	st = get_stats(c);
	/* constructor calls only for slabs created since */
	assert_int_equal(ctor_calls - calls_before,
			 (st.slabs_allocated - slabs_alloc_before) * c->slab_objs);

	/* bulk and sheaf allocations hand out constructed objects too */
	for (int i = 0; i < M; i++)
		sa_cache_free(c, objs[i]);
	assert_int_equal(sa_cache_alloc_bulk(c, 0, M, objs), M);
	for (int i = 0; i < M; i++)
		assert_true(constructed(objs[i], size));
	sa_cache_free_bulk(c, M, objs);
	struct sa_sheaf *sh = sa_sheaf_prefill(c, 0, 3 * sa_cache_sheaf_capacity(c));
	assert_non_null(sh);
	unsigned n = sa_sheaf_size(sh);
	for (unsigned i = 0; i < n && i < M; i++) {
		objs[i] = sa_sheaf_alloc(c, 0, sh);
		assert_non_null(objs[i]);
		assert_true(constructed(objs[i], size));
	}
	sa_sheaf_return(c, 0, sh);
	sa_cache_free_bulk(c, n < M ? n : M, objs);

	assert_stats_consistent(c, 0);
	assert_int_equal(sa_cache_shrink(c), 0);
	assert_int_equal(get_stats(c).slabs, 0);

	/* after every slab was given back, new slabs are constructed again */
	calls_before = ctor_calls;
	slabs_alloc_before = get_stats(c).slabs_allocated;
	void *p = sa_cache_alloc(c, 0);
	assert_non_null(p);
	assert_true(constructed(p, size));
	st = get_stats(c);
	assert_true(st.slabs_allocated > slabs_alloc_before);
	assert_int_equal(ctor_calls - calls_before,
			 (st.slabs_allocated - slabs_alloc_before) * c->slab_objs);
	sa_cache_free(c, p);
	sa_cache_destroy(c);
	set_affinity(&saved_affinity);
}

static void test_ctor_8(void **state)
{
	(void)state;
	run_ctor_case(8);
}

static void test_ctor_24(void **state)
{
	(void)state;
	run_ctor_case(24);
}

static void test_ctor_100(void **state)
{
	(void)state;
	run_ctor_case(100);
}

static void test_ctor_1000(void **state)
{
	(void)state;
	run_ctor_case(1000);
}

static void test_ctor_aligned(void **state)
{
	(void)state;
	enum { M = 300 };
	struct sa_cache_args a = {.ctor = ctor, .align = 256};
	ctor_calls = 0;
	cur_size = 256; /* exactly one alignment unit: the link must still go outside */
	struct sa_cache *c = sa_cache_create("ctor-aligned", 256, &a);
	assert_non_null(c);
	static void *objs[M];
	for (int r = 0; r < 3; r++) {
		for (int i = 0; i < M; i++) {
			objs[i] = sa_cache_alloc(c, 0);
			assert_non_null(objs[i]);
			assert_int_equal((uintptr_t)objs[i] % 256, 0);
			assert_true(constructed(objs[i], 256));
		}
		for (int i = 0; i < M; i++)
			sa_cache_free(c, objs[i]);
		for (int i = 0; i < M; i += 3)
			objs[i] = sa_cache_alloc(c, 0);
		sa_cache_shrink(c);
		for (int i = 0; i < M; i += 3)
			sa_cache_free(c, objs[i]);
	}
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
}

/*
 * The library's own frees of objects it had zeroed (a regression): a bulk allocation with
 * SA_ZERO (or in a ZERO scope) that fails part-way gives back what it took, and must not give it
 * back zeroed; nor may the first SA_PIN | SA_ZERO prefill, which makes the pinned companion.
 */
static void test_zero_frees_keep_ctor(void **state)
{
	(void)state;
	enum { SIZE = 60000 - 59999 % 16, N = 64 };
	struct sa_cache_args a = {.ctor = ctor};
	cur_size = SIZE;
	cpu_set_t saved_affinity;
	allowed_cpus(&saved_affinity);
	pin_to_cpu(first_allowed_cpu());
	struct sa_cache *c = sa_cache_create("ctor-zero", SIZE, &a);
	assert_non_null(c);
	static void *objs[4096];
	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < 16; i++) /* free constructed objects for the bulk to take */
			objs[i] = sa_cache_alloc(c, 0);
		sa_cache_free_bulk(c, 16, objs);
		unsigned nw = sa_memalloc_nowait_save();
		unsigned zs = round ? sa_memalloc_flags_save(SA_ZERO) : 0;
		/* 4096 x 60 KB without a new mapping: fails after taking the free ones */
		size_t got = sa_cache_alloc_bulk(c, (round ? 0 : SA_ZERO) | SA_NOWARN, 4096, objs);
		if (round)
			sa_memalloc_flags_restore(zs);
		sa_memalloc_nowait_restore(nw);
		assert_int_equal(got, 0);
		for (int i = 0; i < N; i++) {
			objs[i] = sa_cache_alloc(c, 0);
			assert_non_null(objs[i]);
			assert_true(constructed(objs[i], SIZE));
		}
		sa_cache_free_bulk(c, N, objs);
	}
	/* a bulk that succeeds zeroes every object */
	assert_int_equal(sa_cache_alloc_bulk(c, SA_ZERO, 8, objs), 8);
	for (int i = 0; i < 8; i++) {
		for (size_t b = 0; b < SIZE; b++)
			assert_int_equal(((unsigned char *)objs[i])[b], 0);
		ctor(objs[i]); /* the caller restores the constructed state before the free */
	}
	sa_cache_free_bulk(c, 8, objs);
	sched_setaffinity(0, sizeof(saved_affinity), &saved_affinity);
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);

	cur_size = 64;
	c = sa_cache_create("ctor-zero-pin", 64, &a);
	assert_non_null(c);
	struct sa_sheaf *s = sa_sheaf_prefill(c, SA_PIN | SA_ZERO, 4);
	if (!s) { /* no pinned memory here (RLIMIT_MEMLOCK): nothing to test */
		sa_cache_destroy(c);
		skip();
	}
	sa_sheaf_return(c, 0, s);
	for (int i = 0; i < N; i++) {
		objs[i] = sa_cache_alloc(c, SA_PIN);
		assert_non_null(objs[i]);
		assert_true(constructed(objs[i], 64));
	}
	for (int i = 0; i < N; i++)
		sa_cache_free(c, objs[i]);
	sa_cache_destroy(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ctor_8),	     cmocka_unit_test(test_ctor_24),
		cmocka_unit_test(test_ctor_100),     cmocka_unit_test(test_ctor_1000),
		cmocka_unit_test(test_ctor_aligned), cmocka_unit_test(test_zero_frees_keep_ctor),
	};
	return cmocka_run_group_tests_name("ctor", tests, NULL, NULL);
}
