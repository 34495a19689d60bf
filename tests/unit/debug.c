/*
 * tests/unit/debug.c — the debugging checks (option debug=, cache flag SA_CACHE_DEBUG): every
 * misuse of the list is reported, naming what, the cache and the owner call sites, and aborts
 * (the default bad_free=abort), before anything is corrupted.
 *
 * Each misuse runs in a fresh process (this binary spawned again with a misuse number and
 * SHEAFALLOC_OPTIONS=debug=all, or with a SA_CACHE_DEBUG cache and no option); the parent
 * checks that the child died of SIGABRT and that its stderr says what it should. With
 * bad_free=warn added the child goes on and checks that its next allocations are all distinct
 * and that its other objects kept their contents: nothing was corrupted first.
 *
 *   0 double free of a malloc block        1 double free of a cache object (after others)
 *   2 free of a pointer into an object     3 use-after-free write, found at the next reuse
 *   4 overflow into the red zone           5 free to the wrong cache
 *   6 realloc of a freed pointer           7 free of a pointer that is not ours
 * and absurd sizes and alignments: NULL with ENOMEM or EINVAL, never a crash (no abort).
 */
#include "sa_test.h"

#include <signal.h>

#define NKEEP 32

static int misuse(int kind, int use_flag)
{
	struct sa_cache_args a = {.flags = use_flag ? SA_CACHE_DEBUG : 0};
	struct sa_cache *c = sa_cache_create("dbg-victim", 96, &a);
	struct sa_cache *other = sa_cache_create("dbg-other", 96, &a);
	if (!c || !other)
		return 2;
	/* objects that must keep their contents whatever happens */
	unsigned char *keep[NKEEP];
	for (int i = 0; i < NKEEP; i++) {
		keep[i] = sa_cache_alloc(c, 0);
		memset(keep[i], i, 96);
	}
	switch (kind) {
	case 0: {
		char *p = use_flag ? sa_cache_alloc(c, 0) : sa_malloc(50);
		use_flag ? sa_cache_free(c, p) : sa_free(p);
		use_flag ? sa_cache_free(c, p) : sa_free(p);
		break;
	}
	case 1: {
		void *x = sa_cache_alloc(c, 0), *y = sa_cache_alloc(c, 0);
		sa_cache_free(c, x);
		sa_cache_free(c, y);
		sa_cache_free(c, x);
		break;
	}
	case 2: {
		char *x = sa_cache_alloc(c, 0);
		sa_cache_free(c, x + 40);
		break;
	}
	case 3: {
		char *x = sa_cache_alloc(c, 0);
		sa_cache_free(c, x);
		x[10] = 7;		       /* use after free */
		for (int i = 0; i < 4096; i++) /* until x is handed out again */
			if (sa_cache_alloc(c, 0) == x)
				break;
		break;
	}
	case 4: {
		char *x = sa_cache_alloc(c, 0);
		x[96 + 3] = 1; /* past the end */
		sa_cache_free(c, x);
		break;
	}
	case 5: {
		void *x = sa_cache_alloc(c, 0);
		sa_cache_free(other, x);
		break;
	}
	case 6: {
		char *p = use_flag ? sa_cache_alloc(c, 0) : sa_malloc(80);
		use_flag ? sa_cache_free(c, p) : sa_free(p);
		p = sa_realloc(p, 500);
		(void)p;
		break;
	}
	case 7: {
		static char not_ours[256];
		sa_free(not_ours + 16);
		break;
	}
	}
	/* with bad_free=warn: go on; nothing may have been corrupted */
	void *seen[256];
	for (int i = 0; i < 256; i++)
		seen[i] = sa_cache_alloc(c, 0);
	for (int i = 0; i < 256; i++)
		for (int k = 0; k < i; k++)
			if (seen[i] == seen[k])
				return 9;
	for (int i = 0; i < NKEEP; i++)
		for (int b = 0; b < 96; b++)
			if (keep[i][b] != i)
				return 10;
	return 0;
}

extern char **environ;

static int spawn(int kind, int use_flag, const char *opts, char *err, size_t len)
{
	char k[16], f[16];
	snprintf(k, sizeof(k), "%d", kind);
	snprintf(f, sizeof(f), "%d", use_flag);
	char env_opt[256];
	const char *base = getenv("SHEAFALLOC_OPTIONS");
	snprintf(env_opt, sizeof(env_opt), "SHEAFALLOC_OPTIONS=%s%s%s", base ? base : "",
		 base && *base ? "," : "", opts);
	char *envp[] = {env_opt, NULL};
	char *argv[] = {"debug", "--misuse", k, f, NULL};
	return spawn_self(argv, envp, err, len);
}

static const char *const expect[] = {"double free",
				     "double free",
				     "not an object's start",
				     "use after free",
				     "red zone",
				     "not an object of this cache",
				     "double free",
				     "not a sheafalloc object"};

static void run_all(int use_flag, const char *opts)
{
	char err[4096], warn_opts[256];
	snprintf(warn_opts, sizeof(warn_opts), "%s%sbad_free=warn", opts, *opts ? "," : "");
	for (int kind = 0; kind < 8; kind++) {
		int st = spawn(kind, use_flag, opts, err, sizeof(err));
		if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT)
			fail_msg("misuse %d (flag %d): not aborted (status %#x); stderr: %s", kind,
				 use_flag, st, err);
		if (!strstr(err, expect[kind]))
			fail_msg("misuse %d (flag %d): the report '%s' does not say '%s'", kind,
				 use_flag, err, expect[kind]);
		/* owner sites for the checks that name an object of a debugged cache */
		if (kind >= 1 && kind <= 4 && !strstr(err, "last allocated at"))
			fail_msg("misuse %d (flag %d): no owner sites in '%s'", kind, use_flag,
				 err);
		st = spawn(kind, use_flag, warn_opts, err, sizeof(err));
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			fail_msg("misuse %d (flag %d) with bad_free=warn: status %#x (9: an object "
				 "handed out twice, 10: contents corrupted); stderr: %s",
				 kind, use_flag, st, err);
	}
}

static void test_debug_all_option(void **state)
{
	(void)state;
	if (running_on_valgrind() || SA_TEST_SANITIZER)
		skip();
	run_all(0, "debug=all");
}

static void test_cache_debug_flag(void **state)
{
	(void)state;
	if (running_on_valgrind() || SA_TEST_SANITIZER)
		skip();
	run_all(1, "");
}

static void test_absurd_sizes_and_alignments(void **state)
{
	(void)state;
	errno = 0;
	assert_null(sa_malloc(SIZE_MAX));
	assert_int_equal(errno, ENOMEM);
	errno = 0;
	assert_null(sa_malloc(SIZE_MAX / 2 + 1));
	assert_int_equal(errno, ENOMEM);
	errno = 0;
	assert_null(sa_calloc(SIZE_MAX / 16, 32));
	assert_int_equal(errno, ENOMEM);
	errno = 0;
	assert_null(sa_aligned_alloc(3, 64));
	assert_int_equal(errno, EINVAL);
	void *p = NULL;
	assert_int_equal(sa_posix_memalign(&p, 24, 64), EINVAL);
	assert_int_equal(sa_posix_memalign(&p, (size_t)1 << 62, 64), ENOMEM);
	errno = 0;
	assert_null(sa_memalign((size_t)1 << 63, 64));
	errno = 0;
	struct sa_cache *c = sa_cache_create("absurd", SIZE_MAX, NULL);
	assert_null(c);
	assert_int_equal(errno, EINVAL);
	struct sa_cache_args a = {.align = 3};
	assert_null(sa_cache_create("absurd-align", 64, &a));
	assert_int_equal(errno, EINVAL);
	void *q = sa_malloc(100);
	assert_non_null(q); /* and the allocator goes on */
	sa_free(q);
}

/* debug=FZPU letters parse; an unknown letter is reported and the default kept */
static void test_debug_option_letters(void **state)
{
	(void)state;
	unsigned saved = sa_opt.debug;
	struct capture cap;
	capture_begin(&cap);
	sa_options_parse("debug=ZP");
	const char *msg = capture_end(&cap);
	assert_string_equal(msg, "");
	capture_free(&cap);
	assert_int_equal(sa_opt.debug, SA_DEBUG_REDZONE | SA_DEBUG_POISON);
	capture_begin(&cap);
	sa_options_parse("debug=ZQ");
	msg = capture_end(&cap);
	assert_true(strstr(msg, "debug") != NULL);
	capture_free(&cap);
	assert_int_equal(sa_opt.debug, SA_DEBUG_REDZONE | SA_DEBUG_POISON);
	sa_options_parse("debug=all");
	assert_int_equal(sa_opt.debug, SA_DEBUG_ALL);
	sa_opt.debug = saved;
}

int main(int argc, char **argv)
{
	if (argc > 3 && strcmp(argv[1], "--misuse") == 0)
		return misuse(atoi(argv[2]), atoi(argv[3]));
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_debug_all_option),
		cmocka_unit_test(test_cache_debug_flag),
		cmocka_unit_test(test_absurd_sizes_and_alignments),
		cmocka_unit_test(test_debug_option_letters),
	};
	return cmocka_run_group_tests_name("debug", tests, NULL, NULL);
}
