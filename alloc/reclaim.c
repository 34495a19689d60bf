/*
 * alloc/reclaim.c — giving memory back: the memory limit, reclaim rounds, shrinkers, SA_NOFAIL
 * waits, sa_trim (docs/design.md §11, docs/scopes.md).
 *
 * Owns: held (bytes the allocator holds from the OS: sa_memory_held), the limit, the shrinker
 * registry, reclaim_lock, and the thread's "inside reclaim" mark (sa_in_reclaim).
 *
 * held counts what may be resident: units handed out and dirty free units of segments, a unit
 * per segment for its header, huge mappings live and cached, metadata chunks, the emergency
 * reserve. sa_held_charge adds to it and refuses (undoing the add) when the sum would pass the
 * limit: the page layer charges before it takes clean units or maps a huge block, so the limit
 * is never passed by more than the charges in flight that each fit on their own. Purges,
 * unmappings and frees of huge blocks give bytes back.
 *
 * What can be given back, cheapest first: cached huge mappings (unmapped), per-CPU run stashes
 * (back to their segments), barns and every cache's empty slabs, dirty free units (purged),
 * wholly free segments (unmapped); then the per-CPU sheaves too (a full sa_cache_shrink: one
 * membarrier per cache); then the registered shrinkers that the flags allow (policy.h), whose
 * freed objects the next pass over our own memory turns into free pages.
 *
 * When (alloc/policy.h): not under SA_NOWAIT, not under SA_NORECLAIM, and not inside reclaim
 * itself (sa_in_reclaim: what a shrinker allocates fails or uses the reserve instead of
 * reclaiming again, as the kernel's PF_MEMALLOC; shrinkers also run inside a NORECLAIM scope).
 *
 * Locking: reclaim_lock (rank 0, taken with no other allocator lock held) serializes the
 * passes over our own memory; no user code runs under it. Shrinkers run with no allocator lock
 * held, several threads may run them at once (as in the kernel), so a shrinker that waits for a
 * lock of the program's never waits for an allocator lock behind it. shrinker_lock protects
 * the registry; a shrinker being called has active > 0, and unregistering waits until it is
 * not (except for the calling thread's own round: a shrinker may unregister itself).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "alloc/scope.h"

__thread int sa_in_reclaim __attribute__((tls_model("initial-exec")));
_Atomic uint64_t sa_gstat[SA_NR_GSTATS];

static pthread_mutex_t reclaim_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic size_t held;
static _Atomic size_t limit;

/* ------------------------------------------------------------------ held and the limit ------ */
bool sa_held_charge(size_t bytes)
{
	size_t lim = atomic_load_explicit(&limit, memory_order_relaxed);
	size_t now = atomic_fetch_add_explicit(&held, bytes, memory_order_relaxed) + bytes;
	if (!lim || now <= lim)
		return true;
	atomic_fetch_sub_explicit(&held, bytes, memory_order_relaxed);
	sa_gstat_add(SA_G_LIMIT_HITS, 1);
	return false;
}

void sa_held_add(size_t bytes)
{
	atomic_fetch_add_explicit(&held, bytes, memory_order_relaxed);
}

void sa_held_sub(size_t bytes)
{
	atomic_fetch_sub_explicit(&held, bytes, memory_order_relaxed);
}

SA_API size_t sa_memory_held(void)
{
	sa_ensure_init(); /* the option limit and what start-up maps */
	return atomic_load_explicit(&held, memory_order_relaxed);
}

SA_API int sa_set_limit(size_t bytes)
{
	sa_ensure_init();
	atomic_store(&limit, bytes);
	if (bytes && sa_may_syscall(sa_flags_effective(0)))
		sa_reserve_prepare(); /* counted in held: part of the limit */
	return 0;
}

static bool fits(size_t bytes)
{
	size_t lim = atomic_load(&limit);
	if (bytes == SIZE_MAX)
		return false;
	return !lim || atomic_load(&held) + bytes <= lim;
}

/* ------------------------------------------------------------------ our own memory ---------- */
/*
 * Give back our own free memory, in steps of growing cost, until `need` more bytes fit under
 * the limit (SIZE_MAX: everything):
 *   0. cached huge mappings, and dirty free units purged as far as needed
 *   1. the barns' sheaves and every cache's empty slabs (their units become dirty), purged
 *   2. every per-CPU sheaf too (sa_cache_shrink: a fence per cache), purged; free segments
 *      unmapped
 * A step that frees units and a purge that drops their pages are one round of work: only the
 * pages purged lower held. Returns the bytes held went down by.
 */
static size_t give_back_own(size_t need, int upto_step)
{
	size_t before = atomic_load(&held);
	pthread_mutex_lock(&reclaim_lock);
	sa_malloc_huge_cache_drop();
	for (int step = 0; step <= upto_step && !fits(need); step++) {
		if (step >= 1) {
			pthread_mutex_lock(&sa_caches_lock);
			for (struct sa_cache *c = sa_caches; c; c = c->next) {
				if (step == 1)
					sa_cache_trim_barns(c);
				else if (sa_cache_cached_bytes_racy(c) >= SA_UNIT_SIZE)
					sa_cache_shrink(c); /* a fence: only where it pays */
			}
			pthread_mutex_unlock(&sa_caches_lock);
		}
		/* what is missing, and some more: the next allocations should not all come back
		 * here one unit at a time (the kernel reclaims to a high watermark too) */
		size_t lim = atomic_load(&limit), now = atomic_load(&held);
		size_t want = need == SIZE_MAX || !lim ? SIZE_MAX
			      : now + need > lim       ? now + need - lim + lim / 32
						       : 0;
		if (want)
			sa_segment_purge_upto(want);
		if (step == 2)
			sa_segment_unmap_free();
	}
	pthread_mutex_unlock(&reclaim_lock);
	size_t after = atomic_load(&held);
	return before > after ? before - after : 0;
}

/* Everything, purge or not (address space after a failed mapping needs the unmapping only). */
static void give_back_all(bool purge)
{
	pthread_mutex_lock(&reclaim_lock);
	sa_malloc_huge_cache_drop();
	pthread_mutex_lock(&sa_caches_lock);
	for (struct sa_cache *c = sa_caches; c; c = c->next)
		sa_cache_shrink(c);
	pthread_mutex_unlock(&sa_caches_lock);
	if (purge)
		sa_segment_purge(1);
	sa_segment_unmap_free();
	pthread_mutex_unlock(&reclaim_lock);
}

/* ------------------------------------------------------------------ shrinkers --------------- */
#define SHRINKERS_MAX 256
struct shrinker_node {
	struct sa_shrinker *s;
	struct shrinker_node *next;
	unsigned active; /* shrinker_lock: rounds calling it now */
	bool dead;	 /* shrinker_lock: unregistered */
	bool waited;	 /* shrinker_lock: its unregister waits for active == 0 and frees it; else
			  * the round that drops active to 0 frees a dead node */
};
static pthread_mutex_t shrinker_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t shrinker_idle = PTHREAD_COND_INITIALIZER;
static struct shrinker_node *shrinkers; /* shrinker_lock */
static unsigned nr_shrinkers;		/* shrinker_lock */
/* the round this thread is running: its snapshot, so unregister never waits for itself */
static __thread struct shrinker_node **my_round __attribute__((tls_model("initial-exec")));
static __thread unsigned my_round_n __attribute__((tls_model("initial-exec")));

SA_API int sa_shrinker_register(struct sa_shrinker *s)
{
	if (!s || !s->count || !s->scan ||
	    (s->classes & ~(unsigned)(SA_SHRINK_FS | SA_SHRINK_IO))) {
		sa_msg("sheafalloc: sa_shrinker_register('%s'): %s\n", s && s->name ? s->name : "?",
		       !s			 ? "NULL shrinker"
		       : (!s->count || !s->scan) ? "count and scan are both required"
						 : "unknown class bits");
		return -EINVAL;
	}
	sa_ensure_init();
	struct shrinker_node *n = sa_meta_alloc(sizeof(*n));
	if (!n)
		return -ENOMEM;
	n->s = s;
	pthread_mutex_lock(&shrinker_lock);
	for (struct shrinker_node *p = shrinkers; p; p = p->next) {
		if (p->s == s && !p->dead) {
			pthread_mutex_unlock(&shrinker_lock);
			sa_meta_free(n, sizeof(*n));
			return -EEXIST;
		}
	}
	if (nr_shrinkers == SHRINKERS_MAX) {
		pthread_mutex_unlock(&shrinker_lock);
		sa_meta_free(n, sizeof(*n));
		return -ENOSPC;
	}
	n->next = shrinkers;
	shrinkers = n;
	nr_shrinkers++;
	pthread_mutex_unlock(&shrinker_lock);
	return 0;
}

static unsigned my_holds(struct shrinker_node *n)
{
	unsigned k = 0;
	for (unsigned i = 0; i < my_round_n; i++)
		k += my_round[i] == n;
	return k;
}

SA_API void sa_shrinker_unregister(struct sa_shrinker *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&shrinker_lock);
	struct shrinker_node **pp = &shrinkers, *n = NULL;
	for (; *pp; pp = &(*pp)->next) {
		if ((*pp)->s == s) {
			n = *pp;
			*pp = n->next;
			break;
		}
	}
	if (!n) {
		pthread_mutex_unlock(&shrinker_lock);
		return;
	}
	nr_shrinkers--;
	n->dead = true;
	/* wait for the other threads' calls; ours (a shrinker unregistering itself) end later,
	 * and then that round frees the node */
	bool mine = my_holds(n) > 0;
	n->waited = !mine;
	int nc = sa_nocancel_begin(); /* a cancelled wait would return holding shrinker_lock */
	while (!mine && n->active > 0)
		pthread_cond_wait(&shrinker_idle, &shrinker_lock);
	sa_nocancel_end(nc);
	bool free_now = !mine; /* active is 0: no round will look at it again */
	pthread_mutex_unlock(&shrinker_lock);
	if (free_now)
		sa_meta_free(n, sizeof(*n));
}

/* Call every registered shrinker the flags allow: count, then scan what it has. No allocator
 * lock held; inside a NORECLAIM scope. Returns the objects they said they freed. */
static size_t run_shrinkers(sa_flags_t flags)
{
	struct shrinker_node *snap[SHRINKERS_MAX];
	unsigned n = 0, skipped = 0;
	pthread_mutex_lock(&shrinker_lock);
	for (struct shrinker_node *p = shrinkers; p && n < SHRINKERS_MAX; p = p->next) {
		if (!sa_shrinker_allowed(flags, p->s->classes)) {
			skipped++;
			continue;
		}
		p->active++;
		snap[n++] = p;
	}
	pthread_mutex_unlock(&shrinker_lock);
	if (skipped)
		sa_gstat_add(SA_G_SHRINK_SKIPPED, skipped);
	size_t freed = 0;
	my_round = snap;
	my_round_n = n;
	unsigned cookie = sa_scope_save_internal(SA_NORECLAIM);
	/* the program's shrinkers may reach cancellation points; cancelled there, this round's
	 * holds would never be dropped (sa_shrinker_unregister would wait forever) */
	int nc = sa_nocancel_begin();
	for (unsigned i = 0; i < n; i++) {
		pthread_mutex_lock(&shrinker_lock);
		bool dead = snap[i]->dead;
		pthread_mutex_unlock(&shrinker_lock);
		if (dead)
			continue;
		struct sa_shrinker *s = snap[i]->s;
		size_t have = s->count(s->arg);
		if (!have)
			continue;
		sa_gstat_add(s->classes & SA_SHRINK_FS	 ? SA_G_SHRINK_FS
			     : s->classes & SA_SHRINK_IO ? SA_G_SHRINK_IO
							 : SA_G_SHRINK_OTHER,
			     1);
		freed += s->scan(s->arg, have);
	}
	sa_nocancel_end(nc);
	sa_scope_restore_internal(cookie);
	my_round = NULL;
	my_round_n = 0;
	struct shrinker_node *dead_nodes[SHRINKERS_MAX];
	unsigned nd = 0;
	pthread_mutex_lock(&shrinker_lock);
	for (unsigned i = 0; i < n; i++) {
		if (--snap[i]->active == 0 && snap[i]->dead && !snap[i]->waited)
			dead_nodes[nd++] = snap[i];
	}
	pthread_cond_broadcast(&shrinker_idle);
	pthread_mutex_unlock(&shrinker_lock);
	for (unsigned i = 0; i < nd; i++)
		sa_meta_free(dead_nodes[i], sizeof(*dead_nodes[i]));
	sa_gstat_add(SA_G_SHRINK_FREED, freed);
	return freed;
}

/* ------------------------------------------------------------------ reclaim ----------------- */
bool sa_reclaim_map_failed(sa_flags_t flags)
{
	if (!sa_may_reclaim(flags) || !sa_ready)
		return false;
	sa_in_reclaim = 1;
	sa_gstat_add(SA_G_RECLAIM_ROUNDS, 1);
	size_t before = atomic_load(&held);
	give_back_all(false);
	size_t after = atomic_load(&held);
	sa_gstat_add(SA_G_RECLAIM_BYTES, before > after ? before - after : 0);
	sa_in_reclaim = 0;
	return true;
}

bool sa_reclaim_for_limit(size_t bytes, sa_flags_t flags)
{
	if (!sa_may_reclaim(flags) || !sa_ready)
		return false;
	sa_in_reclaim = 1;
	sa_gstat_add(SA_G_RECLAIM_ROUNDS, 1);
	size_t got = give_back_own(bytes, 2);
	if (!fits(bytes) && run_shrinkers(flags))
		got += give_back_own(bytes, 2);
	sa_gstat_add(SA_G_RECLAIM_BYTES, got);
	sa_in_reclaim = 0;
	return got > 0 || fits(bytes);
}

/* ------------------------------------------------------------------ SA_NOFAIL --------------- */
static SA_COLD void nofail_misuse(sa_flags_t flags, const char *what, size_t size)
{
	/* name the scope that made the allocation NOWAIT, if a scope did */
	struct sa_scope_rec *r = sa_scope_tls.cur ? sa_scope_tls.cur : &sa_scope_tls.own;
	const void *site = NULL;
	unsigned depth = 0;
	for (unsigned i = 0; i < r->nset; i++) {
		if (r->set[i].bits & SA_NOWAIT) {
			site = r->set[i].site;
			depth = r->set[i].depth;
		}
	}
	char fl[96];
	if (site)
		sa_msg("sheafalloc: misuse: an SA_NOFAIL allocation of %zu bytes (%s, flags %s) "
		       "inside "
		       "the SA_NOWAIT scope opened at %p (depth %u) found no memory without "
		       "waiting "
		       "and the emergency reserve is empty; aborting\n",
		       size, what, sa_flags_name(flags, fl, sizeof(fl)), site, depth);
	else
		sa_msg("sheafalloc: misuse: an SA_NOFAIL allocation of %zu bytes (%s) with "
		       "SA_NOWAIT "
		       "(flags %s) found no memory without waiting and the emergency reserve is "
		       "empty; aborting\n",
		       size, what, sa_flags_name(flags, fl, sizeof(fl)));
	abort();
}

void sa_nofail_wait(sa_flags_t flags, const char *what, size_t size, unsigned *round)
{
	if (!sa_may_block(flags))
		nofail_misuse(flags, what, size);
	unsigned r = ++*round;
	sa_gstat_add(SA_G_NOFAIL_RETRIES, 1);
	if (r == 1 || r % 1000 == 0)
		sa_msg("sheafalloc: an SA_NOFAIL allocation of %zu bytes (%s) is waiting for "
		       "memory "
		       "(held %zu of limit %zu bytes, %u rounds); it keeps reclaiming\n",
		       size, what, sa_memory_held(), atomic_load(&limit), r);
	sa_deferred_run();
	if (sa_may_reclaim(flags))
		sa_reclaim_for_limit(size, flags & ~SA_NORECLAIM);
	struct timespec ts = {0, (long)(r < 10 ? r : 10) * 1000000L};
	nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ sa_trim ----------------- */
/* Return every free page the allocator can: flush every cache, purge every dirty unit, unmap
 * cached huge mappings and free segments. Nothing under SA_NOWAIT (all of it waits and makes
 * system calls) or inside reclaim. */
SA_API void sa_trim(void)
{
	sa_ensure_init();
	if (sa_in_reclaim || !sa_may_block(sa_flags_effective(0)))
		return;
	sa_in_reclaim = 1;
	sa_deferred_run();
	sa_rcu_submit_all(); /* partial rcu sheaves go to their grace period now */
	give_back_all(true);
	sa_in_reclaim = 0;
}

/* In the child, with shrinker_lock held and no other thread: a parent thread whose round was
 * calling the shrinkers at the fork (shrinker_lock is not held across the calls) left its holds
 * in `active`, and that round never ends here, so sa_shrinker_unregister would wait forever for
 * active to drop to 0. The holds are made what the rounds running here hold: this thread's own,
 * when it forked from inside a shrinker (my_round), none otherwise. A node another parent thread
 * had unregistered (off the list, freed by that thread or its round) stays allocated: like the
 * objects a parent thread held, it is lost to the child. shrinker_idle may count a parent
 * thread waiting in sa_shrinker_unregister, a waiter that never wakes here; glibc's condition
 * variable then blocks a later broadcast or wait: it starts afresh. */
static void shrinkers_after_fork(void)
{
	for (struct shrinker_node *p = shrinkers; p; p = p->next)
		p->active = 0;
	for (unsigned i = 0; i < my_round_n; i++)
		my_round[i]->active = 0;
	for (unsigned i = 0; i < my_round_n; i++)
		my_round[i]->active++;
	pthread_cond_init(&shrinker_idle, NULL);
}

/* phase: 0 take the locks (prepare), 1 release them (parent), 2 release them (child) */
void sa_reclaim_atfork(int phase)
{
	if (phase == 0) {
		pthread_mutex_lock(&reclaim_lock);
		pthread_mutex_lock(&shrinker_lock);
		return;
	}
	if (phase == 2)
		shrinkers_after_fork();
	pthread_mutex_unlock(&shrinker_lock);
	pthread_mutex_unlock(&reclaim_lock);
}

size_t sa_limit_get(void)
{
	return atomic_load(&limit);
}
