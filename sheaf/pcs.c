/*
 * sheaf/pcs.c — the per-CPU slow paths (docs/design.md §3, §4).
 *
 * Owns: the order in which a miss is served, the fallback (lock) form of every section, the
 * remote drain, and the folding of fast-path op counters into the cache's stats.
 *
 * Ownership rule: a sheaf installed in a slot belongs to the slot's CPU (rseq) or to whoever
 * holds the slot lock (fallback). The slow paths never work on an installed sheaf: they take it
 * out with one exchange section (commit = the store into the slot), work on it while they own
 * it, and install it back with another. Between the two they may migrate: an install checks
 * inside its section that the sheaf's node is the CPU's node, so sheaves stay node-pure.
 *
 * Order on a miss (the kernel's): main empty -> swap with a spare that has objects -> exchange
 * the empty main for a full sheaf of this node's barn -> refill a sheaf from this node's slabs.
 * Main full -> swap with a spare that has room -> exchange the full main for an empty sheaf
 * (the full one becomes the spare if there is none, else goes to the barn if under
 * barn_max_full, else is flushed to slabs). Anything that cannot be served through the sheaves
 * (a stopped slot, a remote node, no memory for a sheaf) goes straight to the slabs.
 *
 * Fast-path counting: a sheaf's state word holds size and `ops`, the fast pops and pushes since
 * it was installed; with install_size, pops = (ops + install_size - size) / 2 exactly. Folding
 * (on every take-out, and when ops reaches 2^31) adds those to the cache's counters.
 *
 * Locking: fallback slot spinlock (rank 2) is held only for the few loads and stores of a
 * section, never across a barn, slab or sheaf allocation. c->drain_lock serializes remote drains.
 *
 * Flags: the alloc slow path gets the effective flags (call and scope, alloc/scope.h); the free
 * slow path reads the scope itself (free takes no flags). In a context that may not wait
 * (SA_NOWAIT, alloc/policy.h) every lock is only tried: a full sheaf that cannot go to its barn
 * goes onto the cache's deferred stack, an object that cannot reach its slab is deferred
 * (alloc/defer.c), and the fallback spinlock spins without yielding (no system call).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <string.h>

#include "alloc/scope.h"
#include "sheaf/pcs_inline.h"

enum { DIR_ALLOC = 0, DIR_FREE = 1 };
enum { MAIN = 0, SPARE = 1 };

/* ------------------------------------------------------------------ fallback sections ------- */
static void spin_lock(uint32_t *l)
{
	for (unsigned n = 0;; n++) {
		if (!__atomic_load_n(l, __ATOMIC_RELAXED) &&
		    !__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
			return;
		if (n < 100 || !sa_may_syscall(sa_scope_flags()))
			__builtin_ia32_pause();
		else
			sched_yield();
	}
}

static void spin_unlock(uint32_t *l)
{
	__atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

static struct sa_pcs_slot *fb_lock(struct sa_cache *c)
{
	struct sa_pcs_slot *slot = &c->slots[sa_pcs_current_cpu()];
	spin_lock(&slot->lock);
	return slot;
}

static void set_state_word(struct sa_sheaf *s, uint64_t st)
{
	__atomic_store_n(&s->state, st, __ATOMIC_RELAXED);
}

static void set_state(struct sa_sheaf *s, uint32_t size, uint32_t ops)
{
	set_state_word(s, (uint64_t)size | ((uint64_t)ops << 32));
}

static void set_top(struct sa_pcs_slot *slot, uint64_t top)
{
	__atomic_store_n(&slot->top, top, __ATOMIC_RELAXED);
}

/* Fold the op counter of the installed main (slot locked): through its header and back. */
static void fb_fold_main(struct sa_cache *c, struct sa_pcs_slot *slot)
{
	struct sa_sheaf *s = slot->sh[0];
	if (s == &sa_sheaf_sentinel)
		return;
	set_state_word(s, sa_top_to_state(s, slot->top));
	sa_pcs_fold(c, s);
	set_top(slot, sa_top_encode(s, s->size, 0));
}

static void *fb_pop(struct sa_cache *c, int *why)
{
	struct sa_pcs_slot *slot = fb_lock(c);
	uint64_t top = slot->top;
	void **t = (void **)(uintptr_t)(top & SA_TOP_ADDR_MASK);
	void *obj = NULL;
	if (t[-1] == SA_SHEAF_GUARD) {
		*why = SA_WHY_EMPTY;
	} else if ((top >> SA_TOP_OPS_SHIFT) >= SA_TOP_OPS_MAX - 1) {
		fb_fold_main(c, slot);
		*why = SA_WHY_RETRY;
	} else {
		obj = t[-1];
		set_top(slot, top + (1ull << SA_TOP_OPS_SHIFT) - sizeof(void *));
	}
	spin_unlock(&slot->lock);
	return obj;
}

static int fb_push(struct sa_cache *c, void *obj, int node)
{
	struct sa_pcs_slot *slot = fb_lock(c);
	uint64_t top = slot->top;
	void **t = (void **)(uintptr_t)(top & SA_TOP_ADDR_MASK);
	int why = 0;
	if (slot->node != node) {
		why = SA_WHY_REMOTE;
	} else if (t[-1] == obj) { /* before the full test: a full sheaf's top counts too */
		why = SA_WHY_DOUBLE;
	} else if (*t == SA_SHEAF_GUARD) {
		why = SA_WHY_FULL;
	} else if ((top >> SA_TOP_OPS_SHIFT) >= SA_TOP_OPS_MAX - 1) {
		fb_fold_main(c, slot);
		why = SA_WHY_RETRY;
	} else {
		*t = obj;
		set_top(slot, top + (1ull << SA_TOP_OPS_SHIFT) + sizeof(void *));
	}
	spin_unlock(&slot->lock);
	return why;
}

static int fb_xchg(struct sa_cache *c, unsigned which, struct sa_sheaf *nw, int node,
		   struct sa_sheaf **oldp)
{
	struct sa_pcs_slot *slot = fb_lock(c);
	int r = 0;
	if (node >= 0 && slot->node != node) {
		r = SA_WHY_WRONGNODE;
	} else {
		struct sa_sheaf *old = slot->sh[which];
		if (which == 0) {
			if (old != &sa_sheaf_sentinel)
				set_state_word(old, sa_top_to_state(old, slot->top));
			set_top(slot, sa_top_encode(nw, nw->size, nw->ops));
		}
		*oldp = old;
		__atomic_store_n(&slot->sh[which], nw, __ATOMIC_RELAXED);
	}
	spin_unlock(&slot->lock);
	return r;
}

/* ------------------------------------------------------------------ mode-independent ops ----- */
static void *pcs_pop(struct sa_cache *c, int *why)
{
	if (sa_pcs_mode == SA_PCS_FALLBACK)
		return fb_pop(c, why);
	void *obj = sa_pcs_pop_fast(c, why);
	if (!obj && *why == SA_WHY_UNREG && sa_rseq_thread_ready())
		obj = sa_pcs_pop_fast(c, why);
	return obj;
}

static int pcs_push(struct sa_cache *c, void *obj, int node)
{
	if (sa_pcs_mode == SA_PCS_FALLBACK)
		return fb_push(c, obj, node);
	int why = sa_pcs_push_fast(c, obj, node);
	if (why == SA_WHY_UNREG && sa_rseq_thread_ready())
		why = sa_pcs_push_fast(c, obj, node);
	return why;
}

static int rseq_xchg(struct sa_cache *c, unsigned which, struct sa_sheaf *nw, uint64_t nwtop,
		     int node, struct sa_sheaf **oldp)
{
	if (which == 0)
		return sa_rseq_xchg_main(c->slots, sa_rseq_off, nw, nwtop, node, &sa_sheaf_sentinel,
					 oldp);
	return sa_rseq_xchg_spare(c->slots, sa_rseq_off, nw, node, oldp);
}

static int pcs_xchg(struct sa_cache *c, unsigned which, struct sa_sheaf *nw, int node,
		    struct sa_sheaf **oldp)
{
	if (sa_pcs_mode == SA_PCS_FALLBACK)
		return fb_xchg(c, which, nw, node, oldp);
	/* a sheaf changes hands through the slot: tell TSan, which cannot see the section */
	uint64_t nwtop = sa_top_encode(nw, nw->size, nw->ops); /* read before the release */
	SA_TSAN_RELEASE(nw);
	int r = rseq_xchg(c, which, nw, nwtop, node, oldp);
	if (r == SA_WHY_UNREG && sa_rseq_thread_ready())
		r = rseq_xchg(c, which, nw, nwtop, node, oldp);
	if (r == 0)
		SA_TSAN_ACQUIRE(*oldp);
	return r;
}

int sa_pcs_current_node(struct sa_cache *c)
{
	return c->slots[sa_pcs_current_cpu()].node;
}

/* racy: a stale answer only makes a slow path choose a less good home for a sheaf */
static bool spare_is_sentinel_racy(struct sa_cache *c)
{
	struct sa_pcs_slot *slot = &c->slots[sa_pcs_current_cpu()];
	return __atomic_load_n(&slot->sh[1], __ATOMIC_RELAXED) == &sa_sheaf_sentinel;
}

/* ------------------------------------------------------------------ counting ---------------- */
void sa_pcs_fold(struct sa_cache *c, struct sa_sheaf *s)
{
	if (s == &sa_sheaf_sentinel)
		return;
	uint64_t t = s->ops;
	int64_t d = (int64_t)s->install_size - (int64_t)s->size;
	if (t) {
		sa_stat_add(c, SA_STAT_ALLOC_FAST, (uint64_t)(((int64_t)t + d) / 2));
		sa_stat_add(c, SA_STAT_FREE_FAST, (uint64_t)(((int64_t)t - d) / 2));
	}
	set_state(s, s->size, 0);
	s->install_size = s->size;
}

void sa_pcs_stats_racy(struct sa_cache *c, uint64_t *allocs, uint64_t *frees, uint64_t *cached)
{
	uint64_t a = 0, f = 0, n = 0;
	for (int cpu = 0; cpu < sa_nr_cpus; cpu++) {
		struct sa_pcs_slot *slot = &c->slots[cpu];
		for (int i = 0; i < 2; i++) {
			struct sa_sheaf *s = __atomic_load_n(&slot->sh[i], __ATOMIC_ACQUIRE);
			if (s == &sa_sheaf_sentinel)
				continue;
			uint64_t st = __atomic_load_n(&s->state, __ATOMIC_RELAXED);
			if (i == 0) { /* the main's state is the slot's top */
				uint64_t top = __atomic_load_n(&slot->top, __ATOMIC_RELAXED);
				uintptr_t a = (uintptr_t)(top & SA_TOP_ADDR_MASK);
				if (a < (uintptr_t)&s->objects[0] ||
				    a > (uintptr_t)&s->objects[__atomic_load_n(&s->capacity,
									       __ATOMIC_RELAXED)])
					continue; /* main changed under us */
				st = sa_top_to_state(s, top);
			}
			int64_t size = (uint32_t)st, t = (int64_t)(st >> 32);
			int64_t d =
				(int64_t)__atomic_load_n(&s->install_size, __ATOMIC_RELAXED) - size;
			if (t + d >= 0 && t - d >= 0) {
				a += (uint64_t)(t + d) / 2;
				f += (uint64_t)(t - d) / 2;
			}
			n += (uint64_t)size;
		}
	}
	*allocs = a;
	*frees = f;
	*cached = n;
}

static void prep_install(struct sa_sheaf *s)
{
	set_state(s, s->size, 0);
	s->install_size = s->size;
}

/* ------------------------------------------------------------------ slow paths -------------- */
/* Take main out and put it back, folding its counter on the way. */
static void fold_main(struct sa_cache *c, sa_flags_t flags)
{
	struct sa_sheaf *old, *o2;
	if (pcs_xchg(c, MAIN, &sa_sheaf_sentinel, -1, &old))
		return;
	sa_pcs_fold(c, old);
	if (old == &sa_sheaf_sentinel)
		return;
	if (pcs_xchg(c, MAIN, old, old->node, &o2)) {
		sa_sheaf_dispose_flags(c, old, flags);
		return;
	}
	sa_pcs_fold(c, o2);
	sa_sheaf_dispose_flags(c, o2, flags);
}

/* Put a full (dir free) or empty (dir alloc) sheaf that just left main somewhere useful. */
static void place_old_main(struct sa_cache *c, struct sa_sheaf *old, int dir, sa_flags_t flags)
{
	struct sa_sheaf *o2;
	bool wanted = dir == DIR_ALLOC ? old->size == 0 : old->size == old->capacity;
	if (wanted && spare_is_sentinel_racy(c)) {
		if (pcs_xchg(c, SPARE, old, old->node, &o2) == 0) {
			sa_pcs_fold(c, o2);
			sa_sheaf_dispose_flags(c, o2, flags);
			return;
		}
	}
	if (dir == DIR_FREE && old->size > 0) {
		struct sa_barn *b = &c->nodes[old->node]->barn;
		if (sa_barn_nr_full_racy(b) < c->barn_max_full) {
			if (!sa_may_block(flags)) { /* try the barn, else the deferred stack */
				sa_sheaf_dispose_flags(c, old, flags);
				return;
			}
			sa_barn_put_full(b, old);
			sa_stat_add(c, SA_STAT_BARN_PUT, 1);
			return;
		}
		sa_stat_add(c, SA_STAT_BARN_PUT_FAIL, 1);
		if (!sa_may_block(flags)) {
			sa_sheaf_dispose_flags(c, old, flags); /* flushed by the next slow path */
			return;
		}
		sa_sheaf_flush(c, old);
	}
	sa_sheaf_dispose_flags(c, old, flags);
}

/* Install s as main. 0: done (retry the fast path); -1: could not (s disposed). */
static int install_main(struct sa_cache *c, struct sa_sheaf *s, int dir, sa_flags_t flags)
{
	struct sa_sheaf *old;
	prep_install(s);
	int r = pcs_xchg(c, MAIN, s, s->node, &old);
	if (r) {
		sa_sheaf_dispose_flags(c, s, flags);
		return r == SA_WHY_WRONGNODE ? 0 : -1;
	}
	sa_pcs_fold(c, old);
	if (old != &sa_sheaf_sentinel)
		place_old_main(c, old, dir, flags);
	return 0;
}

/* The spare, taken out if it serves direction dir (alloc: has objects; free: has room). */
static int fb_take_spare(struct sa_cache *c, int dir, struct sa_sheaf **oldp)
{
	struct sa_pcs_slot *slot = fb_lock(c);
	struct sa_sheaf *sp = slot->sh[1];
	int r = SA_WHY_NOSPARE;
	if (dir == DIR_ALLOC ? sp->size > 0 : sp->size < sp->capacity) {
		*oldp = sp;
		__atomic_store_n(&slot->sh[1], &sa_sheaf_sentinel, __ATOMIC_RELAXED);
		r = 0;
	}
	spin_unlock(&slot->lock);
	return r;
}

static int pcs_take_spare(struct sa_cache *c, int dir, struct sa_sheaf **oldp)
{
	if (sa_pcs_mode == SA_PCS_FALLBACK)
		return fb_take_spare(c, dir, oldp);
	int r = sa_rseq_take_spare(c->slots, sa_rseq_off, dir, &sa_sheaf_sentinel, oldp);
	if (r == SA_WHY_UNREG && sa_rseq_thread_ready())
		r = sa_rseq_take_spare(c->slots, sa_rseq_off, dir, &sa_sheaf_sentinel, oldp);
	if (r == 0)
		SA_TSAN_ACQUIRE(*oldp);
	return r;
}

/*
 * The kernel's "swap main and spare", in three sections: take the spare out if it serves dir,
 * install it as main, and the old main becomes the spare (place_old_main).
 * 0: done, retry the fast path; SA_WHY_NOSPARE: the spare cannot help.
 */
static int use_spare(struct sa_cache *c, int dir, sa_flags_t flags)
{
	struct sa_sheaf *sp;
	if (spare_is_sentinel_racy(c) || pcs_take_spare(c, dir, &sp))
		return SA_WHY_NOSPARE;
	sa_pcs_fold(c, sp);
	sa_stat_add(c, dir == DIR_ALLOC ? SA_STAT_SPARE_SWAP_ALLOC : SA_STAT_SPARE_SWAP_FREE, 1);
	return install_main(c, sp, dir, flags) ? SA_WHY_NOSPARE : 0;
}

static int refill_main(struct sa_cache *c, sa_flags_t flags)
{
	if (use_spare(c, DIR_ALLOC, flags) == 0)
		return 0;
	if (!(flags & SA_NOWAIT))
		sa_sheaf_deferred_run(c, 0);
	int node = sa_pcs_current_node(c);
	struct sa_barn *b = &c->nodes[node]->barn;
	struct sa_sheaf *s = sa_barn_get_full(b, flags);
	if (s) {
		sa_stat_add(c, SA_STAT_BARN_GET, 1);
	} else {
		sa_stat_add(c, SA_STAT_BARN_GET_FAIL, 1);
		s = sa_barn_get_empty(b, flags);
		if (!s)
			s = sa_sheaf_new(c, c->capacity, node, flags);
		if (!s)
			return -1;
		sa_sheaf_fill(c, s, s->capacity, flags);
		if (s->size == 0) {
			sa_sheaf_dispose_flags(c, s, flags);
			return -1;
		}
	}
	return install_main(c, s, DIR_ALLOC, flags);
}

static int drain_main(struct sa_cache *c, sa_flags_t flags)
{
	if (use_spare(c, DIR_FREE, flags) == 0)
		return 0;
	if (sa_may_block(flags))
		sa_sheaf_deferred_run(c, 0);
	int node = sa_pcs_current_node(c);
	struct sa_sheaf *s = sa_barn_get_empty(&c->nodes[node]->barn, flags);
	if (!s)
		s = sa_sheaf_new(c, c->capacity, node, flags);
	if (!s)
		return -1;
	return install_main(c, s, DIR_FREE, flags);
}

/* One slow path in 32 of a thread looks at the decay clock (alloc/decay.c): a counter here,
 * the clock there. */
static __thread unsigned decay_count __attribute__((tls_model("initial-exec")));
static inline void decay_tick(sa_flags_t flags)
{
	if (SA_UNLIKELY(++decay_count % 32 == 0))
		sa_decay_run(flags);
}

SA_NOINLINE void *sa_pcs_alloc_slow(struct sa_cache *c, sa_flags_t flags, int why)
{
	void *obj = NULL;
	/* zeroed as the caller says: the callers have added the scope's SA_ZERO already, or
	 * dropped it on purpose (sa_cache_alloc_nozero) */
	sa_flags_t zero = flags & SA_ZERO;
	flags = sa_flags_effective(flags);
	if (SA_UNLIKELY(sa_deferred_pending_racy()) && sa_may_block(flags))
		sa_deferred_run();
	decay_tick(flags);
	if (SA_UNLIKELY(c->debug)) /* a debugged cache: every object through its slab */
		goto direct;
	for (int tries = 0; tries < 16; tries++) {
		switch (why) {
		case SA_WHY_EMPTY:
			if (refill_main(c, flags))
				goto direct;
			break;
		case SA_WHY_FOLD:
			fold_main(c, flags);
			break;
		case SA_WHY_UNREG:
			if (sa_pcs_mode != SA_PCS_FALLBACK && !sa_rseq_thread_ready())
				goto direct;
			break;
		case SA_WHY_RETRY:
			break;
		default: /* stopped */
			goto direct;
		}
		obj = pcs_pop(c, &why);
		if (obj)
			goto out;
	}
direct:
	obj = sa_cache_alloc_slab_direct(c, flags, sa_pcs_current_node(c));
	if (!obj)
		return NULL;
out:
	if (c->flags & SA_CACHE_KEYED_) /* a malloc class: its free key goes (sa_free_keyed) */
		((uint64_t *)obj)[1] = 0;
	if (zero)
		memset(obj, 0, c->size);
	return obj;
}

SA_NOINLINE void sa_pcs_free_slow(struct sa_cache *c, void *obj, int node, int why)
{
	sa_flags_t flags = sa_flags_effective(0);
	if (SA_UNLIKELY(sa_deferred_pending_racy()) && sa_may_block(flags))
		sa_deferred_run();
	decay_tick(flags);
	if (SA_UNLIKELY(c->debug)) /* a debugged cache: every object through its slab */
		goto direct;
	for (int tries = 0; tries < 16; tries++) {
		switch (why) {
		case SA_WHY_FULL:
			if (drain_main(c, flags))
				goto direct;
			break;
		case SA_WHY_FOLD:
			fold_main(c, flags);
			break;
		case SA_WHY_DOUBLE:
			sa_cache_bad_free(c, obj,
					  "double free (it is the last object freed on this CPU)");
			return;
		case SA_WHY_REMOTE: /* or the slot is stopped */
			if (node != sa_pcs_current_node(c))
				sa_stat_add(c, SA_STAT_REMOTE_FREE, 1);
			goto direct;
		case SA_WHY_UNREG:
			if (sa_pcs_mode != SA_PCS_FALLBACK && !sa_rseq_thread_ready())
				goto direct;
			break;
		case SA_WHY_RETRY:
			break;
		default: /* stopped */
			goto direct;
		}
		why = pcs_push(c, obj, node);
		if (!why)
			return;
	}
direct:
	if (sa_slab_free_one(c, obj)) /* not when deferred: counted when it runs */
		sa_stat_add(c, SA_STAT_FREE_SLOW, 1);
}

/* ------------------------------------------------------------------ the rcu sheaf ------------ */
/* sa_free_rcu's push in either mode: 0, or why not (SA_WHY_FULL / UNREG / STOPPED). */
int sa_pcs_rcu_push(struct sa_cache *c, void *obj, sa_flags_t flags)
{
	SA_TSAN_RELEASE(obj);
	if (sa_pcs_mode == SA_PCS_FALLBACK) {
		(void)flags;
		struct sa_pcs_slot *slot = fb_lock(c);
		struct sa_sheaf *s = slot->rcu;
		int r = SA_WHY_FULL;
		if (s->size < s->capacity) {
			s->objects[s->size] = obj;
			__atomic_store_n(&s->size, s->size + 1, __ATOMIC_RELAXED);
			r = 0;
		}
		spin_unlock(&slot->lock);
		return r;
	}
	int r = sa_rseq_rcu_push(c->slots, sa_rseq_off, obj);
	if (r == SA_WHY_UNREG && sa_rseq_thread_ready())
		r = sa_rseq_rcu_push(c->slots, sa_rseq_off, obj);
	return r;
}

/* Install nw as this CPU's rcu sheaf; the old one (owned by the caller now) in *oldp. */
int sa_pcs_rcu_xchg(struct sa_cache *c, struct sa_sheaf *nw, struct sa_sheaf **oldp)
{
	if (sa_pcs_mode == SA_PCS_FALLBACK) {
		struct sa_pcs_slot *slot = fb_lock(c);
		*oldp = slot->rcu;
		__atomic_store_n(&slot->rcu, nw, __ATOMIC_RELAXED);
		spin_unlock(&slot->lock);
		return 0;
	}
	SA_TSAN_RELEASE(nw);
	int r = sa_rseq_xchg_rcu(c->slots, sa_rseq_off, nw, oldp);
	if (r == SA_WHY_UNREG && sa_rseq_thread_ready())
		r = sa_rseq_xchg_rcu(c->slots, sa_rseq_off, nw, oldp);
	if (r == 0)
		SA_TSAN_ACQUIRE(*oldp);
	return r;
}

/* Is obj in one of c's per-CPU main or spare sheaves? Racy (a double-free check): sheaves live
 * in metadata that is never unmapped, so a stale read is harmless; the slot lock is taken in
 * fallback mode. */
bool sa_pcs_holds_racy(struct sa_cache *c, const void *obj)
{
	for (int cpu = 0; cpu < sa_nr_cpus; cpu++) {
		struct sa_pcs_slot *slot = &c->slots[cpu];
		bool fb = sa_pcs_mode == SA_PCS_FALLBACK;
		if (fb)
			spin_lock(&slot->lock);
		bool found = false;
		uint64_t top = __atomic_load_n(&slot->top, __ATOMIC_RELAXED);
		void *const *t = (void *const *)(uintptr_t)(top & SA_TOP_ADDR_MASK);
		struct sa_sheaf *m = __atomic_load_n(&slot->sh[0], __ATOMIC_ACQUIRE);
		if (m != &sa_sheaf_sentinel && (void *const *)&m->objects[0] <= t &&
		    t <= (void *const *)&m->objects[m->capacity])
			for (void *const *p = &m->objects[0]; p < t && !found; p++)
				found = *p == obj;
		struct sa_sheaf *sp = __atomic_load_n(&slot->sh[1], __ATOMIC_ACQUIRE);
		uint32_t n = __atomic_load_n(&sp->size, __ATOMIC_RELAXED);
		for (uint32_t i = 0; i < n && i < sp->capacity && !found; i++)
			found = sp->objects[i] == obj;
		if (fb)
			spin_unlock(&slot->lock);
		if (found)
			return true;
	}
	return false;
}

/* Objects in every CPU's rcu sheaf of c (racy: statistics). */
uint64_t sa_pcs_rcu_waiting_racy(struct sa_cache *c)
{
	uint64_t n = 0;
	for (int cpu = 0; cpu < sa_nr_cpus; cpu++) {
		struct sa_sheaf *s = __atomic_load_n(&c->slots[cpu].rcu, __ATOMIC_ACQUIRE);
		n += __atomic_load_n(&s->size, __ATOMIC_RELAXED);
	}
	return n;
}

/* Take every CPU's rcu sheaf of c (non-empty ones) out for submission, the remote way (stop,
 * fence; in fallback mode each slot's lock). Returns them chained by next. Caller holds no
 * allocator lock; c->drain_lock is taken here. */
struct sa_sheaf *sa_pcs_drain_rcu(struct sa_cache *c)
{
	struct sa_sheaf *out = NULL;
	pthread_mutex_lock(&c->drain_lock);
	bool rseq = sa_pcs_mode != SA_PCS_FALLBACK;
	if (rseq) {
		for (int cpu = 0; cpu < sa_nr_cpus; cpu++)
			__atomic_store_n(&c->slots[cpu].stopped, 1, __ATOMIC_SEQ_CST);
		sa_rseq_fence_all();
		sa_stat_add(c, SA_STAT_REMOTE_FENCE, 1);
	}
	for (int cpu = 0; cpu < sa_nr_cpus; cpu++) {
		struct sa_pcs_slot *slot = &c->slots[cpu];
		if (!rseq)
			spin_lock(&slot->lock);
		struct sa_sheaf *s = slot->rcu;
		if (rseq)
			SA_TSAN_ACQUIRE(s);
		if (s != &sa_sheaf_sentinel && s->size) {
			__atomic_store_n(&slot->rcu, &sa_sheaf_sentinel, __ATOMIC_RELAXED);
			s->next = out;
			out = s;
		}
		if (!rseq)
			spin_unlock(&slot->lock);
	}
	if (rseq)
		for (int cpu = 0; cpu < sa_nr_cpus; cpu++)
			__atomic_store_n(&c->slots[cpu].stopped, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&c->drain_lock);
	return out;
}

/* The spare for sa_sheaf_prefill (taken out, owned by the caller), or NULL. */
struct sa_sheaf *sa_pcs_take_spare(struct sa_cache *c)
{
	struct sa_sheaf *old;
	if (spare_is_sentinel_racy(c))
		return NULL;
	if (pcs_xchg(c, SPARE, &sa_sheaf_sentinel, -1, &old))
		return NULL;
	sa_pcs_fold(c, old);
	return old == &sa_sheaf_sentinel ? NULL : old;
}

/* Make s this CPU's spare if it has none. 0: installed; -1: not (caller still owns s). */
int sa_pcs_offer_spare(struct sa_cache *c, struct sa_sheaf *s)
{
	struct sa_sheaf *old;
	if (!spare_is_sentinel_racy(c))
		return -1;
	prep_install(s);
	if (pcs_xchg(c, SPARE, s, s->node, &old))
		return -1;
	sa_pcs_fold(c, old);
	sa_sheaf_dispose_flags(c, old, sa_flags_effective(0)); /* migrated: a real spare */
	return 0;
}

/*
 * Empty every CPU's slots of c (shrink, destroy). rseq: stop all slots, one fence, then the
 * slots are ours; fallback: each slot's lock in turn. Sheaves are flushed and freed (the kernel's
 * flush_all skips the barn too).
 */
static void drain_locked(struct sa_cache *c, bool rcu_too);

void sa_pcs_drain(struct sa_cache *c)
{
	pthread_mutex_lock(&c->drain_lock);
	drain_locked(c, true);
	pthread_mutex_unlock(&c->drain_lock);
}

/* Decay's drain: the main and spare sheaves only. The rcu sheaves are the RCU thread's to drain
 * (its tick); submitting them here would start that thread where nothing asked for RCU work
 * (a fork child's first decay pass did, and TSan's runtime killed the child for it). */
bool sa_pcs_drain_try(struct sa_cache *c)
{
	if (pthread_mutex_trylock(&c->drain_lock))
		return false;
	drain_locked(c, false);
	pthread_mutex_unlock(&c->drain_lock);
	return true;
}

static void drain_locked(struct sa_cache *c, bool rcu_too)
{
	bool rseq = sa_pcs_mode != SA_PCS_FALLBACK;
	if (rseq) {
		for (int cpu = 0; cpu < sa_nr_cpus; cpu++)
			__atomic_store_n(&c->slots[cpu].stopped, 1, __ATOMIC_SEQ_CST);
		sa_rseq_fence_all();
		sa_stat_add(c, SA_STAT_REMOTE_FENCE, 1);
	}
	for (int cpu = 0; cpu < sa_nr_cpus; cpu++) {
		struct sa_pcs_slot *slot = &c->slots[cpu];
		struct sa_sheaf *s[2];
		if (!rseq)
			spin_lock(&slot->lock);
		for (int i = 0; i < 2; i++) {
			s[i] = slot->sh[i];
			if (rseq)
				SA_TSAN_ACQUIRE(s[i]);
			__atomic_store_n(&slot->sh[i], &sa_sheaf_sentinel, __ATOMIC_RELAXED);
		}
		if (s[0] != &sa_sheaf_sentinel) /* the main's state lives in the slot */
			set_state_word(s[0], sa_top_to_state(s[0], slot->top));
		set_top(slot, sa_top_encode(&sa_sheaf_sentinel, 0, 0));
		struct sa_sheaf *r = rcu_too ? slot->rcu : &sa_sheaf_sentinel;
		if (rseq && rcu_too)
			SA_TSAN_ACQUIRE(r);
		if (rcu_too)
			__atomic_store_n(&slot->rcu, &sa_sheaf_sentinel, __ATOMIC_RELAXED);
		if (!rseq)
			spin_unlock(&slot->lock);
		if (r != &sa_sheaf_sentinel) /* its objects wait for a grace period, not a flush */
			sa_rcu_submit(c, r);
		for (int i = 0; i < 2; i++) {
			if (s[i] == &sa_sheaf_sentinel)
				continue;
			sa_pcs_fold(c, s[i]);
			sa_sheaf_flush(c, s[i]);
			sa_sheaf_free(c, s[i]);
		}
	}
	if (rseq) {
		sa_stat_add(c, SA_STAT_REMOTE_FENCE, 0);
		for (int cpu = 0; cpu < sa_nr_cpus; cpu++)
			__atomic_store_n(&c->slots[cpu].stopped, 0, __ATOMIC_RELEASE);
	}
}

/* fork: in fallback mode a slot lock held by another thread would stay held in the child. */
void sa_pcs_atfork(struct sa_cache *c, int phase)
{
	if (sa_pcs_mode != SA_PCS_FALLBACK)
		return;
	for (int cpu = 0; cpu < sa_nr_cpus; cpu++) {
		if (phase == 0)
			spin_lock(&c->slots[cpu].lock);
		else
			spin_unlock(&c->slots[cpu].lock);
	}
}
