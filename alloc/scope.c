/*
 * alloc/scope.c — scoped allocation flags: save/restore, the LIFO check, coroutine scopes,
 * hand-off, and counting allocations made under a scope (docs/scopes.md).
 *
 * Owns: the thread-local scope (sa_scope_tls) and the scope state records it points to.
 * Everything here runs on the owning thread only: no lock, no atomic except the statistics and
 * the table of reported call sites.
 *
 * A save sets the requested bits that were not set yet and opens one nesting level (depth);
 * its cookie records those newly set bits and the depth it opened: bits 0..8 the bits, bits
 * 9..31 the depth modulo 2^23. A restore checks the cookie against the innermost open scope:
 *   - the same depth (and the same bits): in order; the level closes and its bits clear, and
 *     so do the levels below it that were restored early (below);
 *   - an outer depth that is still open: out of LIFO order. Reported once per call site on
 *     stderr with both depths (scope_check=abort: abort). The level is marked "restored early"
 *     and its bits stay set until every level inside it has closed: a scope never loses a flag
 *     it asked for because another one ended out of order (two interleaved coroutines that
 *     save in one order and restore in the other end with exactly the flags they started with);
 *   - a depth that is not open (restored twice, or a cookie of another thread or coroutine):
 *     reported the same way, and ignored.
 * Invariants of a record: set[] entries have ascending depths <= depth and pairwise disjoint
 * bits whose union is flags (so at most one entry per flag: SA_SCOPE_MAX_SET); the early list
 * (early[], or early_ext when more than SA_SCOPE_MAX_EARLY are waiting at once) holds ascending
 * depths < depth, each an open level already restored. A cookie names its level by its depth
 * modulo 2^23 counted down from the innermost, so any depth works.
 *
 * Coroutines: a scheduler gives each coroutine a struct sa_scope_state and installs it with
 * sa_scope_swap on every switch; the thread-local flags are reloaded from it, so interleaved
 * coroutines on one thread never see (or restore) each other's scopes. A coroutine that moves
 * to another thread takes its record along.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc/scope.h"
#include "sheaf/pcs_inline.h"

__thread struct sa_scope_tls sa_scope_tls __attribute__((tls_model("initial-exec")));

#define COOKIE_BITS	 9
#define COOKIE_BITMASK	 ((1u << COOKIE_BITS) - 1)
#define COOKIE_DEPTHMASK ((1u << (32 - COOKIE_BITS)) - 1)
_Static_assert(SA_FLAGS_ALL == COOKIE_BITMASK, "every flag fits the cookie");
_Static_assert(sizeof(struct sa_scope_rec) <= sizeof(struct sa_scope_state), "public size");

static inline struct sa_scope_rec *cur(void)
{
	struct sa_scope_rec *r = sa_scope_tls.cur;
	return r ? r : &sa_scope_tls.own;
}

static inline void publish(struct sa_scope_rec *r)
{
	sa_scope_tls.flags = r->flags;
}

/* ------------------------------------------------------------------ statistics -------------- */
/*
 * Counters of allocations made under a scope (per flag), saves and swaps: per thread, so a
 * scoped allocation pays a plain increment, not an atomic one. A thread claims a slot of
 * counters at its first count (an atomic increment of cslots_used); the slot stays its own and
 * keeps its counts after the thread exits (there is no exit hook that works without
 * allocating). Past CSLOTS threads, the rest share the last slot, whose counts are then
 * approximate (plain increments from several threads can lose some).
 * Only the owning thread writes a private slot (relaxed load and store); readers sum racily.
 */
#define CSLOTS 256
struct cslot {
	_Atomic uint64_t n[SA_SCOPE_COUNTERS];
} __attribute__((aligned(SA_CACHELINE)));
static struct cslot cslots[CSLOTS + 1]; /* [CSLOTS]: shared by the threads beyond */
static _Atomic unsigned cslots_used;

_Atomic uint64_t *sa_scope_claim_counters(void)
{
	unsigned k = atomic_fetch_add_explicit(&cslots_used, 1, memory_order_relaxed);
	_Atomic uint64_t *n = cslots[k < CSLOTS ? k : CSLOTS].n;
	sa_scope_tls.counts = n;
	return n;
}

static inline void count(unsigned i)
{
	_Atomic uint64_t *n = sa_scope_tls.counts;
	if (SA_UNLIKELY(!n))
		n = sa_scope_claim_counters();
	sa_scope_bump(n, i);
}

static uint64_t counted(unsigned i)
{
	uint64_t t = 0;
	for (unsigned k = 0; k <= CSLOTS; k++)
		t += atomic_load_explicit(&cslots[k].n[i], memory_order_relaxed);
	return t;
}

/* allocations made under a scope holding flag bit b */
uint64_t sa_scope_allocs_under(unsigned b)
{
	return b < 9 ? counted(b) : 0;
}

uint64_t sa_scope_saves_counted(void)
{
	return counted(SA_SCOPE_C_SAVES);
}

uint64_t sa_scope_swaps_counted(void)
{
	return counted(SA_SCOPE_C_SWAPS);
}

/* ------------------------------------------------------------------ misuse reports ---------- */
#define REPORTED_MAX 128
static const void *_Atomic reported[REPORTED_MAX]; /* call sites reported already */

/* true the first time a site is seen (or when the table is full: better twice than never) */
static bool first_report(const void *site)
{
	for (unsigned i = 0; i < REPORTED_MAX; i++) {
		const void *v = atomic_load_explicit(&reported[i], memory_order_acquire);
		if (v == site)
			return false;
		if (!v) {
			const void *expect = NULL;
			if (atomic_compare_exchange_strong(&reported[i], &expect, site))
				return true;
			if (expect == site)
				return false;
		}
	}
	return true;
}

/* "function+0xoff (object)" for a code address, into buf */
static const char *site_name(const void *site, char *buf, size_t len)
{
	Dl_info di;
	if (site && dladdr(site, &di) && di.dli_sname)
		snprintf(buf, len, "%s+%#lx", di.dli_sname,
			 (unsigned long)((const char *)site - (const char *)di.dli_saddr));
	else if (site && dladdr(site, &di) && di.dli_fname)
		snprintf(buf, len, "%s+%#lx", di.dli_fname,
			 (unsigned long)((const char *)site - (const char *)di.dli_fbase));
	else
		snprintf(buf, len, "?");
	return buf;
}

/* What the flags mean, for messages: "NOFS|NOIO". */
const char *sa_flags_name(sa_flags_t f, char *buf, size_t len)
{
	static const char *const names[] = {"NOWAIT", "NOFS",	"NOIO", "NORECLAIM", "NOFAIL",
					    "ZERO",   "NOWARN", "HIGH", "PIN"};
	size_t at = 0;
	buf[0] = 0;
	for (unsigned b = 0; b < sizeof(names) / sizeof(names[0]); b++) {
		if (!(f & (1u << b)))
			continue;
		int n = snprintf(buf + at, len - at, "%s%s", at ? "|" : "", names[b]);
		if (n < 0 || (size_t)n >= len - at)
			break;
		at += (size_t)n;
	}
	if (!at)
		snprintf(buf, len, "none");
	return buf;
}

static SA_COLD void report(const char *what, unsigned cookie_depth, uint32_t depth,
			   const void *site)
{
	sa_gstat_add(SA_G_SCOPE_MISUSE, 1);
	sa_ensure_init(); /* the options: scope_check */
	if (!first_report(site) && !sa_opt.scope_check_abort)
		return;
	char where[160], fl[96];
	/* dladdr may wait for the loader's lock: not inside a NOWAIT scope */
	if (sa_scope_tls.flags & SA_NOWAIT)
		snprintf(where, sizeof(where), "%p", site);
	else
		site_name(site, where, sizeof(where));
	sa_msg("sheafalloc: scope %s at %s: the cookie is of depth %u, the innermost open scope is "
	       "at depth %u (open flags %s)%s\n",
	       what, where, cookie_depth, (unsigned)depth,
	       sa_flags_name(cur()->flags, fl, sizeof(fl)),
	       sa_opt.scope_check_abort ? "; aborting (scope_check=abort)" : "");
	if (sa_opt.scope_check_abort)
		abort();
}

/* ------------------------------------------------------------------ save and restore -------- */
/* What a NOWAIT scope may need must exist before it starts on this thread: the allocator
 * itself, the thread's rseq registration, the emergency reserve. */
static void nowait_prepare(void)
{
	sa_ensure_init();
	sa_rseq_thread_ready();
	sa_reserve_prepare();
}

static unsigned scope_save(sa_flags_t flags, const void *site)
{
	if (flags & ~SA_SCOPABLE) {
		sa_gstat_add(SA_G_SCOPE_REFUSED, 1);
		errno = EINVAL;
		return SA_SCOPE_INVALID;
	}
	if ((flags & SA_NOWAIT) && !(sa_scope_tls.flags & SA_NOWAIT))
		nowait_prepare();
	struct sa_scope_rec *r = cur();
	sa_flags_t add = flags & ~r->flags;
	uint32_t depth = ++r->depth;
	if (add) {
		r->set[r->nset].depth = depth;
		r->set[r->nset].bits = add;
		r->set[r->nset].site = site;
		r->nset++;
		r->flags |= add;
		publish(r);
	}
	count(SA_SCOPE_C_SAVES);
	return (depth & COOKIE_DEPTHMASK) << COOKIE_BITS | add;
}

/* Close the innermost level of r. */
static void pop_level(struct sa_scope_rec *r)
{
	if (r->nset && r->set[r->nset - 1].depth == r->depth)
		r->flags &= ~r->set[--r->nset].bits;
	r->depth--;
}

/* The early-restored depths of r: inline, or (more than SA_SCOPE_MAX_EARLY at once) in an
 * array of metadata that grows by doubling and goes back inline when they fit again. */
static uint32_t *early_of(struct sa_scope_rec *r)
{
	return r->early_ext ? r->early_ext : r->early;
}

static bool is_early(struct sa_scope_rec *r, uint32_t depth)
{
	uint32_t *e = early_of(r);
	for (uint32_t i = 0; i < r->nearly; i++)
		if (e[i] == depth)
			return true;
	return false;
}

/* Room for one more entry; false if it cannot be had (no memory for a bigger array). */
static bool early_room(struct sa_scope_rec *r)
{
	uint32_t cap = r->early_ext ? r->early_cap : SA_SCOPE_MAX_EARLY;
	if (r->nearly < cap)
		return true;
	uint32_t ncap = cap * 2;
	uint32_t *n = sa_meta_alloc_flags(ncap * sizeof(uint32_t),
					  (sa_scope_tls.flags & SA_NOWAIT) | SA_NORECLAIM);
	if (!n)
		return false;
	memcpy(n, early_of(r), r->nearly * sizeof(uint32_t));
	if (r->early_ext)
		sa_meta_free(r->early_ext, r->early_cap * sizeof(uint32_t));
	r->early_ext = n;
	r->early_cap = ncap;
	return true;
}

static void mark_early(struct sa_scope_rec *r, uint32_t depth)
{
	if (!early_room(r)) {
		sa_msg("sheafalloc: no memory to remember one more scope restored out of order; "
		       "its flags stay until the thread's scopes are all restored\n");
		return;
	}
	uint32_t *e = early_of(r);
	uint32_t i = r->nearly;
	while (i > 0 && e[i - 1] > depth) { /* ascending */
		e[i] = e[i - 1];
		i--;
	}
	e[i] = depth;
	r->nearly++;
}

/* Close the innermost level and every level below it that was restored early. */
static void close_levels(struct sa_scope_rec *r)
{
	pop_level(r);
	uint32_t *e = early_of(r);
	while (r->nearly && e[r->nearly - 1] == r->depth) {
		r->nearly--;
		pop_level(r);
	}
	if (r->early_ext && r->nearly <= SA_SCOPE_MAX_EARLY) { /* fits inline again */
		memcpy(r->early, r->early_ext, r->nearly * sizeof(uint32_t));
		sa_meta_free(r->early_ext, r->early_cap * sizeof(uint32_t));
		r->early_ext = NULL;
		r->early_cap = 0;
	}
	if (r->depth == 0 && r->flags) { /* a level lost for want of memory: all closed now */
		r->flags = 0;
		r->nset = 0;
	}
}

/* The bits the save that opened level `depth` recorded (0 if it set none). */
static sa_flags_t bits_at(const struct sa_scope_rec *r, uint32_t depth)
{
	for (uint32_t i = r->nset; i-- > 0;)
		if (r->set[i].depth == depth)
			return r->set[i].bits;
	return 0;
}

static void scope_restore(unsigned cookie, const void *site)
{
	if (cookie == SA_SCOPE_INVALID)
		return;
	struct sa_scope_rec *r = cur();
	unsigned d = cookie >> COOKIE_BITS, bits = cookie & COOKIE_BITMASK;
	uint32_t depth = r->depth;
	sa_flags_t before = r->flags;
	/* levels below the innermost, modulo the cookie's 23 bits of depth */
	uint32_t below = ((depth & COOKIE_DEPTHMASK) - d) & COOKIE_DEPTHMASK;
	if (depth == 0 || below >= depth) {
		report("restored that is not open (restored twice, or saved on another thread or "
		       "coroutine?)",
		       d, depth, site);
		return;
	}
	uint32_t level = depth - below;
	if (bits_at(r, level) != bits) {
		report("restored with a cookie that is not this scope's (saved on another thread "
		       "or coroutine?)",
		       d, depth, site);
		return;
	}
	if (below == 0) {
		close_levels(r);
		publish(r);
		if ((before & SA_NOWAIT) && !(r->flags & SA_NOWAIT) && r == cur())
			sa_deferred_run_try(); /* what the scope put off, with locks only tried */
		return;
	}
	if (is_early(r, level)) {
		report("restored twice (it was restored out of order before)", d, depth, site);
		return;
	}
	sa_gstat_add(SA_G_SCOPE_OUT_OF_ORDER, 1);
	report("restored out of LIFO order (its flags stay until the scopes opened inside it "
	       "end)",
	       d, depth, site);
	mark_early(r, level);
}

#define SITE __builtin_return_address(0)

SA_API unsigned sa_memalloc_flags_save(sa_flags_t flags)
{
	return scope_save(flags, SITE);
}

SA_API void sa_memalloc_flags_restore(unsigned cookie)
{
	scope_restore(cookie, SITE);
}

SA_API unsigned sa_memalloc_noio_save(void)
{
	return scope_save(SA_NOIO, SITE);
}

SA_API void sa_memalloc_noio_restore(unsigned cookie)
{
	scope_restore(cookie, SITE);
}

SA_API unsigned sa_memalloc_nofs_save(void)
{
	return scope_save(SA_NOFS, SITE);
}

SA_API void sa_memalloc_nofs_restore(unsigned cookie)
{
	scope_restore(cookie, SITE);
}

SA_API unsigned sa_memalloc_noreclaim_save(void)
{
	return scope_save(SA_NORECLAIM, SITE);
}

SA_API void sa_memalloc_noreclaim_restore(unsigned cookie)
{
	scope_restore(cookie, SITE);
}

SA_API unsigned sa_memalloc_pin_save(void)
{
	return scope_save(SA_PIN, SITE);
}

SA_API void sa_memalloc_pin_restore(unsigned cookie)
{
	scope_restore(cookie, SITE);
}

SA_API unsigned sa_memalloc_nowait_save(void)
{
	return scope_save(SA_NOWAIT, SITE);
}

SA_API void sa_memalloc_nowait_restore(unsigned cookie)
{
	scope_restore(cookie, SITE); /* runs what the scope deferred */
}

SA_API sa_flags_t sa_memalloc_flags(void)
{
	return cur()->flags;
}

SA_API sa_flags_t sa_current_flags(sa_flags_t flags)
{
	return sa_flags_effective(flags);
}

/* Internal saves (reclaim runs shrinkers under NORECLAIM) skip the reporting site lookup. */
unsigned sa_scope_save_internal(sa_flags_t flags)
{
	return scope_save(flags, NULL);
}

void sa_scope_restore_internal(unsigned cookie)
{
	scope_restore(cookie, NULL);
}

/* ------------------------------------------------------------------ coroutines -------------- */
SA_API void sa_scope_state_init(struct sa_scope_state *s)
{
	if (s)
		memset(s, 0, sizeof(*s));
}

SA_API struct sa_scope_state *sa_scope_swap(struct sa_scope_state *s)
{
	struct sa_scope_state *prev = (struct sa_scope_state *)sa_scope_tls.cur;
	struct sa_scope_rec *r = (struct sa_scope_rec *)s;
	if (r && (r->flags & SA_NOWAIT) && !(sa_scope_tls.flags & SA_NOWAIT))
		nowait_prepare(); /* a NOWAIT scope arrives on this thread */
	sa_scope_tls.cur = r;
	publish(r ? r : &sa_scope_tls.own);
	count(SA_SCOPE_C_SWAPS);
	if ((prev ? ((struct sa_scope_rec *)prev)->flags : sa_scope_tls.own.flags) & SA_NOWAIT &&
	    !(sa_scope_tls.flags & SA_NOWAIT))
		sa_deferred_run_try();
	return prev;
}

SA_API sa_flags_t sa_scope_state_flags(const struct sa_scope_state *s)
{
	return s ? ((const struct sa_scope_rec *)s)->flags : sa_scope_tls.own.flags;
}
