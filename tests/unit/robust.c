/*
 * tests/unit/robust.c — bad and unusual input that once crashed or read the program's data as
 * metadata (issue 16, "found by trying").
 *
 *   test_huge_block_interior_pointers  a huge block's bytes never double as a unit record: for
 *        blocks whose first bytes are filled with 0x41, every interior pointer of the first
 *        4 MiB region (one per 64 KiB unit) gives sa_object_node -1 or a real node, and a free,
 *        realloc or usable-size of it is reported and ignored (no crash, block intact)
 *   test_malloc_from_handler_during_start  a process whose first allocation starts sheafalloc
 *        while a 50 us SIGALRM handler allocates too: no crash (the handler's allocations come
 *        from the bootstrap arena while the size classes do not exist yet), 30 fresh processes
 */
#include "sa_test.h"

#include <signal.h>
#include <spawn.h>
#include <sys/time.h>

extern char **environ;

#define MiB(x) ((size_t)(x) << 20)

static void test_huge_block_interior_pointers(void **state)
{
	(void)state;
	size_t sizes[] = {MiB(4) - 8192, MiB(4) - 12288, MiB(3), MiB(4) + 4096};
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		size_t size = sizes[k];
		unsigned char *p = sa_malloc(size);
		assert_non_null(p);
		memset(p, 0x41, size);
		uintptr_t seg = (uintptr_t)p & ~(SA_SEG_SIZE - 1);
		struct capture cap;
		capture_begin(&cap);
		for (unsigned u = 0; u < SA_UNITS_PER_SEG; u++) {
			unsigned char *q = (unsigned char *)seg + (size_t)u * SA_UNIT_SIZE + 128;
			if (q < p || q >= p + size)
				continue; /* not inside the block */
			int node = sa_object_node(q);
			assert_true(node == -1 || (node >= 0 && node < sa_numa_nodes()));
			if (q == p)
				continue;
			sa_free(q); /* reported and ignored */
			errno = 0;
			assert_null(sa_realloc(q, 100));
			assert_int_equal(errno, EINVAL);
			assert_true(sa_malloc_usable_size(q) == 0 ||
				    sa_malloc_usable_size(q) >= size - (size_t)(q - p));
		}
		const char *err = capture_end(&cap);
		assert_true(count_substr(err, "into a block") +
				    count_substr(err, "not an allocated") +
				    count_substr(err, "not a sheafalloc") >
			    0);
		capture_free(&cap);
		for (size_t i = 0; i < size; i++) /* nothing was written into the block */
			if (p[i] != 0x41)
				fail_msg("size %zu: byte %zu changed to %#x", size, i, p[i]);
		sa_free(p);
	}
}

/* ------------------------------------------------------------------ signals at start-up ----- */
static void alloc_in_handler(int sig)
{
	(void)sig;
	int saved = errno;
	void *p = sa_malloc(32);
	void *q = sa_malloc(3000);
	sa_free(q);
	sa_free(p);
	errno = saved;
}

/* The child: the very first sheafalloc call of the process runs with the timer armed. */
static int handler_child(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = alloc_in_handler;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	struct itimerval it = {{0, 50}, {0, 50}};
	setitimer(ITIMER_REAL, &it, NULL);
	for (int i = 0; i < 2000; i++) {
		void *p = sa_malloc((size_t)(i % 64) * 16 + 1);
		if (!p)
			return 3;
		sa_free(p);
	}
	struct itimerval off = {{0, 0}, {0, 0}};
	setitimer(ITIMER_REAL, &off, NULL);
	return 0;
}

static void test_malloc_from_handler_during_start(void **state)
{
	(void)state;
	if (running_on_valgrind())
		skip();
	for (int run = 0; run < 30; run++) {
		pid_t pid;
		char *argv[] = {"robust", "--handler-child", NULL};
		assert_int_equal(posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ), 0);
		int st = 0;
		assert_int_equal(waitpid(pid, &st, 0), pid);
		if (WIFSIGNALED(st))
			fail_msg("run %d: the child died of signal %d", run, WTERMSIG(st));
		assert_int_equal(WEXITSTATUS(st), 0);
	}
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--handler-child") == 0)
		return handler_child();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_huge_block_interior_pointers),
		cmocka_unit_test(test_malloc_from_handler_during_start),
	};
	return cmocka_run_group_tests_name("robust", tests, NULL, NULL);
}
