/*
 * sheaf/rseq.c — which per-CPU mode runs, the thread's rseq area, and the remote fence
 * (docs/design.md §3; facts in shared/docs/research/rseq.md).
 *
 * Owns: sa_pcs_mode and sa_rseq_off (written once in sa_pcs_init_mode, before any cache exists,
 * read-only afterwards), the own rseq area (initial-exec TLS, registered lazily per thread when
 * glibc did not register one), the membarrier registration.
 *
 * Mode rules: glibc registered rseq (weak __rseq_size != 0) -> use its area through
 * __rseq_offset. Otherwise register our own area; if the kernel refuses (ENOSYS under valgrind
 * or seccomp) or SHEAFALLOC_OPTIONS=percpu=fallback, run the fallback. The sections then read
 * our own area, which stays unregistered with cpu_id == -1, so every section fails into the
 * slow path, which takes the slot's spinlock instead (sheaf/pcs.c). The mode never changes once
 * decided: mixing rseq and locks on one slot would be unsafe.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/membarrier.h>

#include "sheaf/pcs_inline.h"

struct sa_rseq_area {
	uint32_t cpu_id_start;
	int32_t cpu_id;
	uint64_t rseq_cs;
	uint32_t flags;
	uint32_t node_id;
	uint32_t mm_cid;
	uint32_t pad;
} __attribute__((aligned(32)));

/* -1: RSEQ_CPU_ID_UNINITIALIZED. Never registered in fallback mode. */
static __thread struct sa_rseq_area sa_own_area
	__attribute__((tls_model("initial-exec"))) = {.cpu_id = -1};

extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

long sa_rseq_off;
int sa_pcs_mode;
static char mode_str[128] = "undecided";
static int membarrier_state; /* 0 unknown, 1 registered, -1 unavailable */

static long own_off(void)
{
	return (long)((char *)&sa_own_area - (char *)__builtin_thread_pointer());
}

static int own_register(void)
{
	if (sa_own_area.cpu_id >= 0)
		return 0;
	long r = syscall(__NR_rseq, &sa_own_area, sizeof(sa_own_area), 0, SA_RSEQ_SIG);
	return r == 0 ? 0 : -errno;
}

/* The registration that membarrier(PRIVATE_EXPEDITED_RSEQ) needs. Made at start-up in the rseq
 * modes: in a process with one thread it costs microseconds, with several the kernel waits for
 * an RCU grace period (5-13 ms measured on this VM), which the first fence (a drain, a decay
 * pass) would otherwise pay in the middle of some allocation. A forked child keeps it. */
static void fence_register(void)
{
	if (__atomic_load_n(&membarrier_state, __ATOMIC_RELAXED) == 0) {
		long r = syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0,
				 0);
		__atomic_store_n(&membarrier_state, r == 0 ? 1 : -1, __ATOMIC_RELAXED);
	}
}

void sa_pcs_init_mode(void)
{
	if (sa_pcs_mode != SA_PCS_UNDECIDED)
		return;
	sa_rseq_off = own_off();
	if (sa_opt.percpu_fallback) {
		snprintf(mode_str, sizeof(mode_str),
			 "fallback: percpu=fallback in SHEAFALLOC_OPTIONS");
		sa_pcs_mode = SA_PCS_FALLBACK;
		return;
	}
	if (&__rseq_size != NULL && &__rseq_offset != NULL && __rseq_size != 0) {
		sa_rseq_off = __rseq_offset;
		snprintf(mode_str, sizeof(mode_str), "rseq");
		sa_pcs_mode = SA_PCS_RSEQ_GLIBC;
		fence_register();
		return;
	}
	int err = own_register();
	if (err == 0) {
		snprintf(mode_str, sizeof(mode_str), "rseq");
		sa_pcs_mode = SA_PCS_RSEQ_OWN;
		fence_register();
		return;
	}
	snprintf(mode_str, sizeof(mode_str), "fallback: rseq unavailable (%s)", strerror(-err));
	sa_pcs_mode = SA_PCS_FALLBACK;
}

/* Called when a section reported "unregistered". Returns 1 if the caller may retry the section. */
int sa_rseq_thread_ready(void)
{
	if (sa_pcs_mode != SA_PCS_RSEQ_OWN)
		return 0;
	return own_register() == 0;
}

SA_API const char *sa_percpu_mode(void)
{
	sa_ensure_init();
	return mode_str;
}

int sa_pcs_current_cpu(void)
{
	int cpu;
	if (sa_pcs_mode == SA_PCS_RSEQ_OWN && sa_own_area.cpu_id >= 0)
		cpu = sa_own_area.cpu_id;
	else
		cpu = sched_getcpu();
	if (cpu < 0 || cpu >= sa_nr_cpus)
		cpu = 0;
	return cpu;
}

/*
 * After this returns, every rseq section that was running when it was called has committed or
 * been aborted: sections started later see the stop flags stored before the call.
 * membarrier(PRIVATE_EXPEDITED_RSEQ) when the kernel has it; otherwise run on every CPU in turn
 * (a thread that was preempted inside a section aborts when it resumes).
 */
void sa_rseq_fence_all(void)
{
	fence_register();
	if (__atomic_load_n(&membarrier_state, __ATOMIC_RELAXED) == 1 &&
	    syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0)
		return;
	cpu_set_t old, one;
	if (sched_getaffinity(0, sizeof(old), &old) != 0)
		return;
	for (int cpu = 0; cpu < sa_nr_cpus && cpu < CPU_SETSIZE; cpu++) {
		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		if (sched_setaffinity(0, sizeof(one), &one) == 0)
			sched_yield();
	}
	sched_setaffinity(0, sizeof(old), &old);
}
