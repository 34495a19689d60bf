/*
 * tests/preload/fork_signal.c — a single-threaded program under the malloc replacement:
 * fork() from a signal handler that interrupts fork() or malloc, and quiet failure when the
 * address space runs out.
 *
 * Run as LD_PRELOAD=$PWD/build/libsheafalloc_malloc.so build/tests/preload/fork_signal (tests/run.sh
 * does). It must stay single-threaded: glibc's own malloc skips its fork locks in a process that
 * never created a thread, and so must a replacement, or a fork from a signal handler that
 * interrupted the outer fork's prepare handler waits for a lock its own thread holds.
 * SA_PRELOAD_ALLOW_OTHER=1 runs it against glibc's malloc to check the expectations.
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
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void *(*volatile f_malloc)(size_t) = malloc;
static void (*volatile f_free)(void *) = free;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Run body in a child; 0 if it exited 0 within `limit` seconds, else fails with `what`. */
static void in_child(int (*body)(void), double limit, const char *what)
{
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(body());
	int st = 0;
	pid_t w;
	double deadline = now_s() + limit;
	while ((w = waitpid(pid, &st, WNOHANG)) == 0 && now_s() < deadline)
		usleep(5000);
	if (w == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		fail_msg("%s: no exit within %.0f s (deadlock)", what, limit);
	}
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("%s: child %s %d", what,
			 WIFSIGNALED(st) ? "killed by signal" : "exit status",
			 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
}

/* ------------------------------------------------------------------ fork from a handler ----- */
static volatile sig_atomic_t handler_forks, handler_fork_failures;

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
	pid_t pid = fork();
	if (pid == 0)
		_exit(0);
	if (pid < 0)
		handler_fork_failures++;
	else
		reap(pid);
	handler_forks++;
	errno = saved;
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
	/* a signal every 200 us: it lands inside fork (our prepare and release handlers, glibc's
	 * fork) and inside malloc and free often */
	struct itimerval it = {{0, 200}, {0, 200}};
	if (setitimer(ITIMER_REAL, &it, NULL))
		return 3;
	double end = now_s() + 1.5;
	unsigned forks = 0;
	while (now_s() < end) {
		void *p[16];
		for (int i = 0; i < 16; i++) {
			p[i] = f_malloc((size_t)(i + 1) * 40);
			if (!p[i])
				return 4;
			memset(p[i], i, (size_t)(i + 1) * 40);
		}
		pid_t pid = fork();
		if (pid == 0) {
			/* the child allocates too: no lock may be left held in it */
			void *q = f_malloc(100);
			f_free(q);
			_exit(0);
		}
		if (pid < 0 && errno != EAGAIN)
			return 5;
		if (pid > 0)
			reap(pid);
		for (int i = 0; i < 16; i++)
			f_free(p[i]);
		forks++;
	}
	struct itimerval off = {{0, 0}, {0, 0}};
	setitimer(ITIMER_REAL, &off, NULL);
	fprintf(stderr, "fork_storm: %u forks, %d from the signal handler\n", forks,
		(int)handler_forks);
	return handler_forks > 0 && !handler_fork_failures ? 0 : 6;
}

static void test_fork_from_signal_handler(void **state)
{
	(void)state;
	for (int round = 0; round < 3; round++)
		in_child(fork_storm, 30, "fork() from a SIGALRM handler while the program forks");
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
	in_child(exhaust, 60, "malloc until RLIMIT_AS: NULL with ENOMEM, nothing on stderr");
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
