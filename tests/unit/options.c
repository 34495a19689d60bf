/*
 * tests/unit/options.c — SHEAFALLOC_OPTIONS parsing (white box: sa_options_parse, sa_opt) and
 * the per-CPU mode it selects (sa_percpu_mode, in this process and in re-executed children).
 *
 * Every test saves sa_opt and restores it afterwards: the parser writes the live options.
 */
#include "sa_test.h"

#include "sheaf/pcs_inline.h" /* sa_pcs_mode, white box */

static struct sa_options saved;

static int setup(void **state)
{
	(void)state;
	sa_numa_nodes(); /* initialize first: init parses the environment once */
	saved = sa_opt;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	sa_opt = saved;
	return 0;
}

static int opts_equal(const struct sa_options *a, const struct sa_options *b)
{
	return a->sheaf_capacity == b->sheaf_capacity && a->barn_max_full == b->barn_max_full &&
	       a->barn_max_empty == b->barn_max_empty && a->percpu_fallback == b->percpu_fallback &&
	       a->limit == b->limit && a->stats_print == b->stats_print && a->debug == b->debug &&
	       a->scope_check_abort == b->scope_check_abort && a->purge_ms == b->purge_ms &&
	       a->verbose == b->verbose;
}

/* Parse s with stderr captured; returns the messages (caller frees with capture_free). */
static const char *parse_captured(struct capture *cap, const char *s)
{
	capture_begin(cap);
	sa_options_parse(s);
	return capture_end(cap);
}

static void test_unknown_key(void **state)
{
	(void)state;
	struct capture cap;
	struct sa_options before = sa_opt;
	const char *msg = parse_captured(&cap, "nosuchkey=1");
	assert_non_null(strstr(msg, "nosuchkey"));
	assert_non_null(strstr(msg, "unknown"));
	assert_int_equal(count_substr(msg, "\n"), 1); /* reported once */
	assert_true(opts_equal(&before, &sa_opt));
	capture_free(&cap);

	msg = parse_captured(&cap, "flag_without_value");
	assert_non_null(strstr(msg, "flag_without_value"));
	assert_int_equal(count_substr(msg, "\n"), 1);
	assert_true(opts_equal(&before, &sa_opt));
	capture_free(&cap);
}

static void test_bad_values_keep_defaults(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"sheaf_capacity=abc",
		"sheaf_capacity=-1",
		"sheaf_capacity=70000", /* above the range */
		"sheaf_capacity=12abc",
		"sheaf_capacity=",			 /* empty value */
		"sheaf_capacity",			 /* no value */
		"barn_max_full=99999999999999999999999", /* overflow */
		"barn_max_empty=x",
		"percpu=maybe",
		"percpu=",
		"limit=12Q",
		"limit=17179869184T", /* overflows 64 bits after the suffix */
		"limit=-5",
		"stats_print=yes",
		"debug=some",
		"scope_check=panic",
		"purge_ms=4000000",
		"verbose=2",
		"verbose=yes",
	};
	struct sa_options before = sa_opt;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct capture cap;
		const char *msg = parse_captured(&cap, bad[i]);
		size_t klen = strcspn(bad[i], "=");
		char key[64];
		snprintf(key, sizeof(key), "%.*s", (int)klen, bad[i]);
		if (!strstr(msg, key) || count_substr(msg, "\n") != 1)
			print_error("'%s' gave message: '%s'\n", bad[i], msg);
		assert_non_null(strstr(msg, key));
		assert_int_equal(count_substr(msg, "\n"), 1);
		if (!opts_equal(&before, &sa_opt))
			print_error("'%s' changed the options\n", bad[i]);
		assert_true(opts_equal(&before, &sa_opt));
		capture_free(&cap);
	}
}

static void test_good_values(void **state)
{
	(void)state;
	struct capture cap;
	const char *msg = parse_captured(
		&cap, "sheaf_capacity=32,barn_max_full=3,barn_max_empty=5,limit=2M,percpu=fallback,"
		      "stats_print=json,debug=all,scope_check=abort,purge_ms=250,verbose=0");
	assert_string_equal(msg, "");
	capture_free(&cap);
	assert_int_equal(sa_opt.sheaf_capacity, 32);
	assert_int_equal(sa_opt.barn_max_full, 3);
	assert_int_equal(sa_opt.barn_max_empty, 5);
	assert_int_equal(sa_opt.limit, 2u << 20);
	assert_int_equal(sa_opt.percpu_fallback, 1);
	assert_int_equal(sa_opt.stats_print, 2);
	assert_true(sa_opt.debug != 0);
	assert_int_equal(sa_opt.scope_check_abort, 1);
	assert_int_equal(sa_opt.purge_ms, 250);
	assert_int_equal(sa_opt.verbose, 0);

	msg = parse_captured(&cap, "limit=3k,percpu=rseq,stats_print=1,scope_check=warn,limit=1G");
	assert_string_equal(msg, "");
	capture_free(&cap);
	assert_int_equal(sa_opt.limit, 1ul << 30); /* the last one wins */
	assert_int_equal(sa_opt.percpu_fallback, 0);
	assert_int_equal(sa_opt.stats_print, 1);
	assert_int_equal(sa_opt.scope_check_abort, 0);

	msg = parse_captured(&cap, "limit=4096,sheaf_capacity=0,barn_max_full=0");
	assert_string_equal(msg, "");
	capture_free(&cap);
	assert_int_equal(sa_opt.limit, 4096);
	assert_int_equal(sa_opt.sheaf_capacity, 0);
	assert_int_equal(sa_opt.barn_max_full, 0);
}

static void test_mixed_good_and_bad(void **state)
{
	(void)state;
	struct capture cap;
	struct sa_options before = sa_opt;
	const char *msg =
		parse_captured(&cap, "bogus,sheaf_capacity=16,also=bad,barn_max_empty=oops,"
				     "barn_max_full=7");
	assert_int_equal(count_substr(msg, "\n"), 3);
	assert_non_null(strstr(msg, "bogus"));
	assert_non_null(strstr(msg, "also"));
	assert_non_null(strstr(msg, "barn_max_empty"));
	capture_free(&cap);
	assert_int_equal(sa_opt.sheaf_capacity, 16);
	assert_int_equal(sa_opt.barn_max_full, 7);
	assert_int_equal(sa_opt.barn_max_empty, before.barn_max_empty);
	assert_int_equal(sa_opt.limit, before.limit);
}

static void test_empty_strings(void **state)
{
	(void)state;
	struct sa_options before = sa_opt;
	struct capture cap;
	static const char *const empty[] = {"", ",", ",,,", "sheaf_capacity=8,",
					    ",sheaf_capacity=8"};
	const char *msg = parse_captured(&cap, NULL);
	assert_string_equal(msg, "");
	capture_free(&cap);
	assert_true(opts_equal(&before, &sa_opt));
	for (size_t i = 0; i < sizeof(empty) / sizeof(empty[0]); i++) {
		msg = parse_captured(&cap, empty[i]);
		assert_string_equal(msg, "");
		capture_free(&cap);
	}
	assert_int_equal(sa_opt.sheaf_capacity, 8);
}

static void test_percpu_mode_this_process(void **state)
{
	(void)state;
	const char *m = sa_percpu_mode();
	assert_non_null(m);
	print_message("per-CPU mode: %s\n", m);
	if (expect_fallback_mode())
		assert_true(strncmp(m, "fallback: ", 10) == 0 && strlen(m) > 10);
	else
		assert_string_equal(m, "rseq");
}

/* Which rseq registration is in use, and every thread (new ones too) runs its sections. */
static void *thread_allocs(void *arg)
{
	struct sa_cache *c = arg;
	void *objs[300];
	if (sa_cache_alloc_bulk(c, 0, 300, objs) != 300)
		return (void *)1;
	sa_cache_free_bulk(c, 300, objs);
	return NULL;
}

static void test_rseq_registration(void **state)
{
	(void)state;
	const char *t = getenv("GLIBC_TUNABLES");
	int glibc_off = t && strstr(t, "glibc.pthread.rseq=0");
	sa_numa_nodes();
	print_message("sa_pcs_mode %d (glibc rseq %s)\n", sa_pcs_mode,
		      glibc_off ? "off" : "default");
	if (expect_fallback_mode()) {
		assert_int_equal(sa_pcs_mode, SA_PCS_FALLBACK);
	} else if (glibc_off) {
		assert_int_equal(sa_pcs_mode, SA_PCS_RSEQ_OWN);
	} else {
		assert_int_equal(sa_pcs_mode, SA_PCS_RSEQ_GLIBC);
	}
	/* the fast paths work from new threads too (the library's own registration is lazy) */
	struct sa_cache *c = sa_cache_create("threads-rseq", 48, NULL);
	assert_non_null(c);
	for (int i = 0; i < 4; i++) {
		pthread_t th;
		void *ret = (void *)2;
		assert_int_equal(pthread_create(&th, NULL, thread_allocs, c), 0);
		pthread_join(th, &ret);
		assert_null(ret);
	}
	struct sa_cache_stats st = get_stats(c);
	if (!expect_fallback_mode())
		assert_true(st.alloc_fast > 0); /* sections ran: not everything went the slow way */
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
}

/*
 * Re-execute this binary with SHEAFALLOC_OPTIONS=<opts>; the child prints sa_percpu_mode() on
 * stdout. Returns the child's stdout and (through err) its stderr.
 */
static char *run_child(const char *opts, char **err)
{
	int out[2], ep[2];
	assert_int_equal(pipe(out), 0);
	assert_int_equal(pipe(ep), 0);
	/* readlink, not exec of /proc/self/exe itself: under valgrind the latter is the tool */
	char self[4096];
	ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
	assert_true(sl > 0);
	self[sl] = 0;
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(out[1], 1);
		dup2(ep[1], 2);
		close(out[0]);
		close(ep[0]);
		if (opts)
			setenv("SHEAFALLOC_OPTIONS", opts, 1);
		else
			unsetenv("SHEAFALLOC_OPTIONS");
		execl(self, "options", "--child-mode", (char *)NULL);
		_exit(127);
	}
	close(out[1]);
	close(ep[1]);
	char *bufs[2];
	int fds[2] = {out[0], ep[0]};
	for (int k = 0; k < 2; k++) {
		size_t cap = 4096, len = 0;
		bufs[k] = calloc(1, cap);
		for (;;) {
			ssize_t r = read(fds[k], bufs[k] + len, cap - len - 1);
			if (r <= 0)
				break;
			len += (size_t)r;
			if (len + 1 >= cap) {
				cap *= 2;
				bufs[k] = realloc(bufs[k], cap);
			}
		}
		bufs[k][len] = 0;
		close(fds[k]);
	}
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	*err = bufs[1];
	return bufs[0];
}

static void test_percpu_mode_child_fallback(void **state)
{
	(void)state;
	char *err;
	char *out = run_child("percpu=fallback", &err);
	assert_true(strncmp(out, "fallback: ", 10) == 0);
	assert_string_equal(err, "");
	free(out);
	free(err);

	/* a bad option next to a good one: reported once, the good one still applies */
	out = run_child("nosuch=1,percpu=fallback,sheaf_capacity=zz", &err);
	assert_true(strncmp(out, "fallback: ", 10) == 0);
	assert_int_equal(count_substr(err, "nosuch"), 1);
	assert_int_equal(count_substr(err, "sheaf_capacity"), 1);
	free(out);
	free(err);

	/* percpu=rseq is honoured as "not fallback" unless rseq is unavailable */
	out = run_child("percpu=rseq", &err);
	assert_true(strcmp(out, "rseq") == 0 || strncmp(out, "fallback: ", 10) == 0);
	assert_string_equal(err, "");
	free(out);
	free(err);
}

static int child_mode(void)
{
	struct sa_cache *c = sa_cache_create("child", 64, NULL);
	void *p = c ? sa_cache_alloc(c, 0) : NULL;
	if (!p)
		return 1;
	sa_cache_free(c, p);
	fputs(sa_percpu_mode(), stdout);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--child-mode") == 0)
		return child_mode();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_unknown_key, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_values_keep_defaults, setup, teardown),
		cmocka_unit_test_setup_teardown(test_good_values, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mixed_good_and_bad, setup, teardown),
		cmocka_unit_test_setup_teardown(test_empty_strings, setup, teardown),
		cmocka_unit_test(test_percpu_mode_this_process),
		cmocka_unit_test(test_rseq_registration),
		cmocka_unit_test(test_percpu_mode_child_fallback),
	};
	return cmocka_run_group_tests_name("options", tests, NULL, NULL);
}
