/*
 * sheafalloc — a NUMA-aware userspace slab allocator with per-CPU sheaves.
 *
 * The one public header. Its names are the contract in shared/docs/CONTRACT.md:
 * add freely, rename nothing. docs/api.md describes every function.
 */
#ifndef SHEAFALLOC_H
#define SHEAFALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHEAFALLOC_VERSION_MAJOR 0
#define SHEAFALLOC_VERSION_MINOR 1

/* ---- allocation flags (per call) ---------------------------------------------------------- */
typedef unsigned int sa_flags_t;

#define SA_DEFAULT   0u	       /* may wait, may map memory, may reclaim */
#define SA_NOWAIT    (1u << 0) /* never blocks, no system call; may return NULL */
#define SA_NOFS	     (1u << 1) /* reclaim may not call SA_SHRINK_FS shrinkers */
#define SA_NOIO	     (1u << 2) /* reclaim may not call SA_SHRINK_IO or SA_SHRINK_FS shrinkers */
#define SA_NORECLAIM (1u << 3) /* no reclaim on this path; may use the emergency reserve */
#define SA_NOFAIL    (1u << 4) /* never returns NULL; not scopable */
#define SA_ZERO	     (1u << 5) /* the object comes back zeroed */
#define SA_NOWARN    (1u << 6) /* no message on failure */
#define SA_HIGH	     (1u << 7) /* may dip into the emergency reserve */
#define SA_PIN	     (1u << 8) /* memory from mlock'ed slabs */
#define SA_FLAGS_ALL ((1u << 9) - 1)

sa_flags_t sa_current_flags(sa_flags_t flags);

/* ---- scopes (thread-local, strictly nested) -------------------------------------------------- */
#define SA_SCOPE_INVALID 0xffffffffu

unsigned sa_memalloc_noio_save(void);
void sa_memalloc_noio_restore(unsigned cookie);
unsigned sa_memalloc_nofs_save(void);
void sa_memalloc_nofs_restore(unsigned cookie);
unsigned sa_memalloc_noreclaim_save(void);
void sa_memalloc_noreclaim_restore(unsigned cookie);
unsigned sa_memalloc_pin_save(void);
void sa_memalloc_pin_restore(unsigned cookie);
unsigned sa_memalloc_nowait_save(void);
void sa_memalloc_nowait_restore(unsigned cookie);
unsigned sa_memalloc_flags_save(sa_flags_t flags);
void sa_memalloc_flags_restore(unsigned cookie);
sa_flags_t sa_memalloc_flags(void);

/*
 * Scopes that follow coroutines: a scheduler gives each coroutine (fiber, green thread, task) a
 * struct sa_scope_state, initialized with sa_scope_state_init, and makes it current with
 * sa_scope_swap on every switch into the coroutine (and back, with the value sa_scope_swap
 * returned). Scopes saved and restored inside the coroutine then live in its own state, so two
 * coroutines interleaved on one thread never restore each other's scopes. NULL stands for the
 * thread's own state. The state is plain memory: a coroutine may resume on another thread.
 */
struct sa_scope_state {
	uint64_t opaque[32];
};
void sa_scope_state_init(struct sa_scope_state *s);
struct sa_scope_state *sa_scope_swap(struct sa_scope_state *s);	 /* returns the previous one */
sa_flags_t sa_scope_state_flags(const struct sa_scope_state *s); /* the flags its scopes hold */

/*
 * A scope tied to a block (GCC and Clang): the flags hold inside the block and are restored on
 * every way out of it: the end, return, goto, break and continue (which leave the block, as
 * with any loop-based macro). Not for code that suspends inside the block (a coroutine yield):
 * use sa_scope_swap there.
 *     SA_SCOPE(SA_NOFS) { ... }
 */
#if defined(__GNUC__) || defined(__clang__)
static inline void sa_scope_end_(unsigned *cookie)
{
	sa_memalloc_flags_restore(*cookie);
}
#define SA_SCOPE_CAT2_(a, b) a##b
#define SA_SCOPE_CAT_(a, b)  SA_SCOPE_CAT2_(a, b)
#define SA_SCOPE(flags)                                                                   \
	for (unsigned SA_SCOPE_CAT_(sa_scope_cookie_, __LINE__) __attribute__((           \
		     cleanup(sa_scope_end_), unused)) = sa_memalloc_flags_save(flags),    \
					     SA_SCOPE_CAT_(sa_scope_once_, __LINE__) = 1; \
	     SA_SCOPE_CAT_(sa_scope_once_, __LINE__); SA_SCOPE_CAT_(sa_scope_once_, __LINE__) = 0)
#endif

/* ---- reclaim: memory limit and shrinkers -------------------------------------------------- */
#define SA_SHRINK_FS (1u << 0)
#define SA_SHRINK_IO (1u << 1)

int sa_set_limit(size_t bytes);
size_t sa_memory_held(void);
void sa_trim(void);

struct sa_shrinker {
	const char *name;
	unsigned classes;
	size_t (*count)(void *arg);
	size_t (*scan)(void *arg, size_t nr);
	void *arg;
};
int sa_shrinker_register(struct sa_shrinker *s);
void sa_shrinker_unregister(struct sa_shrinker *s);

/* ---- caches --------------------------------------------------------------------------------- */
#define SA_CACHE_TYPESAFE_RCU \
	(1u << 0) /* memory of freed objects stays of this type for RCU readers */
#define SA_CACHE_HWCACHE_ALIGN (1u << 1) /* align objects to the cache line */
#define SA_CACHE_DEBUG	       (1u << 2) /* sanity checks, red zones, poisoning for this cache */

struct rcu_flavor_struct;
struct sa_cache;
struct sa_sheaf;

struct sa_cache_args {
	size_t align;		 /* 0: natural alignment */
	unsigned sheaf_capacity; /* 0: chosen from the object size */
	void (*ctor)(void *obj); /* run when an object is first carved from a slab */
	unsigned flags;		 /* SA_CACHE_* */
	const struct rcu_flavor_struct
		*rcu; /* liburcu flavor for sa_free_rcu; NULL: urcu_memb_flavor */
};

struct sa_cache *sa_cache_create(const char *name, size_t size, const struct sa_cache_args *args);
void sa_cache_destroy(struct sa_cache *c);
void *sa_cache_alloc(struct sa_cache *c, sa_flags_t flags);
void *sa_cache_alloc_node(struct sa_cache *c, sa_flags_t flags, int node);
void sa_cache_free(struct sa_cache *c, void *obj);
size_t sa_cache_alloc_bulk(struct sa_cache *c, sa_flags_t flags, size_t n, void **objs);
void sa_cache_free_bulk(struct sa_cache *c, size_t n, void **objs);
int sa_cache_shrink(struct sa_cache *c);
void sa_free(void *obj);
void sa_free_rcu(void *obj);
void sa_rcu_barrier(void);

/* Additions beyond the contract's minimum. */
const char *sa_cache_name(const struct sa_cache *c);
size_t sa_cache_object_size(const struct sa_cache *c); /* usable bytes per object */
unsigned sa_cache_sheaf_capacity(const struct sa_cache *c);

/* ---- sheaves: guaranteed allocation -------------------------------------------------------- */
struct sa_sheaf *sa_sheaf_prefill(struct sa_cache *c, sa_flags_t flags, unsigned count);
void *sa_sheaf_alloc(struct sa_cache *c, sa_flags_t flags, struct sa_sheaf *sheaf);
int sa_sheaf_refill(struct sa_cache *c, sa_flags_t flags, struct sa_sheaf **sheafp, unsigned count);
void sa_sheaf_return(struct sa_cache *c, sa_flags_t flags, struct sa_sheaf *sheaf);
unsigned sa_sheaf_size(const struct sa_sheaf *sheaf);

/* ---- malloc family ------------------------------------------------------------------------- */
void *sa_malloc(size_t size);
void *sa_malloc_flags(size_t size, sa_flags_t flags);
void *sa_calloc(size_t nmemb, size_t size);
void *sa_realloc(void *ptr, size_t size);
void *sa_reallocarray(void *ptr, size_t nmemb, size_t size);
void *sa_aligned_alloc(size_t align, size_t size);
int sa_posix_memalign(void **memptr, size_t align, size_t size);
void *sa_memalign(size_t align, size_t size);
size_t sa_malloc_usable_size(void *ptr);

/* ---- NUMA, topology, introspection ------------------------------------------------------------ */
int sa_numa_nodes(void);
int sa_object_node(const void *obj);
const char *sa_percpu_mode(void);

/* Counters of one cache. Event counters only grow; the last three are gauges.
 * docs/api.md explains each; alloc_fast + alloc_slow + sheaf_alloc_objects is every object
 * handed out, free_fast + free_slow every object given back. */
struct sa_cache_stats {
	uint64_t alloc_fast; /* popped from this CPU's main sheaf */
	uint64_t alloc_slow; /* served straight from slabs (bypass, node mismatch, stopped slot) */
	uint64_t free_fast;  /* pushed to this CPU's main sheaf */
	uint64_t
		free_slow; /* freed straight to slabs (remote node, stopped slot, flush fallback) */
	uint64_t spare_swap_alloc;    /* main empty, spare had objects: swapped */
	uint64_t spare_swap_free;     /* main full, spare had room: swapped */
	uint64_t barn_get;	      /* full sheaf taken from the barn for an empty main */
	uint64_t barn_get_fail;	      /* the barn had no full sheaf */
	uint64_t barn_put;	      /* full sheaf given to the barn for an empty one */
	uint64_t barn_put_fail;	      /* the barn was at barn_max_full: flushed instead */
	uint64_t refills;	      /* sheaves refilled from slabs */
	uint64_t refill_objects;      /* objects moved from slabs into sheaves */
	uint64_t flushes;	      /* sheaves flushed to slabs */
	uint64_t flush_objects;	      /* objects moved from sheaves back to slabs */
	uint64_t sheaf_new;	      /* sheaf structures allocated */
	uint64_t sheaf_freed;	      /* sheaf structures freed */
	uint64_t prefill_fast;	      /* prefill served by the spare or a barn full sheaf */
	uint64_t prefill_slow;	      /* prefill needed a refill from slabs */
	uint64_t prefill_oversize;    /* prefill above the sheaf capacity */
	uint64_t return_fast;	      /* returned sheaf kept (spare or barn) */
	uint64_t return_slow;	      /* returned sheaf flushed and freed */
	uint64_t sheaf_alloc_objects; /* objects taken with sa_sheaf_alloc */
	uint64_t remote_free;	      /* objects of another node freed here (sent to their node) */
	uint64_t alloc_node_mismatch; /* sa_cache_alloc_node for a node other than this CPU's */
	uint64_t alloc_fail;	      /* allocations that returned NULL */
	uint64_t slabs_allocated;     /* slabs created */
	uint64_t slabs_freed;	      /* slabs given back to the page layer */
	uint64_t remote_fences;	      /* membarrier fences (or lock rounds) for remote slot work */
	uint64_t bind_failures;	      /* node memory bindings that failed (tolerated) */
	/* gauges */
	uint64_t slabs;		 /* slabs held now */
	uint64_t objects_in_use; /* handed out and not freed (allocs - frees) */
	uint64_t bytes_held;	 /* bytes of slab memory held */
	uint64_t objects_cached; /* free objects sitting in sheaves (per-CPU, barns) */
	uint32_t object_size;	 /* bytes between objects */
	uint32_t sheaf_capacity;
	/* sa_free_rcu (docs/design.md §13); large and huge blocks count in the smallest malloc
	 * class's cache, whose rcu sheaves carry them */
	uint64_t rcu_queued;	    /* objects submitted for a grace period (in rcu sheaves) */
	uint64_t rcu_sheaves;	    /* rcu sheaves submitted */
	uint64_t rcu_callbacks;	    /* rcu sheaves processed after their grace period */
	uint64_t rcu_freed;	    /* objects freed after their grace period */
	uint64_t rcu_deferred;	    /* sa_free_rcu calls a NOWAIT context had to put off */
	uint64_t rcu_slabs_delayed; /* SA_CACHE_TYPESAFE_RCU: slab releases held for a GP */
	uint64_t rcu_waiting;	    /* gauge: objects queued and not freed yet, per-CPU too */
	uint64_t rcu_throttled;	    /* sa_free_rcu calls that waited for the RCU thread to catch
				     * up (option rcu_max_pending) */
};
int sa_cache_stats(struct sa_cache *c, struct sa_cache_stats *out);

/* Process-wide counters of the scope and reclaim layer (docs/api.md "Scope statistics"). */
struct sa_scope_stats {
	/* allocations made while a scope held each flag (one allocation counts under each) */
	uint64_t nowait_allocs, nofs_allocs, noio_allocs, noreclaim_allocs;
	uint64_t zero_allocs, nowarn_allocs, high_allocs, pin_allocs;
	uint64_t scope_saves;	       /* saves that opened a scope */
	uint64_t scopes_refused;       /* saves refused: a flag that may not be scoped */
	uint64_t scopes_out_of_order;  /* restores out of LIFO order */
	uint64_t scope_misuse;	       /* every report: out of order, twice, foreign cookie */
	uint64_t scope_swaps;	       /* sa_scope_swap calls */
	uint64_t limit_hits;	       /* allocations that found the memory limit in the way */
	uint64_t reclaim_rounds;       /* reclaim rounds run (limit or failed mapping) */
	uint64_t reclaim_bytes;	       /* bytes those rounds gave back */
	uint64_t shrinker_calls_fs;    /* scan calls of shrinkers of class SA_SHRINK_FS */
	uint64_t shrinker_calls_io;    /* ... of class SA_SHRINK_IO (and not FS) */
	uint64_t shrinker_calls_other; /* ... of neither class */
	uint64_t shrinker_skipped;     /* shrinkers a round left out: their class was forbidden */
	uint64_t shrinker_freed;       /* objects the shrinkers said they freed */
	uint64_t reserve_allocs;       /* allocations served by the emergency reserve */
	uint64_t nofail_retries;       /* SA_NOFAIL rounds that found no memory and tried again */
	uint64_t nowait_failures;      /* SA_NOWAIT allocations that returned NULL */
	uint64_t deferred_frees;       /* frees a NOWAIT context deferred (a lock was busy) */
	uint64_t pinned_slabs;	       /* slabs and blocks locked with mlock */
	uint64_t pin_failures;	       /* mlock refused (RLIMIT_MEMLOCK) */
	/* gauges */
	uint64_t limit;		/* sa_set_limit / option limit; 0: none */
	uint64_t held;		/* sa_memory_held() */
	uint64_t reserve_bytes; /* size of the emergency reserve (mapped, resident) */
	uint64_t reserve_free;	/* of which not in use */
	uint64_t deferred_now;	/* frees waiting in the deferred list */
};
int sa_scope_stats(struct sa_scope_stats *out);
void sa_stats_print(int fd);
void sa_stats_print_json(int fd);

#ifdef __cplusplus
}
#endif
#endif /* SHEAFALLOC_H */
