/*
 * tests/unit/cache_basic.c — cache creation (argument validation), alloc/free round trips,
 * alignment, SA_ZERO, bulk, alloc_node, sa_free, sa_object_node, the small accessors.
 */
#include "sa_test.h"

#define N_OBJS 1000

static void fill(void *p, size_t n, unsigned seed)
{
	unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		b[i] = (unsigned char)(seed * 131u + i * 7u);
}

static int check_fill(const void *p, size_t n, unsigned seed)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i] != (unsigned char)(seed * 131u + i * 7u))
			return 0;
	return 1;
}

static void test_create_invalid(void **state)
{
	(void)state;
	struct capture cap;
	struct sa_cache_args a = {0};
	struct {
		size_t size, align;
		unsigned flags;
	} bad[] = {
		{0, 0, 0},
		{SA_CACHE_MAX_SIZE + 1, 0, 0},
		{SIZE_MAX, 0, 0},
		{SIZE_MAX / 2, 0, 0},
		{(size_t)1 << 40, 0, 0},
		{64, 3, 0},
		{64, 24, 0},
		{64, 100, 0},
		{64, SA_CACHE_MAX_ALIGN * 2, 0},
		{64, (size_t)1 << 40, 0},
		{64, SIZE_MAX, 0},
		{64, 0, 1u << 20}, /* unknown cache flag */
	};
	capture_begin(&cap);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		a.align = bad[i].align;
		a.flags = bad[i].flags;
		errno = 0;
		struct sa_cache *c = sa_cache_create("bad", bad[i].size, &a);
		if (c || errno != EINVAL) {
			capture_end(&cap);
			print_error("case %zu (size %zu align %zu flags %#x): c=%p errno=%d\n", i,
				    bad[i].size, bad[i].align, bad[i].flags, (void *)c, errno);
			capture_free(&cap);
		}
		assert_null(c);
		assert_int_equal(errno, EINVAL);
	}
	const char *msg = capture_end(&cap);
	assert_non_null(strstr(msg, "bad"));
	capture_free(&cap);
	/* NULL args and NULL name are fine */
	struct sa_cache *c = sa_cache_create(NULL, 32, NULL);
	assert_non_null(c);
	assert_non_null(sa_cache_name(c));
	void *p = sa_cache_alloc(c, 0);
	assert_non_null(p);
	sa_cache_free(c, p);
	sa_cache_destroy(c);
}

static void test_create_limits(void **state)
{
	(void)state;
	/* the largest size and the largest alignment are accepted and work */
	struct sa_cache_args a = {.align = SA_CACHE_MAX_ALIGN};
	struct sa_cache *c1 = sa_cache_create("max-size", SA_CACHE_MAX_SIZE, NULL);
	struct sa_cache *c2 = sa_cache_create("max-align", 1, &a);
	struct sa_cache *c3 = sa_cache_create("max-both", SA_CACHE_MAX_SIZE, &a);
	struct sa_cache *c4 = sa_cache_create("one-byte", 1, NULL);
	struct sa_cache *cs[] = {c1, c2, c3, c4};
	for (int k = 0; k < 4; k++) {
		struct sa_cache *c = cs[k];
		assert_non_null(c);
		assert_true(sa_cache_object_size(c) >= (k == 0 || k == 2 ? SA_CACHE_MAX_SIZE : 1));
		void *objs[5];
		for (int i = 0; i < 5; i++) {
			objs[i] = sa_cache_alloc(c, 0);
			assert_non_null(objs[i]);
			check_object_of(c, objs[i]);
			fill(objs[i], sa_cache_object_size(c), (unsigned)i);
		}
		check_no_duplicates(objs, 5);
		for (int i = 0; i < 5; i++) {
			assert_true(check_fill(objs[i], sa_cache_object_size(c), (unsigned)i));
			sa_cache_free(c, objs[i]);
		}
		assert_stats_consistent(c, 0);
		sa_cache_destroy(c);
	}
}

/*
 * args.sheaf_capacity: the option of the same name is limited to 0..65536 (docs/api.md); a larger
 * per-cache value must be refused (NULL, EINVAL) or clamped. Unchecked, one allocation fills a
 * sheaf of that many objects: sheaf_capacity = 100000000 makes the first sa_cache_alloc of a
 * 64-byte object carve 53 million objects (3.4 GB, stopped only by RLIMIT_AS).
 */
static void test_create_sheaf_capacity_range(void **state)
{
	(void)state;
	struct sa_cache_args a = {.sheaf_capacity = 65536};
	struct sa_cache *c = sa_cache_create("cap-max", 64, &a);
	assert_non_null(c);
	assert_int_equal(sa_cache_sheaf_capacity(c), 65536);
	sa_cache_destroy(c);
	unsigned bad[] = {65537, 1u << 20, 100000000u, 0xffffffffu};
	struct capture cap;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		a.sheaf_capacity = bad[i];
		errno = 0;
		capture_begin(&cap);
		c = sa_cache_create("cap-huge", 64, &a);
		capture_end(&cap);
		capture_free(&cap);
		if (c) {
			unsigned got = sa_cache_sheaf_capacity(c);
			if (got > 65536)
				print_error("sheaf_capacity %u accepted as is (not refused, not "
					    "clamped)\n",
					    bad[i]);
			assert_true(got <= 65536);
			sa_cache_destroy(c);
		} else {
			assert_int_equal(errno, EINVAL);
		}
	}
}

static void test_round_trip(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("round-trip", 64, NULL);
	assert_non_null(c);
	assert_string_equal(sa_cache_name(c), "round-trip");
	assert_true(sa_cache_object_size(c) >= 64);
	assert_true(sa_cache_sheaf_capacity(c) > 0);
	static void *objs[N_OBJS];
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < N_OBJS; i++) {
			objs[i] = sa_cache_alloc(c, 0);
			assert_non_null(objs[i]);
			check_object_of(c, objs[i]);
			fill(objs[i], 64, (unsigned)i);
		}
		check_no_duplicates(objs, N_OBJS);
		assert_stats_consistent(c, N_OBJS);
		for (int i = 0; i < N_OBJS; i++) {
			assert_true(check_fill(objs[i], 64, (unsigned)i));
			sa_cache_free(c, objs[i]);
		}
		assert_stats_consistent(c, 0);
		/* interleaved: alloc/free pairs reuse objects */
		for (int i = 0; i < 10000; i++) {
			void *p = sa_cache_alloc(c, 0);
			assert_non_null(p);
			fill(p, 64, 3);
			sa_cache_free(c, p);
		}
		assert_stats_consistent(c, 0);
	}
	sa_cache_destroy(c);
}

static void test_alignment(void **state)
{
	(void)state;
	static const size_t aligns[] = {8,    16,   32,	  64,	128,   256,   512,
					1024, 2048, 4096, 8192, 16384, 32768, 65536};
	static const size_t sizes[] = {1, 8, 24, 100, 1000, 4096, 5000};
	enum { K = 24 };
	for (size_t ai = 0; ai < sizeof(aligns) / sizeof(aligns[0]); ai++) {
		for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
			struct sa_cache_args a = {.align = aligns[ai]};
			char name[64];
			snprintf(name, sizeof(name), "align-%zu-size-%zu", aligns[ai], sizes[si]);
			struct sa_cache *c = sa_cache_create(name, sizes[si], &a);
			assert_non_null(c);
			size_t usable = sa_cache_object_size(c);
			assert_true(usable >= sizes[si]);
			void *objs[K];
			for (int i = 0; i < K; i++) {
				objs[i] = sa_cache_alloc(c, 0);
				assert_non_null(objs[i]);
				if ((uintptr_t)objs[i] % aligns[ai])
					print_error("%s: %p not aligned\n", name, objs[i]);
				assert_int_equal((uintptr_t)objs[i] % aligns[ai], 0);
				check_object_of(c, objs[i]);
				fill(objs[i], usable, (unsigned)i);
			}
			check_no_duplicates(objs, K);
			for (int i = 0; i < K; i++) {
				assert_true(check_fill(objs[i], usable, (unsigned)i));
				sa_cache_free(c, objs[i]);
			}
			sa_cache_destroy(c);
		}
	}
	/* align 0: natural (at least 8); HWCACHE_ALIGN: a cache line for objects above half a line */
	struct sa_cache *c0 = sa_cache_create("align-0", 24, NULL);
	struct sa_cache_args hw = {.flags = SA_CACHE_HWCACHE_ALIGN};
	struct sa_cache *c1 = sa_cache_create("hwcache", 40, &hw);
	assert_non_null(c0);
	assert_non_null(c1);
	static void *ps[300], *qs[300];
	for (int i = 0; i < 300; i++) {
		ps[i] = sa_cache_alloc(c0, 0);
		qs[i] = sa_cache_alloc(c1, 0);
		assert_int_equal((uintptr_t)ps[i] % 8, 0);
		assert_int_equal((uintptr_t)qs[i] % 64, 0);
	}
	sa_cache_free_bulk(c0, 300, ps);
	sa_cache_free_bulk(c1, 300, qs);
	assert_stats_consistent(c0, 0);
	assert_stats_consistent(c1, 0);
	sa_cache_destroy(c0);
	sa_cache_destroy(c1);
}

static void test_zero(void **state)
{
	(void)state;
	enum { SZ = 200, M = 500 };
	struct sa_cache *c = sa_cache_create("zero", SZ, NULL);
	assert_non_null(c);
	static void *objs[M];
	unsigned char zero[SZ] = {0};
	for (int round = 0; round < 4; round++) {
		for (int i = 0; i < M; i++) {
			objs[i] = sa_cache_alloc(c, 0);
			assert_non_null(objs[i]);
			memset(objs[i], 0xA5, SZ);
		}
		for (int i = 0; i < M; i++)
			sa_cache_free(c, objs[i]);
		if (round == 2)
			sa_cache_shrink(c); /* next ones come from fresh slab refills */
		for (int i = 0; i < M; i++) {
			objs[i] = sa_cache_alloc(c, SA_ZERO);
			assert_non_null(objs[i]);
			assert_memory_equal(objs[i], zero, SZ);
			memset(objs[i], 0x5A, SZ);
		}
		for (int i = 0; i < M; i++)
			sa_cache_free(c, objs[i]);
	}
	/* bulk, node and sheaf allocations honour SA_ZERO too */
	assert_int_equal(sa_cache_alloc_bulk(c, SA_ZERO, M, objs), M);
	for (int i = 0; i < M; i++) {
		assert_memory_equal(objs[i], zero, SZ);
		memset(objs[i], 0x11, SZ);
	}
	sa_cache_free_bulk(c, M, objs);
	for (int i = 0; i < M; i++) {
		objs[i] = sa_cache_alloc_node(c, SA_ZERO, 0);
		assert_non_null(objs[i]);
		assert_memory_equal(objs[i], zero, SZ);
		memset(objs[i], 0x22, SZ);
	}
	sa_cache_free_bulk(c, M, objs);
	struct sa_sheaf *s = sa_sheaf_prefill(c, 0, 20);
	assert_non_null(s);
	for (int i = 0; i < 20; i++) {
		objs[i] = sa_sheaf_alloc(c, SA_ZERO, s);
		assert_non_null(objs[i]);
		assert_memory_equal(objs[i], zero, SZ);
	}
	sa_sheaf_return(c, 0, s);
	sa_cache_free_bulk(c, 20, objs);
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
}

static void test_bulk(void **state)
{
	(void)state;
	enum { M = 3000 };
	struct sa_cache *c = sa_cache_create("bulk", 48, NULL);
	assert_non_null(c);
	static void *objs[M];
	assert_int_equal(sa_cache_alloc_bulk(c, 0, 0, objs), 0);
	sa_cache_free_bulk(c, 0, objs);
	assert_int_equal(sa_cache_alloc_bulk(c, 0, 1, objs), 1);
	check_object_of(c, objs[0]);
	sa_cache_free_bulk(c, 1, objs);
	size_t sizes[] = {7, 120, 121, 500, M};
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		size_t n = sizes[k];
		memset(objs, 0, sizeof(objs));
		assert_int_equal(sa_cache_alloc_bulk(c, 0, n, objs), n);
		for (size_t i = 0; i < n; i++) {
			check_object_of(c, objs[i]);
			fill(objs[i], 48, (unsigned)i);
		}
		check_no_duplicates(objs, n);
		assert_stats_consistent(c, n);
		for (size_t i = 0; i < n; i++)
			assert_true(check_fill(objs[i], 48, (unsigned)i));
		sa_cache_free_bulk(c, n, objs);
		assert_stats_consistent(c, 0);
	}
	/* mix: bulk alloc, single frees; single allocs, bulk free */
	assert_int_equal(sa_cache_alloc_bulk(c, 0, 1000, objs), 1000);
	for (int i = 999; i >= 0; i--)
		sa_cache_free(c, objs[i]);
	for (int i = 0; i < 1000; i++)
		objs[i] = sa_cache_alloc(c, 0);
	check_no_duplicates(objs, 1000);
	sa_cache_free_bulk(c, 1000, objs);
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
}

static void test_alloc_node(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("alloc-node", 96, NULL);
	assert_non_null(c);
	int nodes = sa_numa_nodes();
	assert_true(nodes >= 1);
	void *objs[64];
	int k = 0;
	for (int node = 0; node < nodes && k < 60; node++) {
		for (int i = 0; i < 10; i++) {
			void *p = sa_cache_alloc_node(c, 0, node);
			assert_non_null(p);
			assert_int_equal(sa_object_node(p), node);
			check_object_of(c, p);
			objs[k++] = p;
		}
	}
	void *p = sa_cache_alloc_node(c, 0, -1); /* any node */
	assert_non_null(p);
	check_object_of(c, p);
	objs[k++] = p;
	check_no_duplicates(objs, (size_t)k);

	struct capture cap;
	capture_begin(&cap);
	int badnodes[] = {nodes, nodes + 1, SA_MAX_NODES, 1000, INT32_MAX};
	for (size_t i = 0; i < sizeof(badnodes) / sizeof(badnodes[0]); i++) {
		errno = 0;
		void *q = sa_cache_alloc_node(c, 0, badnodes[i]);
		if (q || errno != EINVAL) {
			capture_end(&cap);
			print_error("node %d: %p errno %d\n", badnodes[i], q, errno);
			capture_free(&cap);
		}
		assert_null(q);
		assert_int_equal(errno, EINVAL);
	}
	const char *msg = capture_end(&cap);
	assert_non_null(strstr(msg, "alloc-node"));
	capture_free(&cap);
	/* SA_NOWARN: no message */
	capture_begin(&cap);
	errno = 0;
	assert_null(sa_cache_alloc_node(c, SA_NOWARN, nodes + 3));
	assert_int_equal(errno, EINVAL);
	msg = capture_end(&cap);
	assert_string_equal(msg, "");
	capture_free(&cap);

	for (int i = 0; i < k; i++)
		sa_cache_free(c, objs[i]);
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
}

static void test_sa_free_finds_cache(void **state)
{
	(void)state;
	enum { M = 700 };
	struct sa_cache *a = sa_cache_create("free-a", 32, NULL);
	struct sa_cache *b = sa_cache_create("free-b", 512, NULL);
	struct sa_cache_args ca = {.align = 128};
	struct sa_cache *d = sa_cache_create("free-d", 72, &ca);
	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(d);
	static void *objs[3 * M];
	for (int i = 0; i < M; i++) {
		objs[3 * i] = sa_cache_alloc(a, 0);
		objs[3 * i + 1] = sa_cache_alloc(b, 0);
		objs[3 * i + 2] = sa_cache_alloc(d, 0);
	}
	check_no_duplicates(objs, 3 * M);
	assert_stats_consistent(a, M);
	assert_stats_consistent(b, M);
	assert_stats_consistent(d, M);
	struct capture cap;
	capture_begin(&cap);
	for (int i = 3 * M - 1; i >= 0; i--)
		sa_free(objs[i]);
	const char *msg = capture_end(&cap);
	assert_string_equal(msg, ""); /* all valid: no message */
	capture_free(&cap);
	assert_stats_consistent(a, 0);
	assert_stats_consistent(b, 0);
	assert_stats_consistent(d, 0);
	sa_cache_destroy(a);
	sa_cache_destroy(b);
	sa_cache_destroy(d);
}

static void test_object_node(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("object-node", 128, NULL);
	assert_non_null(c);
	void *p = sa_cache_alloc(c, 0);
	assert_non_null(p);
	int n = sa_object_node(p);
	assert_true(n >= 0 && n < sa_numa_nodes());
	assert_int_equal(sa_object_node((char *)p + 7), n); /* any byte of the object */
	int local;
	void *m = malloc(64);
	assert_int_equal(sa_object_node(NULL), -1);
	assert_int_equal(sa_object_node(&local), -1);
	assert_int_equal(sa_object_node(m), -1);
	assert_int_equal(sa_object_node((void *)test_object_node), -1);
	assert_int_equal(sa_object_node((void *)~(uintptr_t)0), -1);
	assert_int_equal(sa_object_node((void *)((uintptr_t)1 << 60)), -1);
	free(m);
	/* the segment header unit holds no objects */
	void *hdr = (void *)((uintptr_t)p & ~(SA_SEG_SIZE - 1));
	assert_int_equal(sa_object_node(hdr), -1);
	/* once the slab is given back, the address is no longer an object */
	sa_cache_free(c, p);
	assert_int_equal(sa_cache_shrink(c), 0);
	assert_int_equal(get_stats(c).slabs, 0);
	assert_int_equal(sa_object_node(p), -1);
	sa_cache_destroy(c);
	assert_int_equal(sa_cache_shrink(NULL), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create_invalid),
		cmocka_unit_test(test_create_limits),
		cmocka_unit_test(test_create_sheaf_capacity_range),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_alignment),
		cmocka_unit_test(test_zero),
		cmocka_unit_test(test_bulk),
		cmocka_unit_test(test_alloc_node),
		cmocka_unit_test(test_sa_free_finds_cache),
		cmocka_unit_test(test_object_node),
	};
	return cmocka_run_group_tests_name("cache_basic", tests, NULL, NULL);
}
