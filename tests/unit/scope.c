/*
 * tests/unit/scope.c — the scope layer (alloc/scope.c; CONTRACT.md "Scopes"; issue 14):
 * thread-local scoped allocation flags, the LIFO check, coroutine scope states, hand-off to a
 * worker thread, SA_ZERO and SA_NOWARN as scopes, and the scope statistics.
 *
 *   test_each_save_sets_its_flag      each sa_memalloc_*_save sets its flag, its restore clears
 *                                     it; sa_current_flags = call | scope, NOIO implies NOFS; a
 *                                     save of a flag already set restores nothing (kernel rule)
 *   test_deep_nesting                 100000 nested saves with a mix of flags and of the six
 *                                     save functions: the flags at every level, on the way in
 *                                     and on the way out, are exactly what was saved; no report
 *   test_scopes_are_per_thread        another thread neither sees nor changes our scope
 *   test_out_of_order_reported        an out-of-order restore is reported with both depths,
 *                                     once per call site; the early scope's flags stay until
 *                                     the inner scopes end; all restored: no flags, depth 0
 *   test_same_flag_out_of_order       two nested NOFS saves restored in the wrong order: NOFS
 *                                     stays until the second restore (the case the check is for)
 *   test_many_early_restores          20 nested scopes, the outer 17 restored out of order,
 *                                     then the rest: the thread ends with no flags, depth 0
 *   test_out_of_order_beyond_2p23     the same LIFO rules past depth 2^23 (the cookie's depth
 *                                     field wraps there)
 *   test_misuse_reported              restored twice (with and without an outer scope open), a
 *                                     cookie of another thread, a made-up cookie: reported,
 *                                     the thread's flags untouched
 *   test_scope_check_abort            SHEAFALLOC_OPTIONS=scope_check=abort (this binary run
 *                                     again in a helper mode, see helper_main): the report, then
 *                                     SIGABRT (out of order, restored twice; in order: no abort)
 *   test_scope_check_abort_first_call the same when the misuse is the process's first call into
 *                                     the library (the option holds from the start)
 *   test_refused_flags                SA_NOFAIL and bits outside SA_FLAGS_ALL: SA_SCOPE_INVALID,
 *                                     EINVAL, flags unchanged; restoring SA_SCOPE_INVALID does
 *                                     nothing and reports nothing
 *   test_scope_macro                  SA_SCOPE restores on the block's end, return, break,
 *                                     continue, goto; nested and recursive SA_SCOPE blocks
 *   test_coroutines_without_swap      two ucontext coroutines interleaved on one thread with no
 *                                     sa_scope_swap: the out-of-order restore is reported
 *   test_coroutines_with_swap         the same with a scope state per coroutine swapped in and
 *                                     out: no report, each sees exactly its own flags
 *   test_coroutine_moves_thread       a coroutine saved a scope on one thread, resumes on
 *                                     another: its flags come along; the threads keep theirs
 *   test_nowait_state_moves_thread    a NOWAIT scope state swapped into a new thread: its first
 *                                     NOWAIT allocation makes no system call (the rseq
 *                                     registration of the library's own mode; else skipped)
 *   test_scope_state_flags_null       sa_scope_state_flags(NULL) is the thread's own state
 *   test_handoff_thread_pool          workers adopt a submitter's captured scope per task: the
 *                                     effective flags, SA_ZERO objects, SA_NOWAIT counted; the
 *                                     worker's own flags before and after each task are 0
 *   test_zero_scope_cache             sa_cache_alloc, _bulk, _node inside a ZERO scope: zeroed
 *   test_zero_scope_sheaf_alloc       sa_sheaf_alloc inside a ZERO scope: zeroed
 *   test_zero_scope_malloc            sa_malloc of 24 B .. 5 MiB inside a ZERO scope, on memory
 *                                     just dirtied and freed: zeroed
 *   test_nowarn_scope                 under a memory limit, a failing sa_sheaf_prefill and
 *                                     sa_cache_alloc print nothing inside a NOWARN scope and
 *                                     their message without it
 *   test_nowarn_scope_pin_failure     a pinned allocation that mlock refuses, inside a
 *                                     NOWARN|PIN scope, prints nothing (helper process without
 *                                     CAP_IPC_LOCK and RLIMIT_MEMLOCK 0; skipped where mlock
 *                                     cannot be made to fail, as under the sanitizers)
 *   test_nowait_scope_end_runs_deferred  a free deferred inside a NOWAIT scope (a 5 MiB block:
 *                                     its unmapping is a system call) has run once the scope
 *                                     ended (with locks only tried: a scope may end in a signal
 *                                     handler) and the next slow path that may wait ran,
 *                                     whichever way the scope ends (restore, flags restore,
 *                                     SA_SCOPE, sa_scope_swap out of the state)
 *   test_scope_stats_counters         per-flag allocation counters grow by exactly N for N
 *                                     allocations (cache and malloc family) under a scope;
 *                                     saves, refusals, out-of-order, misuse, swaps
 *   test_unscoped_not_counted         the fast path: no scope, allocations work, nothing counted
 *   test_alloc_node_counted           sa_cache_alloc_node to another node inside a scope counts
 *                                     (helper process on a synthetic two-node hwloc topology)
 *   test_stats_print_scope_section    sa_stats_print and sa_stats_print_json have the scope
 *                                     section with every key, the JSON values are the counters
 *
 * Helper processes are started with posix_spawn (no fork handlers run in the test process).
 * Events are counted, never timed. Counters are process-wide: each test reads them before and
 * after with only its own threads running. Report call sites: the library reports an
 * out-of-order restore once per call site (the return address of the restore call), so each
 * test that expects a report restores through a call site of its own.
 */
#include "sa_test.h"

#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <linux/capability.h>

#include "alloc/scope.h"
#include "sheaf/pcs_inline.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define HAVE_VALGRIND_H 1
#endif
#endif

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------ helpers ---------------- */
/* what sa_current_flags(0) must say for a scope holding f */
static sa_flags_t implied(sa_flags_t f)
{
	return (f & SA_NOIO) ? (f | SA_NOFS) : f;
}

static struct sa_scope_stats sstats(void)
{
	struct sa_scope_stats s;
	assert_int_equal(sa_scope_stats(&s), 0);
	return s;
}

/* The calling thread's own nesting depth (white box: struct sa_scope_rec). */
static uint32_t own_depth(void)
{
	assert_null(sa_scope_tls.cur);
	return sa_scope_tls.own.depth;
}

static void assert_scope(sa_flags_t f)
{
	assert_int_equal(sa_memalloc_flags(), f);
	assert_int_equal(sa_current_flags(0), implied(f));
}

static void assert_no_scope(void)
{
	assert_scope(0);
	assert_int_equal(own_depth(), 0);
}

/*
 * capture_begin/capture_end of sa_test.h, remembering the open capture: a test that fails
 * inside one leaves fd 2 redirected, and the teardown puts it back (and shows what it caught).
 */
static struct capture open_cap; /* a copy: the test's own may be on a stack long gone */
static int open_cap_active;

static void cap_begin(struct capture *cap)
{
	capture_begin(cap);
	open_cap = *cap;
	open_cap_active = 1;
}

static const char *cap_end(struct capture *cap)
{
	open_cap_active = 0;
	return capture_end(cap);
}

static cpu_set_t saved_affinity;

static int setup(void **state)
{
	(void)state;
	allowed_cpus(&saved_affinity);
	return 0;
}

/*
 * A failed test may leave scopes open on the test thread (cmocka jumps out of it): start the
 * next test from a clean thread state (white box), and lift any limit a test set.
 */
static int teardown(void **state)
{
	(void)state;
	if (open_cap_active) {
		const char *text = cap_end(&open_cap);
		print_message("(teardown: stderr was still captured; it had: '%s')\n",
			      text ? text : "");
		capture_free(&open_cap);
	}
	if (sa_scope_tls.cur || sa_scope_tls.flags || sa_scope_tls.own.depth) {
		print_message("(teardown: the test left scope state behind: flags %#x depth %u; "
			      "reset)\n",
			      sa_scope_tls.flags, sa_scope_tls.own.depth);
		sa_scope_tls.cur = NULL;
		memset(&sa_scope_tls.own, 0, sizeof(sa_scope_tls.own));
		sa_scope_tls.flags = 0;
	}
	sa_set_limit(0);
	set_affinity(&saved_affinity);
	return 0;
}

static void pin_here(void)
{
	assert_int_equal(pin_to_cpu(first_allowed_cpu()), 0);
}

/*
 * Distinct call sites of sa_memalloc_flags_restore, for the once-per-site rule: not inlined,
 * not merged with each other (different bodies), not tail calls (work after the call).
 */
static volatile int site_sink;
#define RESTORE_SITE(name, k)                                       \
	static __attribute__((noinline)) void name(unsigned cookie) \
	{                                                           \
		sa_memalloc_flags_restore(cookie);                  \
		site_sink += k;                                     \
	}
RESTORE_SITE(restore_site_ooo_a, 1)
RESTORE_SITE(restore_site_ooo_b, 2)
RESTORE_SITE(restore_site_same_flag, 3)
RESTORE_SITE(restore_site_twice_top, 4)
RESTORE_SITE(restore_site_twice_inner, 5)
RESTORE_SITE(restore_site_foreign_none, 6)
RESTORE_SITE(restore_site_foreign_open, 7)
RESTORE_SITE(restore_site_made_up, 8)
RESTORE_SITE(restore_site_stats, 9)
RESTORE_SITE(restore_site_many_early, 10)
RESTORE_SITE(restore_site_deep_early, 11)

static const char *const scope_keys[] = {
	"nowait_allocs",       "nofs_allocs",  "noio_allocs", "noreclaim_allocs", "zero_allocs",
	"nowarn_allocs",       "high_allocs",  "pin_allocs",  "scope_saves",	  "scopes_refused",
	"scopes_out_of_order", "scope_misuse", "scope_swaps",
};

/* ------------------------------------------------------------------ 1. the API ------------- */
struct named_scope {
	const char *name;
	sa_flags_t flag;
	unsigned (*save)(void);
	void (*restore)(unsigned);
};

static const struct named_scope named[] = {
	{"noio", SA_NOIO, sa_memalloc_noio_save, sa_memalloc_noio_restore},
	{"nofs", SA_NOFS, sa_memalloc_nofs_save, sa_memalloc_nofs_restore},
	{"noreclaim", SA_NORECLAIM, sa_memalloc_noreclaim_save, sa_memalloc_noreclaim_restore},
	{"pin", SA_PIN, sa_memalloc_pin_save, sa_memalloc_pin_restore},
	{"nowait", SA_NOWAIT, sa_memalloc_nowait_save, sa_memalloc_nowait_restore},
};

static void test_each_save_sets_its_flag(void **state)
{
	(void)state;
	struct sa_scope_stats before = sstats();
	assert_no_scope();
	/* the call's flags alone */
	assert_int_equal(sa_current_flags(0), 0);
	assert_int_equal(sa_current_flags(SA_NOIO), SA_NOIO | SA_NOFS);
	assert_int_equal(sa_current_flags(SA_NOFAIL | SA_ZERO), SA_NOFAIL | SA_ZERO);
	for (size_t i = 0; i < ARRAY_SIZE(named); i++) {
		unsigned c = named[i].save();
		assert_int_not_equal(c, SA_SCOPE_INVALID);
		assert_scope(named[i].flag);
		assert_int_equal(sa_current_flags(SA_ZERO), implied(named[i].flag) | SA_ZERO);
		assert_int_equal(sa_current_flags(SA_NOIO), named[i].flag | SA_NOIO | SA_NOFS);
		named[i].restore(c);
		assert_no_scope();
	}
	/* all five nested, then a flags_save of the modifiers, restored in reverse */
	unsigned c[ARRAY_SIZE(named) + 1];
	sa_flags_t f = 0;
	for (size_t i = 0; i < ARRAY_SIZE(named); i++) {
		c[i] = named[i].save();
		f |= named[i].flag;
		assert_scope(f);
	}
	c[ARRAY_SIZE(named)] = sa_memalloc_flags_save(SA_ZERO | SA_NOWARN | SA_HIGH);
	assert_scope(f | SA_ZERO | SA_NOWARN | SA_HIGH);
	assert_int_equal(own_depth(), ARRAY_SIZE(named) + 1);
	sa_memalloc_flags_restore(c[ARRAY_SIZE(named)]);
	assert_scope(f);
	for (size_t i = ARRAY_SIZE(named); i-- > 0;) {
		named[i].restore(c[i]);
		f &= ~named[i].flag;
		assert_scope(f);
	}
	assert_no_scope();
	/* a save of a flag already set sets nothing: its restore clears nothing */
	unsigned outer = sa_memalloc_nofs_save();
	unsigned inner = sa_memalloc_nofs_save();
	unsigned both = sa_memalloc_flags_save(SA_NOFS | SA_ZERO);
	assert_scope(SA_NOFS | SA_ZERO);
	sa_memalloc_flags_restore(both);
	assert_scope(SA_NOFS);
	sa_memalloc_nofs_restore(inner);
	assert_scope(SA_NOFS);
	sa_memalloc_nofs_restore(outer);
	assert_no_scope();
	/* an empty save opens a level too */
	unsigned e = sa_memalloc_flags_save(0);
	assert_int_not_equal(e, SA_SCOPE_INVALID);
	assert_int_equal(own_depth(), 1);
	assert_scope(0);
	sa_memalloc_flags_restore(e);
	assert_no_scope();
	struct sa_scope_stats after = sstats();
	assert_int_equal(after.scope_misuse, before.scope_misuse);
	assert_int_equal(after.scopes_out_of_order, before.scopes_out_of_order);
}

/* ------------------------------------------------------------------ deep nesting ----------- */
#define DEEP 100000
static unsigned deep_cookie[DEEP + 1];
static sa_flags_t deep_flags[DEEP + 1]; /* the scope after level i opened */
static unsigned char deep_kind[DEEP + 1];

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static const sa_flags_t scopable[] = {SA_NOWAIT, SA_NOFS,   SA_NOIO, SA_NORECLAIM,
				      SA_ZERO,	 SA_NOWARN, SA_HIGH, SA_PIN};

static void test_deep_nesting(void **state)
{
	(void)state;
	struct sa_scope_stats before = sstats();
	struct capture cap;
	cap_begin(&cap);
	deep_flags[0] = 0;
	unsigned changes = 0; /* levels that added flags */
	for (unsigned i = 1; i <= DEEP; i++) {
		/*
		 * The five named saves and flags_save, chosen at random. Most levels set nothing
		 * new (a flag already set, a subset of the scope, or nothing at all); every 12000
		 * levels one adds the next flag, so the flags change all the way down and the
		 * restores must clear each at exactly its depth.
		 */
		sa_flags_t have = deep_flags[i - 1];
		sa_flags_t fresh =
			i % 12000 == 7 ? scopable[(i / 12000) % ARRAY_SIZE(scopable)] : 0;
		unsigned k = (unsigned)(rng() % 8);
		sa_flags_t want;
		if (fresh) {
			k = ARRAY_SIZE(named);
			for (unsigned j = 0; j < ARRAY_SIZE(named); j++)
				if (named[j].flag == fresh)
					k = j;
		}
		if (k < ARRAY_SIZE(named) && (fresh || (have & named[k].flag))) {
			want = named[k].flag;
			deep_cookie[i] = named[k].save();
		} else {
			k = ARRAY_SIZE(named);
			want = 0;
			unsigned nb = (unsigned)(rng() % 3);
			for (unsigned b = 0; b < nb; b++)
				want |= scopable[rng() % ARRAY_SIZE(scopable)];
			want = (want & have) | fresh;
			deep_cookie[i] = sa_memalloc_flags_save(want);
		}
		deep_kind[i] = (unsigned char)k;
		changes += (have | want) != have;
		deep_flags[i] = deep_flags[i - 1] | want;
		if (deep_cookie[i] == SA_SCOPE_INVALID || sa_memalloc_flags() != deep_flags[i] ||
		    sa_current_flags(0) != implied(deep_flags[i]) || own_depth() != i) {
			print_error(
				"level %u: cookie %#x flags %#x (want %#x) current %#x depth %u\n",
				i, deep_cookie[i], sa_memalloc_flags(), deep_flags[i],
				sa_current_flags(0), own_depth());
			fail();
		}
	}
	for (unsigned i = DEEP; i >= 1; i--) {
		unsigned k = deep_kind[i];
		if (k < ARRAY_SIZE(named))
			named[k].restore(deep_cookie[i]);
		else
			sa_memalloc_flags_restore(deep_cookie[i]);
		if (sa_memalloc_flags() != deep_flags[i - 1] ||
		    sa_current_flags(0) != implied(deep_flags[i - 1]) || own_depth() != i - 1) {
			print_error("restore of level %u: flags %#x (want %#x) depth %u\n", i,
				    sa_memalloc_flags(), deep_flags[i - 1], own_depth());
			fail();
		}
	}
	const char *out = cap_end(&cap);
	assert_string_equal(out, "");
	capture_free(&cap);
	assert_no_scope();
	print_message("%u nested levels, %u of them added flags, deepest scope %#x\n", DEEP,
		      changes, deep_flags[DEEP]);
	assert_int_equal(changes, ARRAY_SIZE(scopable)); /* one flag more every 12000 levels */
	struct sa_scope_stats after = sstats();
	assert_int_equal(after.scope_saves - before.scope_saves, DEEP);
	assert_int_equal(after.scope_misuse, before.scope_misuse);

	/* flags that come and go over a NOFS base, 2000 times */
	unsigned base = sa_memalloc_nofs_save();
	for (unsigned i = 1; i <= 2000; i++) {
		unsigned c = sa_memalloc_flags_save(SA_ZERO);
		assert_scope(SA_NOFS | SA_ZERO);
		if (i % 2) {
			sa_memalloc_flags_restore(c);
			assert_scope(SA_NOFS);
			c = sa_memalloc_flags_save(SA_NOWARN | SA_NOFS);
			assert_scope(SA_NOFS | SA_NOWARN);
		}
		sa_memalloc_flags_restore(c);
		assert_scope(SA_NOFS);
	}
	sa_memalloc_nofs_restore(base);
	assert_no_scope();
}

/* ------------------------------------------------------------------ per thread ------------- */
struct peer {
	pthread_barrier_t b;
	sa_flags_t seen_start, seen_current, seen_saved, seen_end;
};

static void *peer_thread(void *p)
{
	struct peer *x = p;
	pthread_barrier_wait(&x->b); /* 1: main's scope is open */
	x->seen_start = sa_memalloc_flags();
	x->seen_current = sa_current_flags(0);
	unsigned c = sa_memalloc_noio_save();
	x->seen_saved = sa_memalloc_flags();
	pthread_barrier_wait(&x->b); /* 2: main looks at its own scope */
	pthread_barrier_wait(&x->b); /* 3: main has restored its scope */
	sa_memalloc_noio_restore(c);
	x->seen_end = sa_memalloc_flags();
	return NULL;
}

static void test_scopes_are_per_thread(void **state)
{
	(void)state;
	struct peer x;
	memset(&x, 0, sizeof(x));
	pthread_barrier_init(&x.b, NULL, 2);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, peer_thread, &x), 0);
	unsigned c = sa_memalloc_flags_save(SA_NOFS | SA_ZERO | SA_NOWARN);
	pthread_barrier_wait(&x.b); /* 1 */
	pthread_barrier_wait(&x.b); /* 2: the peer has its NOIO scope open */
	/* no assert until the peer is joined: it waits on the barrier */
	sa_flags_t mine = sa_memalloc_flags(), mine_current = sa_current_flags(0);
	sa_memalloc_flags_restore(c);
	sa_flags_t mine_end = sa_memalloc_flags();
	pthread_barrier_wait(&x.b); /* 3 */
	pthread_join(t, NULL);
	pthread_barrier_destroy(&x.b);
	assert_int_equal(mine, SA_NOFS | SA_ZERO | SA_NOWARN);
	assert_int_equal(mine_current, SA_NOFS | SA_ZERO | SA_NOWARN);
	assert_int_equal(mine_end, 0);
	assert_int_equal(x.seen_start, 0);
	assert_int_equal(x.seen_current, 0);
	assert_int_equal(x.seen_saved, SA_NOIO);
	assert_int_equal(x.seen_end, 0);
	assert_no_scope();
}

/* ------------------------------------------------------------------ 2. the LIFO check ------- */
static void test_out_of_order_reported(void **state)
{
	(void)state;
	struct capture cap;
	for (int round = 0; round < 3; round++) {
		/* round 0: first restore at site a (reported); 1: site a again (counted, not
		 * printed); 2: site b (printed) */
		struct sa_scope_stats before = sstats();
		unsigned c1 = sa_memalloc_nofs_save();
		unsigned c2 = sa_memalloc_noio_save();
		unsigned c3 = sa_memalloc_flags_save(SA_ZERO);
		assert_scope(SA_NOFS | SA_NOIO | SA_ZERO);
		cap_begin(&cap);
		if (round < 2)
			restore_site_ooo_a(c1);
		else
			restore_site_ooo_b(c1);
		const char *out = cap_end(&cap);
		if (round == 1) {
			assert_string_equal(out, "");
		} else {
			if (count_substr(out, "out of LIFO order") != 1 ||
			    !strstr(out, "depth 1") || !strstr(out, "depth 3"))
				print_error("round %d: report was: '%s'\n", round, out ? out : "");
			assert_int_equal(count_substr(out, "out of LIFO order"), 1);
			assert_non_null(strstr(out, "depth 1"));
			assert_non_null(strstr(out, "depth 3"));
		}
		capture_free(&cap);
		struct sa_scope_stats mid = sstats();
		assert_int_equal(mid.scopes_out_of_order, before.scopes_out_of_order + 1);
		assert_int_equal(mid.scope_misuse, before.scope_misuse + 1);
		/* nothing lost: NOFS stays while the scopes opened inside it are open */
		assert_scope(SA_NOFS | SA_NOIO | SA_ZERO);
		assert_int_equal(own_depth(), 3);
		cap_begin(&cap);
		sa_memalloc_flags_restore(c3);
		assert_scope(SA_NOFS | SA_NOIO);
		sa_memalloc_noio_restore(c2);
		out = cap_end(&cap);
		assert_string_equal(out, "");
		capture_free(&cap);
		assert_no_scope();
		struct sa_scope_stats after = sstats();
		assert_int_equal(after.scopes_out_of_order, mid.scopes_out_of_order);
		assert_int_equal(after.scope_misuse, mid.scope_misuse);
	}
	/* the middle one early, in a stack of four: the levels close when the innermost does */
	unsigned c[4];
	c[0] = sa_memalloc_pin_save();
	c[1] = sa_memalloc_nofs_save();
	c[2] = sa_memalloc_noreclaim_save();
	c[3] = sa_memalloc_flags_save(SA_NOWARN);
	cap_begin(&cap);
	restore_site_ooo_b(c[1]); /* site b has reported already */
	restore_site_ooo_b(c[2]);
	const char *out = cap_end(&cap);
	assert_string_equal(out, "");
	capture_free(&cap);
	assert_scope(SA_PIN | SA_NOFS | SA_NORECLAIM | SA_NOWARN);
	sa_memalloc_flags_restore(c[3]);
	assert_scope(SA_PIN);
	assert_int_equal(own_depth(), 1);
	sa_memalloc_pin_restore(c[0]);
	assert_no_scope();
}

static void test_same_flag_out_of_order(void **state)
{
	(void)state;
	unsigned c1 = sa_memalloc_nofs_save();
	unsigned c2 = sa_memalloc_nofs_save();
	struct capture cap;
	cap_begin(&cap);
	restore_site_same_flag(c1);
	const char *out = cap_end(&cap);
	assert_int_equal(count_substr(out, "out of LIFO order"), 1);
	capture_free(&cap);
	assert_scope(SA_NOFS); /* the inner NOFS scope still holds */
	cap_begin(&cap);
	sa_memalloc_nofs_restore(c2);
	out = cap_end(&cap);
	assert_string_equal(out, "");
	capture_free(&cap);
	assert_no_scope();
}

/*
 * Many scopes restored early at once: every early restore must still close its level when the
 * inner scopes end, however many are waiting (the record keeps 16 early depths).
 */
static void test_many_early_restores(void **state)
{
	(void)state;
	enum { N = 20, EARLY = 17 };
	unsigned c[N];
	c[0] = sa_memalloc_nofs_save(); /* the outermost sets the flag that must go in the end */
	for (int i = 1; i < N; i++)
		c[i] = sa_memalloc_flags_save(i == 5 ? SA_ZERO : 0);
	assert_scope(SA_NOFS | SA_ZERO);
	struct capture cap;
	cap_begin(&cap);
	for (int i = 0; i < EARLY; i++)
		restore_site_many_early(c[i]);
	cap_end(&cap);
	capture_free(&cap);
	assert_scope(SA_NOFS | SA_ZERO); /* nothing closes before the inner ones */
	for (int i = N - 1; i >= EARLY; i--)
		sa_memalloc_flags_restore(c[i]);
	if (sa_memalloc_flags() != 0 || own_depth() != 0)
		print_error("after %d of %d nested scopes were restored early and the rest in "
			    "order: flags %#x, depth %u (want none, 0)\n",
			    EARLY, N, sa_memalloc_flags(), own_depth());
	assert_no_scope();
}

/* The cookie keeps the depth modulo 2^23: the LIFO rules must still hold past that. */
static void test_out_of_order_beyond_2p23(void **state)
{
	(void)state;
	const unsigned deep = (1u << 23) + 2;
	unsigned base = sa_memalloc_flags_save(0);
	for (unsigned i = 2; i < deep - 1; i++)
		(void)sa_memalloc_flags_save(0);
	assert_int_equal(own_depth(), deep - 2);
	unsigned c1 = sa_memalloc_nofs_save(); /* depth 2^23 + 1 */
	unsigned c2 = sa_memalloc_noio_save(); /* depth 2^23 + 2 */
	assert_int_equal(own_depth(), deep);
	struct capture cap;
	cap_begin(&cap);
	restore_site_deep_early(c1);
	const char *out = cap_end(&cap);
	assert_int_equal(count_substr(out, "out of LIFO order"), 1);
	capture_free(&cap);
	assert_scope(SA_NOFS | SA_NOIO);
	sa_memalloc_noio_restore(c2);
	/* the NOFS scope was restored (early): it must close with the NOIO one */
	if (sa_memalloc_flags() != 0 || own_depth() != deep - 2)
		print_error("past depth 2^23: after an early restore and the inner one, flags %#x "
			    "depth %u (want none, %u)\n",
			    sa_memalloc_flags(), own_depth(), deep - 2);
	sa_flags_t left = sa_memalloc_flags();
	uint32_t left_depth = own_depth();
	/* unwind what is left without touching the API's check (white box), then compare */
	sa_scope_tls.cur = NULL;
	memset(&sa_scope_tls.own, 0, sizeof(sa_scope_tls.own));
	sa_scope_tls.flags = 0;
	(void)base;
	assert_int_equal(left, 0);
	assert_int_equal(left_depth, deep - 2);
}

/* ------------------------------------------------------------------ misuse ------------------ */
struct foreign {
	unsigned cookie;
};

static void *foreign_thread(void *p)
{
	struct foreign *f = p;
	f->cookie = sa_memalloc_nofs_save();
	sa_memalloc_nofs_restore(f->cookie); /* this thread stays clean */
	return NULL;
}

static void test_misuse_reported(void **state)
{
	(void)state;
	struct capture cap;
	struct sa_scope_stats s0 = sstats();

	/* restored twice, nothing open any more */
	unsigned c = sa_memalloc_nofs_save();
	sa_memalloc_nofs_restore(c);
	cap_begin(&cap);
	restore_site_twice_top(c);
	const char *out = cap_end(&cap);
	if (!strstr(out, "twice"))
		print_error("report was: '%s'\n", out ? out : "");
	assert_non_null(strstr(out, "sheafalloc: scope"));
	assert_non_null(strstr(out, "twice"));
	capture_free(&cap);
	assert_no_scope();
	struct sa_scope_stats s1 = sstats();
	assert_int_equal(s1.scope_misuse, s0.scope_misuse + 1);
	assert_int_equal(s1.scopes_out_of_order, s0.scopes_out_of_order);

	/* restored twice inside an outer scope that stays open */
	unsigned o = sa_memalloc_noio_save();
	c = sa_memalloc_flags_save(SA_ZERO);
	sa_memalloc_flags_restore(c);
	cap_begin(&cap);
	restore_site_twice_inner(c);
	out = cap_end(&cap);
	assert_non_null(strstr(out, "twice"));
	capture_free(&cap);
	assert_scope(SA_NOIO);
	assert_int_equal(own_depth(), 1);
	struct sa_scope_stats s2 = sstats();
	assert_int_equal(s2.scope_misuse, s1.scope_misuse + 1);
	assert_int_equal(s2.scopes_out_of_order, s1.scopes_out_of_order);
	cap_begin(&cap);
	sa_memalloc_noio_restore(o);
	out = cap_end(&cap);
	assert_string_equal(out, "");
	capture_free(&cap);
	assert_no_scope();

	/* a cookie saved on another thread */
	struct foreign f;
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, foreign_thread, &f), 0);
	pthread_join(t, NULL);
	cap_begin(&cap);
	restore_site_foreign_none(f.cookie); /* nothing open here */
	out = cap_end(&cap);
	assert_non_null(strstr(out, "another thread"));
	capture_free(&cap);
	assert_no_scope();
	o = sa_memalloc_noio_save(); /* depth 1 open here, with other bits than the cookie's */
	cap_begin(&cap);
	restore_site_foreign_open(f.cookie);
	out = cap_end(&cap);
	assert_non_null(strstr(out, "another thread"));
	capture_free(&cap);
	assert_scope(SA_NOIO);
	assert_int_equal(own_depth(), 1);
	/* a cookie that no save made: depth 5 with NOFS, while depth 1 is open */
	cap_begin(&cap);
	restore_site_made_up(5u << 9 | SA_NOFS);
	out = cap_end(&cap);
	assert_non_null(strstr(out, "sheafalloc: scope"));
	capture_free(&cap);
	assert_scope(SA_NOIO);
	cap_begin(&cap);
	sa_memalloc_noio_restore(o);
	out = cap_end(&cap);
	assert_string_equal(out, "");
	capture_free(&cap);
	assert_no_scope();
	struct sa_scope_stats s3 = sstats();
	assert_int_equal(s3.scope_misuse, s2.scope_misuse + 3);
	assert_int_equal(s3.scopes_out_of_order, s2.scopes_out_of_order);
}

/* ------------------------------------------------------------------ scope_check=abort ------- */
/* Drops CAP_IPC_LOCK (root ignores RLIMIT_MEMLOCK) and locks nothing more: mlock fails. */
static int forbid_mlock(void)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d) == 0) {
		d[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
		d[CAP_IPC_LOCK / 32].permitted &= ~(1u << (CAP_IPC_LOCK % 32));
		if (syscall(SYS_capset, &h, d) != 0)
			return -1;
	}
	struct rlimit rl = {0, 0};
	return setrlimit(RLIMIT_MEMLOCK, &rl);
}

/*
 * helper_main: run as "<this binary> --scope-helper=MODE" by test_scope_check_abort, in a new
 * process whose SHEAFALLOC_OPTIONS has scope_check=abort (options are read once, at start-up).
 * Returns only when the library did not abort.
 */
static int helper_main(const char *mode)
{
	/* "-first": the misuse is the process's first call into the library; otherwise an
	 * allocation has initialized it before */
	size_t n = strlen(mode);
	int first = n > 6 && strcmp(mode + n - 6, "-first") == 0;
	if (!first)
		sa_free(sa_malloc(32));
	if (strncmp(mode, "out-of-order", 12) == 0) {
		unsigned c1 = sa_memalloc_nofs_save();
		unsigned c2 = sa_memalloc_noio_save();
		sa_memalloc_nofs_restore(c1);
		fprintf(stderr, "helper: still running after an out-of-order restore\n");
		sa_memalloc_noio_restore(c2);
		return 3;
	}
	if (strncmp(mode, "twice", 5) == 0) {
		unsigned c = sa_memalloc_nofs_save();
		sa_memalloc_nofs_restore(c);
		sa_memalloc_nofs_restore(c);
		fprintf(stderr, "helper: still running after a double restore\n");
		return 3;
	}
	if (strcmp(mode, "nowarn-pin") == 0) { /* a pinned allocation that mlock refuses */
		if (forbid_mlock() != 0)
			return 5;
		struct sa_cache *c = sa_cache_create("scope-nowarn-pin", 64, NULL);
		if (!c)
			return 3;
		void *o = NULL;
		SA_SCOPE(SA_PIN | SA_NOWARN)
		{
			o = sa_cache_alloc(c, 0);
		}
		return o ? 6 : 0; /* 6: mlock did not fail, nothing to test */
	}
	if (strcmp(mode, "node-count") == 0) { /* N allocations on every node in a NOFS scope */
		struct sa_cache *c = sa_cache_create("scope-node-count", 64, NULL);
		int nodes = sa_numa_nodes();
		if (!c || nodes < 2 || nodes > 8)
			return 5;
		enum { PER_NODE = 4 };
		void *o[8 * PER_NODE];
		int n = 0;
		struct sa_scope_stats a, b;
		sa_scope_stats(&a);
		SA_SCOPE(SA_NOFS)
		{
			for (int node = 0; node < nodes; node++)
				for (int i = 0; i < PER_NODE; i++)
					if ((o[n] = sa_cache_alloc_node(c, 0, node)) != NULL)
						n++;
		}
		sa_scope_stats(&b);
		for (int i = 0; i < n; i++)
			sa_cache_free(c, o[i]);
		if (n != nodes * PER_NODE)
			return 3;
		if (b.nofs_allocs - a.nofs_allocs != (uint64_t)n) {
			fprintf(stderr,
				"%d sa_cache_alloc_node calls (%d per node, %d nodes) in a NOFS "
				"scope: "
				"nofs_allocs grew by %llu\n",
				n, PER_NODE, nodes,
				(unsigned long long)(b.nofs_allocs - a.nofs_allocs));
			return 1;
		}
		return 0;
	}
	if (strcmp(mode, "in-order") == 0) { /* no misuse: no abort */
		unsigned c1 = sa_memalloc_nofs_save();
		unsigned c2 = sa_memalloc_noio_save();
		sa_memalloc_noio_restore(c2);
		sa_memalloc_nofs_restore(c1);
		return sa_memalloc_flags() == 0 ? 0 : 4;
	}
	fprintf(stderr, "helper: unknown mode %s\n", mode);
	return 2;
}

extern char **environ;

/*
 * Runs this binary's helper MODE in a new process (posix_spawn: no fork handlers run in this
 * process), with opt added to SHEAFALLOC_OPTIONS and extra_env (NAME=value, or NULL) added to its
 * environment; its stderr into out. Returns its status.
 */
static int run_helper(const char *mode, const char *opt, const char *extra_env, char *out,
		      size_t outlen)
{
	static char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	assert_true(n > 0);
	self[n] = 0;
	const char *old = getenv("SHEAFALLOC_OPTIONS");
	static char opts[600];
	snprintf(opts, sizeof(opts), "SHEAFALLOC_OPTIONS=%s%s%s", old ? old : "",
		 old && *old && *opt ? "," : "", opt);
	size_t ne = 0;
	while (environ[ne])
		ne++;
	char **env = calloc(ne + 3, sizeof(char *));
	assert_non_null(env);
	size_t k = 0;
	for (size_t i = 0; i < ne; i++)
		if (strncmp(environ[i], "SHEAFALLOC_OPTIONS=", 19) != 0)
			env[k++] = environ[i];
	env[k++] = opts;
	if (extra_env)
		env[k++] = (char *)extra_env;
	env[k] = NULL;
	char arg[64];
	snprintf(arg, sizeof(arg), "--scope-helper=%s", mode);
	char *argv[] = {self, arg, NULL};
	int p[2];
	assert_int_equal(pipe(p), 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[1], 2);
	posix_spawn_file_actions_addclose(&fa, p[0]);
	posix_spawn_file_actions_addclose(&fa, p[1]);
	/* no core file from the helpers that abort: the limit is inherited */
	struct rlimit core, nocore = {0, 0};
	getrlimit(RLIMIT_CORE, &core);
	nocore.rlim_max = core.rlim_max;
	setrlimit(RLIMIT_CORE, &nocore);
	fflush(stdout);
	fflush(stderr);
	pid_t pid;
	int rc = posix_spawn(&pid, self, &fa, NULL, argv, env);
	setrlimit(RLIMIT_CORE, &core);
	posix_spawn_file_actions_destroy(&fa);
	free(env);
	close(p[1]);
	assert_int_equal(rc, 0);
	size_t got = 0;
	for (;;) {
		ssize_t r = read(p[0], out + got, outlen - 1 - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
		if (got == outlen - 1)
			break;
	}
	out[got] = 0;
	close(p[0]);
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	return st;
}

/* Runs helper mode with scope_check=abort: it must print the report, then die of SIGABRT. */
static const char *expect_abort(const char *mode, const char *what)
{
	static char out[16384];
	int st = run_helper(mode, "scope_check=abort", NULL, out, sizeof(out));
	if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT)
		print_error("helper %s: status %#x (want SIGABRT), stderr: '%s'\n", mode, st, out);
	assert_non_null(strstr(out, what));
	assert_non_null(strstr(out, "aborting (scope_check=abort)"));
	assert_null(strstr(out, "still running"));
	assert_true(WIFSIGNALED(st));
	assert_int_equal(WTERMSIG(st), SIGABRT);
	return out;
}

static void test_scope_check_abort(void **state)
{
	(void)state;
	static char out[16384];
	const char *rep = expect_abort("out-of-order", "out of LIFO order");
	assert_int_equal(count_substr(rep, "out of LIFO order"), 1);
	assert_non_null(strstr(rep, "depth 1"));
	assert_non_null(strstr(rep, "depth 2"));
	expect_abort("twice", "twice");
	int st = run_helper("in-order", "scope_check=abort", NULL, out, sizeof(out));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		print_error("helper in-order: status %#x, stderr: '%s'\n", st, out);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_null(strstr(out, "sheafalloc: scope"));
}

/* The option holds from the start: also when the misuse is the first call into the library. */
static void test_scope_check_abort_first_call(void **state)
{
	(void)state;
	expect_abort("out-of-order-first", "out of LIFO order");
}

/* ------------------------------------------------------------------ 3. refused flags -------- */
static void test_refused_flags(void **state)
{
	(void)state;
	static const sa_flags_t bad[] = {
		SA_NOFAIL, 1u << 20, SA_NOFS | SA_NOFAIL, 1u << 9, SA_ZERO | (1u << 31), ~0u,
	};
	unsigned outer = sa_memalloc_flags_save(SA_NOWARN);
	struct sa_scope_stats before = sstats();
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		errno = 0;
		unsigned c = sa_memalloc_flags_save(bad[i]);
		assert_int_equal(c, SA_SCOPE_INVALID);
		assert_int_equal(errno, EINVAL);
		assert_scope(SA_NOWARN);
		assert_int_equal(own_depth(), 1);
	}
	struct sa_scope_stats mid = sstats();
	assert_int_equal(mid.scopes_refused - before.scopes_refused, ARRAY_SIZE(bad));
	assert_int_equal(mid.scope_saves, before.scope_saves);
	/* restoring SA_SCOPE_INVALID does nothing, through every restore */
	struct capture cap;
	cap_begin(&cap);
	sa_memalloc_flags_restore(SA_SCOPE_INVALID);
	for (size_t i = 0; i < ARRAY_SIZE(named); i++)
		named[i].restore(SA_SCOPE_INVALID);
	SA_SCOPE(SA_NOFAIL)
	{
		assert_scope(SA_NOWARN);
	}
	SA_SCOPE(SA_ZERO | (1u << 12))
	{
		assert_scope(SA_NOWARN);
	}
	const char *out = cap_end(&cap);
	assert_string_equal(out, "");
	capture_free(&cap);
	assert_scope(SA_NOWARN);
	assert_int_equal(own_depth(), 1);
	struct sa_scope_stats after = sstats();
	assert_int_equal(after.scope_misuse, before.scope_misuse);
	assert_int_equal(after.scopes_refused - mid.scopes_refused, 2);
	/* the outer scope is still the innermost one: an in-order restore */
	cap_begin(&cap);
	sa_memalloc_flags_restore(outer);
	out = cap_end(&cap);
	assert_string_equal(out, "");
	capture_free(&cap);
	assert_no_scope();
}

/* ------------------------------------------------------------------ 4. SA_SCOPE ------------- */
static sa_flags_t return_inside(int deep)
{
	SA_SCOPE(SA_NOIO)
	{
		if (deep) {
			SA_SCOPE(SA_ZERO)
			{
				return sa_memalloc_flags();
			}
		}
		return sa_memalloc_flags();
	}
	return 0xdead;
}

/* depth levels of SA_SCOPE, each adding the flag of its level; the innermost returns */
static int recurse(int depth, int max, sa_flags_t have)
{
	if (depth == max)
		return sa_memalloc_flags() == have ? 0 : -1;
	sa_flags_t f = scopable[depth % ARRAY_SIZE(scopable)];
	if (f == SA_NOWAIT)
		f = SA_NOWARN; /* keep the test thread free to wait */
	SA_SCOPE(f)
	{
		if (sa_memalloc_flags() != (have | f))
			return -1;
		int r = recurse(depth + 1, max, have | f);
		if (sa_memalloc_flags() != (have | f))
			return -1;
		return r;
	}
	return -2;
}

static void test_scope_macro(void **state)
{
	(void)state;
	struct sa_scope_stats before = sstats();
	struct capture cap;
	cap_begin(&cap);
	/* the end of the block; nested blocks */
	int ran = 0;
	SA_SCOPE(SA_NOFS)
	{
		assert_scope(SA_NOFS);
		SA_SCOPE(SA_NOIO | SA_ZERO)
		{
			assert_scope(SA_NOFS | SA_NOIO | SA_ZERO);
			ran++;
		}
		assert_scope(SA_NOFS);
		ran++;
	}
	assert_int_equal(ran, 2);
	assert_no_scope();
	/* return from inside (one and two levels) */
	assert_int_equal(return_inside(0), SA_NOIO);
	assert_no_scope();
	assert_int_equal(return_inside(1), SA_NOIO | SA_ZERO);
	assert_no_scope();
	/* break and continue leave the block (the macro is a loop) */
	int after_break = 0, after_continue = 0, tail = 0;
	for (int i = 0; i < 6; i++) {
		SA_SCOPE(SA_NOFS)
		{
			if (i % 2)
				break;
			SA_SCOPE(SA_ZERO)
			{
				if (i % 3 == 0)
					continue;
				after_continue++;
			}
			assert_scope(SA_NOFS);
			after_break++;
		}
		assert_no_scope();
		tail++;
	}
	assert_int_equal(tail, 6);
	assert_int_equal(after_break, 3);    /* i = 0, 2, 4 */
	assert_int_equal(after_continue, 2); /* i = 2, 4 */
	/* goto out of two nested blocks */
	int reached = 0;
	SA_SCOPE(SA_NOFS)
	{
		SA_SCOPE(SA_NOWARN)
		{
			assert_scope(SA_NOFS | SA_NOWARN);
			goto out;
		}
		reached = 1;
	}
	reached = 2;
out:
	assert_int_equal(reached, 0);
	assert_no_scope();
	/* 200 nested blocks through recursion, every level returns from inside its block */
	assert_int_equal(recurse(0, 200, 0), 0);
	assert_no_scope();
	const char *out = cap_end(&cap);
	assert_string_equal(out, "");
	capture_free(&cap);
	struct sa_scope_stats after = sstats();
	assert_int_equal(after.scope_misuse, before.scope_misuse);
	/* the blocks that opened: 2 nested, 1 + 2 returning, 6 + 3 in the loop (the ZERO one
	 * at i = 0, 2, 4), 2 left by goto, 200 recursive */
	assert_int_equal(after.scope_saves - before.scope_saves, 2 + 3 + 6 + 3 + 2 + 200);
}

/* ------------------------------------------------------------------ 5. coroutines ---------- */
#define CO_STACK (256 * 1024)

struct coro {
	ucontext_t ctx;
	ucontext_t *caller; /* the scheduler context that resumed it last */
	char *stack;
	struct sa_scope_state state;
	int swap; /* the scheduler swaps state in and out */
	void (*fn)(struct coro *);
	int done;
	unsigned vg_id;
#if defined(__SANITIZE_THREAD__)
	void *fiber, *caller_fiber;
#endif
#if defined(__SANITIZE_ADDRESS__)
	void *fake;
	const void *caller_bottom;
	size_t caller_size;
#endif
};

/* checks made inside coroutines, looked at by the test afterwards (no longjmp across stacks) */
static struct {
	int fails;
	char first[256];
} colog;

#define CO_CHECK(cond)                                                                        \
	do {                                                                                  \
		if (!(cond) && colog.fails++ == 0)                                            \
			snprintf(colog.first, sizeof(colog.first), "line %d: %s (flags %#x)", \
				 __LINE__, #cond, sa_memalloc_flags());                       \
	} while (0)

static void coro_yield(struct coro *co)
{
#if defined(__SANITIZE_THREAD__)
	__tsan_switch_to_fiber(co->caller_fiber, 0);
#endif
#if defined(__SANITIZE_ADDRESS__)
	__sanitizer_start_switch_fiber(&co->fake, co->caller_bottom, co->caller_size);
#endif
	swapcontext(&co->ctx, co->caller);
#if defined(__SANITIZE_ADDRESS__)
	__sanitizer_finish_switch_fiber(co->fake, &co->caller_bottom, &co->caller_size);
#endif
}

static void coro_entry(unsigned lo, unsigned hi)
{
	struct coro *co = (struct coro *)(((uintptr_t)hi << 32) | lo);
#if defined(__SANITIZE_ADDRESS__)
	__sanitizer_finish_switch_fiber(NULL, &co->caller_bottom, &co->caller_size);
#endif
	co->fn(co);
	co->done = 1;
	for (;;) /* never returns: the test drops the coroutine */
		coro_yield(co);
}

static void coro_init(struct coro *co, void (*fn)(struct coro *), int swap)
{
	memset(co, 0, sizeof(*co));
	co->fn = fn;
	co->swap = swap;
	sa_scope_state_init(&co->state);
	co->stack =
		mmap(NULL, CO_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(co->stack != MAP_FAILED);
#ifdef HAVE_VALGRIND_H
	co->vg_id = VALGRIND_STACK_REGISTER(co->stack, co->stack + CO_STACK);
#endif
#if defined(__SANITIZE_THREAD__)
	co->fiber = __tsan_create_fiber(0);
#endif
	assert_int_equal(getcontext(&co->ctx), 0);
	co->ctx.uc_stack.ss_sp = co->stack;
	co->ctx.uc_stack.ss_size = CO_STACK;
	co->ctx.uc_link = NULL;
	uintptr_t p = (uintptr_t)co;
	makecontext(&co->ctx, (void (*)(void))coro_entry, 2, (unsigned)(p & 0xffffffffu),
		    (unsigned)(p >> 32));
}

static void coro_destroy(struct coro *co)
{
#if defined(__SANITIZE_THREAD__)
	__tsan_destroy_fiber(co->fiber);
#endif
#ifdef HAVE_VALGRIND_H
	VALGRIND_STACK_DEREGISTER(co->vg_id);
#endif
	munmap(co->stack, CO_STACK);
}

/* The scheduler: switch into co until it yields; with co->swap, its scope state goes with it. */
static void coro_resume(struct coro *co)
{
	ucontext_t here;
	struct sa_scope_state *prev = NULL;
	if (co->swap)
		prev = sa_scope_swap(&co->state);
	co->caller = &here;
#if defined(__SANITIZE_THREAD__)
	co->caller_fiber = __tsan_get_current_fiber();
	__tsan_switch_to_fiber(co->fiber, 0);
#endif
#if defined(__SANITIZE_ADDRESS__)
	void *fake = NULL;
	__sanitizer_start_switch_fiber(&fake, co->stack, CO_STACK);
#endif
	/* no cmocka assert here: a scheduler may run on another thread */
	CO_CHECK(swapcontext(&here, &co->ctx) == 0);
#if defined(__SANITIZE_ADDRESS__)
	__sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
	if (co->swap) {
		struct sa_scope_state *mine = sa_scope_swap(prev);
		CO_CHECK(mine == &co->state);
	}
}

/* A: NOFS, yield, restore, end. B: NOIO, yield, restore, end. Scheduled A B A B. */
static void co_b(struct coro *co)
{
	int own = co->swap;
	CO_CHECK(sa_memalloc_flags() == (own ? 0 : SA_NOFS));
	unsigned c = sa_memalloc_noio_save();
	CO_CHECK(sa_memalloc_flags() == (own ? SA_NOIO : SA_NOFS | SA_NOIO));
	CO_CHECK(sa_current_flags(0) == (SA_NOIO | SA_NOFS));
	coro_yield(co); /* A restores */
	CO_CHECK(sa_memalloc_flags() == (own ? SA_NOIO : SA_NOFS | SA_NOIO));
	CO_CHECK(sa_current_flags(0) == (SA_NOIO | SA_NOFS));
	sa_memalloc_noio_restore(c);
	CO_CHECK(sa_memalloc_flags() == 0);
	CO_CHECK(sa_current_flags(0) == 0);
}

/* A's restore has a call site of its own (reported once: in the test without swap) */
RESTORE_SITE(restore_site_coro, 12)

static void co_a(struct coro *co)
{
	int own = co->swap;
	CO_CHECK(sa_memalloc_flags() == 0);
	unsigned c = sa_memalloc_nofs_save();
	CO_CHECK(sa_memalloc_flags() == SA_NOFS);
	CO_CHECK(sa_current_flags(0) == SA_NOFS);
	coro_yield(co);
	CO_CHECK(sa_memalloc_flags() == (own ? SA_NOFS : SA_NOFS | SA_NOIO));
	CO_CHECK(sa_current_flags(0) == (own ? SA_NOFS : SA_NOFS | SA_NOIO));
	restore_site_coro(c);
	CO_CHECK(sa_memalloc_flags() == (own ? 0 : SA_NOFS | SA_NOIO));
	CO_CHECK(sa_current_flags(0) == (own ? 0 : SA_NOFS | SA_NOIO));
}

static void run_ab(int swap, struct coro *a, struct coro *b)
{
	coro_init(a, co_a, swap);
	coro_init(b, co_b, swap);
	memset(&colog, 0, sizeof(colog));
	coro_resume(a);
	coro_resume(b);
	coro_resume(a);
	coro_resume(b);
	assert_true(a->done);
	assert_true(b->done);
	if (colog.fails)
		print_error("%d check(s) failed inside the coroutines; first: %s\n", colog.fails,
			    colog.first);
}

static void test_coroutines_without_swap(void **state)
{
	(void)state;
	struct coro a, b;
	struct sa_scope_stats before = sstats();
	struct capture cap;
	cap_begin(&cap);
	run_ab(0, &a, &b);
	const char *out = cap_end(&cap);
	int fails = colog.fails;
	coro_destroy(&a);
	coro_destroy(&b);
	if (count_substr(out, "out of LIFO order") != 1)
		print_error("report was: '%s'\n", out ? out : "");
	assert_int_equal(count_substr(out, "out of LIFO order"), 1);
	assert_non_null(strstr(out, "depth 1"));
	assert_non_null(strstr(out, "depth 2"));
	capture_free(&cap);
	assert_int_equal(fails, 0);
	struct sa_scope_stats after = sstats();
	assert_int_equal(after.scopes_out_of_order, before.scopes_out_of_order + 1);
	assert_int_equal(after.scope_swaps, before.scope_swaps);
	assert_no_scope();
}

static void test_coroutines_with_swap(void **state)
{
	(void)state;
	struct coro a, b;
	/* the main context has a scope of its own, which the coroutines must not see */
	unsigned m = sa_memalloc_flags_save(SA_NOWARN);
	struct sa_scope_stats before = sstats();
	struct capture cap;
	cap_begin(&cap);
	coro_init(&a, co_a, 1);
	coro_init(&b, co_b, 1);
	memset(&colog, 0, sizeof(colog));
	static const struct {
		int who;		     /* 0: a, 1: b */
		sa_flags_t a_after, b_after; /* sa_scope_state_flags after the step */
	} plan[] = {
		{0, SA_NOFS, 0},
		{1, SA_NOFS, SA_NOIO},
		{0, 0, SA_NOIO},
		{1, 0, 0},
	};
	int bad_step = -1;
	for (size_t i = 0; i < ARRAY_SIZE(plan); i++) {
		coro_resume(plan[i].who ? &b : &a);
		if (bad_step < 0 &&
		    (sa_scope_state_flags(&a.state) != plan[i].a_after ||
		     sa_scope_state_flags(&b.state) != plan[i].b_after ||
		     sa_memalloc_flags() != SA_NOWARN || sa_current_flags(0) != SA_NOWARN))
			bad_step = (int)i;
	}
	const char *out = cap_end(&cap);
	assert_true(a.done);
	assert_true(b.done);
	int fails = colog.fails;
	if (fails)
		print_error("%d check(s) failed inside the coroutines; first: %s\n", fails,
			    colog.first);
	if (bad_step >= 0)
		print_error("after step %d: state flags a %#x b %#x, main %#x\n", bad_step,
			    sa_scope_state_flags(&a.state), sa_scope_state_flags(&b.state),
			    sa_memalloc_flags());
	if (*out)
		print_error("unexpected report: '%s'\n", out);
	assert_string_equal(out, "");
	capture_free(&cap);
	assert_int_equal(fails, 0);
	assert_int_equal(bad_step, -1);
	assert_int_equal(sa_scope_state_flags(&a.state), 0);
	assert_int_equal(sa_scope_state_flags(&b.state), 0);
	struct sa_scope_stats after = sstats();
	assert_int_equal(after.scope_misuse, before.scope_misuse);
	assert_int_equal(after.scopes_out_of_order, before.scopes_out_of_order);
	assert_int_equal(after.scope_swaps - before.scope_swaps, 2 * ARRAY_SIZE(plan));
	coro_destroy(&a);
	coro_destroy(&b);
	assert_scope(SA_NOWARN);
	assert_null(sa_scope_tls.cur);
	sa_memalloc_flags_restore(m);
	assert_no_scope();
}

/* C: saves NOFS|ZERO on the main thread, yields, is resumed on another thread, restores. */
/* The kernel's thread id: pthread_self() is a const function, which the compiler may read
 * once for both sides of a yield that moves the coroutine to another thread. */
static pid_t main_tid;

static __attribute__((noinline)) pid_t tid_now(void)
{
	return (pid_t)syscall(SYS_gettid);
}

static void co_c(struct coro *co)
{
	CO_CHECK(tid_now() == main_tid);
	CO_CHECK(sa_memalloc_flags() == 0);
	unsigned c = sa_memalloc_flags_save(SA_NOFS | SA_ZERO);
	CO_CHECK(sa_memalloc_flags() == (SA_NOFS | SA_ZERO));
	coro_yield(co);
	CO_CHECK(tid_now() != main_tid);
	CO_CHECK(sa_memalloc_flags() == (SA_NOFS | SA_ZERO));
	CO_CHECK(sa_current_flags(0) == (SA_NOFS | SA_ZERO));
	sa_memalloc_flags_restore(c);
	CO_CHECK(sa_memalloc_flags() == 0);
}

struct mover {
	struct coro *co;
	sa_flags_t before, after, state_after;
};

static void *mover_thread(void *p)
{
	struct mover *m = p;
	unsigned own = sa_memalloc_pin_save(); /* this thread's own scope */
	m->before = sa_memalloc_flags();
	coro_resume(m->co);
	m->after = sa_memalloc_flags();
	m->state_after = sa_scope_state_flags(&m->co->state);
	sa_memalloc_pin_restore(own);
	return NULL;
}

static void test_coroutine_moves_thread(void **state)
{
	(void)state;
	main_tid = tid_now();
	struct coro c;
	struct capture cap;
	cap_begin(&cap);
	coro_init(&c, co_c, 1);
	memset(&colog, 0, sizeof(colog));
	coro_resume(&c);
	assert_no_scope();
	assert_int_equal(sa_scope_state_flags(&c.state), SA_NOFS | SA_ZERO);
	struct mover m = {.co = &c};
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, mover_thread, &m), 0);
	pthread_join(t, NULL);
	const char *out = cap_end(&cap);
	if (colog.fails)
		print_error("%d check(s) failed inside the coroutine; first: %s\n", colog.fails,
			    colog.first);
	assert_int_equal(colog.fails, 0);
	assert_true(c.done);
	assert_string_equal(out, "");
	capture_free(&cap);
	assert_int_equal(m.before, SA_PIN);
	assert_int_equal(m.after, SA_PIN);
	assert_int_equal(m.state_after, 0);
	assert_int_equal(sa_scope_state_flags(&c.state), 0);
	coro_destroy(&c);
	assert_no_scope();
}

/* The rseq area of this thread (white box): its cpu_id is -1 until the thread registers. */
static int32_t rseq_cpu_id(void)
{
	return *(volatile int32_t *)((char *)__builtin_thread_pointer() + sa_rseq_off + 4);
}

struct nowait_mover {
	struct sa_cache *c;
	struct sa_scope_state *st;
	unsigned cookie;
	int32_t id_before, id_swapped, id_after_alloc;
	sa_flags_t flags_in;
	void *obj;
};

static void *nowait_mover_thread(void *p)
{
	struct nowait_mover *m = p;
	m->id_before = rseq_cpu_id();
	struct sa_scope_state *prev = sa_scope_swap(m->st); /* a NOWAIT scope arrives */
	m->flags_in = sa_memalloc_flags();
	m->id_swapped = rseq_cpu_id();
	m->obj = sa_cache_alloc(m->c, 0); /* NOWAIT: no system call */
	m->id_after_alloc = rseq_cpu_id();
	sa_memalloc_nowait_restore(m->cookie);
	sa_scope_swap(prev);
	if (m->obj)
		sa_cache_free(m->c, m->obj);
	return NULL;
}

/*
 * A NOWAIT scope that arrives on a thread by sa_scope_swap (a coroutine resumed on another
 * thread) must find what a NOWAIT scope needs made, as sa_memalloc_nowait_save makes it: with
 * the library's own rseq registration (GLIBC_TUNABLES=glibc.pthread.rseq=0), the thread's
 * registration (a system call) must not happen inside a NOWAIT allocation.
 */
static void test_nowait_state_moves_thread(void **state)
{
	(void)state;
	sa_free(sa_malloc(16)); /* initialized: the per-CPU mode is decided */
	if (sa_pcs_mode != SA_PCS_RSEQ_OWN) {
		print_message("per-CPU mode '%s': the thread registers no rseq area of ours: "
			      "skipped\n",
			      sa_percpu_mode());
		skip();
	}
	struct sa_cache *c = sa_cache_create("scope-nowait-move", 64, NULL);
	assert_non_null(c);
	void *warm[64];
	for (int i = 0; i < 64; i++)
		warm[i] = sa_cache_alloc(c, 0);
	sa_cache_free_bulk(c, 64, warm);
	struct sa_scope_state st;
	sa_scope_state_init(&st);
	struct nowait_mover m = {.c = c, .st = &st};
	struct sa_scope_state *prev = sa_scope_swap(&st);
	m.cookie = sa_memalloc_nowait_save();
	sa_scope_swap(prev);
	assert_no_scope();
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, nowait_mover_thread, &m), 0);
	pthread_join(t, NULL);
	print_message(
		"new thread: rseq cpu_id %d before, %d after the NOWAIT state came in, %d after "
		"a NOWAIT allocation (%s)\n",
		m.id_before, m.id_swapped, m.id_after_alloc, m.obj ? "served" : "NULL");
	assert_int_equal(m.flags_in, SA_NOWAIT);
	assert_int_equal(sa_scope_state_flags(&st), 0);
	assert_int_equal(m.id_before, -1);
	if (m.id_swapped < 0 && m.id_after_alloc >= 0)
		print_error("the NOWAIT allocation registered the thread's rseq area (a system "
			    "call inside a NOWAIT scope that sa_scope_swap brought in)\n");
	assert_false(m.id_swapped < 0 && m.id_after_alloc >= 0);
	sa_cache_destroy(c);
	assert_no_scope();
}

/* NULL stands for the thread's own state (sheafalloc.h): sa_scope_state_flags(NULL) is it. */
static void test_scope_state_flags_null(void **state)
{
	(void)state;
	assert_int_equal(sa_scope_state_flags(NULL), 0);
	unsigned c = sa_memalloc_flags_save(SA_NOFS | SA_ZERO);
	struct sa_scope_state st;
	sa_scope_state_init(&st);
	assert_int_equal(sa_scope_state_flags(&st), 0);
	struct sa_scope_state *prev = sa_scope_swap(&st);
	assert_null(prev);
	assert_scope(0);
	sa_flags_t own_while_away = sa_scope_state_flags(NULL);
	sa_scope_swap(prev);
	sa_flags_t own_at_home = sa_scope_state_flags(NULL);
	sa_memalloc_flags_restore(c);
	assert_no_scope();
	assert_int_equal(own_while_away, SA_NOFS | SA_ZERO);
	assert_int_equal(own_at_home, SA_NOFS | SA_ZERO);
}

/* ------------------------------------------------------------------ 6. hand-off ------------ */
#define POOL_WORKERS 3
#define POOL_TASKS   16 /* per submitter */
#define TASK_OBJS    32
#define OBJ_SIZE     256

static void ctor_dirty(void *obj)
{
	memset(obj, 0xa5, OBJ_SIZE);
}

static int all_zero(const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i])
			return 0;
	return 1;
}

struct task {
	sa_flags_t scope; /* captured by the submitter */
};

struct pool {
	pthread_mutex_t lock;
	pthread_cond_t more, done_cv;
	struct task q[2 * POOL_TASKS];
	int head, tail, done, stop;
	struct sa_cache *c;
	atomic_int bad_before, bad_adopt, bad_after, bad_zero, got, got_wait, want_wait;
	atomic_int invalid;
};

static void run_task(struct pool *p, const struct task *t)
{
	if (sa_memalloc_flags() != 0 || sa_current_flags(0) != 0)
		atomic_fetch_add(&p->bad_before, 1);
	unsigned c = sa_memalloc_flags_save(t->scope);
	if (c == SA_SCOPE_INVALID)
		atomic_fetch_add(&p->invalid, 1);
	if (sa_memalloc_flags() != t->scope || sa_current_flags(0) != implied(t->scope))
		atomic_fetch_add(&p->bad_adopt, 1);
	void *objs[TASK_OBJS];
	for (int i = 0; i < TASK_OBJS; i++) {
		objs[i] = sa_cache_alloc(p->c, 0);
		if (!(t->scope & SA_NOWAIT))
			atomic_fetch_add(&p->want_wait, 1);
		if (!objs[i])
			continue;
		if (!(t->scope & SA_NOWAIT))
			atomic_fetch_add(&p->got_wait, 1);
		atomic_fetch_add(&p->got, 1);
		if (!all_zero(objs[i], OBJ_SIZE))
			atomic_fetch_add(&p->bad_zero, 1);
		memset(objs[i], 0x5a, OBJ_SIZE); /* dirty for the next task */
	}
	sa_memalloc_flags_restore(c);
	for (int i = 0; i < TASK_OBJS; i++)
		if (objs[i])
			sa_cache_free(p->c, objs[i]);
	if (sa_memalloc_flags() != 0 || sa_current_flags(0) != 0)
		atomic_fetch_add(&p->bad_after, 1);
}

static void *worker(void *arg)
{
	struct pool *p = arg;
	for (;;) {
		pthread_mutex_lock(&p->lock);
		while (p->head == p->tail && !p->stop)
			pthread_cond_wait(&p->more, &p->lock);
		if (p->head == p->tail) {
			pthread_mutex_unlock(&p->lock);
			return NULL;
		}
		struct task t = p->q[p->head++];
		pthread_mutex_unlock(&p->lock);
		run_task(p, &t);
		pthread_mutex_lock(&p->lock);
		p->done++;
		pthread_cond_broadcast(&p->done_cv);
		pthread_mutex_unlock(&p->lock);
	}
}

struct submitter {
	struct pool *p;
	sa_flags_t scope;
	sa_flags_t captured;
};

static void *submit(void *arg)
{
	struct submitter *s = arg;
	unsigned c = sa_memalloc_flags_save(s->scope);
	s->captured = sa_memalloc_flags();
	for (int i = 0; i < POOL_TASKS; i++) {
		pthread_mutex_lock(&s->p->lock);
		s->p->q[s->p->tail++] = (struct task){.scope = s->captured};
		pthread_cond_signal(&s->p->more);
		pthread_mutex_unlock(&s->p->lock);
	}
	sa_memalloc_flags_restore(c);
	return NULL;
}

static void test_handoff_thread_pool(void **state)
{
	(void)state;
	struct pool *p = calloc(1, sizeof(*p));
	assert_non_null(p);
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->more, NULL);
	pthread_cond_init(&p->done_cv, NULL);
	struct sa_cache_args a = {.ctor = ctor_dirty};
	p->c = sa_cache_create("scope-pool", OBJ_SIZE, &a);
	assert_non_null(p->c);
	/* dirty objects in the cache: taken, written, given back */
	enum { WARM = 2000 };
	static void *warm[WARM];
	for (int i = 0; i < WARM; i++) {
		warm[i] = sa_cache_alloc(p->c, 0);
		assert_non_null(warm[i]);
		memset(warm[i], 0x77, OBJ_SIZE);
	}
	sa_cache_free_bulk(p->c, WARM, warm);
	pthread_t w[POOL_WORKERS];
	for (int i = 0; i < POOL_WORKERS; i++)
		assert_int_equal(pthread_create(&w[i], NULL, worker, p), 0);
	struct sa_scope_stats before = sstats();
	/* two submitters with different scopes; their tasks interleave in the queue */
	struct submitter s[2] = {
		{.p = p, .scope = SA_ZERO | SA_NOWAIT | SA_NOIO},
		{.p = p, .scope = SA_ZERO | SA_NOFS | SA_NOWARN},
	};
	pthread_t st[2];
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&st[i], NULL, submit, &s[i]), 0);
	for (int i = 0; i < 2; i++)
		pthread_join(st[i], NULL);
	pthread_mutex_lock(&p->lock);
	while (p->done < 2 * POOL_TASKS)
		pthread_cond_wait(&p->done_cv, &p->lock);
	p->stop = 1;
	pthread_cond_broadcast(&p->more);
	pthread_mutex_unlock(&p->lock);
	for (int i = 0; i < POOL_WORKERS; i++)
		pthread_join(w[i], NULL);
	struct sa_scope_stats after = sstats();
	assert_int_equal(s[0].captured, s[0].scope);
	assert_int_equal(s[1].captured, s[1].scope);
	print_message("hand-off: %d of %d objects served (%d of %d without NOWAIT)\n",
		      atomic_load(&p->got), 2 * POOL_TASKS * TASK_OBJS, atomic_load(&p->got_wait),
		      atomic_load(&p->want_wait));
	assert_int_equal(atomic_load(&p->invalid), 0);
	assert_int_equal(atomic_load(&p->bad_before), 0);
	assert_int_equal(atomic_load(&p->bad_adopt), 0);
	assert_int_equal(atomic_load(&p->bad_after), 0);
	assert_int_equal(atomic_load(&p->bad_zero), 0);
	/* without NOWAIT every allocation is served; with it, most are (nothing is in the way) */
	assert_int_equal(atomic_load(&p->got_wait), POOL_TASKS * TASK_OBJS);
	assert_true(atomic_load(&p->got) > POOL_TASKS * TASK_OBJS);
	const uint64_t n = (uint64_t)POOL_TASKS * TASK_OBJS;
	assert_int_equal(after.nowait_allocs - before.nowait_allocs, n);
	assert_int_equal(after.noio_allocs - before.noio_allocs, n);
	assert_int_equal(after.nofs_allocs - before.nofs_allocs, n);
	assert_int_equal(after.nowarn_allocs - before.nowarn_allocs, n);
	assert_int_equal(after.zero_allocs - before.zero_allocs, 2 * n);
	/* saves: 2 submitters + one per task */
	assert_int_equal(after.scope_saves - before.scope_saves, 2 + 2 * POOL_TASKS);
	assert_int_equal(after.scope_misuse, before.scope_misuse);
	sa_trim(); /* frees a NOWAIT context deferred, if any */
	sa_cache_destroy(p->c);
	pthread_cond_destroy(&p->more);
	pthread_cond_destroy(&p->done_cv);
	pthread_mutex_destroy(&p->lock);
	free(p);
	assert_no_scope();
}

/* ------------------------------------------------------------------ 7. ZERO and NOWARN ----- */
static void test_zero_scope_cache(void **state)
{
	(void)state;
	pin_here();
	enum { N = 600 };
	static void *objs[N];
	struct sa_cache_args a = {.ctor = ctor_dirty, .sheaf_capacity = 16};
	struct sa_cache *c = sa_cache_create("scope-zero", OBJ_SIZE, &a);
	assert_non_null(c);
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < N; i++) {
			objs[i] = sa_cache_alloc(c, 0);
			assert_non_null(objs[i]);
			assert_false(all_zero(objs[i], OBJ_SIZE)); /* control: dirty */
			memset(objs[i], 0x3c, OBJ_SIZE);
		}
		sa_cache_free_bulk(c, N, objs);
		SA_SCOPE(SA_ZERO)
		{
			for (int i = 0; i < N; i++) {
				if (round == 0)
					objs[i] = sa_cache_alloc(c, 0);
				else if (round == 1)
					objs[i] = sa_cache_alloc_node(c, 0, i % 2 ? -1 : 0);
				else if (i == 0)
					assert_int_equal(sa_cache_alloc_bulk(c, 0, N, objs), N);
				assert_non_null(objs[i]);
				if (!all_zero(objs[i], OBJ_SIZE))
					print_error("round %d: object %d not zeroed in a ZERO "
						    "scope\n",
						    round, i);
				assert_true(all_zero(objs[i], OBJ_SIZE));
				memset(objs[i], 0x3c, OBJ_SIZE); /* dirty again */
			}
		}
		sa_cache_free_bulk(c, N, objs);
	}
	sa_cache_destroy(c);
	assert_no_scope();
}

static void test_zero_scope_sheaf_alloc(void **state)
{
	(void)state;
	pin_here();
	struct sa_cache_args a = {.ctor = ctor_dirty, .sheaf_capacity = 16};
	struct sa_cache *c = sa_cache_create("scope-zero-sheaf", OBJ_SIZE, &a);
	assert_non_null(c);
	unsigned cnt[] = {8, 100}; /* a normal and an oversize sheaf */
	for (size_t k = 0; k < ARRAY_SIZE(cnt); k++) {
		int bad = 0;
		SA_SCOPE(SA_ZERO)
		{
			struct sa_sheaf *s = sa_sheaf_prefill(c, 0, cnt[k]);
			assert_non_null(s);
			for (unsigned i = 0; i < cnt[k]; i++) {
				void *o = sa_sheaf_alloc(c, 0, s);
				assert_non_null(o);
				if (!all_zero(o, OBJ_SIZE))
					bad++;
				sa_cache_free(c, o);
			}
			sa_sheaf_return(c, 0, s);
		}
		if (bad)
			print_error("sa_sheaf_alloc inside a ZERO scope: %d of %u objects (sheaf "
				    "of %u) not zeroed\n",
				    bad, cnt[k], cnt[k]);
		assert_int_equal(bad, 0);
	}
	sa_cache_destroy(c);
	assert_no_scope();
}

static void test_zero_scope_malloc(void **state)
{
	(void)state;
	pin_here();
	static const size_t sizes[] = {24, 200, 1000, 3000, 100 * 1024, 5 << 20};
	/* huge blocks live meanwhile: a freed huge mapping is cached for reuse only while it is
	 * at most a quarter of the live huge bytes */
	void *keep[4];
	for (int i = 0; i < 4; i++) {
		keep[i] = sa_malloc(5 << 20);
		assert_non_null(keep[i]);
	}
	for (size_t k = 0; k < ARRAY_SIZE(sizes); k++) {
		size_t n = sizes[k];
		/* control: freed dirty memory comes back dirty without the scope */
		char *p = sa_malloc(n);
		assert_non_null(p);
		memset(p, 0xa5, n);
		sa_free(p);
		char *q = sa_malloc(n);
		assert_non_null(q);
		int reused =
			q == p && (unsigned char)q[0] == 0xa5 && (unsigned char)q[n - 1] == 0xa5;
		/* the same with the scope */
		memset(q, 0xa5, n);
		sa_free(q);
		char *z = NULL;
		SA_SCOPE(SA_ZERO)
		{
			z = sa_malloc(n);
		}
		assert_non_null(z);
		int zeroed = all_zero(z, n);
		print_message("sa_malloc(%zu): dirty memory reused without the scope: %s; in the "
			      "ZERO scope: %s%s\n",
			      n, reused ? "yes" : "no", z == q ? "same block, " : "",
			      zeroed ? "zeroed" : "NOT zeroed");
		sa_free(z);
		assert_true(zeroed);
		/* the check means something only on reused memory: the LIFO sheaves and the unit
		 * free lists reuse at once; the huge cache may have let a mapping age out */
		if (n <= 100 * 1024)
			assert_true(reused && z == q);
		else if (!(reused && z == q))
			print_message("(the huge block was not reused: zeroed by the kernel)\n");
	}
	for (int i = 0; i < 4; i++)
		sa_free(keep[i]);
	assert_no_scope();
}

static void test_nowarn_scope(void **state)
{
	(void)state;
	pin_here();
	struct sa_cache *c = sa_cache_create("scope-nowarn", 4096, NULL);
	assert_non_null(c);
	/* a limit a little above what is held now (the reserve is made by the first limit) */
	sa_set_limit(sa_memory_held() + (256u << 20));
	size_t held = sa_memory_held();
	assert_int_equal(sa_set_limit(held + (4u << 20)), 0);
	const unsigned big = 20000; /* 80 MB of objects: cannot be served */
	struct capture cap;
	for (int nowarn = 1; nowarn >= 0; nowarn--) {
		struct sa_sheaf *s = NULL;
		cap_begin(&cap);
		if (nowarn) {
			SA_SCOPE(SA_NOWARN)
			{
				s = sa_sheaf_prefill(c, 0, big);
			}
		} else {
			s = sa_sheaf_prefill(c, 0, big);
		}
		const char *out = cap_end(&cap);
		if (s)
			sa_sheaf_return(c, 0, s);
		assert_null(s);
		if (nowarn) {
			if (*out)
				print_error(
					"inside a NOWARN scope, a failed prefill printed '%s'\n",
					out);
			assert_string_equal(out, "");
		} else {
			assert_int_equal(count_substr(out, "cannot prefill"), 1);
		}
		capture_free(&cap);
	}
	/* sa_cache_alloc until the limit is in the way */
	enum { MAXN = 20000 };
	static void *objs[MAXN];
	for (int nowarn = 1; nowarn >= 0; nowarn--) {
		size_t n = 0;
		cap_begin(&cap);
		unsigned ck = nowarn ? sa_memalloc_flags_save(SA_NOWARN) : SA_SCOPE_INVALID;
		while (n < MAXN && (objs[n] = sa_cache_alloc(c, 0)) != NULL)
			n++;
		sa_memalloc_flags_restore(ck);
		const char *out = cap_end(&cap);
		sa_cache_free_bulk(c, n, objs);
		assert_true(n < MAXN);
		if (nowarn)
			assert_string_equal(out, "");
		else
			assert_int_equal(count_substr(out, "out of memory"), 1);
		capture_free(&cap);
	}
	sa_set_limit(0);
	sa_cache_destroy(c);
	assert_no_scope();
}

static void test_nowarn_scope_pin_failure(void **state)
{
	(void)state;
	static char out[4096];
	int st = run_helper("nowarn-pin", "", NULL, out, sizeof(out));
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) == 5 || WEXITSTATUS(st) == 6) {
		print_message("could not make mlock fail (step %d): skipped\n", WEXITSTATUS(st));
		skip();
	}
	if (WEXITSTATUS(st) != 0 || *out)
		print_error("helper nowarn-pin: status %d, stderr '%s'\n", WEXITSTATUS(st), out);
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_string_equal(out, "");
}

/*
 * Frees a NOWAIT context had to defer run "whoever next may wait ...: the end of a NOWAIT scope"
 * (alloc/defer.c): every way a NOWAIT scope ends. A huge block freed inside is always deferred
 * (its munmap or the huge cache's lock may not be waited for).
 */
static uint64_t deferred_now(void)
{
	return sstats().deferred_now;
}

static void test_nowait_scope_end_runs_deferred(void **state)
{
	(void)state;
	static const char *const how[] = {
		"sa_memalloc_nowait_save/restore",
		"sa_memalloc_flags_save(SA_NOWAIT)/restore",
		"SA_SCOPE(SA_NOWAIT)",
		"sa_scope_swap out of a coroutine state with NOWAIT",
	};
	sa_trim();
	assert_int_equal(deferred_now(), 0);
	uint64_t inside[4], after[4], next[4];
	for (int k = 0; k < 4; k++) {
		void *p = sa_malloc(5 << 20);
		assert_non_null(p);
		if (k == 0) {
			unsigned c = sa_memalloc_nowait_save();
			sa_free(p);
			inside[k] = deferred_now();
			sa_memalloc_nowait_restore(c);
		} else if (k == 1) {
			unsigned c = sa_memalloc_flags_save(SA_NOWAIT);
			sa_free(p);
			inside[k] = deferred_now();
			sa_memalloc_flags_restore(c);
		} else if (k == 2) {
			SA_SCOPE(SA_NOWAIT)
			{
				sa_free(p);
				inside[k] = deferred_now();
			}
		} else {
			struct sa_scope_state st;
			sa_scope_state_init(&st);
			struct sa_scope_state *prev = sa_scope_swap(&st);
			unsigned c = sa_memalloc_nowait_save();
			sa_free(p);
			inside[k] = deferred_now();
			sa_scope_swap(
				prev); /* the coroutine is suspended inside its NOWAIT scope */
			after[k] = deferred_now();
			prev = sa_scope_swap(&st);
			sa_memalloc_nowait_restore(c);
			sa_scope_swap(prev);
		}
		if (k != 3)
			after[k] = deferred_now();
		/* the next slow path that may wait (a huge allocation) runs what is left */
		void *q = sa_malloc(5 << 20);
		assert_non_null(q);
		sa_free(q);
		next[k] = deferred_now();
		sa_trim(); /* for the next round */
		print_message("%s: deferred inside %llu, after the scope %llu, after the next "
			      "slow path %llu\n",
			      how[k], (unsigned long long)inside[k], (unsigned long long)after[k],
			      (unsigned long long)next[k]);
	}
	assert_no_scope();
	for (int k = 0; k < 4; k++) {
		assert_int_equal(inside[k], 1);
		assert_true(after[k] <= 1); /* never more than was put off */
		if (next[k])
			print_error("%s: the deferred free still waits after the NOWAIT scope "
				    "ended and a slow path ran\n",
				    how[k]);
	}
	for (int k = 0; k < 4; k++)
		assert_int_equal(next[k], 0);
}

/* A scoped sa_cache_alloc_node for another node than this CPU's counts too (2 nodes: a
 * synthetic hwloc topology, in a helper process). */
static void test_alloc_node_counted(void **state)
{
	(void)state;
	static char out[4096];
	int st = run_helper("node-count", "", "HWLOC_SYNTHETIC=node:2 core:1 pu:1", out,
			    sizeof(out));
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) == 5) {
		print_message("no two-node topology in the helper: skipped\n");
		skip();
	}
	if (WEXITSTATUS(st) != 0)
		print_error("helper node-count: status %d, stderr '%s'\n", WEXITSTATUS(st), out);
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* ------------------------------------------------------------------ 8. statistics ---------- */
struct flag_counter {
	sa_flags_t flag;
	size_t off; /* of the counter in struct sa_scope_stats */
};

static const struct flag_counter counters[] = {
	{SA_NOWAIT, offsetof(struct sa_scope_stats, nowait_allocs)},
	{SA_NOFS, offsetof(struct sa_scope_stats, nofs_allocs)},
	{SA_NOIO, offsetof(struct sa_scope_stats, noio_allocs)},
	{SA_NORECLAIM, offsetof(struct sa_scope_stats, noreclaim_allocs)},
	{SA_ZERO, offsetof(struct sa_scope_stats, zero_allocs)},
	{SA_NOWARN, offsetof(struct sa_scope_stats, nowarn_allocs)},
	{SA_HIGH, offsetof(struct sa_scope_stats, high_allocs)},
	{SA_PIN, offsetof(struct sa_scope_stats, pin_allocs)},
};

static uint64_t counter_of(const struct sa_scope_stats *s, size_t i)
{
	return *(const uint64_t *)((const char *)s + counters[i].off);
}

static void test_scope_stats_counters(void **state)
{
	(void)state;
	pin_here();
	enum { N = 1000 };
	static void *objs[N];
	struct sa_cache *c = sa_cache_create("scope-stats", 96, NULL);
	assert_non_null(c);
	/* warm: the NOWAIT rounds find objects ready */
	for (int i = 0; i < N; i++)
		objs[i] = sa_cache_alloc(c, 0);
	sa_cache_free_bulk(c, N, objs);
	static const sa_flags_t scopes[] = {
		SA_NOFS,
		SA_NOIO,
		SA_NORECLAIM,
		SA_ZERO,
		SA_NOWARN,
		SA_HIGH,
		SA_PIN,
		SA_NOWAIT | SA_NOWARN,
		SA_NOFS | SA_ZERO | SA_HIGH,
		SA_NOIO | SA_NOFS,
	};
	for (size_t k = 0; k < ARRAY_SIZE(scopes); k++) {
		struct sa_scope_stats before = sstats();
		size_t got = 0;
		SA_SCOPE(scopes[k])
		{
			for (int i = 0; i < N; i++) {
				objs[i] = sa_cache_alloc(c, 0);
				got += objs[i] != NULL;
			}
		}
		for (int i = 0; i < N; i++)
			if (objs[i])
				sa_cache_free(c, objs[i]);
		struct sa_scope_stats after = sstats();
		if (!(scopes[k] & (SA_NOWAIT | SA_PIN)))
			assert_int_equal(got, N);
		for (size_t i = 0; i < ARRAY_SIZE(counters); i++) {
			uint64_t want = (scopes[k] & counters[i].flag) ? N : 0;
			uint64_t d = counter_of(&after, i) - counter_of(&before, i);
			if (d != want)
				print_error("scope %#x: counter of flag %#x grew by %llu, want "
					    "%llu\n",
					    scopes[k], counters[i].flag, (unsigned long long)d,
					    (unsigned long long)want);
			assert_int_equal(d, want);
		}
		assert_int_equal(after.scope_saves - before.scope_saves, 1);
	}
	/* the malloc family: each call counts once, whatever path serves it */
	static const size_t sizes[] = {16, 200, 1024, 2000, 8000, 100 * 1024, 3 << 20};
	for (size_t k = 0; k < ARRAY_SIZE(sizes); k++) {
		struct sa_scope_stats before = sstats();
		void *m[8];
		SA_SCOPE(SA_NOFS)
		{
			for (int i = 0; i < 8; i++) {
				m[i] = sa_malloc(sizes[k]);
				assert_non_null(m[i]);
			}
		}
		for (int i = 0; i < 8; i++)
			sa_free(m[i]);
		struct sa_scope_stats after = sstats();
		if (after.nofs_allocs - before.nofs_allocs != 8)
			print_error("sa_malloc(%zu) x 8 in a NOFS scope: nofs_allocs grew by "
				    "%llu\n",
				    sizes[k],
				    (unsigned long long)(after.nofs_allocs - before.nofs_allocs));
		assert_int_equal(after.nofs_allocs - before.nofs_allocs, 8);
	}
	/* the event counters of the scope layer */
	struct sa_scope_stats b = sstats();
	for (int i = 0; i < 10; i++) {
		unsigned x = sa_memalloc_nofs_save();
		sa_memalloc_nofs_restore(x);
	}
	errno = 0;
	assert_int_equal(sa_memalloc_flags_save(SA_NOFAIL), SA_SCOPE_INVALID);
	assert_int_equal(sa_memalloc_flags_save(1u << 20), SA_SCOPE_INVALID);
	unsigned c1 = sa_memalloc_nofs_save(), c2 = sa_memalloc_noio_save();
	struct capture cap;
	cap_begin(&cap);
	restore_site_stats(c1);	      /* out of order: a misuse too */
	sa_memalloc_noio_restore(c2); /* closes both */
	restore_site_stats(c2);	      /* twice: a misuse, not out of order */
	cap_end(&cap);
	capture_free(&cap);
	struct sa_scope_state st;
	sa_scope_state_init(&st);
	for (int i = 0; i < 5; i++) {
		struct sa_scope_state *prev = sa_scope_swap(&st);
		sa_scope_swap(prev);
	}
	struct sa_scope_stats e = sstats();
	assert_int_equal(e.scope_saves - b.scope_saves, 12);
	assert_int_equal(e.scopes_refused - b.scopes_refused, 2);
	assert_int_equal(e.scopes_out_of_order - b.scopes_out_of_order, 1);
	assert_int_equal(e.scope_misuse - b.scope_misuse, 2);
	assert_int_equal(e.scope_swaps - b.scope_swaps, 10);
	sa_cache_destroy(c);
	assert_no_scope();
}

static void test_unscoped_not_counted(void **state)
{
	(void)state;
	pin_here();
	enum { N = 2000 };
	static void *objs[N];
	struct sa_cache *c = sa_cache_create("scope-none", 64, NULL);
	assert_non_null(c);
	struct sa_scope_stats before = sstats();
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < N; i++) {
			/* per-call flags are not a scope: not counted either */
			objs[i] = sa_cache_alloc(c, i % 3 == 0	 ? SA_ZERO
						    : i % 3 == 1 ? SA_NOFS
								 : 0);
			assert_non_null(objs[i]);
			memset(objs[i], i, 64);
		}
		check_no_duplicates(objs, N);
		sa_cache_free_bulk(c, N, objs);
		void *m = sa_malloc(100);
		assert_non_null(m);
		sa_free(m);
		m = sa_malloc_flags(100 * 1024, SA_NOWARN);
		assert_non_null(m);
		sa_free(m);
	}
	struct sa_scope_stats after = sstats();
	for (size_t i = 0; i < ARRAY_SIZE(counters); i++)
		assert_int_equal(counter_of(&after, i), counter_of(&before, i));
	assert_int_equal(after.scope_saves, before.scope_saves);
	assert_int_equal(after.scope_swaps, before.scope_swaps);
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
	assert_no_scope();
}

/* Reads everything written to a temporary file by fn(fd). */
static char *print_to_string(void (*fn)(int))
{
	FILE *f = tmpfile();
	assert_non_null(f);
	fn(fileno(f));
	off_t len = lseek(fileno(f), 0, SEEK_END);
	assert_true(len > 0);
	char *s = calloc(1, (size_t)len + 1);
	assert_non_null(s);
	assert_int_equal(pread(fileno(f), s, (size_t)len, 0), len);
	fclose(f);
	return s;
}

static void test_stats_print_scope_section(void **state)
{
	(void)state;
	/* something in every event counter of the layer first */
	unsigned c = sa_memalloc_nofs_save();
	sa_memalloc_nofs_restore(c);
	char *text = print_to_string(sa_stats_print);
	assert_non_null(strstr(text, "scopes, limit and reclaim:"));
	const char *sec = strstr(text, "scopes, limit and reclaim:");
	for (size_t i = 0; i < ARRAY_SIZE(scope_keys); i++) {
		if (!strstr(sec, scope_keys[i]))
			print_error("sa_stats_print: no '%s' in the scope section\n",
				    scope_keys[i]);
		assert_non_null(strstr(sec, scope_keys[i]));
	}
	free(text);

	struct sa_scope_stats s = sstats();
	char *json = print_to_string(sa_stats_print_json);
	const char *sc = strstr(json, "\"scopes\": {");
	if (!sc)
		print_error("sa_stats_print_json: no \"scopes\": {...} in '%s'\n", json);
	assert_non_null(sc);
	const char *end = strchr(sc, '}');
	assert_non_null(end);
	for (size_t i = 0; i < ARRAY_SIZE(scope_keys); i++) {
		char key[64];
		snprintf(key, sizeof(key), "\"%s\": ", scope_keys[i]);
		const char *k = strstr(sc, key);
		if (!k || k > end)
			print_error("sa_stats_print_json: no %s in the scopes object\n", key);
		assert_non_null(k);
		assert_true(k < end);
	}
	/* the values are the counters (nothing ran in between) */
	unsigned long long v = 0;
	const char *k = strstr(sc, "\"scope_saves\": ");
	assert_int_equal(sscanf(k, "\"scope_saves\": %llu", &v), 1);
	assert_int_equal(v, s.scope_saves);
	k = strstr(sc, "\"scope_swaps\": ");
	assert_int_equal(sscanf(k, "\"scope_swaps\": %llu", &v), 1);
	assert_int_equal(v, s.scope_swaps);
	k = strstr(sc, "\"scope_misuse\": ");
	assert_int_equal(sscanf(k, "\"scope_misuse\": %llu", &v), 1);
	assert_int_equal(v, s.scope_misuse);
	/* balanced braces and brackets outside strings, a closing brace at the end */
	int depth = 0, in_str = 0, bad = 0;
	for (const char *p = json; *p; p++) {
		if (in_str) {
			if (*p == '\\' && p[1])
				p++;
			else if (*p == '"')
				in_str = 0;
			continue;
		}
		if (*p == '"')
			in_str = 1;
		else if (*p == '{' || *p == '[')
			depth++;
		else if (*p == '}' || *p == ']')
			bad |= --depth < 0;
	}
	assert_false(bad);
	assert_int_equal(depth, 0);
	assert_int_equal(in_str, 0);
	size_t len = strlen(json);
	while (len && (json[len - 1] == '\n' || json[len - 1] == ' '))
		len--;
	assert_true(len > 0 && json[len - 1] == '}');
	free(json);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strncmp(argv[1], "--scope-helper=", 15) == 0)
		return helper_main(argv[1] + 15);
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_each_save_sets_its_flag),
		T(test_deep_nesting),
		T(test_scopes_are_per_thread),
		T(test_out_of_order_reported),
		T(test_same_flag_out_of_order),
		T(test_many_early_restores),
		T(test_out_of_order_beyond_2p23),
		T(test_misuse_reported),
		T(test_scope_check_abort),
		T(test_scope_check_abort_first_call),
		T(test_refused_flags),
		T(test_scope_macro),
		T(test_coroutines_without_swap),
		T(test_coroutines_with_swap),
		T(test_coroutine_moves_thread),
		T(test_nowait_state_moves_thread),
		T(test_scope_state_flags_null),
		T(test_handoff_thread_pool),
		T(test_zero_scope_cache),
		T(test_zero_scope_sheaf_alloc),
		T(test_zero_scope_malloc),
		T(test_nowarn_scope),
		T(test_nowarn_scope_pin_failure),
		T(test_nowait_scope_end_runs_deferred),
		T(test_scope_stats_counters),
		T(test_unscoped_not_counted),
		T(test_alloc_node_counted),
		T(test_stats_print_scope_section),
	};
#undef T
	return cmocka_run_group_tests_name("scope", tests, NULL, NULL);
}
