/*
 * alloc/cache.c — slab caches: create, destroy, alloc, free, bulk, shrink (docs/design.md §2-§4).
 *
 * Owns: struct sa_cache and the public sa_cache_* entry points. The fast paths here are one
 * rseq section each (sheaf/pcs_inline.h); every miss is one call into sheaf/pcs.c.
 * A cache's geometry (stride, slab size, capacity) is fixed at creation and read without locks.
 * The cache list is protected by sa_caches_lock (rank 1).
 *
 * Free validates the pointer before it touches anything: it must lie in one of our segments
 * (sa_segmap), in a unit that belongs to this cache (or to its SA_PIN companion). Anything else
 * is reported and ignored: never pushed into a sheaf.
 *
 * Scopes: sa_cache_alloc reads the thread's scope flags (one thread-local load) next to the
 * call's; with neither SA_ZERO nor SA_PIN nor any scope it pops from this CPU's sheaf at once,
 * otherwise sa_cache_alloc_special counts the scoped allocation, picks the pinned companion
 * for SA_PIN, zeroes for SA_ZERO, and the slow paths get the effective flags.
 * SA_PIN: a cache's pinned objects come from a companion cache (same geometry and constructor,
 * name "<name> (pinned)") whose slabs are mlock'ed (alloc/slab.c), created at the first pinned
 * allocation; sa_cache_free and sa_free accept its objects for the parent.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc/cache_inline.h"

static unsigned auto_capacity(size_t stride)
{
	/* SA_SHEAF_BYTES(capacity) (header, capacity * 8, guard) fills a power-of-two metadata block: 2 KiB, 1 KiB, 512, 256, 128.
	 * docs/design.md §7 has the measurements behind these. */
	if (stride <= 128)
		return 248;
	if (stride <= 512)
		return 120;
	if (stride <= 2048)
		return 56;
	if (stride <= 8192)
		return 24;
	return 8;
}

struct sa_cache *sa_cache_alloc_struct(void)
{
	struct sa_cache *c =
		sa_meta_alloc(sizeof(*c) + sizeof(struct sa_pcs_slot) * (size_t)sa_nr_cpus);
	if (!c)
		return NULL;
	c->slots = SA_CACHE_SLOTS(c);
	for (int cpu = 0; cpu < sa_nr_cpus; cpu++) {
		c->slots[cpu].sh[0] = c->slots[cpu].sh[1] = c->slots[cpu].rcu = &sa_sheaf_sentinel;
		c->slots[cpu].top = sa_top_encode(&sa_sheaf_sentinel, 0, 0);
	}
	return c;
}

void sa_cache_free_struct(struct sa_cache *c)
{
	sa_meta_free(c, sizeof(*c) + sizeof(struct sa_pcs_slot) * (size_t)sa_nr_cpus);
}

static int is_pow2(size_t x)
{
	return x && !(x & (x - 1));
}

static struct sa_cache *cache_create(const char *name, size_t size,
				     const struct sa_cache_args *args, unsigned internal);

SA_API struct sa_cache *sa_cache_create(const char *name, size_t size,
					const struct sa_cache_args *args)
{
	return cache_create(name, size, args, 0);
}

struct sa_cache *sa_cache_create_internal(const char *name, size_t size,
					  const struct sa_cache_args *args, unsigned internal)
{
	return cache_create(name, size, args, internal);
}

static struct sa_cache *cache_create(const char *name, size_t size,
				     const struct sa_cache_args *args, unsigned internal)
{
	static const struct sa_cache_args defaults;
	sa_ensure_init();
	if (!sa_may_block(sa_flags_effective(0))) {
		errno = EWOULDBLOCK; /* metadata and the cache list: locks, maybe a mapping */
		return NULL;
	}
	if (!args)
		args = &defaults;
	if (!name)
		name = "(unnamed)";
	if (size == 0 || size > SA_CACHE_MAX_SIZE) {
		sa_msg("sheafalloc: sa_cache_create('%s'): object size %zu is out of range "
		       "1..%lu\n",
		       name, size, SA_CACHE_MAX_SIZE);
		errno = EINVAL;
		return NULL;
	}
	if (args->align && (!is_pow2(args->align) || args->align > SA_CACHE_MAX_ALIGN)) {
		sa_msg("sheafalloc: sa_cache_create('%s'): alignment %zu is not a power of two up "
		       "to %lu\n",
		       name, args->align, SA_CACHE_MAX_ALIGN);
		errno = EINVAL;
		return NULL;
	}
	if (args->sheaf_capacity > 65536) {
		sa_msg("sheafalloc: sa_cache_create('%s'): sheaf capacity %u is above 65536\n",
		       name, args->sheaf_capacity);
		errno = EINVAL;
		return NULL;
	}
	if (args->flags & ~SA_CACHE_PUBLIC_FLAGS) {
		sa_msg("sheafalloc: sa_cache_create('%s'): unknown flags %#x\n", name, args->flags);
		errno = EINVAL;
		return NULL;
	}
	size_t align = args->align ? args->align : 8;
	if (align < 8)
		align = 8;
	if ((args->flags & SA_CACHE_HWCACHE_ALIGN) && align < SA_CACHELINE &&
	    size > SA_CACHELINE / 2)
		align = SA_CACHELINE;
	/* nothing is written into a free object (slabs keep bitmaps), so a constructed or
	 * SA_CACHE_TYPESAFE_RCU object needs no room for a link */
	unsigned debug =
		(args->flags & SA_CACHE_DEBUG) ? SA_DEBUG_CACHE : sa_opt.debug & SA_DEBUG_CACHE;
	/* a red zone of at least 16 bytes after every object (debug Z) */
	size_t room = (debug & SA_DEBUG_REDZONE) ? size + 16 : size;
	size_t stride = (room + align - 1) & ~(align - 1);
	size_t units = (stride * 8 + SA_UNIT_SIZE - 1) / SA_UNIT_SIZE;
	if (units > 32)
		units = (stride * 2 + SA_UNIT_SIZE - 1) / SA_UNIT_SIZE;
	if (units < 1)
		units = 1;
	if (units > SA_UNITS_PER_SEG - 1) {
		errno = EINVAL;
		return NULL;
	}
	unsigned capacity = args->sheaf_capacity    ? args->sheaf_capacity
			    : sa_opt.sheaf_capacity ? sa_opt.sheaf_capacity
						    : auto_capacity(stride);

	struct sa_cache *c = sa_cache_alloc_struct();
	if (!c) {
		errno = ENOMEM;
		return NULL;
	}
	for (int cpu = 0; cpu < sa_nr_cpus; cpu++)
		c->slots[cpu].node = sa_topo_cpu_node(cpu);
	for (int i = 0; i < sa_nr_nodes; i++) {
		c->nodes[i] = sa_meta_alloc(sizeof(struct sa_cache_node));
		if (!c->nodes[i]) {
			for (int k = 0; k < i; k++)
				sa_meta_free(c->nodes[k], sizeof(struct sa_cache_node));
			sa_cache_free_struct(c);
			errno = ENOMEM;
			return NULL;
		}
		pthread_mutex_init(&c->nodes[i]->lock, NULL);
		sa_barn_init(&c->nodes[i]->barn);
	}
	pthread_mutex_init(&c->drain_lock, NULL);
	c->size = (uint32_t)size;
	c->stride = (uint32_t)stride;
	c->align = (uint32_t)align;
	c->capacity = capacity;
	c->stride_recip = ((1ull << SA_RECIP_SHIFT) + stride - 1) / stride;
	c->debug = debug;
	/* the key would disturb poisoning, and the debug checks are stronger anyway; free_check=
	 * light: no key (a malloc still clears the word it would be in: harmless) */
	if (debug || !sa_opt.free_check_key)
		internal &= ~SA_CACHE_KEYED_;
	c->flags = args->flags | internal;
	sa_rcu_cache_init(c, args->rcu);
	c->ctor = args->ctor;
	c->slab_units = (uint32_t)units;
	c->slab_objs = (uint32_t)(units * SA_UNIT_SIZE / stride);
	c->barn_max_full = sa_opt.barn_max_full;
	c->barn_max_empty = sa_opt.barn_max_empty;
	strncpy(c->name, name, sizeof(c->name) - 1);
	pthread_mutex_lock(&sa_caches_lock);
	c->next = sa_caches;
	sa_caches = c;
	pthread_mutex_unlock(&sa_caches_lock);
	return c;
}

SA_COLD void sa_cache_bad_free(struct sa_cache *c, const void *obj, const char *why)
{
	if (!obj)
		return;
	sa_ensure_init(); /* the options (bad_free) even when this is the first call */
	sa_msg("sheafalloc: free of %p%s%s%s: %s; %s\n", obj, c ? " to cache '" : "",
	       c ? c->name : "", c ? "'" : "", why, sa_opt.bad_free_abort ? "aborting" : "ignored");
	if (sa_opt.bad_free_abort)
		abort();
}

/* The last resort of an allocation: one object straight from the slabs of node. SA_NOFAIL
 * waits here (reclaiming) until it gets one. */
static void *slab_or_reserve(struct sa_cache *c, sa_flags_t flags, int node)
{
	void *obj = sa_slab_alloc_one(c, node, flags);
	if (!obj && sa_may_use_reserve(flags))
		obj = sa_slab_alloc_reserve(c, node, flags);
	return obj;
}

void *sa_cache_alloc_slab_direct(struct sa_cache *c, sa_flags_t flags, int node)
{
	void *obj = slab_or_reserve(c, flags, node);
	for (unsigned round = 0; !obj && sa_must_not_fail(flags);) {
		sa_nofail_wait(flags, c->name, c->size, &round);
		obj = slab_or_reserve(c, flags, node);
	}
	if (SA_LIKELY(obj != NULL)) {
		sa_stat_add(c, SA_STAT_ALLOC_SLOW, 1);
		return obj;
	}
	sa_stat_add(c, SA_STAT_ALLOC_FAIL, 1);
	if (!sa_may_block(flags))
		sa_gstat_add(SA_G_NOWAIT_FAILS, 1);
	if (sa_warn(flags) && sa_may_block(flags))
		sa_msg("sheafalloc: cache '%s': out of memory\n", c->name);
	errno = ENOMEM;
	return NULL;
}

/* serializes the making of pinned companions; taken before sa_caches_lock (rank 0b) */
static pthread_mutex_t pinned_lock = PTHREAD_MUTEX_INITIALIZER;

void sa_cache_pinned_atfork(int phase)
{
	if (phase == 0)
		pthread_mutex_lock(&pinned_lock);
	else
		pthread_mutex_unlock(&pinned_lock);
}

/* c's SA_PIN companion, made at the first use (not in a context that may not wait: NULL). */
SA_NOINLINE struct sa_cache *sa_cache_pinned_of(struct sa_cache *c, sa_flags_t flags)
{
	if (c->flags & SA_CACHE_PINNED_)
		return c;
	struct sa_cache *p = atomic_load_explicit(&c->pinned, memory_order_acquire);
	if (p || !sa_may_block(flags))
		return p;
	pthread_mutex_lock(&pinned_lock);
	p = atomic_load_explicit(&c->pinned, memory_order_relaxed);
	if (!p) {
		char name[80];
		snprintf(name, sizeof(name), "%s (pinned)", c->name);
		struct sa_cache_args a = {.align = c->align,
					  .sheaf_capacity = c->capacity,
					  .ctor = c->ctor,
					  .flags = c->flags & SA_CACHE_PUBLIC_FLAGS,
					  .rcu = c->rcu};
		p = cache_create(name, c->size, &a,
				 SA_CACHE_PINNED_ | (c->flags & SA_CACHE_KEYED_));
		if (p) {
			p->parent = c;
			p->barn_max_full = c->barn_max_full;
			p->barn_max_empty = c->barn_max_empty;
			atomic_store_explicit(&c->pinned, p, memory_order_release);
		}
	}
	pthread_mutex_unlock(&pinned_lock);
	return p;
}

static SA_COLD void *pinned_missing(struct sa_cache *c, sa_flags_t flags)
{
	sa_stat_add(c, SA_STAT_ALLOC_FAIL, 1);
	if (sa_warn(flags) && sa_may_block(flags))
		sa_msg("sheafalloc: cache '%s': no pinned companion cache\n", c->name);
	errno = ENOMEM;
	return NULL;
}

/* Off the plain fast path: a scope is open, or the call asks for SA_ZERO or SA_PIN; drop: the
 * flags to ignore (the caller's or the scope's). */
static inline void *alloc_special(struct sa_cache *c, sa_flags_t flags, sa_flags_t drop)
{
	sa_flags_t sf = sa_scope_flags();
	if (sf) {
		sa_scope_count_alloc(sf);
		flags |= sf;
	}
	flags &= ~drop;
	if (flags & SA_NOIO)
		flags |= SA_NOFS;
	if (SA_UNLIKELY(flags & SA_PIN)) {
		struct sa_cache *p = sa_cache_pinned_of(c, flags);
		if (!p)
			return pinned_missing(c, flags);
		c = p;
	}
	int why = 0;
	void *obj = sa_pcs_pop_fast(c, &why);
	if (!obj)
		return sa_pcs_alloc_slow(c, flags, why); /* zeroes and clears the key too */
	if (c->flags & SA_CACHE_KEYED_) /* a malloc class: its free key goes (sa_free_keyed) */
		((uint64_t *)obj)[1] = 0;
	if (flags & SA_ZERO)
		memset(obj, 0, c->size);
	return obj;
}

SA_NOINLINE void *sa_cache_alloc_special(struct sa_cache *c, sa_flags_t flags)
{
	return alloc_special(c, flags, 0);
}

/* An allocation that is not zeroed even inside a SA_ZERO scope: for the library's own
 * allocations that may be freed again at once (a failed bulk, a pinned companion's first
 * object), since a free object of a constructed cache keeps its constructed state. */
void *sa_cache_alloc_nozero(struct sa_cache *c, sa_flags_t flags)
{
	return alloc_special(c, flags, SA_ZERO);
}

SA_API SA_HOT_ALIGN void *sa_cache_alloc(struct sa_cache *c, sa_flags_t flags)
{
	return sa_cache_alloc_fast(c, flags, false);
}

SA_API SA_HOT_ALIGN void sa_cache_free(struct sa_cache *c, void *obj)
{
	struct sa_slab *s = sa_slab_of(obj);
	struct sa_cache *oc = s ? s->cache : NULL;
	if (SA_UNLIKELY(oc != c)) {
		if (!oc || !c || oc->parent != c) {
			sa_cache_bad_free(c, obj,
					  s ? "not an object of this cache"
					    : "not a sheafalloc object");
			return;
		}
		c = oc;		      /* an object of c's pinned companion */
	} else if (SA_UNLIKELY(!c)) { /* c NULL, and obj not ours (or NULL, or not in use) */
		sa_cache_bad_free(c, obj,
				  s ? "not an object of this cache" : "not a sheafalloc object");
		return;
	}
	/* No key check here (sa_free_keyed): the keyed caches are the malloc classes, which no
	 * program can name, and the library frees their objects with sa_free. */
	int why = sa_pcs_push_fast(c, obj, s->node);
	if (SA_UNLIKELY(why)) {
		sa_caller = __builtin_return_address(0);
		sa_pcs_free_slow(c, obj, s->node, why);
	}
}

/*
 * A freed object of a keyed cache (the malloc classes: sa_free_keyed) already carried its key:
 * freed twice, unless the program happened to leave exactly that value there. Look for it where
 * a freed object can be: this cache's per-CPU sheaves, its barns, its slab's bitmap. Found, not
 * at an object's start, or at or past its unit's fresh mark (never handed out): reported.
 * Otherwise it is freed as usual.
 */
SA_COLD void sa_free_suspect(struct sa_cache *c, void *obj, struct sa_slab *s)
{
	if (((uintptr_t)obj & 15) || !sa_slab_obj_ok(c, s, obj)) {
		sa_cache_bad_free(c, obj, "not the start of an object");
		return;
	}
	if ((((uintptr_t)obj & (SA_UNIT_SIZE - 1)) >> 4) >=
	    __atomic_load_n(&s->fresh, __ATOMIC_RELAXED)) {
		sa_cache_bad_free(c, obj, "not an allocated block (never handed out)");
		return;
	}
	if (sa_pcs_holds_racy(c, obj) || sa_barn_holds(c, obj) || sa_slab_holds(c, obj)) {
		sa_cache_bad_free(c, obj, "double free (the object is free already)");
		return;
	}
	((uint64_t *)obj)[1] = sa_free_key ^ (uintptr_t)obj;
	int why = sa_pcs_push_fast(c, obj, s->node);
	if (why)
		sa_free_slow(c, obj, s, why);
}

/* sa_free of something that is no object now: out of line, so that sa_free needs no frame. */
static SA_COLD SA_NOINLINE void free_no_object(struct sa_slab *s, void *obj)
{
	if (s) /* our memory, but no block starts there now */
		sa_cache_bad_free(NULL, obj,
				  "not an allocated block (freed already, or never allocated)");
	else if (obj && !sa_free_unknown(obj))
		sa_cache_bad_free(NULL, obj, "not a sheafalloc object");
}

SA_API SA_HOT_ALIGN void sa_free(void *obj)
{
	struct sa_slab *s = sa_slab_of(obj);
	struct sa_cache *c = s ? s->cache : NULL;
	/* keyed: the malloc classes, the usual caller's (free) */
	if (SA_LIKELY(c != NULL) && SA_LIKELY(s->flags & SA_SLAB_KEYED) &&
	    !sa_free_keyed(c, obj, s))
		return;
	if (SA_UNLIKELY(!c)) {
		free_no_object(s, obj);
		return;
	}
	int why = sa_pcs_push_fast(c, obj, s->node);
	if (SA_UNLIKELY(why)) {
		sa_caller = __builtin_return_address(0);
		sa_free_slow(c, obj, s, why);
	}
}

/* A topology with more nodes was loaded after c was created (start-up): give c those nodes. */
void sa_cache_topology_changed(struct sa_cache *c)
{
	for (int i = 1; i < sa_nr_nodes; i++) {
		if (c->nodes[i])
			continue;
		struct sa_cache_node *n = sa_meta_alloc(sizeof(*n));
		if (!n) {
			sa_msg("sheafalloc: cache '%s': no memory for node %d; its CPUs use node "
			       "0\n",
			       c->name, i);
			continue;
		}
		pthread_mutex_init(&n->lock, NULL);
		sa_barn_init(&n->barn);
		__atomic_store_n(&c->nodes[i], n, __ATOMIC_RELEASE);
	}
	for (int cpu = 0; cpu < sa_nr_cpus; cpu++) {
		int node = sa_topo_cpu_node(cpu);
		__atomic_store_n(&c->slots[cpu].node, c->nodes[node] ? node : 0, __ATOMIC_RELEASE);
	}
}

SA_API void *sa_cache_alloc_node(struct sa_cache *c, sa_flags_t flags, int node)
{
	if (node < 0 || (sa_flags_effective(flags) & SA_PIN))
		return sa_cache_alloc(c, flags); /* pinned objects: from this CPU's node */
	if (node == sa_pcs_current_node(c) && node < sa_nr_nodes) {
		/* not zeroed before it is kept: a free object keeps its constructed state */
		sa_flags_t zero = (flags | sa_scope_flags()) & SA_ZERO;
		void *obj = zero ? sa_cache_alloc_nozero(c, flags) : sa_cache_alloc(c, flags);
		struct sa_slab *s = obj ? sa_slab_of(obj) : NULL;
		if (!s || s->node == node) {
			if (obj && zero)
				memset(obj, 0, c->size);
			return obj;
		}
		sa_cache_free(c, obj); /* migrated to another node meanwhile */
	}
	if (node >= sa_nr_nodes) {
		if (sa_warn(flags) && sa_may_syscall(sa_flags_effective(flags)))
			sa_msg("sheafalloc: sa_cache_alloc_node('%s'): no node %d (the topology "
			       "has "
			       "%d)\n",
			       c->name, node, sa_nr_nodes);
		errno = EINVAL;
		return NULL;
	}
	sa_stat_add(c, SA_STAT_ALLOC_NODE_MISMATCH, 1);
	sa_flags_t sf = sa_scope_flags();
	if (sf)
		sa_scope_count_alloc(sf);
	flags = sa_flags_effective(flags);
	void *obj = sa_cache_alloc_slab_direct(c, flags, node);
	if (obj && (flags & SA_ZERO))
		memset(obj, 0, c->size);
	return obj;
}

/*
 * All or nothing, like the kernel. Zeroing waits until every object is there: a failure frees
 * the objects taken so far, and a free object of a constructed cache must keep its constructed
 * state (a scope's SA_ZERO is dropped here for the same reason and applied at the end).
 */
SA_API size_t sa_cache_alloc_bulk(struct sa_cache *c, sa_flags_t flags, size_t n, void **objs)
{
	sa_flags_t zero = (flags | sa_scope_flags()) & SA_ZERO;
	sa_caller = __builtin_return_address(0);
	for (size_t i = 0; i < n; i++) {
		objs[i] = zero ? sa_cache_alloc_nozero(c, flags) : sa_cache_alloc(c, flags);
		if (SA_UNLIKELY(!objs[i])) {
			sa_cache_free_bulk(c, i, objs);
			return 0;
		}
	}
	if (zero)
		for (size_t i = 0; i < n; i++)
			memset(objs[i], 0, c->size);
	return n;
}

SA_API void sa_cache_free_bulk(struct sa_cache *c, size_t n, void **objs)
{
	for (size_t i = 0; i < n; i++)
		sa_cache_free(c, objs[i]);
}

/* Flush every sheaf of c (per-CPU and barns) to slabs and release empty slabs beyond keep. */
static void cache_flush_all(struct sa_cache *c, unsigned keep_empty)
{
	sa_sheaf_deferred_run(c, 0);
	sa_pcs_drain(c);
	for (int i = 0; i < sa_nr_nodes; i++) {
		struct sa_sheaf *s = sa_barn_take_all(&c->nodes[i]->barn);
		while (s) {
			struct sa_sheaf *next = s->next;
			sa_sheaf_flush(c, s);
			sa_sheaf_free(c, s);
			s = next;
		}
		sa_slab_shrink(c, i, keep_empty);
	}
}

SA_API int sa_cache_shrink(struct sa_cache *c)
{
	if (!c)
		return -EINVAL;
	if (!sa_may_block(sa_flags_effective(0)))
		return -EWOULDBLOCK; /* drains wait for locks and fence every CPU */
	cache_flush_all(c, 0);
	struct sa_cache *p = atomic_load_explicit(&c->pinned, memory_order_acquire);
	if (p)
		cache_flush_all(p, 0);
	return 0;
}

/* Bytes of free objects in c's per-CPU sheaves (racy: a reclaim's guess whether a drain of c
 * is worth its fence). */
size_t sa_cache_cached_bytes_racy(struct sa_cache *c)
{
	uint64_t a, f, cached;
	sa_pcs_stats_racy(c, &a, &f, &cached);
	return (size_t)cached * c->stride;
}

/* Reclaim's light pass: the barns' sheaves and the empty slabs, no per-CPU fence. */
void sa_cache_trim_barns(struct sa_cache *c)
{
	sa_sheaf_deferred_run(c, 0);
	for (int i = 0; i < sa_nr_nodes; i++) {
		struct sa_sheaf *s = sa_barn_take_all(&c->nodes[i]->barn);
		while (s) {
			struct sa_sheaf *next = s->next;
			sa_sheaf_flush(c, s);
			sa_sheaf_free(c, s);
			s = next;
		}
		sa_slab_shrink(c, i, 0);
	}
}

SA_API void sa_cache_destroy(struct sa_cache *c)
{
	if (!c)
		return;
	if (!sa_may_block(sa_flags_effective(0))) {
		sa_msg("sheafalloc: sa_cache_destroy('%s') inside a SA_NOWAIT scope: it waits for "
		       "locks and fences every CPU; not destroyed\n",
		       c->name);
		return;
	}
	struct sa_cache *pinned = atomic_load_explicit(&c->pinned, memory_order_acquire);
	if (pinned)
		sa_cache_destroy(pinned);
	pthread_mutex_lock(&sa_caches_lock);
	for (struct sa_cache **p = &sa_caches; *p; p = &(*p)->next) {
		if (*p == c) {
			*p = c->next;
			break;
		}
	}
	pthread_mutex_unlock(&sa_caches_lock);
	cache_flush_all(c, 0);
	if ((c->flags & SA_CACHE_TYPESAFE_RCU) || sa_cache_stat_racy(c, SA_STAT_RCU_SUBMITTED)) {
		/* the RCU thread may still hold its objects or slabs (the flush just submitted its
		 * rcu sheaves): let it finish with them before the cache goes */
		sa_rcu_barrier();
		cache_flush_all(c, 0); /* what came back after the grace period */
		sa_rcu_barrier();      /* typesafe slabs that flush emptied */
	}
	uint64_t live = sa_slab_inuse_racy(c);
	if (live) {
		/* objects still out there may be freed later: keep the cache and their slabs */
		sa_msg("sheafalloc: sa_cache_destroy: cache '%s' still has %llu object(s) in use; "
		       "their memory is kept\n",
		       c->name, (unsigned long long)live);
		return;
	}
	for (int i = 0; i < sa_nr_nodes; i++)
		sa_meta_free(c->nodes[i], sizeof(struct sa_cache_node));
	sa_cache_free_struct(c);
}

SA_API int sa_object_node(const void *obj)
{
	struct sa_slab *s = sa_slab_of(obj);
	if (!s || !__atomic_load_n(&s->cache, __ATOMIC_ACQUIRE))
		return -1;
	return s->node;
}

SA_API const char *sa_cache_name(const struct sa_cache *c)
{
	return c ? c->name : NULL;
}

SA_API size_t sa_cache_object_size(const struct sa_cache *c)
{
	return c ? (c->debug ? c->size : c->stride) : 0; /* a red zone is not usable */
}

SA_API unsigned sa_cache_sheaf_capacity(const struct sa_cache *c)
{
	return c ? c->capacity : 0;
}
