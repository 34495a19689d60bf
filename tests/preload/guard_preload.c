/*
 * tests/preload/guard_preload.c — debug=G through the malloc replacement (LD_PRELOAD=
 * .../libsheafalloc_malloc.so): a plain program's read or write after free of a 256 KiB block
 * or of an 8 MiB block (kept in the huge cache: five live ones make it keep a freed one) dies
 * of SIGSEGV at the access with SHEAFALLOC_OPTIONS=debug=G, and goes unnoticed without it;
 * realloc of a freed 256 KiB block is reported (SIGABRT), not a fault; and a program that
 * mallocs, reallocs, callocs and frees large and huge blocks with the letter set runs to the end
 * with its data intact.
 *
 * Each case is this program exec'd again with the letter added to the run's
 * SHEAFALLOC_OPTIONS (its per-CPU mode kept); the parent checks how it ended.
 * Run as LD_PRELOAD=$PWD/build/libsheafalloc_malloc.so build/tests/preload/guard_preload
 * (tests/run.sh does).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <malloc.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* through pointers: the compiler may not reason about the accesses after free */
static void *(*volatile f_malloc)(size_t) = malloc;
static void *(*volatile f_calloc)(size_t, size_t) = calloc;
static void *(*volatile f_realloc)(void *, size_t) = realloc;
static void (*volatile f_free)(void *) = free;

#define LARGE (256u << 10)
#define HUGE  (8u << 20)
#define NLIVE 5

static volatile unsigned char sink;

/* A program that uses large and huge blocks the ordinary way; 0 if its data stayed intact. */
static int workload(void)
{
	enum { N = 40 };
	unsigned char *b[N];
	size_t sz[N];
	for (int round = 0; round < 20; round++) {
		for (int i = 0; i < N; i++) {
			sz[i] = (size_t)(40u << 10) +
				(size_t)((i * 7919 + round * 104729) % 2048) * 1024u;
			b[i] = (i % 3) ? f_malloc(sz[i]) : f_calloc(1, sz[i]);
			if (!b[i])
				return 30;
			if (i % 3 == 0 && (b[i][0] || b[i][sz[i] - 1]))
				return 31; /* calloc of a reused run must be zero */
			memset(b[i], i, sz[i]);
		}
		for (int i = 0; i < N; i += 2) {
			size_t n = sz[i] * 3 / 2 + (size_t)round * 4096;
			unsigned char *r = f_realloc(b[i], n);
			if (!r)
				return 32;
			if (r[0] != i || r[sz[i] - 1] != i)
				return 33;
			memset(r, i, n);
			b[i] = r;
			sz[i] = n;
			if (malloc_usable_size(r) < n)
				return 34;
		}
		for (int i = 0; i < N; i++) {
			if (b[i][0] != i || b[i][sz[i] / 2] != i || b[i][sz[i] - 1] != i)
				return 35;
			f_free(b[i]);
		}
		if (round % 5 == 4)
			malloc_trim(0);
	}
	unsigned char *h[NLIVE + 1];
	for (int round = 0; round < 4; round++) {
		for (int i = 0; i <= NLIVE; i++) {
			h[i] = f_malloc(HUGE + (size_t)i * 65536);
			if (!h[i])
				return 36;
			memset(h[i], i + 1, 4096);
			h[i][HUGE - 1] = (unsigned char)(i + 1);
		}
		for (int i = 0; i <= NLIVE; i++) {
			if (h[i][0] != i + 1 || h[i][HUGE - 1] != i + 1)
				return 37;
			f_free(h[i]);
		}
	}
	return 0;
}

static int child(const char *what)
{
	if (strcmp(what, "workload") == 0)
		return workload();
	bool huge = strstr(what, "huge") != NULL;
	unsigned char *live[NLIVE] = {0};
	if (huge)
		for (int i = 0; i < NLIVE; i++)
			if (!(live[i] = f_malloc(HUGE)))
				return 20;
	size_t size = huge ? HUGE : LARGE;
	unsigned char *keep = f_malloc(size), *p = f_malloc(size);
	if (!keep || !p)
		return 21;
	memset(keep, 0x11, size);
	memset(p, 0x5a, size);
	f_free(p);
	if (strncmp(what, "read", 4) == 0)
		sink = p[size / 3];
	else if (strncmp(what, "write", 5) == 0)
		p[size / 3] = 1;
	else if (strncmp(what, "realloc", 7) == 0)
		p = f_realloc(p, size * 2); /* reported: abort */
	else
		return 22;
	for (size_t i = 0; i < size; i += 4096)
		if (keep[i] != 0x11)
			return 23;
	f_free(keep);
	for (int i = 0; i < NLIVE; i++)
		f_free(live[i]);
	return 0;
}

static char self_path[4096] = "/proc/self/exe";

/* Run case `what` with `letter` added to SHEAFALLOC_OPTIONS; the wait status, stderr in err. */
static int run_case(const char *what, const char *letter, char *err, size_t len)
{
	char opts[512];
	const char *o = getenv("SHEAFALLOC_OPTIONS");
	snprintf(opts, sizeof(opts), "%s%s%s", o && *o ? o : "", o && *o && *letter ? "," : "",
		 letter);
	FILE *out = tmpfile();
	assert_non_null(out);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(fileno(out), 2);
		setenv("SHEAFALLOC_OPTIONS", opts, 1);
		execl(self_path, "guard_preload", "--child", what, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	fflush(out);
	rewind(out);
	size_t got = fread(err, 1, len - 1, out);
	err[got] = 0;
	fclose(out);
	return st;
}

static const char *const uaf[] = {"read-large", "write-large", "read-huge", "write-huge"};

static void test_uaf_faults_with_letter(void **state)
{
	(void)state;
	char err[4096];
	for (unsigned i = 0; i < 4; i++) {
		int st = run_case(uaf[i], "debug=G", err, sizeof(err));
		if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGSEGV)
			fail_msg("%s with debug=G: status %#x, not SIGSEGV (exit 0: unnoticed); "
				 "stderr: %s",
				 uaf[i], st, err);
	}
}

static void test_uaf_unnoticed_without(void **state)
{
	(void)state;
	const char *o = getenv("SHEAFALLOC_OPTIONS");
	if (o && strstr(o, "debug="))
		skip();
	char err[4096];
	for (unsigned i = 0; i < 4; i++) {
		int st = run_case(uaf[i], "", err, sizeof(err));
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			fail_msg("%s without debug=G: status %#x, expected exit 0; stderr: %s",
				 uaf[i], st, err);
	}
}

static void test_realloc_of_freed_reported(void **state)
{
	(void)state;
	char err[4096];
	int st = run_case("realloc-large", "debug=G", err, sizeof(err));
	if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT || !strstr(err, "not an allocated block"))
		fail_msg("realloc of a freed block with debug=G: status %#x, stderr: %s", st, err);
}

static void test_workload_with_letter(void **state)
{
	(void)state;
	char err[4096];
	int st = run_case("workload", "debug=G", err, sizeof(err));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("workload with debug=G: status %#x (exit 30-37: the step that broke); "
			 "stderr: %s",
			 st, err);
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--child") == 0)
		return child(argv[2]);
	ssize_t sl = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
	if (sl > 0)
		self_path[sl] = 0;
	if (!getenv("LD_PRELOAD")) {
		fprintf(stderr, "guard_preload: run with LD_PRELOAD=.../libsheafalloc_malloc.so\n");
		return 1;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_uaf_faults_with_letter),
		cmocka_unit_test(test_uaf_unnoticed_without),
		cmocka_unit_test(test_realloc_of_freed_reported),
		cmocka_unit_test(test_workload_with_letter),
	};
	return cmocka_run_group_tests_name("guard_preload", tests, NULL, NULL);
}
