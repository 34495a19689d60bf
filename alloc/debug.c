/*
 * alloc/debug.c — debugging checks of caches that ask for them (SA_CACHE_DEBUG: all of them)
 * and of every cache with the option debug= (docs/robustness.md).
 *
 * Owns: the checks at the slab layer of a debugged cache and their reports; the thread's last
 * API call site (sa_caller).
 *
 * A debugged cache keeps no per-CPU sheaves (its slow paths go straight to the slabs, so every
 * allocation and free passes its slab's lock and these hooks), which also makes every free a
 * checked one (F): ours, this cache, an object's start, not free already (the slab bitmap).
 *   Z  red zone: the bytes from the object's size to its stride (at least 16, the geometry
 *      adds them) are filled with SA_REDZONE when the object is handed out and checked when
 *      it comes back: a write past the end is reported with the offset.
 *   P  poison: a freed object is filled with SA_POISON and checked when it is handed out
 *      again: a write after free is reported. Not for caches with a constructor or
 *      SA_CACHE_TYPESAFE_RCU, whose free objects keep their contents by contract.
 *   U  owner: the call sites of the last allocation and free of every object, kept beside the
 *      slab's bitmap, printed with every report (symbolized with dladdr where it can).
 *   G  guard (malloc blocks above 32 KiB, not a cache letter): a freed large block's unit run
 *      and the block part of a cached huge mapping are made PROT_NONE before they go back to
 *      the free units or the huge cache, and PROT_READ|PROT_WRITE again by their next owner,
 *      so a read or a write after free faults at the access (SIGSEGV). The mprotect calls are
 *      here (sa_debug_guard / sa_debug_unguard); the bookkeeping is with the memory it
 *      protects: a segment's guard_units bits (alloc/segment.c), a huge cache entry's
 *      guarded flag (alloc/malloc.c). Invariants:
 *        - only the owner of a run protects it, before the run is free (never a free run),
 *          and sets its bits; only the next owner clears them and restores access, after it
 *          took the run: a free unit whose bit is clear is accessible;
 *        - a context that may not make system calls (SA_NOWAIT) never protects (its large
 *          and huge frees are put off, alloc/defer.c) and never takes a guarded run;
 *        - the emergency reserve's runs are never protected (taken without a system call);
 *        - guarded_units counts the bits set in every segment: at most guard_cap (a quarter
 *          of vm.max_map_count), so the mappings split by PROT_NONE ranges (at most two more
 *          per range, one range per unit at worst) stay under half the kernel's limit; a free
 *          past the cap, or one whose mprotect fails, stays accessible (counted, told once).
 *      Without G nothing here runs: the segment paths test a guard bit they find clear, the
 *      huge cache an entry flag, and no system call is made (docs/robustness.md §3).
 * The call site is the return address at the API entry (sa_cache_alloc, sa_malloc and its
 * family, sa_cache_free, sa_free), stored in a thread-local by their slow paths, which a
 * debugged cache always takes.
 * A report says what, where, which cache, the object, its owner sites; then it aborts (the
 * default bad_free=abort) or goes on (bad_free=warn).
 * Hooks run under the cache node's lock (they touch only the object and its slab's side
 * array) and never allocate.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alloc/scope.h"

#define SA_REDZONE 0xbb
#define SA_POISON  0x6b

__thread const void *sa_caller __attribute__((tls_model("initial-exec")));

struct owner {
	const void *alloc_site;
	const void *free_site;
};

/* The owner records of slab s: after its bitmap, in the same metadata block. */
static struct owner *owners(const struct sa_cache *c, const struct sa_slab *s)
{
	if (!(c->debug & SA_DEBUG_OWNER))
		return NULL;
	size_t words = ((size_t)s->nobjs + 63) / 64;
	return (struct owner *)(s->bits + ((words + 1) & ~(size_t)1));
}

size_t sa_debug_meta_bytes(const struct sa_cache *c, uint32_t nobjs)
{
	size_t words = ((size_t)nobjs + 63) / 64;
	if (!(c->debug & SA_DEBUG_OWNER))
		return words * sizeof(uint64_t);
	return ((words + 1) & ~(size_t)1) * sizeof(uint64_t) + (size_t)nobjs * sizeof(struct owner);
}

static const char *site(const void *ra, char *buf, size_t len)
{
	Dl_info di;
	if (!ra)
		snprintf(buf, len, "(unknown)");
	else if (dladdr(ra, &di) && di.dli_sname)
		snprintf(buf, len, "%p %s+%#lx (%s)", ra, di.dli_sname,
			 (unsigned long)((const char *)ra - (const char *)di.dli_saddr),
			 di.dli_fname ? di.dli_fname : "?");
	else if (dladdr(ra, &di) && di.dli_fname)
		snprintf(buf, len, "%p %s+%#lx", ra, di.dli_fname,
			 (unsigned long)((const char *)ra - (const char *)di.dli_fbase));
	else
		snprintf(buf, len, "%p", ra);
	return buf;
}

static SA_COLD void report(struct sa_cache *c, struct sa_slab *s, uint32_t i, const void *obj,
			   const char *what)
{
	char a[160] = "", f[160] = "";
	struct owner *o = owners(c, s);
	if (o) {
		site(o[i].alloc_site, a, sizeof(a));
		site(o[i].free_site, f, sizeof(f));
	}
	sa_msg("sheafalloc: %s at %p (cache '%s', object %p of %u bytes)%s%s%s%s; %s\n", what, obj,
	       c->name, (const void *)(sa_slab_base(s) + (size_t)i * c->stride), c->size,
	       o ? ", last allocated at " : "", a, o ? ", last freed at " : "", f,
	       sa_opt.bad_free_abort ? "aborting" : "going on");
	if (sa_opt.bad_free_abort)
		abort();
}

static bool poisons(const struct sa_cache *c)
{
	return (c->debug & SA_DEBUG_POISON) && !c->ctor && !(c->flags & SA_CACHE_TYPESAFE_RCU);
}

/* A new slab of a debugged cache: every object poisoned (it counts as freed), red zones set
 * when handed out. */
void sa_debug_slab_init(struct sa_cache *c, struct sa_slab *s)
{
	if (poisons(c))
		for (uint32_t i = 0; i < s->nobjs; i++)
			memset(sa_slab_base(s) + (size_t)i * c->stride, SA_POISON, c->size);
}

/* Object i of slab s is handed out (lock held). */
void sa_debug_on_alloc(struct sa_cache *c, struct sa_slab *s, uint32_t i)
{
	unsigned char *obj = (unsigned char *)sa_slab_base(s) + (size_t)i * c->stride;
	if (poisons(c)) {
		for (uint32_t k = 0; k < c->size; k++) {
			if (obj[k] != SA_POISON) {
				char what[96];
				snprintf(what, sizeof(what),
					 "use after free: a free object was written at offset %u",
					 k);
				report(c, s, i, obj + k, what);
				break;
			}
		}
	}
	if (c->debug & SA_DEBUG_REDZONE)
		memset(obj + c->size, SA_REDZONE, c->stride - c->size);
	struct owner *o = owners(c, s);
	if (o) {
		o[i].alloc_site = sa_caller;
		o[i].free_site = NULL;
	}
}

/* Object i of slab s comes back (lock held; the sanity checks passed). */
void sa_debug_on_free(struct sa_cache *c, struct sa_slab *s, uint32_t i)
{
	unsigned char *obj = (unsigned char *)sa_slab_base(s) + (size_t)i * c->stride;
	struct owner *o = owners(c, s);
	if (o)
		o[i].free_site = sa_caller;
	if (c->debug & SA_DEBUG_REDZONE) {
		for (uint32_t k = c->size; k < c->stride; k++) {
			if (obj[k] != SA_REDZONE) {
				char what[96];
				snprintf(what, sizeof(what),
					 "buffer overflow: the red zone after the object was "
					 "written at offset %u",
					 k);
				report(c, s, i, obj + k, what);
				break;
			}
		}
	}
	if (poisons(c))
		memset(obj, SA_POISON, c->size);
}

/* A bad free of a debugged cache's object found by the slab (double free, interior pointer):
 * the owner sites go with the report. */
void sa_debug_bad_free(struct sa_cache *c, struct sa_slab *s, uint32_t i, const void *obj,
		       const char *what)
{
	report(c, s, i, obj, what);
}

/* ------------------------------------------------------------------ G: guarded frees -------- */
static _Atomic size_t guarded_units; /* units with a guard bit set, in every segment */
static _Atomic size_t guard_cap;     /* 0: not read yet */
static _Atomic int guard_told;

/* The most units that may be guarded at once: a quarter of vm.max_map_count (65530 when it
 * cannot be read, the kernel's default). Read once, without allocating. */
static size_t guard_cap_units(void)
{
	size_t cap = atomic_load_explicit(&guard_cap, memory_order_relaxed);
	if (cap)
		return cap;
	unsigned long max = 65530;
	int nc = sa_nocancel_begin(); /* open and read are cancellation points */
	int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		char buf[32];
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n > 0) {
			buf[n] = 0;
			unsigned long v = strtoul(buf, NULL, 10);
			if (v >= 1024)
				max = v;
		}
	}
	sa_nocancel_end(nc);
	cap = max / 4;
	atomic_store_explicit(&guard_cap, cap, memory_order_relaxed);
	return cap;
}

static SA_COLD void guard_skipped(const char *why, int err)
{
	sa_gstat_add(SA_G_GUARD_SKIPPED, 1);
	if (atomic_exchange(&guard_told, 1))
		return;
	if (err) /* errno's number: strerror may allocate (locales), this runs inside free */
		sa_msg("sheafalloc: debug=G: a freed block was left accessible (%s failed, errno "
		       "%d); a use after free of such blocks is not caught (docs/robustness.md "
		       "section 3)\n",
		       why, err);
	else
		sa_msg("sheafalloc: debug=G: a freed block was left accessible (%s); a use after "
		       "free "
		       "of such blocks is not caught (docs/robustness.md section 3)\n",
		       why);
}

/* Make the len bytes at p inaccessible: a freed large run of `units` units, or (units 0) the
 * block part of a huge mapping going into the huge cache. The caller owns the memory and
 * records the guard (bits, flag) only on success; false: left accessible. */
bool sa_debug_guard(void *p, size_t len, unsigned units)
{
	if (units) {
		size_t cap = guard_cap_units();
		if (atomic_fetch_add(&guarded_units, units) + units > cap) {
			atomic_fetch_sub(&guarded_units, units);
			guard_skipped(
				"a quarter of vm.max_map_count of 64 KiB units guarded already", 0);
			return false;
		}
	}
	if (mprotect(p, len, PROT_NONE) != 0) {
		int err = errno;
		if (units)
			atomic_fetch_sub(&guarded_units, units);
		guard_skipped("mprotect", err);
		return false;
	}
	sa_gstat_add(SA_G_GUARDED, 1);
	return true;
}

/* Make guarded memory accessible again for its new owner, who cleared its guard (units: how
 * many guard bits it cleared). false: mprotect failed (the caller decides what then). */
bool sa_debug_unguard(void *p, size_t len, unsigned units)
{
	if (units)
		atomic_fetch_sub(&guarded_units, units);
	return mprotect(p, len, PROT_READ | PROT_WRITE) == 0;
}

/* Guarded units whose segment was unmapped (their bits went with it). */
void sa_debug_guard_forget(unsigned units)
{
	atomic_fetch_sub(&guarded_units, units);
}
