/*
 * tests/unit/rcu_common.h — the readers-and-writers scenario of sa_free_rcu, shared by
 * tests/unit/rcu.c, tests/integration/rcu_numa.c and tests/stress/rcu_stress.c.
 *
 * What it checks: no object freed with sa_free_rcu is reused (or unmapped, or purged) while a
 * reader that saw it is still inside its read-side section; for SA_CACHE_TYPESAFE_RCU caches,
 * a reader may see a reused object but always one of the right type, and never slab memory that
 * left the cache.
 *
 * Shape: an array of RCU-protected pointers per kind of object (a 64-byte cache, a 1 KiB cache,
 * sa_malloc small sizes, large 100 KiB blocks, huge 3 MiB blocks, a typesafe 64-byte cache).
 * Writer threads (never registered with liburcu) allocate an object, stamp it at once (its own
 * address, a generation unique to this allocation, a check word; big objects get copies of the
 * stamp in their middle and at their end), publish it in a random slot with an exchange and
 * free the object they replaced with sa_free_rcu. Reader threads (registered with
 * urcu_memb) open a read-side section, dereference slots, check each object's stamp, remember
 * (address, generation), then dwell: yield and check every remembered object again, several
 * times, before they leave the section. A freed-and-reused object would carry its new owner's
 * generation (stamped right after the allocation); a purged one would read as zeros; an
 * unmapped one would fault (a SIGSEGV handler names that). Every such observation is a
 * violation; the count must be 0.
 * Typesafe kind: the constructor stamps a type tag and the object's address; users never
 * write those two words; writers free half the objects at once with sa_cache_free (typesafe
 * caches may reuse objects at once) and half with sa_free_rcu; a shrinker thread calls
 * sa_cache_shrink and sa_trim in a loop and churns a "foreign" 64-byte cache whose objects get
 * another tag: slab memory released during a reader's section would show up there.
 *
 * Pointers are published and read with __atomic exchange (release) and load (acquire): the same
 * semantics as liburcu's rcu_xchg_pointer / rcu_dereference, whose inline-asm forms
 * ThreadSanitizer cannot see.
 *
 * Nothing depends on speed: writers make a fixed number of replacements (or run a given number
 * of seconds in the stress test, where the duration is the whole point), readers run until the
 * writers are done and must have completed at least one section with objects in it.
 *
 * RCU_TEST_SABOTAGE=1 (cc -DRCU_TEST_SABOTAGE=1, by hand only): writers free with sa_free
 * instead of sa_free_rcu and the typesafe cache loses its flag; the checks must then report
 * violations (that is how the tests were seen to fail for the right reason).
 *
 * Makefile's TEST_HDRS lists only the headers directly in tests/: after editing this header,
 * rebuild its three users (touch their .c files).
 */
#ifndef RCU_COMMON_H
#define RCU_COMMON_H

#include "sa_test.h"

#include <signal.h>
#include <stdatomic.h>
#include <time.h>
#include <urcu/urcu-memb.h>

/*
 * ThreadSanitizer cannot see a grace period: liburcu's memb flavor orders a reader's section
 * before the end of synchronize_rcu with membarrier and with loads and stores inside liburcu,
 * which is not instrumented. The readers here say what a grace period guarantees instead: just
 * before leaving a section, a reader releases every object it read there (the library acquires
 * an object when its grace period has passed, in alloc/rcu.c free_sheaf, and its own
 * annotations carry that on to the next owner; it also acquires every object of a typesafe
 * slab when the slab's delayed release runs, in alloc/rcu.c, since its memory may then go to
 * any other owner, malloc included), and a global sync object that constructors acquire (a
 * typesafe slab's memory reused by another constructor-bearing cache). This orders only sections that had ended: a reader still inside its section
 * when its object is reused has not released it yet, so TSan still reports that (and the
 * violation counters below count it).
 */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char rk_gp_sync;
#define RK_TSAN_READ_DONE(obj) __tsan_release((void *)(obj))
#define RK_TSAN_SECTION_END()  __tsan_release(&rk_gp_sync)
#define RK_TSAN_SLAB_REUSE()   __tsan_acquire(&rk_gp_sync)
#else
#define RK_TSAN_READ_DONE(obj) ((void)(obj))
#define RK_TSAN_SECTION_END()  ((void)0)
#define RK_TSAN_SLAB_REUSE()   ((void)0)
#endif

/* alloc/malloc.c: the malloc class caches (hidden; the tests link the static library) */
extern struct sa_cache *sa_class_cache[];

#ifndef RCU_TEST_SABOTAGE
#define RCU_TEST_SABOTAGE 0
#endif

enum rk_kind { RK_C64, RK_C1K, RK_SMALL, RK_LARGE, RK_HUGE, RK_TS, RK_NKINDS };
#define RK_BIT(k) (1u << (k))
#define RK_ALL	  ((1u << RK_NKINDS) - 1)

static const char *const rk_name[RK_NKINDS] = {"cache 64 B",
					       "cache 1 KiB",
					       "sa_malloc small",
					       "sa_malloc large (100 KiB)",
					       "sa_malloc huge (3 MiB)",
					       "typesafe cache 2 KiB"};
static const unsigned rk_nslots[RK_NKINDS] = {64, 32, 64, 8, 4, 16};
/* a writer replaces an object of kind k every rk_every[k] iterations */
static const unsigned rk_every[RK_NKINDS] = {1, 1, 1, 8, 64, 1};
static const size_t rk_small_sizes[] = {32, 200, 1500, 9000, 30000};

#define RK_LARGE_SIZE	((size_t)100 << 10)
#define RK_HUGE_SIZE	((size_t)3 << 20)
#define RK_TS_SIZE	2048 /* typesafe objects: 32 to a 64 KiB slab, so slabs empty often */
#define RK_TAG_TS	0x7459706553614665ull /* the typesafe cache's type tag */
#define RK_TAG_FOREIGN	0x466f726569676e21ull /* another cache's objects */
#define RK_SEEN_MAX	48
#define RK_DWELL	4
#define RK_SYNC_EVERY	256 /* writers wait for a reader's section this often */
#define RK_SHRINK_EVERY 512 /* and for a round of the shrinker this often */

/* The stamp at the start (and, for objects of 128 B or more, the middle and the end). */
struct rk_stamp {
	uint64_t self; /* the object's address */
	uint64_t gen;  /* unique to one allocation */
	uint64_t size;
	uint64_t check;
};

/* Typesafe objects: tag and self are the constructor's; users write gen and check only. */
struct rk_ts_obj {
	uint64_t tag;
	uint64_t self;
	uint64_t gen;
	uint64_t check;
	uint64_t pad[4];
};

static inline uint64_t rk_check_word(uint64_t self, uint64_t gen, uint64_t size)
{
	return (self * 0x9E3779B97F4A7C15ull) ^ (gen * 0xC2B2AE3D27D4EB4Full) ^ size ^
	       0x5a5a5a5a5a5a5a5aull;
}

static inline void rk_stamp_at(char *p, size_t off, uint64_t self, uint64_t gen, uint64_t size)
{
	struct rk_stamp *s = (struct rk_stamp *)(p + off);
	s->self = self;
	s->gen = gen;
	s->size = size;
	s->check = rk_check_word(self, gen, size);
}

static inline void rk_offsets(size_t size, size_t off[3], int *n)
{
	off[0] = 0;
	*n = 1;
	if (size >= 128) {
		off[1] = (size / 2) & ~(size_t)7;
		off[2] = (size - sizeof(struct rk_stamp)) & ~(size_t)7;
		*n = 3;
	}
}

static inline void rk_stamp(void *obj, size_t size, uint64_t gen)
{
	size_t off[3];
	int n;
	rk_offsets(size, off, &n);
	for (int i = 0; i < n; i++)
		rk_stamp_at(obj, off[i], (uint64_t)(uintptr_t)obj, gen, size);
}

/* 0: the object carries a valid stamp of generation *gen (set if *gen is 0); else what is
 * wrong, as text. */
static inline const char *rk_verify(const void *obj, uint64_t *gen)
{
	const struct rk_stamp *s0 = obj;
	uint64_t self = __atomic_load_n(&s0->self, __ATOMIC_RELAXED);
	uint64_t g = __atomic_load_n(&s0->gen, __ATOMIC_RELAXED);
	uint64_t size = __atomic_load_n(&s0->size, __ATOMIC_RELAXED);
	uint64_t check = __atomic_load_n(&s0->check, __ATOMIC_RELAXED);
	if (self == 0 && g == 0 && check == 0)
		return "the object reads as zeros (purged or unmapped and mapped again)";
	if (self != (uint64_t)(uintptr_t)obj || check != rk_check_word(self, g, size) ||
	    size == 0 || size > RK_HUGE_SIZE)
		return "the stamp is torn or foreign (memory reused by another owner)";
	if (*gen && g != *gen)
		return "the generation changed inside the section (freed and reused)";
	*gen = g;
	size_t off[3];
	int n;
	rk_offsets(size, off, &n);
	for (int i = 1; i < n; i++) {
		const struct rk_stamp *s = (const void *)((const char *)obj + off[i]);
		if (__atomic_load_n(&s->self, __ATOMIC_RELAXED) != self ||
		    __atomic_load_n(&s->gen, __ATOMIC_RELAXED) != g ||
		    __atomic_load_n(&s->check, __ATOMIC_RELAXED) != check)
			return "a copy of the stamp inside the block differs (reused or purged)";
	}
	return NULL;
}

static inline const char *rk_verify_ts(const struct rk_ts_obj *o)
{
	uint64_t tag = __atomic_load_n(&o->tag, __ATOMIC_RELAXED);
	uint64_t self = __atomic_load_n(&o->self, __ATOMIC_RELAXED);
	if (tag == RK_TAG_TS && self == (uint64_t)(uintptr_t)o)
		return NULL;
	if (tag == 0 && self == 0)
		return "typesafe object reads as zeros (slab memory purged during a section)";
	if (tag == RK_TAG_FOREIGN)
		return "typesafe object carries another cache's tag (slab memory left the cache "
		       "during a section)";
	return "typesafe object lost its type tag";
}

static _Atomic long rk_ctor_calls;

static inline void rk_ts_ctor(void *p)
{
	RK_TSAN_SLAB_REUSE(); /* a new slab: its memory may have come back after a grace period */
	struct rk_ts_obj *o = p;
	o->tag = RK_TAG_TS;
	o->self = (uint64_t)(uintptr_t)p;
	o->gen = 0;
	o->check = 0;
	atomic_fetch_add_explicit(&rk_ctor_calls, 1, memory_order_relaxed);
}

static inline void rk_foreign_ctor(void *p)
{
	RK_TSAN_SLAB_REUSE();
	((struct rk_ts_obj *)p)->tag = RK_TAG_FOREIGN;
}

/* ------------------------------------------------------------------ SIGSEGV -------------- */
static void rk_on_segv(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	char buf[160];
	int n = snprintf(buf, sizeof(buf),
			 "rcu test: SIGSEGV at %p: memory a reader held inside its read-side "
			 "section was unmapped\n",
			 si->si_addr);
	if (n > 0) {
		ssize_t w = write(2, buf, (size_t)n);
		(void)w;
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

static inline void rk_install_segv(void)
{
	struct sigaction sa = {.sa_sigaction = rk_on_segv, .sa_flags = SA_SIGINFO};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
}

/* ------------------------------------------------------------------ the scenario ---------- */
struct rk_scenario;

struct rk_thread {
	struct rk_scenario *sc;
	int idx;
	int cpu; /* -1: not pinned */
	pthread_t tid;
	/* results */
	long ops, sections, objects_seen, rounds;
	long failures; /* allocation failures */
};

struct rk_scenario {
	/* configuration */
	unsigned kinds; /* RK_BIT mask */
	int nwriters, nreaders;
	long iters;	    /* per writer; 0: run for seconds */
	double seconds;	    /* stress: writer run time */
	int writer_cpu1[8]; /* CPU + 1 to pin writer i to (synthetic topology tests); 0: not */
	int reader_cpu1[8]; /* the same for readers */
	int shrinker;	    /* a thread calling sa_cache_shrink / sa_trim meanwhile */
	int barrier;	    /* a thread calling sa_rcu_barrier in a loop meanwhile */
	/* state */
	struct sa_cache *c64, *c1k, *ts, *foreign;
	void *_Atomic *slots[RK_NKINDS];
	atomic_int writers_left;
	atomic_int stop;
	_Atomic long sections; /* read-side sections completed, every reader */
	_Atomic long shrinks;  /* rounds of the shrinker */
	_Atomic uint64_t gen;
	_Atomic long violations;
	atomic_flag first_taken;
	char first[320];
	struct rk_thread writers[8], readers[8], shrink_thread, barrier_thread;
};

static inline double rk_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Divisor of the iteration counts under valgrind and the sanitizers (slower, same checks). */
static inline long rk_scale(void)
{
	if (running_on_valgrind())
		return 20;
	return SA_TEST_SANITIZER ? 4 : 1;
}

static inline void rk_violation(struct rk_scenario *sc, int kind, const void *obj, const char *why)
{
	atomic_fetch_add(&sc->violations, 1);
	if (!atomic_flag_test_and_set(&sc->first_taken))
		snprintf(sc->first, sizeof(sc->first), "%s object %p (node %d): %s", rk_name[kind],
			 obj, sa_object_node(obj), why);
}

static inline void *rk_alloc(struct rk_scenario *sc, int kind, uint64_t rnd, size_t *size)
{
	switch (kind) {
	case RK_C64:
		*size = 64;
		return sa_cache_alloc(sc->c64, 0);
	case RK_C1K:
		*size = 1024;
		return sa_cache_alloc(sc->c1k, 0);
	case RK_SMALL:
		*size = rk_small_sizes[rnd % (sizeof(rk_small_sizes) / sizeof(rk_small_sizes[0]))];
		return sa_malloc(*size);
	case RK_LARGE:
		*size = RK_LARGE_SIZE;
		return sa_malloc(*size);
	case RK_HUGE:
		*size = RK_HUGE_SIZE;
		return sa_malloc(*size);
	default:
		*size = RK_TS_SIZE;
		return sa_cache_alloc(sc->ts, 0);
	}
}

static inline void rk_free_old(struct rk_scenario *sc, int kind, void *old, uint64_t rnd)
{
	if (kind == RK_TS && (rnd & 1)) {
		sa_cache_free(sc->ts, old); /* typesafe: reuse at once is allowed */
		return;
	}
#if RCU_TEST_SABOTAGE
	sa_free(old);
#else
	sa_free_rcu(old);
#endif
}

static inline uint64_t rk_rand(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static void *rk_writer(void *p)
{
	struct rk_thread *t = p;
	struct rk_scenario *sc = t->sc;
	if (t->cpu >= 0)
		pin_to_cpu(t->cpu);
	uint64_t x = 0x243F6A8885A308D3ull * (uint64_t)(t->idx + 1);
	double end = sc->iters ? 0 : rk_now() + sc->seconds;
	for (long it = 0; sc->iters ? it < sc->iters : (it % 64 != 0 || rk_now() < end); it++) {
		if (it % RK_SYNC_EVERY == 0) {
			/* the readers must make progress between our replacements, whatever the
			 * load: wait for one more completed section */
			long s0 = atomic_load(&sc->sections);
			while (atomic_load(&sc->sections) == s0 && !atomic_load(&sc->stop))
				sched_yield();
		}
		if (sc->shrinker && it % RK_SHRINK_EVERY == 0) {
			/* and the shrinker too (it takes much longer per round) */
			long r0 = atomic_load(&sc->shrinks);
			while (atomic_load(&sc->shrinks) == r0 && !atomic_load(&sc->stop))
				sched_yield();
		}
		for (int k = 0; k < RK_NKINDS; k++) {
			if (!(sc->kinds & RK_BIT(k)) || it % rk_every[k] != 0)
				continue;
			uint64_t r = rk_rand(&x);
			size_t size;
			void *obj = rk_alloc(sc, k, r >> 8, &size);
			if (!obj) {
				t->failures++;
				continue;
			}
			uint64_t g =
				atomic_fetch_add_explicit(&sc->gen, 1, memory_order_relaxed) + 1;
			if (k == RK_TS) {
				struct rk_ts_obj *o = obj;
				o->gen = g; /* tag and self are the constructor's */
				o->check = rk_check_word((uint64_t)(uintptr_t)o, g, 0);
			} else {
				rk_stamp(obj, size, g);
			}
			void *old = __atomic_exchange_n(&sc->slots[k][r % rk_nslots[k]], obj,
							__ATOMIC_ACQ_REL);
			if (old)
				rk_free_old(sc, k, old, r >> 20);
			t->ops++;
		}
	}
	atomic_fetch_sub(&sc->writers_left, 1);
	return NULL;
}

struct rk_seen {
	const void *obj;
	uint64_t gen;
	int kind;
};

static inline void rk_check_seen(struct rk_scenario *sc, struct rk_seen *s)
{
	const char *why;
	if (s->kind == RK_TS) {
		why = rk_verify_ts(s->obj);
	} else {
		why = rk_verify(s->obj, &s->gen);
	}
	if (why)
		rk_violation(sc, s->kind, s->obj, why);
}

static void *rk_reader(void *p)
{
	struct rk_thread *t = p;
	struct rk_scenario *sc = t->sc;
	if (t->cpu >= 0)
		pin_to_cpu(t->cpu);
	urcu_memb_register_thread();
	uint64_t x = 0x13198A2E03707344ull * (uint64_t)(t->idx + 1);
	struct rk_seen seen[RK_SEEN_MAX];
	/* run until the writers are done, and at least until one section saw objects */
	while (atomic_load(&sc->writers_left) > 0 || t->objects_seen == 0) {
		if (atomic_load(&sc->stop))
			break;
		int n = 0;
		urcu_memb_read_lock();
		long shrinks0 = atomic_load(&sc->shrinks);
		for (int k = 0; k < RK_NKINDS && n < RK_SEEN_MAX; k++) {
			if (!(sc->kinds & RK_BIT(k)))
				continue;
			unsigned start = (unsigned)rk_rand(&x);
			for (unsigned j = 0; j < 8 && n < RK_SEEN_MAX; j++) {
				void *obj =
					__atomic_load_n(&sc->slots[k][(start + j) % rk_nslots[k]],
							__ATOMIC_ACQUIRE);
				if (!obj)
					continue;
				seen[n] = (struct rk_seen){obj, 0, k};
				rk_check_seen(sc, &seen[n]);
				n++;
			}
		}
		/* dwell: let the writers free and reallocate meanwhile, and (with a shrinker)
		 * until two of its rounds ran inside this section; the shrinker never waits for
		 * a grace period, so this cannot deadlock */
		for (int d = 0;
		     d < RK_DWELL || (sc->shrinker && atomic_load(&sc->shrinks) < shrinks0 + 2 &&
				      atomic_load(&sc->writers_left) > 0);
		     d++) {
			sched_yield();
			for (int i = 0; i < n; i++)
				rk_check_seen(sc, &seen[i]);
		}
		for (int i = 0; i < n; i++)
			RK_TSAN_READ_DONE(seen[i].obj);
		RK_TSAN_SECTION_END();
		urcu_memb_read_unlock();
		atomic_fetch_add(&sc->sections, 1);
		t->sections++;
		t->objects_seen += n;
	}
	urcu_memb_unregister_thread();
	return NULL;
}

/* Shrinks and trims while the writers run, and churns the foreign cache (same object size) so
 * that slab memory leaving the typesafe cache too early would be reused with another tag. */
static void *rk_shrinker(void *p)
{
	struct rk_thread *t = p;
	struct rk_scenario *sc = t->sc;
	void *objs[512];
	while (atomic_load(&sc->writers_left) > 0 || t->rounds == 0) {
		if (sc->ts) {
			/* spread the slots' objects over slabs that otherwise hold only free
			 * objects: four slabs' worth allocated, one per slot published, the rest
			 * freed; once the writers replace them, those slabs are empty */
			size_t n = sa_cache_alloc_bulk(sc->ts, 0, 4 * sc->ts->slab_objs, objs);
			size_t step = n / rk_nslots[RK_TS];
			for (unsigned j = 0; step && j < rk_nslots[RK_TS]; j++) {
				struct rk_ts_obj *o = objs[j * step];
				objs[j * step] = NULL;
				uint64_t g = atomic_fetch_add(&sc->gen, 1) + 1;
				o->gen = g;
				o->check = rk_check_word((uint64_t)(uintptr_t)o, g, 0);
				void *old = __atomic_exchange_n(&sc->slots[RK_TS][j], o,
								__ATOMIC_ACQ_REL);
				if (old)
					sa_cache_free(sc->ts, old);
			}
			for (size_t i = 0; i < n; i++)
				if (objs[i])
					sa_cache_free(sc->ts, objs[i]);
			sa_cache_shrink(sc->ts);
		}
		if (sc->c64)
			sa_cache_shrink(sc->c64);
		if (t->rounds % 4 == 0)
			sa_trim();
		if (sc->foreign) {
			size_t n = sa_cache_alloc_bulk(sc->foreign, 0, 512, objs);
			for (size_t i = 0; i < n; i++)
				((struct rk_ts_obj *)objs[i])->self = 0xdeadull;
			sa_cache_free_bulk(sc->foreign, n, objs);
			sa_cache_shrink(sc->foreign);
		}
		t->rounds++;
		atomic_fetch_add(&sc->shrinks, 1);
		sched_yield();
	}
	return NULL;
}

/* sa_rcu_barrier while everything else runs: it must return each time (readers keep entering
 * sections; a grace period only waits for those that had begun). */
static void *rk_barrier_loop(void *p)
{
	struct rk_thread *t = p;
	struct rk_scenario *sc = t->sc;
	/* a cache of its own: what this thread freed with sa_free_rcu before its barrier must be
	 * freed when the barrier returns, whatever the other threads submit meanwhile */
	struct sa_cache *own = sa_cache_create("rcu-barrier-own", 32, NULL);
	void *objs[40];
	while (own && (atomic_load(&sc->writers_left) > 0 || t->rounds == 0)) {
		size_t n = sa_cache_alloc_bulk(own, 0, 1 + (size_t)t->rounds % 40, objs);
		for (size_t i = 0; i < n; i++)
			sa_free_rcu(objs[i]);
		sa_rcu_barrier();
		struct sa_cache_stats s;
		sa_cache_stats(own, &s);
		if (s.rcu_waiting || s.rcu_queued != s.rcu_freed) {
			char why[160];
			snprintf(why, sizeof(why),
				 "sa_rcu_barrier returned with %llu of its caller's sa_free_rcu "
				 "objects not freed (queued %llu, freed %llu)",
				 (unsigned long long)s.rcu_waiting,
				 (unsigned long long)s.rcu_queued, (unsigned long long)s.rcu_freed);
			rk_violation(sc, RK_C64, objs[0], why);
			sa_rcu_barrier(); /* report once per miss, then settle */
		}
		t->rounds++;
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	sa_cache_destroy(own);
	return NULL;
}

static inline void rk_setup(struct rk_scenario *sc)
{
	if (sc->kinds & (RK_BIT(RK_C64)))
		sc->c64 = sa_cache_create("rcu-64", 64, NULL);
	if (sc->kinds & (RK_BIT(RK_C1K)))
		sc->c1k = sa_cache_create("rcu-1k", 1024, NULL);
	if (sc->kinds & RK_BIT(RK_TS)) {
		struct sa_cache_args a = {.ctor = rk_ts_ctor,
					  .flags = RCU_TEST_SABOTAGE ? 0 : SA_CACHE_TYPESAFE_RCU};
		sc->ts = sa_cache_create("rcu-typesafe", RK_TS_SIZE, &a);
		assert_non_null(sc->ts);
		struct sa_cache_args f = {.ctor = rk_foreign_ctor};
		sc->foreign = sa_cache_create("rcu-foreign", RK_TS_SIZE, &f);
		assert_non_null(sc->foreign);
	}
	for (int k = 0; k < RK_NKINDS; k++)
		if (sc->kinds & RK_BIT(k)) {
			sc->slots[k] = calloc(rk_nslots[k], sizeof(void *));
			assert_non_null(sc->slots[k]);
		}
	if (sc->kinds & RK_BIT(RK_C64))
		assert_non_null(sc->c64);
	if (sc->kinds & RK_BIT(RK_C1K))
		assert_non_null(sc->c1k);
	atomic_flag_clear(&sc->first_taken);
}

/* Run writers and readers (and the shrinker) to completion; checks no violation. */
static inline void rk_run(struct rk_scenario *sc)
{
	rk_install_segv();
	atomic_store(&sc->writers_left, sc->nwriters);
	for (int i = 0; i < sc->nreaders; i++) {
		sc->readers[i] =
			(struct rk_thread){.sc = sc, .idx = i, .cpu = sc->reader_cpu1[i] - 1};
		assert_int_equal(
			pthread_create(&sc->readers[i].tid, NULL, rk_reader, &sc->readers[i]), 0);
	}
	if (sc->shrinker) {
		sc->shrink_thread = (struct rk_thread){.sc = sc, .idx = 0, .cpu = -1};
		assert_int_equal(pthread_create(&sc->shrink_thread.tid, NULL, rk_shrinker,
						&sc->shrink_thread),
				 0);
	}
	if (sc->barrier) {
		sc->barrier_thread = (struct rk_thread){.sc = sc, .idx = 0, .cpu = -1};
		assert_int_equal(pthread_create(&sc->barrier_thread.tid, NULL, rk_barrier_loop,
						&sc->barrier_thread),
				 0);
	}
	for (int i = 0; i < sc->nwriters; i++) {
		sc->writers[i] =
			(struct rk_thread){.sc = sc, .idx = i, .cpu = sc->writer_cpu1[i] - 1};
		assert_int_equal(
			pthread_create(&sc->writers[i].tid, NULL, rk_writer, &sc->writers[i]), 0);
	}
	long ops = 0, sections = 0, seen = 0, fails = 0;
	for (int i = 0; i < sc->nwriters; i++) {
		pthread_join(sc->writers[i].tid, NULL);
		ops += sc->writers[i].ops;
		fails += sc->writers[i].failures;
	}
	for (int i = 0; i < sc->nreaders; i++) {
		pthread_join(sc->readers[i].tid, NULL);
		sections += sc->readers[i].sections;
		seen += sc->readers[i].objects_seen;
	}
	if (sc->shrinker)
		pthread_join(sc->shrink_thread.tid, NULL);
	if (sc->barrier)
		pthread_join(sc->barrier_thread.tid, NULL);
	print_message("rcu scenario: %ld replacements, %ld read-side sections, %ld objects "
		      "checked, %ld shrink rounds, %ld barriers, %ld violations (mode %s, %d "
		      "node(s))\n",
		      ops, sections, seen, sc->shrink_thread.rounds, sc->barrier_thread.rounds,
		      atomic_load(&sc->violations), sa_percpu_mode(), sa_numa_nodes());
	if (atomic_load(&sc->violations))
		print_error("first violation: %s\n", sc->first);
	assert_int_equal(fails, 0);
	assert_true(ops > 0);
	assert_true(sections > 0);
	assert_true(seen > 0);
	assert_int_equal(atomic_load(&sc->violations), 0);
}

/* Every slot's object goes through sa_free_rcu too. */
static inline void rk_empty_slots(struct rk_scenario *sc)
{
	for (int k = 0; k < RK_NKINDS; k++) {
		if (!sc->slots[k])
			continue;
		for (unsigned j = 0; j < rk_nslots[k]; j++) {
			void *old = __atomic_exchange_n(&sc->slots[k][j], NULL, __ATOMIC_ACQ_REL);
			if (old)
				sa_free_rcu(old);
		}
	}
}

/* ------------------------------------------------------------------ after the barrier ----- */
struct rk_baseline {
	uint64_t class_in_use[SA_MALLOC_CLASSES];
	size_t huge_blocks;
	size_t in_use; /* sa_malloc_totals: objects of every cache and large blocks, bytes */
};

static inline void rk_baseline_take(struct rk_baseline *b)
{
	struct sa_malloc_totals t;
	sa_malloc_totals(&t);
	for (int i = 0; i < SA_MALLOC_CLASSES; i++)
		b->class_in_use[i] = t.cls[i].in_use;
	b->huge_blocks = t.huge_blocks;
	b->in_use = t.in_use;
}

/* The sa_free_rcu counters of one cache after sa_rcu_barrier: everything queued was freed. */
static inline void rk_assert_rcu_done(struct sa_cache *c)
{
	struct sa_cache_stats s = get_stats(c);
	if (s.rcu_queued != s.rcu_freed || s.rcu_sheaves != s.rcu_callbacks || s.rcu_waiting)
		print_error("cache %s after sa_rcu_barrier: rcu_queued %llu rcu_freed %llu "
			    "rcu_sheaves %llu rcu_callbacks %llu rcu_waiting %llu\n",
			    sa_cache_name(c), (unsigned long long)s.rcu_queued,
			    (unsigned long long)s.rcu_freed, (unsigned long long)s.rcu_sheaves,
			    (unsigned long long)s.rcu_callbacks, (unsigned long long)s.rcu_waiting);
	assert_int_equal(s.rcu_queued, s.rcu_freed);
	assert_int_equal(s.rcu_sheaves, s.rcu_callbacks);
	assert_int_equal(s.rcu_waiting, 0);
	assert_true(s.rcu_callbacks <= s.rcu_queued);
}

/* A test cache after the barrier: nothing in use, counters consistent, and after a shrink (and
 * a barrier for a typesafe cache's delayed slabs) no slab left: every object came back. */
static inline void rk_assert_cache_empty(struct sa_cache *c)
{
	rk_assert_rcu_done(c);
	/* typesafe: the barrier's own frees may have emptied slabs, whose release waits for one
	 * more grace period (as in the kernel, where that is a call_rcu issued by a callback) */
	if (c->flags & SA_CACHE_TYPESAFE_RCU)
		sa_rcu_barrier();
	assert_stats_consistent(c, 0);
	assert_int_equal(sa_cache_shrink(c), 0);
	sa_rcu_barrier();
	struct sa_cache_stats s = get_stats(c);
	if (s.slabs || s.bytes_held || s.slabs_allocated != s.slabs_freed)
		print_error("cache %s after shrink and barrier: slabs %llu bytes_held %llu "
			    "slabs_allocated %llu slabs_freed %llu (an object never came back?)\n",
			    sa_cache_name(c), (unsigned long long)s.slabs,
			    (unsigned long long)s.bytes_held, (unsigned long long)s.slabs_allocated,
			    (unsigned long long)s.slabs_freed);
	assert_int_equal(s.slabs, 0);
	assert_int_equal(s.bytes_held, 0);
	assert_int_equal(s.slabs_allocated, s.slabs_freed);
	assert_stats_consistent(c, 0);
}

/* sa_malloc after the barrier: every class cache and the huge blocks back to the baseline, the
 * rcu counters of every class cache settled (large and huge blocks travel in class 0's). */
static inline void rk_assert_malloc_back(const struct rk_baseline *b)
{
	struct sa_malloc_totals t;
	sa_malloc_totals(&t);
	for (int i = 0; i < SA_MALLOC_CLASSES; i++) {
		if (t.cls[i].in_use != b->class_in_use[i])
			print_error("malloc class %u: %llu objects in use, %llu before\n",
				    t.cls[i].size, (unsigned long long)t.cls[i].in_use,
				    (unsigned long long)b->class_in_use[i]);
		assert_int_equal(t.cls[i].in_use, b->class_in_use[i]);
		if (sa_class_cache[i])
			rk_assert_rcu_done(sa_class_cache[i]);
	}
	if (t.huge_blocks != b->huge_blocks || t.in_use != b->in_use)
		print_error("sa_malloc: %zu huge blocks (%zu before), %zu bytes in use (%zu "
			    "before)\n",
			    t.huge_blocks, b->huge_blocks, t.in_use, b->in_use);
	assert_int_equal(t.huge_blocks, b->huge_blocks);
	assert_int_equal(t.in_use, b->in_use);
}

/* The whole scenario: setup, run, empty the slots, barrier, every check, teardown. */
static inline void rk_scenario_full(struct rk_scenario *sc)
{
	struct rk_baseline b;
	sa_rcu_barrier();
	rk_baseline_take(&b);
	rk_setup(sc);
	long ctor0 = atomic_load(&rk_ctor_calls);
	rk_run(sc);
	rk_empty_slots(sc);
	sa_rcu_barrier();
	if (sc->ts) {
		/* the constructor runs once per slab object, never per allocation */
		struct sa_cache_stats s = get_stats(sc->ts);
		long ctors = atomic_load(&rk_ctor_calls) - ctor0;
		print_message("typesafe cache: %llu allocations, %ld constructor calls, %llu slabs "
			      "of %u objects, %llu slabs freed, %llu slab releases delayed\n",
			      (unsigned long long)stats_out(&s), ctors,
			      (unsigned long long)s.slabs_allocated, sc->ts->slab_objs,
			      (unsigned long long)s.slabs_freed,
			      (unsigned long long)s.rcu_slabs_delayed);
		assert_int_equal((uint64_t)ctors, s.slabs_allocated * sc->ts->slab_objs);
	}
	struct sa_cache *cs[] = {sc->c64, sc->c1k, sc->ts, sc->foreign};
	for (unsigned i = 0; i < sizeof(cs) / sizeof(cs[0]); i++)
		if (cs[i])
			rk_assert_cache_empty(cs[i]);
	rk_assert_malloc_back(&b);
	for (unsigned i = 0; i < sizeof(cs) / sizeof(cs[0]); i++)
		sa_cache_destroy(cs[i]);
	for (int k = 0; k < RK_NKINDS; k++)
		free((void *)sc->slots[k]);
}

#endif
