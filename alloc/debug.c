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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
