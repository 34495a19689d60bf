/*
 * sheaf/sheaf.c — sheaf objects and the guaranteed-allocation API (docs/design.md §5).
 *
 * Owns: creating, filling, flushing and disposing of sheaves that are not installed in a slot,
 * and sa_sheaf_prefill / sa_sheaf_alloc / sa_sheaf_refill / sa_sheaf_return / sa_sheaf_size.
 * Every function here works on a sheaf the caller owns (taken out of a slot or barn, or
 * prefilled); none takes a lock of its own except through the barn, slab and meta layers.
 *
 * Guarantee: a sheaf returned by sa_sheaf_prefill(c, f, n) holds at least n objects, all
 * carved and constructed, and is owned by the caller alone; sa_sheaf_alloc only pops from it,
 * so the next n calls succeed with no lock, no system call and no failure, whatever scope or
 * limit is in force then.
 *
 * Flags: prefill, refill and return run with the call's flags merged with the scope's
 * (alloc/scope.h). In a context that may not wait, a sheaf they cannot place without waiting
 * goes onto the cache's deferred stack (sa_sheaf_dispose_flags) instead of being flushed or
 * freed. SA_NOFAIL makes a prefill wait for memory (alloc/reclaim.c) instead of failing.
 * SA_PIN prefills from the cache's pinned companion (alloc/cache.c); refill and return find the
 * companion from the sheaf.
 */
#include <errno.h>
#include <string.h>

#include "alloc/scope.h"
#include "sheaf/pcs_inline.h"

/* capacity 0: objects[0] is the guard, so a push sees it full and a pop sees it empty */
struct sa_sheaf sa_sheaf_sentinel = {.state = 0,
				     .capacity = 0,
				     .node = -1,
				     .guard_lo = SA_SHEAF_GUARD,
				     .objects = {SA_SHEAF_GUARD}};

struct sa_sheaf *sa_sheaf_new(struct sa_cache *c, unsigned capacity, int node, sa_flags_t flags)
{
	struct sa_sheaf *s = sa_meta_alloc_flags(SA_SHEAF_BYTES(capacity), flags);
	if (!s)
		return NULL;
	s->capacity = capacity;
	s->guard_lo = SA_SHEAF_GUARD;
	s->objects[capacity] = SA_SHEAF_GUARD;
	s->node = node;
	s->cache = c;
	if (capacity != c->capacity)
		s->flags |= SA_SHEAF_OVERSIZE;
	sa_stat_add(c, SA_STAT_SHEAF_NEW, 1);
	return s;
}

void sa_sheaf_free(struct sa_cache *c, struct sa_sheaf *s)
{
	if (s == &sa_sheaf_sentinel)
		return;
	sa_stat_add(c, SA_STAT_SHEAF_FREED, 1);
	sa_meta_free(s, SA_SHEAF_BYTES(s->capacity));
}

/* Refill s from its node's slabs up to `upto` objects; returns how many were added. */
unsigned sa_sheaf_fill(struct sa_cache *c, struct sa_sheaf *s, unsigned upto, sa_flags_t flags)
{
	if (upto > s->capacity)
		upto = s->capacity;
	if (s->size >= upto)
		return 0;
	unsigned got = sa_slab_refill(c, s->node, &s->objects[s->size], upto - s->size, flags);
#ifdef SA_TSAN
	/* objects fresh from a slab will be popped in sections: give their pops an edge */
	for (uint32_t i = s->size; i < s->size + got; i++)
		SA_TSAN_RELEASE(s->objects[i]);
#endif
	s->size += got;
	if (got) {
		sa_stat_add(c, SA_STAT_REFILL, 1);
		sa_stat_add(c, SA_STAT_REFILL_OBJECTS, got);
	}
	return got;
}

/* Refill s to its capacity, as far as the slabs (and flags) allow. */
static void fill_full(struct sa_cache *c, struct sa_sheaf *s, sa_flags_t flags)
{
	while (s->size < s->capacity && sa_sheaf_fill(c, s, s->capacity, flags))
		;
}

void sa_sheaf_flush(struct sa_cache *c, struct sa_sheaf *s)
{
	if (s->size == 0)
		return;
#ifdef SA_TSAN
	/* the objects were pushed in rseq sections TSan cannot see: take over their release */
	for (uint32_t i = 0; i < s->size; i++)
		SA_TSAN_ACQUIRE(s->objects[i]);
#endif
	unsigned done = sa_slab_free_batch(c, s->node, s->objects, s->size);
	sa_stat_add(c, SA_STAT_FLUSH, 1);
	sa_stat_add(c, SA_STAT_FLUSH_OBJECTS, done);
	s->size = 0;
}

/*
 * Under SA_NOWAIT a sheaf must be placed without waiting: its barn's lock is only tried, and if
 * it is busy the sheaf goes onto the cache's deferred stack (a lock-free push), which the next
 * slow path that may wait empties.
 */
void sa_sheaf_dispose_flags(struct sa_cache *c, struct sa_sheaf *s, sa_flags_t flags)
{
	if (!(flags & SA_NOWAIT)) {
		sa_sheaf_dispose(c, s);
		return;
	}
	if (s == &sa_sheaf_sentinel)
		return;
	s->flags &= ~SA_SHEAF_PREFILLED;
	if (!(s->flags & SA_SHEAF_OVERSIZE) && sa_barn_put_trylock(&c->nodes[s->node]->barn, s))
		return;
	atomic_fetch_add_explicit(&c->deferred_objs, s->size, memory_order_relaxed);
	atomic_fetch_add(&sa_deferred_sheaves, 1);
	struct sa_sheaf *head = atomic_load_explicit(&c->deferred, memory_order_relaxed);
	do
		s->next = head;
	while (!atomic_compare_exchange_weak_explicit(&c->deferred, &head, s, memory_order_release,
						      memory_order_relaxed));
}

_Atomic size_t sa_deferred_sheaves;

/* Empty c's deferred stack: each sheaf disposed of under flags (SA_NOWAIT, the end of a NOWAIT
 * scope, alloc/defer.c: its barn lock only tried; a sheaf whose barn is busy, or an oversize one,
 * which needs a flush, is parked again). */
void sa_sheaf_deferred_run(struct sa_cache *c, sa_flags_t flags)
{
	if (!atomic_load_explicit(&c->deferred, memory_order_relaxed))
		return;
	struct sa_sheaf *s = atomic_exchange_explicit(&c->deferred, NULL, memory_order_acquire);
	while (s) {
		struct sa_sheaf *next = s->next;
		s->next = NULL;
		atomic_fetch_sub_explicit(&c->deferred_objs, s->size, memory_order_relaxed);
		atomic_fetch_sub(&sa_deferred_sheaves, 1);
		sa_sheaf_dispose_flags(c, s, flags);
		s = next;
	}
}

/* Give an owned, uninstalled sheaf a home: the barn of its node (within limits) or freed. */
void sa_sheaf_dispose(struct sa_cache *c, struct sa_sheaf *s)
{
	if (s == &sa_sheaf_sentinel)
		return;
	s->flags &= ~SA_SHEAF_PREFILLED;
	if (s->flags & SA_SHEAF_OVERSIZE) {
		sa_sheaf_flush(c, s);
		sa_sheaf_free(c, s);
		return;
	}
	struct sa_barn *b = &c->nodes[s->node]->barn;
	if (s->size > 0) {
		/* full sheaves are worth keeping; undo paths may exceed the limit a little */
		if (sa_barn_nr_full_racy(b) < c->barn_max_full + 1) {
			sa_barn_put_full(b, s);
			return;
		}
		sa_sheaf_flush(c, s);
	}
	if (sa_barn_nr_empty_racy(b) < c->barn_max_empty) {
		sa_barn_put_empty(b, s);
		return;
	}
	sa_sheaf_free(c, s);
}

/* ------------------------------------------------------------------ public API -------------- */
/* A sheaf that could not be filled: back (flushed) to where it came from, or, in a context
 * that may not wait, onto the deferred stack for the next slow path to flush. */
static void unfilled(struct sa_cache *c, struct sa_sheaf *s, sa_flags_t flags)
{
	if (!sa_may_block(flags)) {
		sa_sheaf_dispose_flags(c, s, flags);
		return;
	}
	sa_sheaf_flush(c, s);
	if (s->flags & SA_SHEAF_OVERSIZE)
		sa_sheaf_free(c, s);
	else
		sa_sheaf_dispose(c, s);
}

static struct sa_sheaf *prefill_oversize(struct sa_cache *c, sa_flags_t flags, unsigned count)
{
	int node = sa_pcs_current_node(c);
	struct sa_sheaf *s = sa_sheaf_new(c, count, node, flags);
	if (!s)
		return NULL;
	s->flags |= SA_SHEAF_OVERSIZE;
	while (s->size < count && sa_sheaf_fill(c, s, count, flags))
		;
	if (s->size < count) {
		unfilled(c, s, flags);
		return NULL;
	}
	sa_stat_add(c, SA_STAT_PREFILL_OVERSIZE, 1);
	return s;
}

/* The cache a sheaf of c's really belongs to: c, or c's pinned companion. */
static struct sa_cache *owner(struct sa_cache *c, const struct sa_sheaf *s)
{
	return s->cache && s->cache->parent == c ? s->cache : c;
}

static struct sa_sheaf *prefill(struct sa_cache *c, sa_flags_t flags, unsigned count);

SA_API struct sa_sheaf *sa_sheaf_prefill(struct sa_cache *c, sa_flags_t flags, unsigned count)
{
	if (!c || count == 0) {
		errno = EINVAL;
		return NULL;
	}
	flags = sa_flags_effective(flags);
	if (sa_may_block(flags))
		sa_deferred_run();
	if (flags & SA_PIN) {
		struct sa_cache *p = sa_cache_pinned_of(c, flags); /* made here at the first use */
		if (!p) {
			errno = ENOMEM;
			return NULL;
		}
		c = p;
	}
	struct sa_sheaf *s = prefill(c, flags, count);
	for (unsigned round = 0; !s && sa_must_not_fail(flags);) {
		sa_nofail_wait(flags, c->name, (size_t)count * c->size, &round);
		s = prefill(c, flags, count);
	}
	return s;
}

static struct sa_sheaf *prefill(struct sa_cache *c, sa_flags_t flags, unsigned count)
{
	struct sa_sheaf *s;
	if (count > c->capacity) {
		s = prefill_oversize(c, flags, count);
	} else {
		s = sa_pcs_take_spare(c);
		if (!s) {
			int node = sa_pcs_current_node(c);
			struct sa_barn *b = &c->nodes[node]->barn;
			s = sa_barn_get_full(b, flags);
			if (s)
				sa_stat_add(c, SA_STAT_BARN_GET, 1);
			else
				s = sa_barn_get_empty(b, flags);
			if (!s)
				s = sa_sheaf_new(c, c->capacity, node, flags);
		}
		if (s && s->size < count) {
			sa_stat_add(c, SA_STAT_PREFILL_SLOW, 1);
			fill_full(c, s, flags);
			if (s->size < count) {
				unfilled(c, s, flags);
				s = NULL;
			}
		} else if (s) {
			sa_stat_add(c, SA_STAT_PREFILL_FAST, 1);
		}
	}
	if (!s) {
		sa_stat_add(c, SA_STAT_ALLOC_FAIL, 1);
		if (sa_warn(flags) && sa_may_block(flags) && !sa_must_not_fail(flags))
			sa_msg("sheafalloc: cache '%s': cannot prefill a sheaf of %u objects\n",
			       c->name, count);
		errno = ENOMEM;
		return NULL;
	}
	s->flags |= SA_SHEAF_PREFILLED;
	s->taken = 0;
	return s;
}

SA_API void *sa_sheaf_alloc(struct sa_cache *c, sa_flags_t flags, struct sa_sheaf *sheaf)
{
	if (SA_UNLIKELY(!sheaf || sheaf->size == 0))
		return NULL;
	void *obj = sheaf->objects[--sheaf->size];
	SA_TSAN_ACQUIRE(obj);
	sheaf->taken++;
	sa_flags_t sf = sa_scope_flags(); /* a ZERO scope zeroes these too */
	if (SA_UNLIKELY(sf))
		sa_scope_count_alloc(sf);
	if ((flags | sf) & SA_ZERO)
		memset(obj, 0, c->size);
	return obj;
}

static void sheaf_account_taken(struct sa_cache *c, struct sa_sheaf *s)
{
	if (s->taken) {
		sa_stat_add(c, SA_STAT_SHEAF_ALLOC, s->taken);
		s->taken = 0;
	}
}

SA_API int sa_sheaf_refill(struct sa_cache *c, sa_flags_t flags, struct sa_sheaf **sheafp,
			   unsigned count)
{
	if (!c || !sheafp || !*sheafp)
		return -EINVAL;
	struct sa_sheaf *s = *sheafp;
	if (s->size >= count)
		return 0;
	flags = sa_flags_effective(flags);
	c = owner(c, s);
	if (count <= s->capacity) {
		fill_full(c, s, flags);
		return s->size >= count ? 0 : -ENOMEM;
	}
	struct sa_sheaf *n = sa_sheaf_prefill(c, flags | SA_NOWARN, count);
	if (!n)
		return -ENOMEM;
	sa_sheaf_return(c, flags, s);
	*sheafp = n;
	return 0;
}

SA_API void sa_sheaf_return(struct sa_cache *c, sa_flags_t flags, struct sa_sheaf *s)
{
	if (!c || !s)
		return;
	flags = sa_flags_effective(flags);
	c = owner(c, s);
	sheaf_account_taken(c, s);
	s->flags &= ~SA_SHEAF_PREFILLED;
	if (!(s->flags & SA_SHEAF_OVERSIZE) && !c->debug) { /* debugged: every object back */
		if (sa_pcs_offer_spare(c, s) == 0) {
			sa_stat_add(c, SA_STAT_RETURN_FAST, 1);
			return;
		}
		sa_stat_add(c, SA_STAT_RETURN_SLOW, 1);
		struct sa_barn *b = &c->nodes[s->node]->barn;
		if (sa_barn_nr_full_racy(b) < c->barn_max_full) {
			fill_full(c, s, flags);
			if (s->size == s->capacity && sa_may_block(flags)) {
				sa_barn_put_full(b, s);
				sa_stat_add(c, SA_STAT_BARN_PUT, 1);
				return;
			}
		}
	} else {
		sa_stat_add(c, SA_STAT_RETURN_SLOW, 1);
	}
	if (!sa_may_block(flags)) { /* the barn if its lock is free, else deferred */
		sa_sheaf_dispose_flags(c, s, flags);
		return;
	}
	sa_sheaf_flush(c, s);
	sa_sheaf_free(c, s);
}

SA_API unsigned sa_sheaf_size(const struct sa_sheaf *sheaf)
{
	return sheaf ? sheaf->size : 0;
}
