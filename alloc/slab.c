/*
 * alloc/slab.c — slabs of one cache on one node (docs/design.md §2).
 *
 * Owns: each cache node's partial list and every slab's free bitmap, scan hint and inuse count.
 * cnode->lock (rank 4) protects them; it is never held across a constructor, an mmap or
 * madvise. A slab is on the partial list iff it has a free object; a slab whose inuse drops to
 * 0 stays on the list while the node keeps at most SA_KEEP_EMPTY such slabs, beyond that it is
 * released to the page layer (after the lock is dropped).
 *
 * Free objects: one bit per object in a bitmap allocated from the metadata allocator (set =
 * free), so neither a refill nor a flush touches the objects themselves: a refill scans words
 * from the slab's hint and hands out objects in address order; a flush sets bits. A new slab
 * starts with every bit set; its pages are touched only when its objects are used. Caches with
 * a constructor construct every object of a new slab before the slab is published, outside any
 * lock; nothing is ever written into a free object, so it keeps its constructed state.
 * A flush finds two kinds of bad free on the way, which are reported and ignored: a pointer
 * that is not at an object boundary, and an object whose bit is already set (a double free).
 *
 * Contexts that may not wait (SA_NOWAIT, policy.h): cnode->lock is only tried. A new slab that
 * such a path cannot publish because the lock is busy goes onto the node's pending list (a
 * lock-free push; its own objects and counts travel with it), and whoever next holds the lock
 * publishes it (drain_pending_locked); an allocation that may use the emergency reserve takes
 * its objects from such a private slab directly. A slab to release, or an object to free, that
 * finds the lock busy is deferred (alloc/defer.c).
 * SA_PIN: the slabs of a pinned companion cache (SA_CACHE_PINNED_) are mlock'ed before they
 * are published and munlock'ed when released; an mlock that fails (RLIMIT_MEMLOCK) is reported
 * once and the slab is not made.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "alloc/scope.h"

#define SA_KEEP_EMPTY 2

/* The slab's metadata block: its bitmap, and a debugged cache's owner records after it. */
static size_t meta_bytes(const struct sa_cache *c, uint32_t nobjs)
{
	return sa_debug_meta_bytes(c, nobjs);
}

/* Index of obj in the slab at base; UINT32_MAX if obj is not at an object boundary. */
static uint32_t obj_index(const struct sa_cache *c, const struct sa_slab *s, const void *obj)
{
	uint64_t off = (uint64_t)((const char *)obj - sa_slab_base(s));
	uint64_t i = (off * c->stride_recip) >> SA_RECIP_SHIFT; /* exact: off * stride < 2^44 */
	if (SA_UNLIKELY(i * c->stride != off || i >= s->nobjs))
		return UINT32_MAX;
	return (uint32_t)i;
}

bool sa_slab_obj_ok(struct sa_cache *c, struct sa_slab *s, const void *obj)
{
	struct sa_slab *h = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
	return h && obj_index(c, h, obj) != UINT32_MAX;
}

static void partial_add_locked(struct sa_cache_node *n, struct sa_slab *s, bool head)
{
	s->on_partial = 1;
	n->nr_partial++;
	if (!n->partial) {
		s->next = s->prev = NULL;
		n->partial = n->partial_tail = s;
	} else if (head) {
		s->prev = NULL;
		s->next = n->partial;
		n->partial->prev = s;
		n->partial = s;
	} else {
		s->next = NULL;
		s->prev = n->partial_tail;
		n->partial_tail->next = s;
		n->partial_tail = s;
	}
}

static void partial_del_locked(struct sa_cache_node *n, struct sa_slab *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		n->partial = s->next;
	if (s->next)
		s->next->prev = s->prev;
	else
		n->partial_tail = s->prev;
	s->next = s->prev = NULL;
	s->on_partial = 0;
	n->nr_partial--;
}

/* Account for and publish the slabs NOWAIT paths left pending (lock held). */
/* The reserve slabs with a free object: a list of their own (on_partial == 2), which only
 * allocations that may use the reserve take from; a reserve slab that empties is released at
 * once, so its units are back in the reserve. */
static void reserve_add_locked(struct sa_cache_node *n, struct sa_slab *s)
{
	s->on_partial = 2;
	s->prev = NULL;
	s->next = n->reserve_slabs;
	if (n->reserve_slabs)
		n->reserve_slabs->prev = s;
	n->reserve_slabs = s;
}

static void reserve_del_locked(struct sa_cache_node *n, struct sa_slab *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		n->reserve_slabs = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
	s->on_partial = 0;
}

static void drain_pending_locked(struct sa_cache_node *n)
{
	if (!atomic_load_explicit(&n->pending, memory_order_relaxed))
		return;
	struct sa_slab *s = atomic_exchange_explicit(&n->pending, NULL, memory_order_acquire);
	while (s) {
		struct sa_slab *next = s->next;
		n->nr_slabs++;
		n->units += s->nunits;
		n->objs_out += s->inuse;
		if (s->flags & SA_SLAB_RESERVE) {
			if (s->inuse < s->nobjs)
				reserve_add_locked(n, s);
			else
				s->next = s->prev = NULL;
		} else {
			if (s->inuse == 0)
				n->nr_empty++;
			if (s->inuse < s->nobjs)
				partial_add_locked(n, s, true);
			else
				s->next = s->prev = NULL;
		}
		s = next;
	}
}

static void pending_push(struct sa_cache_node *n, struct sa_slab *s)
{
	struct sa_slab *head = atomic_load_explicit(&n->pending, memory_order_relaxed);
	do
		s->next = head;
	while (!atomic_compare_exchange_weak_explicit(&n->pending, &head, s, memory_order_release,
						      memory_order_relaxed));
}

static bool slab_in_reserve(const struct sa_slab *s)
{
	return sa_segment_is_reserve(
		(const struct sa_segment *)((uintptr_t)s & ~(SA_SEG_SIZE - 1)));
}

static _Atomic int pin_reported;

/* mlock [p, p + len) for SA_PIN; false (reported once per process) if the kernel refuses */
bool sa_pin_range(void *p, size_t len, sa_flags_t flags)
{
	if (mlock(p, len) == 0) {
		sa_gstat_add(SA_G_PINNED, 1);
		return true;
	}
	int err = errno;
	sa_gstat_add(SA_G_PIN_FAILS, 1);
	if (sa_warn(flags) && !atomic_exchange(&pin_reported, 1))
		sa_msg("sheafalloc: SA_PIN: mlock of %zu bytes failed (%s); pinned allocations "
		       "fail "
		       "while the limit on locked memory (RLIMIT_MEMLOCK, ulimit -l) is reached "
		       "(reported once)\n",
		       len, strerror(err));
	return false;
}

static bool pin_units(struct sa_slab *s, sa_flags_t flags)
{
	if (!sa_pin_range(sa_slab_base(s), (size_t)s->nunits * SA_UNIT_SIZE, flags))
		return false;
	s->flags |= SA_SLAB_PINNED;
	return true;
}

/* Bitmap, counts, constructed objects, records published: s becomes a slab of c. */
static void slab_init(struct sa_cache *c, struct sa_slab *s, uint64_t *bits)
{
	uint32_t nobjs = c->slab_objs;
	for (uint32_t w = 0; w < nobjs / 64; w++)
		bits[w] = ~0ull;
	if (nobjs % 64)
		bits[nobjs / 64] = (1ull << (nobjs % 64)) - 1;
	s->bits = bits;
	s->hint = 0;
	s->nobjs = nobjs;
	s->inuse = 0;
	s->next = s->prev = NULL;
	s->on_partial = 0;
	if (c->ctor) {
		/* construct all objects now, outside every lock */
		char *base = sa_slab_base(s);
		for (uint32_t i = 0; i < nobjs; i++)
			c->ctor(base + (size_t)i * c->stride);
	}
	if (c->debug)
		sa_debug_slab_init(c, s);
	for (unsigned i = 0; i < s->nunits; i++) {
		__atomic_store_n(&s[i].fresh, 0, __ATOMIC_RELAXED);
		if (c->flags & SA_CACHE_KEYED_)
			s[i].flags |= SA_SLAB_KEYED;
		__atomic_store_n(&s[i].cache, c, __ATOMIC_RELEASE);
	}
	sa_stat_add(c, SA_STAT_SLAB_ALLOC, 1);
}

static struct sa_slab *slab_new(struct sa_cache *c, int node, sa_flags_t flags)
{
	if ((c->flags & SA_CACHE_PINNED_) && !sa_may_syscall(flags))
		return NULL; /* mlock is a system call */
	/* a slab everyone takes objects from: never the reserve's units (the reserve's slabs are
	 * made by sa_slab_alloc_reserve, for the allocations that may use it) */
	struct sa_slab *s = sa_segment_alloc_units(node, c->slab_units, flags | SA_F_NORESERVE,
						   &c->bind_failures);
	if (!s)
		return NULL;
	uint64_t *bits = sa_meta_alloc_flags(meta_bytes(c, c->slab_objs), flags);
	if (!bits || ((c->flags & SA_CACHE_PINNED_) && !pin_units(s, flags))) {
		if (bits)
			sa_meta_free(bits, meta_bytes(c, c->slab_objs));
		sa_segment_unuse_units(s);
		return NULL;
	}
	slab_init(c, s, bits);
	return s;
}

/* The slab's memory goes back to the page layer: its bitmap, mlock, units. */
void sa_slab_release_after_gp(struct sa_cache *c, struct sa_slab *s)
{
	sa_stat_add(c, SA_STAT_SLAB_FREE, 1);
	if (!slab_in_reserve(s))
		sa_meta_free(s->bits, meta_bytes(c, s->nobjs));
	s->bits = NULL;
	if (s->flags & SA_SLAB_PINNED)
		munlock(sa_slab_base(s), (size_t)s->nunits * SA_UNIT_SIZE);
	sa_segment_free_units(s);
}

/* An emptied slab leaves its cache: at once, or (SA_CACHE_TYPESAFE_RCU) after a grace period,
 * so that a reader inside a read-side section never sees its memory change type; in a context
 * that may not wait, later (alloc/defer.c). */
static void slab_release(struct sa_cache *c, struct sa_slab *s)
{
	if (!sa_may_block(sa_flags_effective(0))) { /* meta and page locks, munlock: later */
		sa_defer(s, SA_DEFER_SLAB);
		return;
	}
	if (sa_rcu_slab_release(c, s))
		return;
	sa_slab_release_after_gp(c, s);
}

void sa_slab_release_deferred(struct sa_slab *head)
{
	slab_release(head->cache, head);
}

static bool node_lock(struct sa_cache_node *n, sa_flags_t flags)
{
	if (!sa_may_block(flags)) {
		if (pthread_mutex_trylock(&n->lock) != 0)
			return false;
	} else {
		pthread_mutex_lock(&n->lock);
	}
	drain_pending_locked(n);
	return true;
}

/*
 * The fresh marks (struct sa_slab, sa_free_keyed): objects leave a slab lowest index first
 * (take_locked and take_private take the lowest set bits), so every object below the highest
 * one ever handed out has been handed out, and none above it. last: the highest object of
 * this take. Written before the objects reach anyone, so a legitimate free (which the program
 * orders after the allocation) always finds its object below the mark.
 */
static void fresh_advance(struct sa_slab *s, const void *last)
{
	size_t off = (size_t)((const char *)last - sa_slab_base(s));
	unsigned u = (unsigned)(off >> SA_UNIT_SHIFT);
	uint16_t g = (uint16_t)(((off & (SA_UNIT_SIZE - 1)) >> 4) + 1);
	if (__atomic_load_n(&s[u].fresh, __ATOMIC_RELAXED) < g)
		__atomic_store_n(&s[u].fresh, g, __ATOMIC_RELAXED);
	while (u-- > 0 && __atomic_load_n(&s[u].fresh, __ATOMIC_RELAXED) != SA_FRESH_ALL)
		__atomic_store_n(&s[u].fresh, SA_FRESH_ALL, __ATOMIC_RELAXED);
}

/* Take up to want objects from s (locked), in address order from the hint on. */
static unsigned take_locked(struct sa_cache *c, struct sa_cache_node *n, struct sa_slab *s,
			    void **dst, unsigned want)
{
	unsigned got = 0;
	if (s->inuse == 0 && want) {
		n->nr_empty--;
		if (n->nr_empty < n->low_empty)
			n->low_empty = n->nr_empty;
	}
	char *base = sa_slab_base(s);
	size_t stride = c->stride;
	uint32_t words = (s->nobjs + 63) / 64, w = s->hint;
	while (got < want && w < words) {
		uint64_t b = s->bits[w];
		char *wbase = base + (size_t)w * 64 * stride;
		while (b && got < want) {
			dst[got++] = wbase + (size_t)__builtin_ctzll(b) * stride;
			b &= b - 1;
		}
		s->bits[w] = b;
		if (b)
			break;
		w++;
	}
	s->hint = w;
	s->inuse += got;
	n->objs_out += got;
	if (got)
		fresh_advance(s, dst[got - 1]);
	if (s->inuse == s->nobjs)
		partial_del_locked(n, s);
	return got;
}

/* Objects from a new slab nobody else can see yet (no lock): the first want of them. */
static unsigned take_private(struct sa_cache *c, struct sa_slab *s, void **dst, unsigned want)
{
	unsigned got = 0;
	char *base = sa_slab_base(s);
	for (uint32_t w = s->hint; got < want && w < (s->nobjs + 63) / 64; w++) {
		while (s->bits[w] && got < want) {
			dst[got++] = base + ((size_t)w * 64 + (size_t)__builtin_ctzll(s->bits[w])) *
						    c->stride;
			s->bits[w] &= s->bits[w] - 1;
		}
		if (!s->bits[w])
			s->hint = w + 1;
	}
	s->inuse += got;
	if (got)
		fresh_advance(s, dst[got - 1]);
	return got;
}

/*
 * Under SA_NOWAIT with the node lock busy: an allocation that may use the emergency reserve
 * makes a slab of its own (from free units or the reserve, no lock waited for), takes its
 * objects from it, and leaves the slab pending for the next lock holder to publish.
 */
static unsigned refill_private(struct sa_cache *c, int node, void **dst, unsigned want,
			       sa_flags_t flags)
{
	if (!sa_may_use_reserve(flags))
		return 0;
	struct sa_slab *s = slab_new(c, node, flags);
	if (!s)
		return 0; /* the caller's last resort takes one object of the reserve */
	unsigned got = take_private(c, s, dst, want);
	pending_push(c->nodes[node], s);
	return got;
}

/* A new slab of the reserve's units (no lock, no system call), or NULL. */
static struct sa_slab *reserve_slab_new(struct sa_cache *c)
{
	if ((c->flags & SA_CACHE_PINNED_) || c->debug)
		return NULL; /* locking it would be a system call; no room for owner records */
	struct sa_slab *s = sa_reserve_take_units(c->slab_units);
	if (!s)
		return NULL;
	if (!c->nodes[s->node]) { /* the cache has no record of the reserve's node */
		sa_segment_unuse_units(s);
		return NULL;
	}
	for (unsigned i = 0; i < c->slab_units; i++) {
		s[i].head = s;
		s[i].nunits = (uint16_t)c->slab_units;
	}
	s->flags = SA_SLAB_RESERVE;
	slab_init(c, s, sa_reserve_bitmap(s));
	return s;
}

/*
 * One object for an allocation that may use the emergency reserve (policy.h), after the
 * ordinary ways failed: from a reserve slab with a free object, else from a new one. Never
 * blocks: under SA_NOWAIT the node lock is only tried, and a new slab whose lock is busy goes
 * pending with the object already taken from it.
 */
void *sa_slab_alloc_reserve(struct sa_cache *c, int node, sa_flags_t flags)
{
	struct sa_cache_node *n = c->nodes[node];
	void *obj = NULL;
	if (node_lock(n, flags)) {
		struct sa_slab *s = n->reserve_slabs;
		if (s) {
			take_private(c, s, &obj, 1);
			n->objs_out++;
			if (s->inuse == s->nobjs)
				reserve_del_locked(n, s);
		}
		pthread_mutex_unlock(&n->lock);
		if (obj)
			return obj;
	}
	struct sa_slab *s = reserve_slab_new(c);
	if (!s)
		return NULL;
	/* the reserve lies on one node, maybe not the one asked for: the slab is filed (and its
	 * objects freed) under its own node, and the object is that node's memory */
	n = c->nodes[s->node];
	take_private(c, s, &obj, 1);
	if (!node_lock(n, flags)) {
		pending_push(n, s);
		return obj;
	}
	n->nr_slabs++;
	n->units += s->nunits;
	n->objs_out += s->inuse;
	if (s->inuse < s->nobjs)
		reserve_add_locked(n, s);
	pthread_mutex_unlock(&n->lock);
	return obj;
}

static unsigned refill(struct sa_cache *c, int node, void **dst, unsigned want, sa_flags_t flags)
{
	struct sa_cache_node *n = c->nodes[node];
	unsigned got = 0;
	if (!node_lock(n, flags))
		return refill_private(c, node, dst, want, flags);
	while (got < want) {
		struct sa_slab *s = n->partial;
		if (!s) {
			pthread_mutex_unlock(&n->lock);
			s = slab_new(c, node, flags);
			if (s && !node_lock(n, flags)) {
				/* NOWAIT and the lock is busy now: the new slab waits for the
				 * next lock holder, with what this call takes from it */
				got += take_private(c, s, dst + got, want - got);
				pending_push(n, s);
				return got;
			}
			if (!s) {
				if (got || !node_lock(n, flags))
					return got;
				if (!n->partial) /* nor did another thread make one meanwhile */
					break;
				continue;
			}
			n->nr_slabs++;
			n->units += s->nunits;
			n->nr_empty++;
			partial_add_locked(n, s, true);
			continue;
		}
		got += take_locked(c, n, s, dst + got, want - got);
	}
	pthread_mutex_unlock(&n->lock);
	return got;
}

unsigned sa_slab_refill(struct sa_cache *c, int node, void **dst, unsigned want, sa_flags_t flags)
{
	unsigned got = refill(c, node, dst, want, flags);
	if (SA_UNLIKELY(c->debug)) /* the objects are the caller's now: no lock needed */
		for (unsigned k = 0; k < got; k++) {
			struct sa_slab *h = sa_slab_of(dst[k])->head;
			sa_debug_on_alloc(c, h, obj_index(c, h, dst[k]));
		}
	return got;
}

/* The object a pointer points into (for a report of an interior pointer). */
uint32_t sa_debug_index(const struct sa_cache *c, const struct sa_slab *s, const void *p)
{
	uint64_t off = (uint64_t)((const char *)p - sa_slab_base(s));
	uint64_t i = off / c->stride;
	return i < s->nobjs ? (uint32_t)i : 0;
}

void *sa_slab_alloc_one(struct sa_cache *c, int node, sa_flags_t flags)
{
	void *obj = NULL;
	return sa_slab_refill(c, node, &obj, 1, flags) ? obj : NULL;
}

/* Return obj to its slab (locked); a slab to release is handed back through *rel. 0 if obj
 * was a bad free (reported, nothing changed). */
static int put_locked(struct sa_cache *c, struct sa_cache_node *n, void *obj, struct sa_slab **rel)
{
	struct sa_slab *s = sa_slab_of(obj)->head;
	uint32_t i = obj_index(c, s, obj);
	if (SA_UNLIKELY(i == UINT32_MAX)) {
		if (c->debug) /* the object it points into, with its owners */
			sa_debug_bad_free(c, s, sa_debug_index(c, s, obj), obj,
					  "free of a pointer that is not an object's start");
		else
			sa_cache_bad_free(c, obj,
					  "not the start of an object (found when flushed)");
		return 0;
	}
	uint64_t bit = 1ull << (i % 64);
	if (SA_UNLIKELY(s->bits[i / 64] & bit)) {
		if (c->debug)
			sa_debug_bad_free(c, s, i, obj, "double free");
		else
			sa_cache_bad_free(c, obj, "double free (found when flushed)");
		return 0;
	}
	if (c->debug)
		sa_debug_on_free(c, s, i);
	s->bits[i / 64] |= bit;
	if (i / 64 < s->hint)
		s->hint = i / 64;
	s->inuse--;
	n->objs_out--;
	if (s->flags & SA_SLAB_RESERVE) { /* back to its list, or (empty) to the reserve */
		if (s->inuse == 0) {
			if (s->on_partial)
				reserve_del_locked(n, s);
			n->nr_slabs--;
			n->units -= s->nunits;
			s->next = *rel;
			*rel = s;
		} else if (!s->on_partial) {
			reserve_add_locked(n, s);
		}
		return 1;
	}
	if (!s->on_partial)
		partial_add_locked(n, s, false);
	if (s->inuse == 0) {
		if (n->nr_empty >= SA_KEEP_EMPTY) {
			partial_del_locked(n, s);
			n->nr_slabs--;
			n->units -= s->nunits;
			s->next = *rel;
			*rel = s;
		} else {
			n->nr_empty++;
		}
	}
	return 1;
}

static void release_list(struct sa_cache *c, struct sa_slab *rel)
{
	while (rel) {
		struct sa_slab *next = rel->next;
		slab_release(c, rel);
		rel = next;
	}
}

/* Lock held (taken by the caller): objs back to their slabs; releases emptied ones after. */
static unsigned free_batch_locked(struct sa_cache *c, struct sa_cache_node *cn, void **objs,
				  unsigned n)
{
	struct sa_slab *rel = NULL;
	unsigned done = 0;
	for (unsigned i = 0; i < n; i++)
		done += (unsigned)put_locked(c, cn, objs[i], &rel);
	pthread_mutex_unlock(&cn->lock);
	release_list(c, rel);
	return done;
}

unsigned sa_slab_free_batch(struct sa_cache *c, int node, void **objs, unsigned n)
{
	struct sa_cache_node *cn = c->nodes[node];
	node_lock(cn, 0);
	return free_batch_locked(c, cn, objs, n);
}

/* Like sa_slab_free_batch, but only if the lock is free now: UINT32_MAX when it was busy. */
unsigned sa_slab_free_batch_try(struct sa_cache *c, int node, void **objs, unsigned n)
{
	struct sa_cache_node *cn = c->nodes[node];
	if (!node_lock(cn, SA_NOWAIT))
		return UINT32_MAX;
	return free_batch_locked(c, cn, objs, n);
}

bool sa_slab_free_one(struct sa_cache *c, void *obj)
{
	int node = sa_slab_of(obj)->node;
	if (!sa_may_block(sa_flags_effective(0))) {
		if (sa_slab_free_batch_try(c, node, &obj, 1) == UINT32_MAX) {
			sa_defer(obj, SA_DEFER_FREE); /* the lock is busy: free it later */
			return false;
		}
		return true;
	}
	sa_slab_free_batch(c, node, &obj, 1);
	return true;
}

/* Lock held: up to `count` empty slabs off the partial list onto *rel; returns how many. */
static unsigned take_empty_locked(struct sa_cache_node *n, unsigned count, struct sa_slab **rel)
{
	unsigned went = 0;
	for (struct sa_slab *s = n->partial; s && went < count;) {
		struct sa_slab *next = s->next;
		if (s->inuse == 0) {
			partial_del_locked(n, s);
			n->nr_empty--;
			n->nr_slabs--;
			n->units -= s->nunits;
			s->next = *rel;
			*rel = s;
			went++;
		}
		s = next;
	}
	return went;
}

void sa_slab_shrink(struct sa_cache *c, int node, unsigned keep_empty)
{
	struct sa_cache_node *n = c->nodes[node];
	struct sa_slab *rel = NULL;
	node_lock(n, 0);
	if (n->nr_empty > keep_empty)
		take_empty_locked(n, n->nr_empty - keep_empty, &rel);
	pthread_mutex_unlock(&n->lock);
	release_list(c, rel);
}

/* Decay (alloc/decay.c): release the empty slabs no allocation took since the last pass (the
 * node's low watermark of them; all: every empty slab), at most max; the watermark starts
 * afresh. Returns how many went. */
unsigned sa_slab_decay(struct sa_cache *c, int node, bool all, unsigned max)
{
	struct sa_cache_node *n = c->nodes[node];
	struct sa_slab *rel = NULL;
	node_lock(n, 0);
	unsigned go = all ? n->nr_empty : n->low_empty < n->nr_empty ? n->low_empty : n->nr_empty;
	unsigned went = take_empty_locked(n, go < max ? go : max, &rel);
	n->low_empty = n->nr_empty;
	pthread_mutex_unlock(&n->lock);
	release_list(c, rel);
	return went;
}

/* Is obj free in its slab's bitmap (a double free of an object that went back already)? */
bool sa_slab_holds(struct sa_cache *c, const void *obj)
{
	struct sa_slab *rec = sa_slab_of(obj);
	if (!rec || rec->cache != c)
		return false;
	struct sa_cache_node *n = c->nodes[rec->node];
	node_lock(n, 0);
	struct sa_slab *s = rec->head;
	uint32_t i = s ? obj_index(c, s, obj) : UINT32_MAX;
	bool free_bit = i != UINT32_MAX && (s->bits[i / 64] >> (i % 64)) & 1;
	pthread_mutex_unlock(&n->lock);
	return free_bit;
}

/* Slabs and units of c on node, with the pending slabs published first (statistics). */
void sa_slab_node_counts(struct sa_cache *c, int node, uint64_t *slabs, uint64_t *units)
{
	struct sa_cache_node *n = c->nodes[node];
	node_lock(n, 0);
	*slabs = n->nr_slabs;
	*units = n->units;
	pthread_mutex_unlock(&n->lock);
}

uint64_t sa_slab_inuse_racy(struct sa_cache *c)
{
	uint64_t t = 0;
	for (int i = 0; i < sa_nr_nodes; i++)
		if (c->nodes[i])
			t += __atomic_load_n(&c->nodes[i]->objs_out, __ATOMIC_RELAXED);
	return t;
}
