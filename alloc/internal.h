/*
 * alloc/internal.h — the structures every layer shares, and the internal API between layers.
 *
 * Glossary (docs/design.md §1 tells the whole story):
 *   segment  4 MiB of address space aligned to 4 MiB, mapped for one NUMA node. Its first 64 KiB
 *            unit holds the segment header (struct sa_segment) with one struct sa_slab per unit.
 *   unit     64 KiB of a segment; a slab is a run of 1..63 units.
 *   slab     objects of one cache carved from a unit run; a bitmap marks the free ones.
 *   sheaf    an array of free object pointers of one cache and one node (struct sa_sheaf).
 *   slot     a cache's per-CPU record: main and spare sheaf, stop flag, node (struct sa_pcs_slot).
 *   barn     per cache and node: bounded lists of full and empty sheaves (struct sa_barn).
 *
 * Lock order (never take a lower-numbered lock while holding a higher one):
 *   0. reclaim_lock        one pass over our own free memory (alloc/reclaim.c); taken with no
 *                          other lock held; then shrinker_lock (the registry; a leaf there)
 *   0b. pinned_lock        making SA_PIN companion caches (alloc/cache.c)
 *   1. sa_caches_lock      the list of caches (create, destroy, stats walk, atfork)
 *   1b. c->drain_lock      remote work on one cache's slots (shrink, destroy)
 *   2. slot (fallback mode) per-CPU slot spinlock; in rseq mode a slot is not a lock
 *   3. barn->lock          one barn's lists; never held across a slab operation
 *   4. cnode->lock         one cache's slabs on one node (partial list, slab bitmaps)
 *   4b. aligned_lock, huge_cache_lock (alloc/malloc.c) the huge-block lists; leaves: nothing
 *                          is taken while one is held
 *   5. pages->lock         one node's segments and their free units (adaptive: spins, then sleeps)
 *   6. sa_meta_lock        the internal metadata allocator
 *   7. stash->lock         one CPU's stash of freed unit runs (alloc/segment.c); a leaf spinlock,
 *                          only tried, except by a purge and the fork handlers
 * No lock is held across user code (constructors run with no lock held).
 */
#ifndef SA_ALLOC_INTERNAL_H
#define SA_ALLOC_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "include/sheafalloc.h"

/* Everything declared below is internal to the library: no GOT indirection for it. */
#pragma GCC visibility push(hidden)

#define SA_API	       __attribute__((visibility("default")))
#define SA_LIKELY(x)   __builtin_expect(!!(x), 1)
#define SA_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define SA_NOINLINE    __attribute__((noinline))
#define SA_COLD	       __attribute__((cold, noinline))
#define SA_CACHELINE   64
/* The hot entry points (sa_cache_alloc/free, sa_malloc, sa_free) start on a cache line: their
 * fast paths then span the fewest instruction-fetch windows. Measured: without it the core pair
 * moved by up to 8% from one build to the next as code before it grew or shrank. */
#define SA_HOT_ALIGN __attribute__((aligned(64)))

#define SA_SEG_SHIFT	   22
#define SA_SEG_SIZE	   (1ul << SA_SEG_SHIFT)
#define SA_UNIT_SHIFT	   16
#define SA_UNIT_SIZE	   (1ul << SA_UNIT_SHIFT)
#define SA_UNITS_PER_SEG   (1u << (SA_SEG_SHIFT - SA_UNIT_SHIFT))
#define SA_MAX_NODES	   64
#define SA_CACHE_MAX_SIZE  (1ul << 20) /* largest object a cache serves */
#define SA_CACHE_MAX_ALIGN SA_UNIT_SIZE
#define SA_ADDR_BITS	   47
#define SA_RECIP_SHIFT	   44 /* exact for offsets * strides below 2^44 (slab < 2^22, stride < 2^22) */

/* ---------------------------------------------------------------- stats (docs/api.md) ------- */
enum sa_stat_item {
	SA_STAT_ALLOC_FAST,	     /* folded from sheaf op counters, see sheaf/pcs.c */
	SA_STAT_ALLOC_SLOW,	     /* object straight from slabs */
	SA_STAT_FREE_FAST,	     /* folded from sheaf op counters */
	SA_STAT_FREE_SLOW,	     /* object straight to slabs */
	SA_STAT_SPARE_SWAP_ALLOC,    /* main empty: swapped with a non-empty spare */
	SA_STAT_SPARE_SWAP_FREE,     /* main full: swapped with a spare with room */
	SA_STAT_BARN_GET,	     /* full sheaf from the barn */
	SA_STAT_BARN_GET_FAIL,	     /* barn had no full sheaf */
	SA_STAT_BARN_PUT,	     /* full sheaf into the barn */
	SA_STAT_BARN_PUT_FAIL,	     /* barn at its full limit: flushed instead */
	SA_STAT_REFILL,		     /* sheaf refilled from slabs */
	SA_STAT_REFILL_OBJECTS,	     /* objects moved slabs -> sheaves */
	SA_STAT_FLUSH,		     /* sheaf flushed to slabs */
	SA_STAT_FLUSH_OBJECTS,	     /* objects moved sheaves -> slabs */
	SA_STAT_SHEAF_NEW,	     /* sheaf structs allocated */
	SA_STAT_SHEAF_FREED,	     /* sheaf structs freed */
	SA_STAT_PREFILL_FAST,	     /* prefill without a slab refill */
	SA_STAT_PREFILL_SLOW,	     /* prefill that refilled from slabs */
	SA_STAT_PREFILL_OVERSIZE,    /* prefill above the cache's capacity */
	SA_STAT_RETURN_FAST,	     /* returned sheaf became the spare */
	SA_STAT_RETURN_SLOW,	     /* returned sheaf went to the barn or was flushed */
	SA_STAT_SHEAF_ALLOC,	     /* objects taken with sa_sheaf_alloc */
	SA_STAT_REMOTE_FREE,	     /* object of another node freed on this CPU */
	SA_STAT_ALLOC_NODE_MISMATCH, /* alloc_node for a node other than this CPU's */
	SA_STAT_ALLOC_FAIL,	     /* NULL returned */
	SA_STAT_SLAB_ALLOC,	     /* slabs created */
	SA_STAT_SLAB_FREE,	     /* slabs released to the page layer */
	SA_STAT_REMOTE_FENCE,	     /* remote slot rounds (one membarrier each in rseq mode) */
	SA_STAT_RCU_QUEUED,	     /* objects of rcu sheaves submitted for a grace period */
	SA_STAT_RCU_SUBMITTED,	     /* rcu sheaves submitted */
	SA_STAT_RCU_CALLBACKS,	     /* rcu sheaves processed after their grace period */
	SA_STAT_RCU_FREED,	     /* objects freed after their grace period */
	SA_STAT_RCU_DEFERRED,	     /* sa_free_rcu calls a NOWAIT context had to defer */
	SA_STAT_RCU_SLABS_DELAYED,   /* typesafe: slab releases delayed by a grace period */
	SA_STAT_RCU_THROTTLED,	     /* sa_free_rcu waits for the RCU thread (rcu_max_pending) */
	SA_NR_STATS
};

/* Process-wide counters of the scope and reclaim layers (struct sa_scope_stats, docs/api.md). */
enum sa_gstat_item {
	SA_G_SCOPE_REFUSED,	 /* saves refused: a non-scopable flag */
	SA_G_SCOPE_OUT_OF_ORDER, /* restores out of LIFO order */
	SA_G_SCOPE_MISUSE,	 /* every scope report (out of order, twice, foreign cookie) */
	SA_G_LIMIT_HITS,	 /* charges the memory limit refused */
	SA_G_RECLAIM_ROUNDS,	 /* reclaim rounds */
	SA_G_RECLAIM_BYTES,	 /* bytes reclaim rounds gave back */
	SA_G_SHRINK_FS,		 /* shrinker scan calls, class FS */
	SA_G_SHRINK_IO,		 /* class IO (not FS) */
	SA_G_SHRINK_OTHER,	 /* neither */
	SA_G_SHRINK_SKIPPED,	 /* shrinkers left out: class forbidden by the flags */
	SA_G_SHRINK_FREED,	 /* objects shrinkers reported freed */
	SA_G_RESERVE_ALLOCS,	 /* allocations served by the emergency reserve */
	SA_G_NOFAIL_RETRIES,	 /* SA_NOFAIL rounds that found nothing and went again */
	SA_G_NOWAIT_FAILS,	 /* SA_NOWAIT allocations that returned NULL */
	SA_G_DEFERRED,		 /* frees deferred by a NOWAIT context */
	SA_G_PINNED,		 /* slabs and blocks mlock'ed */
	SA_G_PIN_FAILS,		 /* mlock refused */
	SA_G_GUARDED,		 /* debug=G: freed large runs and huge mappings made PROT_NONE */
	SA_G_GUARD_SKIPPED, /* debug=G: frees left accessible (over the cap, mprotect refused) */
	SA_NR_GSTATS
};
extern _Atomic uint64_t sa_gstat[SA_NR_GSTATS];
static inline void sa_gstat_add(enum sa_gstat_item i, uint64_t n)
{
	atomic_fetch_add_explicit(&sa_gstat[i], n, memory_order_relaxed);
}

/* ---------------------------------------------------------------- sheaves (sheaf/) ----------- */
/*
 * A sheaf: a LIFO array of free objects of one cache and one node.
 * Ownership: installed in a slot, it belongs to that slot's CPU (rseq) or slot lock (fallback);
 * otherwise to the one thread holding it (taken out of a slot or a barn, or prefilled by a user).
 * `state` packs the size (low 32 bits) and a count of fast-path operations since the sheaf was
 * installed (high 32 bits), so one store commits both (sheaf/pcs.c "fast-path counting").
 */
struct sa_sheaf {
	union {
		uint64_t state; /* owner */
		struct {
			uint32_t size; /* valid objects in objects[] */
			uint32_t ops;  /* fast pops + pushes since install */
		};
	};
	uint32_t capacity;	/* slots in objects[]; 0 only for the sentinel */
	int32_t node;		/* node of every object in it; -1 for the sentinel */
	struct sa_sheaf *next;	/* barn list link (barn->lock) */
	struct sa_cache *cache; /* owning cache */
	uint32_t install_size;	/* size when installed in a slot (owner) */
	uint32_t flags;		/* SA_SHEAF_* */
	uint64_t taken;		/* prefilled: objects handed out by sa_sheaf_alloc */
	void *guard_lo;		/* SA_SHEAF_GUARD: objects[-1], how a pop sees the sheaf empty */
	void *objects[]; /* [capacity + 1], at offset 56 (asm relies on it); objects[capacity] is
			  * SA_SHEAF_GUARD, which is how a push sees that the sheaf is full */
};
#define SA_SHEAF_OVERSIZE	 1u /* capacity differs from the cache's: flushed and freed on return */
#define SA_SHEAF_PREFILLED	 2u /* held by a user through the sheaf API */
#define SA_SHEAF_RCU		 4u /* holds sa_free_rcu objects waiting for a grace period */
#define SA_SHEAF_HDR		 56
#define SA_SHEAF_GUARD		 ((void *)1) /* never an object: objects are at least 8-aligned */
#define SA_SHEAF_BYTES(capacity) (SA_SHEAF_HDR + ((size_t)(capacity) + 1) * sizeof(void *))

_Static_assert(offsetof(struct sa_sheaf, objects) == SA_SHEAF_HDR, "asm offsets");
_Static_assert(offsetof(struct sa_sheaf, guard_lo) == SA_SHEAF_HDR - 8, "guard below objects");

extern struct sa_sheaf sa_sheaf_sentinel; /* empty and full at once: capacity 0 */

/*
 * Per-CPU slot of a cache: 64 bytes, one per possible CPU.
 * sh[0] is main, sh[1] the spare; both never NULL (the sentinel stands for "none").
 * The main sheaf's state lives in the slot as `top`: the address of objects[size] in the low 48
 * bits and a 16-bit count of fast-path operations above (SA_TOP_*). A pop loads objects[size-1]
 * through it (the guard below objects[0] says empty), a push stores at objects[size] (the guard
 * at objects[capacity] says full), and either commits by storing top: neither reads main or the
 * sheaf's header. (An index into main->objects measured 3x slower than this pointer for a
 * malloc/free pair on the build machine: every free recomputed the address from two loads.)
 * The header's `state` of the main sheaf is stale until the sheaf is taken out: the exchange
 * section writes it back from top before its commit, which stores {top, main} of the new main
 * sheaf with one 16-byte store. A spare keeps its state in its own header.
 */
struct sa_pcs_slot {
	uint32_t stopped; /* rseq: set by a remote thread that owns the slot (fence follows) */
	int32_t node;	  /* node of this CPU; written at creation and topology load */
	uint32_t lock;	  /* fallback mode spinlock */
	uint32_t pad0;
	uint64_t top;		/* owner: &sh[0]->objects[size] | ops << SA_TOP_OPS_SHIFT */
	struct sa_sheaf *sh[2]; /* owner CPU (rseq) / lock (fallback) */
	struct sa_sheaf *rcu;	/* owner CPU (rseq) / lock: sa_free_rcu's sheaf (alloc/rcu.c) */
	uint64_t pad[2];
} __attribute__((aligned(SA_CACHELINE)));
_Static_assert(sizeof(struct sa_pcs_slot) == 64, "slot is one line");
_Static_assert(offsetof(struct sa_pcs_slot, top) == 16, "asm offsets");

#define SA_TOP_OPS_SHIFT 48
#define SA_TOP_ADDR_MASK ((1ull << SA_TOP_OPS_SHIFT) - 1)
#define SA_TOP_OPS_MAX	 (1u << 15) /* a section reaching it (sign bit) folds first */

static inline uint64_t sa_top_encode(struct sa_sheaf *s, uint32_t size, uint32_t ops)
{
	return (uint64_t)(uintptr_t)&s->objects[size] | (uint64_t)ops << SA_TOP_OPS_SHIFT;
}

static inline uint32_t sa_top_size(const struct sa_sheaf *s, uint64_t top)
{
	return (uint32_t)(((top & SA_TOP_ADDR_MASK) - (uintptr_t)&s->objects[0]) / sizeof(void *));
}

/* the header state word (size | ops << 32) that a slot's top stands for */
static inline uint64_t sa_top_to_state(const struct sa_sheaf *s, uint64_t top)
{
	return sa_top_size(s, top) | (top >> SA_TOP_OPS_SHIFT) << 32;
}
_Static_assert(offsetof(struct sa_pcs_slot, sh) == 24, "asm offsets");
_Static_assert(offsetof(struct sa_pcs_slot, node) == 4, "asm offsets");
_Static_assert(offsetof(struct sa_pcs_slot, rcu) == 40, "asm offsets");
_Static_assert(offsetof(struct sa_sheaf, capacity) == 8, "asm offsets");

/* ---------------------------------------------------------------- barns (barn/) ------------- */
struct sa_barn {
	pthread_mutex_t lock;
	struct sa_sheaf *full;	/* barn->lock; sheaves with size > 0 */
	struct sa_sheaf *empty; /* barn->lock; sheaves with size == 0 */
	unsigned nr_full;	/* barn->lock; read racy for limit pre-checks */
	unsigned nr_empty;	/* barn->lock; read racy */
	unsigned low_full;	/* barn->lock: fewest full sheaves since the last decay pass */
};

/* ---------------------------------------------------------------- slabs (alloc/slab.c) ------ */
/* One per unit of a segment. Fields of a slab's head unit describe the slab; a continuation
 * unit carries cache and node too (so free never needs the head) and head points to the first. */
struct sa_slab {
	struct sa_cache *cache; /* owner; NULL when the unit is free. Written before publication */
	struct sa_slab *head;	/* first unit of this slab */
	uint64_t *bits;		/* cnode->lock: bit i set = object i free (meta memory) */
	uint32_t hint;		/* cnode->lock: no set bit in the words before this one */
	uint16_t flags;		/* head unit, set before publication: SA_SLAB_* */
	uint16_t fresh;		/* every unit, atomic: 16-byte granules of this unit below
				 * the last object start ever handed out (SA_FRESH_ALL: all);
				 * an object starting at or past it was never handed out */
	struct sa_slab *next;	/* cnode->lock: partial list */
	struct sa_slab *prev;	/* cnode->lock */
	uint32_t inuse;		/* cnode->lock: objects out of the slab (bit clear) */
	uint32_t nobjs;		/* objects this slab holds */
	int32_t node;		/* node of the segment */
	uint16_t nunits;	/* units in this slab */
	uint16_t on_partial;	/* cnode->lock: 1 on partial, 2 on reserve_slabs */
};
_Static_assert(sizeof(struct sa_slab) == 64, "slab meta is one line");

#define SA_SLAB_PINNED	      1u /* its units are mlock'ed (munlock when they go back) */
#define SA_SLAB_RESERVE	      2u /* carved from the emergency reserve: on cnode->reserve_slabs */
#define SA_SLAB_KEYED	      4u /* every unit record of a keyed cache's slab: see sa_free_keyed */
#define SA_FRESH_ALL	      ((uint16_t)(SA_UNIT_SIZE >> 4)) /* sa_slab.fresh: whole unit */
#define SA_CACHE_KEYED_	      (1u << 17) /* internal: frees key their objects (the malloc classes) */
#define SA_CACHE_PUBLIC_FLAGS (SA_CACHE_TYPESAFE_RCU | SA_CACHE_HWCACHE_ALIGN | SA_CACHE_DEBUG)
/* internal flag: this allocation may not take the emergency reserve's units (a slab for
 * everyone; reserve slabs are made by sa_slab_alloc_reserve only) */
#define SA_F_NORESERVE	 (1u << 30)
#define SA_CACHE_PINNED_ (1u << 16) /* internal: an SA_PIN companion cache (alloc/cache.c) */

#define SA_SEG_MAGIC  0x5368656166536567ull
#define SA_HUGE_MAGIC 0x5368656166487567ull
struct sa_segment {
	uint64_t magic; /* SA_SEG_MAGIC, or SA_HUGE_MAGIC for one huge allocation */
	int32_t node;
	uint32_t nfree;		 /* pages->lock: free units */
	uint64_t free_units;	 /* pages->lock: bit i set = unit i free (bit 0 is the header) */
	struct sa_segment *next; /* pages->lock: node's segment list */
	uint64_t dirty_units;	 /* pages->lock: free units whose pages may still be resident */
	union {
		size_t huge_len;      /* huge: bytes mapped from the segment start */
		uint64_t guard_units; /* units segment, atomic: bit i = unit i is free and
				       * PROT_NONE (debug=G, alloc/debug.c); set by the run's last
				       * owner before it goes back, cleared by the next owner */
	};
	size_t huge_off;  /* huge: offset of the user block */
	uint32_t reserve; /* the emergency reserve's segment (never on a node's list) */
	uint32_t pinned;  /* huge: the mapping is mlock'ed */
	struct sa_slab slabs[SA_UNITS_PER_SEG]; /* slabs[0] unused (header unit) */
};
_Static_assert(offsetof(struct sa_segment, slabs) == 64, "sa_slab_of relies on it");

/* ---------------------------------------------------------------- caches (alloc/cache.c) ---- */
struct sa_cache_node {
	pthread_mutex_t lock;
	struct sa_slab *partial;	 /* lock: slabs with a free object */
	struct sa_slab *partial_tail;	 /* lock */
	uint32_t nr_partial;		 /* lock */
	uint32_t nr_empty;		 /* lock: partial slabs with inuse == 0 */
	uint32_t low_empty;		 /* lock: fewest empty slabs since the last decay pass */
	uint64_t nr_slabs;		 /* lock */
	uint64_t units;			 /* lock: units held by this cache on this node */
	uint64_t objs_out;		 /* lock: objects out of slabs (in use or in sheaves) */
	struct sa_slab *reserve_slabs;	 /* lock: reserve slabs with a free object (only
					  * allocations that may use the reserve take them) */
	struct sa_slab *_Atomic pending; /* new slabs a NOWAIT path could not publish (lock
					  * busy): pushed lock-free, published by the next
					  * holder of lock (alloc/slab.c) */
	struct sa_barn barn;
} __attribute__((aligned(SA_CACHELINE)));

/* The slots follow the struct in the same allocation (SA_CACHE_SLOTS): the fast paths find
 * them by arithmetic, so a free that learns its cache from the slab record needs no further
 * load before it can compute the address it stores to. */
struct sa_cache {
	/* read-mostly, fast path */
	struct sa_pcs_slot *slots; /* == SA_CACHE_SLOTS(this): [sa_nr_cpus] */
	uint32_t stride;	   /* bytes between objects */
	uint32_t size;		   /* requested object size */
	uint32_t align;
	uint32_t capacity;     /* sheaf capacity */
	uint64_t stride_recip; /* ceil(2^SA_RECIP_SHIFT / stride): object index by multiply */
	uint32_t flags;	       /* SA_CACHE_* */
	void (*ctor)(void *obj);
	uint32_t slab_units;
	uint32_t slab_objs;
	uint32_t barn_max_full;
	uint32_t barn_max_empty;
	struct sa_cache *next;	    /* sa_caches_lock */
	pthread_mutex_t drain_lock; /* serializes remote work on the slots (shrink, destroy) */
	struct sa_sheaf
		*_Atomic deferred;	/* sheaves a SA_NOWAIT path could not place (atomic push) */
	_Atomic uint64_t deferred_objs; /* objects in the deferred sheaves (statistics) */
	struct sa_cache *_Atomic pinned;     /* SA_PIN companion (same objects, mlock'ed slabs) */
	struct sa_cache *parent;	     /* of a companion: the cache it pins for */
	const struct rcu_flavor_struct *rcu; /* sa_free_rcu's grace periods (liburcu flavor) */
	uint32_t debug;			     /* SA_DEBUG_* checks (alloc/debug.c); 0: none */
	struct sa_cache_node *nodes[SA_MAX_NODES];
	char name[64];
	_Atomic uint64_t stat[SA_NR_STATS] __attribute__((aligned(SA_CACHELINE)));
	_Atomic uint64_t bind_failures;
	uint64_t decay_ops; /* alloc/decay.c (its pass only): the ops signature at the last pass */
};

#define SA_CACHE_SLOTS(c) ((struct sa_pcs_slot *)((struct sa_cache *)(c) + 1))
_Static_assert(sizeof(struct sa_cache) % SA_CACHELINE == 0, "slots stay aligned");
struct sa_cache *sa_cache_alloc_struct(void); /* zeroed, with initialized slots */
void sa_cache_free_struct(struct sa_cache *c);

/* ---------------------------------------------------------------- globals ------------------- */
extern int sa_nr_cpus;	/* possible CPUs (_SC_NPROCESSORS_CONF) */
extern int sa_nr_nodes; /* nodes of the topology in use */
extern bool sa_ready;	/* sa_init finished */
extern pthread_mutex_t sa_caches_lock;
extern struct sa_cache *sa_caches; /* sa_caches_lock */

void sa_init(void);
void sa_init_slow(void);
static inline void sa_ensure_init(void)
{
	if (SA_UNLIKELY(!__atomic_load_n(&sa_ready, __ATOMIC_ACQUIRE)))
		sa_init_slow();
}

static inline void sa_stat_add(struct sa_cache *c, enum sa_stat_item i, uint64_t n)
{
	atomic_fetch_add_explicit(&c->stat[i], n, memory_order_relaxed);
}

static inline uint64_t sa_cache_stat_racy(struct sa_cache *c, enum sa_stat_item i)
{
	return atomic_load_explicit(&c->stat[i], memory_order_relaxed);
}

/* debugging checks (alloc/debug.c): the letters of the option debug= */
#define SA_DEBUG_SANITY	 1u  /* F: every free checked at its slab (the per-CPU sheaves are off) */
#define SA_DEBUG_REDZONE 2u  /* Z: 16+ bytes after each object, checked on free */
#define SA_DEBUG_POISON	 4u  /* P: freed objects filled, checked when handed out again */
#define SA_DEBUG_OWNER	 8u  /* U: allocation and free call sites, printed with every report */
#define SA_DEBUG_GUARD	 16u /* G: freed large and huge malloc blocks PROT_NONE until reused */
#define SA_DEBUG_CACHE	 15u /* the letters a cache takes (G is for malloc blocks only) */
#define SA_DEBUG_ALL	 31u

extern __thread const void *sa_caller __attribute__((tls_model("initial-exec")));
size_t sa_debug_meta_bytes(const struct sa_cache *c, uint32_t nobjs); /* bitmap + owners */
void sa_debug_slab_init(struct sa_cache *c, struct sa_slab *s);
void sa_debug_on_alloc(struct sa_cache *c, struct sa_slab *s, uint32_t i);
void sa_debug_on_free(struct sa_cache *c, struct sa_slab *s, uint32_t i);
void sa_debug_bad_free(struct sa_cache *c, struct sa_slab *s, uint32_t i, const void *obj,
		       const char *what);
uint32_t sa_debug_index(const struct sa_cache *c, const struct sa_slab *s, const void *p);
/* G (alloc/debug.c): units is the count of 64 KiB units for a large run, 0 for a huge block */
bool sa_debug_guard(void *p, size_t len, unsigned units);   /* PROT_NONE; false: left as is */
bool sa_debug_unguard(void *p, size_t len, unsigned units); /* PROT_READ|WRITE; false: failed */
void sa_debug_guard_forget(unsigned units); /* guarded units unmapped (sa_segment_unmap_free) */

/* options (alloc/options.c) */
struct sa_options {
	unsigned sheaf_capacity; /* 0: auto */
	unsigned barn_max_full;
	unsigned barn_max_empty;
	int percpu_fallback; /* percpu=fallback */
	size_t limit;
	size_t reserve;	 /* emergency reserve, bytes (alloc/segment.c) */
	int stats_print; /* 0 no, 1 text, 2 json */
	unsigned debug;	 /* SA_DEBUG_* (alloc/debug.c) */
	int scope_check_abort;
	int bad_free_abort; /* bad_free=abort: a bad free is reported, then the process aborts */
	int free_check_key; /* free_check=key: the malloc classes are keyed (sa_free_keyed) */
	unsigned purge_ms;
	unsigned decay_ms; /* alloc/decay.c: interval of the decay passes; 0: none */
	int background;	   /* alloc/decay.c: a thread runs the passes while the program idles */
	size_t rcu_max_pending; /* alloc/rcu.c: bytes waiting for a grace period before
				 * sa_free_rcu waits for the RCU thread; 0: no bound */
	int verbose;
	int topology_hwloc; /* topology=hwloc: load hwloc even on one node */
};
extern struct sa_options sa_opt;
/* debug=G is on: freed large and huge malloc blocks are made inaccessible (alloc/debug.c) */
static inline bool sa_guard_on(void)
{
	return SA_UNLIKELY(sa_opt.debug & SA_DEBUG_GUARD);
}
void sa_options_parse(const char *s);
void sa_options_print(int fd);

/* messages (alloc/options.c): formatted into a stack buffer, one write(2); never allocates */
void sa_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Cancellation. The library never lets pthread_cancel act inside it: a section that reaches a
 * cancellation point (write, open, read, a condition wait, a program's shrinker) while it holds
 * a lock or a count that others wait on runs with cancellation disabled; a pending cancel acts
 * at the caller's next cancellation point, after the library returned. */
static inline int sa_nocancel_begin(void)
{
	int old = PTHREAD_CANCEL_ENABLE;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
	return old;
}
static inline void sa_nocancel_end(int old)
{
	if (old != PTHREAD_CANCEL_DISABLE)
		pthread_setcancelstate(old, NULL);
}

/* metadata allocator (alloc/meta.c): zeroed, 64-byte aligned, never from sa caches */
void *sa_meta_alloc(size_t size);
void *sa_meta_alloc_flags(size_t size, sa_flags_t flags);
void sa_meta_free(void *p, size_t size);
void sa_meta_atfork(int phase); /* 0: lock (prepare), 1: unlock (parent, child) */

/* segments and units (alloc/segment.c) */
extern uint64_t sa_segmap[1ul << (SA_ADDR_BITS - SA_SEG_SHIFT - 6)];
/* Is p inside one of our segments? (its bit in sa_segmap: set before the segment is used) */
static inline bool sa_segmap_has(uintptr_t a)
{
	uintptr_t i = a >> SA_SEG_SHIFT;
	if (SA_UNLIKELY(a >> SA_ADDR_BITS))
		return false;
	return __atomic_load_n(&sa_segmap[i >> 6], __ATOMIC_RELAXED) & (1ull << (i & 63));
}
static inline struct sa_segment *sa_segment_of(const void *p)
{
	uintptr_t a = (uintptr_t)p;
	if (SA_UNLIKELY(!sa_segmap_has(a)))
		return NULL;
	return (struct sa_segment *)(a & ~(SA_SEG_SIZE - 1));
}
static inline struct sa_slab *sa_slab_of(const void *p)
{
	uintptr_t a = (uintptr_t)p;
	if (SA_UNLIKELY(!sa_segmap_has(a)))
		return NULL;
	/* &segment->slabs[unit]: the header is 64 bytes, each slab record 64 bytes */
	return (struct sa_slab *)((a & ~(SA_SEG_SIZE - 1)) + 64 +
				  ((a >> (SA_UNIT_SHIFT - 6)) & ((SA_UNITS_PER_SEG - 1) << 6)));
}
static inline char *sa_slab_base(const struct sa_slab *s)
{
	const struct sa_segment *seg =
		(const struct sa_segment *)((uintptr_t)s & ~(SA_SEG_SIZE - 1));
	return (char *)seg + (size_t)(s - seg->slabs) * SA_UNIT_SIZE;
}
struct sa_slab *sa_segment_alloc_units(int node, unsigned units, sa_flags_t flags,
				       _Atomic uint64_t *bind_failures);
void sa_segment_free_units(struct sa_slab *head);	/* a published run (cache set) */
void sa_segment_free_block(struct sa_slab *head);	/* a large malloc block's run (debug=G) */
void sa_segment_unuse_units(struct sa_slab *head);	/* a run never published */
void sa_segment_release_deferred(struct sa_slab *head); /* SA_DEFER_RUN */
void sa_segment_units_deferred(struct sa_slab *head);	/* SA_DEFER_UNITS */
int sa_segment_resize_units(struct sa_slab *head, unsigned units, sa_flags_t flags);
void sa_malloc_atfork(int phase); /* aligned_lock, huge_cache_lock: leaf locks */

/* What mallinfo, mallinfo2, malloc_stats and malloc_info report (alloc/malloc.c fills it). */
#define SA_MALLOC_CLASSES 40
struct sa_malloc_totals {
	size_t mapped;	 /* segment address space mapped now (free segments unmapped by trim) */
	size_t resident; /* segment bytes that may be resident: headers, runs in use, dirty */
	size_t in_use;	 /* bytes of objects in use in every cache, and of large blocks */
	size_t cached;	 /* bytes of free objects in sheaves and barns */
	size_t dirty;	 /* free units not purged yet (stashed runs included) */
	size_t huge, huge_blocks; /* live huge mappings */
	size_t huge_max, huge_max_blocks;
	size_t huge_cached; /* freed huge mappings kept for reuse */
	struct {
		uint32_t size;
		uint64_t in_use, cached; /* objects */
	} cls[SA_MALLOC_CLASSES];
};
void sa_malloc_totals(struct sa_malloc_totals *t);
size_t sa_segment_used_bytes(void); /* units handed out (slabs and large blocks), in bytes */
uint64_t sa_now_ns(void);	    /* CLOCK_MONOTONIC_COARSE, ns (purge and huge-cache ages) */
size_t sa_segment_purge(int force); /* madvise dirty units: force, all now; else a few more */
size_t sa_segment_purge_upto(size_t need); /* at once, until need bytes went */
size_t sa_segment_dirty_bytes(void);
bool sa_segment_purge_tick(void); /* a purge round's next steps if due; true: unfinished */
/* decay (alloc/decay.c): what the program stopped using goes back, a pass every decay_ms */
extern _Atomic uint64_t sa_decay_next;
void sa_decay_run(sa_flags_t flags);
void sa_decay_atfork_child(void); /* no background thread in the child: one starts when needed */
bool sa_decay_background_running(void);
#pragma GCC visibility push(hidden)
/* this thread runs a decay pass: the unit frees it makes do not step the purge round */
extern __thread bool sa_in_decay __attribute__((tls_model("initial-exec")));
#pragma GCC visibility pop
void sa_segmap_set(const void *seg, int on);
char *sa_map_aligned(size_t len, size_t align, int prot);
uint64_t sa_segment_bind_failures(void);
size_t sa_segment_mapped_bytes(void);
size_t sa_segment_resident_bytes(void);
void sa_segment_atfork(int phase); /* 0 lock, 1 unlock (parent), 2 unlock (child) */
/* tests only: called inside release_run between giving a run back and counting it (NULL: none) */
extern void (*sa_segment_release_test_hook)(void);
size_t sa_segment_unmap_free(void); /* unmap wholly free segments; bytes */

/* reclaim and the memory limit (alloc/reclaim.c) */
/* A mapping failed: give back what can be (not under SA_NOWAIT / SA_NORECLAIM / inside
 * reclaim); true if the caller should retry once. The caller holds no allocator lock. */
bool sa_reclaim_map_failed(sa_flags_t flags);
/* The limit refused `bytes`: reclaim as the flags allow (our free memory, then the shrinkers
 * they permit); true if something was given back and the caller should retry once. */
bool sa_reclaim_for_limit(size_t bytes, sa_flags_t flags);
/* held: bytes the allocator holds from the OS (sa_memory_held). charge checks the limit. */
bool sa_held_charge(size_t bytes);
void sa_held_add(size_t bytes); /* no check: metadata, the reserve */
void sa_held_sub(size_t bytes);
/* SA_NOFAIL found no memory: wait for some (reclaim, pause, a message now and then), or abort
 * with a report when the flags forbid waiting. round counts the calls for one allocation. */
void sa_nofail_wait(sa_flags_t flags, const char *what, size_t size, unsigned *round);
void sa_reclaim_atfork(int phase); /* 0 lock, 1 unlock (parent), 2 unlock (child) */
void sa_malloc_huge_cache_drop(void);
void sa_malloc_huge_cache_age(void); /* unmap those older than purge_ms (decay) */
const char *sa_flags_name(sa_flags_t f, char *buf, size_t len);
unsigned sa_scope_save_internal(sa_flags_t flags);
void sa_scope_restore_internal(unsigned cookie);
uint64_t sa_scope_allocs_under(unsigned bit);
uint64_t sa_scope_saves_counted(void);
uint64_t sa_scope_swaps_counted(void);

/* the emergency reserve (alloc/segment.c): pre-mapped, pre-faulted units kept back for
 * allocations that may use it (policy.h); taken and returned without a lock or system call */
void sa_reserve_prepare(void); /* map it now (not under SA_NOWAIT); idempotent */
struct sa_slab *sa_reserve_take_units(unsigned units);
bool sa_segment_is_reserve(const struct sa_segment *seg);
void *sa_reserve_bitmap(struct sa_slab *head); /* bitmap room of a reserve slab */
void sa_reserve_counts(size_t *bytes, size_t *free_bytes);

/* frees deferred by contexts that may not wait (alloc/defer.c): lock-free, drained by the next
 * slow path that may wait, by the end of a NOWAIT scope and by sa_trim */
enum sa_defer_kind {
	SA_DEFER_FREE = 0,  /* sa_free(p): an object or a block */
	SA_DEFER_SLAB = 1,  /* release the slab whose head record is p */
	SA_DEFER_RUN = 2,   /* give the unit run whose head record is p back */
	SA_DEFER_RCU = 3,   /* sa_free_rcu(p): queue it for a grace period */
	SA_DEFER_UNITS = 4, /* a free run (head record p keeps its unit count) into its bitmap */
};
void sa_defer(void *p, enum sa_defer_kind kind);
void sa_deferred_run(void);
void sa_deferred_run_try(void); /* the end of a NOWAIT scope: locks only tried */
size_t sa_deferred_count(void);
void sa_deferred_after_fork(void);	 /* the child: counts made to match the slots and stacks */
uint64_t sa_deferred_units_parked(void); /* units of SA_DEFER_UNITS entries (the child) */
/* tests only: called inside sa_defer between filling a slot and counting it (NULL: none) */
extern void (*sa_defer_test_hook)(void);
extern _Atomic size_t sa_deferred_sheaves; /* sheaves waiting on caches' deferred stacks */
static inline bool sa_deferred_pending_racy(void)
{
	extern _Atomic size_t sa_deferred_n __attribute__((visibility("hidden")));
	return (atomic_load_explicit(&sa_deferred_n, memory_order_relaxed) |
		atomic_load_explicit(&sa_deferred_sheaves, memory_order_relaxed)) != 0;
}

/* slabs (alloc/slab.c); every function takes and drops cnode->lock itself */
unsigned sa_slab_refill(struct sa_cache *c, int node, void **dst, unsigned want, sa_flags_t flags);
void *sa_slab_alloc_one(struct sa_cache *c, int node, sa_flags_t flags);
void *sa_slab_alloc_reserve(struct sa_cache *c, int node, sa_flags_t flags); /* one object */
/* returns the objects taken back; the others were bad frees (reported) */
unsigned sa_slab_free_batch(struct sa_cache *c, int node, void **objs, unsigned n);
/* the same if the node lock is free now; UINT32_MAX (nothing done) when it is busy */
unsigned sa_slab_free_batch_try(struct sa_cache *c, int node, void **objs, unsigned n);
bool sa_slab_free_one(struct sa_cache *c, void *obj); /* false: deferred (NOWAIT, lock busy) */
void sa_slab_shrink(struct sa_cache *c, int node, unsigned keep_empty);
unsigned sa_slab_decay(struct sa_cache *c, int node, bool all, unsigned max); /* decay */
void sa_slab_release_deferred(struct sa_slab *head);			      /* SA_DEFER_SLAB */
void sa_slab_release_after_gp(struct sa_cache *c, struct sa_slab *s);	      /* release it now */
bool sa_slab_obj_ok(struct sa_cache *c, struct sa_slab *s, const void *obj);  /* a boundary? */
bool sa_pin_range(void *p, size_t len,
		  sa_flags_t flags);		 /* mlock for SA_PIN; reports the first failure */
uint64_t sa_slab_inuse_racy(struct sa_cache *c); /* objects out of slabs (in use + cached) */
void sa_slab_node_counts(struct sa_cache *c, int node, uint64_t *slabs, uint64_t *units);

/* barns (barn/barn.c) */
void sa_barn_init(struct sa_barn *b);
struct sa_sheaf *sa_barn_get_full(struct sa_barn *b, sa_flags_t flags);
struct sa_sheaf *sa_barn_get_empty(struct sa_barn *b, sa_flags_t flags);
void sa_barn_put_full(struct sa_barn *b, struct sa_sheaf *s);
void sa_barn_put_empty(struct sa_barn *b, struct sa_sheaf *s);
bool sa_barn_put_trylock(struct sa_barn *b, struct sa_sheaf *s); /* by its size; false if busy */
struct sa_sheaf *sa_barn_take_all(struct sa_barn *b);		 /* both lists, chained by next */
struct sa_sheaf *sa_barn_take_unused(struct sa_barn *b, bool all, unsigned max); /* decay */
static inline unsigned sa_barn_nr_full_racy(const struct sa_barn *b)
{
	return __atomic_load_n(&b->nr_full, __ATOMIC_RELAXED);
}
static inline unsigned sa_barn_nr_empty_racy(const struct sa_barn *b)
{
	return __atomic_load_n(&b->nr_empty, __ATOMIC_RELAXED);
}

/* topology (barn/topo.c) */
void sa_topo_init(void);
int sa_topo_cpu_node(int cpu);
int sa_topo_bind(void *addr, size_t len, int node); /* 0 ok, -1 failed (tolerated) */
int sa_topo_loaded(void);

/* sheaves (sheaf/sheaf.c) */
struct sa_sheaf *sa_sheaf_new(struct sa_cache *c, unsigned capacity, int node, sa_flags_t flags);
void sa_sheaf_free(struct sa_cache *c, struct sa_sheaf *s);
unsigned sa_sheaf_fill(struct sa_cache *c, struct sa_sheaf *s, unsigned upto, sa_flags_t flags);
void sa_sheaf_flush(struct sa_cache *c, struct sa_sheaf *s);
void sa_sheaf_dispose(struct sa_cache *c, struct sa_sheaf *s);
void sa_sheaf_dispose_flags(struct sa_cache *c, struct sa_sheaf *s, sa_flags_t flags);
void sa_sheaf_deferred_run(struct sa_cache *c, sa_flags_t flags);

/* per-CPU layer (sheaf/pcs.c, sheaf/rseq.c) */
void sa_pcs_init_mode(void);
int sa_pcs_current_cpu(void);
void *sa_pcs_alloc_slow(struct sa_cache *c, sa_flags_t flags, int why);
void sa_pcs_free_slow(struct sa_cache *c, void *obj, int node, int why);
void sa_pcs_drain(struct sa_cache *c);
bool sa_pcs_drain_try(struct sa_cache *c); /* main and spare (not rcu) unless a drain runs */
void sa_pcs_atfork(struct sa_cache *c, int phase); /* fallback mode: every slot lock */
int sa_pcs_current_node(struct sa_cache *c);
int sa_rseq_thread_ready(void);
void sa_rseq_fence_all(void);
void sa_pcs_fold(struct sa_cache *c, struct sa_sheaf *s);
void sa_pcs_stats_racy(struct sa_cache *c, uint64_t *allocs, uint64_t *frees, uint64_t *cached);
struct sa_sheaf *sa_pcs_take_spare(struct sa_cache *c);
int sa_pcs_rcu_push(struct sa_cache *c, void *obj, sa_flags_t flags);
int sa_pcs_rcu_xchg(struct sa_cache *c, struct sa_sheaf *nw, struct sa_sheaf **oldp);
uint64_t sa_pcs_rcu_waiting_racy(struct sa_cache *c);
struct sa_sheaf *sa_pcs_drain_rcu(struct sa_cache *c);
int sa_pcs_offer_spare(struct sa_cache *c, struct sa_sheaf *s);

/* cache internals (alloc/cache.c) */
SA_COLD void sa_cache_bad_free(struct sa_cache *c, const void *obj, const char *why);
void sa_cache_topology_changed(struct sa_cache *c);
void sa_cache_trim_barns(struct sa_cache *c); /* reclaim: barns and empty slabs, no fence */
size_t sa_cache_cached_bytes_racy(struct sa_cache *c);
void sa_cache_pinned_atfork(int phase);
void *sa_cache_alloc_special(struct sa_cache *c, sa_flags_t flags);
void *sa_cache_alloc_nozero(struct sa_cache *c, sa_flags_t flags); /* a scope's SA_ZERO too */
struct sa_cache *sa_cache_pinned_of(struct sa_cache *c, sa_flags_t flags); /* made if may block */
struct sa_cache *sa_cache_create_internal(const char *name, size_t size,
					  const struct sa_cache_args *args, unsigned internal);
void sa_free_suspect(struct sa_cache *c, void *obj, struct sa_slab *s);
bool sa_pcs_holds_racy(struct sa_cache *c, const void *obj); /* in a per-CPU sheaf of c? */
bool sa_barn_holds(struct sa_cache *c, const void *obj);     /* in a sheaf of c's barns? */
bool sa_slab_holds(struct sa_cache *c, const void *obj);     /* free in its slab's bitmap? */

/*
 * Always-on double-free check of the keyed caches (the malloc classes: at least 16 bytes, no
 * constructor, nothing promised about a free object's contents): a free writes a per-process
 * secret xor the object's address into its second word, and malloc clears that word when it
 * hands the object out. A free that finds the key there already is a double free, unless the
 * program wrote exactly that value itself: sa_free_suspect looks for the object among the free
 * ones before it reports anything. A pointer that is not 16-byte aligned is no object's start,
 * and one at or past its unit's fresh mark (struct sa_slab) points at an object that was never
 * handed out (free(p + 16 KiB) of a new slab's first object): both go to sa_free_suspect.
 * true: go on with the free; false: the suspect path dealt with it.
 */
extern uint64_t sa_free_key; /* set once at start-up from AT_RANDOM */
static inline bool sa_free_keyed(struct sa_cache *c, void *obj, struct sa_slab *s)
{
	uint64_t *w = (uint64_t *)obj + 1;
	uint64_t k = sa_free_key ^ (uintptr_t)obj;
	/* the offset in the 64 KiB unit rotated by 4: its granule, with any misalignment in the
	 * top nibble (>= 0x1000 = SA_FRESH_ALL, so past every fresh mark): one compare for both */
	uint16_t off = (uint16_t)(uintptr_t)obj;
	uint16_t g = (uint16_t)((off >> 4) | (off << 12));
	_Static_assert(SA_UNIT_SIZE == 65536, "the rotation takes the unit offset as 16 bits");
	if (SA_UNLIKELY(g >= __atomic_load_n(&s->fresh, __ATOMIC_RELAXED)) ||
	    SA_UNLIKELY(*w == k)) {
		sa_free_suspect(c, obj, s);
		return false;
	}
	*w = k;
	return true;
}
void sa_free_slow(struct sa_cache *c, void *p, struct sa_slab *s, int why);

/* RCU-deferred frees (alloc/rcu.c) */
void sa_rcu_submit(struct sa_cache *c, struct sa_sheaf *s); /* a sheaf of sa_free_rcu objects */
bool sa_rcu_slab_release(struct sa_cache *c, struct sa_slab *s); /* typesafe: after a GP */
void sa_rcu_kick(void);	      /* start or wake the RCU thread (not in a NOWAIT context) */
void sa_rcu_submit_all(void); /* every CPU's partial rcu sheaves, now (sa_trim) */
void sa_rcu_atfork(int phase);
/* tests only: called inside sa_rcu_submit between counting a sheaf and pushing it (NULL: none) */
extern void (*sa_rcu_submit_test_hook)(void);
void sa_rcu_cache_init(struct sa_cache *c, const struct rcu_flavor_struct *flavor);

/* malloc front end (alloc/malloc.c) */
void sa_malloc_init(void);
extern struct sa_cache *sa_large_cache, *sa_huge_cache; /* markers of blocks (alloc/malloc.c) */
static inline bool sa_malloc_marker(const struct sa_cache *c) /* a large or huge block's */
{
	return c && (c == sa_large_cache || c == sa_huge_cache);
}
struct sa_cache *sa_rcu_block_cache(void);
bool sa_rcu_block_ok(struct sa_cache *c, struct sa_slab *s, const void *obj);
int sa_free_unknown(void *p);
void *sa_valloc(size_t size);
void *sa_pvalloc(size_t size);
void *sa_cache_alloc_slab_direct(struct sa_cache *c, sa_flags_t flags, int node);

#pragma GCC visibility pop
#endif
