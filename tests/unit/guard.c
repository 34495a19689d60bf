/*
 * tests/unit/guard.c — debug=G (docs/robustness.md §3): a freed large (above 32 KiB) or huge
 * malloc block is inaccessible until it is handed out again, so a read or a write after free
 * faults at the access, as with glibc's unmapped blocks; and the allocator keeps working
 * around it (reuse by blocks and by slabs, realloc in place, malloc_usable_size, sa_trim,
 * fork, NOWAIT contexts, the memory limit's accounting).
 *
 * Two kinds of test:
 *   in this process  the letter is switched on in sa_opt for the test's span (the guard bits,
 *                    not the option, decide what must be made accessible again, so switching it
 *                    off afterwards is safe); whether memory is accessible is asked without
 *                    faulting: write(2) from it into a pipe fails with EFAULT when it is not.
 *                    Also: three threads freeing and reusing each other's runs, and the bound
 *                    (a quarter of vm.max_map_count units guarded; past it, left accessible,
 *                    counted, told once; skipped where that bound is above 70000 units).
 *   in a fresh process  this binary spawned again with a case name and SHEAFALLOC_OPTIONS set to
 *                    the run's own options (percpu=... of tests/run.sh, the rest of the
 *                    environment kept) plus debug=G, debug=all or no letter: a read or a write
 *                    after free of a 256 KiB block and of a cached 8 MiB block must die of
 *                    SIGSEGV with the letter and must not without it (the control that shows the
 *                    test can fail); realloc and a second free of a freed block are reported
 *                    (SIGABRT, the message), or with bad_free=warn ignored, never a fault.
 * Under ASan/TSan the children get handle_segv=0, so that the fault kills them as it kills a
 * plain program. Under valgrind (which marks PROT_NONE memory unaddressable and reports the
 * probes) every test but the option parsing is skipped.
 */
#include "sa_test.h"

#include <signal.h>

#define LARGE (256u << 10)
#define HUGE  (8u << 20)
#define NLIVE 5 /* live huge blocks that make the huge cache keep a freed one (a quarter) */

/* ------------------------------------------------------------------ probes ------------------ */
static int probe_fd[2] = {-1, -1};

/* Can the byte at p be read? (the kernel says EFAULT instead of a fault) */
static bool readable(const void *p)
{
	if (probe_fd[0] < 0)
		assert_int_equal(pipe(probe_fd), 0);
	ssize_t n = write(probe_fd[1], p, 1);
	if (n == 1) {
		char c;
		assert_int_equal(read(probe_fd[0], &c, 1), 1);
		return true;
	}
	assert_int_equal(errno, EFAULT);
	return false;
}

static uint64_t gstat(enum sa_gstat_item i)
{
	return atomic_load(&sa_gstat[i]);
}

static unsigned saved_debug, initial_debug, initial_purge_ms;

/* After every test, passed or failed: the options as the run set them. */
static int restore_options(void **state)
{
	(void)state;
	sa_opt.debug = initial_debug;
	sa_opt.purge_ms = initial_purge_ms;
	return 0;
}

static void guard_begin(void)
{
	saved_debug = sa_opt.debug;
	sa_opt.debug |= SA_DEBUG_GUARD;
}

static void guard_end(void)
{
	sa_opt.debug = saved_debug;
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i += 512)
		p[i] = (unsigned char)(seed + i / 512);
}

static bool check(const unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i += 512)
		if (p[i] != (unsigned char)(seed + i / 512))
			return false;
	return true;
}

#define SKIP_ON_VALGRIND()                 \
	do {                               \
		if (running_on_valgrind()) \
			skip();            \
	} while (0)

/* ------------------------------------------------------------------ in this process --------- */

/* A freed large block: inaccessible at once, its neighbour not; reuse gives it back writable. */
static void test_large_free_and_reuse(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	sa_trim(); /* a purge round now: the next one only after purge_ms */
	sa_opt.purge_ms = 3600000;
	guard_begin();
	uint64_t g0 = gstat(SA_G_GUARDED);
	unsigned char *keep = sa_malloc(LARGE), *p = sa_malloc(LARGE);
	assert_non_null(keep);
	assert_non_null(p);
	fill(keep, LARGE, 1);
	fill(p, LARGE, 2);
	sa_free(p);
	assert_false(readable(p));
	assert_false(readable(p + LARGE - 1));
	assert_true(readable(keep + LARGE - 1));
	assert_true(check(keep, LARGE, 1));
	assert_int_equal(sa_malloc_usable_size(p), 0); /* from the unit record, not the block */
	assert_true(gstat(SA_G_GUARDED) > g0);
	/* the next malloc of that size does not get it: a guarded run waits in the stash while
	 * newer runs pass (the purge rounds, which empty the stashes, are held off meanwhile) */
	unsigned char *q = sa_malloc(LARGE);
	assert_non_null(q);
	assert_ptr_not_equal(q, p);
	assert_false(readable(p));
	fill(q, LARGE, 200);
	/* pushed out by newer freed runs, it is reused from its segment's bitmap */
	unsigned char *got[64];
	for (int i = 0; i < 8; i++)
		assert_non_null(got[i] = sa_malloc(LARGE));
	for (int i = 0; i < 8; i++)
		sa_free(got[i]);
	int n = 0, found = -1;
	for (; n < 64 && found < 0; n++) {
		got[n] = sa_malloc(LARGE);
		assert_non_null(got[n]);
		assert_true(readable(got[n]) && readable(got[n] + LARGE - 1));
		fill(got[n], LARGE, 3u + (unsigned)n);
		if (got[n] == p)
			found = n;
	}
	assert_true(found >= 0);
	for (int i = 0; i < n; i++)
		assert_true(check(got[i], LARGE, 3u + (unsigned)i));
	/* calloc of a reused (dirty, once guarded) run is zero */
	sa_free(got[0]);
	unsigned char *z = sa_calloc(1, LARGE);
	assert_non_null(z);
	for (size_t i = 0; i < LARGE; i += 64)
		assert_int_equal(z[i], 0);
	sa_free(z);
	for (int i = 1; i < n; i++)
		sa_free(got[i]);
	assert_true(check(keep, LARGE, 1));
	assert_true(check(q, LARGE, 200));
	sa_free(keep);
	sa_free(q);
	guard_end();
}

/* Sizes from just above 32 KiB to 2 MiB, aligned ones too, and small objects whose new slabs
 * are carved from guarded units: all writable, contents intact, the freed ones inaccessible. */
static void test_mixed_reuse(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	guard_begin();
	enum { N = 48 };
	unsigned char *b[N];
	size_t sz[N];
	for (int i = 0; i < N; i++) {
		sz[i] = (size_t)(33u << 10) + (size_t)i * 43u * 1024u;
		b[i] = i % 5 == 4 ? sa_aligned_alloc((size_t)1 << 20, sz[i]) : sa_malloc(sz[i]);
		assert_non_null(b[i]);
		fill(b[i], sz[i], (unsigned)i);
	}
	for (int i = 0; i < N; i += 2) {
		sa_free(b[i]);
		assert_false(readable(b[i]));
	}
	for (int i = 1; i < N; i += 2) {
		assert_true(readable(b[i]));
		assert_true(check(b[i], sz[i], (unsigned)i));
	}
	/* small objects: their slabs come from the freed runs (unguarded first) */
	enum { NS = 6000 };
	unsigned char **small = malloc(NS * sizeof(*small));
	assert_non_null(small);
	for (int i = 0; i < NS; i++) {
		small[i] = sa_malloc(4096);
		assert_non_null(small[i]);
		memset(small[i], i & 0xff, 4096);
	}
	for (int i = 0; i < N; i += 2) {
		b[i] = sa_malloc(sz[i]);
		assert_non_null(b[i]);
		fill(b[i], sz[i], 100u + (unsigned)i);
	}
	for (int i = 0; i < N; i++)
		assert_true(check(b[i], sz[i], (unsigned)(i % 2 ? i : 100 + i)));
	for (int i = 0; i < NS; i++) {
		assert_int_equal(small[i][0], i & 0xff);
		assert_int_equal(small[i][4095], i & 0xff);
		sa_free(small[i]);
	}
	free(small);
	for (int i = 0; i < N; i++)
		sa_free(b[i]);
	guard_end();
}

/* realloc in place: a shrink guards the tail it gives back; a growth into freed (guarded) units
 * makes them accessible; malloc_usable_size follows. */
static void test_realloc_in_place(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	guard_begin();
	unsigned char *p = sa_malloc(1u << 20);
	assert_non_null(p);
	fill(p, 1u << 20, 7);
	unsigned char *r = sa_realloc(p, 200u << 10);
	assert_ptr_equal(r, p); /* 4 units of 16: shrunk in place */
	size_t u = sa_malloc_usable_size(p);
	assert_true(u >= (200u << 10) && u < (1u << 20));
	assert_true(check(p, 200u << 10, 7));
	assert_true(readable(p + u - 1));
	assert_false(readable(p + u));
	assert_false(readable(p + (1u << 20) - 1));
	/* grow back into the guarded tail (it is free, right after the block) */
	r = sa_realloc(p, 900u << 10);
	assert_non_null(r);
	assert_true(check(r, 200u << 10, 7));
	memset(r + (200u << 10), 0x33, (900u - 200u) << 10);
	assert_true(readable(r + (900u << 10) - 1));
	sa_free(r);
	assert_false(readable(r));
	/* two neighbours: free the second, grow the first into it */
	unsigned char *a = sa_malloc(LARGE), *c = sa_malloc(LARGE);
	assert_non_null(a);
	assert_non_null(c);
	fill(a, LARGE, 9);
	sa_free(c);
	unsigned char *g = sa_realloc(a, 2 * LARGE);
	assert_non_null(g);
	assert_true(check(g, LARGE, 9));
	memset(g + LARGE, 0x44, LARGE);
	sa_free(g);
	guard_end();
}

/* A freed huge block kept in the huge cache: its pages inaccessible; its reuse, a growth by
 * mremap after the reuse, and sa_trim all work. */
static void test_huge(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	guard_begin();
	unsigned char *live[NLIVE];
	for (int i = 0; i < NLIVE; i++) {
		live[i] = sa_malloc(HUGE);
		assert_non_null(live[i]);
		live[i][0] = (unsigned char)i;
	}
	unsigned char *p = sa_malloc(HUGE);
	assert_non_null(p);
	fill(p, HUGE, 5);
	sa_free(p);
	struct sa_malloc_totals t;
	sa_malloc_totals(&t);
	assert_true(t.huge_cached >= HUGE); /* kept for reuse */
	assert_false(readable(p));
	assert_false(readable(p + HUGE - 1));
	assert_int_equal(sa_malloc_usable_size(p), 0);
	unsigned char *r = sa_malloc(HUGE);
	assert_ptr_equal(r, p); /* the cached mapping */
	assert_true(readable(r) && readable(r + HUGE - 1));
	fill(r, HUGE, 6);
	unsigned char *g = sa_realloc(r, 3 * HUGE); /* mremap: the mapping must be one again */
	assert_non_null(g);
	assert_true(check(g, HUGE, 6));
	memset(g + HUGE, 0x55, 2 * HUGE);
	sa_free(g);
	for (int i = 0; i < NLIVE; i++) {
		assert_int_equal(live[i][0], i);
		sa_free(live[i]);
	}
	sa_trim();
	sa_malloc_totals(&t);
	assert_int_equal(t.huge_cached, 0);
	guard_end();
}

/* sa_trim and the limit's accounting: guarded free units are held like other dirty units and
 * given back by a trim; what comes back is writable. */
static void test_trim_and_held(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	guard_begin();
	enum { N = 32 };
	unsigned char *b[N];
	for (int i = 0; i < N; i++) {
		b[i] = sa_malloc(LARGE);
		assert_non_null(b[i]);
		memset(b[i], i, LARGE);
	}
	size_t h_live = sa_memory_held();
	for (int i = 0; i < N; i++)
		sa_free(b[i]);
	assert_true(sa_memory_held() <= h_live);
	sa_trim();
	size_t h_trim = sa_memory_held();
	assert_true(h_trim + (size_t)N * LARGE / 2 <= h_live);
	for (int i = 0; i < N; i++) {
		b[i] = sa_malloc(LARGE);
		assert_non_null(b[i]);
		memset(b[i], i, LARGE);
	}
	assert_true(sa_memory_held() >= h_trim + (size_t)N * LARGE);
	for (int i = 0; i < N; i++)
		sa_free(b[i]);
	sa_trim();
	guard_end();
}

/* NOWAIT: an allocation never takes a guarded run (no mprotect there); a free is put off and
 * guarded when the deferred work runs. */
static void test_nowait(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	guard_begin();
	unsigned char *a = sa_malloc(LARGE);
	assert_non_null(a);
	sa_free(a);
	assert_false(readable(a));
	unsigned ck = sa_memalloc_nowait_save();
	unsigned char *b = sa_malloc(LARGE);
	if (b) {
		assert_ptr_not_equal(b, a);
		memset(b, 1, LARGE);
		sa_free(b); /* put off: mprotect is a system call */
		assert_true(readable(b));
	}
	sa_memalloc_nowait_restore(ck);
	sa_trim(); /* runs the deferred frees */
	if (b)
		assert_false(readable(b));
	unsigned char *c = sa_malloc(LARGE);
	assert_non_null(c);
	memset(c, 2, LARGE);
	sa_free(c);
	guard_end();
}

/* fork: the child inherits the protection and its bookkeeping; it reuses the runs. */
static void test_fork(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	guard_begin();
	unsigned char *p = sa_malloc(LARGE), *q = sa_malloc(LARGE);
	assert_non_null(p);
	assert_non_null(q);
	fill(q, LARGE, 4);
	sa_free(p);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int rc = 0;
		if (readable(p))
			rc = 1;
		unsigned char *r[8];
		for (int i = 0; i < 8; i++) {
			r[i] = sa_malloc(LARGE);
			if (!r[i])
				_exit(2);
			memset(r[i], i, LARGE);
		}
		if (!check(q, LARGE, 4))
			rc = 3;
		for (int i = 0; i < 8; i++)
			sa_free(r[i]);
		_exit(rc);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_false(readable(p));
	sa_free(q);
	guard_end();
}

/* Threads that free what others allocated, sizes across large and huge: every block handed out
 * is writable and keeps its contents (the guard bits are set and cleared by different
 * threads on the same segments). */
#define THREAD_ROUNDS 3000
static void *churn(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	unsigned char *slot[8] = {0};
	size_t sz[8] = {0};
	for (int r = 0; r < THREAD_ROUNDS; r++) {
		seed = seed * 1103515245u + 12345u;
		unsigned k = (seed >> 8) % 8;
		if (slot[k]) {
			if (!check(slot[k], sz[k], k))
				return (void *)1;
			sa_free(slot[k]);
		}
		sz[k] = (size_t)(33u << 10) + (size_t)((seed >> 12) % (3u << 20));
		slot[k] = sa_malloc(sz[k]);
		if (!slot[k])
			return (void *)2;
		fill(slot[k], sz[k], k);
	}
	for (int k = 0; k < 8; k++)
		sa_free(slot[k]);
	return NULL;
}

static void test_threads(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	guard_begin();
	pthread_t t[3];
	for (uintptr_t i = 0; i < 3; i++)
		assert_int_equal(pthread_create(&t[i], NULL, churn, (void *)(i + 1)), 0);
	for (int i = 0; i < 3; i++) {
		void *rc;
		assert_int_equal(pthread_join(t[i], &rc), 0);
		assert_null(rc);
	}
	guard_end();
}

/* The bound: at most a quarter of vm.max_map_count units guarded at once; the frees past it stay
 * accessible, are counted, and are told once; everything is reusable afterwards. */
static void test_cap(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
	unsigned long max = 65530;
	if (f) {
		if (fscanf(f, "%lu", &max) != 1)
			max = 65530;
		fclose(f);
	}
	size_t cap = max / 4, n = cap + 64;
	if (n > 70000) /* 64 KiB blocks of address space: more than 4 GiB is too much here */
		skip();
	guard_begin();
	unsigned char **b = malloc(n * sizeof(*b));
	assert_non_null(b);
	for (size_t i = 0; i < n; i++) {
		b[i] = sa_malloc(60u << 10); /* one unit each; never written: nothing resident */
		assert_non_null(b[i]);
	}
	uint64_t skipped0 = gstat(SA_G_GUARD_SKIPPED);
	struct capture cap_err;
	capture_begin(&cap_err);
	for (size_t i = 0; i < n; i++)
		sa_free(b[i]);
	const char *msg = capture_end(&cap_err);
	uint64_t skipped = gstat(SA_G_GUARD_SKIPPED) - skipped0;
	assert_true(skipped >= 64 && skipped <= 64 + 64); /* a few units were guarded already */
	assert_int_equal(count_substr(msg, "debug=G: a freed block was left accessible"), 1);
	capture_free(&cap_err);
	assert_false(readable(b[0]));
	assert_true(readable(b[n - 1])); /* past the bound */
	for (size_t i = 0; i < n; i++) {
		b[i] = sa_malloc(60u << 10);
		assert_non_null(b[i]);
		b[i][0] = 1;
		b[i][(60u << 10) - 1] = 2;
	}
	for (size_t i = 0; i < n; i++)
		sa_free(b[i]);
	free(b);
	guard_end();
	sa_trim();
}

/* Without the letter nothing is protected (the control of the tests above). */
static void test_without_letter(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	if (sa_opt.debug & SA_DEBUG_GUARD)
		skip();
	uint64_t g0 = gstat(SA_G_GUARDED);
	unsigned char *p = sa_malloc(LARGE);
	assert_non_null(p);
	sa_free(p);
	assert_true(readable(p));
	assert_int_equal(gstat(SA_G_GUARDED), g0);
}

/* The letter parses, debug=all has it, and it is no cache check: a cache made under debug=G
 * keeps its per-CPU sheaves (c->debug 0). */
static void test_letter(void **state)
{
	(void)state;
	unsigned saved = sa_opt.debug;
	sa_options_parse("debug=G");
	assert_int_equal(sa_opt.debug, SA_DEBUG_GUARD);
	struct sa_cache *c = sa_cache_create("guard-letter", 64, NULL);
	assert_non_null(c);
	assert_int_equal(c->debug, 0);
	sa_cache_destroy(c);
	sa_options_parse("debug=all");
	assert_int_equal(sa_opt.debug, SA_DEBUG_ALL);
	assert_true(sa_opt.debug & SA_DEBUG_GUARD);
	struct sa_cache_args a = {.flags = SA_CACHE_DEBUG};
	c = sa_cache_create("guard-letter-debug", 64, &a);
	assert_non_null(c);
	assert_int_equal(c->debug, SA_DEBUG_CACHE);
	sa_cache_destroy(c);
	sa_opt.debug = saved;
}

/* ------------------------------------------------------------------ in a fresh process ------ */
static volatile unsigned char sink;

/* What a child does; its exit status (0: it went on), or it dies. */
static int child(const char *what)
{
	unsigned char *live[NLIVE] = {0};
	bool huge = strstr(what, "huge") != NULL;
	if (huge)
		for (int i = 0; i < NLIVE; i++)
			if (!(live[i] = sa_malloc(HUGE)))
				return 20;
	size_t size = huge ? HUGE : LARGE;
	unsigned char *keep = sa_malloc(size), *p = sa_malloc(size);
	if (!keep || !p)
		return 21;
	memset(keep, 0x11, size);
	memset(p, 0x5a, size);
	sa_free(p);
	if (huge) {
		struct sa_malloc_totals t;
		sa_malloc_totals(&t);
		if (t.huge_cached < HUGE)
			return 22; /* not kept: unmapped, the control would prove nothing */
	}
	if (strncmp(what, "read", 4) == 0) {
		sink = p[size / 2];
	} else if (strncmp(what, "write", 5) == 0) {
		p[size - 1] = 1;
	} else if (strncmp(what, "realloc", 7) == 0) {
		errno = 0;
		if (sa_realloc(p, size + 4096) != NULL || errno != EINVAL)
			return 23; /* bad_free=warn: reported, NULL, EINVAL */
	} else if (strncmp(what, "free", 4) == 0) {
		sa_free(p);
	} else {
		return 24;
	}
	/* went on: the allocator and the other block are fine */
	for (size_t i = 0; i < size; i += 4096)
		if (keep[i] != 0x11)
			return 25;
	unsigned char *n = sa_malloc(size);
	if (!n)
		return 26;
	memset(n, 0x22, size);
	sa_free(n);
	sa_free(keep);
	for (int i = 0; i < NLIVE; i++)
		sa_free(live[i]);
	return 0;
}

extern char **environ;

/* Spawn this binary on case `what` with `opts` added to the run's SHEAFALLOC_OPTIONS; returns
 * the wait status, the child's stderr in err. */
static int spawn(const char *what, const char *opts, char *err, size_t len)
{
	static char env_opt[512], env_asan[512], env_tsan[512];
	const char *base = getenv("SHEAFALLOC_OPTIONS");
	snprintf(env_opt, sizeof(env_opt), "SHEAFALLOC_OPTIONS=%s%s%s", base ? base : "",
		 base && *base && *opts ? "," : "", opts);
	const char *as = getenv("ASAN_OPTIONS"), *ts = getenv("TSAN_OPTIONS");
	snprintf(env_asan, sizeof(env_asan), "ASAN_OPTIONS=%s%shandle_segv=0", as ? as : "",
		 as && *as ? ":" : "");
	snprintf(env_tsan, sizeof(env_tsan), "TSAN_OPTIONS=%s%shandle_segv=0", ts ? ts : "",
		 ts && *ts ? ":" : "");
	char *envp[256];
	size_t k = 0;
	for (char **e = environ; *e && k < 250; e++)
		if (strncmp(*e, "SHEAFALLOC_OPTIONS=", 19) && strncmp(*e, "ASAN_OPTIONS=", 13) &&
		    strncmp(*e, "TSAN_OPTIONS=", 13))
			envp[k++] = *e;
	envp[k++] = env_opt;
	envp[k++] = env_asan;
	envp[k++] = env_tsan;
	envp[k] = NULL;
	char *argv[] = {"guard", "--child", (char *)what, NULL};
	return spawn_self(argv, envp, err, len);
}

static const char *const uaf_cases[] = {"read-large", "write-large", "read-huge", "write-huge"};

/* With G (alone or in all): every access after free dies of SIGSEGV at the access. */
static void test_uaf_faults(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	const char *opts[] = {"debug=G", "debug=all"};
	char err[4096];
	for (unsigned o = 0; o < 2; o++) {
		for (unsigned i = 0; i < 4; i++) {
			int st = spawn(uaf_cases[i], opts[o], err, sizeof(err));
			if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGSEGV)
				fail_msg("%s with %s: status %#x, not SIGSEGV (exit 0: the access "
					 "went unnoticed; 22: the huge block was not cached); "
					 "stderr: %s",
					 uaf_cases[i], opts[o], st, err);
		}
	}
}

/* Without G (no letter, or the other four): the same accesses go unnoticed, as documented. */
static void test_uaf_unnoticed_without(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	const char *opts[] = {"", "debug=FZPU"};
	char err[4096];
	if (sa_opt.debug & SA_DEBUG_GUARD) /* the run's own options have the letter */
		skip();
	for (unsigned o = 0; o < 2; o++) {
		for (unsigned i = 0; i < 4; i++) {
			int st = spawn(uaf_cases[i], opts[o], err, sizeof(err));
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
				fail_msg("%s with '%s': status %#x, expected exit 0; stderr: %s",
					 uaf_cases[i], opts[o], st, err);
		}
	}
}

/* realloc and a second free of a freed (protected) block: a report and SIGABRT, never a fault;
 * with bad_free=warn the program goes on. */
static void test_freed_block_reported(void **state)
{
	(void)state;
	SKIP_ON_VALGRIND();
	const char *cases[] = {"realloc-large", "realloc-huge", "free-large", "free-huge"};
	const char *opts[] = {"debug=G", "debug=all", ""};
	char err[4096], warn[64];
	for (unsigned o = 0; o < 3; o++) {
		for (unsigned i = 0; i < 4; i++) {
			int st = spawn(cases[i], opts[o], err, sizeof(err));
			if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT)
				fail_msg("%s with '%s': status %#x, not SIGABRT; stderr: %s",
					 cases[i], opts[o], st, err);
			if (!strstr(err, "not an allocated block (freed already"))
				fail_msg("%s with '%s': the report '%s' does not name a freed "
					 "block",
					 cases[i], opts[o], err);
			snprintf(warn, sizeof(warn), "%s%sbad_free=warn", opts[o],
				 *opts[o] ? "," : "");
			st = spawn(cases[i], warn, err, sizeof(err));
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
				fail_msg("%s with '%s': status %#x, expected exit 0; stderr: %s",
					 cases[i], warn, st, err);
		}
	}
}

int main(int argc, char **argv)
{
	if (argc > 2 && strcmp(argv[1], "--child") == 0)
		return child(argv[2]);
	sa_free(sa_malloc(16)); /* the options are read now: the tests save and restore them */
	initial_debug = sa_opt.debug;
	initial_purge_ms = sa_opt.purge_ms;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_letter, restore_options),
		cmocka_unit_test_teardown(test_without_letter, restore_options),
		cmocka_unit_test_teardown(test_large_free_and_reuse, restore_options),
		cmocka_unit_test_teardown(test_mixed_reuse, restore_options),
		cmocka_unit_test_teardown(test_realloc_in_place, restore_options),
		cmocka_unit_test_teardown(test_huge, restore_options),
		cmocka_unit_test_teardown(test_trim_and_held, restore_options),
		cmocka_unit_test_teardown(test_nowait, restore_options),
		cmocka_unit_test_teardown(test_fork, restore_options),
		cmocka_unit_test_teardown(test_threads, restore_options),
		cmocka_unit_test_teardown(test_cap, restore_options),
		cmocka_unit_test_teardown(test_uaf_faults, restore_options),
		cmocka_unit_test_teardown(test_uaf_unnoticed_without, restore_options),
		cmocka_unit_test_teardown(test_freed_block_reported, restore_options),
	};
	return cmocka_run_group_tests_name("guard", tests, NULL, NULL);
}
