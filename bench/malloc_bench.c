/*
 * bench/malloc_bench.c — the malloc benchmark: sheafalloc's malloc family (sa_malloc, sa_free,
 * sa_realloc) against the malloc of jemalloc, mimalloc, tcmalloc and glibc, side by side in one
 * binary. Bodies only: google-benchmark, through bench/shim.cc, owns timing, repetitions and
 * output. `make -C bench run` runs it three times per allocator (below) and
 * bench/malloc_report.py turns the JSON into bench/results/malloc.md.
 *
 * Shapes (the same for every allocator; nothing but the allocator changes between rows):
 *   pair/<n>      one malloc(n), its pointer escapes, one free; n = 16, 64, 256, 1024, 4096,
 *                 16384, 32768. Time per iteration = one pair.
 *   batch/<n>     1000 mallocs of n bytes into an array, then 1000 frees in the same order.
 *                 Items are allocations; the report gives ns per object (malloc + free).
 *   mixed         a ring of 10,000 live blocks, filled before timing; each iteration frees a
 *                 random one and puts a malloc of a random size in 16..4096 (uniform) in its
 *                 place. Slots and sizes come from a table made once with a fixed seed, the
 *                 same for every allocator. Counters: live_MiB (bytes asked for by the live
 *                 blocks) and rss_MiB (the process's RSS at the end of the timed loop).
 *   realloc/small one chain: malloc(16), then realloc in +16 B steps up to 4096 (255 reallocs),
 *                 then free. Items are reallocs.
 *   realloc/grow  one chain: malloc(16), realloc +16 B up to 256, then x1.5 (rounded up to 16)
 *                 up to 1 MiB (36 reallocs), then free. Items are reallocs; the report gives ns
 *                 per realloc and the whole chain.
 *   prodcons      producer/consumer on 2 threads (1 producer + 1 consumer) and 4 threads (2 + 2,
 *                 two independent pairs): a producer mallocs a block of a random size in 16..1024
 *                 (a fixed-seed table), writes its byte, and pushes it into a bounded lock-free
 *                 single-producer single-consumer ring (1024 slots) of its pair; the consumer pops
 *                 it and frees it: every block is freed by a thread that did not allocate it.
 *                 Both ends spin (pause) on a full/empty ring and sched_yield() after 64 spins, so
 *                 an oversubscribed machine does not serialize on a spinning thread. Items are
 *                 blocks (one malloc + one remote free); items_per_second is blocks per second of
 *                 wall time, all pairs together.
 *   churn         tail latency under churn: every malloc and every free timed alone, reported as
 *                 percentiles. Why: the other shapes give means, which hide the slow paths a
 *                 latency budget meets (cache refills and flushes, new slabs or spans, mmap and
 *                 munmap of big blocks, purging); a skewed size mix with rare big blocks reaches
 *                 them all. One iteration is a pass: untimed (PauseTiming), a working set of
 *                 20,000 live blocks is filled and churned 100,000 times; then 2,000,000 timed
 *                 replacements: free the block of a random slot, malloc a new size into that slot,
 *                 write the new block's first and last byte (untimed). Slots and sizes come from a splitmix64 stream with
 *                 a fixed seed per thread, the same for every allocator: 70% 16..128 B, 25%
 *                 129..4096 B, 4.9% 4097 B..64 KiB, 0.1% 256 KiB..1 MiB, uniform within each range
 *                 (about 56 MiB live); malloc_p99.9 therefore sits at the edge of the big blocks.
 *                 The clock: lfence; rdtsc; lfence on x86 (calibrated against CLOCK_MONOTONIC over
 *                 20 ms at start), clock_gettime(CLOCK_MONOTONIC) elsewhere; the median of 10,001
 *                 empty timed regions, measured before each run, is subtracted from every sample
 *                 (counter clock_ns). Samples (32-bit ticks) go to mmap'ed arrays, never through
 *                 the allocator under test. Counters, in ns, over the last pass (so always
 *                 2,000,000 malloc samples a thread): malloc_p50, malloc_p99, malloc_p99.9,
 *                 malloc_p99.99, malloc_max, the same for free_; ops_per_iter (replacements per
 *                 iteration; time per iteration / ops_per_iter is ns per replacement, clock reads
 *                 and the random stream included) and live_MiB. google-benchmark still picks the
 *                 number of passes: one when a pass takes min_time or more (as at 0.1 s, the
 *                 Makefile's malloc_bench default), more otherwise; every pass starts over (the
 *                 working set of the one before freed, the stream reseeded), so the last pass,
 *                 the one reported, runs the same stream for every allocator either way.
 *                 2 threads: each its own working set and stream; 10% of the blocks a thread
 *                 replaces go, instead of to its own free, into a lock-free SPSC ring (16,384
 *                 slots) to the other thread, which pops at most one per replacement and frees it
 *                 (timed, a free sample; a full ring: the block is freed locally, nobody waits).
 *                 Percentiles over both threads' samples together; remote_pct: the share of the
 *                 frees that were remote.
 *   scale/...     the thread sweep (shim.h SAB_SWEEP: 1, 2, 4, 8 threads and the CPU count), run
 *                 by the scaling part of bench/Makefile, not by malloc: scale/pair/64 and
 *                 scale/batch/64 (pair and batch above, every thread on its own), scale/mixed
 *                 (every thread its own ring of 10,000 live blocks, the shape above, starting at
 *                 its own place in the table; the byte written into each block is its slot's low
 *                 byte, and after the timed loop every live block of every ring must still hold
 *                 its own: two threads or slots handed the same memory fail the row) and
 *                 scale/prodcons (SAB_SWEEP_EVEN: 2, 4, 8 and the CPU count rounded up to even:
 *                 threads/2 producer/consumer pairs as above; each ring must be empty when a run
 *                 starts, or blocks were lost and the row fails). items_per_second is all
 *                 threads together (prodcons: blocks); per-thread throughput is that / threads.
 *   harness       pair (64 B), mixed and churn with no allocator in it (a static buffer instead):
 *                 what the loop, the byte stores and the table lookups cost, included in those
 *                 rows; in churn, what is left of the clock after the overhead is subtracted.
 * On a 2-CPU machine the 2P+2C row runs 4 spinning threads on 2 CPUs: the handover then also
 * measures the scheduler (sched_yield); pinned to one CPU (BENCH_PIN), both rows time-slice.
 * Memory touched, the same for every allocator: every block gets exactly one byte written right
 * after its malloc (offset 0; churn: also the last byte), and nothing else is read or written;
 * in the realloc chains the one byte written after every (re)alloc is the last byte of the new
 * size, the part a growing buffer is for (the copy is realloc's own). Every pointer escapes
 * (sab_escape) so no malloc is folded away or merged with its free.
 *
 * How each allocator is reached (as in core_bench.c, whose opening comment says why dlopen with
 * RTLD_LOCAL and not linking; nothing here differs):
 *   sheafalloc       linked: $(B)/libsheafalloc.so, sa_malloc / sa_free / sa_realloc. The process
 *                    keeps glibc's malloc (this is not the LD_PRELOAD build).
 *   jemalloc         dlopen("libjemalloc.so.2", RTLD_LOCAL), its own malloc / free / realloc from
 *                    the handle: jemalloc's fast path and the baseline of the ratios.
 *   jemalloc-mallocx the same library's mallocx(n, 0) / dallocx(p, 0) / rallocx(p, n, 0): its
 *                    general path (imalloc), shown because it is what core_bench's "jemalloc" is.
 *   mimalloc         dlopen("libmimalloc.so.2"), mi_malloc / mi_free / mi_realloc.
 *   tcmalloc         dlopen("libtcmalloc_minimal.so.4"), tc_malloc / tc_free / tc_realloc.
 *   glibc            __libc_malloc / __libc_free / __libc_realloc (ptmalloc with tcache).
 * Peers are called through function pointers copied to locals (a register); sheafalloc and glibc
 * through the GOT (-fno-plt): one indirect call per entry point for everyone.
 *
 * Processes: bench/Makefile runs four per allocator, each under /usr/bin/time for its peak RSS:
 * '^<a>/(pair|batch|realloc)/' (single-thread shapes), '^<a>/mixed$' (whose peak RSS is the
 * ring of 10,000 live blocks plus the framework: a fragmentation figure) and '^<a>/prodcons/'
 * (remote frees) and '^<a>/churn' (1 and 2 threads, one repetition: its percentiles come from a
 * fixed sample count). A process only ever loads the allocator its filter names. churn has a
 * process of its own because its sample arrays (40 MiB a thread, mmap'ed and
 * populated) and its 56 MiB working set would otherwise land in another group's peak RSS.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <gperftools/tcmalloc.h>
#include <jemalloc/jemalloc.h>
#include <mimalloc.h>

#include "sheafalloc.h"
#include "shim.h"
#include "lib_of.h"

#define BATCH_OBJS   1000	/* objects per iteration of the batch shape */
#define PAIR_UNROLL  64		/* iterations per sab_keep_running_batch call */
#define MIX_LIVE     10000	/* live blocks of the mixed ring */
#define MIX_TAB	     (1u << 16) /* (slot, size) pairs of the mixed shape, cycled */
#define MIX_MIN	     16
#define MIX_MAX	     4096
#define PC_TAB	     4096 /* sizes of the producers, cycled */
#define PC_MIN	     16
#define PC_MAX	     1024
#define PC_RING	     1024		 /* slots of one producer/consumer ring (a power of two) */
#define PC_MAX_PAIRS (SAB_SWEEP_MAX / 2) /* scale/prodcons: up to SAB_SWEEP_MAX threads */
#define GROW_MAX     (1u << 20)		 /* realloc/grow ends at 1 MiB */
#define SMALL_MAX    4096		 /* realloc/small ends at 4 KiB */

/* the churn shape */
#define CHURN_SLOTS   20000	 /* live blocks of one thread's working set */
#define CHURN_OPS     2000000	 /* replacements per iteration (a pass): the fixed sample count */
#define CHURN_WARM    100000	 /* untimed replacements after the fill */
#define CHURN_CAL     10001	 /* empty timed regions: the clock's own cost */
#define CHURN_THREADS 2		 /* at most */
#define CHURN_BIG     (1u << 20) /* the largest churn block */
#define CHURN_SEED    0x5eedc0ffee123457ull
#define CHURN_RING    16384 /* slots of a hand-over ring: 20 ms or so of the other thread asleep */

/* glibc's own entry points: malloc and free are aliases of these unless something interposes. */
extern void *__libc_malloc(size_t size);
extern void __libc_free(void *p);
extern void *__libc_realloc(void *p, size_t size);

/* ---- fixed-seed tables, built once before any row runs ------------------------------------- */

static uint64_t rng_state = 0x5eedf00d12345678ull;

static inline uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rng_next(void)
{
	return splitmix64(&rng_state);
}

static struct mix_op {
	uint16_t slot;
	uint16_t size;
} mix_tab[MIX_TAB];
static uint16_t pc_sizes[PC_TAB];
static size_t grow_steps[64], small_steps[SMALL_MAX / 16 + 1];
static int n_grow, n_small;

static void make_tables(void)
{
	rng_state = 0x5eedf00d12345678ull;
	for (unsigned i = 0; i < MIX_TAB; i++) {
		mix_tab[i].slot = (uint16_t)(rng_next() % MIX_LIVE);
		mix_tab[i].size = (uint16_t)(MIX_MIN + rng_next() % (MIX_MAX - MIX_MIN + 1));
	}
	for (unsigned i = 0; i < PC_TAB; i++)
		pc_sizes[i] = (uint16_t)(PC_MIN + rng_next() % (PC_MAX - PC_MIN + 1));
	n_grow = 0;
	for (size_t n = 16;; n = n < 256 ? n + 16 : ((n + n / 2 + 15) & ~(size_t)15)) {
		if (n >= GROW_MAX) {
			grow_steps[n_grow++] = GROW_MAX;
			break;
		}
		grow_steps[n_grow++] = n;
	}
	n_small = 0;
	for (size_t n = 16; n <= SMALL_MAX; n += 16)
		small_steps[n_small++] = n;
}

/* ---- the churn clock ----------------------------------------------------------------------- */

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#if defined(__x86_64__) || defined(__i386__)
/* The first lfence waits for the timed call to finish, the second keeps what follows from starting
 * before the read; the memory clobber keeps the compiler from moving anything across. */
static inline __attribute__((always_inline)) uint64_t clk(void)
{
	uint32_t lo, hi;
	__asm__ volatile("lfence\n\trdtsc\n\tlfence" : "=a"(lo), "=d"(hi) : : "memory");
	return (uint64_t)hi << 32 | lo;
}
#else
static inline __attribute__((always_inline)) uint64_t clk(void)
{
	__asm__ volatile("" : : : "memory");
	const uint64_t t = mono_ns();
	__asm__ volatile("" : : : "memory");
	return t;
}
#endif

static double ns_per_tick = 1.0;

/* rdtsc against CLOCK_MONOTONIC over 20 ms (constant_tsc assumed, as on every x86 since ~2008). */
static void clock_setup(void)
{
#if defined(__x86_64__) || defined(__i386__)
	const uint64_t n0 = mono_ns(), t0 = clk();
	uint64_t n1;
	while ((n1 = mono_ns()) - n0 < 20000000u)
		;
	const uint64_t t1 = clk();
	if (t1 > t0)
		ns_per_tick = (double)(n1 - n0) / (double)(t1 - t0);
#endif
}

/* ---- allocators: set up once, on first use ------------------------------------------------- */

enum alloc_id { A_SHEAF, A_JE, A_JEX, A_MI, A_TC, A_GLIBC, A_HARNESS, A_NR };

struct allocator {
	const char *soname; /* for dlopen; NULL: linked */
	pthread_once_t once;
	const char *error; /* set up failed: why (every row of it is skipped with this) */
	char label[256];
	char errbuf[512];
};

static struct allocator allocators[A_NR] = {
	[A_SHEAF] = {.once = PTHREAD_ONCE_INIT},
	[A_JE] = {.soname = "libjemalloc.so.2", .once = PTHREAD_ONCE_INIT},
	[A_JEX] = {.soname = "libjemalloc.so.2", .once = PTHREAD_ONCE_INIT},
	[A_MI] = {.soname = "libmimalloc.so.2", .once = PTHREAD_ONCE_INIT},
	[A_TC] = {.soname = "libtcmalloc_minimal.so.4", .once = PTHREAD_ONCE_INIT},
	[A_GLIBC] = {.once = PTHREAD_ONCE_INIT},
	[A_HARNESS] = {.once = PTHREAD_ONCE_INIT},
};

/* Entry points, written once under the allocator's pthread_once, read-only afterwards. */
static void *(*je_malloc)(size_t);
static void (*je_free)(void *);
static void *(*je_realloc)(void *, size_t);
static __typeof__(mallocx) *je_mallocx;
static __typeof__(dallocx) *je_dallocx;
static __typeof__(rallocx) *je_rallocx;
static __typeof__(mi_malloc) *mi_malloc_p;
static __typeof__(mi_free) *mi_free_p;
static __typeof__(mi_realloc) *mi_realloc_p;
static __typeof__(tc_malloc) *tc_malloc_p;
static __typeof__(tc_free) *tc_free_p;
static __typeof__(tc_realloc) *tc_realloc_p;
static char harness_buf[CHURN_BIG] __attribute__((aligned(64))); /* the largest size asked for */

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

/* malloc, realloc to 4 KiB and to 64 KiB, free, through the new entry points, before any timing:
 * a NULL or a crash shows here, not as a suspiciously fast row. */
#define CHECK(a, MALLOC, REALLOC, FREE)                                           \
	do {                                                                      \
		if ((a)->error)                                                   \
			break;                                                    \
		void *p = MALLOC(16);                                             \
		void *q = p ? REALLOC(p, 4096) : NULL;                            \
		void *r = q ? REALLOC(q, 65536) : NULL;                           \
		if (!r) {                                                         \
			(a)->error = "the first malloc or realloc returned NULL"; \
			break;                                                    \
		}                                                                 \
		FREE(r);                                                          \
	} while (0)

/* The entry points of every allocator as expressions over locals declared by <X>_DECLS (not
 * every body uses realloc). */
#define MAYBE_UNUSED	    __attribute__((unused))
#define SHEAF_DECLS	    (void)0
#define SHEAF_MALLOC(n)	    sa_malloc(n)
#define SHEAF_FREE(p)	    sa_free(p)
#define SHEAF_REALLOC(p, n) sa_realloc(p, n)

#define JE_DECLS                                              \
	MAYBE_UNUSED void *(*const je_m)(size_t) = je_malloc; \
	MAYBE_UNUSED void (*const je_f)(void *) = je_free;    \
	MAYBE_UNUSED void *(*const je_r)(void *, size_t) = je_realloc
#define JE_MALLOC(n)	 je_m(n)
#define JE_FREE(p)	 je_f(p)
#define JE_REALLOC(p, n) je_r(p, n)

#define JEX_DECLS                                                   \
	MAYBE_UNUSED __typeof__(mallocx) *const jex_m = je_mallocx; \
	MAYBE_UNUSED __typeof__(dallocx) *const jex_f = je_dallocx; \
	MAYBE_UNUSED __typeof__(rallocx) *const jex_r = je_rallocx
#define JEX_MALLOC(n)	  jex_m(n, 0)
#define JEX_FREE(p)	  jex_f(p, 0)
#define JEX_REALLOC(p, n) jex_r(p, n, 0)

#define MI_DECLS                                                      \
	MAYBE_UNUSED __typeof__(mi_malloc) *const mi_m = mi_malloc_p; \
	MAYBE_UNUSED __typeof__(mi_free) *const mi_f = mi_free_p;     \
	MAYBE_UNUSED __typeof__(mi_realloc) *const mi_r = mi_realloc_p
#define MI_MALLOC(n)	 mi_m(n)
#define MI_FREE(p)	 mi_f(p)
#define MI_REALLOC(p, n) mi_r(p, n)

#define TC_DECLS                                                      \
	MAYBE_UNUSED __typeof__(tc_malloc) *const tc_m = tc_malloc_p; \
	MAYBE_UNUSED __typeof__(tc_free) *const tc_f = tc_free_p;     \
	MAYBE_UNUSED __typeof__(tc_realloc) *const tc_r = tc_realloc_p
#define TC_MALLOC(n)	 tc_m(n)
#define TC_FREE(p)	 tc_f(p)
#define TC_REALLOC(p, n) tc_r(p, n)

#define GLIBC_DECLS	    (void)0
#define GLIBC_MALLOC(n)	    __libc_malloc(n)
#define GLIBC_FREE(p)	    __libc_free(p)
#define GLIBC_REALLOC(p, n) __libc_realloc(p, n)

/* No allocator: a static buffer big enough for every size the harness rows ask for. */
#define HARNESS_DECLS	  char *const hb = harness_buf
#define HARNESS_MALLOC(n) ((void)(n), (void *)hb)
#define HARNESS_FREE(p)	  ((void)(p))

static void setup_sheaf(void)
{
	struct allocator *a = &allocators[A_SHEAF];
	CHECK(a, SHEAF_MALLOC, SHEAF_REALLOC, SHEAF_FREE);
	char v[96];
	snprintf(v, sizeof(v), "%d.%d per-CPU %s", SHEAFALLOC_VERSION_MAJOR,
		 SHEAFALLOC_VERSION_MINOR, sa_percpu_mode());
	set_label(a, (const void *)sa_malloc, v);
}

static void setup_je_any(enum alloc_id id)
{
	struct allocator *a = &allocators[id];
	void *h = peer_open(a);
	__typeof__(mallctl) *ctl = (__typeof__(mallctl) *)peer_sym(a, h, "mallctl");
	const char *jever = "?";
	size_t len = sizeof(jever);
	if (!ctl || ctl("version", (void *)&jever, &len, NULL, 0) != 0)
		jever = "?";
	char ver[160];
	const void *entry;
	if (id == A_JE) {
		je_malloc = (void *(*)(size_t))peer_sym(a, h, "malloc");
		je_free = (void (*)(void *))peer_sym(a, h, "free");
		je_realloc = (void *(*)(void *, size_t))peer_sym(a, h, "realloc");
		JE_DECLS;
		CHECK(a, JE_MALLOC, JE_REALLOC, JE_FREE);
		snprintf(ver, sizeof(ver), "%s malloc/free/realloc", jever);
		entry = (const void *)je_malloc;
	} else {
		je_mallocx = (__typeof__(mallocx) *)peer_sym(a, h, "mallocx");
		je_dallocx = (__typeof__(dallocx) *)peer_sym(a, h, "dallocx");
		je_rallocx = (__typeof__(rallocx) *)peer_sym(a, h, "rallocx");
		JEX_DECLS;
		CHECK(a, JEX_MALLOC, JEX_REALLOC, JEX_FREE);
		snprintf(ver, sizeof(ver), "%s mallocx/dallocx/rallocx", jever);
		entry = (const void *)je_mallocx;
	}
	if (!a->error)
		set_label(a, entry, ver);
}

static void setup_je(void)
{
	setup_je_any(A_JE);
}

static void setup_jex(void)
{
	setup_je_any(A_JEX);
}

static void setup_mi(void)
{
	struct allocator *a = &allocators[A_MI];
	void *h = peer_open(a);
	mi_malloc_p = (__typeof__(mi_malloc) *)peer_sym(a, h, "mi_malloc");
	mi_free_p = (__typeof__(mi_free) *)peer_sym(a, h, "mi_free");
	mi_realloc_p = (__typeof__(mi_realloc) *)peer_sym(a, h, "mi_realloc");
	__typeof__(mi_version) *ver = (__typeof__(mi_version) *)peer_sym(a, h, "mi_version");
	MI_DECLS;
	CHECK(a, MI_MALLOC, MI_REALLOC, MI_FREE);
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
	tc_realloc_p = (__typeof__(tc_realloc) *)peer_sym(a, h, "tc_realloc");
	__typeof__(tc_version) *ver = (__typeof__(tc_version) *)peer_sym(a, h, "tc_version");
	TC_DECLS;
	CHECK(a, TC_MALLOC, TC_REALLOC, TC_FREE);
	if (!a->error) {
		int major, minor;
		const char *patch;
		set_label(a, (const void *)tc_malloc_p, ver(&major, &minor, &patch));
	}
}

static void setup_glibc(void)
{
	struct allocator *a = &allocators[A_GLIBC];
	CHECK(a, GLIBC_MALLOC, GLIBC_REALLOC, GLIBC_FREE);
	set_label(a, (const void *)__libc_malloc, gnu_get_libc_version());
}

static void setup_harness(void)
{
	set_label(&allocators[A_HARNESS], (const void *)sab_keep_running_batch, "loop only");
}

static void (*const setups[A_NR])(void) = {
	[A_SHEAF] = setup_sheaf,     [A_JE] = setup_je, [A_JEX] = setup_jex,
	[A_MI] = setup_mi,	     [A_TC] = setup_tc, [A_GLIBC] = setup_glibc,
	[A_HARNESS] = setup_harness,
};

static void *noop_thread(void *arg)
{
	return arg;
}

/* As in core_bench.c: glibc's malloc skips its locks while the process has never had a second
 * thread, and never goes back once one existed; every row runs in a process that has started
 * (and joined) one thread, the state of any multi-threaded program. Also builds the tables. */
static void process_setup(void)
{
	make_tables();
	clock_setup();
	pthread_t t;
	if (pthread_create(&t, NULL, noop_thread, NULL) == 0)
		pthread_join(t, NULL);
}

/* Sets up allocator id once (any thread, any row); on failure skips this run and returns 0. */
static int ready(sab_state *st, enum alloc_id id)
{
	static pthread_once_t process_once = PTHREAD_ONCE_INIT;
	pthread_once(&process_once, process_setup);
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

static double rss_mib(void)
{
	long pages = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (f) {
		if (fscanf(f, "%*s %ld", &pages) != 1)
			pages = 0;
		fclose(f);
	}
	return (double)pages * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

/* ---- the producer/consumer rings ----------------------------------------------------------- */

struct pc_ring {
	_Alignas(64) _Atomic uint64_t head; /* written by the producer only */
	_Alignas(64) _Atomic uint64_t tail; /* written by the consumer only */
	_Alignas(64) void *slot[PC_RING];
};
/* One ring per pair. Both ends move by the same count in every run (google-benchmark gives all
 * threads of a run the same iteration count), so a ring is empty between runs. */
static struct pc_ring pc_rings[PC_MAX_PAIRS];

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield");
#endif
}

static inline void backoff(unsigned *spins)
{
	if (++*spins < 64) {
		cpu_relax();
	} else {
		*spins = 0;
		sched_yield();
	}
}

/* ---- churn: working sets, sample arrays, percentiles ----------------------------------------- */

/* Sizes: 0.1% 256 KiB..1 MiB, 70% 16..128 B, 25% 129..4096 B, the rest (4.9%) 4097 B..64 KiB. */
static inline uint32_t churn_size(uint64_t x)
{
	const uint32_t r = (uint32_t)(x % 10000), u = (uint32_t)(x >> 32);
	if (r < 10)
		return (256u << 10) + u % ((768u << 10) + 1);
	if (r < 10 + 7000)
		return 16 + u % (128 - 16 + 1);
	if (r < 10 + 7000 + 2500)
		return 129 + u % (4096 - 129 + 1);
	return 4097 + u % (65536 - 4097 + 1);
}

struct churn_thread {
	uint32_t *mal; /* CHURN_OPS malloc samples (ticks) */
	uint32_t *fre; /* up to 2 * CHURN_OPS free samples: local ones and those of handed blocks */
	size_t nfree;  /* free samples of the last pass */
	size_t remote; /* of which frees of blocks handed over by the other thread */
	uint32_t clock; /* median ticks of an empty timed region */
	double live;	/* bytes asked for by the working set at the end */
};

/* One run at a time (google-benchmark runs one row at a time); thread 0 maps and computes. */
static struct {
	uint32_t *map; /* per thread CHURN_OPS malloc samples, then per thread 2 * CHURN_OPS free
			* samples, then the sort's scratch (threads * 2 * CHURN_OPS) */
	size_t len;
	uint32_t *tmp;
	struct churn_thread th[CHURN_THREADS];
	double mal[5], fre[5], clock_ns, remote_pct, live_mib; /* the results */
} churn;
static void *churn_slot[CHURN_THREADS][CHURN_SLOTS];
static uint32_t churn_sizes[CHURN_THREADS][CHURN_SLOTS];
/* [t]: blocks handed to thread t; empty between runs (drained after the timed loop) */
static struct churn_ring {
	_Alignas(64) _Atomic uint64_t head; /* written by the other thread only */
	_Alignas(64) _Atomic uint64_t tail; /* written by thread t only */
	_Alignas(64) void *slot[CHURN_RING];
} churn_rings[CHURN_THREADS];
static const unsigned churn_q[5] = {5000, 9900, 9990, 9999, 10000}; /* per 10,000 */
static const char *const churn_mal_names[5] = {"malloc_p50", "malloc_p99", "malloc_p99.9",
					       "malloc_p99.99", "malloc_max"};
static const char *const churn_fre_names[5] = {"free_p50", "free_p99", "free_p99.9", "free_p99.99",
					       "free_max"};

static void churn_barrier(int nthreads)
{
	static _Atomic unsigned arrived, generation;
	const unsigned g = atomic_load(&generation);
	if (atomic_fetch_add(&arrived, 1) + 1 == (unsigned)nthreads) {
		atomic_store(&arrived, 0);
		atomic_fetch_add(&generation, 1);
	} else {
		unsigned spins = 0;
		while (atomic_load(&generation) == g)
			backoff(&spins);
	}
}

/* Non-blocking ends of an SPSC ring: 0 when full (push) or empty (pop). */
static inline int churn_push(struct churn_ring *r, void *p)
{
	const uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	if (head - atomic_load_explicit(&r->tail, memory_order_acquire) >= CHURN_RING)
		return 0;
	r->slot[head & (CHURN_RING - 1)] = p;
	atomic_store_explicit(&r->head, head + 1, memory_order_release);
	return 1;
}

static inline int churn_pop(struct churn_ring *r, void **p)
{
	const uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	if (tail == atomic_load_explicit(&r->head, memory_order_acquire))
		return 0;
	*p = r->slot[tail & (CHURN_RING - 1)];
	atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
	return 1;
}

/* LSD radix sort, 11 bits a pass (3 passes); returns a or tmp, whichever holds the result. */
static uint32_t *sort_u32(uint32_t *a, uint32_t *tmp, size_t n)
{
	for (unsigned shift = 0; shift < 32; shift += 11) {
		size_t count[1u << 11] = {0};
		for (size_t i = 0; i < n; i++)
			count[(a[i] >> shift) & 0x7ff]++;
		for (size_t k = 0, sum = 0; k < (1u << 11); k++) {
			const size_t c = count[k];
			count[k] = sum;
			sum += c;
		}
		for (size_t i = 0; i < n; i++)
			tmp[count[(a[i] >> shift) & 0x7ff]++] = a[i];
		uint32_t *const t = a;
		a = tmp;
		tmp = t;
	}
	return a;
}

/* Nearest rank: the smallest sample with at least q of them at or below it. */
static void percentiles(uint32_t *a, size_t n, double out[5])
{
	const uint32_t *s = sort_u32(a, churn.tmp, n);
	for (int k = 0; k < 5; k++) {
		const size_t rank = n ? (n * churn_q[k] + 9999) / 10000 : 0;
		out[k] = n ? (double)s[rank ? rank - 1 : 0] * ns_per_tick : 0;
	}
}

/* Maps the sample arrays (thread 0) and measures this thread's clock overhead; NULL for every
 * thread when the mapping failed. */
static struct churn_thread *churn_begin(int t, int nthreads)
{
	if (t == 0) {
		churn.len = (size_t)nthreads * 5 * CHURN_OPS * sizeof(uint32_t);
		void *m = mmap(NULL, churn.len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		churn.map = m == MAP_FAILED ? NULL : m;
		for (int i = 0; churn.map && i < nthreads; i++) {
			churn.th[i].mal = churn.map + (size_t)i * CHURN_OPS;
			churn.th[i].fre = churn.map + (size_t)nthreads * CHURN_OPS +
					  (size_t)i * 2 * CHURN_OPS;
		}
		churn.tmp = churn.map ? churn.map + (size_t)nthreads * 3 * CHURN_OPS : NULL;
	}
	churn_barrier(nthreads);
	if (!churn.map)
		return NULL;
	struct churn_thread *th = &churn.th[t];
	for (int i = 0; i < CHURN_CAL; i++) {
		const uint64_t t0 = clk();
		th->mal[i] = (uint32_t)(clk() - t0);
	}
	th->clock = sort_u32(th->mal, th->fre, CHURN_CAL)[CHURN_CAL / 2];
	return th;
}

/* After the timed loop: every thread subtracts its clock overhead, thread 0 merges and computes
 * the percentiles, every thread sets the same counters (google-benchmark averages them). */
static void churn_end(sab_state *st, int t, int nthreads, size_t nfree, size_t remote)
{
	struct churn_thread *th = &churn.th[t];
	const uint32_t c = th->clock;
	for (size_t i = 0; i < CHURN_OPS; i++)
		th->mal[i] = th->mal[i] > c ? th->mal[i] - c : 0;
	for (size_t i = 0; i < nfree; i++)
		th->fre[i] = th->fre[i] > c ? th->fre[i] - c : 0;
	th->nfree = nfree;
	th->remote = remote;
	th->live = 0;
	for (unsigned k = 0; k < CHURN_SLOTS; k++)
		th->live += churn_sizes[t][k];
	churn_barrier(nthreads);
	if (t == 0) {
		/* the malloc samples of all threads are contiguous; move the free samples together */
		percentiles(churn.th[0].mal, (size_t)nthreads * CHURN_OPS, churn.mal);
		size_t n = churn.th[0].nfree, rem = churn.th[0].remote;
		double clock = churn.th[0].clock, live = churn.th[0].live;
		for (int i = 1; i < nthreads; i++) {
			memmove(churn.th[0].fre + n, churn.th[i].fre,
				churn.th[i].nfree * sizeof(uint32_t));
			n += churn.th[i].nfree;
			rem += churn.th[i].remote;
			clock += churn.th[i].clock;
			live += churn.th[i].live;
		}
		percentiles(churn.th[0].fre, n, churn.fre);
		churn.clock_ns = clock / nthreads * ns_per_tick;
		churn.remote_pct = n ? 100.0 * (double)rem / (double)n : 0;
		churn.live_mib = live / (1024.0 * 1024.0);
	}
	churn_barrier(nthreads);
	for (int k = 0; k < 5; k++) {
		sab_counter(st, churn_mal_names[k], churn.mal[k]);
		sab_counter(st, churn_fre_names[k], churn.fre[k]);
	}
	sab_counter(st, "clock_ns", churn.clock_ns);
	sab_counter(st, "ops_per_iter", CHURN_OPS);
	sab_counter(st, "live_MiB", churn.live_mib);
	if (nthreads > 1)
		sab_counter(st, "remote_pct", churn.remote_pct);
	if (t == 0) {
		munmap(churn.map, churn.len); /* the others only read the results above */
		churn.map = NULL;
	}
}

/* ---- shapes: ALLOC(n), FREE(p), REALLOC(p, n) name the allocator's entry points --------------- */

#define TOUCH(p) (*(char *)(p) = 1)

#define SHAPE_PAIR(st, arg, MALLOC, FREE)                         \
	do {                                                      \
		const size_t n = *(const size_t *)(arg);          \
		while (sab_keep_running_batch((st), PAIR_UNROLL)) \
			for (int i = 0; i < PAIR_UNROLL; i++) {   \
				void *p = MALLOC(n);              \
				TOUCH(p);                         \
				sab_escape(p);                    \
				FREE(p);                          \
			}                                         \
		sab_set_items((st), sab_iterations(st));          \
	} while (0)

#define SHAPE_BATCH(st, arg, MALLOC, FREE)                            \
	do {                                                          \
		const size_t n = *(const size_t *)(arg);              \
		void *objs[BATCH_OBJS];                               \
		while (sab_keep_running(st)) {                        \
			for (int i = 0; i < BATCH_OBJS; i++) {        \
				void *p = MALLOC(n);                  \
				TOUCH(p);                             \
				sab_escape(p);                        \
				objs[i] = p;                          \
			}                                             \
			for (int i = 0; i < BATCH_OBJS; i++) {        \
				void *p = objs[i];                    \
				FREE(p);                              \
			}                                             \
		}                                                     \
		sab_set_items((st), sab_iterations(st) * BATCH_OBJS); \
		sab_counter((st), "objs_per_iter", BATCH_OBJS);       \
	} while (0)

/* The ring is filled (untimed, before the first sab_keep_running_batch) with the sizes of the
 * first MIX_LIVE table entries, and freed after the loop (untimed). */
#define SHAPE_MIXED(st, MALLOC, FREE)                                                        \
	do {                                                                                 \
		static void *ring[MIX_LIVE];                                                 \
		static uint16_t ring_size[MIX_LIVE];                                         \
		for (unsigned k = 0; k < MIX_LIVE; k++) {                                    \
			void *p = MALLOC(mix_tab[k].size);                                   \
			TOUCH(p);                                                            \
			sab_escape(p);                                                       \
			ring[k] = p;                                                         \
			ring_size[k] = mix_tab[k].size;                                      \
		}                                                                            \
		unsigned j = 0;                                                              \
		while (sab_keep_running_batch((st), PAIR_UNROLL))                            \
			for (int i = 0; i < PAIR_UNROLL; i++, j = (j + 1) & (MIX_TAB - 1)) { \
				const struct mix_op op = mix_tab[j];                         \
				FREE(ring[op.slot]);                                         \
				void *p = MALLOC(op.size);                                   \
				TOUCH(p);                                                    \
				sab_escape(p);                                               \
				ring[op.slot] = p;                                           \
				ring_size[op.slot] = op.size;                                \
			}                                                                    \
		double live = 0;                                                             \
		for (unsigned k = 0; k < MIX_LIVE; k++)                                      \
			live += ring_size[k];                                                \
		sab_counter((st), "live_MiB", live / (1024.0 * 1024.0));                     \
		sab_counter((st), "rss_MiB", rss_mib());                                     \
		for (unsigned k = 0; k < MIX_LIVE; k++)                                      \
			FREE(ring[k]);                                                       \
		sab_set_items((st), sab_iterations(st));                                     \
	} while (0)

/* scale/mixed: the mixed ring per thread; its ring comes from mmap, never from the allocator under
 * test. Each block holds its slot's low byte (the one byte written, as TOUCH writes one). */
#define SHAPE_MIXED_MT(st, MALLOC, FREE)                                                         \
	do {                                                                                     \
		const size_t len_ = MIX_LIVE * sizeof(void *);                                   \
		void *m_ = mmap(NULL, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, \
				-1, 0);                                                          \
		if (m_ == MAP_FAILED) {                                                          \
			sab_skip((st), "mmap of the ring failed");                               \
			return;                                                                  \
		}                                                                                \
		void **const ring = m_;                                                          \
		unsigned j = ((unsigned)sab_thread_index(st) * 4099u) & (MIX_TAB - 1);           \
		for (unsigned k = 0; k < MIX_LIVE; k++) {                                        \
			void *p = MALLOC(mix_tab[(j + k) & (MIX_TAB - 1)].size);                 \
			*(unsigned char *)p = (unsigned char)k;                                  \
			sab_escape(p);                                                           \
			ring[k] = p;                                                             \
		}                                                                                \
		while (sab_keep_running_batch((st), PAIR_UNROLL))                                \
			for (int i = 0; i < PAIR_UNROLL; i++, j = (j + 1) & (MIX_TAB - 1)) {     \
				const struct mix_op op = mix_tab[j];                             \
				FREE(ring[op.slot]);                                             \
				void *p = MALLOC(op.size);                                       \
				*(unsigned char *)p = (unsigned char)op.slot;                    \
				sab_escape(p);                                                   \
				ring[op.slot] = p;                                               \
			}                                                                        \
		unsigned bad_ = 0;                                                               \
		for (unsigned k = 0; k < MIX_LIVE; k++) {                                        \
			bad_ += *(unsigned char *)ring[k] != (unsigned char)k;                   \
			FREE(ring[k]);                                                           \
		}                                                                                \
		munmap(m_, len_);                                                                \
		if (bad_) {                                                                      \
			sab_skip((st),                                                           \
				 "scale/mixed: a live block lost its byte (memory handed out "   \
				 "twice)");                                                      \
			return;                                                                  \
		}                                                                                \
		sab_set_items((st), sab_iterations(st));                                         \
	} while (0)

#define SHAPE_REALLOC(st, steps, nsteps, MALLOC, REALLOC, FREE)     \
	do {                                                        \
		const size_t *const s = (steps);                    \
		const int ns = (nsteps);                            \
		while (sab_keep_running(st)) {                      \
			char *p = MALLOC(s[0]);                     \
			p[s[0] - 1] = 1;                            \
			sab_escape(p);                              \
			for (int k = 1; k < ns; k++) {              \
				p = REALLOC(p, s[k]);               \
				p[s[k] - 1] = 1;                    \
				sab_escape(p);                      \
			}                                           \
			FREE(p);                                    \
		}                                                   \
		sab_set_items((st), sab_iterations(st) * (ns - 1)); \
		sab_counter((st), "reallocs_per_chain", ns - 1);    \
	} while (0)

/* Even thread index: producer of pair index / 2; odd: its consumer. */
#define SHAPE_PRODCONS(st, MALLOC, FREE)                                                             \
	do {                                                                                         \
		const int t = sab_thread_index(st);                                                  \
		if (sab_threads(st) % 2 || sab_threads(st) > 2 * PC_MAX_PAIRS) {                     \
			sab_skip((st), "prodcons needs 2 or 4 threads");                             \
			return;                                                                      \
		}                                                                                    \
		struct pc_ring *r = &pc_rings[t / 2];                                                \
		/* both ends read this before the first sab_keep_running_batch, where every thread \
		 * waits for the others: no block of this run has been pushed yet */ \
		if (atomic_load(&r->head) != atomic_load(&r->tail)) {                                \
			sab_skip((st),                                                               \
				 "prodcons: a ring was not empty when the run started: blocks "      \
				 "were lost");                                                       \
			return;                                                                      \
		}                                                                                    \
		unsigned spins = 0;                                                                  \
		if (t % 2 == 0) {                                                                    \
			uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);        \
			uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);        \
			unsigned k = (unsigned)(t / 2) * 1237u;                                      \
			while (sab_keep_running_batch((st), PAIR_UNROLL))                            \
				for (int i = 0; i < PAIR_UNROLL; i++) {                              \
					void *p = MALLOC(pc_sizes[k++ & (PC_TAB - 1)]);              \
					TOUCH(p);                                                    \
					sab_escape(p);                                               \
					while (head - tail >= PC_RING) {                             \
						tail = atomic_load_explicit(&r->tail,                \
									    memory_order_acquire);   \
						if (head - tail >= PC_RING)                          \
							backoff(&spins);                             \
					}                                                            \
					r->slot[head & (PC_RING - 1)] = p;                           \
					atomic_store_explicit(&r->head, ++head,                      \
							      memory_order_release);                 \
				}                                                                    \
			sab_set_items((st), sab_iterations(st));                                     \
		} else {                                                                             \
			uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);        \
			uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);        \
			while (sab_keep_running_batch((st), PAIR_UNROLL))                            \
				for (int i = 0; i < PAIR_UNROLL; i++) {                              \
					while (tail == head) {                                       \
						head = atomic_load_explicit(&r->head,                \
									    memory_order_acquire);   \
						if (tail == head)                                    \
							backoff(&spins);                             \
					}                                                            \
					void *p = r->slot[tail & (PC_RING - 1)];                     \
					atomic_store_explicit(&r->tail, ++tail,                      \
							      memory_order_release);                 \
					FREE(p);                                                     \
				}                                                                    \
			sab_set_items((st), 0);                                                      \
		}                                                                                    \
	} while (0)

/* One replacement of the churn: free (or hand over) the block of a random slot, free at most one
 * block handed over by the other thread, malloc a new size into the slot. Each malloc and free is
 * timed alone; the sample goes to mal[i] and fre[nf++]. */
#define CHURN_TIMED(dst, CALL)                                       \
	do {                                                         \
		const uint64_t t0_ = clk();                          \
		CALL;                                                \
		const uint64_t d_ = clk() - t0_;                     \
		(dst) = d_ < UINT32_MAX ? (uint32_t)d_ : UINT32_MAX; \
	} while (0)

#define CHURN_STEP(MALLOC, FREE)                                                          \
	do {                                                                              \
		const uint64_t x_ = splitmix64(&rng);                                     \
		const uint32_t k_ = (uint32_t)(((x_ & 0xffffffffu) * CHURN_SLOTS) >> 32); \
		const uint32_t n_ = churn_size(splitmix64(&rng));                         \
		void *old_ = slot[k_], *p_;                                               \
		if (!(peer && (x_ >> 32) % 10 == 0 && churn_push(peer, old_)))            \
			CHURN_TIMED(fre[nf++], FREE(old_));                               \
		if (mine && churn_pop(mine, &p_)) {                                       \
			CHURN_TIMED(fre[nf++], FREE(p_));                                 \
			remote++;                                                         \
		}                                                                         \
		CHURN_TIMED(mal[i], p_ = MALLOC(n_));                                     \
		((char *)p_)[0] = 1;                                                      \
		((char *)p_)[n_ - 1] = 1;                                                 \
		sab_escape(p_);                                                           \
		slot[k_] = p_;                                                            \
		size[k_] = n_;                                                            \
	} while (0)

/* Every iteration is a pass of CHURN_OPS timed replacements that overwrites the samples of the one
 * before; untimed before it (PauseTiming), so that every pass replays the same stream: the working
 * set of the pass before freed, the stream reseeded, the working set filled, the warm-up. */
#define SHAPE_CHURN(st, MALLOC, FREE)                                                 \
	do {                                                                          \
		const int t = sab_thread_index(st), nth = sab_threads(st);            \
		if (nth > CHURN_THREADS) {                                            \
			sab_skip((st), "churn runs on 1 or 2 threads");               \
			return;                                                       \
		}                                                                     \
		struct churn_thread *const th = churn_begin(t, nth);                  \
		if (!th) {                                                            \
			sab_skip((st), "mmap of the sample arrays failed");           \
			return;                                                       \
		}                                                                     \
		struct churn_ring *const mine = nth > 1 ? &churn_rings[t] : NULL;     \
		struct churn_ring *const peer = nth > 1 ? &churn_rings[t ^ 1] : NULL; \
		void **const slot = churn_slot[t];                                    \
		uint32_t *const size = churn_sizes[t];                                \
		uint32_t *const mal = th->mal, *const fre = th->fre;                  \
		uint64_t rng;                                                         \
		size_t nf = 0, remote = 0;                                            \
		int filled = 0;                                                       \
		while (sab_keep_running(st)) {                                        \
			sab_pause(st);                                                \
			for (unsigned k = 0; filled && k < CHURN_SLOTS; k++)          \
				FREE(slot[k]);                                        \
			rng = CHURN_SEED + (uint64_t)t * 0x632be59bd9b4e019ull;       \
			for (unsigned k = 0; k < CHURN_SLOTS; k++) {                  \
				const uint32_t n = churn_size(splitmix64(&rng));      \
				void *p = MALLOC(n);                                  \
				((char *)p)[0] = 1;                                   \
				((char *)p)[n - 1] = 1;                               \
				sab_escape(p);                                        \
				slot[k] = p;                                          \
				size[k] = n;                                          \
			}                                                             \
			filled = 1;                                                   \
			for (size_t i = 0; i < CHURN_WARM; i++)                       \
				CHURN_STEP(MALLOC, FREE);                             \
			nf = remote = 0;                                              \
			sab_resume(st);                                               \
			for (size_t i = 0; i < CHURN_OPS; i++)                        \
				CHURN_STEP(MALLOC, FREE);                             \
		}                                                                     \
		churn_end((st), t, nth, nf, remote);                                  \
		void *q;                                                              \
		while (mine && churn_pop(mine, &q))                                   \
			FREE(q);                                                      \
		for (unsigned k = 0; filled && k < CHURN_SLOTS; k++)                  \
			FREE(slot[k]);                                                \
		sab_set_items((st), sab_iterations(st) * CHURN_OPS);                  \
	} while (0)

/* Every body of one allocator; X is its macro prefix (X##_DECLS, X##_MALLOC, ...). */
#define BODIES(name, id, X)                                                                 \
	static void name##_pair(sab_state *st, const void *arg)                             \
	{                                                                                   \
		if (!ready(st, id))                                                         \
			return;                                                             \
		X##_DECLS;                                                                  \
		SHAPE_PAIR(st, arg, X##_MALLOC, X##_FREE);                                  \
	}                                                                                   \
	static void name##_batch(sab_state *st, const void *arg)                            \
	{                                                                                   \
		if (!ready(st, id))                                                         \
			return;                                                             \
		X##_DECLS;                                                                  \
		SHAPE_BATCH(st, arg, X##_MALLOC, X##_FREE);                                 \
	}                                                                                   \
	static void name##_mixed(sab_state *st, const void *arg)                            \
	{                                                                                   \
		(void)arg;                                                                  \
		if (!ready(st, id))                                                         \
			return;                                                             \
		X##_DECLS;                                                                  \
		SHAPE_MIXED(st, X##_MALLOC, X##_FREE);                                      \
	}                                                                                   \
	static void name##_realloc_small(sab_state *st, const void *arg)                    \
	{                                                                                   \
		(void)arg;                                                                  \
		if (!ready(st, id))                                                         \
			return;                                                             \
		X##_DECLS;                                                                  \
		SHAPE_REALLOC(st, small_steps, n_small, X##_MALLOC, X##_REALLOC, X##_FREE); \
	}                                                                                   \
	static void name##_realloc_grow(sab_state *st, const void *arg)                     \
	{                                                                                   \
		(void)arg;                                                                  \
		if (!ready(st, id))                                                         \
			return;                                                             \
		X##_DECLS;                                                                  \
		SHAPE_REALLOC(st, grow_steps, n_grow, X##_MALLOC, X##_REALLOC, X##_FREE);   \
	}                                                                                   \
	static void name##_prodcons(sab_state *st, const void *arg)                         \
	{                                                                                   \
		(void)arg;                                                                  \
		if (!ready(st, id))                                                         \
			return;                                                             \
		X##_DECLS;                                                                  \
		SHAPE_PRODCONS(st, X##_MALLOC, X##_FREE);                                   \
	}                                                                                   \
	static void name##_mixed_mt(sab_state *st, const void *arg)                         \
	{                                                                                   \
		(void)arg;                                                                  \
		if (!ready(st, id))                                                         \
			return;                                                             \
		X##_DECLS;                                                                  \
		SHAPE_MIXED_MT(st, X##_MALLOC, X##_FREE);                                   \
	}                                                                                   \
	static void name##_churn(sab_state *st, const void *arg)                            \
	{                                                                                   \
		(void)arg;                                                                  \
		if (!ready(st, id))                                                         \
			return;                                                             \
		X##_DECLS;                                                                  \
		SHAPE_CHURN(st, X##_MALLOC, X##_FREE);                                      \
	}

BODIES(sheaf, A_SHEAF, SHEAF)
BODIES(je, A_JE, JE)
BODIES(jex, A_JEX, JEX)
BODIES(mi, A_MI, MI)
BODIES(tc, A_TC, TC)
BODIES(glibc, A_GLIBC, GLIBC)

static void harness_pair(sab_state *st, const void *arg)
{
	if (!ready(st, A_HARNESS))
		return;
	HARNESS_DECLS;
	SHAPE_PAIR(st, arg, HARNESS_MALLOC, HARNESS_FREE);
}

static void harness_mixed(sab_state *st, const void *arg)
{
	(void)arg;
	if (!ready(st, A_HARNESS))
		return;
	HARNESS_DECLS;
	SHAPE_MIXED(st, HARNESS_MALLOC, HARNESS_FREE);
}

static void harness_churn(sab_state *st, const void *arg)
{
	(void)arg;
	if (!ready(st, A_HARNESS))
		return;
	HARNESS_DECLS;
	SHAPE_CHURN(st, HARNESS_MALLOC, HARNESS_FREE);
}

/* ---- the table: "<allocator>/<shape>[/<size>]"; bench/Makefile runs one allocator per process */

static const size_t sizes[] = {16, 64, 256, 1024, 4096, 16384, 32768};

#define SIZED(alloc, shape, fn)                                                               \
	{alloc "/" shape "/16", fn, &sizes[0], 0}, {alloc "/" shape "/64", fn, &sizes[1], 0}, \
		{alloc "/" shape "/256", fn, &sizes[2], 0},                                   \
		{alloc "/" shape "/1024", fn, &sizes[3], 0},                                  \
		{alloc "/" shape "/4096", fn, &sizes[4], 0},                                  \
		{alloc "/" shape "/16384", fn, &sizes[5], 0},                                 \
	{                                                                                     \
		alloc "/" shape "/32768", fn, &sizes[6], 0                                    \
	}

#define ROWS(alloc, name)                                                                          \
	SIZED(alloc, "pair", name##_pair), SIZED(alloc, "batch", name##_batch),                    \
		{alloc "/realloc/small", name##_realloc_small, NULL, 0},                           \
		{alloc "/realloc/grow", name##_realloc_grow, NULL, 0},                             \
		{alloc "/mixed", name##_mixed, NULL, 0},                                           \
		{alloc "/prodcons", name##_prodcons, NULL, -2},                                    \
		{alloc "/prodcons", name##_prodcons, NULL, -4},                                    \
		{alloc "/churn", name##_churn, NULL, 0}, {alloc "/churn", name##_churn, NULL, -2}, \
		{alloc "/scale/pair/64", name##_pair, &sizes[1], SAB_SWEEP},                       \
		{alloc "/scale/batch/64", name##_batch, &sizes[1], SAB_SWEEP},                     \
		{alloc "/scale/mixed", name##_mixed_mt, NULL, SAB_SWEEP},                          \
	{                                                                                          \
		alloc "/scale/prodcons", name##_prodcons, NULL, SAB_SWEEP_EVEN                     \
	}

const struct sab_bench sab_benches[] = {
	ROWS("sheafalloc", sheaf),
	ROWS("jemalloc", je),
	ROWS("jemalloc-mallocx", jex),
	ROWS("mimalloc", mi),
	ROWS("tcmalloc", tc),
	ROWS("glibc", glibc),
	{"harness/pair/64", harness_pair, &sizes[1], 0},
	{"harness/mixed", harness_mixed, NULL, 0},
	{"harness/churn", harness_churn, NULL, 0},
};
const size_t sab_nbenches = sizeof(sab_benches) / sizeof(sab_benches[0]);
