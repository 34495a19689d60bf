/*
 * alloc/slab.c — slabs of one cache on one node (docs/design.md §2).
 *
 * Owns: each cache node's partial list and every slab's freelist, bump pointer and inuse count.
 * cnode->lock (rank 4) protects them; it is never held across a constructor, an mmap or
 * madvise. A slab is on the partial list iff it has a free or never-carved object; a slab whose
 * inuse drops to 0 stays on the list while the node keeps at most SA_KEEP_EMPTY such slabs,
 * beyond that it is released to the page layer (after the lock is dropped).
 *
 * Carving: caches without a constructor carve lazily with a bump pointer (untouched pages cost
 * no RSS). Caches with a constructor construct every object of a new slab before the slab is
 * published, outside any lock, and keep the free link after the object (freeptr_off == the
 * object size rounded up), so a free object keeps its constructed state.
 */
#include <string.h>

#include "alloc/internal.h"

#define SA_KEEP_EMPTY 2

static void link_obj(struct sa_cache *c, void *obj, void *next)
{
	memcpy((char *)obj + c->freeptr_off, &next, sizeof(next));
}

static void *next_obj(struct sa_cache *c, void *obj)
{
	void *n;
	memcpy(&n, (char *)obj + c->freeptr_off, sizeof(n));
	return n;
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

static struct sa_slab *slab_new(struct sa_cache *c, int node, sa_flags_t flags)
{
	struct sa_slab *s = sa_segment_alloc_units(node, c->slab_units, flags, &c->bind_failures);
	if (!s)
		return NULL;
	char *base = sa_slab_base(s);
	s->nobjs = c->slab_objs;
	s->inuse = 0;
	s->freelist = NULL;
	s->next = s->prev = NULL;
	s->on_partial = 0;
	if (c->ctor) {
		/* construct all objects now, outside every lock; link them in address order */
		for (uint32_t i = c->slab_objs; i-- > 0;) {
			void *obj = base + (size_t)i * c->stride;
			c->ctor(obj);
			link_obj(c, obj, s->freelist);
			s->freelist = obj;
		}
		s->bump = NULL;
	} else {
		s->bump = base;
	}
	for (unsigned i = 0; i < s->nunits; i++)
		__atomic_store_n(&s[i].cache, c, __ATOMIC_RELEASE);
	sa_stat_add(c, SA_STAT_SLAB_ALLOC, 1);
	return s;
}

static void slab_release(struct sa_cache *c, struct sa_slab *s)
{
	sa_stat_add(c, SA_STAT_SLAB_FREE, 1);
	sa_segment_free_units(s);
}

static bool node_lock(struct sa_cache_node *n, sa_flags_t flags)
{
	if (flags & SA_NOWAIT)
		return pthread_mutex_trylock(&n->lock) == 0;
	pthread_mutex_lock(&n->lock);
	return true;
}

/* Take up to want objects from s (locked). */
static unsigned take_locked(struct sa_cache *c, struct sa_cache_node *n, struct sa_slab *s,
			    void **dst, unsigned want)
{
	unsigned got = 0;
	if (s->inuse == 0 && want)
		n->nr_empty--;
	while (got < want && s->freelist) {
		void *obj = s->freelist;
		s->freelist = next_obj(c, obj);
		dst[got++] = obj;
	}
	if (s->bump) {
		char *end = sa_slab_base(s) + (size_t)s->nobjs * c->stride;
		while (got < want && s->bump < end) {
			dst[got++] = s->bump;
			s->bump += c->stride;
		}
		if (s->bump >= end)
			s->bump = NULL;
	}
	s->inuse += got;
	n->objs_out += got;
	if (!s->freelist && !s->bump)
		partial_del_locked(n, s);
	return got;
}

unsigned sa_slab_refill(struct sa_cache *c, int node, void **dst, unsigned want, sa_flags_t flags)
{
	struct sa_cache_node *n = c->nodes[node];
	unsigned got = 0;
	if (!node_lock(n, flags))
		return 0;
	while (got < want) {
		struct sa_slab *s = n->partial;
		if (!s) {
			pthread_mutex_unlock(&n->lock);
			s = slab_new(c, node, flags);
			if (!node_lock(n, flags)) {
				if (s)
					slab_release(c, s);
				return got;
			}
			if (!s)
				break;
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

void *sa_slab_alloc_one(struct sa_cache *c, int node, sa_flags_t flags)
{
	void *obj = NULL;
	return sa_slab_refill(c, node, &obj, 1, flags) ? obj : NULL;
}

/* Return obj to its slab (locked); a slab to release is handed back through *rel. */
static void put_locked(struct sa_cache *c, struct sa_cache_node *n, void *obj, struct sa_slab **rel)
{
	struct sa_slab *s = sa_slab_of(obj)->head;
	link_obj(c, obj, s->freelist);
	s->freelist = obj;
	s->inuse--;
	n->objs_out--;
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
}

static void release_list(struct sa_cache *c, struct sa_slab *rel)
{
	while (rel) {
		struct sa_slab *next = rel->next;
		slab_release(c, rel);
		rel = next;
	}
}

void sa_slab_free_batch(struct sa_cache *c, int node, void **objs, unsigned n)
{
	struct sa_cache_node *cn = c->nodes[node];
	struct sa_slab *rel = NULL;
	pthread_mutex_lock(&cn->lock);
	for (unsigned i = 0; i < n; i++)
		put_locked(c, cn, objs[i], &rel);
	pthread_mutex_unlock(&cn->lock);
	release_list(c, rel);
}

void sa_slab_free_one(struct sa_cache *c, void *obj)
{
	int node = sa_slab_of(obj)->node;
	sa_slab_free_batch(c, node, &obj, 1);
}

void sa_slab_shrink(struct sa_cache *c, int node, unsigned keep_empty)
{
	struct sa_cache_node *n = c->nodes[node];
	struct sa_slab *rel = NULL;
	pthread_mutex_lock(&n->lock);
	struct sa_slab *s = n->partial;
	while (s && n->nr_empty > keep_empty) {
		struct sa_slab *next = s->next;
		if (s->inuse == 0) {
			partial_del_locked(n, s);
			n->nr_empty--;
			n->nr_slabs--;
			n->units -= s->nunits;
			s->next = rel;
			rel = s;
		}
		s = next;
	}
	pthread_mutex_unlock(&n->lock);
	release_list(c, rel);
}

uint64_t sa_slab_inuse_racy(struct sa_cache *c)
{
	uint64_t t = 0;
	for (int i = 0; i < sa_nr_nodes; i++)
		if (c->nodes[i])
			t += __atomic_load_n(&c->nodes[i]->objs_out, __ATOMIC_RELAXED);
	return t;
}
