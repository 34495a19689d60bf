/*
 * alloc/meta.c — the allocator's own metadata memory (docs/design.md §6).
 *
 * Owns: memory for cache structs, per-CPU slot arrays and sheaves. Never comes from sa caches
 * (no recursion, usable before anything is initialized). Power-of-two classes from 64 B to
 * 64 KiB, carved from 1 MiB mmap chunks, recycled through per-class free lists; larger requests
 * are mmap'ed directly. Everything returned is zeroed and 64-byte aligned. sa_meta_lock
 * (rank 6, innermost) protects the lists and the current chunk.
 *
 * Nothing here is ever unmapped: sheaves and slot arrays are read inside rseq critical sections,
 * and a section that faults on a page another thread unmapped meanwhile gets SIGSEGV before the
 * kernel can abort it. Large blocks that are freed are purged with madvise (their pages read
 * back as zero) and kept on a list for reuse by a request of the same size.
 */
#include <string.h>
#include <sys/mman.h>

#include "alloc/internal.h"

#define META_MIN_SHIFT 6
#define META_MAX_SHIFT 16
#define META_CHUNK     (1ul << 20)

struct meta_free {
	struct meta_free *next;
};

static pthread_mutex_t sa_meta_lock = PTHREAD_MUTEX_INITIALIZER;
static struct meta_free *meta_lists[META_MAX_SHIFT + 1]; /* sa_meta_lock */
static char *chunk_cur, *chunk_end;			 /* sa_meta_lock */
static size_t meta_mapped;				 /* sa_meta_lock */

struct meta_big {
	struct meta_big *next;
	size_t size;
};
static struct meta_big *big_free; /* sa_meta_lock: freed large blocks, purged */

static size_t big_round(size_t size)
{
	return (size + 4095) & ~(size_t)4095;
}

static unsigned meta_class(size_t size)
{
	unsigned s = META_MIN_SHIFT;
	while ((1ul << s) < size)
		s++;
	return s;
}

/* For callers that may hold allocator locks: never reclaims. */
void *sa_meta_alloc(size_t size)
{
	return sa_meta_alloc_flags(size, SA_NORECLAIM);
}

static void *meta_alloc(size_t size, sa_flags_t flags);

/* SA_NOWAIT: only try the lock and never map a new chunk. A failed mapping reclaims (unless
 * SA_NOWAIT or SA_NORECLAIM: the caller must hold no allocator lock) and tries once more. */
void *sa_meta_alloc_flags(size_t size, sa_flags_t flags)
{
	void *p = meta_alloc(size, flags);
	if (!p && sa_reclaim_map_failed(flags))
		p = meta_alloc(size, flags);
	return p;
}

static void *meta_alloc(size_t size, sa_flags_t flags)
{
	bool nowait = flags & SA_NOWAIT;
	if (nowait && size > (1ul << META_MAX_SHIFT))
		return NULL;
	if (size > (1ul << META_MAX_SHIFT)) {
		size = big_round(size);
		pthread_mutex_lock(&sa_meta_lock);
		for (struct meta_big **b = &big_free; *b; b = &(*b)->next) {
			if ((*b)->size == size) {
				struct meta_big *hit = *b;
				*b = hit->next;
				pthread_mutex_unlock(&sa_meta_lock);
				memset(hit, 0, sizeof(*hit)); /* the rest was purged: zero */
				sa_held_add(size);
				return hit;
			}
		}
		pthread_mutex_unlock(&sa_meta_lock);
		void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			       0);
		if (p == MAP_FAILED)
			return NULL;
		sa_held_add(
			size); /* metadata counts in sa_memory_held (not checked: it is small) */
		return p;
	}
	unsigned cls = meta_class(size);
	size_t sz = 1ul << cls;
	void *p = NULL;
	if (nowait) {
		if (pthread_mutex_trylock(&sa_meta_lock) != 0)
			return NULL;
	} else {
		pthread_mutex_lock(&sa_meta_lock);
	}
	if (meta_lists[cls]) {
		struct meta_free *f = meta_lists[cls];
		meta_lists[cls] = f->next;
		p = f;
	} else {
		if ((size_t)(chunk_end - chunk_cur) < sz && nowait) {
			pthread_mutex_unlock(&sa_meta_lock);
			return NULL;
		}
		if ((size_t)(chunk_end - chunk_cur) < sz) {
			char *c = mmap(NULL, META_CHUNK, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (c == MAP_FAILED) {
				pthread_mutex_unlock(&sa_meta_lock);
				return NULL;
			}
			chunk_cur = c;
			chunk_end = c + META_CHUNK;
			meta_mapped += META_CHUNK;
			sa_held_add(META_CHUNK);
		}
		/* classes are powers of two and chunks start page-aligned: align to the class up to 4K */
		size_t al = sz < 4096 ? sz : 4096;
		chunk_cur = (char *)(((uintptr_t)chunk_cur + al - 1) & ~(uintptr_t)(al - 1));
		if ((size_t)(chunk_end - chunk_cur) < sz) {
			pthread_mutex_unlock(&sa_meta_lock);
			/* the rest of the chunk is too small: new chunk */
			return nowait ? NULL : meta_alloc(size, flags);
		}
		p = chunk_cur;
		chunk_cur += sz;
	}
	pthread_mutex_unlock(&sa_meta_lock);
	memset(p, 0, sz);
	return p;
}

void sa_meta_free(void *p, size_t size)
{
	if (!p)
		return;
	if (size > (1ul << META_MAX_SHIFT)) {
		size = big_round(size);
		madvise(p, size, MADV_DONTNEED);
		sa_held_sub(size);
		struct meta_big *b = p;
		b->size = size;
		pthread_mutex_lock(&sa_meta_lock);
		b->next = big_free;
		big_free = b;
		pthread_mutex_unlock(&sa_meta_lock);
		return;
	}
	unsigned cls = meta_class(size);
	pthread_mutex_lock(&sa_meta_lock);
	struct meta_free *f = p;
	f->next = meta_lists[cls];
	meta_lists[cls] = f;
	pthread_mutex_unlock(&sa_meta_lock);
}

void sa_meta_atfork(int phase)
{
	if (phase == 0)
		pthread_mutex_lock(&sa_meta_lock);
	else
		pthread_mutex_unlock(&sa_meta_lock);
}
