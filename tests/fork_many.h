/*
 * tests/fork_many.h — the fork storm shared by tests/stress/fork_many.c (the prefixed sa_malloc
 * family and caches, static library) and tests/preload/fork_many_preload.c (malloc under
 * LD_PRELOAD). Include after tests/sa_watch.h, with these defined:
 *   FM_MALLOC(n) FM_FREE(p) FM_REALLOC(p, n) FM_CALLOC(k, n) FM_MEMALIGN(pp, align, n)
 *   FM_WORKER_EXTRA(x)  one more operation for a worker thread (x: a random number)
 *   FM_CHILD_EXTRA(x)   one more thing for a fork child to do; returns 0 on success
 *
 * The scenario (run in a child of the test process by watch_run):
 *   - WORKERS threads allocate and free in a loop: small classes, large runs (32 KiB - 2 MiB),
 *     huge mappings (2 - 8 MiB), realloc, calloc, posix_memalign, every block patterned and
 *     checked before it is freed;
 *   - FORKERS threads fork concurrently in a loop. Each child (single-threaded: a copy of the
 *     forking thread) allocates and frees every kind of block, forks once more (the grandchild
 *     allocates and exits), reaps the grandchild and exits 0; the forking thread reaps the child
 *     and counts a completed fork (w->ctr[FM_FORKS], and w->progress).
 * It ends when opts->required forks have completed and (opts->seconds have passed or
 * opts->max forks are done): the count is the criterion, the seconds only allow more work.
 * Failure: any child or grandchild that does not exit 0 (a lock held at fork time shows as a
 * child that never exits), any corrupted block. A deadlock, in the parent's prepare handler or
 * in a child, shows as no completed fork for 60 s (tests/sa_watch.h), or at once where a child
 * waits for a mutex whose owner thread does not exist in it.
 */
#ifndef FORK_MANY_H
#define FORK_MANY_H

#include <pthread.h>
#include <sched.h>

#define FM_FORKERS 8
#define FM_WORKERS 3
#define FM_RING	   24

enum { FM_FORKS, FM_BAD, FM_EAGAIN, FM_WORKER_OPS, FM_GRANDCHILDREN, FM_CHILD_FAIL_CODE };

struct fm_opts {
	long required; /* forks that must complete */
	long max;      /* forks at most */
	double seconds;
};

static struct sa_watch *fm_w;
static atomic_int fm_stop;

static uint64_t fm_rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

struct fm_blk {
	unsigned char *p;
	size_t size;
	unsigned char stamp;
};

static void fm_stamp(struct fm_blk *b)
{
	size_t n = b->size < 48 ? b->size : 48;
	for (size_t i = 0; i < n; i++)
		b->p[i] = (unsigned char)(b->stamp + i);
	if (b->size >= 96)
		for (size_t i = b->size - 48; i < b->size; i++)
			b->p[i] = (unsigned char)(b->stamp ^ i);
}

static int fm_check(const struct fm_blk *b, size_t upto)
{
	size_t n = b->size < 48 ? b->size : 48;
	if (n > upto)
		n = upto;
	for (size_t i = 0; i < n; i++)
		if (b->p[i] != (unsigned char)(b->stamp + i))
			return 0;
	if (b->size >= 96 && upto >= b->size)
		for (size_t i = b->size - 48; i < b->size; i++)
			if (b->p[i] != (unsigned char)(b->stamp ^ i))
				return 0;
	return 1;
}

/* One block of a random kind; NULL only on failure. */
static void *fm_alloc(uint64_t *x, size_t *size)
{
	unsigned r = (unsigned)(fm_rnd(x) % 1000);
	size_t n;
	if (r < 880)
		n = 1 + fm_rnd(x) % 32768;
	else if (r < 995)
		n = 32769 + fm_rnd(x) % ((2u << 20) - 32768);
	else
		n = (2u << 20) + 1 + fm_rnd(x) % (6u << 20);
	*size = n;
	unsigned how = (unsigned)(fm_rnd(x) % 32);
	if (how == 0 && n <= 65536)
		return FM_CALLOC(1, n);
	if (how == 1) {
		void *p = NULL;
		size_t al = (size_t)1 << (4 + fm_rnd(x) % 13); /* 16 B .. 64 KiB */
		return FM_MEMALIGN(&p, al, n) == 0 ? p : NULL;
	}
	return FM_MALLOC(n);
}

static void *fm_worker(void *arg)
{
	uint64_t x = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull | 1;
	watch_thread_start(fm_w);
	struct fm_blk ring[FM_RING];
	memset(ring, 0, sizeof(ring));
	while (!atomic_load_explicit(&fm_stop, memory_order_relaxed)) {
		struct fm_blk *b = &ring[fm_rnd(&x) % FM_RING];
		if (b->p) {
			if (!fm_check(b, b->size))
				watch_fail(fm_w, "worker: block %p of %zu bytes corrupted", b->p,
					   b->size);
			if (fm_rnd(&x) % 16 == 0 && b->size <= (1u << 20)) {
				size_t ns = 1 + fm_rnd(&x) % (2 * b->size + 64);
				unsigned char *q = FM_REALLOC(b->p, ns);
				if (!q) {
					watch_fail(fm_w, "worker: realloc %zu -> %zu failed",
						   b->size, ns);
					continue;
				}
				b->p = q;
				if (!fm_check(b, ns))
					watch_fail(fm_w,
						   "worker: realloc %zu -> %zu lost the contents",
						   b->size, ns);
				b->size = ns;
				fm_stamp(b);
				continue;
			}
			FM_FREE(b->p);
			b->p = NULL;
		}
		b->p = fm_alloc(&x, &b->size);
		if (!b->p) {
			watch_fail(fm_w, "worker: allocation of %zu bytes failed", b->size);
			continue;
		}
		b->stamp = (unsigned char)fm_rnd(&x);
		fm_stamp(b);
		FM_WORKER_EXTRA(x);
		atomic_fetch_add_explicit(&fm_w->ctr[FM_WORKER_OPS], 1, memory_order_relaxed);
	}
	for (int i = 0; i < FM_RING; i++)
		FM_FREE(ring[i].p);
	return NULL;
}

/* In a fork child or grandchild: every kind of block, patterned, checked, freed. */
static int fm_use_everything(uint64_t x, int huge)
{
	static const size_t sizes[] = {1,     16,     48,      100,	 500,
				       1000,  3000,   8000,    20000,	 32768,
				       40000, 300000, 1500000, 2u << 20, 5u << 20};
	enum { N = sizeof(sizes) / sizeof(sizes[0]) };
	struct fm_blk b[N + 2];
	for (int i = 0; i < N; i++) {
		b[i].size = huge || sizes[i] <= (2u << 20) ? sizes[i] : 64;
		b[i].p = FM_MALLOC(b[i].size);
		if (!b[i].p)
			return 10 + i;
		b[i].stamp = (unsigned char)(x + (uint64_t)i);
		fm_stamp(&b[i]);
	}
	b[N].size = 10000;
	b[N].p = NULL;
	void *q = NULL;
	if (FM_MEMALIGN(&q, 4096, 10000) || ((uintptr_t)q & 4095))
		return 30;
	b[N].p = q;
	b[N].stamp = 7;
	fm_stamp(&b[N]);
	b[N + 1].size = 700;
	b[N + 1].p = FM_CALLOC(7, 100);
	if (!b[N + 1].p)
		return 31;
	for (int i = 0; i < 700; i++)
		if (b[N + 1].p[i])
			return 32;
	b[N + 1].stamp = 9;
	fm_stamp(&b[N + 1]);
	unsigned char *r = FM_REALLOC(b[3].p, 200000); /* small -> large */
	if (!r)
		return 33;
	b[3].p = r;
	if (!fm_check(&b[3], 100))
		return 34;
	b[3].size = 200000;
	fm_stamp(&b[3]);
	for (int i = 0; i < N + 2; i++) {
		if (!fm_check(&b[i], b[i].size))
			return 40 + i;
		FM_FREE(b[i].p);
	}
	return 0;
}

static int fm_child(uint64_t x)
{
	int rc = fm_use_everything(x, 1);
	if (rc)
		return rc;
	rc = FM_CHILD_EXTRA(x);
	if (rc)
		return rc;
	pid_t g = fork();
	if (g < 0)
		return errno == EAGAIN ? 0 : 60; /* out of processes: the child's part is done */
	if (g == 0) {
		int e = fm_use_everything(x ^ 0x55, 0);
		if (!e)
			atomic_fetch_add(&fm_w->ctr[FM_GRANDCHILDREN], 1);
		_exit(e ? 100 + e : 0);
	}
	int st;
	while (waitpid(g, &st, 0) < 0)
		if (errno != EINTR)
			return 61;
	if (!WIFEXITED(st))
		return 62;
	return WEXITSTATUS(st) ? 63 : 0;
}

static void *fm_forker(void *arg)
{
	uint64_t x = (uint64_t)(uintptr_t)arg * 0xD1B54A32D192ED03ull | 1;
	watch_thread_start(fm_w);
	while (!atomic_load(&fm_stop)) {
		fm_rnd(&x);
		pid_t pid = fork();
		if (pid == 0)
			_exit(fm_child(x));
		if (pid < 0) {
			if (errno != EAGAIN) {
				watch_fail(fm_w, "fork: %s", strerror(errno));
				atomic_fetch_add(&fm_w->ctr[FM_BAD], 1);
				break;
			}
			atomic_fetch_add(&fm_w->ctr[FM_EAGAIN], 1);
			sched_yield();
			continue;
		}
		int st;
		while (waitpid(pid, &st, 0) < 0)
			if (errno != EINTR)
				break;
		if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
			atomic_fetch_add(&fm_w->ctr[FM_FORKS], 1);
			watch_moved(fm_w);
		} else {
			atomic_fetch_add(&fm_w->ctr[FM_BAD], 1);
			atomic_store(&fm_w->ctr[FM_CHILD_FAIL_CODE],
				     WIFEXITED(st) ? (uint64_t)WEXITSTATUS(st)
						   : 1000u + (uint64_t)WTERMSIG(st));
			watch_fail(fm_w, "fork child %s %d",
				   WIFEXITED(st) ? "exit status" : "signal",
				   WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
		}
	}
	return NULL;
}

static int fm_scenario(struct sa_watch *w, void *arg)
{
	const struct fm_opts *o = arg;
	fm_w = w;
	pthread_t wk[FM_WORKERS], fk[FM_FORKERS];
	watch_step(w, "starting %d workers and %d forking threads", FM_WORKERS, FM_FORKERS);
	for (intptr_t i = 0; i < FM_WORKERS; i++)
		if (pthread_create(&wk[i], NULL, fm_worker, (void *)(i + 1)))
			return 2;
	for (intptr_t i = 0; i < FM_FORKERS; i++)
		if (pthread_create(&fk[i], NULL, fm_forker, (void *)(i + 1)))
			return 2;
	watch_step(w, "forking");
	double t0 = watch_now();
	for (;;) {
		long done = (long)atomic_load(&w->ctr[FM_FORKS]);
		if (atomic_load(&w->ctr[FM_BAD]) >= 3)
			break; /* enough evidence */
		if (done >= o->required && (done >= o->max || watch_now() - t0 >= o->seconds))
			break;
		usleep(10000);
	}
	atomic_store(&fm_stop, 1);
	watch_step(w, "stopping");
	for (int i = 0; i < FM_FORKERS; i++)
		pthread_join(fk[i], NULL);
	for (int i = 0; i < FM_WORKERS; i++)
		pthread_join(wk[i], NULL);
	printf("fork_many: %llu forks completed (%llu grandchildren) in %.1f s, %llu bad, %llu "
	       "EAGAIN, %llu worker operations\n",
	       (unsigned long long)atomic_load(&w->ctr[FM_FORKS]),
	       (unsigned long long)atomic_load(&w->ctr[FM_GRANDCHILDREN]), watch_now() - t0,
	       (unsigned long long)atomic_load(&w->ctr[FM_BAD]),
	       (unsigned long long)atomic_load(&w->ctr[FM_EAGAIN]),
	       (unsigned long long)atomic_load(&w->ctr[FM_WORKER_OPS]));
	fflush(stdout);
	if (atomic_load(&w->ctr[FM_BAD]) || atomic_load(&w->failures))
		return 1;
	return (long)atomic_load(&w->ctr[FM_FORKS]) >= o->required ? 0 : 3;
}

#endif
