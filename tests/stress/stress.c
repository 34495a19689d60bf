/*
 * tests/stress/stress.c — many threads, forced migrations, cross-thread frees, concurrent shrink.
 *
 * Workers (more than CPUs) loop over random operations on several caches (16, 64, 200, 4096 bytes,
 * one with a constructor, one aligned to 256, one with 4-object sheaves): alloc, alloc_node,
 * SA_ZERO alloc, free, sa_free, bulk alloc, bulk free, prefill + sheaf_alloc (+ refill) + return,
 * and hand objects to each other through a mutex-protected exchange so that frees are
 * cross-thread. Every few operations a worker moves itself to another CPU with
 * sched_setaffinity. A background thread calls sa_cache_shrink (the remote stop + fence path in
 * rseq mode, the slot locks in fallback mode) and prints stats to /dev/null.
 *
 * Invariants:
 *   - no object is handed out twice while live: a global set of live addresses (sharded hash,
 *     one mutex per shard); an address is removed before it is freed;
 *   - every object is aligned to its cache's alignment, of its cache (sa_slab_of()->cache), at an
 *     object boundary, with sa_object_node() >= 0;
 *   - contents intact: a per-allocation stamp and pattern, checked before every free;
 *     constructed state (ctor cache) kept across free/alloc; SA_ZERO objects zeroed;
 *   - a prefilled sheaf of n objects serves n allocations;
 *   - at a midway checkpoint (all threads parked) and at the end, per cache:
 *       allocs - frees == live objects, objects_in_use + objects_cached == objects out of slabs;
 *   - at the end, after freeing everything and sa_cache_shrink: objects_in_use == 0,
 *     objects_cached == 0, slabs == 0.
 *
 * Duration: argv[1] or SA_STRESS_SECONDS (default 5) seconds; threads: SA_STRESS_THREADS
 * (default 8).
 */
#include "sa_test.h"

#include <signal.h>
#include <stdatomic.h>
#include <time.h>

#define CTOR_MAGIC  0xC7C7C7C7C7C7C7C7ull
#define MAX_HELD    1024
#define EXCH_MAX    4096
#define NSHARD	    256
#define SHARD_SLOTS 1024 /* per shard; live objects stay far below NSHARD * SHARD_SLOTS / 2 */

/* ------------------------------------------------------------------ caches ------------------ */
struct tcache {
	const char *name;
	size_t size, align;
	unsigned capacity;
	int ctor;
	struct sa_cache *c;
	_Atomic long live; /* registered and not yet unregistered */
};

static void ctor(void *obj)
{
	*(uint64_t *)obj = CTOR_MAGIC;
}

static struct tcache caches[] = {
	{"stress-16", 16, 0, 0, 0, NULL, 0},	  {"stress-64", 64, 0, 0, 0, NULL, 0},
	{"stress-200", 200, 0, 0, 0, NULL, 0},	  {"stress-4096", 4096, 0, 0, 0, NULL, 0},
	{"stress-ctor-48", 48, 0, 0, 1, NULL, 0}, {"stress-align-256", 100, 256, 0, 0, NULL, 0},
	{"stress-64-cap4", 64, 0, 4, 0, NULL, 0},
};
#define NCACHE ((int)(sizeof(caches) / sizeof(caches[0])))

/* ------------------------------------------------------------------ failures ---------------- */
static atomic_int failures;

__attribute__((format(printf, 1, 2))) static void stress_fail(const char *fmt, ...)
{
	int n = atomic_fetch_add(&failures, 1);
	if (n >= 20)
		return;
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "STRESS FAILURE: %s\n", buf);
}

/* ------------------------------------------------------------------ live set ---------------- */
struct shard {
	pthread_mutex_t lock;
	unsigned count;
	uintptr_t slot[SHARD_SLOTS]; /* 0 = empty */
} __attribute__((aligned(64)));

static struct shard shards[NSHARD];

static inline uint64_t mix(uintptr_t a)
{
	uint64_t x = (uint64_t)a;
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

/* Insert; returns 0 if the address was already live (handed out twice). */
static int live_insert(void *p)
{
	uintptr_t a = (uintptr_t)p;
	uint64_t h = mix(a);
	struct shard *s = &shards[h % NSHARD];
	unsigned i = (unsigned)(h / NSHARD) % SHARD_SLOTS;
	int ok = 1;
	pthread_mutex_lock(&s->lock);
	if (s->count >= SHARD_SLOTS * 3 / 4) {
		pthread_mutex_unlock(&s->lock);
		stress_fail("live set shard full (test bug)");
		return 1;
	}
	for (;; i = (i + 1) % SHARD_SLOTS) {
		if (s->slot[i] == 0) {
			s->slot[i] = a;
			s->count++;
			break;
		}
		if (s->slot[i] == a) {
			ok = 0;
			break;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return ok;
}

/* Remove (backward-shift deletion); returns 0 if the address was not live. */
static int live_remove(void *p)
{
	uintptr_t a = (uintptr_t)p;
	uint64_t h = mix(a);
	struct shard *s = &shards[h % NSHARD];
	unsigned i = (unsigned)(h / NSHARD) % SHARD_SLOTS;
	int found = 0;
	pthread_mutex_lock(&s->lock);
	for (;; i = (i + 1) % SHARD_SLOTS) {
		if (s->slot[i] == 0)
			break;
		if (s->slot[i] == a) {
			found = 1;
			break;
		}
	}
	if (found) {
		s->count--;
		unsigned hole = i;
		for (unsigned j = (i + 1) % SHARD_SLOTS; s->slot[j]; j = (j + 1) % SHARD_SLOTS) {
			unsigned home = (unsigned)(mix(s->slot[j]) / NSHARD) % SHARD_SLOTS;
			/* can slot j move to the hole? yes if home is not in (hole, j] cyclically */
			int between =
				hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
			if (!between) {
				s->slot[hole] = s->slot[j];
				hole = j;
			}
		}
		s->slot[hole] = 0;
	}
	pthread_mutex_unlock(&s->lock);
	return found;
}

/* ------------------------------------------------------------------ objects ------------------ */
struct held {
	void *p;
	uint64_t stamp;
	int ci;
};

static size_t first_word(const struct tcache *tc)
{
	return tc->ctor ? 1 : 0;
}

static void stamp_object(const struct tcache *tc, void *p, uint64_t stamp)
{
	uint64_t *w = p;
	size_t nw = tc->size / 8;
	for (size_t i = first_word(tc); i < nw; i++)
		w[i] = stamp ^ (i * 0x9E3779B97F4A7C15ull);
	for (size_t i = nw * 8; i < tc->size; i++)
		((unsigned char *)p)[i] = (unsigned char)(stamp + i);
}

static int check_stamp(const struct tcache *tc, const void *p, uint64_t stamp)
{
	const uint64_t *w = p;
	size_t nw = tc->size / 8;
	if (tc->ctor && w[0] != CTOR_MAGIC)
		return 0;
	for (size_t i = first_word(tc); i < nw; i++)
		if (w[i] != (stamp ^ (i * 0x9E3779B97F4A7C15ull)))
			return 0;
	for (size_t i = nw * 8; i < tc->size; i++)
		if (((const unsigned char *)p)[i] != (unsigned char)(stamp + i))
			return 0;
	return 1;
}

/* Checks on a freshly allocated object; registers it as live. */
static int accept_object(int ci, void *p, sa_flags_t flags, const char *how)
{
	struct tcache *tc = &caches[ci];
	if (!p) {
		stress_fail("%s: %s returned NULL", tc->name, how);
		return 0;
	}
	size_t align = tc->align ? tc->align : 8;
	if ((uintptr_t)p % align)
		stress_fail("%s: %s: %p not aligned to %zu", tc->name, how, p, align);
	struct sa_slab *s = sa_slab_of(p);
	if (!s || s->cache != tc->c || !s->head) {
		stress_fail("%s: %s: %p is not an object of this cache (slab %p cache %p)",
			    tc->name, how, p, (void *)s, s ? (void *)s->cache : NULL);
		return 0;
	}
	size_t off = (size_t)((char *)p - sa_slab_base(s->head));
	if (off % tc->c->stride || off / tc->c->stride >= s->head->nobjs)
		stress_fail("%s: %s: %p is not at an object boundary", tc->name, how, p);
	int node = sa_object_node(p);
	if (node < 0 || node >= sa_numa_nodes())
		stress_fail("%s: %s: %p has node %d", tc->name, how, p, node);
	if (tc->ctor && *(uint64_t *)p != CTOR_MAGIC)
		stress_fail("%s: %s: %p lost its constructed state", tc->name, how, p);
	if ((flags & SA_ZERO) && !tc->ctor) {
		const unsigned char *b = p;
		for (size_t i = 0; i < tc->size; i++)
			if (b[i]) {
				stress_fail("%s: %s: SA_ZERO object %p has byte %zu = %#x",
					    tc->name, how, p, i, b[i]);
				break;
			}
	}
	if (!live_insert(p)) {
		stress_fail("%s: %s: object %p handed out twice (already live)", tc->name, how, p);
		return 0;
	}
	atomic_fetch_add(&tc->live, 1);
	return 1;
}

/* Checks an object about to be freed; unregisters it. */
static void release_object(const struct held *h)
{
	struct tcache *tc = &caches[h->ci];
	if (!check_stamp(tc, h->p, h->stamp))
		stress_fail("%s: object %p corrupted while live (stamp %#llx, first word %#llx)",
			    tc->name, h->p, (unsigned long long)h->stamp,
			    (unsigned long long)*(uint64_t *)h->p);
	if (!live_remove(h->p))
		stress_fail("%s: object %p freed but not live", tc->name, h->p);
	atomic_fetch_sub(&tc->live, 1);
}

/* ------------------------------------------------------------------ exchange ---------------- */
static pthread_mutex_t exch_lock = PTHREAD_MUTEX_INITIALIZER;
static struct held exch[EXCH_MAX];
static size_t exch_n;

/* ------------------------------------------------------------------ control ----------------- */
static atomic_int stop;
static atomic_int pause_req;
static pthread_barrier_t park_barrier;
static cpu_set_t all_cpus;
static int ncpus;
static int nthreads = 8;
static double seconds = 5;

static void park(void)
{
	pthread_barrier_wait(&park_barrier); /* everyone parked: main checks */
	pthread_barrier_wait(&park_barrier); /* main done */
}

struct worker {
	int id;
	int pinned; /* the one CPU this thread may run on, or -1 */
	uint64_t rng;
	uint64_t seq;
	size_t n;
	struct held h[MAX_HELD];
	uint64_t ops, migrations;
};

static uint64_t rnd(struct worker *w)
{
	uint64_t x = w->rng;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	w->rng = x;
	return x;
}

static unsigned rndn(struct worker *w, unsigned n)
{
	return (unsigned)(rnd(w) % n);
}

static void keep(struct worker *w, int ci, void *p)
{
	uint64_t stamp = ((uint64_t)(w->id + 1) << 48) ^ ++w->seq;
	stamp_object(&caches[ci], p, stamp);
	w->h[w->n++] = (struct held){p, stamp, ci};
}

static void free_held(struct worker *w, size_t i)
{
	struct held h = w->h[i];
	w->h[i] = w->h[--w->n];
	release_object(&h);
	if (rndn(w, 2))
		sa_cache_free(caches[h.ci].c, h.p);
	else
		sa_free(h.p);
}

static void migrate(struct worker *w)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	int cpu = -1;
	if (rndn(w, 4) == 0) {
		set = all_cpus;
	} else {
		int k = (int)rndn(w, (unsigned)ncpus);
		for (int i = 0; i < CPU_SETSIZE; i++)
			if (CPU_ISSET(i, &all_cpus) && k-- == 0) {
				CPU_SET(i, &set);
				cpu = i;
				break;
			}
	}
	if (sched_setaffinity(0, sizeof(set), &set) == 0) {
		w->migrations++;
		w->pinned = ncpus == 1 ? first_allowed_cpu() : cpu;
	}
}

/*
 * The node an allocation made now must come from: the pinned CPU's node (the thread cannot run
 * anywhere else, so every section and slow path ran there), or -1 when not pinned.
 */
static int expected_node(const struct worker *w)
{
	if (w->pinned < 0 || sa_numa_nodes() < 2)
		return -1;
	return sa_topo_cpu_node(w->pinned);
}

static void check_node(int ci, const void *p, int want, const char *how)
{
	if (want >= 0 && p && sa_object_node(p) != want)
		stress_fail("%s: %s on a CPU of node %d returned %p of node %d", caches[ci].name,
			    how, want, p, sa_object_node(p));
}

static void op_sheaf(struct worker *w, int ci)
{
	struct tcache *tc = &caches[ci];
	unsigned cap = sa_cache_sheaf_capacity(tc->c);
	unsigned want = 1 + rndn(w, 2 * cap + 2);
	int node_at_prefill = expected_node(w), sheaf_node = -1;
	struct sa_sheaf *s = sa_sheaf_prefill(tc->c, 0, want);
	if (!s) {
		stress_fail("%s: prefill of %u failed", tc->name, want);
		return;
	}
	if (sa_sheaf_size(s) < want)
		stress_fail("%s: prefill of %u holds only %u", tc->name, want, sa_sheaf_size(s));
	unsigned take = want;
	for (unsigned i = 0; i < take; i++) {
		if (rndn(w, 16) == 0)
			migrate(w); /* the guarantee holds wherever we run */
		sa_flags_t f = rndn(w, 4) == 0 && !tc->ctor ? SA_ZERO : 0;
		void *p = sa_sheaf_alloc(tc->c, f | SA_NOWAIT, s);
		if (!p) {
			stress_fail("%s: sheaf_alloc %u of %u failed", tc->name, i + 1, want);
			break;
		}
		/* a sheaf holds objects of one node: the node of the CPU it was prefilled on */
		check_node(ci, p, node_at_prefill, "sheaf_alloc");
		if (sheaf_node < 0)
			sheaf_node = sa_object_node(p);
		else
			check_node(ci, p, sheaf_node, "sheaf_alloc (sheaf of mixed nodes)");
		if (!accept_object(ci, p, f, "sheaf_alloc"))
			continue;
		if (w->n < MAX_HELD && rndn(w, 2))
			keep(w, ci, p);
		else {
			struct held h = {p, 0, ci};
			stamp_object(tc, p, 0);
			release_object(&h);
			sa_cache_free(tc->c, p);
		}
	}
	if (rndn(w, 3) == 0) {
		unsigned more = 1 + rndn(w, 3 * cap);
		struct sa_sheaf *before = s;
		int node_now = expected_node(w);
		if (sa_sheaf_refill(tc->c, 0, &s, more) != 0)
			stress_fail("%s: refill to %u failed", tc->name, more);
		else if (sa_sheaf_size(s) < more)
			stress_fail("%s: refill to %u holds %u", tc->name, more, sa_sheaf_size(s));
		unsigned t2 = rndn(w, more + 1);
		for (unsigned i = 0; i < t2 && w->n < MAX_HELD; i++) {
			void *p = sa_sheaf_alloc(tc->c, SA_NOWAIT, s);
			if (!p) {
				stress_fail("%s: sheaf_alloc after refill failed", tc->name);
				break;
			}
			if (s == before)
				check_node(ci, p, sheaf_node,
					   "sheaf_alloc after refill (same sheaf)");
			else
				check_node(ci, p, node_now, "sheaf_alloc after refill (new sheaf)");
			if (accept_object(ci, p, 0, "sheaf_alloc after refill"))
				keep(w, ci, p);
		}
	}
	sa_sheaf_return(tc->c, 0, s);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	while (!atomic_load(&stop)) {
		if (atomic_load(&pause_req)) {
			park();
			continue;
		}
		w->ops++;
		if ((w->ops & 31) == 0)
			migrate(w);
		int ci = (int)rndn(w, NCACHE);
		struct tcache *tc = &caches[ci];
		unsigned r = rndn(w, 100);
		if (r < 28) {
			if (w->n >= MAX_HELD) {
				free_held(w, rndn(w, (unsigned)w->n));
				continue;
			}
			sa_flags_t f = 0;
			void *p;
			const char *how = "alloc";
			if (rndn(w, 5) == 0 && !tc->ctor)
				f = SA_ZERO;
			if (rndn(w, 6) == 0) {
				int node = (int)rndn(w, (unsigned)sa_numa_nodes() + 1) - 1;
				int want = node >= 0 ? node : expected_node(w);
				p = sa_cache_alloc_node(tc->c, f, node);
				how = "alloc_node";
				if (want >= 0 && p && sa_object_node(p) != want)
					stress_fail("%s: sa_cache_alloc_node(node %d) returned %p "
						    "of node %d "
						    "(thread %s CPU %d, now on CPU %d)",
						    tc->name, node, p, sa_object_node(p),
						    w->pinned >= 0 ? "pinned to"
								   : "not pinned, last",
						    w->pinned, sched_getcpu());
			} else {
				p = sa_cache_alloc(tc->c, f);
				check_node(ci, p, expected_node(w), how);
			}
			if (accept_object(ci, p, f, how))
				keep(w, ci, p);
		} else if (r < 52) {
			if (w->n)
				free_held(w, rndn(w, (unsigned)w->n));
		} else if (r < 59) {
			void *objs[48];
			size_t k = 1 + rndn(w, 48);
			if (w->n + k > MAX_HELD)
				continue;
			size_t got = sa_cache_alloc_bulk(tc->c, 0, k, objs);
			if (got != k) {
				stress_fail("%s: bulk alloc of %zu gave %zu", tc->name, k, got);
				for (size_t i = 0; i < got; i++)
					sa_cache_free(tc->c, objs[i]);
				continue;
			}
			for (size_t i = 0; i < k; i++)
				check_node(ci, objs[i], expected_node(w), "alloc_bulk");
			for (size_t i = 0; i < k; i++)
				if (accept_object(ci, objs[i], 0, "alloc_bulk"))
					keep(w, ci, objs[i]);
		} else if (r < 66) {
			void *objs[48];
			size_t k = 0;
			for (size_t i = 0; i < w->n && k < 48;) {
				if (w->h[i].ci == ci && rndn(w, 2)) {
					struct held h = w->h[i];
					w->h[i] = w->h[--w->n];
					release_object(&h);
					objs[k++] = h.p;
				} else {
					i++;
				}
			}
			sa_cache_free_bulk(tc->c, k, objs);
		} else if (r < 73) {
			op_sheaf(w, ci);
		} else if (r < 83) {
			/* hand objects to other threads */
			pthread_mutex_lock(&exch_lock);
			for (int k = (int)rndn(w, 16); k > 0 && w->n && exch_n < EXCH_MAX; k--) {
				size_t i = rndn(w, (unsigned)w->n);
				exch[exch_n++] = w->h[i];
				w->h[i] = w->h[--w->n];
			}
			pthread_mutex_unlock(&exch_lock);
		} else if (r < 97) {
			/* take objects another thread allocated; they will be freed here */
			pthread_mutex_lock(&exch_lock);
			for (int k = (int)rndn(w, 16); k > 0 && exch_n && w->n < MAX_HELD; k--) {
				size_t i = rndn(w, (unsigned)exch_n);
				w->h[w->n++] = exch[i];
				exch[i] = exch[--exch_n];
			}
			pthread_mutex_unlock(&exch_lock);
		} else {
			sched_yield();
		}
	}
	while (w->n)
		free_held(w, w->n - 1);
	return NULL;
}

static void *shrinker_main(void *arg)
{
	(void)arg;
	uint64_t x = 0x1234567;
	int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
	while (!atomic_load(&stop)) {
		if (atomic_load(&pause_req)) {
			park();
			continue;
		}
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		struct timespec ts = {0, (long)(1 + x % 8) * 1000000L};
		nanosleep(&ts, NULL);
		if (x % 16 == 0) {
			for (int i = 0; i < NCACHE; i++)
				if (sa_cache_shrink(caches[i].c) != 0)
					stress_fail("%s: shrink failed", caches[i].name);
		} else if (sa_cache_shrink(caches[x % NCACHE].c) != 0) {
			stress_fail("shrink failed");
		}
		if (x % 32 == 1 && devnull >= 0)
			sa_stats_print(devnull);
		struct sa_cache_stats st;
		if (sa_cache_stats(caches[(x >> 8) % NCACHE].c, &st) != 0)
			stress_fail("stats failed");
	}
	if (devnull >= 0)
		close(devnull);
	return NULL;
}

/* With every thread parked: counters against the live set. */
static void check_quiescent(const char *when, int expect_empty)
{
	for (int i = 0; i < NCACHE; i++) {
		struct tcache *tc = &caches[i];
		struct sa_cache_stats s;
		if (sa_cache_stats(tc->c, &s) != 0) {
			stress_fail("%s: stats failed", tc->name);
			continue;
		}
		long live = atomic_load(&tc->live);
		uint64_t out = s.alloc_fast + s.alloc_slow + s.sheaf_alloc_objects;
		uint64_t in = s.free_fast + s.free_slow;
		uint64_t slab_out = sa_slab_inuse_racy(tc->c);
		if (out - in != (uint64_t)live || s.objects_in_use != (uint64_t)live)
			stress_fail("%s (%s): allocs %llu - frees %llu = %lld, objects_in_use "
				    "%llu, but %ld "
				    "objects are live",
				    tc->name, when, (unsigned long long)out, (unsigned long long)in,
				    (long long)(out - in), (unsigned long long)s.objects_in_use,
				    live);
		if (s.objects_in_use + s.objects_cached != slab_out)
			stress_fail("%s (%s): objects_in_use %llu + objects_cached %llu != %llu "
				    "out of slabs",
				    tc->name, when, (unsigned long long)s.objects_in_use,
				    (unsigned long long)s.objects_cached,
				    (unsigned long long)slab_out);
		if (s.refill_objects + s.alloc_slow - s.flush_objects - s.free_slow != slab_out)
			stress_fail("%s (%s): refill_objects %llu + alloc_slow %llu - "
				    "flush_objects %llu - "
				    "free_slow %llu != %llu out of slabs",
				    tc->name, when, (unsigned long long)s.refill_objects,
				    (unsigned long long)s.alloc_slow,
				    (unsigned long long)s.flush_objects,
				    (unsigned long long)s.free_slow, (unsigned long long)slab_out);
		if (s.slabs_allocated - s.slabs_freed != s.slabs)
			stress_fail("%s (%s): slabs %llu != allocated %llu - freed %llu", tc->name,
				    when, (unsigned long long)s.slabs,
				    (unsigned long long)s.slabs_allocated,
				    (unsigned long long)s.slabs_freed);
		if (expect_empty && (s.objects_in_use || s.objects_cached || s.slabs || slab_out))
			stress_fail("%s (%s): after freeing everything and shrinking: "
				    "objects_in_use %llu, "
				    "objects_cached %llu, slabs %llu, out of slabs %llu",
				    tc->name, when, (unsigned long long)s.objects_in_use,
				    (unsigned long long)s.objects_cached,
				    (unsigned long long)s.slabs, (unsigned long long)slab_out);
	}
}

static void test_stress(void **state)
{
	(void)state;
	ncpus = allowed_cpus(&all_cpus);
	assert_true(ncpus >= 1);
	for (int i = 0; i < NSHARD; i++)
		pthread_mutex_init(&shards[i].lock, NULL);
	for (int i = 0; i < NCACHE; i++) {
		struct sa_cache_args a = {.align = caches[i].align,
					  .sheaf_capacity = caches[i].capacity,
					  .ctor = caches[i].ctor ? ctor : NULL};
		caches[i].c = sa_cache_create(caches[i].name, caches[i].size, &a);
		assert_non_null(caches[i].c);
	}
	print_message("stress: %d threads, %d CPUs, %.1f s, per-CPU mode %s, %d node(s)\n",
		      nthreads, ncpus, seconds, sa_percpu_mode(), sa_numa_nodes());

	struct worker *ws = calloc((size_t)nthreads, sizeof(*ws));
	pthread_t *tid = calloc((size_t)nthreads, sizeof(*tid));
	pthread_t shr;
	assert_non_null(ws);
	assert_non_null(tid);
	assert_int_equal(pthread_barrier_init(&park_barrier, NULL, (unsigned)nthreads + 2), 0);
	for (int i = 0; i < nthreads; i++) {
		ws[i].id = i;
		ws[i].pinned = -1;
		ws[i].rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) ^ (uint64_t)time(NULL);
		assert_int_equal(pthread_create(&tid[i], NULL, worker_main, &ws[i]), 0);
	}
	assert_int_equal(pthread_create(&shr, NULL, shrinker_main, NULL), 0);

	/* halfway: park everyone and check the counters against the live set */
	struct timespec half = {(time_t)(seconds / 2),
				(long)((seconds / 2 - (time_t)(seconds / 2)) * 1e9)};
	nanosleep(&half, NULL);
	atomic_store(&pause_req, 1);
	pthread_barrier_wait(&park_barrier);
	pthread_mutex_lock(&exch_lock);
	size_t in_exchange = exch_n;
	pthread_mutex_unlock(&exch_lock);
	check_quiescent("checkpoint", 0);
	atomic_store(&pause_req, 0);
	pthread_barrier_wait(&park_barrier);
	nanosleep(&half, NULL);

	atomic_store(&stop, 1);
	uint64_t ops = 0, migr = 0;
	for (int i = 0; i < nthreads; i++) {
		pthread_join(tid[i], NULL);
		ops += ws[i].ops;
		migr += ws[i].migrations;
	}
	pthread_join(shr, NULL);
	/* whatever is left in the exchange is freed here, by yet another thread */
	while (exch_n) {
		struct held h = exch[--exch_n];
		release_object(&h);
		sa_free(h.p);
	}
	check_quiescent("all freed", 0);
	for (int i = 0; i < NCACHE; i++)
		assert_int_equal(sa_cache_shrink(caches[i].c), 0);
	check_quiescent("all freed and shrunk", 1);
	unsigned live_left = 0;
	for (int i = 0; i < NSHARD; i++)
		live_left += shards[i].count;
	if (live_left)
		stress_fail("%u addresses still in the live set", live_left);

	uint64_t fences = 0, remote = 0;
	for (int i = 0; i < NCACHE; i++) {
		struct sa_cache_stats s = get_stats(caches[i].c);
		fences += s.remote_fences;
		remote += s.remote_free;
	}
	print_message(
		"stress: %llu operations, %llu migrations, %zu objects in the exchange at the "
		"checkpoint, %llu remote fences, %llu remote frees\n",
		(unsigned long long)ops, (unsigned long long)migr, in_exchange,
		(unsigned long long)fences, (unsigned long long)remote);
	for (int i = 0; i < NCACHE; i++)
		sa_cache_destroy(caches[i].c);
	pthread_barrier_destroy(&park_barrier);
	free(ws);
	free(tid);
	assert_int_equal(atomic_load(&failures), 0);
}

int main(int argc, char **argv)
{
	seconds = stress_seconds(argc, argv);
	const char *e = getenv("SA_STRESS_THREADS");
	if (e && atoi(e) > 0)
		nthreads = atoi(e);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stress),
	};
	return cmocka_run_group_tests_name("stress", tests, NULL, NULL);
}
