/*
 * tests/preload/limit_preload.c — the memory limit through the malloc replacement
 * (SHEAFALLOC_OPTIONS=limit=64M under LD_PRELOAD=.../libsheafalloc_malloc.so).
 *
 * For each block size (1 KiB, 100 KiB: small and large blocks; 4 MiB: huge mappings) a child
 * process (this program exec'd again with limit=64M added to SHEAFALLOC_OPTIONS, so the
 * per-CPU mode of the run is kept) mallocs until malloc returns NULL: errno must be ENOMEM,
 * what it got must be at most the limit and at least a quarter of it, calloc of more than the
 * limit fails too, and nothing is printed (malloc fails quietly, as glibc's). Then it frees
 * everything and must get memory again: 32 MiB in blocks of the same size, then 32 MiB in
 * blocks of another size. The parent checks the child's exit status and that its stdout and
 * stderr are empty.
 *
 * Run as LD_PRELOAD=$PWD/build/libsheafalloc_malloc.so build/tests/preload/limit_preload
 * (tests/run.sh does). Nothing waits for time; a generous guard (300 s) catches a hang.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void *(*volatile f_malloc)(size_t) = malloc;
static void *(*volatile f_calloc)(size_t, size_t) = calloc;
static void (*volatile f_free)(void *) = free;

#define MiB(x)	  ((size_t)(x) << 20)
#define LIMIT	  MiB(64)
#define MAX_PTRS  (1u << 20)
#define GUARD_SEC 300

/* ------------------------------------------------------------------ the child -------------- */
/* Fill `bytes` with blocks of `size`; 0 if every malloc worked. */
static int fill(void **ptrs, size_t size, size_t bytes, size_t *n)
{
	*n = 0;
	while (*n * size < bytes) {
		char *p = f_malloc(size);
		if (!p)
			return -1;
		p[0] = 1;
		p[size - 1] = 2;
		ptrs[(*n)++] = p;
	}
	return 0;
}

/* Exit codes name the step that broke (the parent prints them). */
static int scenario(size_t size, size_t other)
{
	void **ptrs = mmap(NULL, MAX_PTRS * sizeof(void *), PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ptrs == MAP_FAILED)
		return 10;
	size_t n = 0;
	for (;;) {
		if (n == MAX_PTRS)
			return 11; /* no NULL */
		errno = 0;
		char *p = f_malloc(size);
		if (!p) {
			if (errno != ENOMEM)
				return 12;
			break;
		}
		p[0] = 1;
		p[size - 1] = 2;
		ptrs[n++] = p;
	}
	if (n * size < LIMIT / 4)
		return 13; /* something else than the limit stopped it */
	if (n * size > LIMIT)
		return 14; /* more than the limit */
	errno = 0;
	void *big = f_calloc(1, LIMIT * 2);
	if (big || errno != ENOMEM)
		return 15;
	for (size_t i = 0; i < n; i++)
		f_free(ptrs[i]);
	size_t m;
	if (fill(ptrs, size, MiB(32), &m))
		return 16; /* no memory again after the frees */
	for (size_t i = 0; i < m; i++)
		f_free(ptrs[i]);
	if (fill(ptrs, other, MiB(32), &m))
		return 17; /* another size after the frees */
	for (size_t i = 0; i < m; i++)
		f_free(ptrs[i]);
	return 0;
}

/* ------------------------------------------------------------------ the parent ------------- */
static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const char *const step_name[] = {
	[10] = "mmap of the pointer array",
	[11] = "a million blocks and no NULL",
	[12] = "NULL with an errno other than ENOMEM",
	[13] = "NULL before a quarter of the limit",
	[14] = "more blocks than the limit holds",
	[15] = "calloc of twice the limit did not fail with ENOMEM",
	[16] = "32 MiB of the same size after freeing everything failed",
	[17] = "32 MiB of another size after freeing everything failed",
};

static char self_path[4096] = "/proc/self/exe";

static void run_size(size_t size, size_t other)
{
	char opts[512], arg1[32], arg2[32];
	const char *o = getenv("SHEAFALLOC_OPTIONS");
	snprintf(opts, sizeof(opts), "%s%slimit=64M", o && *o ? o : "", o && *o ? "," : "");
	snprintf(arg1, sizeof(arg1), "%zu", size);
	snprintf(arg2, sizeof(arg2), "%zu", other);
	FILE *out = tmpfile();
	assert_non_null(out);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(fileno(out), 1);
		dup2(fileno(out), 2);
		setenv("SHEAFALLOC_OPTIONS", opts, 1);
		execl(self_path, "limit_preload", "--child", arg1, arg2, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	pid_t r;
	double deadline = now_s() + GUARD_SEC;
	while ((r = waitpid(pid, &st, WNOHANG)) == 0 && now_s() < deadline)
		usleep(10000);
	if (r == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
	}
	fflush(out);
	long len = ftell(out);
	char text[4096] = "";
	if (len > 0) {
		rewind(out);
		size_t got = fread(text, 1, sizeof(text) - 1, out);
		text[got] = 0;
	}
	fclose(out);
	int ok = r != 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
	if (r == 0)
		print_error("size %zu: no exit within %d s\n", size, GUARD_SEC);
	else if (WIFSIGNALED(st))
		print_error("size %zu: killed by signal %d\n", size, WTERMSIG(st));
	else if (WEXITSTATUS(st)) {
		int c = WEXITSTATUS(st);
		print_error("size %zu (SHEAFALLOC_OPTIONS=%s): step %d failed: %s\n", size, opts, c,
			    c < (int)(sizeof(step_name) / sizeof(step_name[0])) && step_name[c]
				    ? step_name[c]
				    : "?");
	}
	if (len > 0)
		print_error("size %zu: the program printed (malloc must fail quietly):\n%s\n", size,
			    text);
	assert_true(ok);
	assert_int_equal(len, 0);
}

static void test_small_1k(void **state)
{
	(void)state;
	run_size(1024, 100 << 10);
}

static void test_large_100k(void **state)
{
	(void)state;
	run_size(100 << 10, 1024);
}

static void test_huge_4m(void **state)
{
	(void)state;
	run_size(MiB(4), 100 << 10);
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "--child") == 0)
		return scenario(strtoull(argv[2], NULL, 10), strtoull(argv[3], NULL, 10));
	ssize_t sl = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
	if (sl > 0)
		self_path[sl] = 0;
	if (!getenv("LD_PRELOAD")) {
		fprintf(stderr, "limit_preload: run with LD_PRELOAD=.../libsheafalloc_malloc.so\n");
		return 1;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_small_1k),
		cmocka_unit_test(test_large_100k),
		cmocka_unit_test(test_huge_4m),
	};
	return cmocka_run_group_tests_name("limit_preload", tests, NULL, NULL);
}
