/*
 * tests/unit/pin.c — SA_PIN: "memory comes from locked (mlock'ed, never swapped) slabs"
 * (CONTRACT.md), as a scope (sa_memalloc_pin_save) and as a per-call flag.
 *
 * Locked memory is process-wide (VmLck in /proc/self/status, RLIMIT_MEMLOCK), so every scenario
 * runs in a forked child.
 *
 *   test_pin_scope_cache   objects allocated inside a PIN scope come from the cache's pinned
 *                          companion, whose slabs are mlock'ed: VmLck grows by at least a slab,
 *                          pinned_slabs and pin_allocs grow; sa_cache_free(parent, obj) and
 *                          sa_free take them back without a report; after sa_cache_shrink the
 *                          slabs are munlock'ed (VmLck back); objects outside the scope are not
 *                          pinned
 *   test_pin_flag_cache    the same with the per-call flag SA_PIN (alloc, alloc_node, bulk)
 *   test_pin_malloc        sa_malloc, sa_calloc and sa_realloc inside a PIN scope: small blocks
 *                          come from pinned slabs, large (256 KiB) and huge (3 MiB) blocks are
 *                          locked as a whole (VmLck grows by their size), and are unlocked when
 *                          freed
 *   test_pin_sheaf         sa_sheaf_prefill(c, SA_PIN, n): the n objects are pinned ones
 *   test_pin_mlock_fails   without CAP_IPC_LOCK and with RLIMIT_MEMLOCK at 64 KiB, pinned
 *                          allocations (objects, large, huge blocks) fail cleanly: NULL, errno
 *                          ENOMEM, one "mlock ... failed" report however many fail, pin_failures
 *                          grows; unpinned allocations keep working. Skipped under valgrind and
 *                          the sanitizers (rlimits).
 * Under ASan and TSan, whose runtimes make mlock a no-op, the VmLck checks are left out.
 */
#include "sa_test.h"

#include <linux/capability.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>

#define GUARD_S	     120
#define CHILD_FAILED 42

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

/* Run fn in a forked child; returns its status (-1: hung), its stderr in child_err. */
static int run_child(void (*fn)(void))
{
	FILE *err = tmpfile();
	assert_non_null(err);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(fileno(err), 2);
		fn();
		_exit(0);
	}
	int st = 0;
	pid_t r;
	double deadline = now_s() + GUARD_S;
	while ((r = waitpid(pid, &st, WNOHANG)) == 0 && now_s() < deadline)
		usleep(10000);
	if (r == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		st = -1;
	}
	fflush(err);
	long len = ftell(err);
	child_err[0] = 0;
	if (len > 0) {
		rewind(err);
		size_t got = fread(child_err, 1, sizeof(child_err) - 1, err);
		child_err[got] = 0;
	}
	fclose(err);
	return st;
}

#define CHILD_SKIP 77

/* Runs fn in a child and asserts it exits 0 (77: skipped). */
static void expect_ok(void (*fn)(void))
{
	int st = run_child(fn);
	if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == CHILD_SKIP) {
		print_message("skipped: %s\n", child_err);
		skip();
	}
	int ok = st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
	if (!ok) {
		if (st == -1)
			print_error("the child hung (%d s)\n", GUARD_S);
		else if (WIFSIGNALED(st))
			print_error("the child was killed by signal %d\n", WTERMSIG(st));
		else
			print_error("the child exited with status %d\n", WEXITSTATUS(st));
		if (child_err[0])
			print_error("its stderr:\n%s\n", child_err);
	}
	assert_true(ok);
}

/* ------------------------------------------------------------------ helpers ---------------- */
/* The sanitizers' runtimes intercept mlock and do nothing: VmLck stays 0 there. */
#define VMLCK_WORKS (!SA_TEST_SANITIZER)

/* VmLck of this process, bytes. */
static size_t vmlck(void)
{
	int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
	CHK(fd >= 0, "open /proc/self/status");
	char buf[8192];
	ssize_t r = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	CHK(r > 0, "read /proc/self/status");
	buf[r] = 0;
	const char *p = strstr(buf, "VmLck:");
	CHK(p, "no VmLck in /proc/self/status");
	return (size_t)strtoull(p + 6, NULL, 10) * 1024;
}

static struct sa_scope_stats gstats(void)
{
	struct sa_scope_stats g;
	sa_scope_stats(&g);
	return g;
}

/* Is obj an object of c's pinned companion, in a locked slab? */
static int is_pinned_object(struct sa_cache *c, void *obj)
{
	struct sa_slab *s = sa_slab_of(obj);
	return s && s->cache && s->cache != c && s->cache->parent == c &&
	       (s->cache->flags & SA_CACHE_PINNED_) && s->head && (s->head->flags & SA_SLAB_PINNED);
}

#define NOBJ 1000
static void *objs[NOBJ];

static void pin_cache_run(int scope)
{
	struct sa_cache *c = sa_cache_create("pin-256", 256, NULL);
	CHK(c, "sa_cache_create");
	void *plain = sa_cache_alloc(c, 0);
	CHK(plain && sa_slab_of(plain)->cache == c, "an unpinned object");
	size_t l0 = vmlck();
	struct sa_scope_stats g0 = gstats();
	STEP("pinned allocations");
	unsigned cookie = scope ? sa_memalloc_pin_save() : 0;
	if (scope)
		CHK(sa_current_flags(0) & SA_PIN, "the scope does not hold SA_PIN");
	for (int i = 0; i < NOBJ; i++) {
		void *o;
		if (scope || i % 3 == 0)
			o = sa_cache_alloc(c, scope ? 0 : SA_PIN);
		else if (i % 3 == 1)
			o = sa_cache_alloc_node(c, SA_PIN, sa_object_node(plain));
		else
			CHK(sa_cache_alloc_bulk(c, SA_PIN, 1, &o) == 1, "bulk");
		CHK(o, "pinned allocation %d", i);
		CHK(is_pinned_object(c, o),
		    "object %d (%p) is not in a locked slab of the pinned "
		    "companion",
		    i, o);
		memset(o, 1, 256);
		objs[i] = o;
	}
	if (scope)
		sa_memalloc_pin_restore(cookie);
	size_t l1 = vmlck();
	struct sa_scope_stats g1 = gstats();
	CHK(!VMLCK_WORKS || (l1 >= l0 + (NOBJ * 256 / SA_UNIT_SIZE) * SA_UNIT_SIZE &&
			     l1 >= l0 + SA_UNIT_SIZE),
	    "VmLck grew from %zu to %zu for %d pinned objects of 256 bytes", l0, l1, NOBJ);
	CHK(g1.pinned_slabs > g0.pinned_slabs, "pinned_slabs did not grow");
	if (scope)
		CHK(g1.pin_allocs >= g0.pin_allocs + NOBJ, "pin_allocs grew by %llu, not %d",
		    (unsigned long long)(g1.pin_allocs - g0.pin_allocs), NOBJ);
	STEP("outside the scope: not pinned");
	void *after = sa_cache_alloc(c, 0);
	CHK(after && sa_slab_of(after)->cache == c, "an object outside the scope is pinned");
	STEP("free through the parent cache and sa_free");
	for (int i = 0; i < NOBJ; i++) {
		if (i % 2)
			sa_cache_free(c, objs[i]);
		else
			sa_free(objs[i]);
	}
	sa_cache_free(c, after);
	sa_cache_free(c, plain);
	STEP("shrink: the slabs are unlocked");
	CHK(sa_cache_shrink(c) == 0, "sa_cache_shrink");
	size_t l2 = vmlck();
	CHK(!VMLCK_WORKS || l2 <= l0,
	    "VmLck %zu after the frees and sa_cache_shrink, was %zu before", l2, l0);
	_exit(0);
}

static void pin_scope_child(void)
{
	pin_cache_run(1);
}

static void pin_flag_child(void)
{
	pin_cache_run(0);
}

static void check_no_bad_free_report(void)
{
	if (count_substr(child_err, "free of"))
		print_error("bad-free reports:\n%s\n", child_err);
	assert_int_equal(count_substr(child_err, "free of"), 0);
}

static void test_pin_scope_cache(void **state)
{
	(void)state;
	expect_ok(pin_scope_child);
	check_no_bad_free_report();
}

static void test_pin_flag_cache(void **state)
{
	(void)state;
	expect_ok(pin_flag_child);
	check_no_bad_free_report();
}

static void pin_malloc_child(void)
{
	static const size_t sizes[] = {100, 4096, 30000, 256 << 10, 1 << 20, 3 << 20};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		size_t sz = sizes[i];
		STEP("sa_malloc inside a PIN scope");
		size_t l0 = vmlck();
		unsigned cookie = sa_memalloc_pin_save();
		char *p = sa_malloc(sz);
		char *z = sa_calloc(1, sz);
		sa_memalloc_pin_restore(cookie);
		CHK(p && z, "pinned malloc/calloc of %zu bytes", sz);
		memset(p, 1, sz);
		for (size_t k = 0; k < sz; k++)
			CHK(!z[k], "calloc byte %zu is not zero", k);
		size_t l1 = vmlck();
		size_t want = sz <= 32768 ? SA_UNIT_SIZE : 2 * sz;
		CHK(!VMLCK_WORKS || l1 >= l0 + want,
		    "VmLck grew from %zu to %zu for two pinned blocks of %zu bytes", l0, l1, sz);
		struct sa_slab *s = sa_slab_of(p);
		if (sz <= 32768)
			CHK(s && s->cache && (s->cache->flags & SA_CACHE_PINNED_),
			    "a pinned small block is not in a pinned companion cache");
		STEP("sa_realloc inside a PIN scope");
		cookie = sa_memalloc_pin_save();
		char *r = sa_realloc(p, sz + sz / 2);
		sa_memalloc_pin_restore(cookie);
		CHK(r, "pinned realloc");
		for (size_t k = 0; k < sz; k++)
			CHK(r[k] == 1, "realloc lost byte %zu", k);
		s = sa_slab_of(r);
		if (sz + sz / 2 <= 32768)
			CHK(s && s->cache && (s->cache->flags & SA_CACHE_PINNED_),
			    "a block reallocated inside a PIN scope is not pinned");
		else
			CHK(!VMLCK_WORKS || vmlck() >= l0 + sz + sz / 2,
			    "a block reallocated inside a PIN scope is "
			    "not locked (VmLck %zu)",
			    vmlck());
		STEP("free: large and huge blocks are unlocked");
		sa_free(r);
		sa_free(z);
		if (sz > 32768) {
			size_t l2 = vmlck();
			CHK(!VMLCK_WORKS || l2 <= l0,
			    "VmLck %zu after freeing pinned blocks of %zu bytes, was %zu", l2, sz,
			    l0);
		}
	}
	_exit(0);
}

static void test_pin_malloc(void **state)
{
	(void)state;
	expect_ok(pin_malloc_child);
}

static void pin_sheaf_child(void)
{
	struct sa_cache *c = sa_cache_create("pin-sheaf", 512, NULL);
	CHK(c, "sa_cache_create");
	size_t l0 = vmlck();
	struct sa_sheaf *s = sa_sheaf_prefill(c, SA_PIN, 50);
	CHK(s && sa_sheaf_size(s) >= 50, "pinned prefill");
	CHK(!VMLCK_WORKS || vmlck() > l0, "VmLck did not grow after a pinned prefill");
	void *o[50];
	for (int i = 0; i < 50; i++) {
		o[i] = sa_sheaf_alloc(c, 0, s);
		CHK(o[i] && is_pinned_object(c, o[i]), "prefilled object %d is not pinned", i);
	}
	sa_sheaf_return(c, 0, s);
	for (int i = 0; i < 50; i++)
		sa_cache_free(c, o[i]);
	/* an oversize pinned prefill */
	s = sa_sheaf_prefill(c, SA_PIN, 500);
	CHK(s && sa_sheaf_size(s) >= 500, "oversize pinned prefill");
	void *x = sa_sheaf_alloc(c, 0, s);
	CHK(is_pinned_object(c, x), "an oversize prefilled object is not pinned");
	sa_cache_free(c, x);
	sa_sheaf_return(c, 0, s);
	_exit(0);
}

static void test_pin_sheaf(void **state)
{
	(void)state;
	expect_ok(pin_sheaf_child);
}

/* Drop CAP_IPC_LOCK from the effective and permitted sets (root ignores RLIMIT_MEMLOCK with it). */
static int drop_ipc_lock(void)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d) != 0)
		return -1;
	d[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
	d[CAP_IPC_LOCK / 32].permitted &= ~(1u << (CAP_IPC_LOCK % 32));
	d[CAP_IPC_LOCK / 32].inheritable &= ~(1u << (CAP_IPC_LOCK % 32));
	if (syscall(SYS_capset, &h, d) != 0)
		return -1;
	if (syscall(SYS_capget, &h, d) != 0)
		return -1;
	return (d[CAP_IPC_LOCK / 32].effective & (1u << (CAP_IPC_LOCK % 32))) ? -1 : 0;
}

static void pin_fail_child(void)
{
	struct sa_cache *c = sa_cache_create("pin-fail", 256, NULL);
	CHK(c, "sa_cache_create");
	void *warm = sa_malloc(300 << 10);
	sa_free(warm);
	warm = sa_malloc(3 << 20);
	sa_free(warm);
	if (drop_ipc_lock() != 0) {
		dprintf(2, "cannot drop CAP_IPC_LOCK\n");
		_exit(CHILD_SKIP);
	}
	struct rlimit rl = {64 << 10, 64 << 10};
	CHK(setrlimit(RLIMIT_MEMLOCK, &rl) == 0, "setrlimit(RLIMIT_MEMLOCK, 64 KiB)");
	struct sa_scope_stats g0 = gstats();
	STEP("pinned objects until NULL");
	int n = 0, nulls = 0;
	for (int i = 0; i < 4000 && nulls < 50; i++) {
		errno = 0;
		void *o = sa_cache_alloc(c, SA_PIN); /* not NOWARN: the report */
		if (o) {
			CHK(is_pinned_object(c, o), "a pinned allocation is not pinned");
			CHK(nulls == 0, "a pinned allocation worked after one failed");
			n++;
			continue;
		}
		CHK(errno == ENOMEM, "pinned allocation NULL with errno %d, not ENOMEM", errno);
		nulls++;
	}
	CHK(nulls == 50, "no pinned allocation failed under RLIMIT_MEMLOCK of 64 KiB (%d served)",
	    n);
	CHK(vmlck() <= (64 << 10), "VmLck %zu above RLIMIT_MEMLOCK", vmlck());
	STEP("pinned large and huge blocks");
	unsigned cookie = sa_memalloc_pin_save();
	for (int i = 0; i < 5; i++) {
		errno = 0;
		void *p = sa_malloc(256 << 10);
		CHK(!p && errno == ENOMEM, "pinned 256 KiB: %p, errno %d", p, errno);
		errno = 0;
		p = sa_malloc(3 << 20);
		CHK(!p && errno == ENOMEM, "pinned 3 MiB: %p, errno %d", p, errno);
		errno = 0;
		p = sa_malloc(200);
		CHK(!p || sa_slab_of(p)->cache->flags & SA_CACHE_PINNED_, "a pinned small block");
		if (p)
			sa_free(p);
	}
	sa_memalloc_pin_restore(cookie);
	struct sa_scope_stats g1 = gstats();
	CHK(g1.pin_failures > g0.pin_failures, "pin_failures did not grow");
	STEP("unpinned allocations keep working");
	for (int i = 0; i < 2000; i++) {
		void *o = sa_cache_alloc(c, 0);
		CHK(o && !is_pinned_object(c, o), "unpinned allocation %d", i);
	}
	void *l = sa_malloc(256 << 10), *h = sa_malloc(3 << 20);
	CHK(l && h, "unpinned large and huge blocks");
	memset(l, 1, 256 << 10);
	memset(h, 1, 3 << 20);
	sa_free(l);
	sa_free(h);
	_exit(0);
}

static void test_pin_mlock_fails(void **state)
{
	(void)state;
	if (SA_TEST_SANITIZER || running_on_valgrind()) {
		print_message("under valgrind or a sanitizer (rlimits): skipped\n");
		skip();
	}
	expect_ok(pin_fail_child);
	int reports = count_substr(child_err, "mlock");
	if (reports != 1 || !count_substr(child_err, "failed"))
		print_error("expected one \"mlock ... failed\" report:\n%s\n", child_err);
	assert_int_equal(reports, 1);
	assert_true(count_substr(child_err, "failed") >= 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pin_scope_cache), cmocka_unit_test(test_pin_flag_cache),
		cmocka_unit_test(test_pin_malloc),	cmocka_unit_test(test_pin_sheaf),
		cmocka_unit_test(test_pin_mlock_fails),
	};
	return cmocka_run_group_tests_name("pin", tests, NULL, NULL);
}
