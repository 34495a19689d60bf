/*
 * bench/shim.h — the C face of google-benchmark (bench/shim.cc), so benchmark bodies are plain C.
 *
 * A benchmark binary is one C file that defines the table sab_benches[] and links shim.cc, which
 * owns main(): it registers every row with google-benchmark and runs it. google-benchmark owns
 * everything else (iteration counts, timing, repetitions, aggregates, console and JSON output,
 * --benchmark_filter and the other flags).
 *
 * A body looks like a google-benchmark body with the state behind an opaque pointer:
 *
 *	static void body(sab_state *st, const void *arg)
 *	{
 *		while (sab_keep_running_batch(st, 64))
 *			for (int i = 0; i < 64; i++) { ... sab_escape(p); ... }
 *		sab_set_items(st, sab_iterations(st));
 *	}
 *
 * Every sab_* call crosses into C++ once (no inlining across the boundary), so the per-iteration
 * loop is sab_keep_running_batch (one call per n iterations), not sab_keep_running (one per
 * iteration), wherever an iteration costs only nanoseconds.
 */
#ifndef SAB_SHIM_H
#define SAB_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sab_state sab_state; /* a benchmark::State; never dereferenced in C */

struct sab_bench {
	const char *name; /* "<group>/<shape>": what --benchmark_filter sees */
	void (*run)(sab_state *st, const void *arg); /* the body; arg is the row's arg */
	const void *arg;
	/* 0: one thread; N > 0: ThreadRange(1, N) (1, 2, 4, ... N); N < 0: exactly -N threads
	 * (Threads(-N)); SAB_SWEEP, SAB_SWEEP_EVEN: the thread sweep below. Threaded rows use
	 * UseRealTime(). */
	int max_threads;
};

/* The thread sweep of the scaling rows: 1, 2, 4, 8 threads and the machine's CPU count (the CPUs
 * this process may run on, sched_getaffinity), in increasing order without duplicates, so that a
 * large machine shows scaling and a small one runs 4 and 8 threads oversubscribed. _EVEN: the
 * same without 1 and with the CPU count rounded up to even (producer/consumer pairs). The CPU
 * count is capped at SAB_SWEEP_MAX. */
#define SAB_SWEEP      (-0x40000000)
#define SAB_SWEEP_EVEN (-0x40000001)
#define SAB_SWEEP_MAX  256

/* Defined by the benchmark's C file; sab_nbenches = number of rows. */
extern const struct sab_bench sab_benches[];
extern const size_t sab_nbenches;

int sab_keep_running(sab_state *st); /* state.KeepRunning() */
int sab_keep_running_batch(sab_state *st,
			   int64_t n);	      /* state.KeepRunningBatch(n): n iterations per true */
int64_t sab_iterations(sab_state *st);	      /* state.iterations(), after the loop */
int sab_thread_index(sab_state *st);	      /* state.thread_index() */
int sab_threads(sab_state *st);		      /* state.threads() */
void sab_set_items(sab_state *st, int64_t n); /* state.SetItemsProcessed(n): items_per_second */
void sab_pause(sab_state *st);		      /* state.PauseTiming() */
void sab_resume(sab_state *st);		      /* state.ResumeTiming() */
/* state.counters[name] = v, averaged over the threads of a threaded run (kAvgThreads). */
void sab_counter(sab_state *st, const char *name, double v);
void sab_label(sab_state *st, const char *label); /* state.SetLabel(label) */
/* state.SkipWithError(msg), then runs the (now empty) loop so threaded runs stay in step; the
 * body returns right after. The run shows up with "error_occurred" and msg in the output. */
void sab_skip(sab_state *st, const char *msg);

/* Makes p (and all memory) escape: the compiler must produce p and may not drop or merge the
 * stores before it or the call that made it. Costs no instruction. */
static inline __attribute__((always_inline)) void sab_escape(const void *p)
{
	__asm__ volatile("" : : "r"(p) : "memory");
}

#ifdef __cplusplus
}
#endif
#endif /* SAB_SHIM_H */
