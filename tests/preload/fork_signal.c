/*
 * tests/preload/fork_signal.c — a single-threaded program under the malloc replacement:
 * fork() from a signal handler that interrupts fork() or malloc/free, and quiet failure when
 * the address space runs out.
 *
 * Run as LD_PRELOAD=$PWD/build/libsheafalloc_malloc.so build/tests/preload/fork_signal (tests/run.sh
 * does). It must stay single-threaded: glibc's own malloc skips its fork locks in a process that
 * never created a thread, and so must a replacement, or a fork from a signal handler that
 * interrupted the outer fork (between our prepare and release handlers, alloc/init.c) or a
 * malloc/free holding a lock waits for a lock its own thread holds, forever (glibc's
 * tst-mallocfork). SA_PRELOAD_ALLOW_OTHER=1 runs it against glibc's malloc to check the
 * expectations.
 *
 * Fork from a signal handler, built to hold on any machine, fast or slow, idle or loaded. The
 * first version armed a periodic 200 us ITIMER_REAL whose handler forked and reaped a child:
 * wherever one such fork took longer than the period (a fresh, loaded 2-vCPU machine), the
 * signal was pending again when the handler returned and the main loop never ran again, a
 * livelock that depended only on the machine (glibc's malloc failed the same way). Now:
 *   - The main loop arms a ONE-SHOT timer just before each of its two phases, a burst of
 *     malloc/free calls and a fork() + reap (unless the last one is still pending); the
 *     handler forks, reaps its child and returns, and never re-arms. Every arming brings at
 *     most one signal, so the handler cannot starve the main loop however long its fork takes.
 *   - Each delay is drawn at random between 1 us and the measured duration of the phase it is
 *     armed for (a running average of that phase's wall time less the time spent in the
 *     handler), so the signal lands at any point of a fork (our prepare handler, the system
 *     call, the parent's release handler) or of a burst, at this machine's speed.
 *   - The main loop marks (volatile sig_atomic_t `where`) when it is inside fork(), malloc()
 *     or free(); the handler counts what it really interrupted.
 *   - It runs until counts are reached, not for a time: MAIN_FORKS forks of the main loop, and
 *     IN_FORK / IN_MALLOC / IN_FREE handler forks that interrupted a fork, a malloc and a free
 *     (about 1 s on an idle 2-vCPU machine). MAX_ITERS iterations at most: should the counts
 *     still be short then, it passes only if every kind of interruption happened at all, and
 *     prints the counts either way.
 *   - A deadlock is found by lack of progress, never by a total deadline: the scenario runs in
 *     a child process that bumps a counter in MAP_SHARED memory after every phase and every
 *     handler fork; the test process fails only when that counter has not moved for STALL_SEC
 *     seconds (then it kills the child and the grandchildren it was waiting for).
 * The library bug this catches: alloc/init.c's atfork_prepare taking its locks in a
 * single-threaded process or in a nested fork (its __libc_single_threaded / fork_depth early
 * return removed) deadlocks the first time a handler fork lands inside the outer fork, which
 * happens in the first iterations in every per-CPU mode: the test fails STALL_SEC seconds later.
 *
 * Quiet out of memory: malloc until RLIMIT_AS runs out for several sizes, NULL with ENOMEM,
 * nothing printed, allocation works again after the frees (same progress watch).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void *(*volatile f_malloc)(size_t) = malloc;
static void (*volatile f_free)(void *) = free;

#define STALL_SEC  60	  /* no progress for this long: deadlock */
#define MAIN_FORKS 1500	  /* forks of the main loop */
#define IN_FORK	   400	  /* handler forks that interrupted the main loop's fork() */
#define IN_MALLOC  150	  /* ... a malloc() */
#define IN_FREE	   150	  /* ... a free() */
#define MAX_ITERS  20000u /* main-loop iterations at most */
#ifndef SA_TEST_EXTRA_DELAY_US
#define SA_TEST_EXTRA_DELAY_US 0 /* -D4000: as on a machine with a coarse timer (tests the test) */
#endif

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ shared with the watcher - */
enum where { W_NONE, W_FORK, W_MALLOC, W_FREE, W_N };

struct shared {
	uint64_t progress;	      /* every phase and every handler fork moves it */
	uint64_t iters, main_forks;   /* main loop */
	uint64_t handler_forks;	      /* completed forks in the handler */
	uint64_t interrupted[W_N];    /* handler forks by where the main loop was */
	uint64_t fork_eagain;	      /* forks that failed with EAGAIN (retried or skipped) */
	uint64_t handler_fork_failed; /* a handler fork failed with another errno */
	int handler_fork_errno;
	pid_t child[2]; /* the main loop's, the handler's child while it runs (killed at a stall) */
	int in_handler; /* 1 + where the running handler's signal landed; 0: no handler runs */
};
static struct shared *sh; /* MAP_SHARED, set up by in_child */

static void bump(uint64_t *c)
{
	__atomic_fetch_add(c, 1, __ATOMIC_RELAXED); /* lock-free: async-signal-safe */
}

static uint64_t get(const uint64_t *c)
{
	return __atomic_load_n(c, __ATOMIC_RELAXED);
}

static void print_counts(const char *who)
{
	fprintf(stderr,
		"%s: %llu iterations, %llu main forks, %llu handler forks (interrupting fork %llu, "
		"malloc %llu, free %llu, elsewhere %llu), %llu EAGAIN\n",
		who, (unsigned long long)get(&sh->iters), (unsigned long long)get(&sh->main_forks),
		(unsigned long long)get(&sh->handler_forks),
		(unsigned long long)get(&sh->interrupted[W_FORK]),
		(unsigned long long)get(&sh->interrupted[W_MALLOC]),
		(unsigned long long)get(&sh->interrupted[W_FREE]),
		(unsigned long long)get(&sh->interrupted[W_NONE]),
		(unsigned long long)get(&sh->fork_eagain));
	static const char *const names[] = {"elsewhere", "a fork", "a malloc", "a free"};
	int h = __atomic_load_n(&sh->in_handler, __ATOMIC_RELAXED);
	if (h > 0 && h <= W_N)
		fprintf(stderr, "%s: a signal handler is running; its signal landed in %s\n", who,
			names[h - 1]);
}

/*
 * Run body in a child process while watching sh->progress; fails with `what` when the counter
 * has not moved for STALL_SEC seconds (a deadlock: the child and its registered children are
 * killed) or when the child does not exit 0 (storm: print the fork storm's counts then). No
 * total deadline.
 */
static void in_child(int (*body)(void), int storm, const char *what)
{
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(sh != MAP_FAILED);
	memset(sh, 0, sizeof(*sh));
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* dies with the test process (tests/run.sh's timeout, a debugger's kill) */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		_exit(body());
	}
	int st = 0;
	uint64_t last = get(&sh->progress);
	double last_move = now_s();
	for (;;) {
		pid_t w = waitpid(pid, &st, WNOHANG);
		if (w == pid)
			break;
		assert_int_equal(w, 0);
		uint64_t p = get(&sh->progress);
		double t = now_s();
		if (p != last) {
			last = p;
			last_move = t;
		} else if (t - last_move >= STALL_SEC) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			for (int i = 0; i < 2; i++) /* stuck children (no longer reaped by it) */
				if (sh->child[i] > 0)
					kill(sh->child[i], SIGKILL);
			if (storm)
				print_counts("at the stall");
			fail_msg("%s: no progress for %d s after %llu steps (deadlock)", what,
				 STALL_SEC, (unsigned long long)p);
		}
		usleep(20000);
	}
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		if (storm)
			print_counts("at the failure");
		fail_msg("%s: child %s %d", what,
			 WIFSIGNALED(st) ? "killed by signal" : "exit status",
			 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	}
}

/* ------------------------------------------------------------------ fork from a handler ----- */
static volatile sig_atomic_t where; /* what the main loop is inside right now */
static uint64_t handler_ns;	    /* nanoseconds spent in the handler so far */
static uint64_t now_ns(void);

#define ENTER(w)                                         \
	do {                                             \
		where = (w);                             \
		__atomic_signal_fence(__ATOMIC_SEQ_CST); \
	} while (0)
#define LEAVE()                                          \
	do {                                             \
		__atomic_signal_fence(__ATOMIC_SEQ_CST); \
		where = W_NONE;                          \
	} while (0)

static void reap(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
}

static void fork_in_handler(int sig)
{
	(void)sig;
	int saved = errno;
	int w = where;
	if (w < 0 || w >= W_N)
		w = W_NONE;
	__atomic_store_n(&sh->in_handler, 1 + w, __ATOMIC_RELAXED);
	uint64_t t0 = now_ns();
	pid_t pid = fork();
	if (pid == 0)
		_exit(0); /* only async-signal-safe calls in this child */
	if (pid > 0) {
		__atomic_store_n(&sh->child[1], pid, __ATOMIC_RELAXED);
		reap(pid);
		__atomic_store_n(&sh->child[1], 0, __ATOMIC_RELAXED);
		bump(&sh->handler_forks);
		bump(&sh->interrupted[w]);
	} else if (errno == EAGAIN) {
		bump(&sh->fork_eagain);
	} else {
		sh->handler_fork_errno = errno;
		bump(&sh->handler_fork_failed);
	}
	bump(&sh->progress);
	__atomic_store_n(&sh->in_handler, 0, __ATOMIC_RELAXED);
	__atomic_fetch_add(&handler_ns, now_ns() - t0, __ATOMIC_RELAXED);
	errno = saved;
}

static uint64_t rng;
static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* One SIGALRM after a random delay of 1 us .. about `expect` seconds (one-shot). Where the
 * last one has not fired yet it is left to land where it will: re-arming would cancel it, and
 * with a coarse timer (jiffies rather than high resolution) no signal would ever come. */
static int arm(double expect)
{
	struct itimerval it;
	if (getitimer(ITIMER_REAL, &it))
		return -1;
	if (it.it_value.tv_sec || it.it_value.tv_usec)
		return 0;
	long span = (long)(expect * 1e6) + 1;
	long us = 1 + (long)(rnd() % (uint64_t)span) + SA_TEST_EXTRA_DELAY_US;
	it = (struct itimerval){{0, 0}, {us / 1000000, us % 1000000}};
	return setitimer(ITIMER_REAL, &it, NULL);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts); /* async-signal-safe */
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A phase's start: wall clock and handler time. */
struct lap {
	uint64_t t, h;
};

static struct lap lap_start(void)
{
	return (struct lap){now_ns(), __atomic_load_n(&handler_ns, __ATOMIC_RELAXED)};
}

/* Running average (seconds) of a phase's duration without the handlers that ran inside it. */
static void learn(double *avg, struct lap l)
{
	uint64_t wall = now_ns() - l.t, h = __atomic_load_n(&handler_ns, __ATOMIC_RELAXED) - l.h;
	double t = (double)(wall > h ? wall - h : 0) * 1e-9;
	*avg = *avg == 0 ? t : 0.9 * *avg + 0.1 * t;
}

static int enough(void)
{
	return get(&sh->main_forks) >= MAIN_FORKS && get(&sh->interrupted[W_FORK]) >= IN_FORK &&
	       get(&sh->interrupted[W_MALLOC]) >= IN_MALLOC &&
	       get(&sh->interrupted[W_FREE]) >= IN_FREE;
}

static int fork_storm(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = fork_in_handler;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL))
		return 2;
	rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
	/* malloc/free bursts over every kind of block: small classes, large runs (64 KiB units,
	 * the pages lock), huge mappings (mmap) */
	static const size_t sizes[] = {16,   40,    100,   256,	   700,	   1500,
				       4000, 12000, 40000, 150000, 700000, 3u << 20};
	enum { NS = sizeof(sizes) / sizeof(sizes[0]), RING = 32, BURST = 96 };
	void *ring[RING] = {0};
	double burst_avg = 0, fork_avg = 0;
	unsigned k = 0; /* malloc/free calls so far */
	for (unsigned it = 0; it < MAX_ITERS && !enough(); it++) {
		/* phase 1: a burst of malloc and free, the signal somewhere inside */
		if (arm(burst_avg))
			return 3;
		struct lap l = lap_start();
		for (int i = 0; i < BURST; i++, k++) {
			unsigned slot = k % RING;
			if (ring[slot]) {
				ENTER(W_FREE);
				f_free(ring[slot]);
				LEAVE();
				ring[slot] = NULL;
			}
			size_t n = sizes[rnd() % NS];
			if (n > 100000 && rnd() % 4)
				n = sizes[rnd() % 6]; /* big blocks less often */
			ENTER(W_MALLOC);
			void *p = f_malloc(n);
			LEAVE();
			if (!p)
				return 4;
			*(volatile char *)p = 1;
			ring[slot] = p;
		}
		learn(&burst_avg, l);
		bump(&sh->progress);

		/* phase 2: fork, the signal somewhere inside it (prepare handler, the system call,
		 * the parent's release handler) */
		if (arm(fork_avg))
			return 3;
		l = lap_start();
		ENTER(W_FORK);
		pid_t pid = fork();
		LEAVE();
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL); /* dies with a storm killed at a stall */
			/* the child allocates too: no lock may be left held in it */
			void *q = f_malloc(100);
			f_free(q);
			_exit(q ? 0 : 1);
		}
		if (pid > 0)
			learn(&fork_avg, l);
		if (pid < 0 && errno != EAGAIN)
			return 5;
		if (pid < 0) {
			bump(&sh->fork_eagain);
			usleep(1000); /* out of processes for a moment: give them time to go */
		} else {
			int st;
			__atomic_store_n(&sh->child[0], pid, __ATOMIC_RELAXED);
			while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
				;
			__atomic_store_n(&sh->child[0], 0, __ATOMIC_RELAXED);
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
				return 6;
			bump(&sh->main_forks);
		}
		bump(&sh->iters);
		bump(&sh->progress);
	}
	struct itimerval off = {{0, 0}, {0, 0}};
	setitimer(ITIMER_REAL, &off, NULL);
	for (int i = 0; i < RING; i++)
		f_free(ring[i]);
	print_counts("fork_storm");
	if (get(&sh->handler_fork_failed)) {
		fprintf(stderr, "fork() in the signal handler failed: %s\n",
			strerror(sh->handler_fork_errno));
		return 7;
	}
	if (!enough()) {
		/* MAX_ITERS iterations and still short: a machine whose timer or fork behaves
		 * unusually. Each kind of interruption at least once, or the test has not tested. */
		fprintf(stderr, "fork_storm: counts not all reached after %u iterations\n",
			MAX_ITERS);
		if (!get(&sh->interrupted[W_FORK]) || !get(&sh->interrupted[W_MALLOC]) ||
		    !get(&sh->interrupted[W_FREE]) || get(&sh->main_forks) < MAIN_FORKS)
			return 8;
	}
	return 0;
}

static void test_fork_from_signal_handler(void **state)
{
	(void)state;
	in_child(fork_storm, 1,
		 "fork() from a SIGALRM handler that interrupts fork, malloc and free");
}

/* ------------------------------------------------------------------ quiet out of memory ----- */
static int exhaust(void)
{
	/* stderr into a file we read back: the malloc family must not print on failure */
	char path[] = "/tmp/sa_fork_signal_XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0)
		return 2;
	unlink(path);
	dup2(fd, 2);
	struct rlimit rl = {256ul << 20, 256ul << 20};
	if (setrlimit(RLIMIT_AS, &rl))
		return 3;
	enum { MAXP = 1 << 19 };
	static void *p[MAXP];
	size_t n = 0, sizes[] = {1000, 3000, 40000, 3 << 20}; /* each class runs out */
	int failed = 0;
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		while (n < MAXP) {
			errno = 0;
			void *q = f_malloc(sizes[k]);
			bump(&sh->progress);
			if (!q) {
				if (errno != ENOMEM)
					return 4;
				failed++;
				break;
			}
			p[n++] = q;
		}
	}
	for (size_t i = 0; i < n; i++)
		f_free(p[i]);
	/* after freeing, allocation works again */
	void *q = f_malloc(1000);
	if (!q)
		return 5;
	f_free(q);
	if (failed != (int)(sizeof(sizes) / sizeof(sizes[0])))
		return 6;
	char buf[256];
	ssize_t len = pread(fd, buf, sizeof(buf) - 1, 0);
	if (len != 0) {
		buf[len > 0 ? len : 0] = 0;
		dprintf(1, "stderr after out of memory: '%s'\n", buf);
		return 7;
	}
	return 0;
}

static void test_out_of_memory_is_quiet(void **state)
{
	(void)state;
	in_child(exhaust, 0, "malloc until RLIMIT_AS: NULL with ENOMEM, nothing on stderr");
}

int main(void)
{
	if (!getenv("LD_PRELOAD") && !getenv("SA_PRELOAD_ALLOW_OTHER")) {
		fprintf(stderr, "fork_signal: run with LD_PRELOAD=.../libsheafalloc_malloc.so\n");
		return 1;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fork_from_signal_handler),
		cmocka_unit_test(test_out_of_memory_is_quiet),
	};
	return cmocka_run_group_tests_name("fork_signal", tests, NULL, NULL);
}
