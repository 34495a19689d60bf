/*
 * tests/unit/robust.c — bad and unusual input that once crashed or read the program's data as
 * metadata (issue 16, "found by trying").
 *
 *   test_huge_block_interior_pointers  a huge block's bytes never double as a unit record: for
 *        blocks whose first bytes are filled with 0x41, every interior pointer of the first
 *        4 MiB region (one per 64 KiB unit) gives sa_object_node -1 or a real node, and a free,
 *        realloc or usable-size of it is reported and ignored (no crash, block intact)
 *   test_malloc_from_handler_during_start  a process whose first allocation starts sheafalloc
 *        while a 50 us SIGALRM handler allocates too: no crash (the handler's allocations come
 *        from the bootstrap arena while the size classes do not exist yet), 30 fresh processes;
 *        the handler disarms the timer once started or after 400 signals (no livelock on a
 *        slow machine)
 *   test_misuse_aborts_by_default  always-on checks, no option set: each misuse (a small double
 *        free at once, one after other frees, of a cache object, free(p + 1), free of a page the
 *        program mapped, free((void *)1) as the process's first call, a large double free,
 *        free(p + 16 KiB) onto an object of p's new slab that was never handed out) is
 *        reported on stderr, naming what and which cache, and aborts (SIGABRT) before the
 *        object can be handed out twice; with bad_free=warn the process goes on and the next
 *        allocations are all distinct (nothing was corrupted)
 *   test_free_check_option  free_check=light: a free leaves the freed block's bytes alone (the
 *        default, key, writes its key there); an immediate double free still aborts
 */
#include "sa_test.h"

#include <signal.h>
#include <spawn.h>
#include <sys/time.h>

extern struct sa_cache *sa_class_cache[SA_MALLOC_CLASSES];

extern char **environ;

#define MiB(x) ((size_t)(x) << 20)

static void test_huge_block_interior_pointers(void **state)
{
	(void)state;
	size_t sizes[] = {MiB(4) - 8192, MiB(4) - 12288, MiB(3), MiB(4) + 4096};
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		size_t size = sizes[k];
		unsigned char *p = sa_malloc(size);
		assert_non_null(p);
		memset(p, 0x41, size);
		uintptr_t seg = (uintptr_t)p & ~(SA_SEG_SIZE - 1);
		struct capture cap;
		capture_begin(&cap);
		for (unsigned u = 0; u < SA_UNITS_PER_SEG; u++) {
			unsigned char *q = (unsigned char *)seg + (size_t)u * SA_UNIT_SIZE + 128;
			if (q < p || q >= p + size)
				continue; /* not inside the block */
			int node = sa_object_node(q);
			assert_true(node == -1 || (node >= 0 && node < sa_numa_nodes()));
			if (q == p)
				continue;
			sa_free(q); /* reported and ignored */
			errno = 0;
			assert_null(sa_realloc(q, 100));
			assert_int_equal(errno, EINVAL);
			assert_true(sa_malloc_usable_size(q) == 0 ||
				    sa_malloc_usable_size(q) >= size - (size_t)(q - p));
		}
		const char *err = capture_end(&cap);
		assert_true(count_substr(err, "into a block") +
				    count_substr(err, "not an allocated") +
				    count_substr(err, "not a sheafalloc") >
			    0);
		capture_free(&cap);
		for (size_t i = 0; i < size; i++) /* nothing was written into the block */
			if (p[i] != 0x41)
				fail_msg("size %zu: byte %zu changed to %#x", size, i, p[i]);
		sa_free(p);
	}
}

/* ------------------------------------------------------------------ signals at start-up ----- */
static volatile sig_atomic_t handler_calls;

static void alloc_in_handler(int sig)
{
	(void)sig;
	/* only while the size classes do not all exist: the case of the bug. Later a handler
	 * that allocates may interrupt a slow path holding a lock it needs, which no malloc
	 * promises to survive (malloc is not async-signal-safe) */
	int saved = errno;
	/* Bounded: at most 400 signals, none once started. A periodic timer whose handler can
	 * take longer than its period (a slow or loaded machine, a sanitizer's runtime) would
	 * otherwise leave the main loop no time at all (a livelock that depends on speed). */
	if (__atomic_load_n(&sa_class_cache[SA_MALLOC_CLASSES - 1], __ATOMIC_ACQUIRE) ||
	    ++handler_calls >= 400) {
		struct itimerval off = {{0, 0}, {0, 0}};
		setitimer(ITIMER_REAL, &off, NULL);
		errno = saved;
		return;
	}
	void *p = sa_malloc(32);
	void *q = sa_malloc(3000);
	sa_free(q);
	sa_free(p);
	errno = saved;
}

/* The child: the very first sheafalloc call of the process runs with the timer armed. */
static int handler_child(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = alloc_in_handler;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	struct itimerval it = {{0, 50}, {0, 50}};
	setitimer(ITIMER_REAL, &it, NULL);
	/* the process's first allocation starts sheafalloc, with the signals coming */
	for (int i = 0; i < 2000; i++) {
		void *p = sa_malloc((size_t)(i % 64) * 16 + 1);
		if (!p)
			return 3;
		sa_free(p);
	}
	struct itimerval off = {{0, 0}, {0, 0}};
	setitimer(ITIMER_REAL, &off, NULL);
	return 0;
}

static void test_malloc_from_handler_during_start(void **state)
{
	(void)state;
	if (running_on_valgrind())
		skip();
	for (int run = 0; run < 30; run++) {
		pid_t pid;
		char *argv[] = {"robust", "--handler-child", NULL};
		assert_int_equal(posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ), 0);
		int st = 0;
		assert_int_equal(waitpid(pid, &st, 0), pid);
		if (WIFSIGNALED(st))
			fail_msg("run %d: the child died of signal %d", run, WTERMSIG(st));
		assert_int_equal(WEXITSTATUS(st), 0);
	}
}

/* ------------------------------------------------------------------ always-on checks -------- */
#include <sys/mman.h>

/* true if the n pointers are all different (no block handed out twice) */
static bool all_distinct(void *const *v, int n)
{
	for (int i = 0; i < n; i++)
		for (int k = 0; k < i; k++)
			if (v[i] == v[k])
				return false;
	return true;
}

/* One misuse each; the child must not get past it (bad_free=abort by default). */
static int misuse_child(int kind)
{
	static void *seen[64];
	switch (kind) {
	case 0: { /* small double free, at once */
		void *p = sa_malloc(40);
		sa_free(p);
		sa_free(p);
		break;
	}
	case 1: { /* small double free after other frees */
		void *a = sa_malloc(24), *b = sa_malloc(24), *c = sa_malloc(24);
		sa_free(a);
		sa_free(b);
		sa_free(c);
		sa_free(a);
		break;
	}
	case 2: { /* a cache object freed twice after another */
		struct sa_cache *cc = sa_cache_create("robust-dfree", 48, NULL);
		void *a = sa_cache_alloc(cc, 0), *b = sa_cache_alloc(cc, 0);
		sa_cache_free(cc, a);
		sa_cache_free(cc, a);
		(void)b;
		break;
	}
	case 3: { /* not an object's start */
		char *p = sa_malloc(100);
		sa_free(p + 1);
		break;
	}
	case 4: { /* a page the program mapped itself */
		void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			       0);
		sa_free(m);
		break;
	}
	case 5: /* the first call of the process: the options are read first */
		sa_free((void *)1);
		break;
	case 6: { /* a large block freed twice */
		void *p = sa_malloc(300000);
		sa_free(p);
		sa_free(p);
		break;
	}
	case 7: { /* freed twice with a malloc in between that got another block */
		void *p = sa_malloc(64);
		sa_free(p);
		void *q = sa_malloc(200);
		sa_free(p);
		sa_free(q);
		break;
	}
	case 8: { /* free(p + 16 KiB): a new slab's object that was never handed out */
		char *p = sa_malloc(16);
		sa_free(p + 16384);
		/* accepted, it would sit on top of this CPU's sheaf and be handed out from there,
		 * then again from the slab when the refills reach its index (1024) */
		static void *many[1500];
		for (int i = 0; i < 1500; i++)
			many[i] = sa_malloc(16);
		if (!all_distinct(many, 1500))
			return 9;
		break;
	}
	}
	/* got past the misuse: whatever happens next must not hand out one block twice */
	for (int i = 0; i < 64; i++)
		seen[i] = sa_malloc(40);
	return all_distinct(seen, 64) ? 0 : 9;
}

/* This binary again, as `robust mode [arg]`, with SHEAFALLOC_OPTIONS=opts and nothing else. */
static int spawn_mode(const char *mode, const char *arg, const char *opts, char *err, size_t errlen)
{
	char env_opt[256];
	snprintf(env_opt, sizeof(env_opt), "SHEAFALLOC_OPTIONS=%s", opts);
	char *envp[] = {env_opt, NULL};
	char *argv[] = {"robust", (char *)mode, (char *)arg, NULL};
	return spawn_self(argv, envp, err, errlen);
}

static int spawn_kind(int kind, const char *opts, char *err, size_t errlen)
{
	char k[16];
	snprintf(k, sizeof(k), "%d", kind);
	return spawn_mode("--misuse", k, opts, err, errlen);
}

static void test_misuse_aborts_by_default(void **state)
{
	(void)state;
	if (running_on_valgrind())
		skip();
	static const char *const what[] = {"double free",
					   "double free",
					   "double free",
					   "not the start",
					   "not a sheafalloc object",
					   "not a sheafalloc object",
					   "not an allocated block",
					   "double free",
					   "never handed out"};
	char err[4096];
	for (int kind = 0; kind < 9; kind++) {
		int st = spawn_kind(kind, "", err, sizeof(err));
		if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT)
			fail_msg("misuse %d: no abort (status %#x); stderr: %s", kind, st, err);
		if (!strstr(err, what[kind]) || !strstr(err, "aborting"))
			fail_msg("misuse %d: report '%s' does not say '%s'", kind, err, what[kind]);
		st = spawn_kind(kind, "bad_free=warn", err, sizeof(err));
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			fail_msg("misuse %d with bad_free=warn: status %#x; stderr: %s", kind, st,
				 err);
		if (!strstr(err, what[kind]) || !strstr(err, "ignored"))
			fail_msg("misuse %d with bad_free=warn: report '%s'", kind, err);
	}
}

/* free_check=light: a malloc free neither reads nor writes the block (the key is off): the
 * program's bytes in a freed block stay as they were; exit 0 if so, 7 if the free wrote. */
static int light_child(void)
{
	uint64_t *p = sa_malloc(64);
	if (!p)
		return 8;
	memset(p, 0x5a, 64);
	sa_free(p);
	uint64_t w = __atomic_load_n(&p[1], __ATOMIC_RELAXED); /* our own memory, still mapped */
	return w == 0x5a5a5a5a5a5a5a5aull ? 0 : 7;
}

static int spawn_light(const char *opts, char *err, size_t errlen)
{
	return spawn_mode("--light-child", NULL, opts, err, errlen);
}

/* free_check: key (the default) writes the key into a freed malloc block; light does not touch
 * the block, and still catches a double free on top of this CPU's sheaf (abort). */
static void test_free_check_option(void **state)
{
	(void)state;
	if (running_on_valgrind())
		skip();
	char err[4096];
	int st = spawn_light("free_check=light", err, sizeof(err));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("free_check=light: status %#x (7: the free wrote into the block); %s", st,
			 err);
	st = spawn_light("", err, sizeof(err));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 7)
		fail_msg("free_check=key: status %#x (0: the free left the block alone); %s", st,
			 err);
	st = spawn_kind(0, "free_check=light", err, sizeof(err));
	if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT || !strstr(err, "double free"))
		fail_msg("free_check=light, double free at once: status %#x; %s", st, err);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--light-child") == 0)
		return light_child();
	if (argc > 1 && strcmp(argv[1], "--handler-child") == 0)
		return handler_child();
	if (argc > 2 && strcmp(argv[1], "--misuse") == 0)
		return misuse_child(atoi(argv[2]));
	sa_init();
	sa_opt.bad_free_abort = 0; /* the interior-pointer test checks report-and-ignore */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_huge_block_interior_pointers),
		cmocka_unit_test(test_malloc_from_handler_during_start),
		cmocka_unit_test(test_misuse_aborts_by_default),
		cmocka_unit_test(test_free_check_option),
	};
	return cmocka_run_group_tests_name("robust", tests, NULL, NULL);
}
