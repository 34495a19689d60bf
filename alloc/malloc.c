/*
 * alloc/malloc.c — the malloc front end: size classes over caches, large and huge blocks
 * (docs/design.md §10).
 *
 * Owns: the class table (written once in sa_malloc_init, before sa_ready is published; a NULL
 * entry means "not initialized yet" and sends the call to the slow path), and the two marker
 * caches that tag large and huge blocks in the segment records.
 *
 * Three kinds of block, told apart by the cache recorded for the address's unit:
 *   small  size <= 32 KiB: an object of the class cache (40 classes, at most 25% internal waste
 *          above 128 B, docs/design.md §10); freed through that cache's sheaves.
 *   large  32 KiB < size <= 2 MiB (or alignment up to 2 MiB): a run of 64 KiB units of a segment
 *          of this CPU's node, tagged with sa_large_cache. Freed units stay dirty until purged.
 *   huge   larger: its own mapping, aligned to 4 MiB so that its first unit record is the
 *          header (SA_HUGE_MAGIC) and the segment map finds it; grown in place or moved with
 *          mremap; unmapped on free.
 * The marker caches' slots carry node -1, so a push onto them always fails into the slow path,
 * which dispatches on the marker: the small-object free path pays nothing for them.
 *
 * debug=G (alloc/debug.c): a freed large block's run is made PROT_NONE by
 * sa_segment_free_block, a freed huge block's pages when its mapping goes into the huge cache
 * (from SA_HUGE_HDR on: the header and unit records stay readable, so a second free, a realloc
 * or malloc_usable_size of the freed pointer is answered from them, never by reading the
 * block); the next owner restores access. In a NOWAIT context a large free is put off
 * (mprotect is a system call), as a huge one always is. Without G: the same paths, no
 * system call more.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alloc/cache_inline.h"

#define SA_SMALL_MAX  32768ul
#define SA_LARGE_MAX  (2ul << 20)
#define SA_NR_CLASSES 40
#define SA_PAGE	      4096ul
#define SA_HUGE_HDR   8192ul /* a huge block's offset in its mapping: after sizeof(sa_segment) */
_Static_assert(sizeof(struct sa_segment) <= SA_HUGE_HDR, "records before the block");

static const uint32_t class_size[SA_NR_CLASSES] = {
	16,   32,   48,	  64,	80,    96,    112,   128,   160,   192,	  224,	 256,	320,  384,
	448,  512,  640,  768,	896,   1024,  1280,  1536,  1792,  2048,  2560,	 3072,	3584, 4096,
	5120, 6144, 7168, 8192, 10240, 12288, 14336, 16384, 20480, 24576, 28672, 32768,
};

static uint8_t small_class[1024 / 16 + 1]; /* (size + 15) / 16 -> class, sizes <= 1024 */
struct sa_cache *sa_class_cache[SA_NR_CLASSES];
struct sa_cache *sa_large_cache; /* markers: never hold objects */
struct sa_cache *sa_huge_cache;
static _Atomic size_t huge_bytes; /* bytes of live huge mappings */
static _Atomic size_t huge_blocks, huge_max_bytes, huge_max_blocks; /* for mallinfo */

/* Account for huge bytes and blocks coming (add) or going; keeps the maxima mallinfo reports. */
static void huge_account(size_t bytes, int blocks, bool add)
{
	if (!add) {
		atomic_fetch_sub(&huge_bytes, bytes);
		atomic_fetch_sub(&huge_blocks, (size_t)blocks);
		return;
	}
	size_t b = atomic_fetch_add(&huge_bytes, bytes) + bytes;
	size_t n = atomic_fetch_add(&huge_blocks, (size_t)blocks) + (size_t)blocks;
	size_t m = atomic_load_explicit(&huge_max_bytes, memory_order_relaxed);
	while (b > m && !atomic_compare_exchange_weak(&huge_max_bytes, &m, b))
		;
	m = atomic_load_explicit(&huge_max_blocks, memory_order_relaxed);
	while (n > m && !atomic_compare_exchange_weak(&huge_max_blocks, &m, n))
		;
}

/* This CPU's node; 0 while the classes are being made (a signal handler's malloc during
 * start-up must not read a class that does not exist yet). */
static int current_node(void)
{
	struct sa_cache *c = __atomic_load_n(&sa_class_cache[0], __ATOMIC_ACQUIRE);
	return c ? sa_pcs_current_node(c) : 0;
}

/*
 * The bootstrap arena: allocations made while sheafalloc is starting and the classes or the
 * marker caches do not exist yet (a signal handler that mallocs during the first malloc of the
 * process, which start-up tolerates). A bump allocator over a static array: each block has its
 * size in the 16 bytes before it; a free of one is ignored (the arena is never reused), realloc
 * copies out of it. Exhausted: NULL, ENOMEM.
 */
#define SA_BOOT_BYTES (256u << 10)
static char boot_arena[SA_BOOT_BYTES] __attribute__((aligned(64)));
static _Atomic size_t boot_used;

static void *boot_alloc(size_t size, size_t align)
{
	if (align < 16)
		align = 16;
	if (size > SA_BOOT_BYTES || align > 4096)
		return NULL;
	size_t at = atomic_load(&boot_used), start, end;
	do {
		start = (at + 16 + align - 1) & ~(align - 1);
		end = start + ((size + 15) & ~(size_t)15);
		if (end > SA_BOOT_BYTES)
			return NULL;
	} while (!atomic_compare_exchange_weak(&boot_used, &at, end));
	*(size_t *)(boot_arena + start - 16) = size;
	return boot_arena + start;
}

bool sa_boot_owns(const void *p)
{
	return (const char *)p >= boot_arena && (const char *)p < boot_arena + SA_BOOT_BYTES;
}

static size_t boot_usable(const void *p)
{
	return *(const size_t *)((const char *)p - 16);
}

static inline unsigned size_to_class(size_t n)
{
	if (n <= 1024)
		return small_class[(n + 15) >> 4];
	unsigned lg = 63u - (unsigned)__builtin_clzll(n - 1); /* n - 1 >= 1024: lg >= 10 */
	unsigned mod = (unsigned)((n - 1) >> (lg - 2)) & 3;
	return 20 + (lg - 10) * 4 + mod;
}

/* An object of a malloc class (keyed: alloc/cache_inline.h). */
static inline __attribute__((always_inline)) void *class_alloc(struct sa_cache *c, sa_flags_t flags)
{
	return sa_cache_alloc_fast(c, flags, true);
}

static struct sa_cache *marker_cache(const char *name)
{
	struct sa_cache *c = sa_cache_alloc_struct();
	if (!c)
		return NULL;
	strncpy(c->name, name, sizeof(c->name) - 1);
	for (int i = 0; i < sa_nr_cpus; i++) {
		c->slots[i].node = -1; /* no object matches: every push fails */
		c->slots[i].stopped = 1;
	}
	return c;
}

/* Called by sa_init_slow before the topology is loaded. */
void sa_malloc_init(void)
{
	for (size_t n = 0, c = 0; n <= 1024; n += 16) {
		while (class_size[c] < (n ? n : 1))
			c++;
		small_class[n >> 4] = (uint8_t)c;
	}
	sa_large_cache = marker_cache("(large blocks)");
	sa_huge_cache = marker_cache("(huge blocks)");
	/* made first, published together: while any class is missing, every allocation (a
	 * signal handler's during this, which holds the cache-list and metadata locks) comes from
	 * the bootstrap arena and takes no lock */
	struct sa_cache *made[SA_NR_CLASSES];
	for (unsigned i = 0; i < SA_NR_CLASSES; i++) {
		char name[32];
		struct sa_cache_args a = {.align = 16};
		if (class_size[i] > 8192)
			a.sheaf_capacity = 4;
		snprintf(name, sizeof(name), "malloc-%u", class_size[i]);
		made[i] = sa_cache_create_internal(name, class_size[i], &a, SA_CACHE_KEYED_);
	}
	for (unsigned i = 0; i < SA_NR_CLASSES; i++)
		__atomic_store_n(&sa_class_cache[i], made[i], __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------------ large and huge blocks ---- */
static void *large_alloc(size_t size, size_t align, sa_flags_t flags)
{
	size_t off = 0;
	size_t units = (size + SA_UNIT_SIZE - 1) >> SA_UNIT_SHIFT;
	if (align > SA_UNIT_SIZE) {
		units += (align >> SA_UNIT_SHIFT) - 1;
		off = 1; /* computed below */
	}
	struct sa_cache *c = sa_large_cache;
	if ((flags & SA_PIN) && !sa_may_syscall(flags))
		return NULL; /* mlock is a system call */
	struct sa_slab *s = sa_segment_alloc_units(current_node(), (unsigned)units, flags, NULL);
	if (!s)
		return NULL;
	char *base = sa_slab_base(s);
	if ((flags & SA_PIN) && !sa_pin_range(base, (size_t)s->nunits * SA_UNIT_SIZE, flags)) {
		sa_segment_unuse_units(s);
		return NULL;
	}
	if (flags & SA_PIN)
		s->flags |= SA_SLAB_PINNED;
	if (off)
		off = (size_t)((((uintptr_t)base + align - 1) & ~(uintptr_t)(align - 1)) -
			       (uintptr_t)base);
	s->nobjs = 1;
	s->inuse = 1;
	s->hint = (uint32_t)off; /* where the block starts: free checks it */
	for (unsigned i = 0; i < s->nunits; i++)
		__atomic_store_n(&s[i].cache, c, __ATOMIC_RELEASE);
	return base + off;
}

/* Is p the start of the large block whose unit record is s (not a pointer into it)? */
static bool large_is_start(const struct sa_slab *s, const void *p)
{
	const struct sa_slab *h = s->head;
	return h && (const char *)p == sa_slab_base(h) + h->hint;
}

/* Is p the start of the huge block in whose mapping it lies? */
static bool huge_is_start(const void *p)
{
	const struct sa_segment *seg =
		(const struct sa_segment *)((uintptr_t)p & ~(SA_SEG_SIZE - 1));
	return (const char *)p == (const char *)seg + seg->huge_off;
}

static size_t large_usable(struct sa_slab *s, const void *p)
{
	struct sa_slab *h = s->head;
	return (size_t)h->nunits * SA_UNIT_SIZE - (size_t)((const char *)p - sa_slab_base(h));
}

/* Charge a new huge mapping against the limit, reclaiming once if it does not fit. */
static bool charge_huge(size_t len, sa_flags_t flags)
{
	return sa_held_charge(len) || (sa_reclaim_for_limit(len, flags) && sa_held_charge(len));
}

/*
 * Blocks aligned to 4 MiB or more cannot carry their header in their own segment (the block
 * starts where the header would be): they are kept in a short list instead, searched only for
 * pointers the segment map does not know. aligned_lock protects the list.
 */
struct aligned_huge {
	struct aligned_huge *next;
	char *p;
	char *base;
	size_t len;
};
static pthread_mutex_t aligned_lock = PTHREAD_MUTEX_INITIALIZER;
static struct aligned_huge *aligned_list; /* aligned_lock */
static _Atomic unsigned aligned_count;

static void *aligned_huge_alloc(size_t size, size_t align, sa_flags_t flags)
{
	if (size > (size_t)PTRDIFF_MAX - align) {
		errno = ENOMEM;
		return NULL;
	}
	size_t len = (size + SA_PAGE - 1) & ~(SA_PAGE - 1);
	if (!charge_huge(len, flags)) {
		errno = ENOMEM;
		return NULL;
	}
	struct aligned_huge *h = sa_meta_alloc(sizeof(*h));
	char *a = h ? sa_map_aligned(len, align, PROT_READ | PROT_WRITE) : NULL;
	if (h && !a && sa_reclaim_map_failed(flags))
		a = sa_map_aligned(len, align, PROT_READ | PROT_WRITE);
	if (!a) {
		sa_meta_free(h, sizeof(*h));
		sa_held_sub(len);
		errno = ENOMEM;
		return NULL;
	}
	if ((flags & SA_PIN) && !sa_pin_range(a, len, flags)) {
		munmap(a, len);
		sa_meta_free(h, sizeof(*h));
		sa_held_sub(len);
		errno = ENOMEM;
		return NULL;
	}
	h->p = h->base = a;
	h->len = len;
	pthread_mutex_lock(&aligned_lock);
	h->next = aligned_list;
	aligned_list = h;
	atomic_fetch_add(&aligned_count, 1);
	pthread_mutex_unlock(&aligned_lock);
	huge_account(len, 1, true);
	return a;
}

/* Usable size of p if it is a 4 MiB-aligned huge block, else 0; with unlink, also forget it. */
static size_t aligned_huge_find(const void *p, int unlink)
{
	if (!atomic_load_explicit(&aligned_count, memory_order_relaxed))
		return 0;
	size_t len = 0;
	struct aligned_huge *found = NULL;
	pthread_mutex_lock(&aligned_lock);
	for (struct aligned_huge **h = &aligned_list; *h; h = &(*h)->next) {
		if ((*h)->p == p) {
			found = *h;
			len = found->len;
			if (unlink) {
				*h = found->next;
				atomic_fetch_sub(&aligned_count, 1);
			}
			break;
		}
	}
	pthread_mutex_unlock(&aligned_lock);
	if (found && unlink) {
		huge_account(found->len, 1, false);
		munmap(found->base, found->len);
		sa_held_sub(found->len);
		sa_meta_free(found, sizeof(*found));
	}
	return len;
}

/* The cache whose rcu sheaves carry large and huge blocks to their grace period. */
struct sa_cache *sa_rcu_block_cache(void)
{
	return sa_class_cache[0];
}

/* Is obj where an object of c, or a block, starts? (a free of anything else is bad) */
bool sa_rcu_block_ok(struct sa_cache *c, struct sa_slab *s, const void *obj)
{
	if (c == sa_large_cache)
		return large_is_start(s, obj);
	if (c == sa_huge_cache)
		return huge_is_start(obj);
	return sa_slab_obj_ok(c, s, obj);
}

/* sa_free of a pointer the segment map does not know: 1 if it was a block of ours. In a
 * context that may not wait or make a system call (munmap), the block is freed later; a busy
 * list lock defers the question too (a pointer that turns out not to be ours is reported then). */
int sa_free_unknown(void *p)
{
	if (sa_boot_owns(p))
		return 1; /* the bootstrap arena is never reused */
	if (!atomic_load_explicit(&aligned_count, memory_order_relaxed))
		return 0;
	if (sa_may_syscall(sa_flags_effective(0)))
		return aligned_huge_find(p, 1) != 0;
	bool found = false;
	if (pthread_mutex_trylock(&aligned_lock) == 0) {
		for (struct aligned_huge *h = aligned_list; h && !found; h = h->next)
			found = h->p == p;
		pthread_mutex_unlock(&aligned_lock);
		if (!found)
			return 0;
	}
	sa_defer(p, SA_DEFER_FREE);
	return 1;
}

/*
 * Freed huge mappings are kept a while for reuse (glibc and tcmalloc reuse such memory too;
 * a fresh mapping costs a page fault per 4 KiB on first touch, which dominated the
 * 5-25 MiB blocks of mimalloc-bench's malloc-large). At most HUGE_CACHE_SLOTS mappings and
 * HUGE_CACHE_MAX bytes, and no more than a quarter of the live huge bytes (a program with a few
 * huge buffers that grow keeps nothing: that cost sqlite3 27 MiB of peak RSS), none older than
 * purge_ms (checked on every huge allocation and free); a miss drops the smaller mappings;
 * sa_trim / malloc_trim unmap them all. A cached mapping keeps its segment-map bit, but its
 * unit record no longer names the huge cache, so a second free of the block is reported as a
 * bad free. A reuse takes the smallest mapping that fits, within twice the size, and unmaps
 * its tail. huge_cache_lock is a leaf lock (no other lock is taken under it).
 */
#define HUGE_CACHE_SLOTS 8
#define HUGE_CACHE_MAX	 (64ul << 20)
struct huge_cached {
	struct sa_segment *seg; /* NULL: empty slot */
	size_t len;
	uint64_t when_ns;
	bool guarded; /* debug=G: [SA_HUGE_HDR, len) is PROT_NONE while cached */
};
static pthread_mutex_t huge_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct huge_cached huge_cache[HUGE_CACHE_SLOTS]; /* huge_cache_lock */
static _Atomic size_t huge_cached_bytes;

/* Take e out of the cache (locked); the caller unmaps or reuses what it returns. */
static struct huge_cached huge_cache_remove_locked(struct huge_cached *e)
{
	struct huge_cached r = *e;
	atomic_fetch_sub(&huge_cached_bytes, e->len);
	e->seg = NULL;
	return r;
}

static void huge_unmap(struct sa_segment *seg, size_t len)
{
	sa_segmap_set(seg, 0);
	munmap(seg, len);
	sa_held_sub(len);
}

/* Take expired entries (all of them with force) out of the cache into out[]; locked. */
static unsigned huge_cache_expire_locked(struct huge_cached *out, int force)
{
	uint64_t now = sa_now_ns(), age = (uint64_t)sa_opt.purge_ms * 1000000ull;
	unsigned n = 0;
	for (unsigned i = 0; i < HUGE_CACHE_SLOTS; i++) {
		struct huge_cached *e = &huge_cache[i];
		if (e->seg && (force || now - e->when_ns >= age))
			out[n++] = huge_cache_remove_locked(e);
	}
	return n;
}

static void huge_unmap_list(struct huge_cached *l, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		huge_unmap(l[i].seg, l[i].len);
}

/* Unmap every cached huge mapping (sa_trim, reclaim). */
void sa_malloc_huge_cache_drop(void)
{
	struct huge_cached out[HUGE_CACHE_SLOTS];
	pthread_mutex_lock(&huge_cache_lock);
	unsigned n = huge_cache_expire_locked(out, 1);
	pthread_mutex_unlock(&huge_cache_lock);
	huge_unmap_list(out, n);
}

/* Unmap the cached huge mappings older than purge_ms (a decay pass: a program that stopped
 * making huge blocks would otherwise keep them until its next one). */
void sa_malloc_huge_cache_age(void)
{
	if (!atomic_load_explicit(&huge_cached_bytes, memory_order_relaxed))
		return;
	struct huge_cached out[HUGE_CACHE_SLOTS];
	pthread_mutex_lock(&huge_cache_lock);
	unsigned n = huge_cache_expire_locked(out, 0);
	pthread_mutex_unlock(&huge_cache_lock);
	huge_unmap_list(out, n);
}

/* A cached mapping of at least len bytes (and at most twice that), trimmed to len, or NULL. */
static struct sa_segment *huge_cache_take(size_t len)
{
	if (!atomic_load_explicit(&huge_cached_bytes, memory_order_relaxed))
		return NULL;
	struct huge_cached out[HUGE_CACHE_SLOTS], hit = {0};
	pthread_mutex_lock(&huge_cache_lock);
	unsigned n = huge_cache_expire_locked(out, 0);
	struct huge_cached *best = NULL;
	for (unsigned i = 0; i < HUGE_CACHE_SLOTS; i++) {
		struct huge_cached *e = &huge_cache[i];
		if (e->seg && e->len >= len && e->len / 2 <= len && (!best || e->len < best->len))
			best = e;
	}
	if (best) {
		hit = huge_cache_remove_locked(best);
	} else {
		/* a miss: a growing buffer (free the old, map a bigger one) would never reuse the
		 * smaller mappings it left; drop them rather than hold their pages */
		for (unsigned i = 0; i < HUGE_CACHE_SLOTS; i++) {
			struct huge_cached *e = &huge_cache[i];
			if (e->seg && e->len < len)
				out[n++] = huge_cache_remove_locked(e);
		}
	}
	pthread_mutex_unlock(&huge_cache_lock);
	huge_unmap_list(out, n);
	if (hit.seg && hit.len > len) {
		munmap((char *)hit.seg + len, hit.len - len);
		sa_held_sub(hit.len - len);
	}
	if (hit.seg && hit.guarded &&
	    !sa_debug_unguard((char *)hit.seg + SA_HUGE_HDR, len - SA_HUGE_HDR, 0)) {
		huge_unmap(hit.seg, len); /* not usable: the caller maps a fresh one */
		return NULL;
	}
	return hit.seg;
}

/* Keep a freed huge mapping for reuse; 0 if it was not kept (the caller unmaps it). */
static int huge_cache_put(struct sa_segment *seg, size_t len)
{
	/* at most a quarter of the live huge bytes: a program with few huge blocks keeps none */
	size_t cap = atomic_load(&huge_bytes) / 4;
	if (cap > HUGE_CACHE_MAX)
		cap = HUGE_CACHE_MAX;
	if (len > cap || sa_opt.purge_ms == 0)
		return 0;
	/* debug=G: inaccessible while cached; refused, it is not kept (unmapped, it faults too) */
	bool guard = sa_guard_on();
	if (guard && !sa_debug_guard((char *)seg + SA_HUGE_HDR, len - SA_HUGE_HDR, 0))
		return 0;
	struct huge_cached out[HUGE_CACHE_SLOTS + 1];
	pthread_mutex_lock(&huge_cache_lock);
	unsigned n = huge_cache_expire_locked(out, 0);
	/* make room: evict the oldest until a slot is free and the bytes fit */
	for (;;) {
		struct huge_cached *free_slot = NULL, *oldest = NULL;
		for (unsigned i = 0; i < HUGE_CACHE_SLOTS; i++) {
			struct huge_cached *e = &huge_cache[i];
			if (!e->seg)
				free_slot = e;
			else if (!oldest || e->when_ns < oldest->when_ns)
				oldest = e;
		}
		if (free_slot && atomic_load(&huge_cached_bytes) + len <= cap) {
			free_slot->seg = seg;
			free_slot->len = len;
			free_slot->when_ns = sa_now_ns();
			free_slot->guarded = guard;
			atomic_fetch_add(&huge_cached_bytes, len);
			break;
		}
		out[n++] = huge_cache_remove_locked(oldest);
	}
	pthread_mutex_unlock(&huge_cache_lock);
	huge_unmap_list(out, n);
	return 1;
}

void sa_malloc_atfork(int phase)
{
	if (phase == 0) {
		pthread_mutex_lock(&aligned_lock);
		pthread_mutex_lock(&huge_cache_lock);
	} else {
		pthread_mutex_unlock(&huge_cache_lock);
		pthread_mutex_unlock(&aligned_lock);
	}
}

#define SA_HUGE_PURGE_MIN (1ul << 20)
static void *huge_alloc(size_t size, size_t align, sa_flags_t flags)
{
	/* the block starts after the segment header and its 64 unit records (4160 bytes): no
	 * byte of the program's block may be read as a record by a lookup of an interior
	 * pointer */
	size_t off = align > SA_HUGE_HDR ? align : SA_HUGE_HDR;
	if (off >= SA_SEG_SIZE)
		return aligned_huge_alloc(size, align, flags);
	if (size > (size_t)PTRDIFF_MAX - off - 2 * SA_SEG_SIZE) {
		errno = ENOMEM;
		return NULL;
	}
	size_t len = (off + size + SA_PAGE - 1) & ~(SA_PAGE - 1);
	struct sa_segment *seg = huge_cache_take(len);
	bool reused = seg != NULL;
	if (!seg) {
		/* new pages are coming: give back the dirty free units first (they cannot hold a
		 * huge block), so that peak RSS is not the freed small blocks plus the new big one */
		if (sa_segment_dirty_bytes() >= SA_HUGE_PURGE_MIN)
			sa_segment_purge(1);
		if (!charge_huge(len, flags)) {
			errno = ENOMEM;
			return NULL;
		}
		seg = (struct sa_segment *)sa_map_aligned(len, SA_SEG_SIZE, PROT_READ | PROT_WRITE);
		if (!seg && sa_reclaim_map_failed(flags)) /* out of address space: once more */
			seg = (struct sa_segment *)sa_map_aligned(len, SA_SEG_SIZE,
								  PROT_READ | PROT_WRITE);
		if (!seg) {
			sa_held_sub(len);
			errno = ENOMEM;
			return NULL;
		}
	}
	if ((flags & SA_PIN) && !sa_pin_range(seg, len, flags)) {
		if (reused) { /* keeps its segment-map bit while cached */
			huge_unmap(seg, len);
		} else {
			munmap(seg, len);
			sa_held_sub(len);
		}
		errno = ENOMEM;
		return NULL;
	}
	seg->pinned = (flags & SA_PIN) != 0;
	char *a = (char *)seg;
	seg->magic = SA_HUGE_MAGIC;
	if (!reused)
		seg->node = current_node();
	seg->huge_len = len;
	seg->huge_off = off;
	struct sa_slab *rec = &seg->slabs[(off >> SA_UNIT_SHIFT) & (SA_UNITS_PER_SEG - 1)];
	rec->node = seg->node;
	rec->head = rec;
	__atomic_store_n(&rec->cache, sa_huge_cache, __ATOMIC_RELEASE);
	if (!reused) {
		sa_topo_bind(a, len, seg->node);
		sa_segmap_set(a, 1);
	} else if (flags & SA_ZERO) {
		memset(a + off, 0, size); /* a fresh mapping is zero; a reused one is not */
	}
	huge_account(len, 1, true);
	return a + off;
}

static struct sa_segment *seg_of(const void *p)
{
	return (struct sa_segment *)((uintptr_t)p & ~(SA_SEG_SIZE - 1));
}

static void huge_free(void *p)
{
	struct sa_segment *seg = seg_of(p);
	size_t len = seg->huge_len;
	huge_account(len, 1, false);
	if (seg->pinned) { /* a cached mapping is not locked */
		munlock(seg, len);
		seg->pinned = 0;
	}
	struct sa_slab *rec =
		&seg->slabs[(seg->huge_off >> SA_UNIT_SHIFT) & (SA_UNITS_PER_SEG - 1)];
	__atomic_store_n(&rec->cache, NULL, __ATOMIC_RELEASE); /* not a block any more */
	if (!huge_cache_put(seg, len))
		huge_unmap(seg, len);
}

/* The slow half of every free: marker caches, and misses of the cache fast path. */
SA_NOINLINE void sa_free_slow(struct sa_cache *c, void *p, struct sa_slab *s, int why)
{
	if (c == sa_large_cache) {
		struct sa_slab *h = s->head;
		if (SA_UNLIKELY(!large_is_start(s, p))) {
			sa_cache_bad_free(NULL, p, "a pointer into a block, not its start");
		} else if (((h->flags & SA_SLAB_PINNED) || sa_guard_on()) &&
			   !sa_may_syscall(sa_flags_effective(0))) {
			sa_defer(p, SA_DEFER_FREE); /* munlock, or mprotect (debug=G): later */
		} else {
			if (h->flags & SA_SLAB_PINNED) {
				munlock(sa_slab_base(h), (size_t)h->nunits * SA_UNIT_SIZE);
				h->flags &= ~SA_SLAB_PINNED;
			}
			sa_segment_free_block(h); /* a NOWAIT context: try-locks, or deferred */
		}
		return;
	}
	if (c == sa_huge_cache) {
		if (SA_UNLIKELY(!huge_is_start(p)))
			sa_cache_bad_free(NULL, p, "a pointer into a block, not its start");
		else if (!sa_may_syscall(sa_flags_effective(0)))
			sa_defer(p, SA_DEFER_FREE); /* munmap or the cache's lock: later */
		else
			huge_free(p);
		return;
	}
	sa_pcs_free_slow(c, p, s->node, why);
}

/* ------------------------------------------------------------------ the family -------------- */
static void *block_alloc(size_t size, size_t align, sa_flags_t flags)
{
	void *p;
	size_t slack = align > SA_UNIT_SIZE ? align - SA_UNIT_SIZE : 0;
	if (size <= SA_LARGE_MAX && slack <= SA_LARGE_MAX - size && sa_large_cache) {
		p = large_alloc(size, align, flags);
		if (p && (flags & SA_ZERO))
			memset(p, 0, size);
	} else if (!sa_may_syscall(flags)) {
		p = NULL; /* a huge block is a mapping of its own */
	} else {
		p = huge_alloc(size, align, flags); /* zeroed if asked (a fresh mapping is) */
	}
	return p;
}

static SA_NOINLINE void *malloc_slow(size_t size, size_t align, sa_flags_t flags)
{
	sa_ensure_init();
	if (size > (size_t)PTRDIFF_MAX) {
		errno = ENOMEM;
		return NULL;
	}
	if (size <= SA_SMALL_MAX && align <= SA_PAGE) {
		/* objects sit at base + i * stride: a stride that is a multiple of the alignment
		 * (the class size; more under debug=Z, whose red zones widen the stride) */
		unsigned k = size_to_class(size);
		while (k < SA_NR_CLASSES && sa_class_cache[k] &&
		       (sa_class_cache[k]->stride & (align - 1)))
			k++;
		if (k < SA_NR_CLASSES && sa_class_cache[k])
			return class_alloc(sa_class_cache[k], flags);
	}
	if (SA_UNLIKELY(!__atomic_load_n(&sa_class_cache[SA_NR_CLASSES - 1], __ATOMIC_ACQUIRE))) {
		void *b = boot_alloc(size, align); /* still starting: classes and markers missing */
		if (!b)
			errno = ENOMEM;
		else if (flags & SA_ZERO)
			memset(b, 0, size);
		return b;
	}
	sa_flags_t sf = sa_scope_flags();
	if (sf)
		sa_scope_count_alloc(sf);
	flags = sa_flags_effective(flags);
	if (sa_may_block(flags))
		sa_deferred_run();
	void *p = block_alloc(size, align, flags);
	for (unsigned round = 0; !p && sa_must_not_fail(flags);) {
		sa_nofail_wait(flags, "a malloc block", size, &round);
		p = block_alloc(size, align, flags);
	}
	if (!p) {
		if (!sa_may_block(flags))
			sa_gstat_add(SA_G_NOWAIT_FAILS, 1);
		errno = ENOMEM;
	}
	return p;
}

static inline __attribute__((always_inline)) void *malloc_inline(size_t size, sa_flags_t flags)
{
	if (SA_LIKELY(size <= 1024)) {
		struct sa_cache *c = sa_class_cache[small_class[(size + 15) >> 4]];
		if (SA_LIKELY(c != NULL))
			return class_alloc(c, flags);
	}
	return malloc_slow(size, 1, flags);
}

/* The malloc family fails quietly, like glibc's: NULL and errno, no message (SA_NOWARN). */
SA_API SA_HOT_ALIGN void *sa_malloc(size_t size)
{
	return malloc_inline(size, SA_NOWARN);
}

SA_API void *sa_malloc_flags(size_t size, sa_flags_t flags)
{
	return malloc_inline(size, flags);
}

SA_API void *sa_calloc(size_t nmemb, size_t size)
{
	size_t n;
	if (__builtin_mul_overflow(nmemb, size, &n)) {
		errno = ENOMEM;
		return NULL;
	}
	if (n > SA_LARGE_MAX)
		return malloc_slow(n, 1, SA_ZERO | SA_NOWARN); /* huge: zero, fresh or reused */
	return malloc_inline(n, SA_ZERO | SA_NOWARN);
}

SA_API size_t sa_malloc_usable_size(void *p)
{
	struct sa_slab *s = sa_slab_of(p);
	struct sa_cache *c = s ? __atomic_load_n(&s->cache, __ATOMIC_ACQUIRE) : NULL;
	if (!c)
		return !s && sa_boot_owns(p) ? boot_usable(p) : aligned_huge_find(p, 0);
	if (c == sa_large_cache)
		return large_usable(s, p);
	if (c == sa_huge_cache) {
		struct sa_segment *seg = seg_of(p);
		return seg->huge_len - seg->huge_off;
	}
	return c->debug ? c->size : c->stride; /* a red zone is not usable */
}

static void *huge_realloc(void *p, size_t size, sa_flags_t flags)
{
	struct sa_segment *seg = seg_of(p);
	size_t off = seg->huge_off, len = seg->huge_len;
	if (size > (size_t)PTRDIFF_MAX - off - 2 * SA_SEG_SIZE)
		return NULL;
	size_t nlen = (off + size + SA_PAGE - 1) & ~(SA_PAGE - 1);
	if (nlen <= len) {
		if (nlen < len) {
			munmap((char *)seg + nlen, len - nlen);
			sa_held_sub(len - nlen);
		}
		seg->huge_len = nlen;
		huge_account(len - nlen, 0, false);
		return p;
	}
	if (!charge_huge(nlen - len, flags))
		return NULL;
	/* grow in place if the next pages are free */
	if (mremap(seg, len, nlen, 0) != MAP_FAILED) {
		seg->huge_len = nlen;
		huge_account(nlen - len, 0, true);
		return p;
	}
	/* move the pages (no copy) into a reserved 4 MiB-aligned place */
	char *a = sa_map_aligned(nlen, SA_SEG_SIZE, PROT_NONE);
	if (!a && sa_reclaim_map_failed(flags))
		a = sa_map_aligned(nlen, SA_SEG_SIZE, PROT_NONE);
	if (!a) {
		sa_held_sub(nlen - len);
		return NULL;
	}
	sa_segmap_set(seg, 0);
	void *r = mremap(seg, len, nlen, MREMAP_MAYMOVE | MREMAP_FIXED, a);
	if (r == MAP_FAILED) {
		sa_segmap_set(seg, 1);
		munmap(a, nlen);
		sa_held_sub(nlen - len);
		return NULL;
	}
	struct sa_segment *ns = (struct sa_segment *)a;
	ns->huge_len = nlen;
	huge_account(nlen - len, 0, true);
	sa_segmap_set(ns, 1);
	return a + off;
}

SA_API void *sa_realloc(void *p, size_t size)
{
	if (!p)
		return sa_malloc(size);
	if (size == 0) { /* glibc: free and return NULL */
		sa_free(p);
		return NULL;
	}
	struct sa_slab *s = sa_slab_of(p);
	struct sa_cache *c = s ? __atomic_load_n(&s->cache, __ATOMIC_ACQUIRE) : NULL;
	size_t old = sa_malloc_usable_size(p);
	if (!c && !old) { /* nothing of the block is read: it may be inaccessible (debug=G) */
		sa_cache_bad_free(NULL, p,
				  s ? "realloc of a pointer that is not an allocated block (freed "
				      "already, or never allocated)"
				    : "realloc of a pointer that is not a sheafalloc block");
		errno = EINVAL;
		return NULL;
	}
	bool large = s && c && c == sa_large_cache; /* c is NULL before the first malloc */
	if (SA_UNLIKELY((large && !large_is_start(s, p)) ||
			(c == sa_huge_cache && !huge_is_start(p)))) {
		sa_cache_bad_free(NULL, p, "realloc of a pointer into a block, not its start");
		errno = EINVAL;
		return NULL;
	}
	sa_flags_t flags = sa_flags_effective(0);
	if (c == sa_huge_cache && size > SA_LARGE_MAX) {
		if (!sa_may_syscall(flags)) { /* mremap and munmap: not in a NOWAIT context */
			if (size <= old)
				return p;
			errno = ENOMEM;
			return NULL;
		}
		void *r = huge_realloc(p, size, flags);
		if (!r)
			errno = ENOMEM;
		return r;
	}
	if (large && size <= SA_LARGE_MAX && !(s->head->flags & SA_SLAB_PINNED)) {
		/* grow into (or give back) the units that follow the run, when they are free */
		struct sa_slab *h = s->head;
		size_t off = (size_t)((char *)p - sa_slab_base(h));
		unsigned units = (unsigned)((off + size + SA_UNIT_SIZE - 1) >> SA_UNIT_SHIFT);
		if ((size > old || units < h->nunits / 2) &&
		    sa_segment_resize_units(h, units, flags) == 0)
			return p;
	}
	/* stays in place while it fits and does not waste more than half */
	if (size <= old && (size > old / 2 || old <= 16))
		return p;
	void *n = sa_malloc(size);
	if (!n)
		return NULL;
	memcpy(n, p, size < old ? size : old);
	sa_free(p);
	return n;
}

SA_API void *sa_reallocarray(void *p, size_t nmemb, size_t size)
{
	size_t n;
	if (__builtin_mul_overflow(nmemb, size, &n)) {
		errno = ENOMEM;
		return NULL;
	}
	return sa_realloc(p, n);
}

static int is_pow2(size_t x)
{
	return x && !(x & (x - 1));
}

static void *aligned(size_t align, size_t size)
{
	if (align <= 16)
		return sa_malloc(size);
	if (size == 0)
		size = 1;
	if (align > (size_t)PTRDIFF_MAX || size > (size_t)PTRDIFF_MAX - align) {
		errno = ENOMEM;
		return NULL;
	}
	return malloc_slow(size < align && align <= SA_PAGE ? align : size, align, SA_NOWARN);
}

SA_API void *sa_aligned_alloc(size_t align, size_t size)
{
	if (!is_pow2(align)) {
		errno = EINVAL;
		return NULL;
	}
	return aligned(align, size);
}

SA_API int sa_posix_memalign(void **memptr, size_t align, size_t size)
{
	if (!is_pow2(align) || align % sizeof(void *))
		return EINVAL;
	void *p = aligned(align, size);
	if (!p)
		return ENOMEM; /* errno is ENOMEM too, as with glibc (programs read it) */
	*memptr = p;
	return 0;
}

SA_API void *sa_memalign(size_t align, size_t size)
{
	if (align > SIZE_MAX / 2 + 1) { /* glibc's bound: 2^63 itself gives ENOMEM */
		errno = EINVAL;
		return NULL;
	}
	if (!is_pow2(align)) { /* glibc rounds a non-power-of-two alignment up */
		size_t a = 1;
		while (a < align)
			a <<= 1;
		align = a;
	}
	return aligned(align, size);
}

void *sa_valloc(size_t size)
{
	return aligned(SA_PAGE, size);
}

void *sa_pvalloc(size_t size)
{
	size_t r = (size + SA_PAGE - 1) & ~(SA_PAGE - 1);
	if (r < size) {
		errno = ENOMEM;
		return NULL;
	}
	return aligned(SA_PAGE, r ? r : SA_PAGE);
}

void sa_malloc_totals(struct sa_malloc_totals *t)
{
	sa_ensure_init();
	memset(t, 0, sizeof(*t));
	size_t in_slabs = 0; /* bytes of every cache's slabs */
	_Static_assert(SA_MALLOC_CLASSES == SA_NR_CLASSES, "one entry a class");
	for (unsigned i = 0; i < SA_NR_CLASSES; i++)
		t->cls[i].size = class_size[i];
	pthread_mutex_lock(&sa_caches_lock);
	for (struct sa_cache *c = sa_caches; c; c = c->next) {
		struct sa_cache_stats st;
		if (sa_cache_stats(c, &st) != 0)
			continue;
		t->in_use += st.objects_in_use * st.object_size;
		t->cached += st.objects_cached * st.object_size;
		in_slabs += st.bytes_held;
		for (unsigned i = 0; i < SA_NR_CLASSES; i++) {
			if (sa_class_cache[i] == c) {
				t->cls[i].in_use = st.objects_in_use;
				t->cls[i].cached = st.objects_cached;
			}
		}
	}
	pthread_mutex_unlock(&sa_caches_lock);
	size_t used = sa_segment_used_bytes(); /* slabs and large blocks */
	if (used > in_slabs)
		t->in_use += used - in_slabs;
	t->mapped = sa_segment_mapped_bytes();
	t->resident = sa_segment_resident_bytes();
	t->dirty = sa_segment_dirty_bytes();
	t->huge = atomic_load(&huge_bytes);
	t->huge_blocks = atomic_load(&huge_blocks);
	t->huge_max = atomic_load(&huge_max_bytes);
	t->huge_max_blocks = atomic_load(&huge_max_blocks);
	t->huge_cached = atomic_load(&huge_cached_bytes);
}
