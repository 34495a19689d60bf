/*
 * tests/stress/churn_threads.c — tens of thousands of short-lived threads do not make the
 * allocator's memory grow with the number of threads.
 *
 * Threads are created and joined in waves of WAVE at a time. Each does OPS malloc-family and
 * cache operations of mixed sizes (small classes, large runs, a few huge mappings, realloc,
 * calloc), frees objects that threads of an earlier wave left in an exchange (so objects are
 * freed by a thread other than the one that allocated them), and leaves HANDOFF objects of its
 * own there for a later wave. Every block carries a pattern checked before it is freed.
 *
 * After FIRST and after REQUIRED threads (and, when the seconds argument leaves time, after
 * every REQUIRED more, up to MAX_THREADS), the scenario drains the exchange, so that nothing of
 * the churn is live, and measures:
 *   raw     sa_memory_held() and RSS (/proc/self/statm) as the churn left them;
 *   trimmed the same after sa_trim(), which flushes every sheaf, purges every dirty unit and
 *           unmaps empty segments: what is left is what the allocator cannot give back;
 *   counts  the bytes in use of every cache and large block (sa_malloc_totals: must be 0 —
 *           every object the churn made was freed) and the sheaf structures alive
 *           (sheaf_new - sheaf_freed over every cache).
 * The bounds do not grow with the number of threads (docs/design.md §10: "a thread that exits
 * leaves nothing behind"); each later checkpoint k is compared with the first one (after FIRST
 * threads, when every size class, every CPU's sheaves and the metadata have been warmed up):
 *   in_use(k) == 0;
 *   sheaves(k) <= sheaves(first) + sheaves_slack();
 *   held_trimmed(k) <= held_trimmed(first) + HELD_MARGIN;
 *   rss_trimmed(k) <= rss_trimmed(first) + RSS_MARGIN (not under sanitizers: their runtimes'
 *     own memory dominates RSS);
 *   held_raw(k) <= held_raw(first) + RAW_MARGIN.
 * Measured on a 2-vCPU machine (rseq, own rseq registration, fallback; one node and two
 * synthetic ones), after 2,000, 20,000 and 40,000 threads alike: held after a trim 1024 KiB
 * (one metadata chunk), RSS after a trim 2.7-2.9 MiB (5.9 MiB with two nodes), in use 0,
 * sheaves alive 0; untrimmed held 9-25 MiB, untrimmed RSS 4.5-16 MiB, moving both ways.
 * Why these margins:
 *   HELD_MARGIN 1 MiB: after a trim with nothing live, held is the metadata chunks (1 MiB each,
 *     never unmapped: docs/design.md §6) plus headers of segments that still hold a stashed or
 *     purge-busy run; a later checkpoint may legitimately need one more metadata chunk if the
 *     peak number of sheaves alive at once was reached later. A leak of 64 bytes of slab memory
 *     per thread over the 18,000 threads between the checkpoints is 1.1 MiB and fails it; a
 *     leaked object of any size also fails the exact in_use count.
 *   RSS_MARGIN 4 MiB: the metadata chunk above, glibc's cache of thread stacks (40 MiB of
 *     address space, the pages the threads touched), the kernel's approximate RSS counters
 *     (per-CPU batches); 233 bytes per thread over 18,000 threads.
 *   sheaves_slack(): per cache, what one CPU slot (main and spare) and one node's barn (full and
 *     empty lists) may keep beyond the first checkpoint's state; a per-thread sheaf leak adds
 *     thousands.
 *   RAW_MARGIN 64 MiB + 1 MiB per CPU: without a trim, dirty free units stay held until
 *     purge_ms has passed or 64 MiB of them have piled up (§10: a time-based purge, so the raw
 *     figure depends on timing), and each CPU may stash 1 MiB of runs.
 *
 * Independent of speed and load: the criteria count threads, objects and bytes; no time limit
 * decides anything. The scenario runs in a child watched by tests/sa_watch.h: a hang is no
 * progress (a thread joined) for 60 s, or a thread waiting on a mutex whose owner has exited.
 * The seconds argument (argv[1] or SA_STRESS_SECONDS) only lets the long run go on past
 * REQUIRED threads. Built with -DCHURN_LEAK_BYTES=64 (every thread leaks one block) it fails.
 */
#include "sa_test.h"
#include "sa_watch.h"
#include "sheaf/pcs_inline.h"

#include <stdatomic.h>
#include <time.h>

#define WAVE	      4
#define OPS	      300
#define HANDOFF	      6
#define LIVE	      32
#define FIRST	      2000
#define REQUIRED      20000
#define MAX_THREADS   200000
#define HELD_MARGIN   (1ul << 20)
#define RSS_MARGIN    (4ul << 20)
#define RAW_MARGIN(n) ((64ul << 20) + (size_t)(n) * (1ul << 20))
#define NCACHE	      2
#define EXCH_MAX      (WAVE * HANDOFF * 4)
#ifndef CHURN_LEAK_BYTES
#define CHURN_LEAK_BYTES 0 /* -D64: every thread leaks one block (tests the test) */
#endif

static double seconds = 5;
static struct sa_watch *W;
static struct sa_cache *caches[NCACHE];
static const size_t cache_size[NCACHE] = {96, 5000};

/* ------------------------------------------------------------------ blocks ------------------ */
struct blk {
	void *p;
	size_t size;
	uint64_t stamp;
	int cache; /* -1: malloc family */
};

static void stamp_blk(struct blk *b)
{
	unsigned char *c = b->p;
	size_t n = b->size < 64 ? b->size : 64;
	for (size_t i = 0; i < n; i++)
		c[i] = (unsigned char)(b->stamp + i);
	if (b->size >= 72)
		for (size_t i = b->size - 8; i < b->size; i++)
			c[i] = (unsigned char)(b->stamp ^ i);
}

static int check_blk(const struct blk *b)
{
	const unsigned char *c = b->p;
	size_t n = b->size < 64 ? b->size : 64;
	for (size_t i = 0; i < n; i++)
		if (c[i] != (unsigned char)(b->stamp + i))
			return 0;
	if (b->size >= 72)
		for (size_t i = b->size - 8; i < b->size; i++)
			if (c[i] != (unsigned char)(b->stamp ^ i))
				return 0;
	return 1;
}

static void release_blk(struct blk *b, const char *who)
{
	if (!check_blk(b))
		watch_fail(W, "%s: block %p of %zu bytes (cache %d) corrupted while live", who,
			   b->p, b->size, b->cache);
	if (b->cache >= 0)
		sa_cache_free(caches[b->cache], b->p);
	else
		sa_free(b->p);
	b->p = NULL;
}

/* ------------------------------------------------------------------ exchange ---------------- */
static pthread_mutex_t exch_lock = PTHREAD_MUTEX_INITIALIZER;
static struct blk exch[EXCH_MAX];
static int exch_n;

static uint64_t rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static size_t pick_size(uint64_t *x, int *cache)
{
	unsigned r = (unsigned)(rnd(x) % 1000);
	*cache = -1;
	if (r < 600)
		return 1 + rnd(x) % 1024;
	if (r < 850)
		return 1025 + rnd(x) % (32768 - 1024);
	if (r < 960) {
		*cache = (int)(rnd(x) % NCACHE);
		return cache_size[*cache];
	}
	if (r < 999)
		return 32769 + rnd(x) % ((1u << 20) - 32768);
	return (2u << 20) + 1 + rnd(x) % (4u << 20); /* huge: its own mapping */
}

struct churn {
	pthread_t t;
	pid_t tid;
	uint64_t seed;
};

static void *churn_thread(void *arg)
{
	struct churn *a = arg;
	a->tid = watch_thread_start(W);
	uint64_t x = a->seed, seq = 0;
	struct blk live[LIVE];
	memset(live, 0, sizeof(live));

	/* free what an earlier wave left */
	struct blk got[HANDOFF];
	int ng = 0;
	pthread_mutex_lock(&exch_lock);
	while (ng < HANDOFF && exch_n)
		got[ng++] = exch[--exch_n];
	pthread_mutex_unlock(&exch_lock);
	for (int i = 0; i < ng; i++)
		release_blk(&got[i], "handed-off block");

	for (int i = 0; i < OPS; i++) {
		struct blk *b = &live[rnd(&x) % LIVE];
		if (b->p)
			release_blk(b, "own block");
		int cache;
		size_t size = pick_size(&x, &cache);
		unsigned how = (unsigned)(rnd(&x) % 16);
		if (cache >= 0)
			b->p = sa_cache_alloc(caches[cache], 0);
		else if (how == 0 && size <= 4096)
			b->p = sa_calloc(1, size);
		else
			b->p = sa_malloc(size);
		if (!b->p) {
			watch_fail(W, "allocation of %zu bytes (cache %d) failed", size, cache);
			continue;
		}
		b->size = size;
		b->cache = cache;
		b->stamp = ((uint64_t)a->tid << 32) ^ ++seq;
		stamp_blk(b);
		if (how == 1 && cache < 0 && size <= 65536) { /* realloc: contents kept */
			size_t ns = size > 64 ? size / 2 + rnd(&x) % size : 64 + rnd(&x) % 4096;
			size_t keep = size < ns ? size : ns;
			size_t k = keep < 64 ? keep : 64;
			void *q = sa_realloc(b->p, ns);
			if (!q) {
				watch_fail(W, "realloc %zu -> %zu failed", size, ns);
				continue;
			}
			for (size_t j = 0; j < k; j++)
				if (((unsigned char *)q)[j] != (unsigned char)(b->stamp + j)) {
					watch_fail(W, "realloc %zu -> %zu lost the contents", size,
						   ns);
					break;
				}
			b->p = q;
			b->size = ns;
			stamp_blk(b);
		}
	}
	if (CHURN_LEAK_BYTES)
		*(volatile char *)sa_malloc(CHURN_LEAK_BYTES) = 1;
	/* leave some for a later wave; free the rest */
	int left = 0;
	for (int i = 0; i < LIVE; i++) {
		if (!live[i].p)
			continue;
		if (left < HANDOFF) {
			pthread_mutex_lock(&exch_lock);
			if (exch_n < EXCH_MAX) {
				exch[exch_n++] = live[i];
				live[i].p = NULL;
				left++;
			}
			pthread_mutex_unlock(&exch_lock);
		}
		if (live[i].p)
			release_blk(&live[i], "own block at exit");
	}
	return NULL;
}

/* ------------------------------------------------------------------ measuring --------------- */
struct meas {
	long threads;
	size_t held_raw, rss_raw, held, rss, in_use, huge;
	uint64_t sheaves;
};

static size_t rss_bytes(void)
{
	char buf[128];
	unsigned long size = 0, res = 0;
	if (watch_read_file("/proc/self/statm", buf, sizeof(buf)) > 0)
		sscanf(buf, "%lu %lu", &size, &res);
	return res * (size_t)sysconf(_SC_PAGESIZE);
}

static void measure(struct meas *m, long threads)
{
	/* nothing of the churn stays live: free what the last wave left */
	pthread_mutex_lock(&exch_lock);
	while (exch_n)
		release_blk(&exch[--exch_n], "handed-off block at a checkpoint");
	pthread_mutex_unlock(&exch_lock);
	m->threads = threads;
	m->held_raw = sa_memory_held();
	m->rss_raw = rss_bytes();
	sa_trim();
	m->held = sa_memory_held();
	m->rss = rss_bytes();
	struct sa_malloc_totals t;
	sa_malloc_totals(&t);
	m->in_use = t.in_use;
	m->huge = t.huge + t.huge_cached;
	m->sheaves = 0;
	pthread_mutex_lock(&sa_caches_lock);
	for (struct sa_cache *c = sa_caches; c; c = c->next) {
		struct sa_cache_stats s;
		if (sa_cache_stats(c, &s) == 0)
			m->sheaves += s.sheaf_new - s.sheaf_freed;
	}
	pthread_mutex_unlock(&sa_caches_lock);
	printf("churn: after %6ld threads: held %7zu KiB (raw %7zu KiB), RSS %7zu KiB (raw %7zu "
	       "KiB), in use %zu B, huge %zu B, sheaves alive %llu\n",
	       threads, m->held >> 10, m->held_raw >> 10, m->rss >> 10, m->rss_raw >> 10, m->in_use,
	       m->huge, (unsigned long long)m->sheaves);
	fflush(stdout);
}

static uint64_t sheaves_slack(void)
{
	uint64_t n = 0;
	pthread_mutex_lock(&sa_caches_lock);
	for (struct sa_cache *c = sa_caches; c; c = c->next)
		n += 2 + (uint64_t)sa_opt.barn_max_full + sa_opt.barn_max_empty;
	pthread_mutex_unlock(&sa_caches_lock);
	return n;
}

static void compare(const struct meas *m0, const struct meas *m)
{
	if (m->in_use || m0->in_use)
		watch_fail(W,
			   "after %ld threads %zu bytes are still in use with nothing live "
			   "(after %ld: %zu)",
			   m->threads, m->in_use, m0->threads, m0->in_use);
	if (m->huge)
		watch_fail(W, "after %ld threads %zu bytes of huge mappings are left after a trim",
			   m->threads, m->huge);
	uint64_t slack = sheaves_slack();
	if (m->sheaves > m0->sheaves + slack)
		watch_fail(W,
			   "sheaves alive grew with the threads: %llu after %ld, %llu after %ld "
			   "(slack %llu)",
			   (unsigned long long)m0->sheaves, m0->threads,
			   (unsigned long long)m->sheaves, m->threads, (unsigned long long)slack);
	if (m->held > m0->held + HELD_MARGIN)
		watch_fail(W,
			   "held after a trim grew with the threads: %zu KiB after %ld, %zu KiB "
			   "after %ld (margin %lu KiB)",
			   m0->held >> 10, m0->threads, m->held >> 10, m->threads,
			   HELD_MARGIN >> 10);
	if (!SA_TEST_SANITIZER && m->rss > m0->rss + RSS_MARGIN)
		watch_fail(W,
			   "RSS after a trim grew with the threads: %zu KiB after %ld, %zu KiB "
			   "after %ld (margin %lu KiB)",
			   m0->rss >> 10, m0->threads, m->rss >> 10, m->threads, RSS_MARGIN >> 10);
	size_t raw = RAW_MARGIN(sa_nr_cpus);
	if (m->held_raw > m0->held_raw + raw)
		watch_fail(W,
			   "held (untrimmed) grew with the threads: %zu KiB after %ld, %zu KiB "
			   "after %ld (margin %zu KiB)",
			   m0->held_raw >> 10, m0->threads, m->held_raw >> 10, m->threads,
			   raw >> 10);
}

/* ------------------------------------------------------------------ the scenario ------------ */
static int churn_main(struct sa_watch *w, void *arg)
{
	(void)arg;
	W = w;
	for (int i = 0; i < NCACHE; i++) {
		char name[32];
		snprintf(name, sizeof(name), "churn-%zu", cache_size[i]);
		caches[i] = sa_cache_create(name, cache_size[i], NULL);
		if (!caches[i])
			return 2;
	}
	printf("churn: per-CPU mode %s%s, %d CPU slot(s), %d node(s), waves of %d threads of %d "
	       "operations\n",
	       sa_percpu_mode(), sa_pcs_mode == SA_PCS_RSEQ_OWN ? " (own registration)" : "",
	       sa_nr_cpus, sa_numa_nodes(), WAVE, OPS);
	double t0 = watch_now();
	struct meas first, m;
	long next = FIRST, n = 0;
	uint64_t seed = 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
	int checkpoints = 0;
	for (;;) {
		struct churn t[WAVE];
		for (int i = 0; i < WAVE; i++) {
			t[i].seed = rnd(&seed) | 1;
			t[i].tid = 0;
			int e = pthread_create(&t[i].t, NULL, churn_thread, &t[i]);
			if (e) {
				watch_fail(w, "pthread_create after %ld threads: %s", n,
					   strerror(e));
				return 3;
			}
		}
		for (int i = 0; i < WAVE; i++) {
			pthread_join(t[i].t, NULL);
			watch_thread_joined(w, t[i].tid);
		}
		n += WAVE;
		watch_moved(w);
		if (n < next)
			continue;
		watch_step(w, "checkpoint after %ld threads", n);
		if (!checkpoints++) {
			measure(&first, n);
			next = REQUIRED;
		} else {
			measure(&m, n);
			compare(&first, &m);
			next += REQUIRED;
		}
		watch_step(w, "churn after %ld threads", n);
		if (n >= REQUIRED && (watch_now() - t0 >= seconds || next > MAX_THREADS))
			break;
	}
	printf("churn: %ld threads in %.1f s, %d failure(s)\n", n, watch_now() - t0,
	       atomic_load(&w->failures));
	return atomic_load(&w->failures) ? 1 : 0;
}

static void test_thread_churn(void **state)
{
	(void)state;
	struct sa_watch *w = watch_new();
	assert_non_null(w);
	int rc = watch_run(w, "churn_threads", churn_main, NULL);
	if (rc)
		print_error("churn_threads: %s\n", w->note[0] ? w->note : "see above");
	watch_free(w);
	assert_int_equal(rc, 0);
}

int main(int argc, char **argv)
{
	seconds = stress_seconds(argc, argv);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_thread_churn),
	};
	return cmocka_run_group_tests_name("churn_threads", tests, NULL, NULL);
}
