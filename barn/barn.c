/*
 * barn/barn.c — per-cache, per-node stores of full and empty sheaves (docs/design.md §4).
 *
 * Owns: struct sa_barn's two lists. barn->lock (rank 3) protects both lists and both counts;
 * it is held only for the list operation itself, never across a slab or sheaf operation.
 * Counts are read without the lock for limit pre-checks (sa_barn_nr_*_racy): a stale count
 * lets a list overshoot its limit by a sheaf or two, which is harmless (the kernel does the
 * same). The full list holds sheaves with size > 0 (a returned prefilled sheaf may be partial);
 * the empty list holds sheaves with size == 0. Under SA_NOWAIT the lock is only tried.
 *
 * A mutex rather than liburcu's lock-free stack: a barn operation happens once per
 * sheaf_capacity fast-path operations and needs a bounded count next to the list, which a
 * lock-free stack would have to keep separately (and racily) anyway.
 */
#include "alloc/internal.h"

void sa_barn_init(struct sa_barn *b)
{
	pthread_mutex_init(&b->lock, NULL);
	b->full = b->empty = NULL;
	b->nr_full = b->nr_empty = 0;
}

static bool barn_lock(struct sa_barn *b, sa_flags_t flags)
{
	if (flags & SA_NOWAIT)
		return pthread_mutex_trylock(&b->lock) == 0;
	pthread_mutex_lock(&b->lock);
	return true;
}

static struct sa_sheaf *pop_locked(struct sa_sheaf **list, unsigned *nr)
{
	struct sa_sheaf *s = *list;
	if (s) {
		*list = s->next;
		s->next = NULL;
		__atomic_store_n(nr, *nr - 1, __ATOMIC_RELAXED);
	}
	return s;
}

struct sa_sheaf *sa_barn_get_full(struct sa_barn *b, sa_flags_t flags)
{
	if (sa_barn_nr_full_racy(b) == 0 || !barn_lock(b, flags))
		return NULL;
	struct sa_sheaf *s = pop_locked(&b->full, &b->nr_full);
	if (b->nr_full < b->low_full)
		b->low_full = b->nr_full;
	pthread_mutex_unlock(&b->lock);
	return s;
}

/* Decay (alloc/decay.c): the full sheaves no refill needed since the last pass, three quarters
 * of them rounded up (all: every full sheaf), at most max, chained by next; the watermark
 * starts afresh (what is left over counts as unused again if nothing takes it). */
struct sa_sheaf *sa_barn_take_unused(struct sa_barn *b, bool all, unsigned max)
{
	if (sa_barn_nr_full_racy(b) == 0)
		return NULL;
	pthread_mutex_lock(&b->lock);
	unsigned low = b->low_full < b->nr_full ? b->low_full : b->nr_full;
	unsigned n = all ? b->nr_full : (low * 3 + 3) / 4;
	if (n > max)
		n = max;
	struct sa_sheaf *out = NULL;
	for (unsigned i = 0; i < n; i++) {
		struct sa_sheaf *s = pop_locked(&b->full, &b->nr_full);
		s->next = out;
		out = s;
	}
	b->low_full = b->nr_full;
	pthread_mutex_unlock(&b->lock);
	return out;
}

struct sa_sheaf *sa_barn_get_empty(struct sa_barn *b, sa_flags_t flags)
{
	if (sa_barn_nr_empty_racy(b) == 0 || !barn_lock(b, flags))
		return NULL;
	struct sa_sheaf *s = pop_locked(&b->empty, &b->nr_empty);
	pthread_mutex_unlock(&b->lock);
	return s;
}

void sa_barn_put_full(struct sa_barn *b, struct sa_sheaf *s)
{
	pthread_mutex_lock(&b->lock);
	s->next = b->full;
	b->full = s;
	__atomic_store_n(&b->nr_full, b->nr_full + 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&b->lock);
}

void sa_barn_put_empty(struct sa_barn *b, struct sa_sheaf *s)
{
	pthread_mutex_lock(&b->lock);
	s->next = b->empty;
	b->empty = s;
	__atomic_store_n(&b->nr_empty, b->nr_empty + 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&b->lock);
}

struct sa_sheaf *sa_barn_take_all(struct sa_barn *b)
{
	pthread_mutex_lock(&b->lock);
	struct sa_sheaf *all = b->full, *e = b->empty;
	if (all) {
		struct sa_sheaf *t = all;
		while (t->next)
			t = t->next;
		t->next = e;
	} else {
		all = e;
	}
	b->full = b->empty = NULL;
	__atomic_store_n(&b->nr_full, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&b->nr_empty, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&b->lock);
	return all;
}

/* Is obj in a sheaf of one of c's barns? (a double-free check: rare, takes each barn's lock) */
bool sa_barn_holds(struct sa_cache *c, const void *obj)
{
	bool found = false;
	for (int n = 0; n < sa_nr_nodes && !found; n++) {
		struct sa_barn *b = &c->nodes[n]->barn;
		pthread_mutex_lock(&b->lock);
		for (struct sa_sheaf *s = b->full; s && !found; s = s->next)
			for (uint32_t i = 0; i < s->size && !found; i++)
				found = s->objects[i] == obj;
		pthread_mutex_unlock(&b->lock);
	}
	return found;
}

bool sa_barn_put_trylock(struct sa_barn *b, struct sa_sheaf *s)
{
	if (pthread_mutex_trylock(&b->lock) != 0)
		return false;
	if (s->size) {
		s->next = b->full;
		b->full = s;
		__atomic_store_n(&b->nr_full, b->nr_full + 1, __ATOMIC_RELAXED);
	} else {
		s->next = b->empty;
		b->empty = s;
		__atomic_store_n(&b->nr_empty, b->nr_empty + 1, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&b->lock);
	return true;
}
