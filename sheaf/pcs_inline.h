/*
 * sheaf/pcs_inline.h — the per-CPU fast paths (docs/design.md §3): one rseq section each, no
 * "initialized?" test. In fallback mode the sections read a never-registered rseq area whose
 * cpu_id is -1, so they fail into the slow path at once, which takes the slot lock instead.
 */
#ifndef SA_PCS_INLINE_H
#define SA_PCS_INLINE_H

#include "alloc/internal.h"

#if defined(__x86_64__)
#include "sheaf/arch/x86_64/rseq_pcs.h"
#else
#error "sheafalloc: only x86_64 has rseq sections so far (sheaf/arch/)"
#endif

extern long sa_rseq_off __attribute__((
	visibility("hidden"))); /* thread-pointer offset of the rseq area the sections use */

enum sa_pcs_mode { SA_PCS_UNDECIDED, SA_PCS_RSEQ_GLIBC, SA_PCS_RSEQ_OWN, SA_PCS_FALLBACK };
extern int sa_pcs_mode __attribute__((visibility("hidden")));

#if defined(__SANITIZE_THREAD__)
#define SA_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SA_TSAN 1
#endif
#endif
#ifdef SA_TSAN
/* TSan cannot see into the asm: give each object handed through a sheaf a happens-before edge. */
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define SA_TSAN_ACQUIRE(p) __tsan_acquire(p)
#define SA_TSAN_RELEASE(p) __tsan_release(p)
#else
#define SA_TSAN_ACQUIRE(p) ((void)0)
#define SA_TSAN_RELEASE(p) ((void)0)
#endif

static inline __attribute__((always_inline)) void *sa_pcs_pop_fast(struct sa_cache *c, int *why)
{
	void *obj = sa_rseq_pop(SA_CACHE_SLOTS(c), sa_rseq_off, why);
	if (obj)
		SA_TSAN_ACQUIRE(obj);
	return obj;
}

static inline __attribute__((always_inline)) int sa_pcs_push_fast(struct sa_cache *c, void *obj,
								  int node)
{
	SA_TSAN_RELEASE(obj);
	return sa_rseq_push(SA_CACHE_SLOTS(c), sa_rseq_off, obj, node);
}

#endif
