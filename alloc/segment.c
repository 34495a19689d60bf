/*
 * alloc/segment.c — segments and units: memory from the OS, bound to a node (docs/design.md §2).
 *
 * Owns: sa_segmap (one bit per 4 MiB of the 47-bit address space: set = one of our segments;
 * set before the segment is used, cleared before it is unmapped, read without a lock), and per
 * node the list of segments with their free-unit bitmaps.
 * pages->lock (rank 5) protects a node's segment list and every free_units/nfree in it.
 * A segment is mapped 8 MiB and trimmed to a 4 MiB-aligned 4 MiB, then bound to its node with
 * hwloc (a failure is counted, not fatal: the memory is still usable). Freed units are marked
 * free and dirty; dirty units are purged with madvise(MADV_DONTNEED) once purge_ms has passed
 * since the last purge, when more than SA_DIRTY_MAX bytes are dirty (a few madvise calls at each
 * unit allocation or free until the round is done: sa_segment_purge), or all at once on sa_trim
 * and before a huge block maps new pages. A purge
 * takes the units out of the free set under the lock, calls madvise without it, and puts them
 * back, so the lock is never held across a system call. Segments stay mapped while the program
 * runs normally (their address space is reused); a segment whose units are all free is unmapped
 * only by sa_segment_unmap_free (sa_trim / malloc_trim, and alloc/reclaim.c after a mapping
 * failed: out of address space). That is safe because nothing reads a wholly free segment
 * without a lock: no rseq section touches segment memory (sections read slots and sheaves, which
 * live in never-unmapped metadata, docs/design.md §6), a stashed run or a run being purged is
 * not free in the bitmap (so its segment is not wholly free), and every walk of a node's list
 * outside pages->lock (purge rounds, forced purges) holds purge_busy, which the unmapping holds
 * too. Its segment-map bit is cleared before the munmap, so a stale pointer freed later is
 * reported as "not ours" instead of read.
 * pages->lock is glibc's adaptive mutex: it spins briefly before it sleeps. Every large block
 * (32 KiB .. 2 MiB) takes it on malloc and on free, and its sections are a few hundred
 * nanoseconds, so a plain mutex made a waiter pay a futex sleep and wake-up (tens of
 * microseconds in a VM) for a section it could have waited out: the 2-thread churn benchmark's
 * malloc and free p99.99 were 35-38 us with the plain mutex and 1.6-5 us with this one
 * (docs/benchmarks.md §3). Only this lock spins: spinning on the barn and cache-node locks
 * raised peak RSS 1.7x on a remote-free benchmark (xmalloc-test).
 *
 * Per-CPU run stash: a freed run of at most SA_STASH_RUN_MAX units goes first to a short list
 * of the freeing CPU (struct sa_stash: at most SA_STASH_RUNS runs and SA_STASH_UNITS units),
 * and an allocation of the same unit count and node takes it back from there, so a program
 * that frees and allocates large blocks (32 KiB .. 256 KiB) does not take pages->lock each
 * time. Bigger runs go straight back to the bitmap: with runs up to 1 MiB stashed, a realloc
 * chain growing a block to 1 MiB ran 3x slower after other work (make bench: 148 ns a realloc
 * against 47), its block's next units held in stashes instead of free after it.
 * A stashed run is free in every other respect: its unit records are cleared (a second free of
 * the block is reported as a bad free), it counts as dirty, and a purge or sa_trim first moves
 * every stash back to the segments. When a run does not fit, the oldest runs are moved out.
 * A large block that grows in place (realloc) first moves this CPU's stashed runs that lie in
 * its way back to the bitmap.
 * stash->lock is a spinlock held for a few loads and stores, a leaf (nothing is taken under
 * it): a thread only ever tries it (a busy stash sends the caller to pages->lock), except a
 * purge and the fork handlers, which wait for it.
 *
 * Guarded runs (debug=G, alloc/debug.c): a large malloc block's run is made PROT_NONE by
 * sa_segment_free_block after its records are cleared and before release_run makes it free
 * (the claim by exchange comes first, so a racing second free never touches the run), and its
 * units' bits are set in seg->guard_units. Whoever takes units later (sa_segment_alloc_units,
 * a realloc growing in place) clears the bits it finds set in its run and restores access
 * before anything is written there; a NOWAIT taker skips guarded runs in the bitmap instead,
 * so it never makes that system call, and nobody takes a guarded run from a stash (it waits
 * there while newer runs pass, then goes to the bitmap: a freed block is not handed to the very
 * next malloc of its size). A guarded run is otherwise free like any other: stashed, purged
 * (madvise works on PROT_NONE pages; the protection stays), unmapped with its segment (its bits
 * are forgotten). The test on the default path is a load of the
 * bits (clear) in the segment header that take_locked reads anyway: no system call.
 */
#define _GNU_SOURCE /* PTHREAD_MUTEX_ADAPTIVE_NP */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "alloc/scope.h"

uint64_t sa_segmap[1ul << (SA_ADDR_BITS - SA_SEG_SHIFT - 6)];

struct sa_pages {
	pthread_mutex_t lock;
	struct sa_segment *segs; /* lock */
} __attribute__((aligned(SA_CACHELINE)));

static struct sa_pages pages[SA_MAX_NODES];
static _Atomic uint64_t bind_failures_total;
static _Atomic uint64_t mapped_bytes;
static _Atomic uint64_t units_used; /* units handed out (slabs, large blocks) */
static pthread_once_t pages_once = PTHREAD_ONCE_INIT;
static _Atomic uint64_t dirty_bytes;
static _Atomic uint64_t last_purge_ns;
#define SA_DIRTY_MAX (64ul << 20)

#define SA_STASH_CPUS	 256 /* stash i serves the CPUs i, i + 256, ... */
#define SA_STASH_RUNS	 6
#define SA_STASH_UNITS	 16 /* 1 MiB a CPU */
#define SA_STASH_RUN_MAX 4
struct sa_stash {
	uint32_t lock;
	uint32_t n;	/* lock: entries in run[], oldest first */
	uint32_t units; /* lock: units of those entries */
	uint32_t pad;
	uintptr_t run[SA_STASH_RUNS]; /* lock: head unit record | unit count (records are 64 B) */
};
_Static_assert(sizeof(struct sa_stash) == SA_CACHELINE, "one line a CPU");
static struct sa_stash stashes[SA_STASH_CPUS] __attribute__((aligned(SA_CACHELINE)));
static _Atomic uint64_t reserve_free; /* the emergency reserve's free units (below) */

void sa_segmap_set(const void *seg, int on)
{
	uintptr_t bit = (uintptr_t)seg >> SA_SEG_SHIFT;
	if (on)
		__atomic_fetch_or(&sa_segmap[bit >> 6], 1ull << (bit & 63), __ATOMIC_RELEASE);
	else
		__atomic_fetch_and(&sa_segmap[bit >> 6], ~(1ull << (bit & 63)), __ATOMIC_RELEASE);
}

size_t sa_segment_dirty_bytes(void)
{
	return atomic_load(&dirty_bytes);
}

static void pages_init(void)
{
	pthread_mutexattr_t a;
	pthread_mutexattr_init(&a);
	pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
	for (int i = 0; i < SA_MAX_NODES; i++)
		pthread_mutex_init(&pages[i].lock, &a);
	pthread_mutexattr_destroy(&a);
}

uint64_t sa_segment_bind_failures(void)
{
	return atomic_load(&bind_failures_total);
}

size_t sa_segment_mapped_bytes(void)
{
	return atomic_load(&mapped_bytes);
}

size_t sa_segment_used_bytes(void)
{
	return atomic_load(&units_used) * SA_UNIT_SIZE;
}

/* Bytes of segment memory that may be resident: headers, units in use, dirty free units. */
size_t sa_segment_resident_bytes(void)
{
	return atomic_load(&mapped_bytes) / SA_UNITS_PER_SEG +
	       atomic_load(&units_used) * SA_UNIT_SIZE + atomic_load(&dirty_bytes);
}

/* len bytes mapped at an address aligned to align (a power of two, at least a page), or NULL:
 * map len + align, then unmap the head and the tail around the aligned part. */
char *sa_map_aligned(size_t len, size_t align, int prot)
{
	size_t span = len + align;
	char *m = mmap(NULL, span, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		return NULL;
	char *a = (char *)(((uintptr_t)m + align - 1) & ~(uintptr_t)(align - 1));
	if (a > m)
		munmap(m, (size_t)(a - m));
	if (a + len < m + span)
		munmap(a + len, (size_t)(m + span - (a + len)));
	return a;
}

/* The bits of units [at, at + n) of a segment's unit bitmap. */
static uint64_t unit_mask(unsigned at, unsigned n)
{
	return (n == 64 ? ~0ull : ((1ull << n) - 1)) << at;
}

static struct sa_segment *segment_map(int node, _Atomic uint64_t *bind_failures)
{
	char *a = sa_map_aligned(SA_SEG_SIZE, SA_SEG_SIZE, PROT_READ | PROT_WRITE);
	if (!a)
		return NULL;
	if ((uintptr_t)a >> SA_ADDR_BITS) { /* beyond the map (5-level paging hint): refuse */
		munmap(a, SA_SEG_SIZE);
		return NULL;
	}
	if (sa_topo_bind(a, SA_SEG_SIZE, node) != 0) {
		atomic_fetch_add(&bind_failures_total, 1);
		if (bind_failures)
			atomic_fetch_add(bind_failures, 1);
	}
	struct sa_segment *seg = (struct sa_segment *)a;
	seg->magic = SA_SEG_MAGIC;
	seg->node = node;
	seg->free_units = ~1ull; /* unit 0 holds this header */
	seg->nfree = SA_UNITS_PER_SEG - 1;
	for (unsigned i = 0; i < SA_UNITS_PER_SEG; i++)
		seg->slabs[i].node = node;
	sa_segmap_set(a, 1);
	atomic_fetch_add(&mapped_bytes, SA_SEG_SIZE);
	sa_held_add(SA_UNIT_SIZE); /* the header unit; the others are charged when taken */
	return seg;
}

/* First run of n set bits in m, or -1. */
static int find_run(uint64_t m, unsigned n)
{
	uint64_t r = m;
	for (unsigned i = 1; i < n && r; i++)
		r &= m >> i;
	return r ? __builtin_ctzll(r) : -1;
}

/* Units of seg that are free and guarded (PROT_NONE, debug=G); atomic: the bits are set by a
 * run's owner before the run is given back, not under pages->lock. */
static uint64_t guarded(const struct sa_segment *seg)
{
	return __atomic_load_n(&seg->guard_units, __ATOMIC_ACQUIRE);
}

/* Take a run of units from seg (locked), a dirty one if there is (its pages are resident and
 * held already: no new charge, no page faults); *dirty gets the mask of the dirty units taken.
 * nowait: no guarded unit (making it accessible again is a system call). */
static struct sa_slab *take_locked(struct sa_segment *seg, unsigned units, uint64_t *dirty,
				   bool nowait)
{
	uint64_t can = seg->free_units;
	if (nowait)
		can &= ~guarded(seg);
	int at = find_run(can & seg->dirty_units, units);
	if (at < 0)
		at = find_run(can, units);
	if (at < 0)
		return NULL;
	uint64_t mask = unit_mask((unsigned)at, units);
	seg->free_units &= ~mask;
	seg->nfree -= units;
	atomic_fetch_add(&units_used, units);
	*dirty = seg->dirty_units & mask;
	if (*dirty) {
		seg->dirty_units &= ~mask;
		atomic_fetch_sub(&dirty_bytes,
				 (uint64_t)__builtin_popcountll(*dirty) * SA_UNIT_SIZE);
	}
	return &seg->slabs[at];
}

/* Undo take_locked (the limit refused the charge of the run's clean units); locked. */
static void untake_locked(struct sa_segment *seg, struct sa_slab *s, unsigned units, uint64_t dirty)
{
	uint64_t mask = unit_mask((unsigned)(s - seg->slabs), units);
	seg->free_units |= mask;
	seg->dirty_units |= dirty;
	seg->nfree += units;
	atomic_fetch_sub(&units_used, units);
	atomic_fetch_add(&dirty_bytes, (uint64_t)__builtin_popcountll(dirty) * SA_UNIT_SIZE);
}

/* Units [at, at + units) of seg become free (dirty) in its bitmap. false: nowait and the lock
 * was busy (nothing done). */
static bool give_back_units(struct sa_segment *seg, unsigned at, unsigned units, bool nowait)
{
	uint64_t mask = unit_mask(at, units);
	struct sa_pages *pg = &pages[seg->node];
	if (nowait) {
		if (pthread_mutex_trylock(&pg->lock) != 0)
			return false;
	} else {
		pthread_mutex_lock(&pg->lock);
	}
	seg->free_units |= mask;
	seg->dirty_units |= mask;
	seg->nfree += units;
	pthread_mutex_unlock(&pg->lock);
	return true;
}

static struct sa_stash *my_stash(void)
{
	return &stashes[(unsigned)sa_pcs_current_cpu() & (SA_STASH_CPUS - 1)];
}

static bool stash_trylock(struct sa_stash *st)
{
	return __atomic_exchange_n(&st->lock, 1, __ATOMIC_ACQUIRE) == 0;
}

static void stash_lock(struct sa_stash *st)
{
	while (!stash_trylock(st))
		while (__atomic_load_n(&st->lock, __ATOMIC_RELAXED))
			__builtin_ia32_pause();
}

static void stash_unlock(struct sa_stash *st)
{
	__atomic_store_n(&st->lock, 0, __ATOMIC_RELEASE);
}

static unsigned entry_units(uintptr_t e)
{
	return (unsigned)(e & (SA_CACHELINE - 1));
}

static struct sa_slab *entry_head(uintptr_t e)
{
	return (struct sa_slab *)(e & ~(uintptr_t)(SA_CACHELINE - 1));
}

/* Take entry i out of st (locked), keeping the order of the others; returns it. */
static uintptr_t stash_remove_locked(struct sa_stash *st, unsigned i)
{
	uintptr_t e = st->run[i];
	for (unsigned j = i; j + 1 < st->n; j++)
		st->run[j] = st->run[j + 1];
	st->units -= entry_units(e);
	__atomic_store_n(&st->n, st->n - 1, __ATOMIC_RELAXED); /* read unlocked elsewhere */
	return e;
}

/* Free a stashed run into its segment's bitmap. */
/* Free a stashed run into its segment's bitmap; nowait: only if the page lock is free now,
 * else later (alloc/defer.c, SA_DEFER_UNITS: the head record keeps the unit count). */
static void give_back_entry(uintptr_t e, bool nowait)
{
	struct sa_slab *head = entry_head(e);
	struct sa_segment *seg = (struct sa_segment *)((uintptr_t)head & ~(SA_SEG_SIZE - 1));
	if (!give_back_units(seg, (unsigned)(head - seg->slabs), entry_units(e), nowait)) {
		head->nunits = (uint16_t)entry_units(e);
		sa_defer(head, SA_DEFER_UNITS);
	}
}

/* SA_DEFER_UNITS: a free run (accounted as dirty already) into its segment's bitmap. */
void sa_segment_units_deferred(struct sa_slab *head)
{
	struct sa_segment *seg = (struct sa_segment *)((uintptr_t)head & ~(SA_SEG_SIZE - 1));
	unsigned units = head->nunits;
	head->nunits = 0;
	give_back_units(seg, (unsigned)(head - seg->slabs), units, false);
}

/* Is any unit of the run of n units at head guarded? */
static bool run_guarded(const struct sa_slab *head, unsigned n)
{
	const struct sa_segment *seg =
		(const struct sa_segment *)((uintptr_t)head & ~(SA_SEG_SIZE - 1));
	return (guarded(seg) & unit_mask((unsigned)(head - seg->slabs), n)) != 0;
}

/* The newest stashed run of this CPU with exactly units units on node, or NULL. Not a guarded
 * one under NOWAIT (mprotect) nor while debug=G is on: a freed block of up to 256 KiB stays
 * inaccessible while SA_STASH_RUNS newer runs pass through the stash, instead of going to the
 * very next malloc of its size (which would hide a use after free right behind it); pushed
 * out, it is reusable from its segment's bitmap. Without either, no guard bit is read. */
static struct sa_slab *stash_take(int node, unsigned units, bool nowait)
{
	if (units > SA_STASH_RUN_MAX)
		return NULL;
	struct sa_stash *st = my_stash();
	if (__atomic_load_n(&st->n, __ATOMIC_RELAXED) == 0 || !stash_trylock(st))
		return NULL;
	struct sa_slab *s = NULL;
	for (unsigned i = st->n; i-- > 0;) {
		uintptr_t e = st->run[i];
		if (entry_units(e) == units && entry_head(e)->node == node &&
		    !((nowait || sa_guard_on()) && run_guarded(entry_head(e), units))) {
			s = entry_head(stash_remove_locked(st, i));
			break;
		}
	}
	stash_unlock(st);
	if (s) {
		atomic_fetch_add(&units_used, units);
		atomic_fetch_sub(&dirty_bytes, (uint64_t)units * SA_UNIT_SIZE);
	}
	return s;
}

/* Stash the freed run at head (records already cleared); false: it goes to the bitmap. */
static bool stash_put(struct sa_slab *head, unsigned units)
{
	if (units > SA_STASH_RUN_MAX)
		return false;
	struct sa_stash *st = my_stash();
	if (!stash_trylock(st))
		return false;
	uintptr_t out[SA_STASH_RUNS];
	unsigned nout = 0;
	while (st->n == SA_STASH_RUNS || st->units + units > SA_STASH_UNITS)
		out[nout++] = stash_remove_locked(st, 0); /* the oldest makes room */
	st->run[st->n] = (uintptr_t)head | units;
	st->units += units;
	__atomic_store_n(&st->n, st->n + 1, __ATOMIC_RELAXED);
	stash_unlock(st);
	bool nowait = !sa_may_block(sa_flags_effective(0));
	for (unsigned i = 0; i < nout; i++)
		give_back_entry(out[i], nowait);
	return true;
}

/* Move every stashed run back to its segment (purge, sa_trim). */
static void stash_drain_all(void)
{
	for (unsigned c = 0; c < SA_STASH_CPUS; c++) {
		struct sa_stash *st = &stashes[c];
		if (__atomic_load_n(&st->n, __ATOMIC_RELAXED) == 0)
			continue;
		uintptr_t out[SA_STASH_RUNS];
		stash_lock(st);
		unsigned n = st->n;
		for (unsigned i = 0; i < n; i++)
			out[i] = st->run[i];
		st->units = 0;
		__atomic_store_n(&st->n, 0, __ATOMIC_RELAXED);
		stash_unlock(st);
		for (unsigned i = 0; i < n; i++)
			give_back_entry(out[i], false);
	}
}

/* Move the runs of this CPU's stash that overlap units [at, at + n) of seg back to the bitmap
 * (a large block about to grow in place into them); true if any moved. */
static bool stash_release_range(struct sa_segment *seg, unsigned at, unsigned n)
{
	struct sa_stash *st = my_stash();
	if (__atomic_load_n(&st->n, __ATOMIC_RELAXED) == 0 || !stash_trylock(st))
		return false;
	uintptr_t out[SA_STASH_RUNS];
	unsigned nout = 0;
	for (unsigned i = 0; i < st->n;) {
		struct sa_slab *h = entry_head(st->run[i]);
		unsigned hat = (unsigned)(h - seg->slabs);
		if ((struct sa_segment *)((uintptr_t)h & ~(SA_SEG_SIZE - 1)) == seg &&
		    hat < at + n && hat + entry_units(st->run[i]) > at)
			out[nout++] = stash_remove_locked(st, i);
		else
			i++;
	}
	stash_unlock(st);
	bool nowait = !sa_may_block(sa_flags_effective(0));
	for (unsigned i = 0; i < nout; i++)
		give_back_entry(out[i], nowait);
	return nout > 0;
}

/* A unit allocation or free, or a decay pass: time for (more of) a purge round? (see
 * sa_segment_purge) True if a round is under way and not finished. */
bool sa_segment_purge_tick(void)
{
	if (sa_in_decay) /* a decay pass steps the round once, at its end */
		return false;
	if (atomic_load_explicit(&dirty_bytes, memory_order_relaxed) > SA_DIRTY_MAX ||
	    sa_now_ns() - atomic_load(&last_purge_ns) >= (uint64_t)sa_opt.purge_ms * 1000000ull) {
		sa_segment_purge(0);
		return atomic_load(&last_purge_ns) == 0;
	}
	return false;
}

/* Units [head, head + n) were just taken (their owner is the caller): clear their guard bits and
 * make them accessible again where any was set (debug=G). Without guarded units: one load, no
 * system call. If the mprotect fails (a range that would split a mapping past
 * vm.max_map_count), the whole segment is made accessible, which merges its mappings; the other
 * guarded runs in it lose their protection but keep their bits (a later owner's mprotect of an
 * accessible run does no harm). If that fails too, handing out inaccessible memory is not an
 * option: the process aborts with a message. */
static void unguard_units(struct sa_slab *head, unsigned n)
{
	struct sa_segment *seg = (struct sa_segment *)((uintptr_t)head & ~(SA_SEG_SIZE - 1));
	uint64_t mask = unit_mask((unsigned)(head - seg->slabs), n);
	if (SA_LIKELY(!(guarded(seg) & mask)))
		return;
	uint64_t had = __atomic_fetch_and(&seg->guard_units, ~mask, __ATOMIC_ACQ_REL) & mask;
	if (!had)
		return;
	char *base = sa_slab_base(head);
	if (sa_debug_unguard(base, (size_t)n * SA_UNIT_SIZE, (unsigned)__builtin_popcountll(had)))
		return;
	if (mprotect((char *)seg + SA_UNIT_SIZE, SA_SEG_SIZE - SA_UNIT_SIZE,
		     PROT_READ | PROT_WRITE) == 0)
		return;
	sa_msg("sheafalloc: debug=G: cannot make freed memory at %p accessible again (mprotect); "
	       "aborting\n",
	       (void *)base);
	abort();
}

/* Units [head, head + n), which the caller owns and is about to give back, become PROT_NONE and
 * guarded (debug=G), unless this context may not make system calls, the run is the emergency
 * reserve's, or sa_debug_guard declines (over its cap, mprotect refused). */
static void guard_units(struct sa_slab *head, unsigned n)
{
	struct sa_segment *seg = (struct sa_segment *)((uintptr_t)head & ~(SA_SEG_SIZE - 1));
	if (seg->reserve || !sa_may_syscall(sa_flags_effective(0)))
		return;
	if (!sa_debug_guard(sa_slab_base(head), (size_t)n * SA_UNIT_SIZE, n))
		return;
	__atomic_fetch_or(&seg->guard_units, unit_mask((unsigned)(head - seg->slabs), n),
			  __ATOMIC_RELEASE);
}

/*
 * A run of `units` units on node, for a slab or a large block, or NULL. Order: this CPU's stash
 * (dirty units), then the node's segments (dirty runs first), then a new segment. Units that
 * were dirty are held already; the clean ones are charged against the limit after the take
 * (sa_held_charge), and a refused charge puts the run back, reclaims as the flags allow and
 * looks again, once; a failed mapping does the same. Last, for flags that may, the emergency
 * reserve. Under SA_NOWAIT: try-locks only, no purge, no mapping.
 * The caller holds no allocator lock (reclaim may run here).
 */
struct sa_slab *sa_segment_alloc_units(int node, unsigned units, sa_flags_t flags,
				       _Atomic uint64_t *bind_failures)
{
	pthread_once(&pages_once, pages_init);
	if (units == 0 || units >= SA_UNITS_PER_SEG || node < 0 || node >= SA_MAX_NODES)
		return NULL;
	struct sa_pages *pg = &pages[node];
	bool nowait = !sa_may_block(flags), map_retried = false, limit_retried = false;
	uint64_t dirty = 0;
	struct sa_slab *s;
again:
	s = stash_take(node, units, nowait);
	if (s)
		goto found;
	if (nowait) {
		if (pthread_mutex_trylock(&pg->lock) != 0)
			goto reserve;
	} else {
		pthread_mutex_lock(&pg->lock);
	}
	size_t clean = 0;
	bool refused = false;
	for (struct sa_segment *seg = pg->segs; seg && !s; seg = seg->next) {
		if (seg->nfree < units || !(s = take_locked(seg, units, &dirty, nowait)))
			continue;
		/* the clean units are charged while the lock is held, so that a refusal puts the
		 * run back at once (a NOWAIT caller could not wait for the lock again) */
		clean = (size_t)(units - (unsigned)__builtin_popcountll(dirty)) * SA_UNIT_SIZE;
		if (clean && !sa_held_charge(clean)) {
			untake_locked(seg, s, units, dirty);
			s = NULL;
			refused = true;
			break;
		}
	}
	pthread_mutex_unlock(&pg->lock);
	if (!nowait)
		sa_segment_purge_tick();
	if (s)
		goto found;
	if (refused)
		goto limit;
	if (nowait)
		goto reserve;
	clean = (size_t)units * SA_UNIT_SIZE;
	if (!sa_held_charge(clean))
		goto limit;
	struct sa_segment *seg = segment_map(node, bind_failures);
	if (!seg) {
		/* out of address space (RLIMIT_AS) or memory: give back what the caches,
		 * stashes and free segments hold, then look again, once */
		sa_held_sub(clean);
		if (!map_retried && sa_reclaim_map_failed(flags)) {
			map_retried = true;
			goto again;
		}
		goto reserve;
	}
	pthread_mutex_lock(&pg->lock);
	s = take_locked(seg, units, &dirty, false); /* a new segment: nothing guarded */
	seg->next = pg->segs;
	pg->segs = seg;
	pthread_mutex_unlock(&pg->lock);
	goto found;
limit: /* the limit is in the way: reclaim, then once more */
	if (!limit_retried && sa_reclaim_for_limit(clean, flags)) {
		limit_retried = true;
		goto again;
	}
reserve:
	if (!sa_may_use_reserve(flags) || !(s = sa_reserve_take_units(units)))
		return NULL;
found:
	unguard_units(s, units); /* debug=G: a guarded run is made accessible again */
	for (unsigned i = 0; i < units; i++) {
		s[i].head = s;
		s[i].nunits = (uint16_t)units;
	}
	s->flags = 0;
	return s;
}

uint64_t sa_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void (*sa_segment_release_test_hook)(void);

/* A run whose records are cleared goes back: to the reserve, this CPU's stash, or its
 * segment's bitmap (dirty). In a context that may not wait (the scope says NOWAIT) the page
 * lock is only tried and a busy one defers the run (alloc/defer.c); no purge runs then. */
static void release_run(struct sa_slab *head, unsigned units)
{
	struct sa_segment *seg = (struct sa_segment *)((uintptr_t)head & ~(SA_SEG_SIZE - 1));
	unsigned at = (unsigned)(head - seg->slabs);
	if (seg->reserve) {
		atomic_fetch_sub(&units_used, units);
		atomic_fetch_or(&reserve_free, unit_mask(at, units));
		return;
	}
	bool nowait = !sa_may_block(sa_flags_effective(0));
	if (!stash_put(head, units) && !give_back_units(seg, at, units, nowait)) {
		head->nunits = (uint16_t)units; /* read back by sa_segment_release_deferred */
		sa_defer(head, SA_DEFER_RUN);
		return;
	}
	if (SA_UNLIKELY(sa_segment_release_test_hook != NULL))
		sa_segment_release_test_hook();
	atomic_fetch_sub(&units_used, units);
	atomic_fetch_add(&dirty_bytes, (uint64_t)units * SA_UNIT_SIZE);
	if (!nowait)
		sa_segment_purge_tick();
}

static void clear_records(struct sa_slab *head, unsigned units)
{
	for (unsigned i = 0; i < units; i++) {
		struct sa_slab *u = &head[i];
		__atomic_store_n(&u->cache, NULL, __ATOMIC_RELEASE);
		u->head = NULL;
		u->bits = NULL;
		u->hint = 0;
		u->flags = 0;
		u->fresh = 0;
		u->next = u->prev = NULL;
		u->inuse = u->nobjs = 0;
		u->nunits = 0;
		u->on_partial = 0;
	}
}

static void free_units(struct sa_slab *head, bool guard)
{
	unsigned units = head->nunits;
	if (!__atomic_exchange_n(&head->cache, NULL, __ATOMIC_ACQ_REL)) {
		/* another thread freed the same block a moment ago */
		sa_cache_bad_free(NULL, sa_slab_base(head),
				  "not an allocated block (freed already, or never allocated)");
		return;
	}
	clear_records(head, units);
	if (guard) /* claimed above, not free yet: nobody else can take or protect it */
		guard_units(head, units);
	release_run(head, units);
}

void sa_segment_free_units(struct sa_slab *head)
{
	free_units(head, false);
}

/* A large malloc block's run: as sa_segment_free_units, made inaccessible first under debug=G. */
void sa_segment_free_block(struct sa_slab *head)
{
	free_units(head, sa_guard_on());
}

/* A run taken with sa_segment_alloc_units and never published (no cache recorded). */
void sa_segment_unuse_units(struct sa_slab *head)
{
	unsigned units = head->nunits;
	clear_records(head, units);
	release_run(head, units);
}

/* A run deferred by release_run (its head record keeps the unit count). */
void sa_segment_release_deferred(struct sa_slab *head)
{
	unsigned units = head->nunits;
	head->nunits = 0;
	release_run(head, units);
}

/* Grow or shrink a unit run in place (large realloc). 0 on success, -1 if the units after it
 * are taken or the segment ends. */
int sa_segment_resize_units(struct sa_slab *head, unsigned units, sa_flags_t flags)
{
	struct sa_segment *seg = (struct sa_segment *)((uintptr_t)head & ~(SA_SEG_SIZE - 1));
	unsigned at = (unsigned)(head - seg->slabs), old = head->nunits;
	if (units == old)
		return 0;
	if (units == 0 || at + units > SA_UNITS_PER_SEG || seg->reserve)
		return -1;
	struct sa_pages *pg = &pages[seg->node];
	bool nowait = !sa_may_block(flags);
	if (units > old) {
		uint64_t mask = unit_mask(at + old, units - old);
		size_t bytes = (size_t)(units - old) * SA_UNIT_SIZE;
		if (!sa_held_charge(bytes)) /* the limit: the caller moves the block instead */
			return -1;
		for (int tries = 0;; tries++) {
			if (nowait) {
				if (pthread_mutex_trylock(&pg->lock) != 0) {
					sa_held_sub(bytes);
					return -1;
				}
			} else {
				pthread_mutex_lock(&pg->lock);
			}
			/* a NOWAIT caller may not make guarded units accessible (mprotect) */
			if ((seg->free_units & mask) == mask && !(nowait && (guarded(seg) & mask)))
				break;
			pthread_mutex_unlock(&pg->lock);
			/* the units after the block may sit in this CPU's stash: free them and retry */
			if (tries > 0 || !stash_release_range(seg, at + old, units - old)) {
				sa_held_sub(bytes);
				return -1;
			}
		}
		seg->free_units &= ~mask;
		seg->nfree -= units - old;
		uint64_t was_dirty = seg->dirty_units & mask;
		seg->dirty_units &= ~mask;
		pthread_mutex_unlock(&pg->lock);
		sa_held_sub((size_t)__builtin_popcountll(was_dirty) * SA_UNIT_SIZE);
		atomic_fetch_add(&units_used, units - old);
		atomic_fetch_sub(&dirty_bytes,
				 (uint64_t)__builtin_popcountll(was_dirty) * SA_UNIT_SIZE);
		unguard_units(head + old, units - old); /* debug=G: before the program writes */
		for (unsigned i = old; i < units; i++) {
			head[i].head = head;
			__atomic_store_n(&head[i].cache, head->cache, __ATOMIC_RELEASE);
		}
		for (unsigned i = 0; i < units; i++)
			head[i].nunits = (uint16_t)units;
		return 0;
	}
	if (!nowait && sa_guard_on()) /* debug=G: the tail given back, while it is still ours */
		guard_units(head + units, old - units);
	if (nowait) {
		if (pthread_mutex_trylock(&pg->lock) != 0)
			return -1; /* the block stays as it is */
	} else {
		pthread_mutex_lock(&pg->lock);
	}
	for (unsigned i = units; i < old; i++) {
		__atomic_store_n(&head[i].cache, NULL, __ATOMIC_RELEASE);
		head[i].head = NULL;
		head[i].nunits = 0;
	}
	for (unsigned i = 0; i < units; i++)
		head[i].nunits = (uint16_t)units;
	uint64_t mask = unit_mask(at + units, old - units);
	seg->free_units |= mask;
	seg->dirty_units |= mask;
	seg->nfree += old - units;
	pthread_mutex_unlock(&pg->lock);
	atomic_fetch_sub(&units_used, old - units);
	atomic_fetch_add(&dirty_bytes, (uint64_t)(old - units) * SA_UNIT_SIZE);
	return 0;
}

/* Purge seg's dirty free units (madvise, without the lock: the units are taken out of the free
 * set meanwhile): all of them, or (units) at most *units of them, counted down. Sets *next to
 * the segment after it, or to seg when some were left; adds the madvise calls to *calls. */
static size_t purge_segment(struct sa_pages *pg, struct sa_segment *seg, struct sa_segment **next,
			    unsigned *calls, unsigned *units)
{
	pthread_mutex_lock(&pg->lock);
	*next = seg->next; /* unlinked only under purge_busy, held by every walk: stays valid */
	uint64_t take = seg->dirty_units & seg->free_units;
	if (units) { /* a round's step: at most *units units, the lowest; the rest next time */
		uint64_t part = 0;
		for (unsigned n = *units; n && take; n--) {
			part |= take & -take;
			take &= take - 1;
		}
		if (take)
			*next = seg; /* more here: the cursor stays */
		take = part;
		*units -= (unsigned)__builtin_popcountll(part);
	}
	seg->free_units &= ~take; /* ours while madvise runs */
	seg->nfree -= (uint32_t)__builtin_popcountll(take);
	pthread_mutex_unlock(&pg->lock);
	if (!take)
		return 0;
	uint64_t m = take;
	while (m) {
		unsigned at = (unsigned)__builtin_ctzll(m);
		unsigned len = (unsigned)__builtin_ctzll(~(m >> at)); /* bit 0 is never free */
		if (at + len > 64)
			len = 64 - at;
		madvise((char *)seg + (size_t)at * SA_UNIT_SIZE, (size_t)len * SA_UNIT_SIZE,
			MADV_DONTNEED);
		(*calls)++;
		m &= ~unit_mask(at, len);
	}
	pthread_mutex_lock(&pg->lock);
	seg->dirty_units &= ~take;
	seg->free_units |= take;
	seg->nfree += (uint32_t)__builtin_popcountll(take);
	pthread_mutex_unlock(&pg->lock);
	size_t b = (size_t)__builtin_popcountll(take) * SA_UNIT_SIZE;
	atomic_fetch_sub(&dirty_bytes, b);
	sa_held_sub(b);
	return b;
}

static struct sa_segment *node_head(int n)
{
	pthread_mutex_lock(&pages[n].lock);
	struct sa_segment *seg = pages[n].segs;
	pthread_mutex_unlock(&pages[n].lock);
	return seg;
}

/*
 * A purge round that a unit allocation or free sets off (purge_tick: purge_ms passed, or
 * SA_DIRTY_MAX dirty bytes) makes at most SA_PURGE_CALLS madvise calls on at most SA_PURGE_UNITS
 * units (1 MiB: a madvise's cost grows with the pages it drops, and a step of 8 calls on whole
 * 4 MiB runs made one allocation wait 2-6 ms in bench/rss_bench), then leaves a cursor and
 * clears last_purge_ns, so the next unit allocation or free goes on from there: no single call
 * pays for the whole heap (a whole round made a free wait 1-5 ms in the churn benchmark; one
 * madvise takes 2-100 us here). Only one
 * thread runs a round at a time (purge_busy; the others go on without purging); the cursor
 * state belongs to whoever holds purge_busy. A forced purge (sa_trim, a huge block that needs
 * new pages) does everything at once, whatever a round is doing.
 */
#define SA_PURGE_CALLS 8
#define SA_PURGE_UNITS 16
static _Atomic int purge_busy;
static bool purge_open;				  /* purge_busy */
static int purge_node;				  /* purge_busy */
static struct sa_segment *purge_at[SA_MAX_NODES]; /* purge_busy */

/* Wait for purge_busy (a round's few madvise calls, a forced purge, an unmapping). */
static void purge_lock(void)
{
	for (unsigned n = 0; atomic_exchange(&purge_busy, 1); n++) {
		if (n < 100)
			__builtin_ia32_pause();
		else
			sched_yield();
	}
}

/* Purge dirty free units at once until at least `need` bytes went (or none is left): reclaim
 * under the memory limit asks for what it needs, sa_trim for everything. Returns bytes. */
size_t sa_segment_purge_upto(size_t need)
{
	pthread_once(&pages_once, pages_init);
	size_t total = 0;
	unsigned calls = 0;
	purge_lock(); /* walks the lists: no segment may be unmapped meanwhile */
	atomic_store(&last_purge_ns, sa_now_ns());
	stash_drain_all();
	for (int n = 0; n < SA_MAX_NODES && total < need; n++) {
		for (struct sa_segment *seg = node_head(n); seg;) {
			total += purge_segment(&pages[n], seg, &seg, &calls, NULL);
			if (total >= need)
				break;
		}
	}
	atomic_store(&purge_busy, 0);
	return total;
}

/* Purge dirty free units: all of them (force), or the next few of a round. Returns bytes. */
size_t sa_segment_purge(int force)
{
	pthread_once(&pages_once, pages_init);
	size_t total = 0;
	unsigned calls = 0;
	if (force)
		return sa_segment_purge_upto(SIZE_MAX);
	if (atomic_exchange(&purge_busy, 1))
		return 0;
	atomic_store(&last_purge_ns, sa_now_ns());
	if (!purge_open) {
		stash_drain_all();
		for (int n = 0; n < SA_MAX_NODES; n++)
			purge_at[n] = node_head(n);
		purge_node = 0;
		purge_open = true;
	}
	while (purge_node < SA_MAX_NODES) {
		struct sa_segment *seg = purge_at[purge_node];
		unsigned units = SA_PURGE_UNITS;
		while (seg && calls < SA_PURGE_CALLS && units)
			total += purge_segment(&pages[purge_node], seg, &seg, &calls, &units);
		purge_at[purge_node] = seg;
		if (seg)
			break;
		purge_node++;
	}
	if (purge_node == SA_MAX_NODES)
		purge_open = false;
	else
		atomic_store(&last_purge_ns, 0); /* unfinished: the next unit free goes on */
	atomic_store(&purge_busy, 0);
	return total;
}

/*
 * Unmap every segment whose units are all free (sa_trim, and alloc/reclaim.c when a mapping
 * failed): its address space goes back to the process, which matters under RLIMIT_AS. The
 * stashes are emptied first (a stashed run keeps its segment). Returns the bytes unmapped.
 * Under purge_busy, so no purge walks a list meanwhile and a round's cursor, which may point at
 * an unmapped segment, is dropped (the next round starts afresh).
 */
size_t sa_segment_unmap_free(void)
{
	pthread_once(&pages_once, pages_init);
	struct sa_segment *out = NULL;
	size_t n = 0;
	purge_lock();
	stash_drain_all();
	for (int i = 0; i < SA_MAX_NODES; i++) {
		struct sa_pages *pg = &pages[i];
		pthread_mutex_lock(&pg->lock);
		for (struct sa_segment **sp = &pg->segs; *sp;) {
			struct sa_segment *seg = *sp;
			if (seg->nfree != SA_UNITS_PER_SEG - 1) {
				sp = &seg->next;
				continue;
			}
			*sp = seg->next;
			size_t dirty =
				(size_t)__builtin_popcountll(seg->dirty_units) * SA_UNIT_SIZE;
			uint64_t g = guarded(seg); /* wholly free: nobody changes its bits now */
			if (g)
				sa_debug_guard_forget((unsigned)__builtin_popcountll(g));
			atomic_fetch_sub(&dirty_bytes, dirty);
			sa_held_sub(dirty + SA_UNIT_SIZE);
			sa_segmap_set(seg, 0); /* before the munmap: a stale free says "not ours" */
			seg->next = out;
			out = seg;
			n++;
		}
		pthread_mutex_unlock(&pg->lock);
	}
	purge_open = false;
	atomic_store(&purge_busy, 0);
	while (out) {
		struct sa_segment *next = out->next;
		munmap(out, SA_SEG_SIZE);
		out = next;
	}
	atomic_fetch_sub(&mapped_bytes, n * SA_SEG_SIZE);
	return n * SA_SEG_SIZE;
}

/*
 * The emergency reserve: one segment kept off the node lists (never purged, never unmapped),
 * whose first reserve_nunits units after the header are faulted in when it is prepared and
 * counted in held from then on. Its free units are one atomic bitmap, taken and returned with
 * compare-and-swap: no lock, no system call, so an allocation that may use the reserve
 * (policy.h) gets memory from it when the try-locks or the limit said no. Bitmaps of slabs
 * carved from it live in its header unit (RESERVE_BITMAP_AT, 1 KiB per unit: enough for 8-byte
 * objects), so such a slab needs no metadata allocation either.
 * reserve_lock only serializes the preparation (a leaf: nothing is taken under it).
 */
#define RESERVE_UNITS_MAX 48
#define RESERVE_BITMAP_AT 8192
static struct sa_segment *_Atomic reserve_seg;
static unsigned reserve_nunits; /* written once, before reserve_seg is published */
static pthread_mutex_t reserve_lock = PTHREAD_MUTEX_INITIALIZER;
_Static_assert(RESERVE_BITMAP_AT + (RESERVE_UNITS_MAX + 1) * 1024 <= SA_UNIT_SIZE, "header");
_Static_assert(64 + 64 * SA_UNITS_PER_SEG <= RESERVE_BITMAP_AT, "records before bitmaps");

void sa_reserve_prepare(void)
{
	if (atomic_load_explicit(&reserve_seg, memory_order_acquire) || !sa_opt.reserve)
		return;
	pthread_once(&pages_once, pages_init);
	pthread_mutex_lock(&reserve_lock);
	if (!atomic_load_explicit(&reserve_seg, memory_order_relaxed)) {
		size_t n = (sa_opt.reserve + SA_UNIT_SIZE - 1) / SA_UNIT_SIZE;
		if (n > RESERVE_UNITS_MAX)
			n = RESERVE_UNITS_MAX;
		char *a = sa_map_aligned(SA_SEG_SIZE, SA_SEG_SIZE, PROT_READ | PROT_WRITE);
		if (a && !((uintptr_t)a >> SA_ADDR_BITS)) {
			int node = sa_topo_cpu_node(sa_pcs_current_cpu());
			if (node < 0 || node >= sa_nr_nodes)
				node = 0;
			sa_topo_bind(a, SA_SEG_SIZE, node);
			struct sa_segment *seg = (struct sa_segment *)a;
			seg->magic = SA_SEG_MAGIC;
			seg->node = node;
			seg->reserve = 1;
			for (unsigned i = 0; i < SA_UNITS_PER_SEG; i++)
				seg->slabs[i].node = node;
			/* fault it in now: a NOWAIT allocation must not wait for a page */
			for (size_t off = 4096; off < (n + 1) * SA_UNIT_SIZE; off += 4096)
				((volatile char *)a)[off] = 0;
			sa_segmap_set(a, 1);
			atomic_fetch_add(&mapped_bytes, SA_SEG_SIZE);
			sa_held_add((n + 1) * SA_UNIT_SIZE);
			reserve_nunits = (unsigned)n;
			atomic_store(&reserve_free, unit_mask(1, (unsigned)n));
			atomic_store_explicit(&reserve_seg, seg, memory_order_release);
		} else if (a) {
			munmap(a, SA_SEG_SIZE);
		}
	}
	pthread_mutex_unlock(&reserve_lock);
}

struct sa_slab *sa_reserve_take_units(unsigned units)
{
	struct sa_segment *seg = atomic_load_explicit(&reserve_seg, memory_order_acquire);
	if (!seg)
		return NULL;
	uint64_t m = atomic_load(&reserve_free);
	int at;
	do {
		at = find_run(m, units);
		if (at < 0)
			return NULL;
	} while (!atomic_compare_exchange_weak(&reserve_free, &m,
					       m & ~unit_mask((unsigned)at, units)));
	atomic_fetch_add(&units_used, units);
	sa_gstat_add(SA_G_RESERVE_ALLOCS, 1);
	return &seg->slabs[at];
}

bool sa_segment_is_reserve(const struct sa_segment *seg)
{
	return seg->reserve != 0;
}

void *sa_reserve_bitmap(struct sa_slab *head)
{
	struct sa_segment *seg = (struct sa_segment *)((uintptr_t)head & ~(SA_SEG_SIZE - 1));
	return (char *)seg + RESERVE_BITMAP_AT + (size_t)(head - seg->slabs) * 1024;
}

void sa_reserve_counts(size_t *bytes, size_t *free_bytes)
{
	struct sa_segment *seg = atomic_load_explicit(&reserve_seg, memory_order_acquire);
	*bytes = seg ? (size_t)reserve_nunits * SA_UNIT_SIZE : 0;
	*free_bytes = (size_t)__builtin_popcountll(atomic_load(&reserve_free)) * SA_UNIT_SIZE;
}

/* In the child, with every page and stash lock held, purge_busy held (no purge or unmapping in
 * flight) and no other thread: units_used and dirty_bytes are updated apart from the bitmaps
 * and stashes they count (release_run gives a run back, then counts it free and dirty;
 * stash_take and a shrinking realloc likewise), and a parent thread between the two steps never
 * takes the second one here. Short of what is free and dirty, dirty_bytes underflows when those
 * units are taken or purged (a purge round at every unit allocation and free from then on, and
 * malloc statistics off by 2^64); units_used stays off for good. Both are made to match what is
 * there: dirty = the dirty free units of the segments plus the stashed runs (and the stash
 * evictions parked in the deferred list); used = the units of the segments neither free nor
 * stashed nor parked, plus the reserve's units taken. A run a parent
 * thread was moving counts as used: like every block another parent thread held, it is lost
 * to the child. */
static void recount_after_fork(void)
{
	uint64_t used = 0, dirty = 0;
	for (int i = 0; i < SA_MAX_NODES; i++)
		for (struct sa_segment *seg = pages[i].segs; seg; seg = seg->next) {
			used += SA_UNITS_PER_SEG - 1 - seg->nfree;
			dirty += (uint64_t)__builtin_popcountll(seg->dirty_units);
		}
	for (unsigned c = 0; c < SA_STASH_CPUS; c++) {
		used -= stashes[c].units;
		dirty += stashes[c].units;
	}
	/* runs a NOWAIT eviction parked in the deferred list (SA_DEFER_UNITS) count as free and
	 * dirty already, as in the stash they left */
	uint64_t parked = sa_deferred_units_parked();
	used -= parked;
	dirty += parked;
	if (atomic_load(&reserve_seg))
		used += (uint64_t)__builtin_popcountll(unit_mask(1, reserve_nunits) &
						       ~atomic_load(&reserve_free));
	atomic_store(&units_used, used);
	atomic_store(&dirty_bytes, dirty * SA_UNIT_SIZE);
}

/* phase: 0 take purge_busy and the locks (prepare), 1 release them (parent), 2 (child) */
void sa_segment_atfork(int phase)
{
	if (phase == 2)
		recount_after_fork();
	if (phase == 0)
		pthread_mutex_lock(&reserve_lock);
	if (phase == 0) /* a round in progress finishes its few calls first */
		while (atomic_exchange(&purge_busy, 1))
			__builtin_ia32_pause();
	for (int i = 0; i < SA_MAX_NODES; i++) {
		if (phase == 0)
			pthread_mutex_lock(&pages[i].lock);
		else
			pthread_mutex_unlock(&pages[i].lock);
	}
	for (unsigned c = 0; c < SA_STASH_CPUS; c++) {
		if (phase == 0)
			stash_lock(&stashes[c]);
		else
			stash_unlock(&stashes[c]);
	}
	if (phase != 0) {
		atomic_store(&purge_busy, 0);
		pthread_mutex_unlock(&reserve_lock);
	}
}
