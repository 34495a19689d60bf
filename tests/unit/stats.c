/*
 * tests/unit/stats.c — counters add up, shrink gives slabs back, printing.
 *
 * Invariants checked at quiescent points (assert_stats_consistent in tests/sa_test.h):
 *   alloc_fast + alloc_slow + sheaf_alloc_objects - free_fast - free_slow == objects held
 *   objects_in_use + objects_cached == sa_slab_inuse_racy (objects out of the slabs)
 *   refill_objects + alloc_slow - flush_objects - free_slow == sa_slab_inuse_racy
 *   slabs_allocated - slabs_freed == slabs
 */
#include "sa_test.h"

static unsigned long long rng_state = 88172645463325252ull;
static unsigned rnd(unsigned n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (unsigned)(rng_state % n);
}

static void test_shrink_returns_slabs(void **state)
{
	(void)state;
	enum { M = 5000 };
	struct sa_cache *c = sa_cache_create("shrink", 128, NULL);
	assert_non_null(c);
	struct sa_cache_stats s = get_stats(c);
	assert_int_equal(s.slabs, 0);
	assert_int_equal(s.bytes_held, 0);
	static void *objs[M];
	for (int i = 0; i < M; i++)
		objs[i] = sa_cache_alloc(c, 0);
	s = get_stats(c);
	assert_true(s.slabs > 0);
	assert_true(s.bytes_held >= s.slabs * SA_UNIT_SIZE);
	assert_true(s.bytes_held >= (uint64_t)M * 128);
	for (int i = 0; i < M; i++)
		sa_cache_free(c, objs[i]);
	assert_stats_consistent(c, 0);
	assert_int_equal(sa_cache_shrink(c), 0);
	s = get_stats(c);
	assert_int_equal(s.slabs, 0);
	assert_int_equal(s.objects_cached, 0);
	assert_int_equal(s.objects_in_use, 0);
	assert_int_equal(s.bytes_held, 0);
	assert_int_equal(s.slabs_allocated, s.slabs_freed);
	assert_int_equal(sa_slab_inuse_racy(c), 0);
	assert_stats_consistent(c, 0);

	/* shrink with one live object keeps exactly its slab */
	for (int i = 0; i < M; i++)
		objs[i] = sa_cache_alloc(c, 0);
	for (int i = 1; i < M; i++)
		sa_cache_free(c, objs[i]);
	assert_int_equal(sa_cache_shrink(c), 0);
	s = get_stats(c);
	assert_int_equal(s.slabs, 1);
	assert_int_equal(s.objects_cached, 0);
	assert_int_equal(s.objects_in_use, 1);
	assert_int_equal(sa_slab_inuse_racy(c), 1);
	assert_stats_consistent(c, 1);
	sa_cache_free(c, objs[0]);
	assert_int_equal(sa_cache_shrink(c), 0);
	assert_int_equal(get_stats(c).slabs, 0);
	/* the cache still works after shrinking to nothing, and shrink twice is harmless */
	assert_int_equal(sa_cache_shrink(c), 0);
	objs[0] = sa_cache_alloc(c, 0);
	assert_non_null(objs[0]);
	sa_cache_free(c, objs[0]);
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
}

/* Random single-threaded operations; checks the invariants after every step. */
static void random_ops(struct sa_cache *c, int steps, int pin)
{
	enum { MAXH = 4000 };
	static void *held[MAXH];
	size_t nh = 0;
	cpu_set_t all;
	int ncpu = allowed_cpus(&all);
	for (int step = 0; step < steps; step++) {
		if (!pin && ncpu > 1 && rnd(8) == 0) {
			/* move to another allowed CPU: sheaves stay behind in the old slot */
			int k = (int)rnd((unsigned)ncpu), cpu = -1;
			for (int i = 0; i < CPU_SETSIZE && k >= 0; i++)
				if (CPU_ISSET(i, &all) && k-- == 0)
					cpu = i;
			pin_to_cpu(cpu);
		}
		unsigned op = rnd(10);
		if (op < 3 && nh < MAXH) {
			held[nh] = sa_cache_alloc(c, rnd(4) == 0 ? SA_ZERO : 0);
			assert_non_null(held[nh]);
			nh++;
		} else if (op < 5 && nh > 0) {
			size_t i = rnd((unsigned)nh);
			if (rnd(2))
				sa_cache_free(c, held[i]);
			else
				sa_free(held[i]);
			held[i] = held[--nh];
		} else if (op == 5) {
			size_t k = 1 + rnd(300);
			if (nh + k <= MAXH) {
				assert_int_equal(sa_cache_alloc_bulk(c, 0, k, held + nh), k);
				nh += k;
			}
		} else if (op == 6 && nh > 0) {
			size_t k = 1 + rnd((unsigned)(nh < 300 ? nh : 300));
			sa_cache_free_bulk(c, k, held + nh - k);
			nh -= k;
		} else if (op == 7) {
			unsigned cap = sa_cache_sheaf_capacity(c);
			unsigned want = 1 + rnd(2 * cap + 2);
			struct sa_sheaf *s = sa_sheaf_prefill(c, 0, want);
			assert_non_null(s);
			assert_true(sa_sheaf_size(s) >= want);
			unsigned take = rnd(want + 1);
			if (nh + take > MAXH)
				take = 0;
			for (unsigned i = 0; i < take; i++) {
				held[nh] = sa_sheaf_alloc(c, 0, s);
				assert_non_null(held[nh]);
				nh++;
			}
			if (rnd(3) == 0) {
				assert_int_equal(sa_sheaf_refill(c, 0, &s, 1 + rnd(3 * cap)), 0);
				unsigned t2 = rnd(sa_sheaf_size(s) + 1);
				for (unsigned i = 0; i < t2 && nh < MAXH; i++) {
					held[nh] = sa_sheaf_alloc(c, 0, s);
					assert_non_null(held[nh]);
					nh++;
				}
			}
			sa_sheaf_return(c, 0, s);
		} else if (op == 8 && rnd(10) == 0) {
			assert_int_equal(sa_cache_shrink(c), 0);
		} else if (op == 9) {
			int node = (int)rnd((unsigned)sa_numa_nodes() + 1) - 1;
			if (nh < MAXH) {
				held[nh] = sa_cache_alloc_node(c, 0, node);
				assert_non_null(held[nh]);
				nh++;
			}
		}
		assert_stats_consistent(c, nh);
	}
	check_no_duplicates(held, nh);
	sa_cache_free_bulk(c, nh, held);
	assert_stats_consistent(c, 0);
	assert_int_equal(sa_cache_shrink(c), 0);
	struct sa_cache_stats s = get_stats(c);
	assert_int_equal(s.slabs, 0);
	assert_int_equal(s.objects_cached, 0);
}

static void test_stats_add_up_pinned(void **state)
{
	(void)state;
	cpu_set_t old;
	allowed_cpus(&old);
	assert_int_equal(pin_to_cpu(first_allowed_cpu()), 0);
	struct sa_cache *c = sa_cache_create("stats-pinned", 72, NULL);
	assert_non_null(c);
	random_ops(c, 3000, 1);
	sa_cache_destroy(c);
	struct sa_cache_args a = {.sheaf_capacity = 4};
	c = sa_cache_create("stats-cap4", 200, &a); /* tiny sheaves: barn traffic all the time */
	assert_non_null(c);
	assert_int_equal(sa_cache_sheaf_capacity(c), 4);
	random_ops(c, 3000, 1);
	sa_cache_destroy(c);
	set_affinity(&old);
}

static void test_stats_add_up_migrating(void **state)
{
	(void)state;
	cpu_set_t old;
	allowed_cpus(&old);
	struct sa_cache *c = sa_cache_create("stats-migrating", 24, NULL);
	assert_non_null(c);
	random_ops(c, 3000, 0);
	sa_cache_destroy(c);
	struct sa_cache_args a = {.sheaf_capacity = 3, .align = 64};
	c = sa_cache_create("stats-migrating-cap3", 4000, &a);
	assert_non_null(c);
	random_ops(c, 2000, 0);
	sa_cache_destroy(c);
	set_affinity(&old);
}

/* Threads do alloc/free on their own; after they are joined the counters must add up. */
struct thr_arg {
	struct sa_cache *c;
	int id;
	size_t keep; /* objects left allocated at the end */
	void **kept;
};

static void *thr(void *p)
{
	struct thr_arg *a = p;
	enum { H = 256 };
	void *h[H];
	size_t n = 0;
	unsigned long long x = 0x9E3779B97F4A7C15ull * (unsigned long long)(a->id + 1);
	for (int i = 0; i < 40000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		if ((x & 1) && n < H) {
			h[n] = sa_cache_alloc(a->c, 0);
			if (h[n])
				n++;
		} else if (n) {
			sa_cache_free(a->c, h[--n]);
		}
		if ((i & 1023) == 0)
			sched_yield();
	}
	a->keep = n;
	a->kept = malloc(sizeof(void *) * (n ? n : 1));
	memcpy(a->kept, h, sizeof(void *) * n);
	return NULL;
}

static void test_stats_after_threads(void **state)
{
	(void)state;
	enum { T = 6 };
	struct sa_cache *c = sa_cache_create("stats-threads", 56, NULL);
	assert_non_null(c);
	pthread_t t[T];
	struct thr_arg a[T];
	for (int i = 0; i < T; i++) {
		a[i] = (struct thr_arg){.c = c, .id = i};
		assert_int_equal(pthread_create(&t[i], NULL, thr, &a[i]), 0);
	}
	size_t total = 0;
	for (int i = 0; i < T; i++) {
		pthread_join(t[i], NULL);
		total += a[i].keep;
	}
	assert_stats_consistent(c, total);
	for (int i = 0; i < T; i++) {
		sa_cache_free_bulk(c, a[i].keep, a[i].kept);
		free(a[i].kept);
	}
	assert_stats_consistent(c, 0);
	assert_int_equal(sa_cache_shrink(c), 0);
	assert_int_equal(get_stats(c).slabs, 0);
	sa_cache_destroy(c);
}

static void test_stats_args_and_print(void **state)
{
	(void)state;
	struct sa_cache_stats s;
	errno = 0;
	assert_int_equal(sa_cache_stats(NULL, &s), -1);
	assert_int_equal(errno, EINVAL);
	struct sa_cache *c = sa_cache_create("printed-cache", 88, NULL);
	assert_non_null(c);
	errno = 0;
	assert_int_equal(sa_cache_stats(c, NULL), -1);
	assert_int_equal(errno, EINVAL);
	void *p = sa_cache_alloc(c, 0);
	s = get_stats(c);
	assert_true(s.object_size >= 88);
	assert_int_equal(s.sheaf_capacity, sa_cache_sheaf_capacity(c));
	assert_int_equal(s.objects_in_use, 1);

	FILE *f = tmpfile();
	assert_non_null(f);
	sa_stats_print(fileno(f));
	sa_stats_print_json(fileno(f));
	fflush(f);
	long len = lseek(fileno(f), 0, SEEK_END);
	assert_true(len > 0);
	char *buf = calloc(1, (size_t)len + 1);
	lseek(fileno(f), 0, SEEK_SET);
	assert_int_equal(read(fileno(f), buf, (size_t)len), len);
	fclose(f);
	assert_true(count_substr(buf, "printed-cache") >= 2);
	assert_non_null(strstr(buf, "objects_in_use"));
	assert_non_null(strstr(buf, "\"name\": \"printed-cache\""));
	free(buf);
	sa_cache_free(c, p);
	sa_cache_destroy(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shrink_returns_slabs),
		cmocka_unit_test(test_stats_add_up_pinned),
		cmocka_unit_test(test_stats_add_up_migrating),
		cmocka_unit_test(test_stats_after_threads),
		cmocka_unit_test(test_stats_args_and_print),
	};
	return cmocka_run_group_tests_name("stats", tests, NULL, NULL);
}
