/*
 * tests/preload/fork_stdio.c — fork() while other threads use stdio must not deadlock, and the
 * child must work (it allocates, uses stdio and forks again).
 *
 * The scenario of glibc's tst-malloc-fork-deadlock, in our own words: threads that fork in a
 * loop; threads reading lines with getline() from pipes, so each holds its FILE lock while the
 * line buffer grows through realloc (lines from 10 bytes to 300 KiB: small classes and large
 * unit runs); a thread in fflush(NULL), which holds the stdio list lock while it takes each
 * FILE's lock. An allocator whose fork prepare handler takes its locks before glibc takes the
 * stdio list lock deadlocks here: forker holds the allocator lock and waits for the list lock,
 * the fflush thread holds the list lock and waits for a FILE lock, and the getline thread holds
 * that FILE lock and waits for the allocator lock in realloc.
 *
 * Bounded by work, not time: the scenario runs in a child process until its forkers have
 * completed FORKS forks (each child allocates, opens /dev/null with fopen, writes, forks a
 * grandchild that allocates, and exits 0). The test process only watches a progress counter in
 * shared memory (every completed fork, line and fflush moves it) and declares a deadlock when it
 * has not moved for STALL_SEC seconds, however slow or loaded the machine is.
 *
 * Run as LD_PRELOAD=$PWD/build/libsheafalloc_malloc.so build/tests/preload/fork_stdio
 * (tests/run.sh does); SA_PRELOAD_ALLOW_OTHER=1 runs it against the process's own malloc
 * (glibc's passes).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
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

static void *(*volatile f_malloc)(size_t) = malloc;
static void (*volatile f_free)(void *) = free;
static void *(*volatile f_realloc)(void *, size_t) = realloc;

#define FORKS	  200 /* completed forks the scenario needs */
#define FORKERS	  2
#define READERS	  2
#define STALL_SEC 60

struct shared {
	_Atomic unsigned long progress; /* moves with every fork, line and flush */
	_Atomic unsigned long forks;	/* completed forks (child exited 0) */
	_Atomic unsigned long lines;
	_Atomic unsigned long flushes;
	_Atomic unsigned long bad_children; /* a child that did not exit 0 */
};
static struct shared *sh;
static atomic_int stop;

static void moved(void)
{
	atomic_fetch_add(&sh->progress, 1);
}

static const size_t line_len[] = {10, 200, 3000, 40000, 300000, 90};
#define NLEN (sizeof(line_len) / sizeof(line_len[0]))

/* writes lines of every length into a pipe until stop */
static void *writer(void *arg)
{
	int fd = (int)(intptr_t)arg;
	size_t max = 300000 + 1;
	char *buf = f_malloc(max);
	if (!buf)
		abort();
	memset(buf, 'x', max);
	for (unsigned i = 0; !atomic_load(&stop); i++) {
		size_t n = line_len[i % NLEN];
		buf[n - 1] = '\n';
		for (size_t off = 0; off < n;) {
			ssize_t w = write(fd, buf + off, n - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				goto out;
			off += (size_t)w;
		}
		buf[n - 1] = 'x';
	}
out:
	close(fd);
	f_free(buf);
	return NULL;
}

/* getline holds the FILE lock while it grows its buffer through realloc */
static void *reader(void *arg)
{
	FILE *f = arg;
	char *line = NULL;
	size_t cap = 0;
	for (;;) {
		ssize_t n = getline(&line, &cap, f);
		if (n < 0)
			break;
		atomic_fetch_add(&sh->lines, 1);
		moved();
		/* start small again next time: every line reallocates its way up */
		free(line);
		line = NULL;
		cap = 0;
	}
	free(line);
	fclose(f);
	return NULL;
}

/* fflush(NULL) holds the stdio list lock while it takes each FILE's lock */
static void *flusher(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop)) {
		fflush(NULL);
		atomic_fetch_add(&sh->flushes, 1);
		moved();
	}
	return NULL;
}

/* what a child does: allocate, use stdio, fork again; 0 when all of it worked */
static int child_body(void)
{
	void *p[8];
	for (int i = 0; i < 8; i++) {
		p[i] = f_malloc((size_t)16 << (2 * i)); /* 16 B .. 256 KiB */
		if (!p[i])
			return 2;
		memset(p[i], i, 16);
	}
	p[0] = f_realloc(p[0], 100000);
	if (!p[0])
		return 3;
	FILE *f = fopen("/dev/null", "w"); /* the list lock must be free in the child */
	if (!f)
		return 4;
	fprintf(f, "child %d\n", (int)getpid());
	fclose(f);
	pid_t g = fork();
	if (g == 0) {
		void *q = f_malloc(5000);
		f_free(q);
		_exit(0);
	}
	if (g < 0)
		return 5;
	int st;
	while (waitpid(g, &st, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return 6;
	for (int i = 0; i < 8; i++)
		f_free(p[i]);
	return 0;
}

static void *forker(void *arg)
{
	(void)arg;
	while (atomic_load(&sh->forks) < FORKS) {
		void *keep = f_malloc(1000); /* the parent allocates around its forks too */
		pid_t pid = fork();
		if (pid == 0)
			_exit(child_body());
		f_free(keep);
		if (pid < 0) {
			if (errno == EAGAIN)
				continue;
			abort();
		}
		int st;
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			atomic_fetch_add(&sh->bad_children, 1);
		atomic_fetch_add(&sh->forks, 1);
		moved();
	}
	return NULL;
}

static int scenario(void)
{
	pthread_t w[READERS], r[READERS], fl, fk[FORKERS];
	for (int i = 0; i < READERS; i++) {
		int fds[2];
		if (pipe(fds))
			return 2;
		FILE *f = fdopen(fds[0], "r");
		if (!f)
			return 3;
		if (pthread_create(&r[i], NULL, reader, f) ||
		    pthread_create(&w[i], NULL, writer, (void *)(intptr_t)fds[1]))
			return 4;
	}
	if (pthread_create(&fl, NULL, flusher, NULL))
		return 5;
	for (int i = 0; i < FORKERS; i++)
		if (pthread_create(&fk[i], NULL, forker, NULL))
			return 6;
	for (int i = 0; i < FORKERS; i++)
		pthread_join(fk[i], NULL);
	atomic_store(&stop, 1);
	pthread_join(fl, NULL);
	for (int i = 0; i < READERS; i++) {
		pthread_join(w[i], NULL);
		pthread_join(r[i], NULL);
	}
	return 0;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void test_fork_beside_stdio(void **state)
{
	(void)state;
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(sh != MAP_FAILED);
	memset(sh, 0, sizeof(*sh));
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(scenario());
	unsigned long seen = 0;
	double last_move = now_s();
	int st = 0;
	pid_t r;
	while ((r = waitpid(pid, &st, WNOHANG)) == 0) {
		unsigned long p = atomic_load(&sh->progress);
		if (p != seen) {
			seen = p;
			last_move = now_s();
		} else if (now_s() - last_move > STALL_SEC) {
			break;
		}
		usleep(20000);
	}
	if (r == 0) {
		if (getenv("SA_TEST_KEEP_HUNG")) {
			print_error("hung scenario left running: pid %d\n", (int)pid);
			pause();
		}
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		fail_msg("deadlock: no progress for %d s after %lu forks, %lu lines, %lu flushes",
			 STALL_SEC, atomic_load(&sh->forks), atomic_load(&sh->lines),
			 atomic_load(&sh->flushes));
	}
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("scenario: %s %d", WIFSIGNALED(st) ? "killed by signal" : "exit status",
			 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	print_message("%lu forks, %lu lines, %lu flushes\n", atomic_load(&sh->forks),
		      atomic_load(&sh->lines), atomic_load(&sh->flushes));
	assert_true(atomic_load(&sh->forks) >= FORKS);
	assert_int_equal(atomic_load(&sh->bad_children), 0);
	munmap(sh, sizeof(*sh));
}

int main(void)
{
	if (!getenv("LD_PRELOAD") && !getenv("SA_PRELOAD_ALLOW_OTHER")) {
		fprintf(stderr, "fork_stdio: run with LD_PRELOAD=.../libsheafalloc_malloc.so\n");
		return 1;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fork_beside_stdio),
	};
	return cmocka_run_group_tests_name("fork_stdio", tests, NULL, NULL);
}
