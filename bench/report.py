#!/usr/bin/env python3
"""bench/report.py — the markdown table of one core_bench run, from google-benchmark's JSON.

usage: report.py [--pin CPUS] RUN_DIR
RUN_DIR holds <allocator>.json (google-benchmark --benchmark_out, run with repetitions and
--benchmark_report_aggregates_only) and <allocator>.rss (peak RSS in KiB, /usr/bin/time -f %M),
one pair per process, as `make -C bench run` writes them. Prints markdown on stdout.

Every number is the median over the repetitions of google-benchmark's real time. Ratios are
time / baseline time: 1.00x is the baseline, below 1 is faster than it.
"""
import argparse
import json
import os
import sys

ORDER = ["sheafalloc", "jemalloc", "jemalloc-malloc", "mimalloc", "tcmalloc", "glibc", "harness"]
BASELINES = ["jemalloc", "mimalloc"]
UNIT_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}


def load(run_dir):
    """{allocator: {"rss": KiB or None, "ctx": context, "runs": {run_name: {aggregate: entry}}}}"""
    out = {}
    for f in sorted(os.listdir(run_dir)):
        if not f.endswith(".json"):
            continue
        alloc = f[: -len(".json")]
        with open(os.path.join(run_dir, f)) as fh:
            d = json.load(fh)
        runs = {}
        for b in d.get("benchmarks", []):
            agg = b.get("aggregate_name", "iteration" if b.get("run_type") == "iteration" else "")
            runs.setdefault(b["run_name"], {})[agg] = b
        rss = None
        try:
            with open(os.path.join(run_dir, alloc + ".rss")) as fh:
                rss = int(fh.read().split()[-1])
        except (OSError, ValueError, IndexError):
            pass
        out[alloc] = {"rss": rss, "ctx": d.get("context", {}), "runs": runs}
    return out


def entry(runs, name, agg="median"):
    r = runs.get(name)
    if not r:
        return None
    return r.get(agg) or r.get("iteration")


def ns(e):
    """Median real time of one iteration in ns, or None (missing, or the run failed)."""
    if not e or e.get("error_occurred"):
        return None
    return e["real_time"] * UNIT_NS.get(e.get("time_unit", "ns"), 1.0)


def shapes(alloc, runs):
    """{shape: (ns per object, cv %, noisy)} for the columns of the table; None where missing."""
    def cv(name):
        e = entry(runs, name, "cv")
        return None if not e or e.get("error_occurred") else 100.0 * e["real_time"]

    def noisy(name):
        """Spread over 10% across repetitions, or (one thread) a median CPU time under 90% of
        the real time: the process was not running for part of the timed loop."""
        c, e = cv(name), entry(runs, name)
        if c is not None and c > 10.0:
            return True
        return bool(e and e.get("threads", 1) == 1 and not e.get("error_occurred")
                    and e["cpu_time"] < 0.9 * e["real_time"])

    res = {}
    pair = f"{alloc}/pair"
    res["pair"] = (ns(entry(runs, pair)), cv(pair), noisy(pair))
    batch = f"{alloc}/batch"
    e = entry(runs, batch)
    t = ns(e)
    res["batch"] = (t / e.get("objs_per_iter", 1000.0) if t is not None else None, cv(batch),
                    noisy(batch))
    for threads in (1, 2):
        name = f"{alloc}/pair_mt/real_time/threads:{threads}"
        e = entry(runs, name)
        t = ns(e)
        # Threaded real time is wall time / all threads' iterations: times threads, it is what one
        # pair costs one thread (equal to the 1-thread number when the threads scale perfectly).
        res[f"mt{threads}"] = (t * threads if t is not None else None, cv(name), noisy(name))
    return res


def fmt_ns(v, noisy=False):
    if v is None:
        return "—"
    return (f"{v:.2f}" if v < 100 else f"{v:.0f}") + (" †" if noisy else "")


def fmt_ratio(v, base):
    if v is None or base is None or base == 0:
        return "—"
    return f"{v / base:.2f}x"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pin", default="", help="the taskset CPU list the run used, if any")
    ap.add_argument("run_dir")
    args = ap.parse_args()
    data = load(args.run_dir)
    if not data:
        sys.exit(f"report.py: no *.json in {args.run_dir}")
    allocs = [a for a in ORDER if a in data] + sorted(a for a in data if a not in ORDER)
    table = {a: shapes(a, data[a]["runs"]) for a in allocs}
    ctx = min((d["ctx"] for d in data.values()), key=lambda c: c.get("date", ""))  # the first

    cols = [("pair", "pair ns"), ("batch", "batch ns/obj"), ("mt2", "2 threads ns/pair/thread")]
    head = ["allocator"]
    for _, title in cols:
        head += [title] + [f"×{b}" for b in BASELINES]
    head += ["2T/1T", "worst cv", "peak RSS MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|"]
    for a in allocs:
        row = [a]
        for key, _ in cols:
            v, _, noisy = table[a][key]
            row.append(fmt_ns(v, noisy))
            for b in BASELINES:
                base = table[b][key][0] if b in table else None
                row.append(fmt_ratio(v, base) if a != "harness" else "")
        one, two = table[a]["mt1"][0], table[a]["mt2"][0]
        row.append(f"{two / one:.2f}" if one and two else "—")
        cvs = [c for _, c, _ in table[a].values() if c is not None]
        row.append(f"{max(cvs):.1f}%" if cvs else "—")
        rss = data[a]["rss"]
        row.append(f"{rss / 1024:.1f}" if rss else "—")
        lines.append("| " + " | ".join(row) + " |")

    out = ["## core_bench: one 64-byte object", ""]
    load_avg = ", ".join(f"{x:.2f}" for x in ctx.get("load_avg", []))
    out.append(
        f"{ctx.get('date', '?')} on {ctx.get('host_name', '?')}: {ctx.get('num_cpus', '?')} CPUs at "
        f"{ctx.get('mhz_per_cpu', '?')} MHz, load {load_avg or '?'}, "
        f"{'pinned to CPU ' + args.pin if args.pin else 'not pinned'}; google-benchmark library "
        f"built as {ctx.get('library_build_type', '?')}. One process per allocator."
    )
    out.append("")
    out += lines
    out.append("")
    out.append(
        "Median of the repetitions, google-benchmark real time. **pair**: one allocation and its "
        "free. **batch**: 1000 allocations then 1000 frees, per object. **2 threads**: pair on two "
        "threads, wall time per pair per thread (equals the 1-thread time when the threads scale; "
        "2T/1T is that ratio). ×jemalloc, ×mimalloc: time / that allocator's time in the same "
        "column, below 1.00x is faster. jemalloc is mallocx/dallocx (its general path); "
        "jemalloc-malloc is the same library's malloc/free (its fast path). worst cv: the largest "
        "coefficient of variation across the repetitions of the row's benchmarks. peak RSS: the "
        "whole process (/usr/bin/time %M), framework included; the harness row is that floor. "
        "harness pair: the loop alone, included in every pair number. †: noisy (cv over 10%, "
        "or CPU time under 90% of real time on one thread): rerun before drawing conclusions."
    )
    out.append("")
    out.append("Entry points (library, version; the library that serves the process's malloc; "
               "1-minute load average when the process started):")
    out.append("")
    errors = []
    for a in allocs:
        label = None
        for name, aggs in data[a]["runs"].items():
            for e in aggs.values():
                if e.get("error_occurred"):
                    errors.append(f"- {name}: {e.get('error_message', 'error')}")
                    break
            for e in aggs.values():
                label = label or e.get("label")
        load1 = data[a]["ctx"].get("load_avg", [None])[0]
        load1 = f"{load1:.2f}" if load1 is not None else "?"
        out.append(f"- {a}: {label or '—'}; load {load1}")
    if errors:
        out += ["", "Failed runs:", ""] + sorted(set(errors))
    print("\n".join(out))


if __name__ == "__main__":
    main()
