/*
 * alloc/stats.c — per-cache counters and their printing (docs/api.md "Statistics").
 *
 * Event counters are relaxed atomics bumped on slow paths; the fast paths' counts live in the
 * sheaves' op counters and are folded in by sheaf/pcs.c, or read racily from installed sheaves
 * here. While other threads run, a snapshot is approximate; at a quiescent point it is exact.
 * Printing formats into a stack buffer and writes, never allocates.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "alloc/scope.h"
#include "sheaf/pcs_inline.h"

static uint64_t ld(struct sa_cache *c, enum sa_stat_item i)
{
	return atomic_load_explicit(&c->stat[i], memory_order_relaxed);
}

SA_API int sa_cache_stats(struct sa_cache *c, struct sa_cache_stats *o)
{
	if (!c || !o) {
		errno = EINVAL;
		return -1;
	}
	memset(o, 0, sizeof(*o));
	uint64_t pa, pf, cached;
	sa_pcs_stats_racy(c, &pa, &pf, &cached);
	o->alloc_fast = ld(c, SA_STAT_ALLOC_FAST) + pa;
	o->alloc_slow = ld(c, SA_STAT_ALLOC_SLOW);
	o->free_fast = ld(c, SA_STAT_FREE_FAST) + pf;
	o->free_slow = ld(c, SA_STAT_FREE_SLOW);
	o->spare_swap_alloc = ld(c, SA_STAT_SPARE_SWAP_ALLOC);
	o->spare_swap_free = ld(c, SA_STAT_SPARE_SWAP_FREE);
	o->barn_get = ld(c, SA_STAT_BARN_GET);
	o->barn_get_fail = ld(c, SA_STAT_BARN_GET_FAIL);
	o->barn_put = ld(c, SA_STAT_BARN_PUT);
	o->barn_put_fail = ld(c, SA_STAT_BARN_PUT_FAIL);
	o->refills = ld(c, SA_STAT_REFILL);
	o->refill_objects = ld(c, SA_STAT_REFILL_OBJECTS);
	o->flushes = ld(c, SA_STAT_FLUSH);
	o->flush_objects = ld(c, SA_STAT_FLUSH_OBJECTS);
	o->sheaf_new = ld(c, SA_STAT_SHEAF_NEW);
	o->sheaf_freed = ld(c, SA_STAT_SHEAF_FREED);
	o->prefill_fast = ld(c, SA_STAT_PREFILL_FAST);
	o->prefill_slow = ld(c, SA_STAT_PREFILL_SLOW);
	o->prefill_oversize = ld(c, SA_STAT_PREFILL_OVERSIZE);
	o->return_fast = ld(c, SA_STAT_RETURN_FAST);
	o->return_slow = ld(c, SA_STAT_RETURN_SLOW);
	o->sheaf_alloc_objects = ld(c, SA_STAT_SHEAF_ALLOC);
	o->remote_free = ld(c, SA_STAT_REMOTE_FREE);
	o->alloc_node_mismatch = ld(c, SA_STAT_ALLOC_NODE_MISMATCH);
	o->alloc_fail = ld(c, SA_STAT_ALLOC_FAIL);
	o->slabs_allocated = ld(c, SA_STAT_SLAB_ALLOC);
	o->slabs_freed = ld(c, SA_STAT_SLAB_FREE);
	o->remote_fences = ld(c, SA_STAT_REMOTE_FENCE);
	o->bind_failures = atomic_load(&c->bind_failures);
	uint64_t units = 0;
	for (int i = 0; i < sa_nr_nodes; i++) {
		struct sa_cache_node *n = c->nodes[i];
		uint64_t ns, nu;
		sa_slab_node_counts(c, i, &ns, &nu); /* publishes pending slabs first */
		o->slabs += ns;
		units += nu;
		pthread_mutex_lock(&n->barn.lock);
		for (struct sa_sheaf *s = n->barn.full; s; s = s->next)
			cached += s->size;
		pthread_mutex_unlock(&n->barn.lock);
	}
	cached += atomic_load_explicit(&c->deferred_objs, memory_order_relaxed);
	o->bytes_held = units * SA_UNIT_SIZE;
	uint64_t out = o->alloc_fast + o->alloc_slow + o->sheaf_alloc_objects;
	uint64_t in = o->free_fast + o->free_slow;
	o->objects_in_use = out > in ? out - in : 0;
	o->objects_cached = cached;
	o->object_size = c->stride;
	o->sheaf_capacity = c->capacity;
	o->rcu_queued = ld(c, SA_STAT_RCU_QUEUED);
	o->rcu_sheaves = ld(c, SA_STAT_RCU_SUBMITTED);
	o->rcu_callbacks = ld(c, SA_STAT_RCU_CALLBACKS);
	o->rcu_freed = ld(c, SA_STAT_RCU_FREED);
	o->rcu_deferred = ld(c, SA_STAT_RCU_DEFERRED);
	o->rcu_slabs_delayed = ld(c, SA_STAT_RCU_SLABS_DELAYED);
	o->rcu_throttled = ld(c, SA_STAT_RCU_THROTTLED);
	o->rcu_waiting = (o->rcu_queued > o->rcu_freed ? o->rcu_queued - o->rcu_freed : 0) +
			 sa_pcs_rcu_waiting_racy(c);
	return 0;
}

size_t sa_limit_get(void);

SA_API int sa_scope_stats(struct sa_scope_stats *o)
{
	if (!o) {
		errno = EINVAL;
		return -1;
	}
	sa_ensure_init();
	memset(o, 0, sizeof(*o));
	o->nowait_allocs = sa_scope_allocs_under(0);
	o->nofs_allocs = sa_scope_allocs_under(1);
	o->noio_allocs = sa_scope_allocs_under(2);
	o->noreclaim_allocs = sa_scope_allocs_under(3);
	o->zero_allocs = sa_scope_allocs_under(5);
	o->nowarn_allocs = sa_scope_allocs_under(6);
	o->high_allocs = sa_scope_allocs_under(7);
	o->pin_allocs = sa_scope_allocs_under(8);
#define G(i) atomic_load_explicit(&sa_gstat[i], memory_order_relaxed)
	o->scope_saves = sa_scope_saves_counted();
	o->scopes_refused = G(SA_G_SCOPE_REFUSED);
	o->scopes_out_of_order = G(SA_G_SCOPE_OUT_OF_ORDER);
	o->scope_misuse = G(SA_G_SCOPE_MISUSE);
	o->scope_swaps = sa_scope_swaps_counted();
	o->limit_hits = G(SA_G_LIMIT_HITS);
	o->reclaim_rounds = G(SA_G_RECLAIM_ROUNDS);
	o->reclaim_bytes = G(SA_G_RECLAIM_BYTES);
	o->shrinker_calls_fs = G(SA_G_SHRINK_FS);
	o->shrinker_calls_io = G(SA_G_SHRINK_IO);
	o->shrinker_calls_other = G(SA_G_SHRINK_OTHER);
	o->shrinker_skipped = G(SA_G_SHRINK_SKIPPED);
	o->shrinker_freed = G(SA_G_SHRINK_FREED);
	o->reserve_allocs = G(SA_G_RESERVE_ALLOCS);
	o->nofail_retries = G(SA_G_NOFAIL_RETRIES);
	o->nowait_failures = G(SA_G_NOWAIT_FAILS);
	o->deferred_frees = G(SA_G_DEFERRED);
	o->pinned_slabs = G(SA_G_PINNED);
	o->pin_failures = G(SA_G_PIN_FAILS);
#undef G
	o->limit = sa_limit_get();
	o->held = sa_memory_held();
	size_t rb, rf;
	sa_reserve_counts(&rb, &rf);
	o->reserve_bytes = rb;
	o->reserve_free = rf;
	o->deferred_now = sa_deferred_count();
	return 0;
}

struct outbuf {
	int fd;
	size_t n;
	char b[4096];
};

__attribute__((format(printf, 2, 3))) static void out(struct outbuf *o, const char *fmt, ...)
{
	va_list ap;
	if (o->n > sizeof(o->b) - 512) {
		ssize_t w = write(o->fd, o->b, o->n);
		(void)w;
		o->n = 0;
	}
	va_start(ap, fmt);
	int k = vsnprintf(o->b + o->n, sizeof(o->b) - o->n, fmt, ap);
	va_end(ap);
	if (k > 0)
		o->n += (size_t)k < sizeof(o->b) - o->n ? (size_t)k : sizeof(o->b) - o->n - 1;
}

static void out_flush(struct outbuf *o)
{
	if (o->n) {
		ssize_t w = write(o->fd, o->b, o->n);
		(void)w;
	}
	o->n = 0;
}

/* clang-format off */
#define STAT_FIELDS(X) \
	X(alloc_fast) X(alloc_slow) X(free_fast) X(free_slow) X(spare_swap_alloc) \
	X(spare_swap_free) X(barn_get) X(barn_get_fail) X(barn_put) X(barn_put_fail) \
	X(refills) X(refill_objects) X(flushes) X(flush_objects) X(sheaf_new) X(sheaf_freed) \
	X(prefill_fast) X(prefill_slow) X(prefill_oversize) X(return_fast) X(return_slow) \
	X(sheaf_alloc_objects) X(remote_free) X(alloc_node_mismatch) X(alloc_fail) \
	X(slabs_allocated) X(slabs_freed) X(remote_fences) X(bind_failures) X(slabs) \
	X(objects_in_use) X(bytes_held) X(objects_cached) X(rcu_queued) X(rcu_sheaves) \
	X(rcu_callbacks) X(rcu_freed) X(rcu_deferred) X(rcu_slabs_delayed) X(rcu_waiting) \
	X(rcu_throttled)
#define SCOPE_FIELDS(X) \
	X(nowait_allocs) X(nofs_allocs) X(noio_allocs) X(noreclaim_allocs) X(zero_allocs) \
	X(nowarn_allocs) X(high_allocs) X(pin_allocs) X(scope_saves) X(scopes_refused) \
	X(scopes_out_of_order) X(scope_misuse) X(scope_swaps) X(limit_hits) X(reclaim_rounds) \
	X(reclaim_bytes) X(shrinker_calls_fs) X(shrinker_calls_io) X(shrinker_calls_other) \
	X(shrinker_skipped) X(shrinker_freed) X(reserve_allocs) X(nofail_retries) \
	X(nowait_failures) X(deferred_frees) X(pinned_slabs) X(pin_failures) X(limit) X(held) \
	X(reserve_bytes) X(reserve_free) X(deferred_now)
/* clang-format on */

static void print_all(int fd, int json)
{
	sa_ensure_init();
	struct outbuf o = {.fd = fd};
	if (json)
		out(&o, "{\"percpu_mode\": \"%s\", \"numa_nodes\": %d, \"caches\": [",
		    sa_percpu_mode(), sa_nr_nodes);
	else
		out(&o, "sheafalloc statistics: per-CPU mode %s, %d NUMA node(s), %d CPU slot(s)\n",
		    sa_percpu_mode(), sa_nr_nodes, sa_nr_cpus);
	pthread_mutex_lock(&sa_caches_lock);
	int first = 1;
	for (struct sa_cache *c = sa_caches; c; c = c->next) {
		struct sa_cache_stats s;
		sa_cache_stats(c, &s);
		if (json) {
			out(&o,
			    "%s\n  {\"name\": \"%s\", \"object_size\": %u, \"sheaf_capacity\": %u",
			    first ? "" : ",", c->name, s.object_size, s.sheaf_capacity);
#define X(f) out(&o, ", \"" #f "\": %llu", (unsigned long long)s.f);
			STAT_FIELDS(X)
#undef X
			out(&o, "}");
		} else {
			out(&o, "cache %s: object %u B, sheaf capacity %u\n", c->name,
			    s.object_size, s.sheaf_capacity);
#define X(f) out(&o, "  %-20s %llu\n", #f, (unsigned long long)s.f);
			STAT_FIELDS(X)
#undef X
		}
		first = 0;
	}
	pthread_mutex_unlock(&sa_caches_lock);
	struct sa_scope_stats g;
	sa_scope_stats(&g);
	if (json) {
		out(&o, "\n], \"scopes\": {");
		const char *sep = "";
#define X(f)                                                                 \
	do {                                                                 \
		out(&o, "%s\"" #f "\": %llu", sep, (unsigned long long)g.f); \
		sep = ", ";                                                  \
	} while (0);
		SCOPE_FIELDS(X)
#undef X
		out(&o, "}}\n");
	} else {
		out(&o, "scopes, limit and reclaim:\n");
#define X(f) out(&o, "  %-20s %llu\n", #f, (unsigned long long)g.f);
		SCOPE_FIELDS(X)
#undef X
	}
	out_flush(&o);
}

/* write(2) is a cancellation point and print_all holds sa_caches_lock across it */
SA_API void sa_stats_print(int fd)
{
	int nc = sa_nocancel_begin();
	print_all(fd, 0);
	sa_nocancel_end(nc);
}

SA_API void sa_stats_print_json(int fd)
{
	int nc = sa_nocancel_begin();
	print_all(fd, 1);
	sa_nocancel_end(nc);
}

void sa_stats_at_exit(void)
{
	print_all(2, sa_opt.stats_print == 2);
}
