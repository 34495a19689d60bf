/*
 * bench/rss_bench.c — RSS over time of one macro workload, for the rss part of bench/Makefile.
 * A plain program: it calls malloc and free, and the allocator under test is the one the process
 * runs with (LD_PRELOAD of its library; none: glibc). bench/rss.sh runs it once per allocator.
 *
 * The workload, on 2 worker threads (each its own blocks), in phases (the CSV's phase column):
 *   0 grow    each worker mallocs blocks until the two together hold --peak MiB: sizes from a
 *             fixed-seed splitmix64 stream per worker, 80% 16..256 B, 17% 257..4096 B,
 *             2.9% 4 KiB..32 KiB, 0.1% 64 KiB..512 KiB (uniform within each range); every byte of
 *             every block is written (a pattern checked before its free), so RSS follows use.
 *   1 hold    --hold ms idle at the peak.
 *   2 free    each worker frees 90% of its blocks (all but every tenth), in a shuffled order.
 *   3 small   --tail / 2 ms of small, steady work on what is left: rounds of 2,000 replacements
 *             (free a random live block, malloc 16..1024 B in its place, write it), then 10 ms
 *             of sleep: a program that goes on working at a tenth of its peak.
 *   4 idle    --tail / 2 ms of nothing; the workers then free every block and exit.
 * What the curve shows: how much of the peak each allocator gives back to the system after the
 * free (phase 2), while the program keeps working (3) and once it idles (4). No allocator call
 * beyond malloc and free is made (no malloc_trim, no mallctl, no sa_trim): what an allocator
 * returns, it returns by itself.
 *
 * A sampler thread reads the resident pages of /proc/self/statm every --period ms (with open and
 * read into a stack buffer: nothing is allocated) into an mmap'ed array, with the time, the phase
 * and the bytes the workers hold live (asked-for sizes). The worker bookkeeping lives in mmap'ed
 * memory too: the only mallocs of the process (after start-up) are the workload's.
 *
 * Output: the samples as CSV (t_ms,rss_mib,live_mib,phase) to the file named last on the command
 * line; one line of key=value on stdout: peak_mib (largest sample), free_mib (the sample at the
 * end of phase 2), small_mib and end_mib (the last samples of phases 3 and 4), live_end_mib,
 * minflt and majflt (getrusage), blocks (mallocs in all), malloc_lib (the library that serves
 * malloc, by dladdr) and elapsed_s.
 * Self-checks (exit 1 with a message on stderr): no malloc returns NULL; before every free the
 * block still holds its pattern (its id in the first 8 bytes, the id's low byte in the rest
 * written, the last byte always); mallocs and frees add up (every block freed at the end).
 * --expect LIB: exit 77 (skipped) when malloc is not served by a library whose name contains LIB
 * (an LD_PRELOAD that did not load).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "lib_of.h"

#define WORKERS	    2
#define MAX_SAMPLES (1u << 20)
#define ROUND_OPS   2000 /* replacements per round of phase 3 */
#define ROUND_SLEEP 10	 /* ms of sleep after each round of phase 3 */

enum phase { PH_GROW, PH_HOLD, PH_FREE, PH_SMALL, PH_IDLE, PH_DONE };

static struct {
	size_t peak; /* bytes, both workers together */
	unsigned hold_ms, tail_ms, period_ms;
} cfg = {128u << 20, 200, 4000, 5};

struct sample {
	uint32_t t_ms10; /* tenths of ms since start */
	uint32_t rss_kib;
	uint32_t live_kib;
	uint32_t phase;
};

struct block {
	unsigned char *p;
	size_t size;
	uint64_t id;
};

struct worker {
	pthread_t thread;
	int index;
	struct block *blocks; /* mmap'ed */
	size_t nblocks, cap;
	_Atomic size_t live; /* bytes asked for by the live blocks */
	uint64_t mallocs, frees, next_id, rng;
	const char *error; /* a failed self-check */
};

static struct worker workers[WORKERS];
static _Atomic int phase = PH_GROW;
static _Atomic int sampler_stop;
static struct sample *samples;
static _Atomic size_t nsamples;
static uint64_t t0_ns;
static pthread_barrier_t barrier; /* workers and main, between phases */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static size_t grow_size(uint64_t x)
{
	const uint32_t r = (uint32_t)(x % 1000), u = (uint32_t)(x >> 32);
	if (r < 800)
		return 16 + u % (256 - 16 + 1);
	if (r < 970)
		return 257 + u % (4096 - 257 + 1);
	if (r < 999)
		return 4097 + u % ((32u << 10) - 4097 + 1);
	return (64u << 10) + u % ((448u << 10) + 1);
}

/* resident KiB from /proc/self/statm, without allocating; 0 on failure */
static uint32_t rss_kib(void)
{
	char buf[128];
	const int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	const ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	const char *s = strchr(buf, ' ');
	if (!s)
		return 0;
	const unsigned long pages = strtoul(s + 1, NULL, 10);
	return (uint32_t)(pages * (unsigned long)sysconf(_SC_PAGESIZE) / 1024);
}

static void *sampler(void *arg)
{
	(void)arg;
	while (!atomic_load(&sampler_stop)) {
		const size_t i = atomic_load(&nsamples);
		if (i < MAX_SAMPLES) {
			size_t live = 0;
			for (int w = 0; w < WORKERS; w++)
				live += atomic_load_explicit(&workers[w].live,
							     memory_order_relaxed);
			samples[i] = (struct sample){
				.t_ms10 = (uint32_t)((now_ns() - t0_ns) / 100000u),
				.rss_kib = rss_kib(),
				.live_kib = (uint32_t)(live / 1024),
				.phase = (uint32_t)atomic_load(&phase),
			};
			atomic_store(&nsamples, i + 1);
		}
		sleep_ms(cfg.period_ms);
	}
	return NULL;
}

static void fill(struct block *b)
{
	memset(b->p, (int)(b->id & 0xff), b->size);
	if (b->size >= sizeof(uint64_t))
		memcpy(b->p, &b->id, sizeof(uint64_t));
}

static int intact(const struct block *b)
{
	uint64_t id;
	if (b->size >= sizeof(uint64_t)) {
		memcpy(&id, b->p, sizeof(id));
		if (id != b->id)
			return 0;
	}
	return b->p[b->size - 1] == (unsigned char)(b->id & 0xff);
}

static int new_block(struct worker *w, struct block *b, size_t size)
{
	b->p = malloc(size);
	if (!b->p) {
		w->error = "malloc returned NULL";
		return 0;
	}
	b->size = size;
	b->id = w->next_id++;
	w->mallocs++;
	fill(b);
	atomic_fetch_add_explicit(&w->live, size, memory_order_relaxed);
	return 1;
}

static int free_block(struct worker *w, struct block *b)
{
	if (!intact(b)) {
		w->error =
			"a live block lost its contents (memory handed out twice or overwritten)";
		return 0;
	}
	free(b->p);
	b->p = NULL;
	w->frees++;
	atomic_fetch_sub_explicit(&w->live, b->size, memory_order_relaxed);
	return 1;
}

static void *work(void *arg)
{
	struct worker *w = arg;
	const size_t share = cfg.peak / WORKERS;
	/* phase 0: grow to the share */
	size_t held = 0;
	while (held < share && !w->error) {
		if (w->nblocks == w->cap) {
			w->error = "block table full";
			break;
		}
		struct block *b = &w->blocks[w->nblocks];
		if (!new_block(w, b, grow_size(splitmix64(&w->rng))))
			break;
		held += b->size;
		w->nblocks++;
	}
	pthread_barrier_wait(&barrier); /* end of grow */
	pthread_barrier_wait(&barrier); /* end of hold */
	/* phase 2: free all but every tenth, in a shuffled order; the kept ones move to the front */
	size_t kept = 0;
	{
		size_t n = w->nblocks;
		for (size_t i = n; i > 1 && !w->error; i--) { /* Fisher-Yates */
			const size_t j = splitmix64(&w->rng) % i;
			const struct block t = w->blocks[i - 1];
			w->blocks[i - 1] = w->blocks[j];
			w->blocks[j] = t;
		}
		for (size_t i = 0; i < n && !w->error; i++) {
			if (i % 10 == 0)
				w->blocks[kept++] = w->blocks[i];
			else
				free_block(w, &w->blocks[i]);
		}
		w->nblocks = kept;
	}
	pthread_barrier_wait(&barrier); /* end of free */
	/* phase 3: small steady work on the tenth that is left */
	const uint64_t end = now_ns() + (uint64_t)(cfg.tail_ms / 2) * 1000000u;
	while (kept && !w->error && now_ns() < end) {
		for (int k = 0; k < ROUND_OPS && !w->error; k++) {
			const uint64_t x = splitmix64(&w->rng);
			struct block *b = &w->blocks[x % kept];
			if (free_block(w, b))
				new_block(w, b, 16 + (x >> 32) % (1024 - 16 + 1));
		}
		sleep_ms(ROUND_SLEEP);
	}
	pthread_barrier_wait(&barrier); /* end of small */
	pthread_barrier_wait(&barrier); /* end of idle */
	for (size_t i = 0; i < w->nblocks && !w->error; i++)
		free_block(w, &w->blocks[i]);
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: rss_bench [--peak MiB] [--hold ms] [--tail ms] [--period ms] "
			"[--expect LIB] OUT.csv\n");
	exit(2);
}

static double mib_of(uint32_t kib)
{
	return kib / 1024.0;
}

int main(int argc, char **argv)
{
	const char *expect = NULL, *out = NULL;
	for (int i = 1; i < argc; i++) {
		if (i + 1 < argc && !strcmp(argv[i], "--peak"))
			cfg.peak = strtoul(argv[++i], NULL, 10) << 20;
		else if (i + 1 < argc && !strcmp(argv[i], "--hold"))
			cfg.hold_ms = (unsigned)strtoul(argv[++i], NULL, 10);
		else if (i + 1 < argc && !strcmp(argv[i], "--tail"))
			cfg.tail_ms = (unsigned)strtoul(argv[++i], NULL, 10);
		else if (i + 1 < argc && !strcmp(argv[i], "--period"))
			cfg.period_ms = (unsigned)strtoul(argv[++i], NULL, 10);
		else if (i + 1 < argc && !strcmp(argv[i], "--expect"))
			expect = argv[++i];
		else if (argv[i][0] != '-' && !out)
			out = argv[i];
		else
			usage();
	}
	if (!out || cfg.peak < (1u << 20) || !cfg.period_ms)
		usage();
	/* the library serving malloc: resolved through the global scope, as the program's calls are */
	const char *mlib = lib_of(dlsym(RTLD_DEFAULT, "malloc"));
	if (expect && *expect && !strstr(mlib, expect)) {
		fprintf(stderr, "rss_bench: malloc is served by %s, not %s (preload not loaded?)\n",
			mlib, expect);
		return 77;
	}
	const int csv = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (csv < 0) {
		perror(out);
		return 2;
	}
	samples = mmap(NULL, MAX_SAMPLES * sizeof(*samples), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (samples == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	for (int w = 0; w < WORKERS; w++) {
		workers[w].index = w;
		workers[w].rng = 0x5eedf00dcafe0000ull + (uint64_t)w * 0x632be59bd9b4e019ull;
		workers[w].cap = cfg.peak / WORKERS / 16 + 16; /* smallest block: 16 B */
		workers[w].blocks =
			mmap(NULL, workers[w].cap * sizeof(struct block), PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (workers[w].blocks == MAP_FAILED) {
			perror("mmap");
			return 2;
		}
	}
	pthread_barrier_init(&barrier, NULL, WORKERS + 1);
	t0_ns = now_ns();
	pthread_t st;
	if (pthread_create(&st, NULL, sampler, NULL) != 0) {
		fprintf(stderr, "rss_bench: pthread_create failed\n");
		return 2;
	}
	for (int w = 0; w < WORKERS; w++)
		if (pthread_create(&workers[w].thread, NULL, work, &workers[w]) != 0) {
			fprintf(stderr, "rss_bench: pthread_create failed\n");
			return 2;
		}
	uint32_t at_free = 0, at_small = 0;
	pthread_barrier_wait(&barrier); /* grown */
	atomic_store(&phase, PH_HOLD);
	sleep_ms(cfg.hold_ms);
	atomic_store(&phase, PH_FREE);
	pthread_barrier_wait(&barrier); /* start freeing */
	pthread_barrier_wait(&barrier); /* freed */
	at_free = rss_kib();
	atomic_store(&phase, PH_SMALL);
	pthread_barrier_wait(&barrier); /* small work done */
	at_small = rss_kib();
	atomic_store(&phase, PH_IDLE);
	sleep_ms(cfg.tail_ms / 2);
	const uint32_t at_end = rss_kib();
	size_t live_end = 0;
	for (int w = 0; w < WORKERS; w++)
		live_end += atomic_load(&workers[w].live);
	atomic_store(&phase, PH_DONE);
	pthread_barrier_wait(&barrier); /* workers free the rest */
	uint64_t mallocs = 0, frees = 0;
	const char *error = NULL;
	for (int w = 0; w < WORKERS; w++) {
		pthread_join(workers[w].thread, NULL);
		mallocs += workers[w].mallocs;
		frees += workers[w].frees;
		if (workers[w].error)
			error = workers[w].error;
	}
	atomic_store(&sampler_stop, 1);
	pthread_join(st, NULL);
	const double elapsed = (double)(now_ns() - t0_ns) / 1e9;
	if (!error && mallocs != frees)
		error = "mallocs and frees do not add up";

	/* the CSV, and the peak from the samples */
	uint32_t peak = 0;
	const size_t n = atomic_load(&nsamples);
	dprintf(csv, "t_ms,rss_mib,live_mib,phase\n");
	for (size_t i = 0; i < n; i++) {
		const struct sample *s = &samples[i];
		if (s->phase == PH_DONE)
			break;
		if (s->rss_kib > peak)
			peak = s->rss_kib;
		dprintf(csv, "%.1f,%.2f,%.2f,%u\n", s->t_ms10 / 10.0, mib_of(s->rss_kib),
			mib_of(s->live_kib), s->phase);
	}
	close(csv);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("peak_mib=%.1f free_mib=%.1f small_mib=%.1f end_mib=%.1f live_end_mib=%.1f "
	       "minflt=%ld majflt=%ld blocks=%llu samples=%zu malloc_lib=%s elapsed_s=%.2f\n",
	       mib_of(peak), mib_of(at_free), mib_of(at_small), mib_of(at_end),
	       (double)live_end / (1024.0 * 1024.0), ru.ru_minflt, ru.ru_majflt,
	       (unsigned long long)mallocs, n, mlib, elapsed);
	if (error) {
		fprintf(stderr, "rss_bench: FAILED: %s\n", error);
		return 1;
	}
	return 0;
}
