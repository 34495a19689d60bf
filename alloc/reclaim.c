/*
 * alloc/reclaim.c — giving memory back: sa_trim, and the retry after a mapping failed
 * (docs/design.md §11).
 *
 * Owns: reclaim_lock and the thread's "inside reclaim" mark.
 *
 * What can be given back, cheapest first: cached huge mappings (unmapped), per-CPU run stashes
 * (back to their segments), every cache's sheaves and empty slabs (sa_cache_shrink: objects
 * back to slabs, emptied slabs back to the units), dirty free units (purged with madvise), and
 * segments whose units are all free (unmapped, alloc/segment.c). Memory handed out is never
 * touched. sa_trim does all of it; a failed mapping (sa_reclaim_map_failed) does all but the
 * purge (the purge keeps address space: it only drops pages) and the caller retries once.
 *
 * When: never under SA_NOWAIT (it waits for locks and makes system calls) nor SA_NORECLAIM,
 * and never inside reclaim itself (in_reclaim: an allocation that a reclaim step makes fails
 * instead of reclaiming again, as the kernel's PF_MEMALLOC does).
 *
 * Locking: reclaim_lock (rank 0: taken with no other allocator lock held) lets one thread
 * reclaim at a time; the others wait for it and then look again, which finds what it freed.
 * Under it: sa_caches_lock (1), then each cache's drain, barn, node and page locks in their
 * order (alloc/internal.h). The caller of sa_reclaim_map_failed holds no allocator lock:
 * sa_segment_alloc_units, the huge-block mappings and sa_meta_alloc_flags are only called so
 * (internal callers that hold a lock use sa_meta_alloc, which passes SA_NORECLAIM).
 */
#include <sys/mman.h>

#include "alloc/internal.h"

static pthread_mutex_t reclaim_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int in_reclaim __attribute__((tls_model("initial-exec")));

/* Flush every cache's sheaves and empty slabs; unmap cached huge mappings; purge if asked;
 * unmap wholly free segments. */
static void give_back_all(bool purge)
{
	pthread_mutex_lock(&sa_caches_lock);
	for (struct sa_cache *c = sa_caches; c; c = c->next)
		sa_cache_shrink(c);
	pthread_mutex_unlock(&sa_caches_lock);
	sa_malloc_huge_cache_drop();
	if (purge)
		sa_segment_purge(1);
	sa_segment_unmap_free();
}

bool sa_reclaim_map_failed(sa_flags_t flags)
{
	if ((flags & (SA_NOWAIT | SA_NORECLAIM)) || in_reclaim || !sa_ready)
		return false;
	in_reclaim = 1;
	pthread_mutex_lock(&reclaim_lock);
	give_back_all(false);
	pthread_mutex_unlock(&reclaim_lock);
	in_reclaim = 0;
	return true;
}

/* Return every free page the allocator can: flush every cache, purge every dirty unit, unmap
 * cached huge mappings and free segments. */
SA_API void sa_trim(void)
{
	sa_ensure_init();
	if (in_reclaim)
		return;
	in_reclaim = 1;
	pthread_mutex_lock(&reclaim_lock);
	give_back_all(true);
	pthread_mutex_unlock(&reclaim_lock);
	in_reclaim = 0;
}

void sa_reclaim_atfork(int phase)
{
	if (phase == 0)
		pthread_mutex_lock(&reclaim_lock);
	else
		pthread_mutex_unlock(&reclaim_lock);
}
