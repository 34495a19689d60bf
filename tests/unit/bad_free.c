/*
 * tests/unit/bad_free.c — frees of pointers that are not ours or belong to another cache are
 * reported on stderr and ignored with bad_free=warn (no crash, no corruption; the default,
 * abort, is tested in tests/unit/robust.c); destroy with live objects reports the count and
 * the cache's name and does not crash.
 */
#include "sa_test.h"

#include <signal.h>

enum { LIVE = 200, MORE = 3000 };

static void test_bad_frees_ignored(void **state)
{
	(void)state;
	struct sa_cache *c1 = sa_cache_create("victim-one", 64, NULL);
	struct sa_cache *c2 = sa_cache_create("victim-two", 64, NULL);
	struct sa_cache *c3 = sa_cache_create("victim-three", 256, NULL);
	assert_non_null(c1);
	assert_non_null(c2);
	assert_non_null(c3);
	static void *live[3 * LIVE + 2 * MORE];
	size_t n = 0;
	for (int i = 0; i < LIVE; i++) {
		live[n++] = sa_cache_alloc(c1, 0);
		live[n++] = sa_cache_alloc(c2, 0);
		live[n++] = sa_cache_alloc(c3, 0);
	}
	for (size_t i = 0; i < n; i++)
		assert_non_null(live[i]);
	void *o1 = live[0], *o2 = live[1], *o3 = live[2];
	int on_stack[16];
	void *heap = malloc(64);
	assert_non_null(heap);
	void *seg_hdr = (void *)((uintptr_t)o1 & ~(SA_SEG_SIZE - 1));

	struct capture cap;
	capture_begin(&cap);
	sa_cache_free(c1, on_stack);	    /* 1 not ours */
	sa_cache_free(c1, heap);	    /* 2 not ours */
	sa_cache_free(c1, o2);		    /* 3 object of another cache, same size */
	sa_cache_free(c1, o3);		    /* 4 object of another cache, other size */
	sa_cache_free(c2, o1);		    /* 5 */
	sa_free(on_stack);		    /* 6 */
	sa_free(heap);			    /* 7 */
	sa_free(seg_hdr);		    /* 8 our segment, but its header unit */
	sa_cache_free(c1, seg_hdr);	    /* 9 */
	sa_free((void *)(uintptr_t)0x1000); /* 10 */
	sa_cache_free_bulk(c1, 3, (void *[]){on_stack, o2, heap}); /* 11, 12, 13 */
	sa_cache_free(NULL, on_stack); /* 14 no cache, not ours (crashed before: clang-tidy) */
	sa_cache_free(NULL, o1);       /* 15 no cache, ours */
	const char *msg = capture_end(&cap);
	int lines = count_substr(msg, "\n");
	if (lines != 15)
		print_error("messages:\n%s", msg);
	assert_int_equal(lines, 15);
	assert_true(count_substr(msg, "victim-one") >= 5);
	assert_true(count_substr(msg, "victim-two") >= 1);
	capture_free(&cap);

	/* NULL frees are silent no-ops */
	capture_begin(&cap);
	sa_free(NULL);
	sa_cache_free(c1, NULL);
	sa_cache_free(NULL, NULL);
	msg = capture_end(&cap);
	assert_string_equal(msg, "");
	capture_free(&cap);
	free(heap);

	/* nothing was freed: the counters did not move */
	assert_stats_consistent(c1, LIVE);
	assert_stats_consistent(c2, LIVE);
	assert_stats_consistent(c3, LIVE);

	/* no corruption: many more allocations never hand out a live object */
	for (int i = 0; i < MORE; i++) {
		live[n] = sa_cache_alloc(c1, 0);
		assert_non_null(live[n]);
		check_object_of(c1, live[n]);
		n++;
		live[n] = sa_cache_alloc(c2, 0);
		assert_non_null(live[n]);
		check_object_of(c2, live[n]);
		n++;
	}
	check_no_duplicates(live, n);
	for (size_t i = 0; i < n; i++)
		sa_free(live[i]);
	assert_stats_consistent(c1, 0);
	assert_stats_consistent(c2, 0);
	assert_stats_consistent(c3, 0);
	sa_cache_destroy(c1);
	sa_cache_destroy(c2);
	sa_cache_destroy(c3);
}

static void test_free_after_slab_released(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("released", 128, NULL);
	assert_non_null(c);
	void *p = sa_cache_alloc(c, 0);
	assert_non_null(p);
	sa_cache_free(c, p);
	assert_int_equal(sa_cache_shrink(c), 0);
	assert_int_equal(get_stats(c).slabs, 0);
	/* p's unit went back to the page layer: a (double) free of it is not an object any more */
	struct capture cap;
	capture_begin(&cap);
	sa_free(p);
	sa_cache_free(c, p);
	const char *msg = capture_end(&cap);
	assert_int_equal(count_substr(msg, "\n"), 2);
	capture_free(&cap);
	assert_stats_consistent(c, 0);
	void *objs[100];
	assert_int_equal(sa_cache_alloc_bulk(c, 0, 100, objs), 100);
	check_no_duplicates(objs, 100);
	sa_cache_free_bulk(c, 100, objs);
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
}

/*
 * free(q) where q is the start of an object that its slab never handed out (free(p + 16 KiB)
 * of a 16-byte block, in general: an object at or past its unit's fresh mark), for malloc
 * classes with one-unit and many-unit slabs: reported and ignored at once, and never handed
 * out twice afterwards. Then every object handed out (across the units of those slabs) frees
 * without a report: the marks never flag a legitimate free.
 */
static void test_free_never_handed_out(void **state)
{
	(void)state;
	static const size_t sizes[] = {16, 48, 1024, 3072, 12288, 32768};
	int flagged = 0;
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		char *p = sa_malloc(sizes[k]);
		assert_non_null(p);
		struct sa_slab *h = sa_slab_of(p)->head;
		struct sa_cache *c = h->cache;
		char *base = sa_slab_base(h);
		char *q = NULL;
		for (uint32_t i = (uint32_t)((p - base) / c->stride) + 1; i < h->nobjs && !q; i++) {
			char *o = base + (size_t)i * c->stride;
			size_t off = (size_t)(o - base);
			struct sa_slab *u = &h[off >> SA_UNIT_SHIFT];
			if (((off & (SA_UNIT_SIZE - 1)) >> 4) >= u->fresh)
				q = o;
		}
		if (!q) { /* this class's slab was handed out whole already: nothing to test */
			sa_free(p);
			continue;
		}
		flagged++;
		struct capture cap;
		capture_begin(&cap);
		sa_free(q);
		const char *msg = capture_end(&cap);
		if (count_substr(msg, "never handed out") != 1)
			fail_msg("size %zu: free of never-handed-out %p: '%s'", sizes[k], (void *)q,
				 msg);
		capture_free(&cap);
		/* enough allocations to pass q's index from the slab, with q on no sheaf */
		size_t n = 2 * (size_t)h->nobjs + 600;
		void **objs = malloc(n * sizeof(*objs));
		assert_non_null(objs);
		for (size_t i = 0; i < n; i++) {
			objs[i] = sa_malloc(sizes[k]);
			assert_non_null(objs[i]);
		}
		check_no_duplicates(objs, n);
		capture_begin(&cap);
		for (size_t i = 0; i < n; i++)
			sa_free(objs[i]);
		sa_free(p);
		msg = capture_end(&cap);
		if (*msg)
			fail_msg("size %zu: legitimate frees reported: '%s'", sizes[k], msg);
		capture_free(&cap);
		free(objs);
	}
	assert_true(flagged >= 3); /* the classes first used here start new slabs */
}

/* A pointer into a large (units) or huge (own mapping) block, not at its start: sa_free and
 * sa_realloc report it and leave the block alone (the block stays usable, its bytes intact). */
static void test_interior_pointer_of_large_and_huge(void **state)
{
	(void)state;
	static const size_t sizes[] = {100000, 1u << 20, 5u << 20};
	for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		size_t n = sizes[i];
		unsigned char *p = sa_malloc(n);
		assert_non_null(p);
		memset(p, 0x5c, n);
		struct capture cap;
		capture_begin(&cap);
		sa_free(p + 4096);
		errno = 0;
		void *r = sa_realloc(p + 64, n * 2);
		int err = errno;
		const char *msg = capture_end(&cap);
		assert_null(r);
		assert_int_equal(err, EINVAL);
		assert_int_equal(count_substr(msg, "into a block"), 2);
		capture_free(&cap);
		/* still ours and whole: another block of the size does not overlap it */
		unsigned char *q = sa_malloc(n);
		assert_non_null(q);
		assert_true(q + n <= p || q >= p + n);
		memset(q, 0x11, n);
		for (size_t k = 0; k < n; k += 4093)
			assert_int_equal(p[k], 0x5c);
		assert_true(sa_malloc_usable_size(p) >= n);
		sa_free(q);
		sa_free(p);
	}
}

/* bad_free=abort: the report is printed, then the process aborts (in a child). */
static void test_bad_free_abort_option(void **state)
{
	(void)state;
	static const int kinds = 3;
	for (int kind = 0; kind < kinds; kind++) {
		fflush(NULL);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			int devnull = open("/dev/null", O_WRONLY);
			dup2(devnull, 2);
			sa_opt.bad_free_abort = 1;
			static char not_ours[64];
			void *p = sa_malloc(kind == 1 ? 200000 : 64);
			if (kind == 0) {
				sa_free(not_ours);
			} else if (kind == 1) {
				sa_free(p);
				sa_free(p); /* double free of a large block */
			} else {
				sa_free((char *)p +
					8); /* interior pointer: found at once or at flush */
				sa_trim();
			}
			_exit(0);
		}
		int st = 0;
		assert_int_equal(waitpid(pid, &st, 0), pid);
		assert_true(WIFSIGNALED(st));
		assert_int_equal(WTERMSIG(st), SIGABRT);
	}
	/* and warn (set in main for this file) goes on */
	assert_int_equal(sa_opt.bad_free_abort, 0);
}

/* The fast path takes a double free or an interior pointer into a sheaf; the slab's bitmap
 * catches both when the sheaf is flushed: reported, ignored, never handed out twice. */
static void test_double_free_found_at_flush(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("double-free-victim", 48, NULL);
	assert_non_null(c);
	enum { N = 64 };
	void *objs[N];
	assert_int_equal(sa_cache_alloc_bulk(c, 0, N, objs), N);
	char *a = objs[5];
	struct capture cap;
	capture_begin(&cap);
	sa_cache_free(c, a);
	sa_cache_free(c, a);	   /* double free: found at once (the last object freed) */
	sa_cache_free(c, a + 8);   /* inside a free object: found when flushed */
	sa_cache_free(c, objs[6]); /* a good one */
	sa_cache_shrink(c);	   /* flushes every sheaf into the slabs */
	const char *msg = capture_end(&cap);
	assert_non_null(msg);
	if (count_substr(msg, "double free") != 1 || count_substr(msg, "not the start") != 1)
		print_error("messages:\n%s", msg ? msg : "");
	assert_int_equal(count_substr(msg, "double free"), 1);
	assert_int_equal(count_substr(msg, "not the start of an object"), 1);
	assert_non_null(strstr(msg, "double-free-victim"));
	capture_free(&cap);
	/* everything the cache hands out from now on is distinct, at an object start, and neither
	 * the live objects nor a twice-freed object comes out twice */
	static void *more[N + 4000];
	size_t m = 0;
	for (int i = 0; i < N; i++)
		if (i != 5 && i != 6)
			more[m++] = objs[i];
	for (int i = 0; i < 4000; i++) {
		more[m] = sa_cache_alloc(c, 0);
		assert_non_null(more[m]);
		check_object_of(c, more[m]); /* at an object start */
		m++;
	}
	check_no_duplicates(more, m);
	for (size_t i = 0; i < m; i++)
		sa_cache_free(c, more[i]);
	capture_begin(&cap);
	sa_cache_destroy(c);
	msg = capture_end(&cap);
	assert_string_equal(msg, ""); /* nothing leaked, nothing reported */
	capture_free(&cap);
}

/*
 * White box: a freed malloc block carries the free key in its second word (docs/robustness.md
 * §2), and every way a malloc class hands a block out must clear it: the fast path, a scope's
 * path (sa_cache_alloc_special), the slow path (a refill after sa_trim emptied the sheaves),
 * calloc. A block handed out with the key still there would be taken for a double free by its
 * next free (which then searches every free object: slow, though not wrong).
 */
static void test_free_key_cleared_on_every_path(void **state)
{
	(void)state;
	enum { N = 600 }; /* more than a sheaf of the 48-byte class: the slow path runs too */
	static void *p[N];
	for (int round = 0; round < 4; round++) {
		for (int i = 0; i < N; i++) { /* keyed by these frees */
			p[i] = sa_malloc(48);
			assert_non_null(p[i]);
		}
		for (int i = 0; i < N; i++)
			sa_free(p[i]);
		if (round == 2)
			sa_trim(); /* the sheaves go back to the slabs: the next allocations refill */
		for (int i = 0; i < N; i++) {
			switch (round) {
			case 1: {
				unsigned cookie = sa_memalloc_flags_save(SA_NOFS);
				p[i] = sa_malloc(48);
				sa_memalloc_flags_restore(cookie);
				break;
			}
			case 3:
				p[i] = sa_calloc(1, 48);
				break;
			default:
				p[i] = sa_malloc(48);
			}
			assert_non_null(p[i]);
			/* the program never wrote these blocks: the word is 0 (fresh memory) or
			 * cleared, never the key left by the free above */
			assert_int_equal(((const uint64_t *)p[i])[1], 0);
		}
		check_no_duplicates(p, N);
		for (int i = 0; i < N; i++)
			sa_free(p[i]);
	}
}

static void test_destroy_with_live_objects(void **state)
{
	(void)state;
	struct sa_cache *c = sa_cache_create("leaky-cache", 40, NULL);
	assert_non_null(c);
	void *objs[10];
	for (int i = 0; i < 10; i++)
		objs[i] = sa_cache_alloc(c, 0);
	for (int i = 3; i < 10; i++)
		sa_cache_free(c, objs[i]); /* 3 stay live, 7 sit in sheaves */
	struct capture cap;
	capture_begin(&cap);
	sa_cache_destroy(c);
	const char *msg = capture_end(&cap);
	if (!strstr(msg, "leaky-cache") || !strstr(msg, "3"))
		print_error("destroy said: '%s'\n", msg);
	assert_non_null(strstr(msg, "leaky-cache"));
	assert_non_null(strstr(msg, " 3 "));
	capture_free(&cap);
	/* the leaked objects' memory stays usable */
	for (int i = 0; i < 3; i++)
		memset(objs[i], 0x77, 40);

	/* another cache still works after that */
	struct sa_cache *d = sa_cache_create("after-leak", 40, NULL);
	assert_non_null(d);
	void *more[500];
	assert_int_equal(sa_cache_alloc_bulk(d, 0, 500, more), 500);
	for (int i = 0; i < 500; i++)
		for (int k = 0; k < 3; k++)
			assert_ptr_not_equal(more[i], objs[k]);
	sa_cache_free_bulk(d, 500, more);

	/* destroying a cache whose objects were all freed prints nothing */
	capture_begin(&cap);
	sa_cache_destroy(d);
	sa_cache_destroy(NULL);
	msg = capture_end(&cap);
	assert_string_equal(msg, "");
	capture_free(&cap);
}

static void test_destroy_many_caches(void **state)
{
	(void)state;
	/* create/use/destroy cycles: no growth in the list, nothing reported */
	struct capture cap;
	capture_begin(&cap);
	for (int i = 0; i < 200; i++) {
		char name[32];
		snprintf(name, sizeof(name), "cycle-%d", i);
		struct sa_cache *c = sa_cache_create(name, 16 + (size_t)(i % 50) * 24, NULL);
		assert_non_null(c);
		void *objs[300];
		assert_int_equal(sa_cache_alloc_bulk(c, 0, 300, objs), 300);
		sa_cache_free_bulk(c, 300, objs);
		struct sa_sheaf *s = sa_sheaf_prefill(c, 0, 5);
		assert_non_null(s);
		sa_sheaf_return(c, 0, s);
		sa_cache_destroy(c);
	}
	const char *msg = capture_end(&cap);
	assert_string_equal(msg, "");
	capture_free(&cap);
}

int main(void)
{
	/* these tests check that a bad free is reported and ignored: bad_free=warn (the default
	 * is abort; tests/unit/robust.c checks that) */
	sa_init();
	sa_opt.bad_free_abort = 0;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bad_frees_ignored),
		cmocka_unit_test(test_free_after_slab_released),
		cmocka_unit_test(test_double_free_found_at_flush),
		cmocka_unit_test(test_free_key_cleared_on_every_path),
		cmocka_unit_test(test_free_never_handed_out),
		cmocka_unit_test(test_interior_pointer_of_large_and_huge),
		cmocka_unit_test(test_bad_free_abort_option),
		cmocka_unit_test(test_destroy_with_live_objects),
		cmocka_unit_test(test_destroy_many_caches),
	};
	return cmocka_run_group_tests_name("bad_free", tests, NULL, NULL);
}
