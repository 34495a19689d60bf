/*
 * tests/unit/limit.c — the memory limit, reclaim, shrinkers and SA_NOFAIL (CONTRACT.md "Reclaim:
 * memory limit and shrinkers", the flag table; alloc/policy.h).
 *
 * A limit is process-wide, so every scenario runs in a forked child; scenarios that need an
 * option read at start (limit=, reserve=0) run in a child that execs this program with
 * SHEAFALLOC_OPTIONS extended (the per-CPU mode of the run is kept). Nothing here waits for
 * time: children run until a condition holds; the only clock is a generous guard against hangs.
 *
 *   test_limit_cache             a limit above what is held: a cache allocates until NULL
 *                                (ENOMEM); held never passes the limit by more than a slab; after
 *                                the frees the same cache and another one allocate again;
 *                                limit_hits and reclaim_rounds grow
 *   test_limit_malloc_{small,large,huge}  the same through sa_malloc (1 KiB and 100 B; 256 KiB
 *                                and 1 MiB; 3 MiB and 16 MiB blocks)
 *   test_limit_option            SHEAFALLOC_OPTIONS=limit=48M is the limit (sa_scope_stats), it
 *                                stops 1 MiB blocks, sa_set_limit(0) lifts it
 *   test_limit_option_first_call sa_scope_stats as the program's first call reports that limit
 *   test_shrink_{none,nofs,noio,noreclaim,nowait}  three shrinkers (FS, IO, neither) hold
 *                                objects; allocations past the limit under each scope call
 *                                exactly the shrinkers the scope allows (policy.h), and the
 *                                counters shrinker_calls_fs/io/other and shrinker_skipped agree
 *   test_shrink_flags_{nofs,noio}  the same with per-call flags instead of a scope
 *   test_shrink_forbidden_fails  only an FS shrinker holds memory, NOFS scope: the allocation
 *                                fails and the shrinker is never called
 *   test_shrink_no_recursion     a shrinker allocating in scan runs under NORECLAIM and does not
 *                                enter reclaim again (reclaim_rounds unchanged, no nested scan)
 *   test_shrink_self_unregister  a shrinker unregistering itself from its scan: no deadlock, and
 *                                it is not called again
 *   test_shrink_unregister_waits sa_shrinker_unregister called while another thread's round is
 *                                inside the shrinker's scan waits for it, and the registry's node
 *                                is freed once (white box: two metadata allocations differ) and
 *                                the shrinker can be registered again
 *   test_shrink_fork_mid_scan    fork while another thread's round is inside a shrinker's scan
 *                                and a third thread waits in sa_shrinker_unregister for it: in
 *                                the child, unregistering a shrinker that round held returns,
 *                                and two unregisters that wait for a round of the child's own
 *                                return too (neither the parent's hold nor its waiter on the
 *                                condition variable survive the fork)
 *   test_shrink_register_stress  threads allocate at the limit while another thread registers and
 *                                unregisters shrinkers: no call after sa_shrinker_unregister
 *                                returned
 *   test_shrink_register_args    -EINVAL (NULL, missing callbacks, unknown classes), -EEXIST
 *   test_nofail_waits            SA_NOFAIL at the limit (reserve=0) waits, reclaiming, until
 *                                another thread, seeing nofail_retries > 0, frees memory
 *   test_nofail_nowait_aborts{,_malloc}  SA_NOFAIL inside a NOWAIT scope with no memory and no
 *                                reserve: SIGABRT after a message naming the scope and request
 *   test_nofail_nowait_reserve   with the default reserve, NOFAIL and SA_HIGH inside a NOWAIT
 *                                scope at the limit are served from the reserve, which comes back
 *                                after the frees and sa_cache_shrink
 *   test_reserve_private         after an SA_HIGH allocation at the limit took reserve memory,
 *                                plain NOWAIT allocations of the same cache get no reserve
 *                                object (the reserve is only for HIGH, NORECLAIM and NOFAIL)
 */
#include "sa_test.h"

#include "alloc/policy.h"

#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

#define GUARD_S	     240
#define CHILD_FAILED 42
#define MiB(x)	     ((size_t)(x) << 20)

/* ------------------------------------------------------------------ child plumbing --------- */
static const char *volatile child_step = "start";
#define STEP(s) (child_step = (s))

static void __attribute__((noreturn, format(printf, 2, 3)))
child_fail(int line, const char *fmt, ...)
{
	char buf[768];
	int n = snprintf(buf, sizeof(buf), "child check failed at line %d (step '%s'): ", line,
			 child_step);
	va_list ap;
	va_start(ap, fmt);
	if (n > 0 && (size_t)n < sizeof(buf))
		n += vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	ssize_t w = write(2, buf, (size_t)n);
	(void)w;
	_exit(CHILD_FAILED);
}
#define CHK(cond, ...)                                     \
	do {                                               \
		if (!(cond))                               \
			child_fail(__LINE__, __VA_ARGS__); \
	} while (0)

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char child_err[16384];

/* Wait for pid (guard: GUARD_S); returns the status, -1 if it hung (killed). */
static int wait_child(pid_t pid)
{
	int st = 0;
	pid_t r;
	double deadline = now_s() + GUARD_S;
	while ((r = waitpid(pid, &st, WNOHANG)) == 0 && now_s() < deadline)
		usleep(10000);
	if (r == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		return -1;
	}
	return st;
}

static void read_err(FILE *err)
{
	fflush(err);
	long len = ftell(err);
	child_err[0] = 0;
	if (len > 0) {
		rewind(err);
		size_t got = fread(child_err, 1, sizeof(child_err) - 1, err);
		child_err[got] = 0;
	}
	fclose(err);
}

static char self_path[4096] = "/proc/self/exe";

/* This program's path (valgrind answers for its client here; an exec of /proc/self/exe itself
 * would start valgrind's tool binary). */
static void find_self(void)
{
	ssize_t n = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
	if (n > 0)
		self_path[n] = 0;
	else
		snprintf(self_path, sizeof(self_path), "/proc/self/exe");
}

/*
 * Run scenario `name` of this program in a child: forked (extra_opts NULL) or exec'd with
 * SHEAFALLOC_OPTIONS extended by extra_opts. Returns the wait status (-1: hung); its stderr is
 * in child_err.
 */
static int run_scenario(const char *name, const char *extra_opts);

static int status_ok(int st)
{
	return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void report_status(const char *name, int st)
{
	if (st == -1)
		print_error("scenario %s: still running after %d s (hung)\n", name, GUARD_S);
	else if (WIFSIGNALED(st))
		print_error("scenario %s: killed by signal %d\n", name, WTERMSIG(st));
	else if (WEXITSTATUS(st))
		print_error("scenario %s: exit status %d\n", name, WEXITSTATUS(st));
	if (child_err[0])
		print_error("its stderr:\n%s\n", child_err);
}

static void expect_ok(const char *name, const char *extra_opts)
{
	int st = run_scenario(name, extra_opts);
	if (!status_ok(st))
		report_status(name, st);
	assert_true(status_ok(st));
}

static int sanitizer_or_valgrind(void)
{
	return SA_TEST_SANITIZER || running_on_valgrind();
}

/* ------------------------------------------------------------------ helpers ---------------- */
static struct sa_scope_stats gstats(void)
{
	struct sa_scope_stats g;
	sa_scope_stats(&g);
	return g;
}

/* Pointer arrays outside the allocator (mmap: never counted against the limit). */
static void **ptr_array(size_t n)
{
	void *m = mmap(NULL, n * sizeof(void *), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	CHK(m != MAP_FAILED, "mmap of a pointer array");
	return m;
}

/* Set a limit `room` bytes above what is held now (after sa_trim), the reserve included. */
static size_t limit_above(size_t room)
{
	sa_trim();
	sa_set_limit(0);
	CHK(sa_set_limit(sa_memory_held() + room) == 0, "sa_set_limit");
	/* setting a limit maps the emergency reserve (counted in held): room above that */
	size_t lim = sa_memory_held() + room;
	CHK(sa_set_limit(lim) == 0, "sa_set_limit");
	CHK(gstats().limit == lim, "sa_scope_stats().limit %llu, not %zu",
	    (unsigned long long)gstats().limit, lim);
	return lim;
}

static void chk_held(size_t lim, size_t slack, int line)
{
	size_t h = sa_memory_held();
	if (h > lim + slack)
		child_fail(line, "held %zu bytes passes the limit %zu by %zu (more than %zu)", h,
			   lim, h - lim, slack);
}

/* ------------------------------------------------------------------ the limit -------------- */
#define MAXP (1u << 20)

static void limit_cache_child(void)
{
	struct sa_cache *c = sa_cache_create("limit-1000", 1000, NULL);
	struct sa_cache *d = sa_cache_create("limit-3000", 3000, NULL);
	CHK(c && d, "sa_cache_create");
	void **p = ptr_array(MAXP);
	size_t lim = limit_above(MiB(16));
	size_t slab = (size_t)c->slab_units * SA_UNIT_SIZE;
	struct sa_scope_stats g0 = gstats();
	STEP("allocate until NULL");
	size_t n = 0;
	for (;;) {
		CHK(n < MAXP, "%zu objects and no NULL under a 16 MiB limit", n);
		errno = 0;
		void *o = sa_cache_alloc(c, SA_NOWARN);
		if (!o) {
			CHK(errno == ENOMEM, "NULL with errno %d, not ENOMEM", errno);
			break;
		}
		memset(o, 1, 1000);
		p[n++] = o;
		chk_held(lim, slab, __LINE__);
	}
	CHK(n * 1000 >= MiB(16) / 2, "only %zu objects of 1000 B under a 16 MiB room", n);
	struct sa_scope_stats g1 = gstats();
	CHK(g1.limit_hits > g0.limit_hits, "limit_hits did not grow");
	CHK(g1.reclaim_rounds > g0.reclaim_rounds, "reclaim_rounds did not grow");
	STEP("free, allocate again from the same cache");
	for (size_t i = 0; i < n; i++)
		sa_cache_free(c, p[i]);
	for (size_t i = 0; i < n / 2; i++) {
		CHK(p[i] = sa_cache_alloc(c, SA_NOWARN), "allocation %zu of %zu after the frees", i,
		    n / 2);
		chk_held(lim, slab, __LINE__);
	}
	for (size_t i = 0; i < n / 2; i++)
		sa_cache_free(c, p[i]);
	STEP("allocate from another cache: reclaim gives the first cache's memory back");
	size_t m = (n * 1000 / 2) / 3000;
	for (size_t i = 0; i < m; i++) {
		CHK(p[i] = sa_cache_alloc(d, SA_NOWARN), "allocation %zu of %zu of another cache",
		    i, m);
		chk_held(lim, slab, __LINE__);
	}
	for (size_t i = 0; i < m; i++)
		sa_cache_free(d, p[i]);
	STEP("sa_set_limit(0) lifts the limit");
	sa_set_limit(0);
	for (size_t i = 0; i < n + n / 2; i++)
		CHK(p[i] = sa_cache_alloc(c, SA_NOWARN), "allocation %zu with no limit", i);
	_exit(0);
}

static void test_limit_cache(void **state)
{
	(void)state;
	expect_ok("limit_cache", NULL);
}

/* sa_malloc of `size` until NULL under `room`; then again; then another size. */
static void limit_malloc_run(size_t size, size_t room, size_t other)
{
	void **p = ptr_array(MAXP);
	size_t lim = limit_above(room);
	/* one allocation from the OS: a slab of the size class (small), a unit run (large), a
	 * mapping with its header page (huge) */
	size_t slack = size <= 32768 ? (size * 8 + SA_UNIT_SIZE - 1) / SA_UNIT_SIZE * SA_UNIT_SIZE
		       : size <= MiB(2) ? (size + SA_UNIT_SIZE - 1) & ~(SA_UNIT_SIZE - 1)
					: (size + 4096 + 4095) & ~4095ul;
	struct sa_scope_stats g0 = gstats();
	size_t n = 0;
	STEP("sa_malloc until NULL");
	for (;;) {
		CHK(n < MAXP, "%zu blocks of %zu and no NULL", n, size);
		errno = 0;
		char *b = sa_malloc(size);
		if (!b) {
			CHK(errno == ENOMEM, "NULL with errno %d, not ENOMEM", errno);
			break;
		}
		b[0] = 1;
		b[size - 1] = 2;
		p[n++] = b;
		chk_held(lim, slack, __LINE__);
	}
	CHK(n * size >= room / 3, "only %zu blocks of %zu bytes under a %zu-byte room", n, size,
	    room);
	CHK(n * size <= room + slack, "%zu blocks of %zu bytes under a %zu-byte room", n, size,
	    room);
	struct sa_scope_stats g1 = gstats();
	CHK(g1.limit_hits > g0.limit_hits, "limit_hits did not grow");
	CHK(g1.reclaim_rounds > g0.reclaim_rounds, "reclaim_rounds did not grow");
	STEP("free, sa_malloc again");
	for (size_t i = 0; i < n; i++)
		sa_free(p[i]);
	for (size_t i = 0; i < n / 2; i++) {
		CHK(p[i] = sa_malloc(size), "block %zu of %zu after the frees", i, n / 2);
		chk_held(lim, slack, __LINE__);
	}
	for (size_t i = 0; i < n / 2; i++)
		sa_free(p[i]);
	STEP("another size after the frees");
	size_t m = (n * size / 2) / other;
	if (m == 0)
		m = 1;
	for (size_t i = 0; i < m; i++)
		CHK(p[i] = sa_malloc(other), "block %zu of %zu of %zu bytes after the frees", i, m,
		    other);
	for (size_t i = 0; i < m; i++)
		sa_free(p[i]);
	_exit(0);
}

static void limit_small_child(void)
{
	limit_malloc_run(1024, MiB(16), 100);
}
static void limit_small100_child(void)
{
	limit_malloc_run(100, MiB(8), 256 << 10);
}
static void limit_large_child(void)
{
	limit_malloc_run(256 << 10, MiB(16), 1000);
}
static void limit_large1m_child(void)
{
	limit_malloc_run(MiB(1), MiB(24), MiB(3));
}
static void limit_huge_child(void)
{
	limit_malloc_run(MiB(3), MiB(32), 256 << 10);
}
static void limit_huge16_child(void)
{
	limit_malloc_run(MiB(16), MiB(64), 1024);
}

static void test_limit_malloc_small(void **state)
{
	(void)state;
	expect_ok("limit_small", NULL);
	expect_ok("limit_small100", NULL);
}

static void test_limit_malloc_large(void **state)
{
	(void)state;
	expect_ok("limit_large", NULL);
	expect_ok("limit_large1m", NULL);
}

static void test_limit_malloc_huge(void **state)
{
	(void)state;
	expect_ok("limit_huge", NULL);
	expect_ok("limit_huge16", NULL);
}

static void limit_option_child(void)
{
	void *w = sa_malloc(16); /* the allocator starts and reads its options */
	sa_free(w);
	struct sa_scope_stats g = gstats();
	CHK(g.limit == MiB(48), "limit=48M gives a limit of %llu", (unsigned long long)g.limit);
	CHK(g.reserve_bytes > 0, "a limit maps the emergency reserve, but reserve_bytes is 0");
	void **p = ptr_array(1024);
	size_t n = 0;
	STEP("1 MiB blocks until NULL");
	for (;;) {
		CHK(n < 1024, "1 GiB of blocks under limit=48M");
		void *b = sa_malloc(MiB(1));
		if (!b)
			break;
		p[n++] = b;
		chk_held(MiB(48), MiB(1), __LINE__);
	}
	CHK(n >= 16 && n <= 48, "%zu blocks of 1 MiB under limit=48M", n);
	STEP("sa_set_limit(0)");
	sa_set_limit(0);
	CHK(gstats().limit == 0, "the limit stayed");
	for (size_t i = 0; i < 8; i++)
		CHK(p[n + i] = sa_malloc(MiB(1)), "no limit: block %zu", i);
	_exit(0);
}

static void test_limit_option(void **state)
{
	(void)state;
	expect_ok("limit_option", "limit=48M");
}

/* The introspection calls are the first calls of the program: they report the option's limit
 * (and the reserve it maps), as they do after an allocation. */
static void limit_option_first_child(void)
{
	size_t held = sa_memory_held();
	struct sa_scope_stats g = gstats();
	CHK(g.limit == MiB(48),
	    "sa_scope_stats() as the program's first call reports limit %llu under limit=48M "
	    "(held %zu)",
	    (unsigned long long)g.limit, held);
	_exit(0);
}

static void test_limit_option_first_call(void **state)
{
	(void)state;
	expect_ok("limit_option_first", "limit=48M");
}

/* ------------------------------------------------------------------ shrinkers -------------- */
#define SHR_OBJ	 8192
#define SHR_MAXN 4096

struct tshrink {
	struct sa_shrinker s;
	struct sa_cache *c;
	pthread_mutex_t lock;
	void *objs[SHR_MAXN];
	size_t n;		     /* lock */
	atomic_int count_calls;	     /* count() calls */
	atomic_int scan_calls;	     /* scan() calls */
	atomic_int depth, max_depth; /* scans in progress on any thread */
	/* no_recursion */
	struct sa_cache *alloc_cache; /* scan allocates one object of it */
	atomic_int alloc_done;
	sa_flags_t flags_in_scan;
	uint64_t rounds_before, rounds_after;
	/* self-unregister */
	int unregister_self;
	atomic_int unregistered; /* set once sa_shrinker_unregister returned */
	atomic_int late_calls;	 /* calls seen after that */
};

static size_t tshrink_count(void *arg)
{
	struct tshrink *t = arg;
	if (atomic_load(&t->unregistered))
		atomic_fetch_add(&t->late_calls, 1);
	atomic_fetch_add(&t->count_calls, 1);
	pthread_mutex_lock(&t->lock);
	size_t n = t->n;
	pthread_mutex_unlock(&t->lock);
	return n;
}

static size_t tshrink_scan(void *arg, size_t nr)
{
	struct tshrink *t = arg;
	if (atomic_load(&t->unregistered))
		atomic_fetch_add(&t->late_calls, 1);
	atomic_fetch_add(&t->scan_calls, 1);
	int d = atomic_fetch_add(&t->depth, 1) + 1;
	if (d > atomic_load(&t->max_depth))
		atomic_store(&t->max_depth, d);
	if (t->alloc_cache) {
		t->flags_in_scan = sa_current_flags(0);
		t->rounds_before = gstats().reclaim_rounds;
		void *o = sa_cache_alloc(t->alloc_cache, SA_NOWARN);
		t->rounds_after = gstats().reclaim_rounds;
		if (o)
			sa_cache_free(t->alloc_cache, o);
		atomic_store(&t->alloc_done, 1);
	}
	if (t->unregister_self) {
		sa_shrinker_unregister(&t->s);
		atomic_store(&t->unregistered, 1);
	}
	size_t freed = 0;
	pthread_mutex_lock(&t->lock);
	while (t->n && freed < nr) {
		sa_cache_free(t->c, t->objs[--t->n]);
		freed++;
	}
	pthread_mutex_unlock(&t->lock);
	atomic_fetch_sub(&t->depth, 1);
	return freed;
}

static struct tshrink *tshrink_new(const char *name, unsigned classes)
{
	struct tshrink *t =
		mmap(NULL, sizeof(*t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHK(t != MAP_FAILED, "mmap");
	struct sa_cache_args a = {.sheaf_capacity = 4};
	t->c = sa_cache_create(name, SHR_OBJ, &a);
	CHK(t->c, "sa_cache_create");
	pthread_mutex_init(&t->lock, NULL);
	t->s = (struct sa_shrinker){.name = name,
				    .classes = classes,
				    .count = tshrink_count,
				    .scan = tshrink_scan,
				    .arg = t};
	return t;
}

static void tshrink_fill(struct tshrink *t, size_t bytes)
{
	size_t n = bytes / SHR_OBJ;
	CHK(n <= SHR_MAXN, "too many objects");
	for (size_t i = 0; i < n; i++) {
		void *o = sa_cache_alloc(t->c, SA_NOWARN);
		CHK(o, "filling shrinker '%s': object %zu of %zu", t->s.name, i, n);
		memset(o, 3, 64);
		t->objs[t->n++] = o;
	}
}

enum { SC_NONE, SC_NOFS, SC_NOIO, SC_NORECLAIM, SC_NOWAIT, SC_FLAG_NOFS, SC_FLAG_NOIO };
static int shrink_case;

/* Allocate `bytes` of 8 KiB objects from a (flags), or until NULL; returns the bytes got. */
static size_t alloc_until(struct sa_cache *a, sa_flags_t flags, size_t bytes, void **p)
{
	size_t n = 0;
	while (n * SHR_OBJ < bytes) {
		void *o = sa_cache_alloc(a, flags | SA_NOWARN);
		if (!o)
			break;
		memset(o, 4, 64);
		p[n++] = o;
	}
	return n * SHR_OBJ;
}

static void shrink_scope_child(void)
{
	struct tshrink *fs = tshrink_new("shr-fs", SA_SHRINK_FS);
	struct tshrink *io = tshrink_new("shr-io", SA_SHRINK_IO);
	struct tshrink *pl = tshrink_new("shr-plain", 0);
	struct sa_cache_args aa = {.sheaf_capacity = 4};
	struct sa_cache *a = sa_cache_create("shr-user", SHR_OBJ, &aa);
	CHK(a, "sa_cache_create");
	void **p = ptr_array(MAXP);
	size_t lim = limit_above(MiB(24));
	(void)lim;
	tshrink_fill(fs, MiB(6));
	tshrink_fill(io, MiB(6));
	tshrink_fill(pl, MiB(6));
	CHK(sa_shrinker_register(&fs->s) == 0, "register fs");
	CHK(sa_shrinker_register(&io->s) == 0, "register io");
	CHK(sa_shrinker_register(&pl->s) == 0, "register plain");
	struct sa_scope_stats g0 = gstats();
	static const sa_flags_t scope_of[] = {
		[SC_NONE] = 0,		 [SC_NOFS] = SA_NOFS,
		[SC_NOIO] = SA_NOIO,	 [SC_NORECLAIM] = SA_NORECLAIM,
		[SC_NOWAIT] = SA_NOWAIT, [SC_FLAG_NOFS] = 0,
		[SC_FLAG_NOIO] = 0};
	sa_flags_t call = shrink_case == SC_FLAG_NOFS	? SA_NOFS
			  : shrink_case == SC_FLAG_NOIO ? SA_NOIO
							: 0;
	unsigned cookie = sa_memalloc_flags_save(scope_of[shrink_case]);
	STEP("allocate past the limit");
	size_t got = alloc_until(a, call, MiB(20), p);
	sa_memalloc_flags_restore(cookie);
	struct sa_scope_stats g1 = gstats();
	int cf = atomic_load(&fs->scan_calls) + atomic_load(&fs->count_calls);
	int ci = atomic_load(&io->scan_calls) + atomic_load(&io->count_calls);
	int cp = atomic_load(&pl->scan_calls) + atomic_load(&pl->count_calls);
	uint64_t sfs = g1.shrinker_calls_fs - g0.shrinker_calls_fs;
	uint64_t sio = g1.shrinker_calls_io - g0.shrinker_calls_io;
	uint64_t sot = g1.shrinker_calls_other - g0.shrinker_calls_other;
	uint64_t skipped = g1.shrinker_skipped - g0.shrinker_skipped;
	char msg[256];
	snprintf(msg, sizeof(msg),
		 "case %d: got %zu MiB; calls fs %d io %d plain %d; stats fs %llu io %llu other "
		 "%llu skipped %llu, reclaim rounds %llu",
		 shrink_case, got >> 20, cf, ci, cp, (unsigned long long)sfs,
		 (unsigned long long)sio, (unsigned long long)sot, (unsigned long long)skipped,
		 (unsigned long long)(g1.reclaim_rounds - g0.reclaim_rounds));
	STEP("check which shrinkers were called");
	CHK(atomic_load(&fs->scan_calls) == (int)sfs && atomic_load(&io->scan_calls) == (int)sio &&
		    atomic_load(&pl->scan_calls) == (int)sot,
	    "the counters do not match the scan calls: %s", msg);
	switch (shrink_case) {
	case SC_NONE:
		CHK(got >= MiB(20), "the shrinkers' memory was not reclaimed: %s", msg);
		CHK(atomic_load(&fs->scan_calls) > 0 || atomic_load(&io->scan_calls) > 0 ||
			    atomic_load(&pl->scan_calls) > 0,
		    "no shrinker called: %s", msg);
		CHK(fs->n + io->n + pl->n <= MiB(18) / SHR_OBJ - MiB(2) / SHR_OBJ,
		    "the shrinkers were not asked for enough: %s", msg);
		break;
	case SC_NOFS:
	case SC_FLAG_NOFS:
		CHK(cf == 0, "an FS shrinker was called under NOFS: %s", msg);
		CHK(atomic_load(&io->scan_calls) > 0 && atomic_load(&pl->scan_calls) > 0,
		    "IO and plain shrinkers may be called under NOFS and their memory was "
		    "needed: %s",
		    msg);
		CHK(skipped > 0, "shrinker_skipped did not grow: %s", msg);
		CHK(got < MiB(20), "more memory than the allowed shrinkers held: %s", msg);
		break;
	case SC_NOIO:
	case SC_FLAG_NOIO:
		CHK(cf == 0 && ci == 0, "an FS or IO shrinker was called under NOIO: %s", msg);
		CHK(atomic_load(&pl->scan_calls) > 0,
		    "the plain shrinker may be called under NOIO and was needed: %s", msg);
		CHK(skipped >= 2, "shrinker_skipped grew by less than 2: %s", msg);
		break;
	case SC_NORECLAIM:
	case SC_NOWAIT:
		CHK(cf == 0 && ci == 0 && cp == 0, "a shrinker was called under %s: %s",
		    shrink_case == SC_NOWAIT ? "NOWAIT" : "NORECLAIM", msg);
		CHK(g1.reclaim_rounds == g0.reclaim_rounds, "reclaim ran: %s", msg);
		CHK(got < MiB(20), "more memory than there was: %s", msg);
		break;
	}
	_exit(0);
}

static void shrink_test(int c)
{
	char name[32];
	snprintf(name, sizeof(name), "shrink_%d", c);
	expect_ok(name, NULL);
}

static void test_shrink_none(void **state)
{
	(void)state;
	shrink_test(SC_NONE);
}
static void test_shrink_nofs(void **state)
{
	(void)state;
	shrink_test(SC_NOFS);
}
static void test_shrink_noio(void **state)
{
	(void)state;
	shrink_test(SC_NOIO);
}
static void test_shrink_noreclaim(void **state)
{
	(void)state;
	shrink_test(SC_NORECLAIM);
}
static void test_shrink_nowait(void **state)
{
	(void)state;
	shrink_test(SC_NOWAIT);
}
static void test_shrink_flags_nofs(void **state)
{
	(void)state;
	shrink_test(SC_FLAG_NOFS);
}
static void test_shrink_flags_noio(void **state)
{
	(void)state;
	shrink_test(SC_FLAG_NOIO);
}

static void shrink_forbidden_child(void)
{
	struct tshrink *fs = tshrink_new("shr-fs-only", SA_SHRINK_FS);
	struct tshrink *pl = tshrink_new("shr-plain-empty", 0);
	struct sa_cache_args aa = {.sheaf_capacity = 4};
	struct sa_cache *a = sa_cache_create("shr-user", SHR_OBJ, &aa);
	void **p = ptr_array(MAXP);
	limit_above(MiB(16));
	tshrink_fill(fs, MiB(12));
	CHK(sa_shrinker_register(&fs->s) == 0 && sa_shrinker_register(&pl->s) == 0, "register");
	struct sa_scope_stats g0 = gstats();
	unsigned cookie = sa_memalloc_nofs_save();
	STEP("allocate 8 MiB under NOFS: only the FS shrinker could give it");
	errno = 0;
	size_t got = alloc_until(a, 0, MiB(8), p);
	int err = errno;
	sa_memalloc_nofs_restore(cookie);
	struct sa_scope_stats g1 = gstats();
	CHK(got < MiB(8), "got %zu bytes: more than there was without the FS shrinker", got);
	CHK(err == ENOMEM, "the failure's errno is %d, not ENOMEM", err);
	CHK(atomic_load(&fs->count_calls) == 0 && atomic_load(&fs->scan_calls) == 0,
	    "the FS shrinker was called under NOFS (count %d, scan %d)",
	    atomic_load(&fs->count_calls), atomic_load(&fs->scan_calls));
	CHK(g1.shrinker_calls_fs == g0.shrinker_calls_fs, "shrinker_calls_fs grew");
	CHK(g1.shrinker_skipped > g0.shrinker_skipped, "shrinker_skipped did not grow");
	STEP("outside the scope the FS shrinker gives its memory");
	size_t more = alloc_until(a, 0, MiB(8), p + got / SHR_OBJ);
	CHK(more >= MiB(8), "only %zu more bytes with the FS shrinker allowed", more);
	CHK(atomic_load(&fs->scan_calls) > 0, "the FS shrinker was not called outside NOFS");
	_exit(0);
}

static void test_shrink_forbidden_fails(void **state)
{
	(void)state;
	expect_ok("shrink_forbidden", NULL);
}

static void shrink_recursion_child(void)
{
	struct tshrink *t = tshrink_new("shr-allocating", 0);
	t->alloc_cache = sa_cache_create("shr-alloc-in-scan", 16384, NULL);
	struct sa_cache_args aa = {.sheaf_capacity = 4};
	struct sa_cache *a = sa_cache_create("shr-user", SHR_OBJ, &aa);
	CHK(t->alloc_cache && a, "sa_cache_create");
	void **p = ptr_array(MAXP);
	limit_above(MiB(8));
	tshrink_fill(t, MiB(6));
	CHK(sa_shrinker_register(&t->s) == 0, "register");
	STEP("allocate past the limit");
	size_t got = alloc_until(a, 0, MiB(6), p);
	CHK(atomic_load(&t->alloc_done), "the shrinker was not called (got %zu bytes)", got);
	CHK(t->flags_in_scan & SA_NORECLAIM, "inside scan the flags are %#x: no SA_NORECLAIM",
	    t->flags_in_scan);
	CHK(t->rounds_after == t->rounds_before,
	    "an allocation inside scan ran %llu reclaim round(s)",
	    (unsigned long long)(t->rounds_after - t->rounds_before));
	CHK(atomic_load(&t->max_depth) == 1, "scan was entered recursively (depth %d)",
	    atomic_load(&t->max_depth));
	CHK(!(sa_current_flags(0) & SA_NORECLAIM), "NORECLAIM stayed after reclaim");
	CHK(!sa_in_reclaim, "still marked inside reclaim");
	_exit(0);
}

static void test_shrink_no_recursion(void **state)
{
	(void)state;
	expect_ok("shrink_recursion", NULL);
}

static void shrink_self_unregister_child(void)
{
	struct tshrink *t = tshrink_new("shr-self", 0);
	t->unregister_self = 1;
	struct sa_cache_args aa = {.sheaf_capacity = 4};
	struct sa_cache *a = sa_cache_create("shr-user", SHR_OBJ, &aa);
	void **p = ptr_array(MAXP);
	limit_above(MiB(8));
	tshrink_fill(t, MiB(6));
	CHK(sa_shrinker_register(&t->s) == 0, "register");
	STEP("allocate past the limit: the shrinker unregisters itself");
	size_t got = alloc_until(a, 0, MiB(6), p);
	CHK(atomic_load(&t->unregistered), "the shrinker was not called (got %zu)", got);
	CHK(got >= MiB(6), "its memory did not come back: got %zu", got);
	STEP("allocate past the limit again: it is not called");
	int calls = atomic_load(&t->scan_calls) + atomic_load(&t->count_calls);
	alloc_until(a, 0, MiB(8), p + got / SHR_OBJ);
	CHK(atomic_load(&t->scan_calls) + atomic_load(&t->count_calls) == calls,
	    "called after it unregistered itself");
	STEP("register it again");
	t->unregister_self = 0;
	atomic_store(&t->unregistered, 0);
	CHK(sa_shrinker_register(&t->s) == 0, "registering it again");
	sa_shrinker_unregister(&t->s);
	_exit(0);
}

static void test_shrink_self_unregister(void **state)
{
	(void)state;
	expect_ok("shrink_self_unregister", NULL);
}

/* --- register/unregister while other threads' reclaim calls shrinkers --- */
#define STRESS_SHRINKERS 6
#define STRESS_THREADS	 3
struct sshrink {
	struct sa_shrinker s;
	atomic_int live; /* 1 from before register until unregister returns */
};
static struct sshrink sshr[STRESS_SHRINKERS];
static atomic_int stress_stop, stress_violations;
static atomic_long stress_calls;

static size_t sshrink_count(void *arg)
{
	struct sshrink *x = arg;
	if (!atomic_load(&x->live))
		atomic_fetch_add(&stress_violations, 1);
	atomic_fetch_add(&stress_calls, 1);
	return 3;
}

static size_t sshrink_scan(void *arg, size_t nr)
{
	struct sshrink *x = arg;
	(void)nr;
	if (!atomic_load(&x->live))
		atomic_fetch_add(&stress_violations, 1);
	void *o = sa_malloc(200); /* a shrinker may allocate */
	sa_free(o);
	for (int i = 0; i < 20; i++) /* a scan that takes a while: unregister must wait */
		sched_yield();
	if (!atomic_load(&x->live))
		atomic_fetch_add(&stress_violations, 1);
	return 0;
}

static void *stress_alloc(void *arg)
{
	(void)arg;
	void **p = ptr_array(4096);
	while (!atomic_load(&stress_stop)) {
		size_t n = 0;
		while (n < 4096 && !atomic_load(&stress_stop) && (p[n] = sa_malloc(64 << 10)))
			n++;
		for (size_t i = 0; i < n; i++)
			sa_free(p[i]);
	}
	return NULL;
}

static void shrink_stress_child(void)
{
	limit_above(MiB(12));
	for (int i = 0; i < STRESS_SHRINKERS; i++)
		sshr[i].s = (struct sa_shrinker){.name = "stress",
						 .classes = (unsigned)i % 3,
						 .count = sshrink_count,
						 .scan = sshrink_scan,
						 .arg = &sshr[i]};
	pthread_t t[STRESS_THREADS];
	for (int i = 0; i < STRESS_THREADS; i++)
		CHK(pthread_create(&t[i], NULL, stress_alloc, NULL) == 0, "pthread_create");
	STEP("register and unregister while reclaim calls shrinkers");
	long cycles = 0;
	double guard = now_s() + GUARD_S / 2;
	while (cycles < 2000 || atomic_load(&stress_calls) < 300) {
		CHK(now_s() < guard, "after %ld cycles only %ld shrinker calls", cycles,
		    atomic_load(&stress_calls));
		if (cycles >= 2000) /* enough cycles: leave the CPU to the allocating threads (under
				     * valgrind, which runs one thread at a time, this loop
				     * starved them: 41 million cycles, 250 calls in 120 s) */
			usleep(200);
		struct sshrink *x = &sshr[cycles % STRESS_SHRINKERS];
		if (atomic_load(&x->live)) {
			sa_shrinker_unregister(&x->s);
			atomic_store(&x->live, 0);
		} else {
			atomic_store(&x->live, 1);
			int r = sa_shrinker_register(&x->s);
			CHK(r == 0, "register of shrinker %ld (cycle %ld) returned %d",
			    (long)(x - sshr), cycles, r);
		}
		cycles++;
	}
	atomic_store(&stress_stop, 1);
	for (int i = 0; i < STRESS_THREADS; i++)
		pthread_join(t[i], NULL);
	CHK(atomic_load(&stress_violations) == 0,
	    "%d call(s) of a shrinker after sa_shrinker_unregister returned",
	    atomic_load(&stress_violations));
	for (int i = 0; i < STRESS_SHRINKERS; i++)
		sa_shrinker_unregister(&sshr[i].s);
	_exit(0);
}

static void test_shrink_register_stress(void **state)
{
	(void)state;
	expect_ok("shrink_stress", NULL);
}

/* --- unregister waiting for another thread's round --- */
static atomic_int in_scan;
static _Atomic pid_t unregistering_tid; /* written by the thread that unregisters */
static struct tshrink *slow_t;

/* Is thread tid blocked in futex (a lock or condition wait)? /proc/self/task/T/syscall */
static int blocked_in_futex(pid_t tid)
{
	char path[64], buf[64] = "";
	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t r = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (r <= 0)
		return 0;
	buf[r] = 0;
	return atoi(buf) == __NR_futex && buf[0] != '-';
}

static size_t slow_scan(void *arg, size_t nr)
{
	atomic_store(&in_scan, 1);
	/* return only once the unregistering thread waits for this round */
	double guard = now_s() + GUARD_S / 4;
	while (!blocked_in_futex(unregistering_tid) && now_s() < guard)
		sched_yield();
	return tshrink_scan(arg, nr);
}

/* Allocates 64-byte objects (slab bitmaps of 128 bytes: no 64-byte metadata block) until the
 * shrinker was called. */
static void *slow_allocator(void *arg)
{
	void **p = arg;
	struct sa_cache *a = sa_cache_create("shr-user-64", 64, NULL);
	size_t n = 0;
	while (n < MAXP && !atomic_load(&slow_t->scan_calls) &&
	       (p[n] = sa_cache_alloc(a, SA_NOWARN)) != NULL)
		n++;
	return NULL;
}

static void shrink_unregister_waits_child(void)
{
	slow_t = tshrink_new("shr-slow", 0);
	slow_t->s.scan = slow_scan;
	void **p = ptr_array(MAXP);
	limit_above(MiB(8));
	tshrink_fill(slow_t, MiB(6));
	CHK(sa_shrinker_register(&slow_t->s) == 0, "register");
	unregistering_tid = (pid_t)syscall(SYS_gettid);
	pthread_t t;
	CHK(pthread_create(&t, NULL, slow_allocator, p) == 0, "pthread_create");
	while (!atomic_load(&in_scan))
		sched_yield();
	STEP("unregister while another thread's round is in its scan");
	sa_shrinker_unregister(&slow_t->s);
	atomic_store(&slow_t->unregistered, 1);
	pthread_join(t, NULL);
	CHK(atomic_load(&slow_t->late_calls) == 0, "called after unregister returned");
	STEP("the registry's node was freed once");
	/* white box: a node is a 64-byte metadata block; freed twice, the next two metadata
	 * allocations of that class are the same block */
	void *m1 = sa_meta_alloc(sizeof(void *) * 3);
	void *m2 = sa_meta_alloc(sizeof(void *) * 3);
	CHK(m1 != m2,
	    "two metadata allocations returned the same block %p: the unregistered "
	    "shrinker's node was freed twice (by the round and by unregister)",
	    m1);
	STEP("register it again");
	atomic_store(&slow_t->unregistered, 0);
	int r = sa_shrinker_register(&slow_t->s);
	CHK(r == 0, "registering the shrinker again returned %d", r);
	sa_shrinker_unregister(&slow_t->s);
	_exit(0);
}

static void test_shrink_unregister_waits(void **state)
{
	(void)state;
	expect_ok("shrink_unregister_waits", NULL);
}

/* --- fork while another thread's round is inside a shrinker's scan --- */
#define FORK_CHILD_S \
	60 /* a grandchild still running by then waits for something that never comes */
static atomic_int gate_open;
static struct sa_cache *round_cache; /* 64-byte objects: allocated until a round ran */

/* held in its scan until gate_open: the round stays open across the fork */
static size_t gate_scan(void *arg, size_t nr)
{
	atomic_store(&in_scan, 1);
	double guard = now_s() + GUARD_S / 2;
	while (!atomic_load(&gate_open) && now_s() < guard)
		usleep(1000);
	return tshrink_scan(arg, nr);
}

/* Allocates from round_cache until slow_t's scan was called (a reclaim round ran it). */
static void *round_allocator(void *arg)
{
	void **p = arg;
	size_t n = 0;
	while (n < MAXP && !atomic_load(&slow_t->scan_calls) &&
	       (p[n] = sa_cache_alloc(round_cache, SA_NOWARN)) != NULL)
		n++;
	return NULL;
}

static void *unregister_main(void *arg)
{
	struct tshrink *t = arg;
	unregistering_tid = (pid_t)syscall(SYS_gettid);
	sa_shrinker_unregister(&t->s);
	return NULL;
}

/* One sa_shrinker_unregister that waits for another thread's round inside the scan (as in
 * shrink_unregister_waits): a wait on shrinker_idle and the round's broadcast. */
static void unregister_during_round(const char *name, void **p)
{
	atomic_store(&in_scan, 0);
	slow_t = tshrink_new(name, 0);
	slow_t->s.scan = slow_scan;
	limit_above(MiB(8));
	tshrink_fill(slow_t, MiB(6));
	CHK(sa_shrinker_register(&slow_t->s) == 0, "register %s", name);
	unregistering_tid = (pid_t)syscall(SYS_gettid);
	pthread_t t;
	CHK(pthread_create(&t, NULL, round_allocator, p) == 0, "pthread_create");
	while (!atomic_load(&in_scan))
		sched_yield();
	sa_shrinker_unregister(&slow_t->s);
	pthread_join(t, NULL);
}

static void shrink_fork_mid_scan_child(void)
{
	round_cache = sa_cache_create("shr-round-64", 64, NULL);
	CHK(round_cache, "sa_cache_create");
	struct tshrink *gate = tshrink_new("shr-gate", 0);
	gate->s.scan = gate_scan;
	struct tshrink *other = tshrink_new("shr-other", 0);
	void **p = ptr_array(MAXP);
	limit_above(MiB(8));
	tshrink_fill(gate, MiB(6));
	/* the registry is newest first: other's count and scan come after gate's, but the
	 * round's snapshot holds both from its start */
	CHK(sa_shrinker_register(&other->s) == 0, "register other");
	CHK(sa_shrinker_register(&gate->s) == 0, "register gate");
	slow_t = gate;
	pthread_t a, b;
	CHK(pthread_create(&a, NULL, round_allocator, p) == 0, "pthread_create");
	STEP("wait for the round to be inside gate's scan");
	while (!atomic_load(&in_scan))
		sched_yield();
	/* and a thread waiting in sa_shrinker_unregister(gate) for that round: a waiter on
	 * shrinker_idle that does not exist in the child */
	unregistering_tid = 0;
	CHK(pthread_create(&b, NULL, unregister_main, gate) == 0, "pthread_create");
	double guard = now_s() + GUARD_S / 4;
	while ((!unregistering_tid || !blocked_in_futex(unregistering_tid)) && now_s() < guard)
		sched_yield();
	CHK(blocked_in_futex(unregistering_tid), "sa_shrinker_unregister did not wait");
	STEP("fork while another thread's round is inside a scan");
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	CHK(pid >= 0, "fork");
	if (pid == 0) {
		alarm(FORK_CHILD_S);
		child_step = "grandchild: unregister a shrinker the parent's round held";
		sa_shrinker_unregister(&other->s);
		/* two waits for a round of this process, each ended by the round's broadcast
		 * (glibc: the second hangs while the condition variable counts the parent's
		 * waiter) */
		child_step = "grandchild: unregister during a round, twice";
		void **q = ptr_array(MAXP);
		unregister_during_round("shr-child-1", q);
		unregister_during_round("shr-child-2", q + MAXP / 2);
		_exit(0);
	}
	int st = 0;
	pid_t r;
	double deadline = now_s() + FORK_CHILD_S + 30;
	while ((r = waitpid(pid, &st, WNOHANG)) == 0 && now_s() < deadline)
		usleep(10000);
	if (r == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
	}
	atomic_store(&gate_open, 1);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	CHK(r == pid && !(WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM),
	    "the child hung for %d s in sa_shrinker_unregister: waiting for a shrinker round of a "
	    "thread that does not exist in it (or on a condition variable that counts one)",
	    FORK_CHILD_S);
	CHK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child failed: %s %d",
	    WIFEXITED(st) ? "status" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
	_exit(0);
}

static void test_shrink_fork_mid_scan(void **state)
{
	(void)state;
#if defined(__SANITIZE_THREAD__)
	/* the child creates threads after a multi-threaded fork: TSan's runtime refuses that, and
	 * with die_after_fork=0 it dies of a thread id the parent's threads left in its tables */
	skip();
#endif
	expect_ok("shrink_fork_mid_scan", NULL);
}

static size_t dummy_count(void *arg)
{
	(void)arg;
	return 0;
}
static size_t dummy_scan(void *arg, size_t nr)
{
	(void)arg;
	(void)nr;
	return 0;
}

static void test_shrink_register_args(void **state)
{
	(void)state;
	struct sa_shrinker ok = {.name = "args-ok", .count = dummy_count, .scan = dummy_scan};
	struct sa_shrinker nocount = {.name = "args-nocount", .scan = dummy_scan};
	struct sa_shrinker noscan = {.name = "args-noscan", .count = dummy_count};
	struct sa_shrinker badclass = {
		.name = "args-class", .classes = 1u << 2, .count = dummy_count, .scan = dummy_scan};
	struct sa_shrinker allbits = {
		.name = "args-bits", .classes = ~0u, .count = dummy_count, .scan = dummy_scan};
	struct capture cap;
	capture_begin(&cap);
	int r_null = sa_shrinker_register(NULL);
	int r_nocount = sa_shrinker_register(&nocount);
	int r_noscan = sa_shrinker_register(&noscan);
	int r_class = sa_shrinker_register(&badclass);
	int r_bits = sa_shrinker_register(&allbits);
	int r_ok = sa_shrinker_register(&ok);
	int r_twice = sa_shrinker_register(&ok);
	const char *text = capture_end(&cap);
	assert_int_equal(r_null, -EINVAL);
	assert_int_equal(r_nocount, -EINVAL);
	assert_int_equal(r_noscan, -EINVAL);
	assert_int_equal(r_class, -EINVAL);
	assert_int_equal(r_bits, -EINVAL);
	assert_int_equal(r_ok, 0);
	assert_int_equal(r_twice, -EEXIST);
	assert_true(count_substr(text, "sa_shrinker_register") >= 5);
	capture_free(&cap);
	sa_shrinker_unregister(&ok);
	sa_shrinker_unregister(&ok);	   /* twice: nothing */
	sa_shrinker_unregister(&badclass); /* never registered: nothing */
	sa_shrinker_unregister(NULL);
	assert_int_equal(sa_shrinker_register(&ok), 0); /* again after unregister */
	sa_shrinker_unregister(&ok);
	struct sa_shrinker fsio = {.name = "args-fsio",
				   .classes = SA_SHRINK_FS | SA_SHRINK_IO,
				   .count = dummy_count,
				   .scan = dummy_scan};
	assert_int_equal(sa_shrinker_register(&fsio), 0);
	sa_shrinker_unregister(&fsio);
}

/* ------------------------------------------------------------------ SA_NOFAIL -------------- */
static void **holder_p;
static size_t holder_n;
static atomic_int holder_full, holder_freeing;

static void *nofail_holder(void *arg)
{
	struct sa_cache *c = arg;
	holder_p = ptr_array(MAXP);
	while (holder_n < MAXP && (holder_p[holder_n] = sa_cache_alloc(c, SA_NOWARN)))
		holder_n++;
	atomic_store(&holder_full, 1);
	/* free once the NOFAIL allocation is seen waiting: no sleep as synchronization */
	while (gstats().nofail_retries == 0)
		sched_yield();
	atomic_store(&holder_freeing, 1);
	for (size_t i = 0; i < holder_n; i++)
		sa_cache_free(c, holder_p[i]);
	return NULL;
}

static int nofail_malloc;

static void nofail_wait_child(void)
{
	struct sa_cache *c = sa_cache_create("nofail-hold", 4096, NULL);
	struct sa_cache *d = sa_cache_create("nofail-want", 8192, NULL);
	CHK(c && d, "sa_cache_create");
	CHK(gstats().reserve_free == 0, "reserve=0 left a reserve of %llu bytes",
	    (unsigned long long)gstats().reserve_free);
	limit_above(MiB(8));
	pthread_t t;
	CHK(pthread_create(&t, NULL, nofail_holder, c) == 0, "pthread_create");
	while (!atomic_load(&holder_full))
		sched_yield();
	STEP("SA_NOFAIL at the limit");
	CHK(gstats().nofail_retries == 0, "nofail_retries before any NOFAIL allocation");
	void *o = nofail_malloc ? sa_malloc_flags(256 << 10, SA_NOFAIL)
				: sa_cache_alloc(d, SA_NOFAIL);
	CHK(o, "SA_NOFAIL returned NULL");
	memset(o, 1, nofail_malloc ? 256 << 10 : 8192);
	CHK(atomic_load(&holder_freeing), "NOFAIL succeeded before the other thread freed");
	CHK(gstats().nofail_retries > 0, "nofail_retries is 0");
	pthread_join(t, NULL);
	_exit(0);
}

static void nofail_wait_malloc_child(void)
{
	nofail_malloc = 1;
	nofail_wait_child();
}

static void test_nofail_waits(void **state)
{
	(void)state;
	expect_ok("nofail_wait", "reserve=0");
	assert_true(count_substr(child_err, "SA_NOFAIL allocation") >= 1);
	assert_true(count_substr(child_err, "is waiting for memory") >= 1);
	expect_ok("nofail_wait_malloc", "reserve=0");
	assert_true(count_substr(child_err, "is waiting for memory") >= 1);
}

static int nofail_abort_kind; /* 0 cache, 1 malloc, 2 per-call NOWAIT without a scope */

static void nofail_abort_child(void)
{
	struct sa_cache *c = sa_cache_create("nofail-abort-cache", 8192, NULL);
	CHK(c, "sa_cache_create");
	void *warm = sa_malloc(100);
	sa_free(warm);
	sa_trim(); /* no dirty units: every unit needs a charge */
	CHK(sa_set_limit(sa_memory_held()) == 0, "sa_set_limit");
	CHK(gstats().reserve_bytes == 0, "reserve=0, but reserve_bytes is %llu",
	    (unsigned long long)gstats().reserve_bytes);
	unsigned cookie = nofail_abort_kind == 2 ? 0 : sa_memalloc_nowait_save();
	STEP("SA_NOFAIL inside a NOWAIT scope, no memory, no reserve");
	void *o = nofail_abort_kind == 1   ? sa_malloc_flags(300000, SA_NOFAIL)
		  : nofail_abort_kind == 2 ? sa_cache_alloc(c, SA_NOFAIL | SA_NOWAIT)
					   : sa_cache_alloc(c, SA_NOFAIL);
	(void)cookie;
	CHK(0, "SA_NOFAIL inside NOWAIT with no memory returned %p instead of aborting", o);
}

static void nofail_abort_malloc_child(void)
{
	nofail_abort_kind = 1;
	nofail_abort_child();
}

static void nofail_abort_flag_child(void)
{
	nofail_abort_kind = 2;
	nofail_abort_child();
}

static void expect_abort(const char *name, const char *what, int scoped)
{
	int st = run_scenario(name, "reserve=0");
	int aborted = st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
	if (!aborted)
		report_status(name, st);
	assert_true(aborted);
	if (!count_substr(child_err, "SA_NOFAIL") || !count_substr(child_err, what) ||
	    (scoped && !count_substr(child_err, "SA_NOWAIT scope")) ||
	    !count_substr(child_err, "abort"))
		print_error("the report does not name the request (%s) or the scope:\n%s\n", what,
			    child_err);
	assert_true(count_substr(child_err, "SA_NOFAIL") >= 1);
	assert_true(count_substr(child_err, what) >= 1);
	if (scoped)
		assert_true(count_substr(child_err, "SA_NOWAIT scope") >= 1);
	else
		assert_true(count_substr(child_err, "SA_NOWAIT") >= 1);
}

static void test_nofail_nowait_aborts(void **state)
{
	(void)state;
	expect_abort("nofail_abort", "nofail-abort-cache", 1);
	expect_abort("nofail_abort_flag", "nofail-abort-cache", 0);
}

static void test_nofail_nowait_aborts_malloc(void **state)
{
	(void)state;
	expect_abort("nofail_abort_malloc", "300000", 1);
}

static void nofail_reserve_child(void)
{
	struct sa_cache_args a = {.sheaf_capacity = 4};
	struct sa_cache *c = sa_cache_create("nofail-reserve", 8192, &a);
	struct sa_cache *d = sa_cache_create("high-reserve", 2048, &a);
	CHK(c && d, "sa_cache_create");
	sa_trim();
	sa_set_limit(sa_memory_held() + MiB(64)); /* maps the reserve */
	sa_trim();
	CHK(sa_set_limit(sa_memory_held()) == 0, "sa_set_limit"); /* nothing more fits */
	struct sa_scope_stats g0 = gstats();
	CHK(g0.reserve_bytes > 0 && g0.reserve_free == g0.reserve_bytes,
	    "reserve %llu bytes, %llu free", (unsigned long long)g0.reserve_bytes,
	    (unsigned long long)g0.reserve_free);
	unsigned cookie = sa_memalloc_nowait_save();
	STEP("SA_NOFAIL inside NOWAIT at the limit");
	void *o = sa_cache_alloc(c, SA_NOFAIL);
	CHK(o, "NOFAIL gave NULL");
	memset(o, 1, 8192);
	STEP("SA_HIGH inside NOWAIT at the limit");
	void *h = sa_cache_alloc(d, SA_HIGH | SA_NOWARN);
	CHK(h, "SA_HIGH inside NOWAIT at the limit gave NULL (the reserve has room)");
	memset(h, 1, 2048);
	STEP("a plain NOWAIT allocation at the limit");
	struct sa_cache *e = sa_cache_create("plain-at-limit", 4096, &a);
	CHK(!e, "sa_cache_create inside a NOWAIT scope worked");
	sa_memalloc_nowait_restore(cookie);
	e = sa_cache_create("plain-at-limit", 4096, &a);
	cookie = sa_memalloc_nowait_save();
	void *pl = sa_cache_alloc(e, SA_NOWARN);
	sa_memalloc_nowait_restore(cookie);
	CHK(!pl, "a NOWAIT allocation without HIGH/NOFAIL got memory at the limit");
	struct sa_scope_stats g1 = gstats();
	CHK(g1.reserve_allocs >= g0.reserve_allocs + 2, "reserve_allocs grew by %llu",
	    (unsigned long long)(g1.reserve_allocs - g0.reserve_allocs));
	CHK(g1.reserve_free < g0.reserve_free, "reserve_free did not shrink");
	STEP("free and shrink: the reserve comes back");
	sa_cache_free(c, o);
	sa_cache_free(d, h);
	CHK(sa_cache_shrink(c) == 0 && sa_cache_shrink(d) == 0, "sa_cache_shrink");
	struct sa_scope_stats g2 = gstats();
	CHK(g2.reserve_free == g0.reserve_free, "reserve_free %llu after the frees, was %llu",
	    (unsigned long long)g2.reserve_free, (unsigned long long)g0.reserve_free);
	_exit(0);
}

static void test_nofail_nowait_reserve(void **state)
{
	(void)state;
	expect_ok("nofail_reserve", NULL);
}

/*
 * The reserve is for allocations that may use it (policy.h: SA_HIGH, SA_NORECLAIM, SA_NOFAIL).
 * At the limit, inside a NOWAIT scope, one SA_HIGH allocation is served from the reserve; then
 * plain NOWAIT allocations of the same cache (which may not use the reserve, and for which there
 * is no other memory) must get NULL, not objects of the reserve segment.
 */
static int in_reserve(const void *p)
{
	struct sa_segment *seg = sa_segment_of(p);
	return seg && sa_segment_is_reserve(seg);
}

static void reserve_private_child(void)
{
	struct sa_cache *c = sa_cache_create("reserve-private", 2048, NULL);
	CHK(c, "sa_cache_create");
	sa_trim();
	sa_set_limit(sa_memory_held() + MiB(64)); /* maps the reserve */
	sa_trim();
	CHK(sa_set_limit(sa_memory_held()) == 0, "sa_set_limit");
	struct sa_scope_stats g0 = gstats();
	unsigned cookie = sa_memalloc_nowait_save();
	STEP("one SA_HIGH allocation at the limit");
	void *h = sa_cache_alloc(c, SA_HIGH);
	CHK(h && in_reserve(h), "SA_HIGH at the limit: %p, not a reserve object", h);
	STEP("plain NOWAIT allocations of the same cache");
	int leaked = 0, served = 0;
	void *p[64];
	for (int i = 0; i < 64; i++) {
		p[i] = sa_cache_alloc(c, SA_NOWARN);
		if (p[i]) {
			served++;
			leaked += in_reserve(p[i]);
		}
	}
	sa_memalloc_nowait_restore(cookie);
	struct sa_scope_stats g1 = gstats();
	CHK(leaked == 0,
	    "%d of %d plain NOWAIT allocations at the limit got reserve memory (reserve %llu "
	    "bytes, %llu free; reserve_allocs +%llu): the objects an SA_HIGH refill took from the "
	    "reserve went into the shared per-CPU sheaf",
	    leaked, served, (unsigned long long)g1.reserve_bytes,
	    (unsigned long long)g1.reserve_free,
	    (unsigned long long)(g1.reserve_allocs - g0.reserve_allocs));
	_exit(0);
}

static void test_reserve_private(void **state)
{
	(void)state;
	expect_ok("reserve_private", NULL);
}

/* ------------------------------------------------------------------ scenarios -------------- */
static void shrink_child_0(void)
{
	shrink_case = 0;
	shrink_scope_child();
}
static void shrink_child_1(void)
{
	shrink_case = 1;
	shrink_scope_child();
}
static void shrink_child_2(void)
{
	shrink_case = 2;
	shrink_scope_child();
}
static void shrink_child_3(void)
{
	shrink_case = 3;
	shrink_scope_child();
}
static void shrink_child_4(void)
{
	shrink_case = 4;
	shrink_scope_child();
}
static void shrink_child_5(void)
{
	shrink_case = 5;
	shrink_scope_child();
}
static void shrink_child_6(void)
{
	shrink_case = 6;
	shrink_scope_child();
}

static const struct {
	const char *name;
	void (*fn)(void);
} scenarios[] = {
	{"limit_cache", limit_cache_child},
	{"limit_small", limit_small_child},
	{"limit_small100", limit_small100_child},
	{"limit_large", limit_large_child},
	{"limit_large1m", limit_large1m_child},
	{"limit_huge", limit_huge_child},
	{"limit_huge16", limit_huge16_child},
	{"limit_option", limit_option_child},
	{"limit_option_first", limit_option_first_child},
	{"shrink_0", shrink_child_0},
	{"shrink_1", shrink_child_1},
	{"shrink_2", shrink_child_2},
	{"shrink_3", shrink_child_3},
	{"shrink_4", shrink_child_4},
	{"shrink_5", shrink_child_5},
	{"shrink_6", shrink_child_6},
	{"shrink_forbidden", shrink_forbidden_child},
	{"shrink_recursion", shrink_recursion_child},
	{"shrink_self_unregister", shrink_self_unregister_child},
	{"shrink_stress", shrink_stress_child},
	{"shrink_unregister_waits", shrink_unregister_waits_child},
	{"shrink_fork_mid_scan", shrink_fork_mid_scan_child},
	{"nofail_wait", nofail_wait_child},
	{"nofail_wait_malloc", nofail_wait_malloc_child},
	{"nofail_abort", nofail_abort_child},
	{"nofail_abort_malloc", nofail_abort_malloc_child},
	{"nofail_abort_flag", nofail_abort_flag_child},
	{"nofail_reserve", nofail_reserve_child},
	{"reserve_private", reserve_private_child},
};

static void (*scenario_fn(const char *name))(void)
{
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
		if (strcmp(scenarios[i].name, name) == 0)
			return scenarios[i].fn;
	return NULL;
}

static int run_scenario(const char *name, const char *extra_opts)
{
	void (*fn)(void) = scenario_fn(name);
	assert_non_null(fn);
	FILE *err = tmpfile();
	assert_non_null(err);
	char opts[512] = "";
	if (extra_opts) {
		const char *o = getenv("SHEAFALLOC_OPTIONS");
		snprintf(opts, sizeof(opts), "%s%s%s", o && *o ? o : "", o && *o ? "," : "",
			 extra_opts);
	}
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(fileno(err), 2);
		if (extra_opts) {
			setenv("SHEAFALLOC_OPTIONS", opts, 1);
			execl(self_path, self_path, "--child", name, (char *)NULL);
			_exit(127);
		}
		child_step = name;
		fn();
		_exit(0);
	}
	int st = wait_child(pid);
	read_err(err);
	return st;
}

int main(int argc, char **argv)
{
	find_self();
	if (argc == 3 && strcmp(argv[1], "--child") == 0) {
		void (*fn)(void) = scenario_fn(argv[2]);
		if (!fn)
			return 2;
		child_step = argv[2];
		fn();
		return 0;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_limit_cache),
		cmocka_unit_test(test_limit_malloc_small),
		cmocka_unit_test(test_limit_malloc_large),
		cmocka_unit_test(test_limit_malloc_huge),
		cmocka_unit_test(test_limit_option),
		cmocka_unit_test(test_limit_option_first_call),
		cmocka_unit_test(test_shrink_none),
		cmocka_unit_test(test_shrink_nofs),
		cmocka_unit_test(test_shrink_noio),
		cmocka_unit_test(test_shrink_noreclaim),
		cmocka_unit_test(test_shrink_nowait),
		cmocka_unit_test(test_shrink_flags_nofs),
		cmocka_unit_test(test_shrink_flags_noio),
		cmocka_unit_test(test_shrink_forbidden_fails),
		cmocka_unit_test(test_shrink_no_recursion),
		cmocka_unit_test(test_shrink_self_unregister),
		cmocka_unit_test(test_shrink_unregister_waits),
		cmocka_unit_test(test_shrink_fork_mid_scan),
		cmocka_unit_test(test_shrink_register_stress),
		cmocka_unit_test(test_shrink_register_args),
		cmocka_unit_test(test_nofail_waits),
		cmocka_unit_test(test_nofail_nowait_aborts),
		cmocka_unit_test(test_nofail_nowait_aborts_malloc),
		cmocka_unit_test(test_nofail_nowait_reserve),
		cmocka_unit_test(test_reserve_private),
	};
	(void)sanitizer_or_valgrind;
	return cmocka_run_group_tests_name("limit", tests, NULL, NULL);
}
