/*
 * tests/stress/signals.c — signals that land inside rseq sections and handlers that allocate
 * change nothing.
 *
 * A target thread T allocates and frees in a tight loop, from cache A (64-byte objects,
 * 2-object sheaves) and from the malloc family (small classes, some large runs), TBURST frees
 * in a row and then TBURST allocations, so that it is in its slow paths (barn and slab locks)
 * often, not only in its rseq sections. A sender thread S sends T SIGUSR1 with pthread_kill as
 * fast as T takes them (it sends, sleeps on a semaphore the handler posts, spins a random
 * while, sends again), so signals land everywhere in T's code. The handler counts the
 * delivery, notes whether it landed inside an rseq section (the interrupted instruction
 * pointer in the signal frame is an abort handler: the RSEQ_SIG bytes precede it,
 * sheaf/arch/x86_64/rseq_pcs.h), and frees HBURST objects, then allocates HBURST (more than a
 * main and a spare sheaf hold: the handler's own operations take the slow paths too). Three
 * variants:
 *   own cache      the handler uses its own cache B, inside an SA_NOWAIT scope: what T's
 *                  sections and slow paths do is interrupted and redone; the locks they share
 *                  with the handler's slow paths (metadata, segments) are only tried there;
 *   same, NOWAIT   in the rseq modes the handler uses the same cache A and the malloc family
 *                  (docs/design.md §3: rseq sections are async-signal-safe), inside an
 *                  SA_NOWAIT scope (docs/scopes.md §2: the scope for "a signal handler", every
 *                  lock only tried); in the fallback mode its own cache B (§3: the fallback
 *                  slot spinlock is not async-signal-safe for a cache whose operation the
 *                  handler may interrupt);
 *   same, default  as the previous, with default flags: skipped unless SA_SIGNALS_SAME=1. It
 *                  deadlocks within a few thousand signals (the handler waits for a barn or
 *                  metadata lock its own thread holds): a documented limit, as with any
 *                  malloc (docs/robustness.md §4). Default flags on its own cache B deadlock
 *                  the same way on the shared metadata lock (seen with 2-object sheaves).
 * (At the commit this was written against, "same, NOWAIT" deadlocked too: the handler's own
 * operations only tried the barn lock, but the end of its scope ran the frees it had put off
 * with sa_deferred_run, which took the lock for real. The end of a NOWAIT scope now tries
 * locks only, alloc/defer.c sa_deferred_run_try.)
 *
 * Checks: no object handed out twice (every live object carries an owner tag, main or handler,
 * and a serial: an allocation that returns an object whose tag says live is a duplicate, and a
 * free that finds another owner's tag is one found later); contents intact (a pattern from the
 * serial, checked before every free); at a quiescent point (S and T joined, sa_trim run so that
 * deferred frees are done), for A and B: alloc_fast + alloc_slow + sheaf_alloc_objects -
 * free_fast - free_slow == objects_in_use == the live objects we hold, and every malloc class
 * holds exactly the live blocks of its size; after freeing everything and shrinking, 0.
 *
 * Bounded by counts, not time: T runs until OPS_GOAL operations and SIG_GOAL deliveries (and,
 * in the rseq modes, INSECT_GOAL deliveries inside a section, or OPS_CAP operations; none at
 * all fails the test: it would not have tested what it claims. Sanitizer builds are exempt:
 * their runtimes hold asynchronous signals until a safe point). A handler that deadlocks on a
 * lock its own thread holds is reported at once by tests/sa_watch.h (T is declared the only
 * thread that takes locks, watch_solo: if it sleeps on a mutex, it waits for itself), anything
 * else that stops T as no progress for 60 s. The seconds
 * argument is accepted for tests/run.sh and ignored: the goals are counts.
 */
#include "sa_test.h"
#include "sa_watch.h"
#include "sheaf/pcs_inline.h"

#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <ucontext.h>

#define OPS_GOAL    1000000
#define SIG_GOAL    100000
#define INSECT_GOAL 1000
#define OPS_CAP	    50000000
#define RING_T	    64
#define RING_H	    16
#define HBURST	    6 /* objects a handler frees, then allocates */
#define TBURST	    8 /* objects the thread frees, then allocates */
#define MAX_ABORTS  64

#ifndef SIGNALS_INJECT
#define SIGNALS_INJECT \
	0 /* tests the test: the handler 1 loses an object, 2 scribbles, 3 gets a live object */
#endif

#define TAG_MAIN 0xA11CE5EDF00D0001ull
#define TAG_HAND 0xA11CE5EDF00D0002ull
#define TAG_DEAD 0xDEADBEEFDEAD0003ull

enum {
	C_OPS,
	C_SENT,
	C_DELIV,
	C_INSECT,
	C_H_ALLOC,
	C_H_NULL,
	C_DUP,
	C_CORRUPT,
	C_ABORT_SITES,
};

enum variant {
	V_OWN,	  /* the handler uses its own cache B, inside an SA_NOWAIT scope */
	V_NOWAIT, /* the same cache and classes as T (fallback: B), inside an SA_NOWAIT scope */
	V_PLAIN,  /* the same cache and classes as T (fallback: B), default flags */
};

static struct sa_watch *W;
static struct sa_cache *cA, *cB;
static enum variant variant;
static int fallback;
static atomic_int stop, ready;
static sem_t delivered; /* posted by the handler: the sender may send the next one */
static pthread_t target;

struct obj {
	uint64_t *p;
	size_t size; /* bytes we may touch */
	uint64_t serial;
	int kind; /* 0 cache A, 1 cache B, 2 malloc */
};

static uintptr_t abort_ips[MAX_ABORTS];

/* ------------------------------------------------------------------ tags and patterns ------- */
static size_t span(const struct obj *o)
{
	return o->size < 160 ? o->size : 160;
}

/* Claims a fresh object for owner; 0 if the object is live already (handed out twice). */
static int claim(struct obj *o, uint64_t owner)
{
	uint64_t was = o->p[0];
	if (was == TAG_MAIN || was == TAG_HAND) {
		atomic_fetch_add(&W->ctr[C_DUP], 1);
		return 0;
	}
	o->p[0] = owner;
	o->p[1] = o->serial;
	unsigned char *c = (unsigned char *)o->p;
	for (size_t i = 16; i < span(o); i++)
		c[i] = (unsigned char)(o->serial * 7 + i);
	return 1;
}

/* Checks an object before it is freed and marks it dead; 0 if it was not intact. */
static int release(struct obj *o, uint64_t owner)
{
	int ok = o->p[0] == owner && o->p[1] == o->serial;
	const unsigned char *c = (const unsigned char *)o->p;
	for (size_t i = 16; ok && i < span(o); i++)
		ok = c[i] == (unsigned char)(o->serial * 7 + i);
	if (!ok)
		atomic_fetch_add(&W->ctr[C_CORRUPT], 1);
	o->p[0] = TAG_DEAD;
	return ok;
}

static void free_obj(struct obj *o)
{
	if (o->kind == 0)
		sa_cache_free(cA, o->p);
	else if (o->kind == 1)
		sa_cache_free(cB, o->p);
	else
		sa_free(o->p);
	o->p = NULL;
}

/* ------------------------------------------------------------------ the handler ------------- */
static struct obj ring_t[RING_T], ring_h[RING_H]; /* T's live objects, the handler's */
static uint64_t serial_h;

/* The interrupted instruction is an rseq abort handler: the kernel moved the IP there because
 * the signal came inside a section (sheaf/arch/x86_64/rseq_pcs.h: 0f b9 3d, then RSEQ_SIG). */
static int at_abort_handler(uintptr_t ip)
{
	extern char __executable_start[], etext[];
	if (ip < (uintptr_t)__executable_start + 8 || ip >= (uintptr_t)etext)
		return 0;
	const unsigned char *b = (const unsigned char *)ip;
	uint32_t sig;
	memcpy(&sig, b - 4, 4);
	return sig == SA_RSEQ_SIG && b[-7] == 0x0f && b[-6] == 0xb9 && b[-5] == 0x3d;
}

static void note_abort_site(uintptr_t ip)
{
	for (int i = 0; i < MAX_ABORTS; i++) {
		if (abort_ips[i] == ip)
			return;
		if (!abort_ips[i]) {
			abort_ips[i] = ip;
			atomic_fetch_add(&W->ctr[C_ABORT_SITES], 1);
			return;
		}
	}
}

static void handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	int saved = errno;
	uintptr_t ip = (uintptr_t)((ucontext_t *)uc)->uc_mcontext.gregs[REG_RIP];
	if (at_abort_handler(ip)) {
		atomic_fetch_add_explicit(&W->ctr[C_INSECT], 1, memory_order_relaxed);
		note_abort_site(ip);
	}
	unsigned cookie = variant != V_PLAIN ? sa_memalloc_nowait_save() : SA_SCOPE_INVALID;
	uint64_t n = ++serial_h;
	/* HBURST frees in a row, then HBURST allocations: more than a main and a spare sheaf of
	 * 2 objects hold, so every handler takes the cache's slow paths (barn, slabs) both ways */
	unsigned base = (unsigned)(n * HBURST);
	for (unsigned k = 0; k < HBURST; k++) {
		struct obj *o = &ring_h[(base + k) % RING_H];
		if (o->p) {
			release(o, TAG_HAND);
			free_obj(o);
		}
	}
	for (unsigned k = 0; k < HBURST; k++) {
		struct obj *o = &ring_h[(base + k) % RING_H];
		/* rseq modes: the same cache and classes as the interrupted thread; fallback: B */
		int kind = fallback || variant == V_OWN ? 1 : k + 1 < HBURST ? 0 : 2;
		size_t size = kind == 0 ? 64 : kind == 1 ? 48 : 16 + (n * 37 + k) % 1000;
		void *p = kind == 0   ? sa_cache_alloc(cA, 0)
			  : kind == 1 ? sa_cache_alloc(cB, 0)
				      : sa_malloc(size);
		if (!p) { /* allowed under NOWAIT */
			atomic_fetch_add_explicit(&W->ctr[C_H_NULL], 1, memory_order_relaxed);
			continue;
		}
		*o = (struct obj){p, size, n << 3 | k, kind};
		if (!claim(o, TAG_HAND))
			o->p = NULL; /* someone else's: leave it alone */
		atomic_fetch_add_explicit(&W->ctr[C_H_ALLOC], 1, memory_order_relaxed);
	}
	if (SIGNALS_INJECT == 1 && n % 1000 == 0)
		(void)sa_cache_alloc(cB, 0); /* lost: the counts must not add up */
	if (SIGNALS_INJECT == 2 && n == 5000 && ring_t[0].p)
		((unsigned char *)ring_t[0].p)[20] ^= 1; /* the pattern must not hold */
	if (SIGNALS_INJECT == 3 && n == 5000 && ring_t[0].p) {
		struct obj twice = ring_t[0]; /* as if the allocator handed it out again */
		claim(&twice, TAG_HAND);
	}
	sa_memalloc_nowait_restore(cookie);
	atomic_fetch_add_explicit(&W->ctr[C_DELIV], 1, memory_order_release);
	sem_post(&delivered); /* async-signal-safe */
	errno = saved;
}

/* ------------------------------------------------------------------ the threads ------------- */
static pid_t target_tid, sender_tid;

static uint64_t rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static int goals_met(uint64_t ops)
{
	if (ops < OPS_GOAL || atomic_load(&W->ctr[C_DELIV]) < SIG_GOAL)
		return 0;
	if (fallback || SA_TEST_SANITIZER || ops >= OPS_CAP)
		return 1;
	return atomic_load(&W->ctr[C_INSECT]) >= INSECT_GOAL;
}

static void *target_main(void *arg)
{
	(void)arg;
	target_tid = watch_thread_start(W);
	watch_solo(W, target_tid); /* the sender and the main thread take no lock meanwhile */
	/* what a NOWAIT scope needs is made before the first signal (the reserve, rseq) */
	sa_memalloc_nowait_restore(sa_memalloc_nowait_save());
	atomic_store(&ready, 1);
	uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)target_tid, serial = 0, ops = 0;
	for (int done = 0; !done;) {
		/* TBURST frees in a row, then TBURST allocations: past what the main and the spare
		 * sheaf hold, so the thread is in its slow paths (barn, slab locks) often */
		unsigned base = (unsigned)(rnd(&x) % RING_T);
		for (unsigned k = 0; k < TBURST; k++) {
			struct obj *o = &ring_t[(base + k) % RING_T];
			if (o->p) {
				release(o, TAG_MAIN);
				free_obj(o);
			}
		}
		for (unsigned k = 0; k < TBURST && !done; k++) {
			struct obj *o = &ring_t[(base + k) % RING_T];
			unsigned r = (unsigned)(rnd(&x) % 100);
			size_t size;
			void *p;
			int kind;
			if (r < 75) {
				kind = 0;
				size = 64;
				p = sa_cache_alloc(cA, 0);
			} else {
				kind = 2;
				size = r < 98 ? 16 + rnd(&x) % 2048 : 32769 + rnd(&x) % 200000;
				p = sa_malloc(size);
			}
			if (!p) {
				watch_fail(W, "target: allocation of %zu bytes (kind %d) failed",
					   size, kind);
				done = 1;
				break;
			}
			*o = (struct obj){p, size, ++serial, kind};
			if (!claim(o, TAG_MAIN))
				o->p = NULL;
			if ((++ops & 4095) == 0) {
				atomic_store_explicit(&W->ctr[C_OPS], ops, memory_order_relaxed);
				watch_moved(W);
				done = goals_met(ops);
			}
		}
	}
	atomic_store(&W->ctr[C_OPS], ops);
	watch_solo(W, 0);
	atomic_store(&stop, 1);
	sem_post(&delivered);
	return NULL;
}

static void *sender_main(void *arg)
{
	(void)arg;
	sender_tid = watch_thread_start(W);
	uint64_t x = 0x1234567 ^ (uint64_t)sender_tid;
	while (!atomic_load(&ready))
		sched_yield();
	while (!atomic_load(&stop)) {
		for (unsigned k = (unsigned)(rnd(&x) % 64); k; k--)
			__builtin_ia32_pause();
		if (pthread_kill(target, SIGUSR1) != 0)
			break;
		atomic_fetch_add_explicit(&W->ctr[C_SENT], 1, memory_order_relaxed);
		/* until the handler has run (T posts once more when it stops) */
		while (sem_wait(&delivered) != 0 && errno == EINTR)
			;
	}
	return NULL;
}

/* ------------------------------------------------------------------ quiescent checks -------- */
static void check_cache(struct sa_cache *c, uint64_t live, const char *when)
{
	struct sa_cache_stats s;
	if (sa_cache_stats(c, &s) != 0) {
		watch_fail(W, "%s: stats of %s failed", when, sa_cache_name(c));
		return;
	}
	uint64_t out = s.alloc_fast + s.alloc_slow + s.sheaf_alloc_objects;
	uint64_t in = s.free_fast + s.free_slow;
	if (out - in != live || s.objects_in_use != live)
		watch_fail(W,
			   "%s: cache %s: allocs %llu - frees %llu = %lld, objects_in_use %llu, "
			   "but %llu objects are live",
			   when, sa_cache_name(c), (unsigned long long)out, (unsigned long long)in,
			   (long long)(out - in), (unsigned long long)s.objects_in_use,
			   (unsigned long long)live);
	uint64_t slab_out = sa_slab_inuse_racy(c);
	if (s.objects_in_use + s.objects_cached != slab_out)
		watch_fail(W, "%s: cache %s: in use %llu + cached %llu != %llu out of slabs", when,
			   sa_cache_name(c), (unsigned long long)s.objects_in_use,
			   (unsigned long long)s.objects_cached, (unsigned long long)slab_out);
}

static void check_quiescent(const char *when)
{
	uint64_t liveA = 0, liveB = 0;
	for (int i = 0; i < RING_T; i++)
		liveA += ring_t[i].p && ring_t[i].kind == 0;
	for (int i = 0; i < RING_H; i++) {
		liveA += ring_h[i].p && ring_h[i].kind == 0;
		liveB += ring_h[i].p && ring_h[i].kind == 1;
	}
	check_cache(cA, liveA, when);
	check_cache(cB, liveB, when);
	/* every malloc class holds exactly the live small blocks of its size */
	pthread_mutex_lock(&sa_caches_lock);
	for (struct sa_cache *c = sa_caches; c; c = c->next) {
		if (strncmp(sa_cache_name(c), "malloc-", 7) != 0)
			continue;
		size_t sz = sa_cache_object_size(c);
		uint64_t live = 0;
		for (int i = 0; i < RING_T + RING_H; i++) {
			struct obj *o = i < RING_T ? &ring_t[i] : &ring_h[i - RING_T];
			live += o->p && o->kind == 2 && o->size <= 32768 &&
				sa_malloc_usable_size(o->p) == sz;
		}
		struct sa_cache_stats s;
		if (sa_cache_stats(c, &s) == 0 &&
		    (s.objects_in_use != live || s.alloc_fast + s.alloc_slow +
								 s.sheaf_alloc_objects -
								 s.free_fast - s.free_slow !=
							 live))
			watch_fail(
				W,
				"%s: class %s: objects_in_use %llu, allocs - frees %lld, %llu live",
				when, sa_cache_name(c), (unsigned long long)s.objects_in_use,
				(long long)(s.alloc_fast + s.alloc_slow + s.sheaf_alloc_objects -
					    s.free_fast - s.free_slow),
				(unsigned long long)live);
	}
	pthread_mutex_unlock(&sa_caches_lock);
}

static int scenario(struct sa_watch *w, void *arg)
{
	W = w;
	variant = (enum variant)(intptr_t)arg;
	struct sa_cache_args a = {.sheaf_capacity = 2};
	cA = sa_cache_create("signals-A", 64, &a);
	cB = sa_cache_create("signals-B", 48, &a);
	if (!cA || !cB)
		return 2;
	fallback = sa_pcs_mode == SA_PCS_FALLBACK;
	watch_name_caches(w);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) || sem_init(&delivered, 0, 0))
		return 3;
	printf("signals: per-CPU mode %s%s, handler %s, allocating from %s\n", sa_percpu_mode(),
	       sa_pcs_mode == SA_PCS_RSEQ_OWN ? " (own registration)" : "",
	       variant != V_PLAIN ? "inside an SA_NOWAIT scope" : "with default flags",
	       fallback || variant == V_OWN ? "its own cache B"
					    : "cache A and the malloc family, as the thread");
	fflush(stdout);
	watch_step(w, "signals at a thread that allocates");
	pthread_t snd;
	if (pthread_create(&target, NULL, target_main, NULL) ||
	    pthread_create(&snd, NULL, sender_main, NULL))
		return 4;
	pthread_join(target, NULL);
	pthread_join(snd, NULL);
	watch_thread_joined(w, target_tid);
	watch_thread_joined(w, sender_tid);
	watch_step(w, "quiescent checks");
	sa_trim(); /* deferred frees (NOWAIT) are done now */
	check_quiescent("quiescent point");
	for (int i = 0; i < RING_T; i++)
		if (ring_t[i].p) {
			release(&ring_t[i], TAG_MAIN);
			free_obj(&ring_t[i]);
		}
	for (int i = 0; i < RING_H; i++)
		if (ring_h[i].p) {
			release(&ring_h[i], TAG_HAND);
			free_obj(&ring_h[i]);
		}
	sa_trim();
	check_quiescent("all freed");
	if (sa_cache_shrink(cA) || sa_cache_shrink(cB))
		watch_fail(w, "shrink failed");
	uint64_t ops = atomic_load(&w->ctr[C_OPS]), deliv = atomic_load(&w->ctr[C_DELIV]),
		 insect = atomic_load(&w->ctr[C_INSECT]);
	printf("signals: %llu operations, %llu signals sent, %llu delivered, %llu inside rseq "
	       "sections (%llu abort sites); handler: %llu allocations, %llu NULL (NOWAIT)\n",
	       (unsigned long long)ops, (unsigned long long)atomic_load(&w->ctr[C_SENT]),
	       (unsigned long long)deliv, (unsigned long long)insect,
	       (unsigned long long)atomic_load(&w->ctr[C_ABORT_SITES]),
	       (unsigned long long)atomic_load(&w->ctr[C_H_ALLOC]),
	       (unsigned long long)atomic_load(&w->ctr[C_H_NULL]));
	fflush(stdout);
	if (atomic_load(&w->ctr[C_DUP]))
		watch_fail(w, "%llu objects handed out twice",
			   (unsigned long long)atomic_load(&w->ctr[C_DUP]));
	if (atomic_load(&w->ctr[C_CORRUPT]))
		watch_fail(w, "%llu objects corrupted while live",
			   (unsigned long long)atomic_load(&w->ctr[C_CORRUPT]));
	if (ops < OPS_GOAL || deliv < SIG_GOAL)
		watch_fail(w, "stopped before the goals: %llu operations, %llu signals",
			   (unsigned long long)ops, (unsigned long long)deliv);
	if (!fallback && !SA_TEST_SANITIZER && insect == 0)
		watch_fail(w,
			   "no signal landed inside an rseq section in %llu operations: the "
			   "test has not tested that",
			   (unsigned long long)ops);
	return atomic_load(&w->failures) ? 1 : 0;
}

static void run(enum variant v)
{
	static const char *const what[] = {"signals (handler on its own cache)",
					   "signals (handler on the same cache, NOWAIT scope)",
					   "signals (handler on the same cache, default flags)"};
	struct sa_watch *w = watch_new();
	assert_non_null(w);
	int rc = watch_run(w, what[v], scenario, (void *)(intptr_t)v);
	if (rc)
		print_error("signals: %s\n", w->note[0] ? w->note : "see above");
	watch_free(w);
	assert_int_equal(rc, 0);
}

static void test_signals_handler_own_cache(void **state)
{
	(void)state;
	run(V_OWN);
}

static void test_signals_handler_nowait_scope(void **state)
{
	(void)state;
	run(V_NOWAIT);
}

static void test_signals_handler_default_flags(void **state)
{
	(void)state;
	if (!getenv("SA_SIGNALS_SAME")) {
		print_message("a handler with default flags that interrupts its thread's slow path "
			      "deadlocks, as with any malloc (docs/robustness.md §4); "
			      "SA_SIGNALS_SAME=1 runs it\n");
		skip();
	}
	if (expect_fallback_mode())
		skip(); /* the handler uses its own cache B there: test_signals_handler_own_cache */
	run(V_PLAIN);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_signals_handler_own_cache),
		cmocka_unit_test(test_signals_handler_nowait_scope),
		cmocka_unit_test(test_signals_handler_default_flags),
	};
	return cmocka_run_group_tests_name("signals", tests, NULL, NULL);
}
