/*
 * tests/preload/rss_return.c — memory comes back after a peak by itself (alloc/decay.c), through
 * the malloc replacement.
 *
 * The program mallocs 96 MiB of blocks of mixed sizes (16 B .. 32 KiB: every malloc class,
 * written whole), frees 90% of them in a shuffled order, and then goes on working at a tenth of
 * its peak: rounds that free a random live block and malloc a small one (16..512 B) in its
 * place, as a program that keeps running after a burst. It calls nothing but malloc and free (no
 * malloc_trim): within a generous deadline (60 s) its resident memory (/proc/self/statm) must
 * fall below a third of the peak. Before decay, the cached free objects of each class kept
 * nearly every slab of the peak and it stayed at the peak for good.
 * Also checked: every block keeps its contents until its free (a pattern), and the counts add
 * up. The test waits for a condition with a deadline; it measures no speed.
 *
 * Run as LD_PRELOAD=$PWD/build/libsheafalloc_malloc.so build/tests/preload/rss_return
 * (tests/run.sh does).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void *(*volatile f_malloc)(size_t) = malloc;
static void (*volatile f_free)(void *) = free;

#define PEAK	   ((size_t)96 << 20)
#define MAX_BLOCKS (1u << 20)
#define DEADLINE_S 60

struct block {
	unsigned char *p;
	uint32_t size;
	uint32_t id;
};

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t rss_bytes(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size = 0, res = 0;
	if (f) {
		if (fscanf(f, "%ld %ld", &size, &res) != 2)
			res = 0;
		fclose(f);
	}
	return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

static void fill(struct block *b, uint32_t size, uint32_t id)
{
	b->p = f_malloc(size);
	assert_non_null(b->p);
	b->size = size;
	b->id = id;
	memset(b->p, (int)(id & 0xff), size);
	memcpy(b->p, &id, size >= 4 ? 4 : size);
}

static void check_and_free(struct block *b)
{
	uint32_t id;
	if (b->size >= 4) {
		memcpy(&id, b->p, 4);
		assert_int_equal(id, b->id);
	}
	assert_int_equal(b->p[b->size - 1], b->id & 0xff);
	f_free(b->p);
	b->p = NULL;
}

static void test_rss_returns(void **state)
{
	(void)state;
	/* the bookkeeping is mmap'ed: only the blocks go through malloc */
	struct block *bl = mmap(NULL, MAX_BLOCKS * sizeof(*bl), PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(bl != MAP_FAILED);
	size_t n = 0, held = 0;
	uint32_t id = 0;
	while (held < PEAK && n < MAX_BLOCKS) {
		uint64_t r = next_rand() % 100;
		uint32_t size = r < 70	 ? 16 + (uint32_t)(next_rand() % 497)
				: r < 95 ? 513 + (uint32_t)(next_rand() % 3584)
					 : 4097 + (uint32_t)(next_rand() % 28672);
		fill(&bl[n++], size, id++);
		held += size;
	}
	size_t peak = rss_bytes();
	/* free 90% in a shuffled order; the survivors move to the front */
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = next_rand() % (i + 1);
		struct block t = bl[i];
		bl[i] = bl[j];
		bl[j] = t;
	}
	size_t live = 0;
	for (size_t i = 0; i < n; i++) {
		if (i % 10 == 0)
			bl[live++] = bl[i];
		else
			check_and_free(&bl[i]);
	}
	size_t after_free = rss_bytes();
	/* keep working at a tenth of the peak until the memory came back */
	double end = now_s() + DEADLINE_S;
	size_t rss = after_free;
	unsigned long rounds = 0;
	while (now_s() < end) {
		for (int k = 0; k < 2000; k++) {
			size_t j = next_rand() % live;
			check_and_free(&bl[j]);
			fill(&bl[j], 16 + (uint32_t)(next_rand() % 497), id++);
		}
		rounds++;
		rss = rss_bytes();
		if (rss < peak / 3)
			break;
		struct timespec ts = {0, 5000000};
		nanosleep(&ts, NULL);
	}
	print_message("rss_return: peak %.1f MiB, after the free %.1f MiB, then %.1f MiB after "
		      "%lu rounds (target below %.1f MiB)\n",
		      peak / 1048576.0, after_free / 1048576.0, rss / 1048576.0, rounds,
		      peak / 3 / 1048576.0);
	assert_true(peak >= PEAK / 2); /* the blocks were written: the peak is real */
	assert_true(rss < peak / 3);
	for (size_t i = 0; i < live; i++)
		check_and_free(&bl[i]);
	munmap(bl, MAX_BLOCKS * sizeof(*bl));
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_rss_returns)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
