/*
 * alloc/segment.c — segments and units: memory from the OS, bound to a node (docs/design.md §2).
 *
 * Owns: sa_segmap (one bit per 4 MiB of the 47-bit address space: set = one of our segments;
 * set once before the segment is used, never cleared, read without a lock), and per node the
 * list of segments with their free-unit bitmaps.
 * pages->lock (rank 5) protects a node's segment list and every free_units/nfree in it.
 * A segment is mapped 8 MiB and trimmed to a 4 MiB-aligned 4 MiB, then bound to its node with
 * hwloc (a failure is counted, not fatal: the memory is still usable). Freed units are purged
 * with madvise(MADV_DONTNEED) before they are marked free, so the lock is never held across a
 * system call. Segments are kept mapped (their address space is reused).
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "alloc/internal.h"

uint64_t sa_segmap[1ul << (SA_ADDR_BITS - SA_SEG_SHIFT - 6)];

struct sa_pages {
	pthread_mutex_t lock;
	struct sa_segment *segs; /* lock */
} __attribute__((aligned(SA_CACHELINE)));

static struct sa_pages pages[SA_MAX_NODES];
static _Atomic uint64_t bind_failures_total;
static _Atomic uint64_t mapped_bytes;
static pthread_once_t pages_once = PTHREAD_ONCE_INIT;

static void pages_init(void)
{
	for (int i = 0; i < SA_MAX_NODES; i++)
		pthread_mutex_init(&pages[i].lock, NULL);
}

uint64_t sa_segment_bind_failures(void)
{
	return atomic_load(&bind_failures_total);
}

size_t sa_segment_mapped_bytes(void)
{
	return atomic_load(&mapped_bytes);
}

static struct sa_segment *segment_map(int node, _Atomic uint64_t *bind_failures)
{
	size_t span = 2 * SA_SEG_SIZE;
	char *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	char *a = (char *)(((uintptr_t)p + SA_SEG_SIZE - 1) & ~(SA_SEG_SIZE - 1));
	if (a > p)
		munmap(p, (size_t)(a - p));
	if (a + SA_SEG_SIZE < p + span)
		munmap(a + SA_SEG_SIZE, (size_t)(p + span - (a + SA_SEG_SIZE)));
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
	uintptr_t bit = (uintptr_t)a >> SA_SEG_SHIFT;
	__atomic_fetch_or(&sa_segmap[bit >> 6], 1ull << (bit & 63), __ATOMIC_RELEASE);
	atomic_fetch_add(&mapped_bytes, SA_SEG_SIZE);
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

static struct sa_slab *take_locked(struct sa_segment *seg, unsigned units)
{
	int at = find_run(seg->free_units, units);
	if (at < 0)
		return NULL;
	uint64_t mask = (units == 64 ? ~0ull : ((1ull << units) - 1)) << at;
	seg->free_units &= ~mask;
	seg->nfree -= units;
	return &seg->slabs[at];
}

struct sa_slab *sa_segment_alloc_units(int node, unsigned units, sa_flags_t flags,
				       _Atomic uint64_t *bind_failures)
{
	pthread_once(&pages_once, pages_init);
	if (units == 0 || units >= SA_UNITS_PER_SEG || node < 0 || node >= SA_MAX_NODES)
		return NULL;
	struct sa_pages *pg = &pages[node];
	struct sa_slab *s = NULL;
	pthread_mutex_lock(&pg->lock);
	for (struct sa_segment *seg = pg->segs; seg && !s; seg = seg->next)
		if (seg->nfree >= units)
			s = take_locked(seg, units);
	pthread_mutex_unlock(&pg->lock);
	if (!s && !(flags & SA_NOWAIT)) {
		struct sa_segment *seg = segment_map(node, bind_failures);
		if (!seg)
			return NULL;
		pthread_mutex_lock(&pg->lock);
		s = take_locked(seg, units);
		seg->next = pg->segs;
		pg->segs = seg;
		pthread_mutex_unlock(&pg->lock);
	}
	if (!s)
		return NULL;
	for (unsigned i = 0; i < units; i++) {
		s[i].head = s;
		s[i].nunits = (uint16_t)units;
	}
	return s;
}

void sa_segment_free_units(struct sa_slab *head)
{
	struct sa_segment *seg = (struct sa_segment *)((uintptr_t)head & ~(SA_SEG_SIZE - 1));
	unsigned at = (unsigned)(head - seg->slabs), units = head->nunits;
	madvise(sa_slab_base(head), (size_t)units * SA_UNIT_SIZE, MADV_DONTNEED);
	for (unsigned i = 0; i < units; i++) {
		struct sa_slab *u = &head[i];
		__atomic_store_n(&u->cache, NULL, __ATOMIC_RELEASE);
		u->head = NULL;
		u->freelist = NULL;
		u->bump = NULL;
		u->next = u->prev = NULL;
		u->inuse = u->nobjs = 0;
		u->nunits = 0;
		u->on_partial = 0;
	}
	struct sa_pages *pg = &pages[seg->node];
	pthread_mutex_lock(&pg->lock);
	seg->free_units |= (units == 64 ? ~0ull : ((1ull << units) - 1)) << at;
	seg->nfree += units;
	pthread_mutex_unlock(&pg->lock);
}

void sa_segment_atfork(int phase)
{
	for (int i = 0; i < SA_MAX_NODES; i++) {
		if (phase == 0)
			pthread_mutex_lock(&pages[i].lock);
		else
			pthread_mutex_unlock(&pages[i].lock);
	}
}
