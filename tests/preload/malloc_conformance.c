/*
 * tests/preload/malloc_conformance.c — glibc semantics of the malloc family exported by
 * build/libsheafalloc_malloc.so (shared/docs/CONTRACT.md "malloc family").
 *
 * A plain program: it is NOT linked with the library and uses only the standard names.
 * Run it as
 *     LD_PRELOAD=$PWD/build/libsheafalloc_malloc.so build/tests/preload/malloc_conformance
 * The first test checks that every name of the family really resolves to sheafalloc; without
 * the preload the program fails at once. SA_PRELOAD_ALLOW_OTHER=1 runs it against whatever
 * malloc the process has (glibc), to check the expectations themselves: the identity test is
 * then skipped, and so are the checks of sheafalloc-only functions.
 * SA_TEST_FILTER=pattern runs only the matching tests (cmocka_set_test_filter);
 * SA_TEST_KEEP_HUNG=1 keeps a hung fork child alive for 300 s (attach gdb to it).
 *
 * Every call into the family goes through a volatile function pointer: the compiler must not
 * apply its built-in knowledge of malloc (calloc memory is zero, malloc+free pairs vanish,
 * absurd constant sizes warn).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <errno.h>
#include <gnu/libc-version.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ the family, opaquely ---- */
static void *(*volatile f_malloc)(size_t) = malloc;
static void (*volatile f_free)(void *) = free;
static void *(*volatile f_calloc)(size_t, size_t) = calloc;
static void *(*volatile f_realloc)(void *, size_t) = realloc;
static void *(*volatile f_reallocarray)(void *, size_t, size_t) = reallocarray;
static void *(*volatile f_aligned_alloc)(size_t, size_t) = aligned_alloc;
static int (*volatile f_posix_memalign)(void **, size_t, size_t) = posix_memalign;
static void *(*volatile f_memalign)(size_t, size_t) = memalign;
static void *(*volatile f_valloc)(size_t) = valloc;
static void *(*volatile f_pvalloc)(size_t) = pvalloc;
static size_t (*volatile f_usable)(void *) = malloc_usable_size;
static int (*volatile f_trim)(size_t) = malloc_trim;

/* sheafalloc's own functions, found with dlsym (NULL when not preloaded) */
static const char *(*sa_percpu_mode_fn)(void);
static int (*sa_object_node_fn)(const void *);
static size_t (*sa_memory_held_fn)(void);
static int on_sheafalloc; /* every name of the family resolves to libsheafalloc_malloc.so */
static char identity_why[1024];

#define PAGE   4096ul
#define KiB(x) ((size_t)(x) << 10)
#define MiB(x) ((size_t)(x) << 20)

/* check with a message; fail() names file and line */
#define CHECK(cond, ...)                                              \
	do {                                                          \
		if (!(cond)) {                                        \
			print_error("check failed: %s\n    ", #cond); \
			print_error(__VA_ARGS__);                     \
			print_error("\n");                            \
			fail();                                       \
		}                                                     \
	} while (0)

static size_t opaque(size_t x)
{
	__asm__ volatile("" : "+r"(x));
	return x;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t xs64(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* ------------------------------------------------------------------ patterns ---------------- */
/* Byte i of a block with seed s: position-dependent, so a prefix can be checked after realloc
 * and a shifted or overlapping copy is noticed. */
static inline uint8_t patb(uint32_t s, size_t i)
{
	return (uint8_t)(s + i * 7u + (i >> 8) * 13u + (i >> 16) * 5u);
}

static void fill(void *p, size_t n, uint32_t s)
{
	uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		b[i] = patb(s, i);
}

/* first mismatching offset, or SIZE_MAX */
static size_t check_pat(const void *p, size_t n, uint32_t s)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i] != patb(s, i))
			return i;
	return SIZE_MAX;
}

/* Sparse patterns for big blocks (fewer bytes to write and pages to fault in): the first and
 * last 4 KiB, and the first and last byte of every page (of every 16th page above 16 MiB). */
#define SPARSE_MIN KiB(64)
static size_t sparse_step(size_t n)
{
	return n > MiB(16) ? 16 * PAGE : PAGE;
}

static void fill_any(void *p, size_t n, uint32_t s)
{
	if (n <= SPARSE_MIN) {
		fill(p, n, s);
		return;
	}
	uint8_t *b = p;
	size_t step = sparse_step(n);
	fill(b, PAGE, s);
	for (size_t i = step; i + PAGE < n; i += step) {
		b[i] = patb(s, i);
		b[i + PAGE - 1] = patb(s, i + PAGE - 1);
	}
	for (size_t i = n - PAGE; i < n; i++)
		b[i] = patb(s, i);
}

/* check [0, lim) of a block that fill_any wrote with n bytes (lim <= n) */
static size_t check_any(const void *p, size_t lim, size_t n, uint32_t s)
{
	if (n <= SPARSE_MIN)
		return check_pat(p, lim, s);
	const uint8_t *b = p;
	size_t step = sparse_step(n);
	for (size_t i = 0; i < lim && i < PAGE; i++)
		if (b[i] != patb(s, i))
			return i;
	for (size_t i = step; i + PAGE < n && i < lim; i += step) {
		if (b[i] != patb(s, i))
			return i;
		if (i + PAGE - 1 < lim && b[i + PAGE - 1] != patb(s, i + PAGE - 1))
			return i + PAGE - 1;
	}
	for (size_t i = n - PAGE; i < lim; i++)
		if (b[i] != patb(s, i))
			return i;
	return SIZE_MAX;
}

static size_t first_nonzero(const void *p, size_t n)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i])
			return i;
	return SIZE_MAX;
}

/* ------------------------------------------------------------------ overlap checks ---------- */
struct span {
	uintptr_t lo, hi;
};

static int span_cmp(const void *a, const void *b)
{
	const struct span *x = a, *y = b;
	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* returns the index of a span that overlaps its successor after sorting, or -1 */
static long find_overlap(struct span *v, size_t n)
{
	qsort(v, n, sizeof(*v), span_cmp);
	for (size_t i = 0; i + 1 < n; i++)
		if (v[i].hi > v[i + 1].lo)
			return (long)i;
	return -1;
}

static size_t rss_bytes(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	unsigned long size = 0, res = 0;
	if (f) {
		if (fscanf(f, "%lu %lu", &size, &res) != 2)
			res = 0;
		fclose(f);
	}
	return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

/* glibc >= 2.38 rejects non-power-of-two alignments in aligned_alloc */
static int libc_at_least(int maj, int min)
{
	int a = 0, b = 0;
	sscanf(gnu_get_libc_version(), "%d.%d", &a, &b);
	return a > maj || (a == maj && b >= min);
}

/* ------------------------------------------------------------------ identity ---------------- */
static const char *const family[] = {
	"malloc",	  "free",     "calloc", "realloc", "reallocarray",	 "aligned_alloc",
	"posix_memalign", "memalign", "valloc", "pvalloc", "malloc_usable_size", "malloc_trim",
};

static int lib_of(void *sym, char *buf, size_t len)
{
	Dl_info di;
	if (!sym || !dladdr(sym, &di) || !di.dli_fname)
		return -1;
	snprintf(buf, len, "%s", di.dli_fname);
	return 0;
}

/* Fills identity_why with the reason when the family is not sheafalloc's. */
static int probe_identity(void)
{
	char salib[256], lib[256];
	void *sam = dlsym(RTLD_DEFAULT, "sa_malloc");
	sa_percpu_mode_fn = (const char *(*)(void))dlsym(RTLD_DEFAULT, "sa_percpu_mode");
	sa_object_node_fn = (int (*)(const void *))dlsym(RTLD_DEFAULT, "sa_object_node");
	sa_memory_held_fn = (size_t(*)(void))dlsym(RTLD_DEFAULT, "sa_memory_held");
	if (!sa_percpu_mode_fn || !sam) {
		snprintf(identity_why, sizeof(identity_why),
			 "sa_percpu_mode/sa_malloc not found: not running under "
			 "LD_PRELOAD=build/libsheafalloc_malloc.so");
		return 0;
	}
	if (lib_of(sam, salib, sizeof(salib)) != 0 || !strstr(salib, "libsheafalloc_malloc")) {
		snprintf(identity_why, sizeof(identity_why),
			 "sa_malloc lives in '%s', not libsheafalloc_malloc.so", salib);
		return 0;
	}
	for (size_t i = 0; i < sizeof(family) / sizeof(family[0]); i++) {
		if (lib_of(dlsym(RTLD_DEFAULT, family[i]), lib, sizeof(lib)) != 0 ||
		    strcmp(lib, salib) != 0) {
			snprintf(identity_why, sizeof(identity_why),
				 "%s resolves to '%s', not to sheafalloc ('%s')", family[i], lib,
				 salib);
			return 0;
		}
	}
	/* the pointers this program calls through (its GOT) */
	void *mine[] = {(void *)f_malloc,	 (void *)f_free,    (void *)f_calloc,
			(void *)f_realloc,	 (void *)f_usable,  (void *)f_posix_memalign,
			(void *)f_aligned_alloc, (void *)f_memalign};
	for (size_t i = 0; i < sizeof(mine) / sizeof(mine[0]); i++) {
		if (lib_of(mine[i], lib, sizeof(lib)) != 0 || strcmp(lib, salib) != 0) {
			snprintf(identity_why, sizeof(identity_why),
				 "this program's pointer #%zu of the family resolves to '%s'", i,
				 lib);
			return 0;
		}
	}
	return 1;
}

static void test_identity(void **state)
{
	(void)state;
	if (!on_sheafalloc && getenv("SA_PRELOAD_ALLOW_OTHER")) {
		print_message("not on sheafalloc (%s): SA_PRELOAD_ALLOW_OTHER set, skipped\n",
			      identity_why);
		skip();
	}
	CHECK(on_sheafalloc, "%s", identity_why);
	print_message("per-CPU mode: %s\n", sa_percpu_mode_fn());
	/* blocks of every kind are sheafalloc's */
	size_t sizes[] = {1, 100, 1024, 5000, 32768, KiB(100), MiB(2), MiB(5)};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		void *p = f_malloc(sizes[i]);
		assert_non_null(p);
		CHECK(sa_object_node_fn(p) >= 0, "malloc(%zu) = %p is not a sheafalloc block",
		      sizes[i], p);
		f_free(p);
	}
}

/* ------------------------------------------------------------------ malloc basics ----------- */
static void test_malloc_zero_and_free_null(void **state)
{
	(void)state;
	enum { N = 200 };
	void *v[N];
	struct span sp[N];
	for (int i = 0; i < N; i++) {
		v[i] = f_malloc(opaque(0));
		CHECK(v[i] != NULL, "malloc(0) returned NULL (glibc returns a unique pointer)");
		CHECK(((uintptr_t)v[i] & 15) == 0, "malloc(0) = %p not 16-byte aligned", v[i]);
		size_t us = f_usable(v[i]);
		sp[i].lo = (uintptr_t)v[i];
		sp[i].hi = (uintptr_t)v[i] + (us ? us : 1);
	}
	long o = find_overlap(sp, N);
	CHECK(o < 0, "malloc(0) blocks overlap or repeat: %#lx", (unsigned long)sp[o].lo);
	for (int i = 0; i < N; i++)
		f_free(v[i]);

	for (int i = 0; i < 1000; i++) {
		errno = 4321;
		f_free(NULL);
		CHECK(errno == 4321, "free(NULL) changed errno to %d", errno);
	}
	CHECK(f_usable(NULL) == 0, "malloc_usable_size(NULL) = %zu, expected 0", f_usable(NULL));

	/* free keeps errno (glibc >= 2.33, POSIX.1-2024) for every kind of block */
	size_t kinds[] = {0, 16, 1000, 32768, KiB(100), MiB(2), MiB(3), MiB(20)};
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		void *p = f_malloc(kinds[i]);
		assert_non_null(p);
		errno = 4321;
		f_free(p);
		CHECK(errno == 4321, "free of a %zu-byte block changed errno to %d", kinds[i],
		      errno);
	}
}

struct blk {
	uint8_t *p;
	size_t n, us;
	uint32_t seed;
};

/* Allocates sizes[0..n), checks alignment and usable size, fills every usable byte. */
static void alloc_batch(struct blk *b, const size_t *sizes, size_t n, uint32_t seed0)
{
	for (size_t i = 0; i < n; i++) {
		b[i].n = sizes[i];
		b[i].p = f_malloc(sizes[i]);
		CHECK(b[i].p != NULL, "malloc(%zu) returned NULL (errno %d)", sizes[i], errno);
		CHECK(((uintptr_t)b[i].p & 15) == 0, "malloc(%zu) = %p is not 16-byte aligned",
		      sizes[i], (void *)b[i].p);
		b[i].us = f_usable(b[i].p);
		CHECK(b[i].us >= sizes[i], "malloc_usable_size(malloc(%zu)) = %zu < requested",
		      sizes[i], b[i].us);
		b[i].seed = seed0 + (uint32_t)i * 2654435761u;
		fill(b[i].p, b[i].us, b[i].seed);
	}
}

static void verify_batch(struct blk *b, size_t n, const char *when)
{
	struct span *sp = calloc(n, sizeof(*sp));
	assert_non_null(sp);
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		if (!b[i].p)
			continue;
		size_t bad = check_pat(b[i].p, b[i].us, b[i].seed);
		CHECK(bad == SIZE_MAX,
		      "%s: block %p of malloc(%zu) (usable %zu) corrupted at offset %zu", when,
		      (void *)b[i].p, b[i].n, b[i].us, bad);
		sp[m].lo = (uintptr_t)b[i].p;
		sp[m].hi = (uintptr_t)b[i].p + (b[i].us ? b[i].us : 1);
		m++;
	}
	long o = find_overlap(sp, m);
	CHECK(o < 0, "%s: live blocks overlap: [%#lx,%#lx) and [%#lx,%#lx)", when,
	      (unsigned long)sp[o].lo, (unsigned long)sp[o].hi, (unsigned long)sp[o + 1].lo,
	      (unsigned long)sp[o + 1].hi);
	free(sp);
}

static const size_t class_sizes[] = {
	16,   32,   48,	  64,	80,    96,    112,   128,   160,   192,	  224,	 256,	320,  384,
	448,  512,  640,  768,	896,   1024,  1280,  1536,  1792,  2048,  2560,	 3072,	3584, 4096,
	5120, 6144, 7168, 8192, 10240, 12288, 14336, 16384, 20480, 24576, 28672, 32768,
};
#define NCLASS (sizeof(class_sizes) / sizeof(class_sizes[0]))

static void test_malloc_sizes(void **state)
{
	(void)state;
	size_t cap = 4096, n = 0;
	size_t *sizes = malloc(cap * sizeof(*sizes));
	assert_non_null(sizes);
	for (size_t s = 0; s <= 1100; s++)
		sizes[n++] = s;
	for (size_t s = 1101; s <= KiB(64); s += 97)
		sizes[n++] = s;
	for (size_t i = 0; i < NCLASS; i++) {
		sizes[n++] = class_sizes[i] - 1;
		sizes[n++] = class_sizes[i];
		sizes[n++] = class_sizes[i] + 1;
	}
	size_t extra[] = {KiB(64) - 1, KiB(64),	   KiB(64) + 1, KiB(128) - 1, KiB(128) + 1,
			  MiB(1),      MiB(2) - 1, MiB(2),	MiB(2) + 1,   MiB(4) - 1};
	for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++)
		sizes[n++] = extra[i];
	assert_true(n <= cap);

	struct blk *b = calloc(n, sizeof(*b));
	assert_non_null(b);
	alloc_batch(b, sizes, n, 0x1234);
	verify_batch(b, n, "after allocating all sizes");
	/* free every other block, allocate the same sizes again into the holes */
	for (size_t i = 0; i < n; i += 2) {
		f_free(b[i].p);
		b[i].p = NULL;
	}
	verify_batch(b, n, "after freeing half");
	for (size_t i = 0; i < n; i += 2)
		alloc_batch(&b[i], &sizes[i], 1, 0x777 + (uint32_t)i);
	verify_batch(b, n, "after reallocating the freed half");
	for (size_t i = 0; i < n; i++)
		f_free(b[i].p);
	free(b);
	free(sizes);
}

/* Random mix of live blocks: none overlaps, none is corrupted by its neighbours. */
static void test_malloc_random_no_overlap(void **state)
{
	(void)state;
	enum { N = 4000 };
	size_t *sizes = malloc(N * sizeof(*sizes));
	struct blk *b = calloc(N, sizeof(*b));
	assert_non_null(sizes);
	assert_non_null(b);
	uint64_t r = 0x9e3779b97f4a7c15ull;
	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < N; i++) {
			uint64_t x = xs64(&r);
			unsigned k = (unsigned)(x % 1000);
			if (k < 700)
				sizes[i] = (x >> 10) % 1025;
			else if (k < 960)
				sizes[i] = 1025 + (x >> 10) % (KiB(32) - 1024);
			else if (k < 980)
				sizes[i] = KiB(32) + 1 + (x >> 10) % KiB(256);
			else if (k < 998)
				sizes[i] = KiB(32) + 1 + (x >> 10) % MiB(2);
			else
				sizes[i] = MiB(2) + (x >> 10) % MiB(3);
		}
		alloc_batch(b, sizes, N, 0xabc0 + (uint32_t)round);
		verify_batch(b, N, "random mix");
		/* free in a random order */
		for (int i = N - 1; i > 0; i--) {
			int j = (int)(xs64(&r) % (uint64_t)(i + 1));
			struct blk t = b[i];
			b[i] = b[j];
			b[j] = t;
		}
		for (int i = 0; i < N; i++) {
			if (i % 97 == 0) {
				size_t bad = check_pat(b[i].p, b[i].us, b[i].seed);
				CHECK(bad == SIZE_MAX, "block of %zu corrupted at %zu before free",
				      b[i].n, bad);
			}
			f_free(b[i].p);
		}
	}
	free(b);
	free(sizes);
}

/* Powers of two and +-1 up to 2^40; absurd sizes fail with ENOMEM. */
static void test_malloc_pow2_and_absurd(void **state)
{
	(void)state;
	for (unsigned k = 0; k <= 40; k++) {
		for (int d = -1; d <= 1; d++) {
			size_t n = ((size_t)1 << k) + (size_t)(ptrdiff_t)d;
			if (k == 0 && d < 0)
				n = 0;
			errno = 0;
			uint8_t *p = f_malloc(opaque(n));
			if (k > 30) { /* > 1 GiB: may fail (MAP_NORESERVE makes success likely) */
				if (!p) {
					CHECK(errno == ENOMEM,
					      "malloc(%zu) failed with errno %d, not ENOMEM", n,
					      errno);
					continue;
				}
				CHECK(((uintptr_t)p & 15) == 0, "malloc(%zu) = %p misaligned", n,
				      (void *)p);
				CHECK(f_usable(p) >= n, "usable %zu < %zu", f_usable(p), n);
				p[0] = 0x5a;
				p[n - 1] = 0xa5;
				CHECK(p[0] == 0x5a && p[n - 1] == 0xa5,
				      "first/last byte of malloc(%zu)", n);
				f_free(p);
				continue;
			}
			CHECK(p != NULL, "malloc(%zu) failed (errno %d)", n, errno);
			CHECK(((uintptr_t)p & 15) == 0, "malloc(%zu) = %p misaligned", n,
			      (void *)p);
			size_t us = f_usable(p);
			CHECK(us >= n, "malloc_usable_size(malloc(%zu)) = %zu", n, us);
			if (us <= MiB(1)) {
				fill(p, us, k * 3u + (unsigned)(d + 1));
				size_t bad = check_pat(p, us, k * 3u + (unsigned)(d + 1));
				CHECK(bad == SIZE_MAX, "malloc(%zu): pattern broken at %zu", n,
				      bad);
			} else if (us <= MiB(64)) {
				fill_any(p, us, k * 3u + (unsigned)(d + 1));
				size_t bad = check_any(p, us, us, k * 3u + (unsigned)(d + 1));
				CHECK(bad == SIZE_MAX, "malloc(%zu): pattern broken at %zu", n,
				      bad);
			} else {
				for (size_t i = 0; i < us; i += MiB(1))
					p[i] = (uint8_t)i;
				p[n - 1] = 0x11;
				p[us - 1] = 0x22;
				CHECK(p[us - 1] == 0x22 && (us == n || p[n - 1] == 0x11),
				      "tail bytes");
			}
			f_free(p);
		}
	}
	const size_t absurd[] = {
		SIZE_MAX,
		SIZE_MAX - 1,
		SIZE_MAX - PAGE,
		(size_t)PTRDIFF_MAX + 1,
		(size_t)PTRDIFF_MAX,
		(size_t)PTRDIFF_MAX - MiB(4),
		(size_t)1 << 62,
		(size_t)1 << 50,
		(size_t)1 << 48,
	};
	for (size_t i = 0; i < sizeof(absurd) / sizeof(absurd[0]); i++) {
		errno = 0;
		void *p = f_malloc(opaque(absurd[i]));
		CHECK(p == NULL, "malloc(%#zx) = %p, expected NULL", absurd[i], p);
		CHECK(errno == ENOMEM, "malloc(%#zx): errno %d, expected ENOMEM", absurd[i], errno);
	}
}

/* ------------------------------------------------------------------ calloc ------------------ */
static void test_calloc_zero_after_recycling(void **state)
{
	(void)state;
	const size_t sizes[] = {1,	 8,	   16,	   24,	   100,	       128,    640,
				1000,	 1024,	   1025,   4000,   4096,       12000,  32768,
				KiB(40), KiB(100), MiB(1), MiB(2), MiB(2) + 1, MiB(3), MiB(8)};
	enum { K = 16 };
	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		size_t n = sizes[si];
		int rounds = n > MiB(2) ? 3 : n > KiB(32) ? 8 : 40;
		int k = n > MiB(2) ? 1 : n > KiB(32) ? 2 : K;
		for (int r = 0; r < rounds; r++) {
			void *v[K];
			for (int i = 0; i < k; i++) {
				v[i] = f_malloc(n);
				assert_non_null(v[i]);
				memset(v[i], 0xff, f_usable(v[i]));
			}
			for (int i = 0; i < k; i++)
				f_free(v[i]);
			for (int i = 0; i < k; i++) {
				/* three shapes of the same product */
				int shape = (r + i) % 3;
				v[i] = shape == 0 ? f_calloc(1, n)
				       : shape == 1
					       ? f_calloc(n, 1)
					       : (n % 8 == 0 ? f_calloc(n / 8, 8) : f_calloc(1, n));
				CHECK(v[i] != NULL, "calloc of %zu bytes failed", n);
				CHECK(((uintptr_t)v[i] & 15) == 0, "calloc(%zu) misaligned", n);
				size_t nz = first_nonzero(v[i], n);
				CHECK(nz == SIZE_MAX,
				      "calloc(%zu) after malloc+memset(0xff)+free: byte %zu is %#x "
				      "(round %d)",
				      n, nz, ((uint8_t *)v[i])[nz], r);
			}
			for (int i = 0; i < k; i++)
				f_free(v[i]);
		}
	}
	/* zero-sized products: unique, freeable */
	void *a = f_calloc(0, 16), *b = f_calloc(16, 0), *c = f_calloc(0, 0);
	CHECK(a && b && c && a != b && b != c && a != c, "calloc with a zero factor: %p %p %p", a,
	      b, c);
	f_free(a);
	f_free(b);
	f_free(c);
}

static void test_calloc_overflow(void **state)
{
	(void)state;
	const size_t pairs[][2] = {
		{SIZE_MAX / 2 + 1, 2},
		{2, SIZE_MAX / 2 + 1},
		{(size_t)1 << 32, (size_t)1 << 32},
		{SIZE_MAX, SIZE_MAX},
		{SIZE_MAX, 2},
		{((size_t)1 << 33) + 1, ((size_t)1 << 31)},
		{1, (size_t)PTRDIFF_MAX + 1},
		{(size_t)PTRDIFF_MAX / 2 + 1, 2}, /* = PTRDIFF_MAX + 1: no overflow, too big */
		{1, SIZE_MAX},
	};
	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		errno = 0;
		void *p = f_calloc(opaque(pairs[i][0]), opaque(pairs[i][1]));
		CHECK(p == NULL, "calloc(%#zx, %#zx) = %p, expected NULL", pairs[i][0], pairs[i][1],
		      p);
		CHECK(errno == ENOMEM, "calloc(%#zx, %#zx): errno %d, expected ENOMEM", pairs[i][0],
		      pairs[i][1], errno);
	}
}

/* ------------------------------------------------------------------ reallocarray ------------ */
static void test_reallocarray(void **state)
{
	(void)state;
	size_t kinds[] = {100, KiB(100), MiB(5)};
	for (size_t k = 0; k < 3; k++) {
		size_t n = kinds[k];
		uint8_t *p = f_reallocarray(NULL, n / 4, 4);
		CHECK(p != NULL, "reallocarray(NULL, %zu, 4)", n / 4);
		fill(p, n, 99);
		const size_t bad[][2] = {
			{SIZE_MAX / 2 + 1, 4}, {SIZE_MAX, SIZE_MAX}, {4, SIZE_MAX / 3}};
		for (size_t i = 0; i < 3; i++) {
			errno = 0;
			void *r = f_reallocarray(p, opaque(bad[i][0]), opaque(bad[i][1]));
			CHECK(r == NULL, "reallocarray(p, %#zx, %#zx) = %p, expected NULL",
			      bad[i][0], bad[i][1], r);
			CHECK(errno == ENOMEM, "reallocarray overflow: errno %d", errno);
			size_t off = check_pat(p, n, 99);
			CHECK(off == SIZE_MAX, "reallocarray overflow changed the block at %zu",
			      off);
		}
		uint8_t *q = f_reallocarray(p, n / 2, 4);
		CHECK(q != NULL, "reallocarray(p, %zu, 4)", n / 2);
		size_t off = check_pat(q, n, 99);
		CHECK(off == SIZE_MAX, "reallocarray grow lost content at %zu", off);
		f_free(q);
	}
}

/* ------------------------------------------------------------------ realloc ----------------- */
static void test_realloc_basics(void **state)
{
	(void)state;
	/* realloc(NULL, n) is malloc(n) */
	size_t ns[] = {0, 1, 100, 5000, KiB(100), MiB(5)};
	for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
		uint8_t *p = f_realloc(NULL, ns[i]);
		CHECK(p != NULL, "realloc(NULL, %zu) returned NULL", ns[i]);
		CHECK(((uintptr_t)p & 15) == 0, "realloc(NULL, %zu) misaligned", ns[i]);
		CHECK(f_usable(p) >= ns[i], "usable");
		fill(p, ns[i], 5);
		f_free(p);
	}
	/* realloc(p, 0) frees p and returns NULL (glibc); many times: no leak */
	size_t before = sa_memory_held_fn ? sa_memory_held_fn() : 0;
	size_t kinds[] = {1, 100, 4000, KiB(100), MiB(3)};
	for (int r = 0; r < 2000; r++) {
		size_t n = kinds[r % 5];
		uint8_t *p = f_malloc(n);
		assert_non_null(p);
		memset(p, 1, n < 4096 ? n : 4096);
		p[n - 1] = 1;
		errno = 0;
		void *q = f_realloc(p, opaque(0));
		CHECK(q == NULL, "realloc(p of %zu, 0) = %p; glibc frees and returns NULL", n, q);
	}
	if (sa_memory_held_fn) {
		size_t after = sa_memory_held_fn();
		CHECK(after < before + MiB(32),
		      "realloc(p, 0) leaks: sa_memory_held %zu -> %zu after 2000 calls", before,
		      after);
	}
	/* failure leaves the block intact, errno ENOMEM */
	size_t huge_req[] = {SIZE_MAX, SIZE_MAX - PAGE, (size_t)PTRDIFF_MAX + 1,
			     (size_t)PTRDIFF_MAX, (size_t)1 << 50};
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		size_t n = kinds[i];
		uint8_t *p = f_malloc(n);
		assert_non_null(p);
		fill(p, n, 77);
		for (size_t j = 0; j < sizeof(huge_req) / sizeof(huge_req[0]); j++) {
			errno = 0;
			void *q = f_realloc(p, opaque(huge_req[j]));
			CHECK(q == NULL, "realloc(%zu-byte block, %#zx) = %p, expected NULL", n,
			      huge_req[j], q);
			CHECK(errno == ENOMEM, "realloc(%zu-byte block, %#zx): errno %d", n,
			      huge_req[j], errno);
			size_t off = check_pat(p, n, 77);
			CHECK(off == SIZE_MAX, "failed realloc changed the %zu-byte block at %zu",
			      n, off);
		}
		CHECK(f_usable(p) >= n, "usable size after failed realloc");
		f_free(p);
	}
}

/* Grows 1 byte up through every boundary to 9 MiB, then shrinks back: content preserved. */
static void test_realloc_every_boundary(void **state)
{
	(void)state;
	size_t cap = 512, n = 0;
	size_t *steps = malloc(cap * sizeof(*steps));
	assert_non_null(steps);
	steps[n++] = 1;
	for (size_t i = 0; i < NCLASS; i++) {
		steps[n++] = class_sizes[i] - 1;
		steps[n++] = class_sizes[i];
		steps[n++] = class_sizes[i] + 1;
	}
	for (size_t u = 1; u <= 32; u *= 2) {
		steps[n++] = u * KiB(64) - 1;
		steps[n++] = u * KiB(64);
		steps[n++] = u * KiB(64) + 1;
	}
	size_t big[] = {MiB(2) + KiB(64), MiB(3), MiB(4) - 1, MiB(4), MiB(4) + 1, MiB(5), MiB(9)};
	for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++)
		steps[n++] = big[i];
	assert_true(n <= cap);

	for (int pass = 0; pass < 2; pass++) { /* 0: up, 1: down */
		uint32_t seed = 1000u + (uint32_t)pass;
		size_t first = pass ? steps[n - 1] : steps[0];
		uint8_t *p = f_malloc(first);
		assert_non_null(p);
		fill_any(p, first, seed);
		size_t have = first;
		for (size_t k = 1; k < n; k++) {
			size_t want = pass ? steps[n - 1 - k] : steps[k];
			uint8_t *q = f_realloc(p, want);
			CHECK(q != NULL, "realloc(%zu -> %zu) failed", have, want);
			CHECK(((uintptr_t)q & 15) == 0, "realloc(%zu -> %zu) misaligned", have,
			      want);
			CHECK(f_usable(q) >= want, "realloc(%zu -> %zu): usable %zu", have, want,
			      f_usable(q));
			size_t lim = have < want ? have : want;
			size_t off = check_any(q, lim, have, seed);
			CHECK(off == SIZE_MAX, "realloc(%zu -> %zu) lost content at offset %zu",
			      have, want, off);
			seed = seed * 33u + 1u;
			fill_any(q, want, seed);
			p = q;
			have = want;
		}
		f_free(p);
	}
	free(steps);
}

/* small -> large -> huge -> small, every byte checked */
static void test_realloc_kinds_chain(void **state)
{
	(void)state;
	const size_t chain[] = {24, KiB(100), MiB(5), MiB(64), MiB(3), 40, MiB(2), MiB(70), 1};
	for (int rep = 0; rep < 2; rep++) {
		uint8_t *p = f_malloc(chain[0]);
		assert_non_null(p);
		fill(p, chain[0], 31);
		size_t have = chain[0];
		for (size_t i = 1; i < sizeof(chain) / sizeof(chain[0]); i++) {
			size_t want = chain[i];
			uint8_t *q = f_realloc(p, want);
			CHECK(q != NULL, "realloc(%zu -> %zu)", have, want);
			size_t lim = have < want ? have : want;
			/* every byte up to 8 MiB; above, the sparse pattern (rep 1: every byte) */
			size_t off = have <= MiB(8) || rep ? check_pat(q, lim, 31)
							   : check_any(q, lim, have, 31);
			CHECK(off == SIZE_MAX, "realloc(%zu -> %zu) lost content at %zu", have,
			      want, off);
			if (want <= MiB(8) || rep)
				fill(q, want, 31);
			else
				fill_any(q, want, 31);
			p = q;
			have = want;
		}
		f_free(p);
	}
	/* aligned huge block: the alignment offset survives growth and shrinking */
	uint8_t *p = f_aligned_alloc(MiB(2), MiB(6));
	CHECK(p != NULL, "aligned_alloc(2 MiB, 6 MiB)");
	fill_any(p, MiB(6), 9);
	uint8_t *q = f_realloc(p, MiB(40));
	CHECK(q != NULL, "realloc of an aligned huge block to 40 MiB");
	CHECK(check_any(q, MiB(6), MiB(6), 9) == SIZE_MAX,
	      "aligned huge block grown: content lost");
	q = f_realloc(q, MiB(3));
	CHECK(q != NULL, "realloc of an aligned huge block to 3 MiB");
	CHECK(check_any(q, MiB(3), MiB(6), 9) == SIZE_MAX,
	      "aligned huge block shrunk: content lost");
	f_free(q);
}

static void test_realloc_in_place(void **state)
{
	(void)state;
	const size_t sizes[] = {100, 1000, 5000, 32768, KiB(100), MiB(1), MiB(2), MiB(5), MiB(64)};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		size_t n = sizes[i];
		uint8_t *p = f_malloc(n);
		assert_non_null(p);
		fill_any(p, n, 3);
		size_t smaller = n - n / 8;
		uint8_t *q = f_realloc(p, smaller);
		CHECK(q == p, "realloc(%zu -> %zu) moved the block (%p -> %p); expected in place",
		      n, smaller, (void *)p, (void *)q);
		CHECK(check_any(q, smaller, n, 3) == SIZE_MAX, "content after shrinking in place");
		/* growing within the usable size stays in place too */
		size_t us = f_usable(q);
		CHECK(us >= smaller, "usable %zu < %zu", us, smaller);
		uint8_t *r = f_realloc(q, us);
		CHECK(r == q, "realloc to its own usable size (%zu) moved the block", us);
		f_free(r);
	}
}

/* ------------------------------------------------------------------ the aligned family ------ */
/* Soft checks: the aligned tests report every failing (function, alignment, size) before failing,
 * so one run shows the whole extent of a problem. */
static int soft_errors;
#define SOFT(cond, ...)                                                       \
	do {                                                                  \
		if (!(cond)) {                                                \
			if (soft_errors++ < 40) {                             \
				print_error("check failed: %s\n    ", #cond); \
				print_error(__VA_ARGS__);                     \
				print_error("\n");                            \
			}                                                     \
			ok = 0;                                               \
		}                                                             \
	} while (0)

/* 1: the block is fine (or NULL was reported); it is freed by the caller if not NULL */
static int check_aligned_block(const char *fn, void *p, size_t align, size_t size, int err)
{
	int ok = 1;
	SOFT(p != NULL, "%s(align %zu, size %zu) returned NULL (errno %d %s)", fn, align, size, err,
	     strerror(err));
	if (!p)
		return 0;
	size_t a = align < 16 ? 16 : align;
	SOFT(((uintptr_t)p & (a - 1)) == 0, "%s(align %zu, size %zu) = %p is not %zu-aligned", fn,
	     align, size, p, a);
	size_t us = f_usable(p);
	SOFT(us >= size, "%s(align %zu, size %zu): usable %zu < size", fn, align, size, us);
	if (size <= MiB(1)) {
		fill(p, size, (uint32_t)align);
		SOFT(check_pat(p, size, (uint32_t)align) == SIZE_MAX, "%s: pattern", fn);
	} else {
		fill_any(p, size, (uint32_t)align);
		SOFT(check_any(p, size, size, (uint32_t)align) == SIZE_MAX, "%s: pattern", fn);
	}
	if (us > size)
		((volatile uint8_t *)p)[us - 1] = 1;
	return ok;
}

static void test_aligned_family(void **state)
{
	(void)state;
	soft_errors = 0;
	char failed[2048] = "";
	size_t flen = 0;
	for (unsigned k = 0; k <= 24; k++) {
		size_t align = (size_t)1 << k;
		size_t sizes[] = {0, 1, align - 1, align, align + 1, 3 * align};
		/* keep the blocks of one alignment alive together: they must not overlap */
		void *live[3 * 6];
		unsigned nl = 0;
		int ok_align = 1;
		for (size_t si = 0; si < 6; si++) {
			size_t size = sizes[si];
			int ok = 1;
			errno = 0;
			void *p = f_aligned_alloc(align, size);
			ok_align &= check_aligned_block("aligned_alloc", p, align, size, errno);
			if (p)
				live[nl++] = p;

			errno = 0;
			void *m = f_memalign(align, size);
			ok_align &= check_aligned_block("memalign", m, align, size, errno);
			if (m)
				live[nl++] = m;

			void *pm = (void *)0x1;
			if (align >= sizeof(void *)) {
				int saved = 2222;
				errno = saved;
				int rc = f_posix_memalign(&pm, align, size);
				int e = errno;
				SOFT(rc == 0, "posix_memalign(align %zu, size %zu) = %d (%s)",
				     align, size, rc, strerror(rc));
				SOFT(e == saved,
				     "posix_memalign(align %zu, size %zu) changed errno to %d",
				     align, size, e);
				if (rc == 0) {
					ok &= check_aligned_block("posix_memalign", pm, align, size,
								  0);
					live[nl++] = pm;
				} else {
					SOFT(pm == (void *)0x1,
					     "posix_memalign failure wrote *memptr");
				}
			} else {
				int rc = f_posix_memalign(&pm, align, size);
				SOFT(rc == EINVAL,
				     "posix_memalign(align %zu < sizeof(void *)) = %d, expected "
				     "EINVAL",
				     align, rc);
				SOFT(pm == (void *)0x1, "posix_memalign failure wrote *memptr");
			}
			ok_align &= ok;
		}
		if (!ok_align && flen + 16 < sizeof(failed))
			flen += (size_t)snprintf(failed + flen, sizeof(failed) - flen, " 2^%u", k);
		struct span sp[3 * 6];
		for (unsigned i = 0; i < nl; i++) {
			sp[i].lo = (uintptr_t)live[i];
			sp[i].hi = (uintptr_t)live[i] + (f_usable(live[i]) ? f_usable(live[i]) : 1);
		}
		long o = find_overlap(sp, nl);
		CHECK(o < 0, "aligned blocks (align %zu) overlap", align);
		for (unsigned i = 0; i < nl; i++)
			f_free(live[i]);
	}
	CHECK(soft_errors == 0,
	      "%d failed check(s) of aligned_alloc/memalign/posix_memalign; "
	      "alignments with failures:%s",
	      soft_errors, failed);
}

static void test_aligned_invalid(void **state)
{
	(void)state;
	/* posix_memalign: EINVAL for an alignment that is not a power of two or not a multiple
	 * of sizeof(void *); *memptr untouched */
	const size_t bad_pm[] = {0,	   1,
				 2,	   4,
				 3,	   12,
				 24,	   48,
				 96,	   1000,
				 4097,	   (1ul << 20) + 8,
				 SIZE_MAX, (size_t)PTRDIFF_MAX};
	for (size_t i = 0; i < sizeof(bad_pm) / sizeof(bad_pm[0]); i++) {
		if (bad_pm[i] >= sizeof(void *) && !(bad_pm[i] & (bad_pm[i] - 1)))
			continue; /* sizeof(void *) == 4 machines */
		void *p = (void *)0x1234;
		int rc = f_posix_memalign(&p, opaque(bad_pm[i]), 64);
		CHECK(rc == EINVAL, "posix_memalign(align %#zx) = %d, expected EINVAL", bad_pm[i],
		      rc);
		CHECK(p == (void *)0x1234, "posix_memalign(align %#zx) wrote *memptr on failure",
		      bad_pm[i]);
	}
	/* posix_memalign ENOMEM: *memptr untouched too */
	void *p = (void *)0x1234;
	int rc = f_posix_memalign(&p, 64, opaque(SIZE_MAX));
	CHECK(rc == ENOMEM, "posix_memalign(64, SIZE_MAX) = %d, expected ENOMEM", rc);
	CHECK(p == (void *)0x1234, "posix_memalign ENOMEM wrote *memptr");
	rc = f_posix_memalign(&p, MiB(1), opaque((size_t)PTRDIFF_MAX));
	CHECK(rc == ENOMEM, "posix_memalign(1 MiB, PTRDIFF_MAX) = %d, expected ENOMEM", rc);

	/* aligned_alloc: a non-power-of-two alignment is EINVAL (C17, glibc >= 2.38) */
	if (on_sheafalloc || libc_at_least(2, 38)) {
		const size_t bad_aa[] = {0, 3, 5, 24, 48, 100, 1000, 4097, SIZE_MAX};
		for (size_t i = 0; i < sizeof(bad_aa) / sizeof(bad_aa[0]); i++) {
			errno = 0;
			void *q = f_aligned_alloc(opaque(bad_aa[i]), 64);
			CHECK(q == NULL, "aligned_alloc(%#zx, 64) = %p, expected NULL", bad_aa[i],
			      q);
			CHECK(errno == EINVAL, "aligned_alloc(%#zx, 64): errno %d, expected EINVAL",
			      bad_aa[i], errno);
		}
	}
	errno = 0;
	void *q = f_aligned_alloc(64, opaque(SIZE_MAX));
	CHECK(q == NULL && errno == ENOMEM, "aligned_alloc(64, SIZE_MAX) = %p errno %d", q, errno);

	/* memalign: a non-power-of-two alignment is rounded up to the next power of two */
	const size_t odd[][2] = {
		{0, 16},      {3, 16},	    {24, 32},	  {48, 64},	   {100, 128},
		{1000, 1024}, {3000, 4096}, {5000, 8192}, {70000, 131072}, {3u << 20, 4u << 20}};
	soft_errors = 0;
	for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
		size_t sizes[] = {1, 100, odd[i][1] + 1};
		for (size_t s = 0; s < 3; s++) {
			int ok = 1;
			errno = 0;
			void *m = f_memalign(opaque(odd[i][0]), sizes[s]);
			SOFT(m != NULL, "memalign(%zu, %zu) returned NULL (errno %d %s)", odd[i][0],
			     sizes[s], errno, strerror(errno));
			if (!m)
				continue;
			SOFT(((uintptr_t)m & (odd[i][1] - 1)) == 0,
			     "memalign(%zu, %zu) = %p: not aligned to %zu", odd[i][0], sizes[s], m,
			     odd[i][1]);
			SOFT(f_usable(m) >= sizes[s], "memalign usable");
			memset(m, 0x3c, sizes[s]);
			f_free(m);
			(void)ok;
		}
	}
	CHECK(soft_errors == 0, "%d failed memalign check(s) with non-power-of-two alignments",
	      soft_errors);
	/* memalign: an alignment above SIZE_MAX/2+1 is EINVAL */
	errno = 0;
	q = f_memalign(opaque(SIZE_MAX), 16);
	CHECK(q == NULL && errno == EINVAL, "memalign(SIZE_MAX, 16) = %p errno %d, expected EINVAL",
	      q, errno);
	errno = 0;
	q = f_memalign(64, opaque(SIZE_MAX));
	CHECK(q == NULL && errno == ENOMEM, "memalign(64, SIZE_MAX) = %p errno %d", q, errno);
	/* 2^63 is a valid power of two for glibc: not EINVAL, but no memory (ENOMEM) */
	errno = 0;
	q = f_memalign(opaque((size_t)1 << 63), 16);
	CHECK(q == NULL && errno == ENOMEM, "memalign(2^63, 16) = %p errno %d, expected ENOMEM", q,
	      errno);
	errno = 0;
	q = f_memalign(opaque((size_t)1 << 62), 16);
	CHECK(q == NULL && errno == ENOMEM, "memalign(2^62, 16) = %p errno %d, expected ENOMEM", q,
	      errno);
}

static void test_valloc_pvalloc(void **state)
{
	(void)state;
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	const size_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 10000, KiB(100), MiB(2), MiB(5)};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		size_t n = sizes[i];
		uint8_t *v = f_valloc(n);
		CHECK(v != NULL, "valloc(%zu)", n);
		CHECK(((uintptr_t)v & (pg - 1)) == 0, "valloc(%zu) = %p not page-aligned", n,
		      (void *)v);
		CHECK(f_usable(v) >= n, "valloc(%zu): usable %zu", n, f_usable(v));
		memset(v, 0x11, n);

		uint8_t *pv = f_pvalloc(n);
		size_t rounded =
			(n + pg - 1) & ~(pg - 1); /* glibc: pvalloc(0) need not be a page */
		CHECK(pv != NULL, "pvalloc(%zu)", n);
		CHECK(((uintptr_t)pv & (pg - 1)) == 0, "pvalloc(%zu) = %p not page-aligned", n,
		      (void *)pv);
		CHECK(f_usable(pv) >= rounded, "pvalloc(%zu): usable %zu < %zu (rounded to pages)",
		      n, f_usable(pv), rounded);
		memset(pv, 0x22, rounded ? rounded : 1);
		for (size_t j = 0; j < n; j++)
			if (v[j] != 0x11)
				fail_msg("valloc block overwritten at %zu by the pvalloc block", j);
		f_free(v);
		f_free(pv);
	}
	errno = 0;
	void *p = f_pvalloc(opaque(SIZE_MAX));
	CHECK(p == NULL && errno == ENOMEM, "pvalloc(SIZE_MAX) = %p errno %d", p, errno);
	errno = 0;
	p = f_pvalloc(opaque(SIZE_MAX - pg + 2));
	CHECK(p == NULL && errno == ENOMEM, "pvalloc(SIZE_MAX-pg+2) = %p errno %d", p, errno);
	errno = 0;
	p = f_valloc(opaque(SIZE_MAX));
	CHECK(p == NULL && errno == ENOMEM, "valloc(SIZE_MAX) = %p errno %d", p, errno);
}

/* ------------------------------------------------------------------ errno on failure -------- */
static void test_errno_enomem(void **state)
{
	(void)state;
	void *blk = f_malloc(100);
	assert_non_null(blk);
	struct {
		const char *what;
		void *r;
	} r[10];
	int n = 0;
#define TRY(expr)                                                                              \
	do {                                                                                   \
		errno = 0;                                                                     \
		r[n].what = #expr;                                                             \
		r[n].r = (expr);                                                               \
		CHECK(r[n].r == NULL, "%s returned %p", r[n].what, r[n].r);                    \
		CHECK(errno == ENOMEM, "%s: errno %d (%s), expected ENOMEM", r[n].what, errno, \
		      strerror(errno));                                                        \
		n++;                                                                           \
	} while (0)
	TRY(f_malloc(opaque(SIZE_MAX)));
	TRY(f_calloc(opaque(SIZE_MAX), 3));
	TRY(f_realloc(blk, opaque(SIZE_MAX)));
	TRY(f_reallocarray(blk, opaque(SIZE_MAX), 2));
	TRY(f_aligned_alloc(4096, opaque(SIZE_MAX)));
	TRY(f_memalign(4096, opaque(SIZE_MAX)));
	TRY(f_valloc(opaque(SIZE_MAX - 1)));
	TRY(f_pvalloc(opaque(SIZE_MAX - 1)));
	TRY(f_realloc(NULL, opaque(SIZE_MAX)));
#undef TRY
	void *pm = NULL;
	errno = 0;
	CHECK(f_posix_memalign(&pm, 4096, opaque(SIZE_MAX)) == ENOMEM, "posix_memalign ENOMEM");
	/* glibc sets errno too on that failure, and programs read it (glibc's own tests do) */
	CHECK(errno == ENOMEM, "posix_memalign ENOMEM left errno %d", errno);
	f_free(blk);

	/* errno is not touched by successful calls of posix_memalign, free and malloc_usable_size */
	errno = 777;
	for (int i = 0; i < 100; i++) {
		void *p = NULL;
		CHECK(f_posix_memalign(&p, 64, (size_t)i * 1000) == 0, "posix_memalign");
		(void)f_usable(p);
		f_free(p);
	}
	CHECK(errno == 777, "posix_memalign/free/malloc_usable_size changed errno to %d", errno);
}

/* ------------------------------------------------------------------ malloc_trim and RSS ----- */
static void test_malloc_trim(void **state)
{
	(void)state;
	int r = f_trim(0);
	CHECK(r == 0 || r == 1, "malloc_trim(0) = %d, expected 0 or 1", r);
	void *v[1000];
	for (int i = 0; i < 1000; i++) {
		v[i] = f_malloc((size_t)(i * 37) % 70000);
		assert_non_null(v[i]);
	}
	for (int i = 0; i < 1000; i += 2)
		f_free(v[i]);
	r = f_trim(1 << 20);
	CHECK(r == 0 || r == 1, "malloc_trim(1 MiB) = %d", r);
	for (int i = 0; i < 1000; i += 2) {
		v[i] = f_malloc((size_t)(i * 41) % 70000);
		assert_non_null(v[i]);
		memset(v[i], 7, (size_t)(i * 41) % 70000);
	}
	for (int i = 0; i < 1000; i++)
		f_free(v[i]);
	r = f_trim(0);
	CHECK(r == 0 || r == 1, "malloc_trim = %d", r);
	void *p = f_malloc(123);
	assert_non_null(p);
	f_free(p);
}

static void test_rss_after_trim(void **state)
{
	(void)state;
	f_trim(0);
	size_t rss0 = rss_bytes();
	const size_t total = MiB(300), bs = 1024, n = total / bs;
	void **v = f_malloc(n * sizeof(void *));
	assert_non_null(v);
	for (size_t i = 0; i < n; i++) {
		v[i] = f_malloc(bs);
		CHECK(v[i] != NULL, "malloc(1024) #%zu failed", i);
		memset(v[i], (int)(i & 0xff) | 1, bs);
	}
	size_t rss1 = rss_bytes();
	for (size_t i = 0; i < n; i++)
		f_free(v[i]);
	f_free(v);
	size_t rss2 = rss_bytes();
	int r = f_trim(0);
	size_t rss3 = rss_bytes();
	print_message("RSS: start %zu MiB, 300 MiB of 1 KiB blocks %zu MiB, freed %zu MiB, "
		      "malloc_trim(0)=%d %zu MiB\n",
		      rss0 >> 20, rss1 >> 20, rss2 >> 20, r, rss3 >> 20);
	CHECK(rss1 >= rss0 + MiB(250), "RSS did not grow with 300 MiB of touched blocks?");
	CHECK(rss3 < MiB(60), "RSS after free + malloc_trim(0) is %zu MiB, expected < 60 MiB",
	      rss3 >> 20);
}

/* Huge blocks (> 2 MiB) are kept a while after free for reuse (when the program has enough
 * live huge memory): a second free of one must be reported, never cached twice (two later
 * allocations would then share it); trim drops them. */
/* Run fn(arg) with fd 2 sent to a temporary file; what it wrote goes to buf (NUL-terminated).
 * Returns the bytes written. */
static ssize_t stderr_of(void (*fn)(void *), void *arg, char *buf, size_t cap)
{
	char path[] = "/tmp/sa_conformance_XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	fflush(stderr);
	int saved = dup(2);
	dup2(fd, 2);
	fn(arg);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	memset(buf, 0, cap);
	ssize_t len = pread(fd, buf, cap - 1, 0);
	close(fd);
	return len;
}

static void call_free(void *p)
{
	f_free(p);
}

static void test_huge_double_free_and_reuse(void **state)
{
	(void)state;
	if (!on_sheafalloc)
		skip();
	/* the cache holds at most a quarter of the live huge bytes: keep 64 MiB live (untouched) */
	void *keep = f_malloc(MiB(64));
	assert_non_null(keep);
	uint8_t *p = f_malloc(MiB(6));
	assert_non_null(p);
	memset(p, 0x5a, MiB(6));
	f_free(p);
	char buf[512];
	ssize_t len =
		stderr_of(call_free, p, buf, sizeof(buf)); /* double free of a cached huge block */
	CHECK(len > 0 && strstr(buf, "sheafalloc"), "second free of a huge block not reported");
	uint8_t *a = f_malloc(MiB(6)), *b = f_malloc(MiB(6));
	CHECK(a && b && a != b, "two 6 MiB blocks after a double free: %p %p", (void *)a,
	      (void *)b);
	memset(a, 1, MiB(6));
	memset(b, 2, MiB(6));
	CHECK(a[MiB(6) - 1] == 1 && b[0] == 2, "huge blocks overlap");
	/* both go to the cache, and malloc_trim drops them. A cached block also expires after
	 * purge_ms: should more than that pass between the two frees (a loaded machine), the
	 * first is gone before the trim; then again with two new blocks, a few times at most */
	size_t held = 0, after = 0;
	for (int attempt = 0; attempt < 5; attempt++) {
		if (attempt) {
			a = f_malloc(MiB(6));
			b = f_malloc(MiB(6));
			assert_true(a && b);
		}
		size_t live = sa_memory_held_fn ? sa_memory_held_fn() : 0;
		f_free(a);
		f_free(b);
		held = sa_memory_held_fn ? sa_memory_held_fn() : 0;
		f_trim(0);
		after = sa_memory_held_fn ? sa_memory_held_fn() : 0;
		if (held + MiB(4) >= live)
			break; /* both were still cached at the trim */
	}
	CHECK(after + MiB(10) <= held, "malloc_trim kept the cached huge blocks: %zu -> %zu MiB",
	      held >> 20, after >> 20);
	f_free(keep);
}

/*
 * Large blocks (32 KiB .. 1 MiB) freed and allocated again: sheafalloc keeps a few freed runs per
 * CPU for reuse. A second free of such a block is reported and must not put it in twice (two
 * later blocks of the size would be one); threads that free each other's large blocks of mixed
 * sizes must never get overlapping blocks (a page-spaced pattern of each block is checked when
 * it is freed).
 */
#define LARGE_SLOTS 64
static _Atomic(uint64_t *) large_slot[LARGE_SLOTS];
static atomic_int large_errors;

static void large_fill(uint64_t *p, size_t size, uint64_t tag)
{
	for (size_t off = 0; off / 8 < (size - 8) / 8; off += 4096)
		p[off / 8] = tag ^ off;
	p[(size - 8) / 8] = tag ^ size;
}

static int large_intact(const uint64_t *p, size_t size, uint64_t tag)
{
	for (size_t off = 0; off / 8 < (size - 8) / 8; off += 4096)
		if (p[off / 8] != (tag ^ off))
			return 0;
	return p[(size - 8) / 8] == (tag ^ size);
}

static void *large_worker(void *arg)
{
	uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(uintptr_t)arg + 1;
	for (int i = 0; i < 6000; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		size_t size = 32768 + (size_t)(x % (4 * 65536)); /* 1..5 units */
		if ((x >> 40) % 16 == 0)
			size = 300000 + (size_t)(x % 700000); /* 5..16 units */
		uint64_t *p = f_malloc(size);
		if (!p || f_usable(p) < size) {
			atomic_fetch_add(&large_errors, 1);
			continue;
		}
		/* the tag holds the size: whoever frees the block can check it */
		uint64_t tag = ((uint64_t)size << 20) ^ ((uintptr_t)p >> 4);
		large_fill(p, size, tag);
		p[1] = size;
		uint64_t *old = atomic_exchange(&large_slot[(x >> 20) % LARGE_SLOTS], p);
		if (old) {
			size_t os = (size_t)old[1];
			uint64_t ot = ((uint64_t)os << 20) ^ ((uintptr_t)old >> 4);
			if (os < 32768 || os > 1000000 || !large_intact(old, os, ot))
				atomic_fetch_add(&large_errors, 1);
			f_free(old);
		}
	}
	return NULL;
}

static void test_large_reuse_double_free_threads(void **state)
{
	(void)state;
	if (on_sheafalloc) {
		uint8_t *p = f_malloc(100000);
		assert_non_null(p);
		memset(p, 0x33, 100000);
		f_free(p);
		char buf[512];
		/* double free of a large block that may sit in a per-CPU stash */
		ssize_t len = stderr_of(call_free, p, buf, sizeof(buf));
		CHECK(len > 0 && strstr(buf, "sheafalloc"),
		      "second free of a large block not reported");
		uint8_t *a = f_malloc(100000), *b = f_malloc(100000);
		CHECK(a && b && a != b, "two 100000-byte blocks after a double free: %p %p",
		      (void *)a, (void *)b);
		memset(a, 1, 100000);
		memset(b, 2, 100000);
		CHECK(a[99999] == 1 && b[0] == 2, "large blocks overlap");
		f_free(a);
		f_free(b);
	}
	enum { T = 4 };
	pthread_t th[T];
	atomic_store(&large_errors, 0);
	for (int i = 0; i < T; i++)
		assert_int_equal(pthread_create(&th[i], NULL, large_worker, (void *)(uintptr_t)i),
				 0);
	for (int i = 0; i < T; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < LARGE_SLOTS; i++) {
		uint64_t *p = atomic_exchange(&large_slot[i], NULL);
		f_free(p);
	}
	CHECK(atomic_load(&large_errors) == 0,
	      "%d large blocks came back with another block's contents, or short",
	      atomic_load(&large_errors));
}

/*
 * mallinfo, mallinfo2, malloc_stats, malloc_info describe the allocator in use (as glibc's tests
 * tst-mallinfo2 and tst-malloc-tcache-leak expect): blocks in use show in uordblks and leave it
 * when freed, huge blocks in hblks/hblkhd, threads that come and go leave nothing in use.
 */
static struct mallinfo2 (*volatile f_mallinfo2)(void) = mallinfo2;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static struct mallinfo (*volatile f_mallinfo)(void) = mallinfo;
#pragma GCC diagnostic pop
static void (*volatile f_malloc_stats)(void) = malloc_stats;
static int (*volatile f_malloc_info)(int, FILE *) = malloc_info;

static void call_malloc_stats(void *unused)
{
	(void)unused;
	f_malloc_stats();
}

static void *info_thread(void *arg)
{
	(void)arg;
	void *p = f_malloc(32);
	f_free(p);
	return f_malloc(32);
}

static void test_mallinfo_and_stats(void **state)
{
	(void)state;
	enum { N = 19 };
	void *p[N];
	size_t total = 0;
	struct mallinfo2 m0 = f_mallinfo2();
	for (int i = 0; i < N; i++) {
		p[i] = f_malloc(160 * (size_t)(i + 1));
		assert_non_null(p[i]);
		memset(p[i], i, 160 * (size_t)(i + 1));
		total += 160 * (size_t)(i + 1);
	}
	struct mallinfo2 m1 = f_mallinfo2();
	/* glibc counts the blocks in its per-thread cache as in use, so after the other tests its
	 * uordblks need not grow when they are handed out again (glibc's own test runs alone) */
	CHECK(!on_sheafalloc || m1.uordblks >= m0.uordblks + total,
	      "uordblks %zu -> %zu after %zu bytes allocated", m0.uordblks, m1.uordblks, total);
	CHECK(m1.arena >= m1.uordblks - m1.hblkhd || m1.arena >= m1.uordblks,
	      "arena %zu below the bytes in use %zu", m1.arena, m1.uordblks);
	for (int i = 0; i < N; i++)
		f_free(p[i]);
	struct mallinfo2 m2 = f_mallinfo2();
	/* glibc counts blocks in its per-thread cache as in use; sheafalloc's sheaves are free */
	CHECK(!on_sheafalloc || m2.uordblks + total <= m1.uordblks,
	      "uordblks %zu -> %zu after %zu bytes freed", m1.uordblks, m2.uordblks, total);

	uint8_t *h = f_malloc(MiB(48));
	assert_non_null(h);
	h[0] = 1;
	struct mallinfo2 m3 = f_mallinfo2();
	/* glibc may serve it from free heap memory the earlier tests left (its policy) */
	CHECK(!on_sheafalloc || (m3.hblks >= m2.hblks + 1 && m3.hblkhd >= m2.hblkhd + MiB(48)),
	      "a 48 MiB block: hblks %zu -> %zu, hblkhd %zu -> %zu", m2.hblks, m3.hblks, m2.hblkhd,
	      m3.hblkhd);
	f_free(h);

	/* threads that allocate, free and hand a block back leave nothing behind */
	enum { THREADS = 4000 }; /* a 32-byte block leaked per thread would be 128 KiB */
	struct mallinfo before = f_mallinfo();
	CHECK(before.uordblks != 0, "mallinfo: uordblks is 0 with blocks in use");
	for (int i = 0; i < THREADS; i++) {
		pthread_t t;
		void *ret = NULL;
		assert_int_equal(pthread_create(&t, NULL, info_thread, NULL), 0);
		pthread_join(t, &ret);
		assert_non_null(ret);
		f_free(ret);
	}
	struct mallinfo after = f_mallinfo();
	CHECK(after.uordblks <= before.uordblks + 16384,
	      "mallinfo: %d bytes in use before %d threads, %d after", before.uordblks, THREADS,
	      after.uordblks);

	/* malloc_stats: stderr, with the lines tools look for */
	char buf[2048];
	ssize_t len = stderr_of(call_malloc_stats, NULL, buf, sizeof(buf));
	CHECK(len > 0 && strstr(buf, "in use bytes") && strstr(buf, "max mmap bytes"),
	      "malloc_stats printed: %s", buf);

	/* malloc_info: XML to the stream; options other than 0 return EINVAL (glibc's contract) */
	char *xml = NULL;
	size_t xlen = 0;
	FILE *mf = open_memstream(&xml, &xlen);
	assert_non_null(mf);
	int r = f_malloc_info(0, mf);
	fclose(mf);
	CHECK(r == 0 && xml && strstr(xml, "<malloc version=") && strstr(xml, "</malloc>"),
	      "malloc_info returned %d: %s", r, xml ? xml : "(nothing)");
	free(xml);
	mf = fopen("/dev/null", "w");
	assert_non_null(mf);
	r = f_malloc_info(1, mf);
	CHECK(r == EINVAL, "malloc_info(1, fp): %d", r);
	fclose(mf);
}

/* From a clean start (malloc_trim), n 1000-byte blocks written and freed: their emptied slabs
 * become dirty free units. Returns the dirty bytes (mallinfo2's keepcost). Fewer than want are
 * dirty when purge_ms passed during the frees (valgrind, a loaded machine descheduling us): then
 * it tries again, and skips the test only when that happened DIRTY_TRIES times in a row. */
#define DIRTY_TRIES 5
static size_t dirty_after_frees(int n, size_t want)
{
	static void *p[40000];
	assert_true(n <= (int)(sizeof(p) / sizeof(p[0])));
	size_t k = 0;
	for (int attempt = 0; attempt < DIRTY_TRIES; attempt++) {
		f_trim(0); /* no dirty units, no cached huge mappings; the purge clock starts now */
		for (int i = 0; i < n; i++) {
			p[i] = f_malloc(1000);
			assert_non_null(p[i]);
			memset(p[i], 7, 1000);
		}
		for (int i = 0; i < n; i++)
			f_free(p[i]);
		k = f_mallinfo2().keepcost;
		if (k >= want)
			return k;
	}
	print_message(
		"    only %zu dirty bytes after the frees, %d times: purged by time, skipped\n", k,
		DIRTY_TRIES);
	skip();
	return k;
}

/* A huge block that needs new pages first gives back the dirty free units (freed small blocks'
 * pages that no huge block can use): peak RSS is not the freed small blocks plus the new one. */
static void test_huge_alloc_purges_dirty_units(void **state)
{
	(void)state;
	if (!on_sheafalloc)
		skip();
	size_t k1 = dirty_after_frees(30000, MiB(4));
	uint8_t *h = f_malloc(MiB(16));
	assert_non_null(h);
	h[MiB(16) - 1] = 1;
	struct mallinfo2 m2 = f_mallinfo2();
	CHECK(m2.keepcost < MiB(1), "a new 16 MiB block kept %zu MiB of dirty units (before: %zu)",
	      m2.keepcost >> 20, k1 >> 20);
	f_free(h);
}

/* RSS falls after a peak without malloc_trim: once purge_ms (1000 ms by default) has passed,
 * unit allocations and frees purge the dirty free units a few madvise calls at a time. Light
 * activity goes on, in rounds, until the dirty bytes and RSS have fallen, for up to
 * PURGE_WAIT_SEC: the first version looked once, 1.1 s after the frees, which a loaded machine
 * could get to before the purge had run its course. Without the time-based purge nothing else
 * purges here (the activity's freed runs go to the per-CPU stash, far below 64 MiB), and the
 * test fails after PURGE_WAIT_SEC. */
#define PURGE_WAIT_SEC 60
static void test_rss_falls_after_delay(void **state)
{
	(void)state;
	if (!on_sheafalloc)
		skip();
	size_t k1 = dirty_after_frees(40000, MiB(8)), r1 = rss_bytes();
	double t0 = now_s();
	usleep(1100 * 1000);
	size_t k2, r2;
	int rounds = 0;
	for (;;) {
		for (int i = 0; i < 300; i++) { /* light activity: large blocks, so unit frees */
			char *q = f_malloc(100000);
			assert_non_null(q);
			q[0] = 1;
			f_free(q);
		}
		rounds++;
		k2 = f_mallinfo2().keepcost;
		r2 = rss_bytes();
		if ((k2 < k1 / 4 && r2 + (k1 - k2) / 2 <= r1) || now_s() - t0 > PURGE_WAIT_SEC)
			break;
		usleep(50 * 1000);
	}
	print_message("    dirty %zu -> %zu MiB, RSS %zu -> %zu MiB after %.1f s (%d rounds)\n",
		      k1 >> 20, k2 >> 20, r1 >> 20, r2 >> 20, now_s() - t0, rounds);
	CHECK(k2 < k1 / 4, "dirty bytes %zu MiB after the frees, %zu MiB %.0f s later", k1 >> 20,
	      k2 >> 20, now_s() - t0);
	CHECK(r2 + (k1 - k2) / 2 <= r1, "RSS %zu MiB after the frees, %zu MiB %.0f s later",
	      r1 >> 20, r2 >> 20, now_s() - t0);
}

/* glibc: malloc_trim returns 1 when it released memory to the system. Blocks are freed in
 * small batches (so the automatic purge past 64 MiB of dirty units does not run first). */
static void test_malloc_trim_reports_release(void **state)
{
	(void)state;
	f_trim(0);
	enum { N = 40000 };
	void **v = f_malloc(N * sizeof(void *));
	assert_non_null(v);
	for (int i = 0; i < N; i++) {
		v[i] = f_malloc(1024);
		assert_non_null(v[i]);
		memset(v[i], 1, 1024);
	}
	for (int i = 0; i < N; i++)
		f_free(v[i]);
	f_free(v);
	size_t held0 = sa_memory_held_fn ? sa_memory_held_fn() : 0;
	size_t rss0 = rss_bytes();
	int r = f_trim(0);
	size_t rss1 = rss_bytes();
	size_t held1 = sa_memory_held_fn ? sa_memory_held_fn() : 0;
	print_message("40 MB of 1 KiB blocks freed: RSS %zu -> %zu KiB, sa_memory_held %zu -> %zu "
		      "KiB, malloc_trim(0) = %d\n",
		      rss0 >> 10, rss1 >> 10, held0 >> 10, held1 >> 10, r);
	int held_fell = !sa_memory_held_fn || held1 + MiB(8) < held0;
	if (rss1 + MiB(8) < rss0)
		CHECK(r == 1 && held_fell,
		      "malloc_trim(0) gave %zu KiB back to the OS (RSS) but returned %d (glibc: 1 "
		      "when memory was released) and sa_memory_held went %zu -> %zu KiB",
		      (rss0 - rss1) >> 10, r, held0 >> 10, held1 >> 10);
}

/* ------------------------------------------------------------------ threads ----------------- */
static atomic_int t_errors;
static char t_errmsg[512];
static pthread_mutex_t t_errlock = PTHREAD_MUTEX_INITIALIZER;

static void t_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void t_error(const char *fmt, ...)
{
	if (atomic_fetch_add(&t_errors, 1) == 0) {
		pthread_mutex_lock(&t_errlock);
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(t_errmsg, sizeof(t_errmsg), fmt, ap);
		va_end(ap);
		pthread_mutex_unlock(&t_errlock);
	}
}

struct item {
	uint8_t *p;
	size_t n;
	uint32_t seed;
	int kind; /* 0 malloc, 1 calloc, 2 aligned */
};

#define QCAP 4096
static struct {
	pthread_mutex_t lock;
	struct item q[QCAP];
	unsigned head, count;
	uint64_t handed, taken;
} handoff = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int q_push(struct item it)
{
	int ok = 0;
	pthread_mutex_lock(&handoff.lock);
	if (handoff.count < QCAP) {
		handoff.q[(handoff.head + handoff.count++) % QCAP] = it;
		handoff.handed++;
		ok = 1;
	}
	pthread_mutex_unlock(&handoff.lock);
	return ok;
}

static int q_pop(struct item *it)
{
	int ok = 0;
	pthread_mutex_lock(&handoff.lock);
	if (handoff.count) {
		*it = handoff.q[handoff.head];
		handoff.head = (handoff.head + 1) % QCAP;
		handoff.count--;
		handoff.taken++;
		ok = 1;
	}
	pthread_mutex_unlock(&handoff.lock);
	return ok;
}

static size_t rand_size(uint64_t *r)
{
	uint64_t x = xs64(r);
	unsigned k = (unsigned)(x % 1000);
	x >>= 10;
	if (k < 600)
		return x % 257;
	if (k < 850)
		return 257 + x % (4096 - 256);
	if (k < 960)
		return 4097 + x % (KiB(32) - 4096);
	if (k < 996)
		return KiB(32) + 1 + x % MiB(1);
	return MiB(2) + 1 + x % MiB(4);
}

static int verify_item(const struct item *it, const char *when)
{
	if (((uintptr_t)it->p & 15) != 0) {
		t_error("%s: block %p of %zu misaligned", when, (void *)it->p, it->n);
		return 0;
	}
	size_t off = check_any(it->p, it->n, it->n, it->seed);
	if (off != SIZE_MAX) {
		t_error("%s: block %p of %zu bytes corrupted at offset %zu", when, (void *)it->p,
			it->n, off);
		return 0;
	}
	return 1;
}

struct worker_arg {
	int id;
	int ops;
};

static void *worker(void *arg)
{
	struct worker_arg *wa = arg;
	uint64_t r = 0x1234567ull * (uint64_t)(wa->id + 1) + 99;
	enum { SLOTS = 64 };
	struct item slot[SLOTS];
	memset(slot, 0, sizeof(slot));
	for (int op = 0; op < wa->ops && !atomic_load(&t_errors); op++) {
		unsigned i = (unsigned)(xs64(&r) % SLOTS);
		unsigned what = (unsigned)(xs64(&r) % 100);
		struct item *it = &slot[i];
		if (!it->p) {
			size_t n = rand_size(&r);
			int kind = (int)(xs64(&r) % 10);
			kind = kind < 7 ? 0 : kind < 9 ? 1 : 2;
			if (kind == 0)
				it->p = f_malloc(n);
			else if (kind == 1)
				it->p = f_calloc(1, n);
			else
				it->p = f_aligned_alloc((size_t)64 << (xs64(&r) % 7), n);
			if (!it->p) {
				t_error("thread %d: allocation of %zu (kind %d) failed", wa->id, n,
					kind);
				break;
			}
			if (kind == 1 && n <= SPARSE_MIN && first_nonzero(it->p, n) != SIZE_MAX) {
				t_error("thread %d: calloc(1, %zu) not zeroed at %zu", wa->id, n,
					first_nonzero(it->p, n));
				break;
			}
			if (f_usable(it->p) < n) {
				t_error("thread %d: usable %zu < %zu", wa->id, f_usable(it->p), n);
				break;
			}
			it->n = n;
			it->kind = kind;
			it->seed = (uint32_t)xs64(&r);
			fill_any(it->p, n, it->seed);
		} else if (what < 35) {
			if (!verify_item(it, "before free"))
				break;
			f_free(it->p);
			it->p = NULL;
		} else if (what < 65) {
			size_t n = rand_size(&r);
			if (!verify_item(it, "before realloc"))
				break;
			uint8_t *q = f_realloc(it->p, n);
			if (!q) {
				if (n == 0) { /* freed */
					it->p = NULL;
					continue;
				}
				t_error("thread %d: realloc(%zu -> %zu) failed", wa->id, it->n, n);
				break;
			}
			size_t lim = n < it->n ? n : it->n;
			size_t off = check_any(q, lim, it->n, it->seed);
			if (off != SIZE_MAX) {
				t_error("thread %d: realloc(%zu -> %zu) lost content at %zu",
					wa->id, it->n, n, off);
				break;
			}
			it->p = q;
			it->n = n;
			it->seed = (uint32_t)xs64(&r);
			fill_any(q, n, it->seed);
		} else if (what < 85) {
			if (!verify_item(it, "before hand-off"))
				break;
			if (q_push(*it))
				it->p = NULL;
		} else {
			struct item got;
			if (q_pop(&got)) {
				if (!verify_item(&got, "handed-off block, in the receiving thread"))
					break;
				f_free(got.p);
			}
		}
	}
	for (unsigned i = 0; i < SLOTS; i++)
		if (slot[i].p) {
			verify_item(&slot[i], "at thread end");
			f_free(slot[i].p);
		}
	return NULL;
}

/* 8 threads, THREAD_OPS random operations each (no time limit: the first version stopped them
 * after 3 s, so a slow or loaded machine tested less and could fall under the hand-off count). */
#define THREAD_OPS 30000
static void test_threads_random_and_handoff(void **state)
{
	(void)state;
	enum { T = 8 };
	pthread_t th[T];
	struct worker_arg wa[T];
	atomic_store(&t_errors, 0);
	double t0 = now_s();
	for (int i = 0; i < T; i++) {
		wa[i] = (struct worker_arg){.id = i, .ops = THREAD_OPS};
		assert_int_equal(pthread_create(&th[i], NULL, worker, &wa[i]), 0);
	}
	for (int i = 0; i < T; i++)
		pthread_join(th[i], NULL);
	/* the main thread frees what is left in the queue: another thread again */
	struct item got;
	while (q_pop(&got)) {
		verify_item(&got, "left in the queue");
		f_free(got.p);
	}
	print_message("8 threads: %.2f s, %llu blocks handed between threads\n", now_s() - t0,
		      (unsigned long long)handoff.handed);
	CHECK(atomic_load(&t_errors) == 0, "%d error(s); first: %s", atomic_load(&t_errors),
	      t_errmsg);
	CHECK(handoff.handed > 100, "too few hand-offs (%llu)", (unsigned long long)handoff.handed);
}

/* ------------------------------------------------------------------ fork -------------------- */
static atomic_int bg_stop;

/* A fork child counts its operations here (MAP_SHARED): the parent declares it hung only when
 * the count has not moved for CHILD_STALL_SEC, never for being slow (the first version gave
 * each child 10 s in all). */
#define CHILD_STALL_SEC 30
static _Atomic uint64_t *child_progress;

static void child_step(void)
{
	atomic_fetch_add_explicit(child_progress, 1, memory_order_relaxed);
}

static void *bg_alloc(void *arg)
{
	uint64_t r = (uint64_t)(uintptr_t)arg * 7919 + 1;
	void *v[32] = {0};
	for (unsigned long it = 0; !atomic_load(&bg_stop); it++) {
		if ((it & 255) == 255)
			usleep(300);
		unsigned i = (unsigned)(xs64(&r) % 32);
		if (v[i]) {
			f_free(v[i]);
			v[i] = NULL;
		} else {
			size_t n = rand_size(&r);
			v[i] = f_malloc(n);
			if (v[i])
				memset(v[i], 0x5c, n < 256 ? n : 256);
		}
	}
	for (int i = 0; i < 32; i++)
		f_free(v[i]);
	return NULL;
}

static void *child_thread(void *arg)
{
	uint64_t r = (uint64_t)(uintptr_t)arg + 17;
	for (int i = 0; i < 400; i++) {
		size_t n = rand_size(&r);
		uint8_t *p = f_malloc(n);
		if (!p)
			return (void *)1;
		size_t m = n < 1024 ? n : 1024;
		fill(p, m, 5);
		if (check_pat(p, m, 5) != SIZE_MAX)
			return (void *)2;
		f_free(p);
		child_step();
	}
	return NULL;
}

/* the child after fork: returns its exit status */
static int child_body(void *inherited, size_t inherited_n)
{
	if (check_pat(inherited, inherited_n, 42) != SIZE_MAX)
		return 10;
	f_free(inherited); /* allocated by the parent before fork */
	uint64_t r = 4242;
	void *v[64] = {0};
	for (int i = 0; i < 1000; i++) {
		unsigned k = (unsigned)(xs64(&r) % 64);
		if (v[k]) {
			f_free(v[k]);
			v[k] = NULL;
		} else {
			size_t n = rand_size(&r);
			v[k] = (i & 3) ? f_malloc(n) : f_calloc(1, n);
			if (!v[k])
				return 11;
			if (!(i & 3) && n <= SPARSE_MIN && first_nonzero(v[k], n) != SIZE_MAX)
				return 12;
			memset(v[k], 1, n < 512 ? n : 512);
		}
		child_step();
	}
	for (int i = 0; i < 64; i++)
		f_free(v[i]);
	child_step();
	void *p = f_realloc(NULL, 100);
	p = f_realloc(p, MiB(3));
	p = f_realloc(p, 10);
	if (!p)
		return 13;
	f_free(p);
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		if (pthread_create(&t[i], NULL, child_thread, (void *)(uintptr_t)i) != 0)
			return 14;
	for (int i = 0; i < 2; i++) {
		void *ret;
		pthread_join(t[i], &ret);
		if (ret)
			return 15;
	}
	return 0;
}

static void test_fork_while_threads_allocate(void **state)
{
	(void)state;
	enum { BG = 3, FORKS = 50 };
	if (!child_progress) {
		child_progress = mmap(NULL, sizeof(*child_progress), PROT_READ | PROT_WRITE,
				      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		assert_true(child_progress != MAP_FAILED);
	}
	pthread_t bg[BG];
	atomic_store(&bg_stop, 0);
	for (int i = 0; i < BG; i++)
		assert_int_equal(pthread_create(&bg[i], NULL, bg_alloc, (void *)(uintptr_t)(i + 1)),
				 0);
	fflush(stdout);
	fflush(stderr);
	int failures = 0, hung = 0, first_status = 0;
	double t0 = now_s();
	for (int f = 0; f < FORKS; f++) {
		size_t n = 100 + (size_t)f * 997;
		uint8_t *inherited = f_malloc(n);
		assert_non_null(inherited);
		fill(inherited, n, 42);
		usleep(1000); /* let the background threads get into the allocator */
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0)
			_exit(child_body(inherited, n));
		f_free(inherited);
		int st = 0;
		uint64_t last = atomic_load(child_progress);
		double moved = now_s();
		pid_t w;
		while ((w = waitpid(pid, &st, WNOHANG)) == 0) {
			uint64_t now = atomic_load(child_progress);
			if (now != last) {
				last = now;
				moved = now_s();
			} else if (now_s() - moved >= CHILD_STALL_SEC) {
				break;
			}
			usleep(2000);
		}
		if (w == 0) {
			if (getenv("SA_TEST_KEEP_HUNG")) { /* time to attach a debugger */
				print_message("child %d hung; kept for 300 s\n", (int)pid);
				sleep(300);
			}
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			hung++;
			failures++;
			if (hung >=
			    (getenv("SA_TEST_MAX_HANGS") ? atoi(getenv("SA_TEST_MAX_HANGS")) : 3))
				break; /* enough evidence; each hang costs CHILD_STALL_SEC */
			continue;
		}
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			if (!failures)
				first_status = st;
			failures++;
		}
	}
	atomic_store(&bg_stop, 1);
	for (int i = 0; i < BG; i++)
		pthread_join(bg[i], NULL);
	print_message("%d forks in %.2f s\n", FORKS, now_s() - t0);
	CHECK(hung == 0,
	      "%d of %d children hung (no progress for %d s: deadlock in the child after fork)",
	      hung, FORKS, CHILD_STALL_SEC);
	CHECK(failures == 0,
	      "%d of %d children failed; first: %s %d (exit codes: 10 inherited block, 11 alloc, "
	      "12 calloc, 13 realloc, 14/15 threads)",
	      failures, FORKS, WIFSIGNALED(first_status) ? "signal" : "exit status",
	      WIFSIGNALED(first_status) ? WTERMSIG(first_status) : WEXITSTATUS(first_status));
}

/* The same test in the other per-CPU mode: this program again (exec), with percpu=fallback
 * added to SHEAFALLOC_OPTIONS. Fallback mode guards each per-CPU slot with a spinlock, which a
 * thread inside a slot section at fork time must not leave held in the child. Skipped when
 * this run already is in fallback mode. The inner run's output is relayed with a prefix (its
 * cmocka summary lines would otherwise be counted by tests/run.sh). */
static void test_fork_in_fallback_mode(void **state)
{
	(void)state;
	const char *opt = getenv("SHEAFALLOC_OPTIONS");
	if (getenv("SA_TEST_INNER_RUN") || !on_sheafalloc) {
		print_message("inner run or not on sheafalloc: skipped\n");
		skip();
	}
	if (opt && strstr(opt, "percpu=fallback")) {
		print_message(
			"already in fallback mode (test_fork_while_threads_allocate): skipped\n");
		skip();
	}
	extern char **environ;
	size_t ne = 0;
	while (environ[ne])
		ne++;
	char **envp = calloc(ne + 5, sizeof(char *));
	assert_non_null(envp);
	size_t k = 0;
	for (size_t i = 0; i < ne; i++)
		if (strncmp(environ[i], "SHEAFALLOC_OPTIONS=", 19) &&
		    strncmp(environ[i], "SA_TEST_FILTER=", 15))
			envp[k++] = environ[i];
	char optbuf[1024];
	snprintf(optbuf, sizeof(optbuf), "SHEAFALLOC_OPTIONS=%s%spercpu=fallback", opt ? opt : "",
		 opt && *opt ? "," : "");
	envp[k++] = optbuf;
	envp[k++] = "SA_TEST_FILTER=test_fork_while_threads_allocate";
	envp[k++] = "SA_TEST_INNER_RUN=1";
	envp[k++] = "SA_TEST_MAX_HANGS=1";
	envp[k] = NULL;
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(fds[1], 1);
		dup2(fds[1], 2);
		close(fds[0]);
		close(fds[1]);
		char *argv[] = {"malloc_conformance", NULL};
		execve("/proc/self/exe", argv, envp);
		_exit(127);
	}
	close(fds[1]);
	FILE *in = fdopen(fds[0], "r");
	assert_non_null(in);
	char line[512];
	while (fgets(line, sizeof(line), in))
		print_message("    | %s", line);
	fclose(in);
	int st = 0;
	waitpid(pid, &st, 0);
	free(envp);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "the fork test under SHEAFALLOC_OPTIONS=...percpu=fallback failed (%s %d): see the "
	      "relayed output above",
	      WIFEXITED(st) ? "exit status" : "signal",
	      WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
}

/* ------------------------------------------------------------------ thread churn ------------ */
struct churn_arg {
	int id;
	void *out[16];
	size_t outn[16];
	void *in[16]; /* blocks of an earlier thread, freed here */
	size_t inn[16];
	uint32_t in_seed;
};

static void *churn_thread(void *arg)
{
	struct churn_arg *a = arg;
	for (int i = 0; i < 16; i++) {
		if (a->in[i]) {
			if (check_pat(a->in[i], a->inn[i], a->in_seed) != SIZE_MAX)
				t_error("churn %d: block of the previous thread corrupted", a->id);
			f_free(a->in[i]);
		}
	}
	uint64_t r = (uint64_t)a->id * 31 + 7;
	void *tmp[48];
	for (int i = 0; i < 48; i++) {
		size_t n = rand_size(&r) % 20000;
		tmp[i] = f_malloc(n);
		if (!tmp[i]) {
			t_error("churn %d: malloc(%zu) failed", a->id, n);
			return NULL;
		}
		memset(tmp[i], 0x77, n);
	}
	for (int i = 0; i < 48; i++)
		f_free(tmp[i]);
	for (int i = 0; i < 16; i++) {
		size_t n = 1 + (size_t)((a->id * 131 + i * 977) % 3000);
		a->out[i] = f_malloc(n);
		a->outn[i] = n;
		if (!a->out[i]) {
			t_error("churn %d: malloc failed", a->id);
			return NULL;
		}
		fill(a->out[i], n, (uint32_t)a->id);
	}
	return NULL;
}

static void test_thread_churn(void **state)
{
	(void)state;
	enum { N = 500, PAR = 4 };
	atomic_store(&t_errors, 0);
	f_trim(0);
	size_t held0 = sa_memory_held_fn ? sa_memory_held_fn() : 0;
	struct churn_arg *a = calloc(N, sizeof(*a));
	assert_non_null(a);
	double t0 = now_s();
	for (int base = 0; base < N; base += PAR) {
		pthread_t th[PAR];
		for (int j = 0; j < PAR; j++) {
			int id = base + j;
			a[id].id = id + 1;
			if (id >= PAR) { /* the blocks of the thread PAR places earlier */
				a[id].in_seed = (uint32_t)a[id - PAR].id;
				for (int i = 0; i < 16; i++) {
					a[id].in[i] = a[id - PAR].out[i];
					a[id].inn[i] = a[id - PAR].outn[i];
					a[id - PAR].out[i] = NULL;
				}
			}
			assert_int_equal(pthread_create(&th[j], NULL, churn_thread, &a[id]), 0);
		}
		for (int j = 0; j < PAR; j++)
			pthread_join(th[j], NULL);
		if (atomic_load(&t_errors))
			break;
	}
	for (int id = 0; id < N; id++)
		for (int i = 0; i < 16; i++)
			if (a[id].out[i])
				f_free(a[id].out[i]);
	free(a);
	f_trim(0);
	size_t held1 = sa_memory_held_fn ? sa_memory_held_fn() : 0;
	print_message("%d threads in %.2f s; sa_memory_held %zu -> %zu KiB\n", N, now_s() - t0,
		      held0 >> 10, held1 >> 10);
	CHECK(atomic_load(&t_errors) == 0, "%s", t_errmsg);
	if (sa_memory_held_fn)
		CHECK(held1 < held0 + MiB(16), "memory held grew by %zu KiB over %d short threads",
		      (held1 - held0) >> 10, N);
}

/* ------------------------------------------------------------------ dlopen ------------------ */
typedef int (*compress2_fn)(unsigned char *, unsigned long *, const unsigned char *, unsigned long,
			    int);
typedef int (*uncompress_fn)(unsigned char *, unsigned long *, const unsigned char *,
			     unsigned long);
typedef int (*sqlite_open_fn)(const char *, void **);
typedef int (*sqlite_exec_fn)(void *, const char *, int (*)(void *, int, char **, char **), void *,
			      char **);
typedef int (*sqlite_close_fn)(void *);
typedef void (*sqlite_free_fn)(void *);

static int sql_cb(void *arg, int ncol, char **vals, char **names)
{
	(void)names;
	long *out = arg;
	for (int i = 0; i < ncol && i < 2; i++)
		out[i] = vals[i] ? atol(vals[i]) : -1;
	return 0;
}

static void test_dlopen_allocating_libraries(void **state)
{
	(void)state;
	int used = 0;
	size_t n = KiB(256);
	uint8_t *src = f_malloc(n), *dst = f_malloc(n + 1024), *back = f_malloc(n);
	assert_true(src && dst && back);
	for (size_t i = 0; i < n; i++)
		src[i] = (uint8_t)((i / 7) ^ (i % 13));
	for (int rep = 0; rep < 15; rep++) {
		void *z = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
		if (!z)
			break;
		used |= 1;
		compress2_fn c2 = (compress2_fn)dlsym(z, "compress2");
		uncompress_fn un = (uncompress_fn)dlsym(z, "uncompress");
		assert_true(c2 && un);
		unsigned long dl = n + 1024, bl = n;
		CHECK(c2(dst, &dl, src, n, 6 + rep % 4) == 0, "zlib compress2 failed");
		CHECK(un(back, &bl, dst, dl) == 0 && bl == n, "zlib uncompress failed");
		CHECK(memcmp(src, back, n) == 0, "zlib round trip differs");
		CHECK(dlclose(z) == 0, "dlclose(libz): %s", dlerror());
	}
	for (int rep = 0; rep < 8; rep++) {
		void *s = dlopen("libsqlite3.so.0", RTLD_NOW | RTLD_LOCAL);
		if (!s)
			break;
		used |= 2;
		sqlite_open_fn op = (sqlite_open_fn)dlsym(s, "sqlite3_open");
		sqlite_exec_fn ex = (sqlite_exec_fn)dlsym(s, "sqlite3_exec");
		sqlite_close_fn cl = (sqlite_close_fn)dlsym(s, "sqlite3_close");
		sqlite_free_fn fr = (sqlite_free_fn)dlsym(s, "sqlite3_free");
		assert_true(op && ex && cl && fr);
		void *db = NULL;
		CHECK(op(":memory:", &db) == 0, "sqlite3_open");
		long out[2] = {0, 0};
		char *err = NULL;
		int rc = ex(
			db,
			"CREATE TABLE t(a INTEGER, b TEXT);"
			"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<3000)"
			" INSERT INTO t SELECT x, hex(randomblob(50)) FROM c;"
			"CREATE INDEX ti ON t(b);"
			"SELECT count(*), sum(length(b)) FROM t;",
			sql_cb, out, &err);
		CHECK(rc == 0, "sqlite3_exec: %d %s", rc, err ? err : "");
		CHECK(out[0] == 3000 && out[1] == 300000, "sqlite result %ld %ld", out[0], out[1]);
		if (err)
			fr(err);
		CHECK(cl(db) == 0, "sqlite3_close");
		CHECK(dlclose(s) == 0, "dlclose(libsqlite3): %s", dlerror());
	}
	f_free(src);
	f_free(dst);
	f_free(back);
	if (!used) {
		print_message("neither libz.so.1 nor libsqlite3.so.0 can be opened: skipped\n");
		skip();
	}
	print_message("dlopen/dlclose:%s%s\n", used & 1 ? " libz.so.1" : "",
		      used & 2 ? " libsqlite3.so.0" : "");
}

/* ------------------------------------------------------------------ main -------------------- */
static double t_test_start, t_cpu_start;
static double cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
static int t_begin(void **state)
{
	(void)state;
	t_test_start = now_s();
	t_cpu_start = cpu_s();
	return 0;
}
static int t_end(void **state)
{
	(void)state;
	print_message("    (%.2f s, cpu %.2f s)\n", now_s() - t_test_start, cpu_s() - t_cpu_start);
	return 0;
}
#define T(f) cmocka_unit_test_setup_teardown(f, t_begin, t_end)

int main(int argc, char **argv)
{
	(void)argc;
	/* The bad-free tests here check that a misuse is reported and the program goes on:
	 * bad_free=warn (sheafalloc aborts by default, as glibc does; tests/unit/robust.c checks
	 * that). The options are read at the first malloc, before main: run again with it set. */
	const char *o = getenv("SHEAFALLOC_OPTIONS");
	if (!getenv("SA_CONFORMANCE_REEXEC") && (!o || !strstr(o, "bad_free="))) {
		char opts[1024];
		snprintf(opts, sizeof(opts), "%s%sbad_free=warn", o ? o : "", o && *o ? "," : "");
		setenv("SHEAFALLOC_OPTIONS", opts, 1);
		setenv("SA_CONFORMANCE_REEXEC", "1", 1);
		execv("/proc/self/exe", argv);
		perror("execv /proc/self/exe");
		return 1;
	}
	on_sheafalloc = probe_identity();
	const struct CMUnitTest identity_only[] = {
		T(test_identity),
	};
	const struct CMUnitTest tests[] = {
		T(test_identity),
		T(test_malloc_zero_and_free_null),
		T(test_malloc_sizes),
		T(test_malloc_random_no_overlap),
		T(test_malloc_pow2_and_absurd),
		T(test_calloc_zero_after_recycling),
		T(test_calloc_overflow),
		T(test_reallocarray),
		T(test_realloc_basics),
		T(test_realloc_every_boundary),
		T(test_realloc_kinds_chain),
		T(test_realloc_in_place),
		T(test_aligned_family),
		T(test_aligned_invalid),
		T(test_valloc_pvalloc),
		T(test_errno_enomem),
		T(test_malloc_trim),
		T(test_rss_after_trim),
		T(test_malloc_trim_reports_release),
		T(test_huge_double_free_and_reuse),
		T(test_large_reuse_double_free_threads),
		T(test_mallinfo_and_stats),
		T(test_huge_alloc_purges_dirty_units),
		T(test_rss_falls_after_delay),
		T(test_threads_random_and_handoff),
		T(test_fork_while_threads_allocate),
		T(test_fork_in_fallback_mode),
		T(test_thread_churn),
		T(test_dlopen_allocating_libraries),
	};
	if (getenv("SA_TEST_FILTER")) /* e.g. SA_TEST_FILTER='test_fork*' */
		cmocka_set_test_filter(getenv("SA_TEST_FILTER"));
	if (!on_sheafalloc && !getenv("SA_PRELOAD_ALLOW_OTHER")) {
		fprintf(stderr, "malloc_conformance: %s\n", identity_why);
		return cmocka_run_group_tests_name("malloc_conformance", identity_only, NULL, NULL);
	}
	return cmocka_run_group_tests_name("malloc_conformance", tests, NULL, NULL);
}
