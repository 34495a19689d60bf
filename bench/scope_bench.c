/*
 * bench/scope_bench.c — what the scope layer costs (docs/scopes.md "Cost"): sheafalloc only,
 * each row against the same work with no scope or no limit, in the same process and run.
 *
 * Rows ("scope/<shape>"):
 *   pair             sa_cache_alloc + sa_cache_free of a 64-byte object, no scope open: the
 *                    fast path as every other benchmark sees it (one thread-local load for
 *                    the scope layer)
 *   pair_nofs        the same inside a NOFS scope opened once before the loop: the allocation
 *                    leaves the inline path (sa_cache_alloc_special) and is counted per flag
 *   pair_nowait      inside a NOWAIT scope (the same path; NOWAIT changes nothing while the
 *                    sheaves serve)
 *   malloc64         sa_malloc(64) + sa_free, no scope
 *   malloc64_nofs    the same inside a NOFS scope
 *   save_restore     sa_memalloc_nofs_save + sa_memalloc_nofs_restore, nothing else
 *   cycle_nolimit    one cycle of a program whose memory moves between kinds of objects: 48 MiB
 *                    of 4 KiB cache objects allocated (one byte written each) and freed, then
 *                    48 MiB of 16 KiB objects of another cache, then 48 MiB of 256 KiB malloc
 *                    blocks; no limit. Time per cycle.
 *   cycle_limit      the same cycles under sa_set_limit(64 MiB), above the 56 MiB these cycles
 *                    hold at most: the limit's accounting, no reclaim expected
 *   cycle_tight      the same under sa_set_limit(54 MiB), below that peak: at each change of
 *                    phase the memory the previous phase freed must be reclaimed (purged) before
 *                    new pages come, so the pages are faulted in again. Counters: reclaim rounds
 *                    and limit hits per cycle, the highest sa_memory_held seen.
 * bench/Makefile runs the pair rows in one process and each cycle row in its own (peak RSS of
 * the process is that row's), and scope_report.py prints the ratios.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include "sheafalloc.h"
#include "shim.h"

#define PAIR_UNROLL 64
#define MiB(x)	    ((size_t)(x) << 20)
#define PHASE	    MiB(48)
#define LIMIT	    MiB(64)
#define LIMIT_TIGHT MiB(54)

static struct sa_cache *c64, *c4k, *c16k;

static int setup(sab_state *st)
{
	static int done;
	if (!done) {
		c64 = sa_cache_create("scope-bench-64", 64, NULL);
		c4k = sa_cache_create("scope-bench-4k", 4096, NULL);
		c16k = sa_cache_create("scope-bench-16k", 16384, NULL);
		done = 1;
	}
	if (!c64 || !c4k || !c16k) {
		sab_skip(st, "sa_cache_create failed");
		return 0;
	}
	char label[128];
	snprintf(label, sizeof(label), "sheafalloc %d.%d per-CPU %s", SHEAFALLOC_VERSION_MAJOR,
		 SHEAFALLOC_VERSION_MINOR, sa_percpu_mode());
	sab_label(st, label);
	return 1;
}

static void pair_loop(sab_state *st)
{
	struct sa_cache *c = c64;
	while (sab_keep_running_batch(st, PAIR_UNROLL))
		for (int i = 0; i < PAIR_UNROLL; i++) {
			void *p = sa_cache_alloc(c, 0);
			sab_escape(p);
			sa_cache_free(c, p);
		}
	sab_set_items(st, sab_iterations(st));
}

static void malloc_loop(sab_state *st)
{
	while (sab_keep_running_batch(st, PAIR_UNROLL))
		for (int i = 0; i < PAIR_UNROLL; i++) {
			void *p = sa_malloc(64);
			sab_escape(p);
			sa_free(p);
		}
	sab_set_items(st, sab_iterations(st));
}

static void pair(sab_state *st, const void *arg)
{
	(void)arg;
	if (setup(st))
		pair_loop(st);
}

static void pair_scoped(sab_state *st, const void *arg)
{
	if (!setup(st))
		return;
	unsigned cookie = sa_memalloc_flags_save(*(const sa_flags_t *)arg);
	pair_loop(st);
	sa_memalloc_flags_restore(cookie);
}

static void malloc64(sab_state *st, const void *arg)
{
	(void)arg;
	if (setup(st))
		malloc_loop(st);
}

static void malloc64_scoped(sab_state *st, const void *arg)
{
	if (!setup(st))
		return;
	unsigned cookie = sa_memalloc_flags_save(*(const sa_flags_t *)arg);
	malloc_loop(st);
	sa_memalloc_flags_restore(cookie);
}

static void save_restore(sab_state *st, const void *arg)
{
	(void)arg;
	if (!setup(st))
		return;
	while (sab_keep_running_batch(st, PAIR_UNROLL))
		for (int i = 0; i < PAIR_UNROLL; i++) {
			unsigned c = sa_memalloc_nofs_save();
			sab_escape(&c);
			sa_memalloc_nofs_restore(c);
		}
	sab_set_items(st, sab_iterations(st));
}

/* n objects of size from c (or sa_malloc when c is NULL), one byte written each, then freed */
static int phase(struct sa_cache *c, size_t size, void **v)
{
	size_t n = PHASE / size;
	for (size_t i = 0; i < n; i++) {
		char *p = c ? sa_cache_alloc(c, SA_NOWARN) : sa_malloc(size);
		if (!p) {
			for (size_t k = 0; k < i; k++)
				c ? sa_cache_free(c, v[k]) : sa_free(v[k]);
			return -1;
		}
		p[0] = 1;
		v[i] = p;
	}
	for (size_t i = 0; i < n; i++)
		c ? sa_cache_free(c, v[i]) : sa_free(v[i]);
	return 0;
}

static void cycle(sab_state *st, const void *arg)
{
	if (!setup(st))
		return;
	size_t limit = *(const size_t *)arg;
	static void *v[PHASE / 4096];
	struct sa_scope_stats s0, s1;
	sa_set_limit(limit);
	sa_scope_stats(&s0);
	size_t held_max = 0;
	int failed = 0;
	while (sab_keep_running(st)) {
		failed |= phase(c4k, 4096, v);
		if (sa_memory_held() > held_max)
			held_max = sa_memory_held();
		failed |= phase(c16k, 16384, v);
		if (sa_memory_held() > held_max)
			held_max = sa_memory_held();
		failed |= phase(NULL, 256 << 10, v);
		if (sa_memory_held() > held_max)
			held_max = sa_memory_held();
	}
	sa_scope_stats(&s1);
	sa_set_limit(0);
	double n = (double)sab_iterations(st);
	sab_counter(st, "reclaim_rounds_per_cycle",
		    (double)(s1.reclaim_rounds - s0.reclaim_rounds) / n);
	sab_counter(st, "limit_hits_per_cycle", (double)(s1.limit_hits - s0.limit_hits) / n);
	sab_counter(st, "held_max_MiB", (double)held_max / (1 << 20));
	sab_counter(st, "failed", failed);
}

static const sa_flags_t nofs = SA_NOFS, nowait = SA_NOWAIT;
static const size_t no_limit = 0, limit = LIMIT, tight = LIMIT_TIGHT;

const struct sab_bench sab_benches[] = {
	{"scope/pair", pair, NULL, 0},
	{"scope/pair_nofs", pair_scoped, &nofs, 0},
	{"scope/pair_nowait", pair_scoped, &nowait, 0},
	{"scope/malloc64", malloc64, NULL, 0},
	{"scope/malloc64_nofs", malloc64_scoped, &nofs, 0},
	{"scope/save_restore", save_restore, NULL, 0},
	{"scope/cycle_nolimit", cycle, &no_limit, 0},
	{"scope/cycle_limit", cycle, &limit, 0},
	{"scope/cycle_tight", cycle, &tight, 0},
};
const size_t sab_nbenches = sizeof(sab_benches) / sizeof(sab_benches[0]);
