/*
 * bench/core_bench.c — the core benchmark: a 64-byte object allocated and freed by sheafalloc and
 * by the allocators it is measured against, side by side in one binary. Bodies only: google-
 * benchmark, through bench/shim.cc, owns timing, repetitions and output. `make -C bench run`
 * runs it once per allocator and bench/report.py turns the JSON into bench/results/core.md.
 *
 * Shapes (the same for every allocator; nothing but the allocator changes between rows):
 *   pair      one allocation, its pointer escapes, one free. Time per iteration = one pair.
 *   batch     1000 allocations into an array, then 1000 frees in the same order. Items are
 *             allocations; the report gives ns per object (alloc + free), time / 1000.
 *   pair_mt   pair on 1 and 2 threads (google-benchmark Threads, real time). sheafalloc's threads
 *             share one cache, the way kernel slab users share one; the others use malloc's
 *             per-thread caches as they always do.
 *   harness   the pair loop with no allocator in it: what the loop costs, included in every pair.
 *   scale/pair  pair on the thread sweep (shim.h SAB_SWEEP: 1, 2, 4, 8 and the CPU count), for
 *             every allocator; run by the scaling part (bench/Makefile), not by core. Items are
 *             pairs of all threads together; the report divides by the threads for per-thread.
 * The sheaf API (sheafalloc only: no peer has one), rows "sheaf/<shape>/<n>", run by the sheaf
 * part; items are objects, each allocated and freed once, on the same 64-byte cache as the rows
 * above (its own, "bench64s", so the counters below are the rows' own):
 *   sheaf/loop/<n>      n sa_cache_alloc into an array, then n sa_cache_free: the plain API.
 *   sheaf/prefill/<n>   sa_sheaf_prefill(n), n sa_sheaf_alloc, sa_sheaf_return (empty), then n
 *                       sa_cache_free: the guaranteed-allocation API used to the full.
 *   sheaf/prefill_half/<n>  the same using n/2 of the n reserved; the sheaf goes back holding
 *                       n/2 (items: the n/2 objects used): what an unused reservation costs.
 *   sheaf/bulk/<n>      sa_cache_alloc_bulk(n) then sa_cache_free_bulk(n), against loop.
 * n = 8 and 32 (within the cache's sheaf capacity) and 256 (above it: an oversize sheaf, and bulk
 * calls that span several sheaves). Self-checks, untimed: one round of each shape before the
 * timed loop checks that every object is non-NULL and distinct and that bulk returned n; after it
 * the cache's counters must show exactly the objects sa_sheaf_alloc handed out and no failed
 * allocation. A failed check is a row error (bench-quick fails on it).
 * No row touches the object (no memset, no store): each allocator is asked for exactly what a
 * caller that only needs the pointer would ask. Every pointer escapes (sab_escape) so no
 * allocation is folded away or merged with its free.
 *
 * How each allocator is reached, and why:
 *   sheafalloc  linked: $(B)/libsheafalloc.so with rpath, a shared object like every peer (the
 *               .a would be reached by direct calls, which no peer gets). sa_cache_alloc(c, 0) /
 *               sa_cache_free(c, p) on one cache made by sa_cache_create("bench64", 64, NULL).
 *               Its start-up is lazy, so linking it costs the other processes nothing.
 *   jemalloc    dlopen("libjemalloc.so.2", RTLD_LOCAL), mallocx(64, 0) / dallocx(p, 0). Also
 *               "jemalloc-malloc": jemalloc's own malloc/free from the same handle, because
 *               mallocx/dallocx take jemalloc's general path (imalloc) while malloc/free take its
 *               fast path; the baseline stays mallocx as asked, the second row keeps it honest.
 *   mimalloc    dlopen("libmimalloc.so.2", RTLD_LOCAL), mi_malloc(64) / mi_free(p).
 *   tcmalloc    dlopen("libtcmalloc_minimal.so.4", RTLD_LOCAL), tc_malloc(64) / tc_free(p).
 *   glibc       __libc_malloc(64) / __libc_free(p) from libc.so.6 (ptmalloc with tcache).
 * Why dlopen and not -ljemalloc -lmimalloc -ltcmalloc_minimal: Debian builds all three as malloc
 * replacements, and every one exports malloc/free/memalign/valloc/_Znwm; mimalloc and tcmalloc
 * also export __libc_malloc and __libc_free, mimalloc also reallocarray and pvalloc. Linked
 * together, whichever comes first in link order becomes the whole process's malloc (google-
 * benchmark's, hwloc's, libstdc++'s), the "glibc" row silently measures mimalloc or tcmalloc
 * (their __libc_malloc wins over libc's), and calls that only one of them exports (reallocarray,
 * pvalloc) mix two heaps. Linking jemalloc alone is safe but makes it everyone's malloc and runs
 * its start-up in every process, so the peak RSS of every row includes jemalloc's arenas.
 * With RTLD_LOCAL a peer's symbols stay out of the global scope: the process keeps glibc's
 * malloc (each label says which library `malloc` resolves to, so a preload shows), and a peer is
 * reached only through the two entry points taken from its handle with dlsym. Each peer is opened
 * on its first use, so a run filtered to one allocator never loads the others and its peak RSS is
 * its own. No RTLD_DEEPBIND: it would bind the peer's own malloc/operator new references to
 * itself while libstdc++ and libc keep glibc's, the mixed-heap case again.
 * Costs of the arrangement, measured (see the numbers below):
 *   - jemalloc's 2.6 KiB of initial-exec TLS does not fit glibc's default static-TLS surplus for
 *     dlopen ("cannot allocate memory in static TLS block"); bench/Makefile sets
 *     GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096. Run by hand, the jemalloc rows fail
 *     with that hint instead of crashing.
 *   - tcmalloc takes memory with sbrk next to glibc's main arena when both are in one process;
 *     glibc treats that as a foreign sbrk. Harmless here: in a tcmalloc process glibc only serves
 *     google-benchmark, and neither heap grows inside the timed loop after the first iterations.
 *   - calls: peers are called through function pointers held in registers; sheafalloc and glibc
 *     through the GOT (built with -fno-plt): one indirect call per entry point for everyone.
 * Linked vs dlopen'ed, measured for jemalloc on the 2-vCPU Xeon (2.6 GHz) this was written on,
 * medians of 5 x 0.2 s, two alternating rounds: pair 8.28 / 7.84 ns linked vs 8.39 / 7.96 ns
 * dlopen'ed, batch 15.2 / 14.1 vs 14.5 / 14.2 ns per object: no difference beyond noise. Peak RSS
 * of a process running only the harness or glibc rows: 5.1 MiB with -ljemalloc vs 4.2 MiB
 * without, so linking would have added jemalloc's start-up to every allocator's RSS.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gperftools/tcmalloc.h>
#include <jemalloc/jemalloc.h>
#include <mimalloc.h>

#include "sheafalloc.h"
#include "shim.h"
#include "lib_of.h"

#define OBJ_SIZE    64
#define BATCH_OBJS  1000 /* objects per iteration of the batch shape */
#define PAIR_UNROLL 64	 /* pairs per sab_keep_running_batch call: one shim call per 64 pairs */

/* glibc's own entry points: malloc and free are aliases of these unless something interposes. */
extern void *__libc_malloc(size_t size);
extern void __libc_free(void *p);

/* ---- allocators: set up once, on first use ------------------------------------------------- */

enum alloc_id { A_SHEAF, A_JE, A_JE_MALLOC, A_MI, A_TC, A_GLIBC, A_HARNESS, A_NR };

struct allocator {
	const char *soname; /* for dlopen; NULL: linked */
	pthread_once_t once;
	const char *error; /* set up failed: why (every row of it is skipped with this) */
	char label[256];   /* where the entry points live, version, who serves process malloc */
	char errbuf[512];
};

static struct allocator allocators[A_NR] = {
	[A_SHEAF] = {.once = PTHREAD_ONCE_INIT},
	[A_JE] = {.soname = "libjemalloc.so.2", .once = PTHREAD_ONCE_INIT},
	[A_JE_MALLOC] = {.soname = "libjemalloc.so.2", .once = PTHREAD_ONCE_INIT},
	[A_MI] = {.soname = "libmimalloc.so.2", .once = PTHREAD_ONCE_INIT},
	[A_TC] = {.soname = "libtcmalloc_minimal.so.4", .once = PTHREAD_ONCE_INIT},
	[A_GLIBC] = {.once = PTHREAD_ONCE_INIT},
	[A_HARNESS] = {.once = PTHREAD_ONCE_INIT},
};

/* Entry points, written once under the allocator's pthread_once, read-only afterwards. The
 * prototypes come from each library's own header, so a wrong signature does not compile. */
static struct sa_cache *sa64;
static __typeof__(mallocx) *je_mallocx;
static __typeof__(dallocx) *je_dallocx;
static void *(*je_malloc)(size_t);
static void (*je_free)(void *);
static __typeof__(mi_malloc) *mi_malloc_p;
static __typeof__(mi_free) *mi_free_p;
static __typeof__(tc_malloc) *tc_malloc_p;
static __typeof__(tc_free) *tc_free_p;

/* "<library of the entry point> <version>; malloc: <library that serves the process's malloc>" */
static void set_label(struct allocator *a, const void *entry, const char *version)
{
	snprintf(a->label, sizeof(a->label), "%s %s; malloc: %s", lib_of(entry), version,
		 lib_of(dlsym(RTLD_DEFAULT, "malloc")));
}

static void *peer_open(struct allocator *a)
{
	void *h = dlopen(a->soname, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		const char *e = dlerror();
		snprintf(a->errbuf, sizeof(a->errbuf), "dlopen: %s%s", e ? e : a->soname,
			 e && strstr(e, "static TLS")
				 ? " (run with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096, "
				   "as "
				   "bench/Makefile does)"
				 : "");
		a->error = a->errbuf;
	}
	return h;
}

static void *peer_sym(struct allocator *a, void *h, const char *name)
{
	void *fn = h ? dlsym(h, name) : NULL;
	if (h && !fn && !a->error) {
		snprintf(a->errbuf, sizeof(a->errbuf), "dlsym(%s, %s) failed", a->soname, name);
		a->error = a->errbuf;
	}
	return fn;
}

/* One allocation and free through the new entry points before any timing: a NULL or a crash
 * shows here, not as a suspiciously fast row. */
#define CHECK_PAIR(a, ALLOC, FREE)                                                 \
	do {                                                                       \
		if (!(a)->error) {                                                 \
			void *p = (ALLOC);                                         \
			if (!p) {                                                  \
				(a)->error = "the first allocation returned NULL"; \
				break;                                             \
			}                                                          \
			FREE;                                                      \
		}                                                                  \
	} while (0)

static void setup_sheaf(void)
{
	struct allocator *a = &allocators[A_SHEAF];
	sa64 = sa_cache_create("bench64", OBJ_SIZE, NULL);
	if (!sa64) {
		a->error = "sa_cache_create(\"bench64\", 64, NULL) failed";
		return;
	}
	CHECK_PAIR(a, sa_cache_alloc(sa64, 0), sa_cache_free(sa64, p));
	char v[96];
	snprintf(v, sizeof(v), "%d.%d per-CPU %s", SHEAFALLOC_VERSION_MAJOR,
		 SHEAFALLOC_VERSION_MINOR, sa_percpu_mode());
	set_label(a, (const void *)sa_cache_alloc, v);
}

/* Opens jemalloc for either jemalloc row; returns its version string, as jemalloc reports it. */
static const char *setup_je_common(struct allocator *a, void **h)
{
	*h = peer_open(a);
	__typeof__(mallctl) *ctl = (__typeof__(mallctl) *)peer_sym(a, *h, "mallctl");
	const char *ver = "?";
	size_t len = sizeof(ver);
	if (!ctl || ctl("version", (void *)&ver, &len, NULL, 0) != 0)
		ver = "?";
	return ver;
}

static void setup_je(void)
{
	struct allocator *a = &allocators[A_JE];
	void *h;
	const char *jever = setup_je_common(a, &h);
	je_mallocx = (__typeof__(mallocx) *)peer_sym(a, h, "mallocx");
	je_dallocx = (__typeof__(dallocx) *)peer_sym(a, h, "dallocx");
	CHECK_PAIR(a, je_mallocx(OBJ_SIZE, 0), je_dallocx(p, 0));
	if (!a->error) {
		char ver[128];
		snprintf(ver, sizeof(ver), "%s mallocx/dallocx", jever);
		set_label(a, (const void *)je_mallocx, ver);
	}
}

static void setup_je_malloc(void)
{
	struct allocator *a = &allocators[A_JE_MALLOC];
	void *h;
	const char *jever = setup_je_common(a, &h);
	je_malloc = (void *(*)(size_t))peer_sym(a, h, "malloc");
	je_free = (void (*)(void *))peer_sym(a, h, "free");
	CHECK_PAIR(a, je_malloc(OBJ_SIZE), je_free(p));
	if (!a->error) {
		char ver[128];
		snprintf(ver, sizeof(ver), "%s malloc/free", jever);
		set_label(a, (const void *)je_malloc, ver);
	}
}

static void setup_mi(void)
{
	struct allocator *a = &allocators[A_MI];
	void *h = peer_open(a);
	mi_malloc_p = (__typeof__(mi_malloc) *)peer_sym(a, h, "mi_malloc");
	mi_free_p = (__typeof__(mi_free) *)peer_sym(a, h, "mi_free");
	__typeof__(mi_version) *ver = (__typeof__(mi_version) *)peer_sym(a, h, "mi_version");
	CHECK_PAIR(a, mi_malloc_p(OBJ_SIZE), mi_free_p(p));
	if (!a->error) {
		char v[32];
		snprintf(v, sizeof(v), "%d", ver());
		set_label(a, (const void *)mi_malloc_p, v);
	}
}

static void setup_tc(void)
{
	struct allocator *a = &allocators[A_TC];
	void *h = peer_open(a);
	tc_malloc_p = (__typeof__(tc_malloc) *)peer_sym(a, h, "tc_malloc");
	tc_free_p = (__typeof__(tc_free) *)peer_sym(a, h, "tc_free");
	__typeof__(tc_version) *ver = (__typeof__(tc_version) *)peer_sym(a, h, "tc_version");
	CHECK_PAIR(a, tc_malloc_p(OBJ_SIZE), tc_free_p(p));
	if (!a->error) {
		int major, minor;
		const char *patch;
		set_label(a, (const void *)tc_malloc_p, ver(&major, &minor, &patch));
	}
}

static void setup_glibc(void)
{
	struct allocator *a = &allocators[A_GLIBC];
	CHECK_PAIR(a, __libc_malloc(OBJ_SIZE), __libc_free(p));
	set_label(a, (const void *)__libc_malloc, gnu_get_libc_version());
}

static void setup_harness(void)
{
	set_label(&allocators[A_HARNESS], (const void *)sab_keep_running_batch, "loop only");
}

static void (*const setups[A_NR])(void) = {
	[A_SHEAF] = setup_sheaf,     [A_JE] = setup_je, [A_JE_MALLOC] = setup_je_malloc,
	[A_MI] = setup_mi,	     [A_TC] = setup_tc, [A_GLIBC] = setup_glibc,
	[A_HARNESS] = setup_harness,
};

static void *noop_thread(void *arg)
{
	return arg;
}

/* glibc's malloc skips its locks and atomics while the process has never had a second thread
 * (SINGLE_THREAD_P, __libc_single_threaded), and never goes back once one existed. Without this,
 * glibc's batch rows would be measured lock-free or not depending on whether a threaded row ran
 * earlier in the same process: 9 ns vs 21 ns per object on the 2-vCPU Xeon this was written on.
 * Every row therefore runs in a process that has started (and joined) one thread, the state of
 * any multi-threaded program and of the pair_mt rows. The other allocators measured the same
 * either way, within noise. */
static void become_multithreaded(void)
{
	pthread_t t;
	if (pthread_create(&t, NULL, noop_thread, NULL) == 0)
		pthread_join(t, NULL);
}

/* Sets up allocator id once (any thread, any row); on failure skips this run and returns 0. */
static int ready(sab_state *st, enum alloc_id id)
{
	static pthread_once_t mt_once = PTHREAD_ONCE_INIT;
	pthread_once(&mt_once, become_multithreaded);
	struct allocator *a = &allocators[id];
	pthread_once(&a->once, setups[id]);
	if (a->error) {
		sab_skip(st, a->error);
		return 0;
	}
	if (sab_thread_index(st) == 0)
		sab_label(st, a->label);
	return 1;
}

/* ---- shapes -------------------------------------------------------------------------------- */

/* ALLOC is an expression giving the object; FREE a statement freeing the object named p. */
#define PAIR(st, ALLOC, FREE)                                     \
	do {                                                      \
		while (sab_keep_running_batch((st), PAIR_UNROLL)) \
			for (int i = 0; i < PAIR_UNROLL; i++) {   \
				void *p = (ALLOC);                \
				sab_escape(p);                    \
				FREE;                             \
			}                                         \
		sab_set_items((st), sab_iterations(st));          \
	} while (0)

#define BATCH(st, ALLOC, FREE)                                        \
	do {                                                          \
		void *objs[BATCH_OBJS];                               \
		while (sab_keep_running(st)) {                        \
			for (int i = 0; i < BATCH_OBJS; i++) {        \
				void *p = (ALLOC);                    \
				sab_escape(p);                        \
				objs[i] = p;                          \
			}                                             \
			for (int i = 0; i < BATCH_OBJS; i++) {        \
				void *p = objs[i];                    \
				FREE;                                 \
			}                                             \
		}                                                     \
		sab_set_items((st), sab_iterations(st) * BATCH_OBJS); \
		sab_counter((st), "objs_per_iter", BATCH_OBJS);       \
	} while (0)

/* The two bodies of one allocator; the entry points are copied to locals first, so the loop
 * calls through a register. */
#define BODIES(name, id, DECLS, ALLOC, FREE)                     \
	static void name##_pair(sab_state *st, const void *arg)  \
	{                                                        \
		(void)arg;                                       \
		if (!ready(st, id))                              \
			return;                                  \
		DECLS;                                           \
		PAIR(st, ALLOC, FREE);                           \
	}                                                        \
	static void name##_batch(sab_state *st, const void *arg) \
	{                                                        \
		(void)arg;                                       \
		if (!ready(st, id))                              \
			return;                                  \
		DECLS;                                           \
		BATCH(st, ALLOC, FREE);                          \
	}

BODIES(sheaf, A_SHEAF, struct sa_cache *c = sa64, sa_cache_alloc(c, 0), sa_cache_free(c, p))
BODIES(je, A_JE, __typeof__(mallocx) *alloc = je_mallocx;
       __typeof__(dallocx) *dealloc = je_dallocx, alloc(OBJ_SIZE, 0), dealloc(p, 0))
BODIES(je_malloc, A_JE_MALLOC, void *(*alloc)(size_t) = je_malloc;
       void (*dealloc)(void *) = je_free, alloc(OBJ_SIZE), dealloc(p))
BODIES(mi, A_MI, __typeof__(mi_malloc) *alloc = mi_malloc_p;
       __typeof__(mi_free) *dealloc = mi_free_p, alloc(OBJ_SIZE), dealloc(p))
BODIES(tc, A_TC, __typeof__(tc_malloc) *alloc = tc_malloc_p;
       __typeof__(tc_free) *dealloc = tc_free_p, alloc(OBJ_SIZE), dealloc(p))
BODIES(glibc, A_GLIBC, (void)0, __libc_malloc(OBJ_SIZE), __libc_free(p))

static void harness_pair(sab_state *st, const void *arg)
{
	(void)arg;
	if (!ready(st, A_HARNESS))
		return;
	PAIR(st, (void *)st, (void)p);
}

/* ---- the sheaf API (sheafalloc only) ------------------------------------------------------- */

#define SHEAF_MAX_N 256

enum sheaf_shape { SH_LOOP, SH_PREFILL, SH_PREFILL_HALF, SH_BULK };

struct sheaf_arg {
	enum sheaf_shape shape;
	unsigned n;
};

static struct sa_cache *sheaf_cache; /* "bench64s": the sheaf rows' own cache */
static pthread_once_t sheaf_once = PTHREAD_ONCE_INIT;

static void setup_sheaf_rows(void)
{
	sheaf_cache = sa_cache_create("bench64s", OBJ_SIZE, NULL);
}

static int cmp_ptr(const void *a, const void *b)
{
	const uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
	return x < y ? -1 : x > y;
}

/* One round of the shape: objs[0..used) allocated and freed; returns the objects used, or 0 after
 * setting *why when a call failed. With check, also checks the objects (non-NULL, distinct) before
 * freeing them. */
static unsigned sheaf_round(struct sa_cache *c, const struct sheaf_arg *a, void **objs, int check,
			    const char **why)
{
	unsigned used = a->n;
	struct sa_sheaf *s;
	switch (a->shape) {
	case SH_LOOP:
		for (unsigned i = 0; i < used; i++) {
			objs[i] = sa_cache_alloc(c, 0);
			sab_escape(objs[i]);
		}
		break;
	case SH_PREFILL:
	case SH_PREFILL_HALF:
		s = sa_sheaf_prefill(c, 0, a->n);
		if (!s) {
			*why = "sa_sheaf_prefill returned NULL";
			return 0;
		}
		if (check && sa_sheaf_size(s) < a->n) {
			*why = "sa_sheaf_prefill(n) gave a sheaf holding fewer than n objects";
			return 0;
		}
		if (a->shape == SH_PREFILL_HALF)
			used = a->n / 2;
		for (unsigned i = 0; i < used; i++) {
			objs[i] = sa_sheaf_alloc(c, 0, s);
			sab_escape(objs[i]);
		}
		sa_sheaf_return(c, 0, s);
		break;
	case SH_BULK:
		if (sa_cache_alloc_bulk(c, 0, used, objs) != used) {
			*why = "sa_cache_alloc_bulk(n) returned fewer than n objects";
			return 0;
		}
		sab_escape(objs);
		break;
	}
	if (check) {
		void *sorted[SHEAF_MAX_N];
		memcpy(sorted, objs, used * sizeof(*objs));
		qsort(sorted, used, sizeof(*sorted), cmp_ptr);
		for (unsigned i = 0; i < used; i++)
			if (!sorted[i] || (i && sorted[i] == sorted[i - 1])) {
				*why = sorted[i] ? "an object was handed out twice"
						 : "an allocation returned NULL";
				return 0;
			}
	}
	if (a->shape == SH_BULK)
		sa_cache_free_bulk(c, used, objs);
	else
		for (unsigned i = 0; i < used; i++)
			sa_cache_free(c, objs[i]);
	return used;
}

static void sheaf_rows(sab_state *st, const void *arg)
{
	const struct sheaf_arg *a = arg;
	if (!ready(st, A_SHEAF))
		return;
	pthread_once(&sheaf_once, setup_sheaf_rows);
	struct sa_cache *const c = sheaf_cache;
	if (!c) {
		sab_skip(st, "sa_cache_create(\"bench64s\", 64, NULL) failed");
		return;
	}
	void *objs[SHEAF_MAX_N];
	const char *why = NULL;
	struct sa_cache_stats s0, s1;
	if (sa_cache_stats(c, &s0) != 0) {
		sab_skip(st, "sa_cache_stats failed");
		return;
	}
	const unsigned used = sheaf_round(c, a, objs, 1, &why);
	if (!used) {
		sab_skip(st, why);
		return;
	}
	while (sab_keep_running(st))
		if (!sheaf_round(c, a, objs, 0, &why))
			break;
	const int64_t rounds = sab_iterations(st) + 1; /* the checked round too */
	if (!why && sa_cache_stats(c, &s1) != 0)
		why = "sa_cache_stats failed";
	if (!why && s1.alloc_fail != s0.alloc_fail)
		why = "the cache counted failed allocations";
	const int64_t want =
		a->shape == SH_PREFILL || a->shape == SH_PREFILL_HALF ? rounds * (int64_t)used : 0;
	if (!why && (int64_t)(s1.sheaf_alloc_objects - s0.sheaf_alloc_objects) != want)
		why = "sheaf_alloc_objects does not add up to the objects the rounds took";
	if (why) {
		sab_skip(st, why);
		return;
	}
	sab_set_items(st, sab_iterations(st) * used);
	sab_counter(st, "objs_per_iter", used);
	sab_counter(st, "sheaf_capacity", sa_cache_sheaf_capacity(c));
}

#define SHEAF_ARGS(shape)                                                               \
	static const struct sheaf_arg shape##_8 = {shape, 8}, shape##_32 = {shape, 32}, \
				      shape##_256 = {shape, SHEAF_MAX_N}
SHEAF_ARGS(SH_LOOP);
SHEAF_ARGS(SH_PREFILL);
SHEAF_ARGS(SH_PREFILL_HALF);
SHEAF_ARGS(SH_BULK);

#define SHEAF_ROWS(name, shape)                                    \
	{"sheaf/" name "/8", sheaf_rows, &shape##_8, 0},           \
		{"sheaf/" name "/32", sheaf_rows, &shape##_32, 0}, \
	{                                                          \
		"sheaf/" name "/256", sheaf_rows, &shape##_256, 0  \
	}

/* ---- the table: "<allocator>/<shape>"; bench/Makefile runs one allocator per process ------- */

#define ROWS(alloc, name)                                                               \
	{alloc "/pair", name##_pair, NULL, 0}, {alloc "/batch", name##_batch, NULL, 0}, \
		{alloc "/pair_mt", name##_pair, NULL, 2},                               \
	{                                                                               \
		alloc "/scale/pair", name##_pair, NULL, SAB_SWEEP                       \
	}

const struct sab_bench sab_benches[] = {
	ROWS("sheafalloc", sheaf),
	ROWS("jemalloc", je),
	ROWS("jemalloc-malloc", je_malloc),
	ROWS("mimalloc", mi),
	ROWS("tcmalloc", tc),
	ROWS("glibc", glibc),
	{"harness/pair", harness_pair, NULL, 0},
	SHEAF_ROWS("loop", SH_LOOP),
	SHEAF_ROWS("prefill", SH_PREFILL),
	SHEAF_ROWS("prefill_half", SH_PREFILL_HALF),
	SHEAF_ROWS("bulk", SH_BULK),
};
const size_t sab_nbenches = sizeof(sab_benches) / sizeof(sab_benches[0]);
