// bench/shim.cc — registers the C table sab_benches[] (bench/shim.h) with google-benchmark and
// runs google-benchmark's own main. Each sab_* function is one State member; nothing here times,
// repeats or prints anything itself. Generic: no benchmark knows it, no benchmark is known here.
#include "shim.h"

#include <benchmark/benchmark.h>
#include <sched.h>

#include <algorithm>
#include <vector>

static benchmark::State &S(sab_state *st)
{
	return *reinterpret_cast<benchmark::State *>(st);
}

extern "C" {
int sab_keep_running(sab_state *st)
{
	return S(st).KeepRunning();
}
int sab_keep_running_batch(sab_state *st, int64_t n)
{
	return S(st).KeepRunningBatch(n);
}
int64_t sab_iterations(sab_state *st)
{
	return S(st).iterations();
}
int sab_thread_index(sab_state *st)
{
	return S(st).thread_index();
}
int sab_threads(sab_state *st)
{
	return S(st).threads();
}
void sab_set_items(sab_state *st, int64_t n)
{
	S(st).SetItemsProcessed(n);
}
void sab_pause(sab_state *st)
{
	S(st).PauseTiming();
}
void sab_resume(sab_state *st)
{
	S(st).ResumeTiming();
}
void sab_counter(sab_state *st, const char *name, double v)
{
	S(st).counters[name] = benchmark::Counter(v, benchmark::Counter::kAvgThreads);
}
void sab_label(sab_state *st, const char *label)
{
	S(st).SetLabel(label);
}
void sab_skip(sab_state *st, const char *msg)
{
	S(st).SkipWithError(msg);
	while (S(st).KeepRunning()) {
	}
}
}

// The thread counts of SAB_SWEEP / SAB_SWEEP_EVEN (shim.h).
static std::vector<int> sweep(bool even)
{
	cpu_set_t set;
	int ncpu = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
	ncpu = std::min(std::max(ncpu, 1), SAB_SWEEP_MAX);
	if (even)
		ncpu += ncpu % 2;
	std::vector<int> v = {1, 2, 4, 8, ncpu};
	if (even)
		v.erase(v.begin());
	std::sort(v.begin(), v.end());
	v.erase(std::unique(v.begin(), v.end()), v.end());
	return v;
}

int main(int argc, char **argv)
{
	for (size_t i = 0; i < sab_nbenches; i++) {
		const sab_bench *b = &sab_benches[i];
		auto *r = benchmark::RegisterBenchmark(b->name, [b](benchmark::State &st) {
			b->run(reinterpret_cast<sab_state *>(&st), b->arg);
		});
		if (b->max_threads == SAB_SWEEP || b->max_threads == SAB_SWEEP_EVEN) {
			for (int n : sweep(b->max_threads == SAB_SWEEP_EVEN))
				r->Threads(n);
			r->UseRealTime();
		} else if (b->max_threads > 0)
			r->ThreadRange(1, b->max_threads)->UseRealTime();
		else if (b->max_threads < 0)
			r->Threads(-b->max_threads)->UseRealTime();
	}
	benchmark::Initialize(&argc, argv);
	if (benchmark::ReportUnrecognizedArguments(argc, argv))
		return 1;
	benchmark::RunSpecifiedBenchmarks();
	benchmark::Shutdown();
	return 0;
}
