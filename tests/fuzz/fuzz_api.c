/*
 * tests/fuzz/fuzz_api.c — libFuzzer target: the public API driven by a byte stream and checked
 * against a shadow model after every call.
 *
 * What it drives (one thread, public names only, include/sheafalloc.h):
 *   - the malloc family: sa_malloc, sa_malloc_flags, sa_calloc, sa_realloc, sa_reallocarray,
 *     sa_aligned_alloc, sa_posix_memalign, sa_memalign, sa_malloc_usable_size, sa_free, with
 *     sizes 0 .. 6 MiB (mostly small; large runs and huge mappings too), alignments 1 .. 4 MiB and
 *     a few that are not powers of two, and products that overflow;
 *   - caches: sa_cache_create (sizes 1 B .. 1 MiB, alignments, sheaf capacities, a constructor,
 *     SA_CACHE_HWCACHE_ALIGN / TYPESAFE_RCU / DEBUG, and now and then a bad argument),
 *     sa_cache_alloc, sa_cache_alloc_node (nodes -1 .. sa_numa_nodes()), sa_cache_free,
 *     sa_cache_alloc_bulk, sa_cache_free_bulk, sa_cache_shrink, sa_cache_destroy (when empty);
 *   - sheaves: sa_sheaf_prefill (1 .. 400 objects, also 0), sa_sheaf_alloc, sa_sheaf_refill,
 *     sa_sheaf_return, sa_sheaf_size;
 *   - scopes, LIFO: sa_memalloc_{noio,nofs,noreclaim,pin,nowait}_save/restore and
 *     sa_memalloc_flags_save with random flags, some of which must be refused;
 *   - per-call flags (SA_ZERO, SA_NOWAIT, SA_PIN, SA_NOFAIL, ...), sa_trim, sa_free_rcu and
 *     sa_rcu_barrier;
 *   - CPU migration: each input starts on the first CPU the process may use and moves between
 *     them (other per-CPU slots; other nodes on a NUMA machine or HWLOC_SYNTHETIC="node:2 ...").
 * At most MAX_BLOCKS blocks and LIVE_MAX bytes are live at once, and a run of MAX_OPS calls
 * per input, so the fuzzer neither runs out of memory nor times out.
 *
 * What it checks (a failed check prints "fuzz_api: CHECK FAILED ..." and aborts, so libFuzzer
 * saves the input):
 *   - contents: every block is filled with a pattern made from its id and offset (whole up to
 *     FULL_MAX bytes, beyond that the first 4 KiB, a stripe of every 16 KiB and the last
 *     64 bytes) and checked before every free and realloc and by the CHECK op;
 *   - no two live blocks overlap (malloc blocks over their usable size, cache objects over the
 *     object size), checked at every allocation;
 *   - sa_malloc_usable_size >= the request, unchanged while the block lives, all of it
 *     writable; malloc alignment 16, requested alignments held, cache alignment as created
 *     (8, the requested one, 64 with SA_CACHE_HWCACHE_ALIGN above 32 B);
 *   - sa_calloc, SA_ZERO and a ZERO scope give zeroes; a constructed cache hands out objects in
 *     their constructed state (the model restores it before every free, as the API asks);
 *   - sa_realloc keeps the prefix; a failed realloc keeps the block;
 *   - an allocation fails only where the contract lets it (SA_NOWAIT or SA_PIN in force, bad
 *     arguments, which give NULL with the documented errno);
 *   - scopes: sa_memalloc_flags() and sa_current_flags(0) are the union of the open scopes
 *     after every save and restore; a refused save returns SA_SCOPE_INVALID with errno EINVAL
 *     and changes nothing; no scope misuse is ever reported (sa_scope_stats);
 *   - sheaves: after a prefill or refill of n, sa_sheaf_size >= n; each sa_sheaf_alloc takes
 *     exactly one, succeeds while sa_sheaf_size says there are objects (in any scope), and
 *     returns NULL once it is 0;
 *   - statistics of every cache the input made: alloc_fast + alloc_slow + sheaf_alloc_objects -
 *     free_fast - free_slow equals the model's count (sheaf objects count when their sheaf is
 *     returned); at the end of each input (every scope closed, every sheaf returned, every
 *     block freed, sa_rcu_barrier, sa_cache_shrink) it is 0, as are objects_in_use, slabs and
 *     bytes_held; then sa_trim, the caches are destroyed, and sa_memory_held() must stay within
 *     4 MiB of what it was after the first input (no memory lost from input to input).
 * Bad frees are not fuzzed (they are reported and, with bad_free=abort, abort by design).
 * The target sets SHEAFALLOC_OPTIONS=bad_free=abort,scope_check=abort unless the environment
 * already names those keys, so any report of the library is a crash here too.
 *
 * How to run it:
 *   make fuzz                      build build-fuzz/fuzz_api (clang, -fsanitize=fuzzer,address,
 *                                  undefined; the library compiled with the same instrumentation)
 *   make fuzz-run FUZZ_SECS=300    fuzz for that long on build-fuzz/corpus (seeded from
 *                                  tests/fuzz/corpus); crashes land in build-fuzz/crash-*
 *   build-fuzz/fuzz_api FILE...    replay inputs (a crash reproducer)
 *   SA_FUZZ_TRACE=1 build-fuzz/fuzz_api FILE   the same, printing every operation on stderr
 *   tests/fuzz/make_corpus.py DIR  regenerate the seed corpus (tests/fuzz/corpus)
 *
 * The byte stream: a sequence of operations, each an opcode byte (enum op, taken modulo
 * OP_COUNT) followed by the bytes its arguments read (below, each reader says how many). A
 * stream that ends early reads zeros. tests/fuzz/make_corpus.py writes inputs in this format.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sheafalloc.h>

#define MAX_BLOCKS   256	 /* live blocks at once */
#define MAX_CACHES   6		 /* caches one input may hold at once */
#define MAX_SHEAVES  4		 /* prefilled sheaves held at once */
#define MAX_SCOPES   12		 /* open scopes */
#define MAX_OPS	     2000	 /* operations per input */
#define MAX_BARRIER  4		 /* sa_rcu_barrier calls per input (each waits a grace period) */
#define LIVE_MAX     (64u << 20) /* bytes of live blocks */
#define SHEAF_MAX    (16u << 20) /* bytes of objects held in prefilled sheaves */
#define FULL_MAX     (64u << 10) /* blocks up to this are filled and checked whole */
#define HUGE_MAX     (6u << 20)	 /* largest malloc size */
#define CACHE_MAX    (1u << 20)	 /* largest cache object size (the API's bound) */
#define MALLOC_ALIGN 16

/* Opcodes: the values are the stream format (tests/fuzz/make_corpus.py uses the same). */
enum op {
	OP_MALLOC,	     /* size */
	OP_MALLOC_FLAGS,     /* size, flags */
	OP_CALLOC,	     /* byte (overflow if 0), size */
	OP_REALLOC,	     /* index (NULL if 0xffff), size */
	OP_REALLOCARRAY,     /* index, byte nmemb, size (overflow if nmemb 0xff) */
	OP_ALIGNED_ALLOC,    /* align, size */
	OP_POSIX_MEMALIGN,   /* align, size */
	OP_MEMALIGN,	     /* align, size */
	OP_FREE,	     /* index, byte how (cache objects: sa_free or sa_cache_free) */
	OP_USABLE,	     /* index */
	OP_CACHE_CREATE,     /* byte kind, size, byte align, byte capacity, byte flags */
	OP_CACHE_ALLOC,	     /* byte cache, flags */
	OP_CACHE_ALLOC_NODE, /* byte cache, flags, byte node */
	OP_CACHE_FREE,	     /* index (the next cache object from there) */
	OP_BULK_ALLOC,	     /* byte cache, flags, byte n */
	OP_BULK_FREE,	     /* byte cache, byte n */
	OP_CACHE_SHRINK,     /* byte cache */
	OP_CACHE_DESTROY,    /* byte cache */
	OP_SHEAF_PREFILL,    /* byte cache, flags, u16 count */
	OP_SHEAF_ALLOC,	     /* byte sheaf, flags, byte n (pops n, all if 0xff) */
	OP_SHEAF_REFILL,     /* byte sheaf, flags, u16 count */
	OP_SHEAF_RETURN,     /* byte sheaf, flags */
	OP_TRIM,	     /* - */
	OP_SCOPE_SAVE,	     /* byte kind: noio nofs noreclaim pin nowait, flags_save(valid bits) */
	OP_SCOPE_RESTORE,    /* - (the innermost) */
	OP_SCOPE_FLAGS,	     /* u16 flags: sa_memalloc_flags_save of anything, refused or not */
	OP_FREE_RCU,	     /* index */
	OP_RCU_BARRIER,	     /* - */
	OP_CHECK,	     /* - : every block, every sheaf, every cache's statistics */
	OP_MIGRATE, /* byte cpu: move to that CPU of the ones allowed (modulo their number) */
	OP_COUNT
};

static const char *const op_names[OP_COUNT] = {
	"malloc",	    "malloc_flags", "calloc",
	"realloc",	    "reallocarray", "aligned_alloc",
	"posix_memalign",   "memalign",	    "free",
	"usable",	    "cache_create", "cache_alloc",
	"cache_alloc_node", "cache_free",   "bulk_alloc",
	"bulk_free",	    "cache_shrink", "cache_destroy",
	"sheaf_prefill",    "sheaf_alloc",  "sheaf_refill",
	"sheaf_return",	    "trim",	    "scope_save",
	"scope_restore",    "scope_flags",  "free_rcu",
	"rcu_barrier",	    "check",	    "migrate",
};

/* ------------------------------------------------------------------ the model -------------- */
struct blk {
	char *p;
	size_t req;  /* requested size (cache objects: the object size) */
	size_t span; /* bytes that are this block's alone: usable size, or the object size */
	size_t flen; /* [0, flen) holds the pattern (whole up to FULL_MAX, else sampled) */
	uint64_t id;
	int cache; /* index in caches[], -1: the malloc family */
	bool pinned;
};

struct mcache {
	struct sa_cache *c;
	size_t size, stride, align;
	int ctor; /* 0: none, 1 or 2: ctor1 / ctor2 */
	unsigned flags;
	long live;	      /* live objects (pinned ones too) */
	int64_t expect;	      /* what the counters must say: handed out - given back, unpinned */
	long rcu_pending;     /* unpinned objects in sa_free_rcu since the last barrier */
	long rcu_pending_all; /* the same with pinned ones (their companion's) */
	int sheaves;	      /* prefilled sheaves of it held */
};

struct msheaf {
	struct sa_sheaf *s;
	int cache;
	unsigned size;	/* sa_sheaf_size must say this */
	unsigned taken; /* popped since the sheaf was last accounted (returned or replaced) */
	bool pinned;
};

struct mscope {
	int kind; /* 0 noio, 1 nofs, 2 noreclaim, 3 pin, 4 nowait, 5 flags */
	unsigned cookie;
	sa_flags_t flags;
};

static struct blk blocks[MAX_BLOCKS];
static int nblocks;
static size_t live_bytes;
static struct mcache caches[MAX_CACHES];
static struct msheaf sheaves[MAX_SHEAVES];
static size_t sheaf_bytes;
static struct mscope scopes[MAX_SCOPES];
static int nscopes;
static uint64_t next_id;
static unsigned long cache_serial;
static int barriers;
static uint64_t refused; /* refused saves this input */
static struct sa_scope_stats scope_stats0;
static int nodes;
static cpu_set_t cpus_allowed; /* the process's CPUs at start; each input starts on the first */
static int ncpus_allowed;
static bool trace;
static int op_no;
static const char *op_now = "start";

/* ------------------------------------------------------------------ reporting -------------- */
static __attribute__((noreturn, format(printf, 1, 2))) void fail(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "fuzz_api: CHECK FAILED at operation %d (%s): ", op_no, op_now);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	fflush(stderr);
	abort();
}

#define CHECK(cond, ...)                          \
	do {                                      \
		if (__builtin_expect(!(cond), 0)) \
			fail(__VA_ARGS__);        \
	} while (0)

static __attribute__((format(printf, 1, 2))) void tr(const char *fmt, ...)
{
	if (!trace)
		return;
	va_list ap;
	fprintf(stderr, "  #%d %s: ", op_no, op_now);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
}

/* ------------------------------------------------------------------ the byte stream -------- */
static const uint8_t *in_p;
static size_t in_n;

static uint8_t u8(void)
{
	if (!in_n)
		return 0;
	in_n--;
	return *in_p++;
}

static uint16_t u16(void)
{
	uint16_t lo = u8();
	return (uint16_t)(lo | (uint16_t)u8() << 8);
}

/* 2-4 bytes: a malloc size, mostly small, now and then large or huge */
static size_t gen_size(void)
{
	uint8_t k = u8();
	if (k < 128)
		return u8() + (k & 1); /* 0 .. 256 */
	if (k < 192)
		return u16() % 4097;
	if (k < 232)
		return u16() % 65537;
	if (k < 250)
		return ((size_t)u16() << 5 | (u8() & 31)) % ((2u << 20) + 1); /* .. 2 MiB: large */
	return (2u << 20) + (((size_t)u16() << 8 | u8()) % (HUGE_MAX - (2u << 20) + 1));
}

/* 1-2 bytes: an alignment: powers of two 1 .. 4 MiB, or (1 in 24) one that is not */
static size_t gen_align(void)
{
	uint8_t k = u8() % 24;
	if (k <= 22)
		return (size_t)1 << k;
	size_t a = u8() + 3;
	if (!(a & (a - 1)))
		a++;
	return a;
}

/* the flags the open scopes hold, as the model has them */
static sa_flags_t scope_union(void)
{
	sa_flags_t f = 0;
	for (int i = 0; i < nscopes; i++)
		f |= scopes[i].flags;
	return f;
}

/* 1-3 bytes: per-call flags (mostly none). Never SA_NOFAIL where SA_NOWAIT holds: an empty
 * reserve there is a reported misuse (abort), by contract. */
static sa_flags_t gen_flags(void)
{
	uint8_t k = u8();
	if (k & 3)
		return 0;
	sa_flags_t f = 0;
	uint8_t b = u8(), c = u8();
	if (b & 1)
		f |= SA_ZERO;
	if (b & 2)
		f |= SA_NOWARN;
	if (b & 4)
		f |= SA_NOFS;
	if (b & 8)
		f |= SA_NOIO;
	if (b & 16)
		f |= SA_NORECLAIM;
	if (b & 32)
		f |= SA_HIGH;
	if (c % 8 == 1)
		f |= SA_NOWAIT;
	if (c % 8 == 2)
		f |= SA_PIN;
	if (c % 8 == 3)
		f |= SA_NOFAIL;
	if ((f | scope_union()) & SA_NOWAIT)
		f &= ~SA_NOFAIL;
	return f;
}

/* ------------------------------------------------------------------ patterns --------------- */
/* The loops over block contents are most of the work: left out of coverage (their compares
 * would only make noise for the fuzzer and cost 30% of the time) and of ASan (the blocks are the
 * allocator's own mappings, which ASan does not track anyway). */
#define DATA_LOOP __attribute__((no_sanitize("coverage", "address")))

static inline DATA_LOOP uint64_t pat_word(uint64_t id, size_t w)
{
	uint64_t x = (id + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)w * 0xD6E8FEB86659FD93ull;
	x ^= x >> 31;
	return x * 0xBF58476D1CE4E5B9ull;
}

static inline DATA_LOOP uint8_t pat_byte(uint64_t id, size_t off)
{
	return (uint8_t)(pat_word(id, off >> 3) >> ((off & 7) * 8));
}

enum rop { R_FILL, R_CHECK, R_ZERO };

static __attribute__((noreturn)) void content_fail(const struct blk *b, enum rop op, size_t off,
						   uint8_t want, uint8_t got)
{
	fail("block id %" PRIu64 " at %p (request %zu, span %zu, %s%d%s): byte %zu is %#x, "
	     "expected %#x (%s)",
	     b->id, (void *)b->p, b->req, b->span, b->cache < 0 ? "malloc" : "cache ",
	     b->cache < 0 ? 0 : b->cache, b->pinned ? ", pinned" : "", off, got, want,
	     op == R_ZERO ? "should be zeroed" : "contents lost");
}

/* op on [a, b) of the block: fill with its pattern, check the pattern, or check zeroes */
static DATA_LOOP void range(const struct blk *bk, size_t a, size_t b, enum rop op)
{
	unsigned char *p = (unsigned char *)bk->p;
	uint64_t id = bk->id;
	size_t o = a;
	for (; o < b && ((uintptr_t)(p + o) & 7); o++) {
		uint8_t want = op == R_ZERO ? 0 : pat_byte(id, o);
		if (op == R_FILL)
			p[o] = want;
		else if (p[o] != want)
			content_fail(bk, op, o, want, p[o]);
	}
	/* the block's start is 8-aligned, so o is a multiple of 8 here */
	for (; o + 8 <= b; o += 8) {
		uint64_t want = op == R_ZERO ? 0 : pat_word(id, o >> 3);
		uint64_t *w = (uint64_t *)(p + o);
		if (op == R_FILL) {
			*w = want;
		} else if (*w != want) {
			for (size_t k = 0; k < 8; k++)
				if (p[o + k] != (uint8_t)(want >> (k * 8)))
					content_fail(bk, op, o + k, (uint8_t)(want >> (k * 8)),
						     p[o + k]);
		}
	}
	for (; o < b; o++) {
		uint8_t want = op == R_ZERO ? 0 : pat_byte(id, o);
		if (op == R_FILL)
			p[o] = want;
		else if (p[o] != want)
			content_fail(bk, op, o, want, p[o]);
	}
}

/* The sampled set of a big block within [0, len): the first 4 KiB and 32 bytes of every 16 KiB
 * after (at an offset that moves from one to the next over the pages of the 16 KiB): a stripe
 * in every page made the page faults of huge blocks cost most of the run's time. */
static void sampled(const struct blk *bk, size_t len, enum rop op)
{
	range(bk, 0, len < 4096 ? len : 4096, op);
	for (size_t pg = 16384; pg < len; pg += 16384) {
		size_t a = pg + (((pg >> 14) * 4168) % 16320 & ~(size_t)7);
		size_t b = a + 32;
		if (a >= len)
			break;
		range(bk, a, b < len ? b : len, op);
	}
}

/* Make [0, len) the block's pattern (whole, or sampled plus its last 64 bytes). */
static void blk_fill(struct blk *b, size_t len)
{
	if (len <= FULL_MAX) {
		range(b, 0, len, R_FILL);
	} else {
		sampled(b, len, R_FILL);
		range(b, len - 64, len, R_FILL);
	}
	b->flen = len;
}

/* Check [0, len), len <= flen, against what blk_fill wrote; tail: the last 64 bytes of flen too
 * (len == flen). */
static void blk_check(const struct blk *b, size_t len)
{
	if (b->flen <= FULL_MAX) {
		range(b, 0, len, R_CHECK);
	} else {
		sampled(b, len, R_CHECK);
		if (len == b->flen)
			range(b, len - 64, len, R_CHECK);
	}
}

static void check_zero(const struct blk *b, size_t len)
{
	if (len <= FULL_MAX) {
		range(b, 0, len, R_ZERO);
	} else {
		sampled(b, len, R_ZERO);
		range(b, len - 64, len, R_ZERO);
	}
}

/* ------------------------------------------------------------------ constructors ----------- */
static inline uint64_t ctor_val(const void *o, int kind)
{
	return ((uintptr_t)o * 0x2545F4914F6CDD1Dull) ^
	       (kind == 1 ? 0xC0C0C0C0C0C0C0C0ull : 0x5A5A5A5A00000000ull);
}

static void ctor1(void *o)
{
	uint64_t v = ctor_val(o, 1);
	memcpy(o, &v, 8);
}

static void ctor2(void *o)
{
	uint64_t v = ctor_val(o, 2);
	memcpy(o, &v, 8);
}

/* ------------------------------------------------------------------ blocks ----------------- */
static DATA_LOOP void check_overlap(const char *p, size_t span, int except)
{
	uintptr_t a = (uintptr_t)p, b = a + (span ? span : 1);
	for (int i = 0; i < nblocks; i++) {
		if (i == except)
			continue;
		uintptr_t c = (uintptr_t)blocks[i].p, d = c + (blocks[i].span ? blocks[i].span : 1);
		CHECK(a >= d || c >= b,
		      "new block %p..%p (%zu bytes) overlaps live block id %" PRIu64 " %p..%p (%s)",
		      (void *)a, (void *)b, span, blocks[i].id, (void *)c, (void *)d,
		      blocks[i].cache < 0 ? "malloc" : "cache object");
	}
}

static bool room_for(size_t bytes)
{
	return nblocks < MAX_BLOCKS && live_bytes + bytes <= LIVE_MAX;
}

/* A new malloc-family block: checks alignment, usable size, overlap, zeroes; fills it. */
static void add_malloc(void *p, size_t req, size_t align, bool zero)
{
	CHECK(((uintptr_t)p & (MALLOC_ALIGN - 1)) == 0, "%p (size %zu) is not 16-byte aligned", p,
	      req);
	CHECK(align <= 1 || ((uintptr_t)p & (align - 1)) == 0,
	      "%p (size %zu) is not aligned to %zu", p, req, align);
	size_t usable = sa_malloc_usable_size(p);
	CHECK(usable >= req, "usable size %zu of %p below the request %zu", usable, p, req);
	CHECK(usable >= 1, "usable size 0 for %p (request %zu)", p, req);
	check_overlap(p, usable, -1);
	struct blk *b = &blocks[nblocks];
	*b = (struct blk){.p = p, .req = req, .span = usable, .id = next_id++, .cache = -1};
	if (zero)
		check_zero(b, req);
	blk_fill(b, req);
	nblocks++;
	live_bytes += usable;
	tr("-> %p id %" PRIu64 " usable %zu", p, b->id, usable);
}

static void remove_block(int i)
{
	live_bytes -= blocks[i].span;
	blocks[i] = blocks[--nblocks];
}

/* The flags an allocation runs with, as the model sees them */
static sa_flags_t eff(sa_flags_t f)
{
	f |= scope_union();
	if (f & SA_NOIO)
		f |= SA_NOFS;
	return f;
}

/* May an allocation with effective flags f return NULL (no memory limit is set here)? */
static bool may_fail(sa_flags_t f)
{
	return (f & (SA_NOWAIT | SA_PIN)) != 0;
}

static int pick_block(void)
{
	uint16_t v = u16();
	return nblocks ? (int)(v % nblocks) : -1;
}

static struct mcache *pick_cache(int *idx)
{
	uint8_t v = u8();
	for (int k = 0; k < MAX_CACHES; k++) {
		int i = (v + k) % MAX_CACHES;
		if (caches[i].c) {
			*idx = i;
			return &caches[i];
		}
	}
	return NULL;
}

/* A new cache object: alignment, overlap, constructed state or zeroes; fills it. */
static void add_object(int ci, void *p, bool pinned, bool zero)
{
	struct mcache *m = &caches[ci];
	CHECK(((uintptr_t)p & (m->align - 1)) == 0, "object %p of cache %d not aligned to %zu", p,
	      ci, m->align);
	check_overlap(p, m->size, -1);
	int node = sa_object_node(p);
	CHECK(node >= 0 && node < nodes, "sa_object_node(%p) = %d with %d node(s)", p, node, nodes);
	struct blk *b = &blocks[nblocks];
	*b = (struct blk){.p = p,
			  .req = m->size,
			  .span = m->size,
			  .id = next_id++,
			  .cache = ci,
			  .pinned = pinned};
	if (zero) {
		check_zero(b, m->size);
	} else if (m->ctor) {
		uint64_t v;
		memcpy(&v, p, 8);
		CHECK(v == ctor_val(p, m->ctor),
		      "object %p of cache %d is not in its constructed state (%#" PRIx64
		      ", expected %#" PRIx64 ")",
		      p, ci, v, ctor_val(p, m->ctor));
	}
	blk_fill(b, m->size);
	nblocks++;
	live_bytes += m->size;
	m->live++;
	tr("-> %p id %" PRIu64 "%s", p, b->id, pinned ? " pinned" : "");
}

/* Before a cache object goes back: check it, put back its constructed state. */
static void release_object(struct blk *b)
{
	blk_check(b, b->flen);
	struct mcache *m = &caches[b->cache];
	if (m->ctor) {
		uint64_t v = ctor_val(b->p, m->ctor);
		memcpy(b->p, &v, 8);
	}
	m->live--;
}

/* ------------------------------------------------------------------ statistics ------------- */
static void check_cache_stats(int ci, bool final)
{
	struct mcache *m = &caches[ci];
	struct sa_cache_stats st;
	CHECK(sa_cache_stats(m->c, &st) == 0, "sa_cache_stats failed");
	int64_t out = (int64_t)(st.alloc_fast + st.alloc_slow + st.sheaf_alloc_objects);
	int64_t in = (int64_t)(st.free_fast + st.free_slow);
	CHECK(out - in == m->expect,
	      "cache %d ('%s', size %zu): alloc_fast %" PRIu64 " + alloc_slow %" PRIu64
	      " + sheaf_alloc_objects %" PRIu64 " - free_fast %" PRIu64 " - free_slow %" PRIu64
	      " = %" PRId64 ", the model says %" PRId64 " (objects_in_use %" PRIu64 ")",
	      ci, sa_cache_name(m->c), m->size, st.alloc_fast, st.alloc_slow,
	      st.sheaf_alloc_objects, st.free_fast, st.free_slow, out - in, m->expect,
	      st.objects_in_use);
	CHECK(st.objects_in_use == (uint64_t)(m->expect > 0 ? m->expect : 0),
	      "cache %d: objects_in_use %" PRIu64 ", expected %" PRId64, ci, st.objects_in_use,
	      m->expect);
	CHECK(st.slabs_freed <= st.slabs_allocated,
	      "cache %d ('%s'): %" PRIu64 " slabs freed of %" PRIu64 " allocated", ci,
	      sa_cache_name(m->c), st.slabs_freed, st.slabs_allocated);
	if (final) {
		CHECK(st.slabs_freed == st.slabs_allocated,
		      "cache %d ('%s'): %" PRIu64 " slabs freed of %" PRIu64
		      " allocated, none held",
		      ci, sa_cache_name(m->c), st.slabs_freed, st.slabs_allocated);
		CHECK(st.slabs == 0 && st.bytes_held == 0 && st.objects_cached == 0,
		      "cache %d ('%s', size %zu) empty and shrunk still holds %" PRIu64
		      " slab(s), %" PRIu64 " bytes, %" PRIu64 " cached object(s)",
		      ci, sa_cache_name(m->c), m->size, st.slabs, st.bytes_held, st.objects_cached);
		CHECK(st.rcu_waiting == 0,
		      "cache %d: %" PRIu64 " objects wait for RCU after a barrier", ci,
		      st.rcu_waiting);
	}
}

/* The counters are exact at a quiescent point: no scope open (no deferred frees left), no
 * sa_free_rcu of this cache since the last barrier. */
static void check_stats_now(void)
{
	if (nscopes)
		return;
	for (int i = 0; i < MAX_CACHES; i++)
		if (caches[i].c && caches[i].rcu_pending == 0)
			check_cache_stats(i, false);
}

static void check_scope_flags(void)
{
	sa_flags_t u = scope_union();
	sa_flags_t got = sa_memalloc_flags();
	CHECK(got == u, "sa_memalloc_flags() = %#x, the open scopes hold %#x", got, u);
	sa_flags_t cur = sa_current_flags(0);
	sa_flags_t want = u | ((u & SA_NOIO) ? SA_NOFS : 0);
	CHECK(cur == want, "sa_current_flags(0) = %#x, expected %#x", cur, want);
}

/* ------------------------------------------------------------------ operations ------------- */
static void op_malloc_like(int op)
{
	size_t size = 0;
	sa_flags_t f = 0;
	size_t align = 0;
	void *p = NULL;
	bool zero = false, expect_null = false;
	int want_errno = 0;

	switch (op) {
	case OP_MALLOC:
		size = gen_size();
		if (!room_for(size))
			return;
		p = sa_malloc(size);
		break;
	case OP_MALLOC_FLAGS:
		size = gen_size();
		f = gen_flags();
		if (!room_for(size))
			return;
		p = sa_malloc_flags(size, f);
		break;
	case OP_CALLOC: {
		uint8_t n = u8();
		size = gen_size();
		if (n == 0) { /* an overflowing product */
			expect_null = true;
			want_errno = ENOMEM;
			p = sa_calloc(SIZE_MAX / 2 + 2, size | 2);
			break;
		}
		size_t nmemb = n <= 8 ? n : 1;
		size_t each = size / nmemb;
		size = nmemb * each;
		if (!room_for(size))
			return;
		zero = true;
		p = sa_calloc(nmemb, each);
		break;
	}
	case OP_ALIGNED_ALLOC:
	case OP_POSIX_MEMALIGN:
	case OP_MEMALIGN: {
		align = gen_align();
		size = gen_size();
		bool pow2 = !(align & (align - 1));
		if (!room_for(size + align))
			return;
		if (op == OP_ALIGNED_ALLOC) {
			p = sa_aligned_alloc(align, size);
			if (!pow2) {
				expect_null = true;
				want_errno = EINVAL;
			}
		} else if (op == OP_POSIX_MEMALIGN) {
			void *q = (void *)0x1; /* must stay as it is on failure */
			errno = 0;
			int rc = sa_posix_memalign(&q, align, size);
			bool bad = !pow2 || align % sizeof(void *);
			if (bad) {
				CHECK(rc == EINVAL && q == (void *)0x1,
				      "posix_memalign(%zu, %zu) = %d, expected EINVAL, memptr "
				      "untouched",
				      align, size, rc);
				tr("align %zu size %zu -> EINVAL", align, size);
				return;
			}
			if (rc) {
				CHECK(rc == ENOMEM && q == (void *)0x1 && may_fail(eff(0)),
				      "posix_memalign(%zu, %zu) = %d (scope %#x)", align, size, rc,
				      scope_union());
				return;
			}
			p = q;
		} else {
			p = sa_memalign(align, size);
			size_t a = 1;
			while (a < align)
				a <<= 1;
			align = a;
		}
		break;
	}
	}
	int err = errno;
	tr("size %zu align %zu flags %#x -> %p", size, align, f, p);
	if (expect_null) {
		CHECK(!p && err == want_errno,
		      "%s (size %zu, align %zu) = %p errno %d, expected NULL "
		      "errno %d",
		      op_names[op], size, align, p, err, want_errno);
		return;
	}
	sa_flags_t e = eff(f);
	if (!p) {
		CHECK(may_fail(e),
		      "%s(size %zu, align %zu, flags %#x) failed (errno %d) with "
		      "effective flags %#x and no limit",
		      op_names[op], size, align, f, err, e);
		CHECK(err == ENOMEM, "%s failed with errno %d, not ENOMEM", op_names[op], err);
		return;
	}
	add_malloc(p, size, align, zero || (e & SA_ZERO));
}

static void op_realloc(int op)
{
	uint16_t v = u16();
	uint8_t nm = op == OP_REALLOCARRAY ? u8() : 1;
	size_t size = gen_size();
	int i = nblocks && v != 0xffff ? (int)(v % nblocks) : -1;
	bool from_null = i < 0 || blocks[i].cache >= 0; /* realloc(NULL, n), or a cache object */
	if (op == OP_REALLOCARRAY && nm == 0xff) { /* overflow: NULL, ENOMEM, block unchanged */
		void *q = sa_reallocarray(from_null ? NULL : blocks[i].p, SIZE_MAX / 4, 8);
		int err = errno;
		tr("overflow -> %p errno %d", q, err);
		CHECK(!q && err == ENOMEM, "reallocarray overflow gave %p errno %d", q, err);
		if (!from_null)
			blk_check(&blocks[i], blocks[i].flen);
		return;
	}
	size_t nmemb = op == OP_REALLOCARRAY ? (nm % 8) + 1 : 1;
	size_t each = size / nmemb;
	size = nmemb * each;
	if (from_null) {
		if (!room_for(size))
			return;
		void *p = op == OP_REALLOC ? sa_realloc(NULL, size)
					   : sa_reallocarray(NULL, nmemb, each);
		int err = errno;
		tr("NULL -> size %zu -> %p", size, p);
		if (!p) {
			CHECK(may_fail(eff(0)), "realloc(NULL, %zu) failed (errno %d)", size, err);
			return;
		}
		add_malloc(p, size, 0, eff(0) & SA_ZERO);
		return;
	}
	struct blk *b = &blocks[i];
	if (size > b->span && live_bytes + size - b->span > LIVE_MAX)
		return;
	blk_check(b, b->flen);
	char *old = b->p;
	void *p = op == OP_REALLOC ? sa_realloc(old, size) : sa_reallocarray(old, nmemb, each);
	int err = errno;
	tr("id %" PRIu64 " %p (%zu) -> size %zu -> %p", b->id, (void *)old, b->req, size, p);
	if (size == 0) {
		CHECK(!p, "realloc(%p, 0) returned %p, not NULL (glibc frees)", (void *)old, p);
		remove_block(i);
		return;
	}
	if (!p) {
		CHECK(may_fail(eff(0)), "realloc(%p, %zu) failed (errno %d)", (void *)old, size,
		      err);
		blk_check(b, b->flen); /* kept */
		return;
	}
	CHECK(((uintptr_t)p & (MALLOC_ALIGN - 1)) == 0, "realloc gave %p, not 16-aligned", p);
	size_t usable = sa_malloc_usable_size(p);
	CHECK(usable >= size, "realloc: usable size %zu below %zu", usable, size);
	check_overlap(p, usable, i);
	size_t keep = size < b->flen ? size : b->flen;
	b->p = p;
	/* the prefix: [0, min(old filled, new size)); the tail check only if all of it came along */
	size_t flen = b->flen;
	if (flen <= FULL_MAX) {
		range(b, 0, keep, R_CHECK);
	} else {
		sampled(b, keep, R_CHECK);
		if (keep == flen)
			range(b, flen - 64, flen, R_CHECK);
	}
	live_bytes = live_bytes - b->span + usable;
	b->span = usable;
	b->req = size;
	blk_fill(b, size);
}

static void op_free(void)
{
	int i = pick_block();
	uint8_t how = u8();
	if (i < 0)
		return;
	struct blk *b = &blocks[i];
	tr("id %" PRIu64 " %p%s", b->id, (void *)b->p, b->cache < 0 ? "" : " (cache object)");
	if (b->cache < 0) {
		blk_check(b, b->flen);
		sa_free(b->p);
	} else {
		struct mcache *m = &caches[b->cache];
		release_object(b);
		if (how & 1)
			sa_free(b->p);
		else
			sa_cache_free(m->c, b->p);
		if (!b->pinned)
			m->expect--;
	}
	remove_block(i);
}

static void op_usable(void)
{
	int i = pick_block();
	if (i < 0)
		return;
	struct blk *b = &blocks[i];
	blk_check(b, b->flen);
	if (b->cache >= 0)
		return;
	size_t u = sa_malloc_usable_size(b->p);
	tr("id %" PRIu64 " %p -> %zu", b->id, (void *)b->p, u);
	CHECK(u == b->span, "usable size of %p changed from %zu to %zu while it lives",
	      (void *)b->p, b->span, u);
	blk_fill(b, u); /* all of it is writable */
}

static void op_cache_create(void)
{
	uint8_t kind = u8();
	size_t size;
	uint8_t sk = u8();
	if (sk < 128)
		size = 1 + u8() % 64;
	else if (sk < 208)
		size = 1 + u16() % 4096;
	else if (sk < 248)
		size = 1 + u16();
	else
		size = 1 + (((size_t)u16() << 4) % CACHE_MAX);
	uint8_t ak = u8(), ck = u8(), fk = u8();
	size_t align = ak < 128 ? 0 : (size_t)1 << (ak % 17); /* up to 64 KiB */
	unsigned flags = fk & (SA_CACHE_HWCACHE_ALIGN | SA_CACHE_TYPESAFE_RCU);
	if ((fk & 0x18) == 0x18)
		flags |= SA_CACHE_DEBUG;
	int ctor = size >= 8 ? (kind >> 1) % 3 : 0;
	/* sheaf capacity: 0 (chosen from the size) or small, with sheaves of at most 1 MiB */
	size_t stride_guess = size < 8 ? 8 : size;
	unsigned cap = ck < 160 ? 0 : 1 + ck % 64;
	if (cap && (size_t)cap * stride_guess > (1u << 20))
		cap = (unsigned)((1u << 20) / stride_guess) + 1;
	int bad = 0; /* 1 in 16: an argument the API must refuse */
	if ((kind & 0xf0) == 0xf0) {
		bad = 1 + (kind & 3);
		if (bad == 1)
			size = (kind & 4) ? 0 : CACHE_MAX + 1 + u8();
		else if (bad == 2)
			align = (kind & 4) ? 3 * 8 : (size_t)128 << 10;
		else if (bad == 3)
			cap = 65537;
		else
			flags |= 1u << 20;
	}
	int slot = -1;
	for (int k = 0; k < MAX_CACHES; k++)
		if (!caches[k].c) {
			slot = k;
			break;
		}
	if (slot < 0)
		return;
	struct sa_cache_args args = {.align = align,
				     .sheaf_capacity = cap,
				     .ctor = ctor == 1	 ? ctor1
					     : ctor == 2 ? ctor2
							 : NULL,
				     .flags = flags};
	char name[48];
	snprintf(name, sizeof(name), "fuzz-%lu", ++cache_serial);
	errno = 0;
	struct sa_cache *c = sa_cache_create(name, size, kind & 8 ? &args : NULL);
	int err = errno;
	bool with_args = kind & 8;
	tr("'%s' size %zu align %zu cap %u flags %#x ctor %d%s -> %p", name, size,
	   with_args ? align : 0, with_args ? cap : 0, with_args ? flags : 0, with_args ? ctor : 0,
	   bad ? " (bad argument)" : "", (void *)c);
	if (eff(0) & SA_NOWAIT) {
		CHECK(!c && err == EWOULDBLOCK,
		      "sa_cache_create inside a NOWAIT scope gave %p errno %d", (void *)c, err);
		return;
	}
	if (bad && (bad == 1 || with_args)) {
		CHECK(!c && err == EINVAL,
		      "sa_cache_create with a bad argument (%d) gave %p errno %d", bad, (void *)c,
		      err);
		return;
	}
	CHECK(c, "sa_cache_create('%s', %zu) failed, errno %d", name, size, err);
	if (!with_args) {
		align = 0;
		flags = 0;
		ctor = 0;
	}
	size_t a = align ? align : 8;
	if (a < 8)
		a = 8;
	if ((flags & SA_CACHE_HWCACHE_ALIGN) && a < 64 && size > 32)
		a = 64;
	/* usable bytes per object: the stride, a multiple of the alignment; SA_CACHE_DEBUG: the
	 * size (the red zone after it is not usable) */
	size_t stride = sa_cache_object_size(c);
	CHECK(stride >= size && ((flags & SA_CACHE_DEBUG) || stride % a == 0),
	      "cache '%s' (size %zu, align %zu, flags %#x): object size %zu", name, size, a, flags,
	      stride);
	stride = (stride + a - 1) & ~(a - 1); /* bytes from one object to the next, at least */
	CHECK(strcmp(sa_cache_name(c), name) == 0, "sa_cache_name '%s', not '%s'", sa_cache_name(c),
	      name);
	if (with_args && cap)
		CHECK(sa_cache_sheaf_capacity(c) == cap, "sheaf capacity %u, asked %u",
		      sa_cache_sheaf_capacity(c), cap);
	caches[slot] = (struct mcache){
		.c = c, .size = size, .stride = stride, .align = a, .ctor = ctor, .flags = flags};
}

/* A cache allocation's result: NULL where allowed, else a checked new object. */
static void got_object(int ci, void *p, sa_flags_t f, int err)
{
	struct mcache *m = &caches[ci];
	sa_flags_t e = eff(f);
	if (!p) {
		CHECK(may_fail(e),
		      "cache %d ('%s'): allocation with flags %#x (effective %#x) "
		      "failed, errno %d",
		      ci, sa_cache_name(m->c), f, e, err);
		return;
	}
	bool pinned = e & SA_PIN;
	add_object(ci, p, pinned, e & SA_ZERO);
	if (!pinned)
		m->expect++;
}

static void op_cache_alloc(bool node_op)
{
	int ci;
	struct mcache *m = pick_cache(&ci);
	sa_flags_t f = gen_flags();
	int node = node_op ? (int)(u8() % 4) - 1 : -1;
	if (!m || !room_for(m->size))
		return;
	errno = 0;
	void *p = node_op ? sa_cache_alloc_node(m->c, f, node) : sa_cache_alloc(m->c, f);
	int err = errno;
	tr("cache %d flags %#x node %d -> %p", ci, f, node, p);
	if (node_op && node >= nodes && !(eff(f) & SA_PIN)) {
		CHECK(!p && err == EINVAL, "sa_cache_alloc_node(node %d of %d) gave %p errno %d",
		      node, nodes, p, err);
		return;
	}
	got_object(ci, p, f, err);
}

static void op_cache_free(void)
{
	int i = pick_block();
	if (i < 0)
		return;
	for (int k = 0; k < nblocks; k++) { /* the next cache object from i */
		int j = (i + k) % nblocks;
		if (blocks[j].cache < 0)
			continue;
		struct blk *b = &blocks[j];
		struct mcache *m = &caches[b->cache];
		tr("id %" PRIu64 " %p cache %d", b->id, (void *)b->p, b->cache);
		release_object(b);
		sa_cache_free(m->c, b->p);
		if (!b->pinned)
			m->expect--;
		remove_block(j);
		return;
	}
}

static void op_bulk_alloc(void)
{
	int ci;
	struct mcache *m = pick_cache(&ci);
	sa_flags_t f = gen_flags();
	size_t n = 1 + u8() % 64;
	if (!m)
		return;
	while (n && !(nblocks + (int)n <= MAX_BLOCKS && live_bytes + n * m->size <= LIVE_MAX))
		n /= 2;
	if (!n)
		return;
	void *objs[64];
	errno = 0;
	size_t got = sa_cache_alloc_bulk(m->c, f, n, objs);
	int err = errno;
	tr("cache %d n %zu flags %#x -> %zu", ci, n, f, got);
	if (got == 0) {
		got_object(ci, NULL, f, err);
		return;
	}
	CHECK(got == n, "sa_cache_alloc_bulk(%zu) returned %zu: all or nothing", n, got);
	for (size_t k = 0; k < n; k++)
		got_object(ci, objs[k], f, 0);
}

static void op_bulk_free(void)
{
	int ci;
	struct mcache *m = pick_cache(&ci);
	size_t n = 1 + u8() % 64;
	if (!m)
		return;
	void *objs[64];
	size_t k = 0;
	for (int i = nblocks - 1; i >= 0 && k < n; i--) {
		if (blocks[i].cache != ci)
			continue;
		release_object(&blocks[i]);
		objs[k++] = blocks[i].p;
		if (!blocks[i].pinned)
			m->expect--;
		remove_block(i);
	}
	tr("cache %d n %zu", ci, k);
	sa_cache_free_bulk(m->c, k, objs);
}

static void op_cache_shrink(void)
{
	int ci;
	struct mcache *m = pick_cache(&ci);
	if (!m)
		return;
	int rc = sa_cache_shrink(m->c);
	tr("cache %d -> %d", ci, rc);
	int want = (eff(0) & SA_NOWAIT) ? -EWOULDBLOCK : 0;
	CHECK(rc == want, "sa_cache_shrink = %d, expected %d", rc, want);
}

static void rcu_barrier(void)
{
	sa_rcu_barrier();
	if (!(eff(0) & SA_NOWAIT)) {
		for (int i = 0; i < MAX_CACHES; i++) {
			caches[i].expect -= caches[i].rcu_pending;
			caches[i].rcu_pending = 0;
			caches[i].rcu_pending_all = 0;
		}
	}
}

/* Destroy an empty cache: no objects, no sheaves, nothing waiting for RCU, outside NOWAIT. */
static void destroy_cache(int ci)
{
	struct mcache *m = &caches[ci];
	if (m->rcu_pending_all)
		rcu_barrier();
	check_cache_stats(ci, false);
	sa_cache_destroy(m->c);
	memset(m, 0, sizeof(*m));
}

static void op_cache_destroy(void)
{
	int ci;
	struct mcache *m = pick_cache(&ci);
	if (!m || m->live || m->sheaves || (eff(0) & SA_NOWAIT))
		return;
	tr("cache %d", ci);
	destroy_cache(ci);
}

static unsigned sheaf_limit(const struct mcache *m, unsigned count)
{
	size_t max = (SHEAF_MAX - sheaf_bytes) / m->stride;
	return count > max ? (unsigned)max : count;
}

static void op_sheaf_prefill(void)
{
	int ci;
	struct mcache *m = pick_cache(&ci);
	sa_flags_t f = gen_flags();
	unsigned count = u16() % 401; /* 0: EINVAL */
	int slot = -1;
	for (int k = 0; k < MAX_SHEAVES; k++)
		if (!sheaves[k].s) {
			slot = k;
			break;
		}
	if (!m || slot < 0)
		return;
	count = sheaf_limit(m, count);
	/* the sheaf may hold more than count (a full sheaf): leave room for its capacity too */
	unsigned cap = sa_cache_sheaf_capacity(m->c);
	if (count && (count > cap ? count : cap) * m->stride > SHEAF_MAX - sheaf_bytes)
		return;
	errno = 0;
	struct sa_sheaf *s = sa_sheaf_prefill(m->c, f, count);
	int err = errno;
	unsigned size = sa_sheaf_size(s);
	tr("cache %d count %u flags %#x -> %p size %u", ci, count, f, (void *)s, size);
	if (count == 0) {
		CHECK(!s && err == EINVAL, "sa_sheaf_prefill(0) gave %p errno %d", (void *)s, err);
		return;
	}
	if (!s) {
		CHECK(may_fail(eff(f)), "sa_sheaf_prefill(%u, flags %#x) failed, errno %d", count,
		      f, err);
		return;
	}
	CHECK(size >= count, "prefill of %u gave a sheaf of %u", count, size);
	sheaves[slot] = (struct msheaf){
		.s = s, .cache = ci, .size = size, .pinned = (eff(f) & SA_PIN) != 0};
	sheaf_bytes += (size_t)size * m->stride;
	m->sheaves++;
}

static struct msheaf *pick_sheaf(void)
{
	uint8_t v = u8();
	for (int k = 0; k < MAX_SHEAVES; k++) {
		struct msheaf *s = &sheaves[(v + k) % MAX_SHEAVES];
		if (s->s)
			return s;
	}
	return NULL;
}

static void op_sheaf_alloc(void)
{
	struct msheaf *s = pick_sheaf();
	sa_flags_t f = gen_flags();
	uint8_t n = u8();
	if (!s)
		return;
	struct mcache *m = &caches[s->cache];
	unsigned todo = n == 0xff ? s->size + 1 : (unsigned)(n % 8) + 1;
	for (unsigned k = 0; k < todo; k++) {
		if (s->size && !room_for(m->size))
			return;
		void *p = sa_sheaf_alloc(m->c, f, s->s);
		tr("sheaf %p (size %u) flags %#x -> %p", (void *)s->s, s->size, f, p);
		if (!s->size) {
			CHECK(!p, "sa_sheaf_alloc from an empty sheaf gave %p", p);
			CHECK(sa_sheaf_size(s->s) == 0, "empty sheaf has size %u",
			      sa_sheaf_size(s->s));
			return;
		}
		CHECK(p,
		      "sa_sheaf_alloc failed with %u objects in the sheaf (flags %#x, scope %#x)",
		      s->size, f, scope_union());
		s->size--;
		s->taken++;
		sheaf_bytes -= m->stride;
		CHECK(sa_sheaf_size(s->s) == s->size, "sheaf size %u after a pop, expected %u",
		      sa_sheaf_size(s->s), s->size);
		/* sa_sheaf_alloc zeroes for the call's SA_ZERO and a ZERO scope */
		add_object(s->cache, p, s->pinned, (f | scope_union()) & SA_ZERO);
	}
}

static void sheaf_accounted(struct msheaf *s)
{
	if (!s->pinned)
		caches[s->cache].expect += s->taken;
	s->taken = 0;
}

static void op_sheaf_refill(void)
{
	struct msheaf *s = pick_sheaf();
	sa_flags_t f = gen_flags();
	unsigned count = u16() % 401;
	if (!s)
		return;
	struct mcache *m = &caches[s->cache];
	sheaf_bytes -= (size_t)s->size * m->stride;
	count = sheaf_limit(m, count);
	unsigned cap = sa_cache_sheaf_capacity(m->c);
	if ((count > cap ? count : cap) * m->stride > SHEAF_MAX - sheaf_bytes)
		count = 0;
	struct sa_sheaf *old = s->s;
	int rc = sa_sheaf_refill(m->c, f, &s->s, count);
	unsigned size = sa_sheaf_size(s->s);
	tr("sheaf %p (size %u) count %u flags %#x -> %d, %p size %u", (void *)old, s->size, count,
	   f, rc, (void *)s->s, size);
	if (rc == 0) {
		CHECK(size >= count, "refill to %u gave a sheaf of %u", count, size);
		CHECK(size >= s->size, "refill shrank the sheaf from %u to %u", s->size, size);
		if (s->s != old) {
			/* the old one went back; the new one is the pinned companion's if the old
			 * one was or the flags (with the scope's) have SA_PIN */
			bool was = s->pinned;
			sheaf_accounted(s);
			s->pinned = was || (eff(f) & SA_PIN);
		}
		s->size = size;
	} else {
		CHECK(rc == -ENOMEM && may_fail(eff(f)), "sa_sheaf_refill(%u, flags %#x) = %d",
		      count, f, rc);
		/* docs/api.md: the old sheaf stays, with every object it held; an in-place
		 * refill may have added some short of count */
		CHECK(s->s == old && size >= s->size,
		      "failed refill changed the sheaf (%p size %u, was %p size %u)", (void *)s->s,
		      size, (void *)old, s->size);
		s->size = size;
	}
	sheaf_bytes += (size_t)s->size * m->stride;
}

static void sheaf_return(struct msheaf *s, sa_flags_t f)
{
	struct mcache *m = &caches[s->cache];
	CHECK(sa_sheaf_size(s->s) == s->size, "sheaf %p has %u objects, expected %u", (void *)s->s,
	      sa_sheaf_size(s->s), s->size);
	sa_sheaf_return(m->c, f, s->s);
	sheaf_accounted(s);
	sheaf_bytes -= (size_t)s->size * m->stride;
	m->sheaves--;
	memset(s, 0, sizeof(*s));
}

static void op_sheaf_return(void)
{
	struct msheaf *s = pick_sheaf();
	sa_flags_t f = gen_flags();
	if (!s)
		return;
	tr("sheaf %p size %u flags %#x", (void *)s->s, s->size, f);
	sheaf_return(s, f);
}

static void scope_restore_top(void)
{
	struct mscope *sc = &scopes[--nscopes];
	switch (sc->kind) {
	case 0:
		sa_memalloc_noio_restore(sc->cookie);
		break;
	case 1:
		sa_memalloc_nofs_restore(sc->cookie);
		break;
	case 2:
		sa_memalloc_noreclaim_restore(sc->cookie);
		break;
	case 3:
		sa_memalloc_pin_restore(sc->cookie);
		break;
	case 4:
		sa_memalloc_nowait_restore(sc->cookie);
		break;
	default:
		sa_memalloc_flags_restore(sc->cookie);
		break;
	}
	check_scope_flags();
}

static void op_scope_save(void)
{
	uint8_t k = u8();
	uint8_t b = u8();
	if (nscopes >= MAX_SCOPES)
		return;
	int kind = k % 6;
	unsigned cookie;
	sa_flags_t fl;
	switch (kind) {
	case 0:
		fl = SA_NOIO;
		cookie = sa_memalloc_noio_save();
		break;
	case 1:
		fl = SA_NOFS;
		cookie = sa_memalloc_nofs_save();
		break;
	case 2:
		fl = SA_NORECLAIM;
		cookie = sa_memalloc_noreclaim_save();
		break;
	case 3:
		fl = SA_PIN;
		cookie = sa_memalloc_pin_save();
		break;
	case 4:
		fl = SA_NOWAIT;
		cookie = sa_memalloc_nowait_save();
		break;
	default:
		/* any scopable set: ZERO NOWARN HIGH, and the rest now and then */
		fl = (b & 1 ? SA_ZERO : 0) | (b & 2 ? SA_NOWARN : 0) | (b & 4 ? SA_HIGH : 0) |
		     (b & 8 ? SA_NOFS : 0) | (b & 16 ? SA_NOIO : 0) | (b & 32 ? SA_NORECLAIM : 0) |
		     ((b & 0xc0) == 0xc0 ? SA_NOWAIT : 0) | ((b & 0xc0) == 0x80 ? SA_PIN : 0);
		cookie = sa_memalloc_flags_save(fl);
		break;
	}
	tr("kind %d flags %#x -> cookie %#x", kind, fl, cookie);
	CHECK(cookie != SA_SCOPE_INVALID, "a save of scopable flags %#x was refused", fl);
	scopes[nscopes++] = (struct mscope){.kind = kind, .cookie = cookie, .flags = fl};
	check_scope_flags();
}

static void op_scope_restore(void)
{
	if (!nscopes)
		return;
	tr("kind %d flags %#x", scopes[nscopes - 1].kind, scopes[nscopes - 1].flags);
	scope_restore_top();
}

static void op_scope_flags(void)
{
	sa_flags_t fl = u16();
	if ((fl & 0x8000) == 0)
		fl &= SA_FLAGS_ALL; /* half of them: known flags only */
	if (nscopes >= MAX_SCOPES)
		return;
	const sa_flags_t scopable = SA_FLAGS_ALL & ~SA_NOFAIL;
	sa_flags_t before = sa_memalloc_flags();
	errno = 0;
	unsigned cookie = sa_memalloc_flags_save(fl);
	int err = errno;
	tr("flags %#x -> cookie %#x", fl, cookie);
	if (fl & ~scopable) {
		CHECK(cookie == SA_SCOPE_INVALID && err == EINVAL,
		      "sa_memalloc_flags_save(%#x) = %#x errno %d: must be refused (EINVAL)", fl,
		      cookie, err);
		CHECK(sa_memalloc_flags() == before, "a refused save changed the flags %#x -> %#x",
		      before, sa_memalloc_flags());
		refused++;
		sa_memalloc_flags_restore(cookie); /* does nothing */
		check_scope_flags();
		return;
	}
	CHECK(cookie != SA_SCOPE_INVALID, "sa_memalloc_flags_save(%#x) refused", fl);
	scopes[nscopes++] = (struct mscope){.kind = 5, .cookie = cookie, .flags = fl};
	check_scope_flags();
}

static void op_free_rcu(void)
{
	int i = pick_block();
	if (i < 0)
		return;
	struct blk *b = &blocks[i];
	tr("id %" PRIu64 " %p%s", b->id, (void *)b->p, b->cache < 0 ? "" : " (cache object)");
	if (b->cache < 0) {
		blk_check(b, b->flen);
	} else {
		release_object(b);
		caches[b->cache].rcu_pending_all++;
		if (!b->pinned)
			caches[b->cache].rcu_pending++;
	}
	sa_free_rcu(b->p);
	remove_block(i);
}

/* Move to another CPU (another per-CPU slot; another node on a NUMA or synthetic topology). */
static void set_cpu(unsigned k)
{
	if (ncpus_allowed < 2)
		return;
	k %= (unsigned)ncpus_allowed;
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, &cpus_allowed) || k--)
			continue;
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		sched_setaffinity(0, sizeof(one), &one);
		tr("cpu %d", cpu);
		return;
	}
}

static void op_check(void)
{
	for (int i = 0; i < nblocks; i++)
		blk_check(&blocks[i], blocks[i].flen);
	for (int k = 0; k < MAX_SHEAVES; k++)
		if (sheaves[k].s)
			CHECK(sa_sheaf_size(sheaves[k].s) == sheaves[k].size,
			      "sheaf %p has %u objects, expected %u", (void *)sheaves[k].s,
			      sa_sheaf_size(sheaves[k].s), sheaves[k].size);
	check_scope_flags();
	check_stats_now();
}

/* ------------------------------------------------------------------ one input -------------- */
static void finish(void)
{
	op_now = "end of input";
	while (nscopes)
		scope_restore_top();
	for (int k = 0; k < MAX_SHEAVES; k++)
		if (sheaves[k].s)
			sheaf_return(&sheaves[k], 0);
	while (nblocks) {
		struct blk *b = &blocks[nblocks - 1];
		if (b->cache < 0) {
			blk_check(b, b->flen);
		} else {
			release_object(b);
			if (!b->pinned)
				caches[b->cache].expect--;
		}
		sa_free(b->p);
		remove_block(nblocks - 1);
	}
	rcu_barrier();
	for (int i = 0; i < MAX_CACHES; i++) {
		if (!caches[i].c)
			continue;
		check_cache_stats(i, false);
		CHECK(sa_cache_shrink(caches[i].c) == 0, "sa_cache_shrink failed");
		if (caches[i].flags & SA_CACHE_TYPESAFE_RCU)
			sa_rcu_barrier(); /* its slabs leave after a grace period */
		check_cache_stats(i, true);
	}
	sa_trim();
	for (int i = 0; i < MAX_CACHES; i++)
		if (caches[i].c)
			destroy_cache(i);
	struct sa_scope_stats st;
	CHECK(sa_scope_stats(&st) == 0, "sa_scope_stats failed");
	CHECK(st.scope_misuse == scope_stats0.scope_misuse &&
		      st.scopes_out_of_order == scope_stats0.scopes_out_of_order,
	      "scope misuse reported (%" PRIu64 " -> %" PRIu64 ", out of order %" PRIu64
	      " -> %" PRIu64 ") though every restore was LIFO",
	      scope_stats0.scope_misuse, st.scope_misuse, scope_stats0.scopes_out_of_order,
	      st.scopes_out_of_order);
	CHECK(st.scopes_refused - scope_stats0.scopes_refused == refused,
	      "scopes_refused grew by %" PRIu64 ", %" PRIu64 " saves were refused",
	      st.scopes_refused - scope_stats0.scopes_refused, refused);
	CHECK(sa_memalloc_flags() == 0, "flags %#x left after every scope closed",
	      sa_memalloc_flags());
	CHECK(live_bytes == 0 && sheaf_bytes == 0, "model: %zu live, %zu sheaf bytes left",
	      live_bytes, sheaf_bytes);
	/* nothing allocated, everything trimmed: what the allocator holds (metadata, the reserve:
	 * 1-2 MiB) must not grow from input to input */
	static size_t held_base;
	size_t held = sa_memory_held();
	if (!held_base)
		held_base = held;
	CHECK(held <= held_base + (4u << 20),
	      "sa_memory_held() = %zu after sa_trim with nothing allocated; %zu after the first "
	      "input (a leak?)",
	      held, held_base);
}

/* UBSan reports with the stack (the library's own threads too) */
const char *__ubsan_default_options(void);
const char *__ubsan_default_options(void)
{
	return "print_stacktrace=1";
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	/* every report of the library aborts: a bad free or a scope misuse is a finding here */
	const char *o = getenv("SHEAFALLOC_OPTIONS");
	char buf[512];
	snprintf(buf, sizeof(buf), "%s", o ? o : "");
	if (!strstr(buf, "bad_free="))
		snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%sbad_free=abort",
			 buf[0] ? "," : "");
	if (!strstr(buf, "scope_check="))
		snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%sscope_check=abort",
			 buf[0] ? "," : "");
	setenv("SHEAFALLOC_OPTIONS", buf, 1);
	trace = getenv("SA_FUZZ_TRACE") && *getenv("SA_FUZZ_TRACE") == '1';
	if (sched_getaffinity(0, sizeof(cpus_allowed), &cpus_allowed) == 0)
		ncpus_allowed = CPU_COUNT(&cpus_allowed);
	nodes = sa_numa_nodes();
	if (nodes < 1)
		nodes = 1;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	in_p = data;
	in_n = size;
	nblocks = 0;
	nscopes = 0;
	live_bytes = sheaf_bytes = 0;
	next_id = 0;
	barriers = 0;
	refused = 0;
	memset(caches, 0, sizeof(caches));
	memset(sheaves, 0, sizeof(sheaves));
	CHECK(sa_scope_stats(&scope_stats0) == 0, "sa_scope_stats failed");
	set_cpu(0);
	if (trace)
		fprintf(stderr, "fuzz_api: input of %zu bytes\n", size);

	for (op_no = 0; in_n && op_no < MAX_OPS; op_no++) {
		int op = u8() % OP_COUNT;
		op_now = op_names[op];
		switch (op) {
		case OP_MALLOC:
		case OP_MALLOC_FLAGS:
		case OP_CALLOC:
		case OP_ALIGNED_ALLOC:
		case OP_POSIX_MEMALIGN:
		case OP_MEMALIGN:
			op_malloc_like(op);
			break;
		case OP_REALLOC:
		case OP_REALLOCARRAY:
			op_realloc(op);
			break;
		case OP_FREE:
			op_free();
			break;
		case OP_USABLE:
			op_usable();
			break;
		case OP_CACHE_CREATE:
			op_cache_create();
			break;
		case OP_CACHE_ALLOC:
			op_cache_alloc(false);
			break;
		case OP_CACHE_ALLOC_NODE:
			op_cache_alloc(true);
			break;
		case OP_CACHE_FREE:
			op_cache_free();
			break;
		case OP_BULK_ALLOC:
			op_bulk_alloc();
			break;
		case OP_BULK_FREE:
			op_bulk_free();
			break;
		case OP_CACHE_SHRINK:
			op_cache_shrink();
			break;
		case OP_CACHE_DESTROY:
			op_cache_destroy();
			break;
		case OP_SHEAF_PREFILL:
			op_sheaf_prefill();
			break;
		case OP_SHEAF_ALLOC:
			op_sheaf_alloc();
			break;
		case OP_SHEAF_REFILL:
			op_sheaf_refill();
			break;
		case OP_SHEAF_RETURN:
			op_sheaf_return();
			break;
		case OP_TRIM:
			tr("%s", "");
			sa_trim();
			break;
		case OP_SCOPE_SAVE:
			op_scope_save();
			break;
		case OP_SCOPE_RESTORE:
			op_scope_restore();
			break;
		case OP_SCOPE_FLAGS:
			op_scope_flags();
			break;
		case OP_FREE_RCU:
			op_free_rcu();
			break;
		case OP_RCU_BARRIER:
			if (barriers < MAX_BARRIER) {
				barriers++;
				tr("%s", "");
				rcu_barrier();
			}
			break;
		case OP_CHECK:
			op_check();
			break;
		case OP_MIGRATE:
			set_cpu(u8());
			break;
		}
	}
	finish();
	return 0;
}
