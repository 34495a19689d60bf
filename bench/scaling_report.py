#!/usr/bin/env python3
"""bench/scaling_report.py — the markdown tables of one scaling run (throughput against threads).

usage: scaling_report.py [--pin CPUS] [--csv OUT.csv] RUN_DIR
RUN_DIR holds <allocator>.core.json and <allocator>.malloc.json (google-benchmark output of the
rows '<allocator>/scale/...' of core_bench and malloc_bench) and their .rss files, as the scaling
part of bench/Makefile writes them. Prints markdown on stdout; --csv also writes one line per
(shape, allocator, threads): total and per-thread throughput in millions of items per second.

Every number is the median over the repetitions (a run without repetitions: its only value) of
items_per_second, which google-benchmark sums over the threads of a run on real time: the total.
Per-thread is total / threads (prodcons: blocks moved per second / threads, producers and
consumers both counted).
"""
import argparse
import csv
import json
import os
import platform
import re

ORDER = ["sheafalloc", "jemalloc", "mimalloc", "tcmalloc", "glibc"]
BASE = "jemalloc"
SHAPES = [
    ("core/pair", "core_bench pair: one 64-byte object (sheafalloc: sa_cache_alloc/sa_cache_free on "
                  "one shared cache; jemalloc: mallocx/dallocx; the others malloc/free)"),
    ("malloc/pair/64", "malloc_bench pair: malloc(64) + free, each thread on its own"),
    ("malloc/batch/64", "malloc_bench batch: 1000 malloc(64), then 1000 free, each thread on its own"),
    ("malloc/mixed", "malloc_bench mixed: each thread its own ring of 10,000 live blocks of 16..4096 B"),
    ("malloc/prodcons", "malloc_bench prodcons: threads/2 producer→consumer pairs, every free remote"),
]
NAME = re.compile(r"^([^/]+)/scale/(.+?)/real_time/threads:(\d+)$")


def load(run_dir):
    """{(shape, alloc, threads): Mitems/s total}, {(shape, alloc, threads): error message}"""
    vals, errs = {}, {}
    for f in sorted(os.listdir(run_dir)):
        m = re.match(r"^(.+)\.(core|malloc)\.json$", f)
        if not m:
            continue
        part = m.group(2)
        with open(os.path.join(run_dir, f)) as fh:
            d = json.load(fh)
        seen = {}
        for b in d.get("benchmarks", []):
            n = NAME.match(b.get("run_name", b.get("name", "")))
            if not n:
                continue
            alloc, shape, threads = n.group(1), part + "/" + n.group(2), int(n.group(3))
            key = (shape, alloc, threads)
            if b.get("error_occurred"):
                errs[key] = b.get("error_message", "?")
                continue
            agg = b.get("aggregate_name", "")
            if b.get("run_type") == "aggregate" and agg != "median":
                continue
            ips = b.get("items_per_second")
            if ips is None:
                continue
            # a median wins over single runs; single runs (no repetitions): the last one
            if agg == "median" or seen.get(key) != "median":
                vals[key] = ips / 1e6
                seen[key] = agg or "iteration"
    return vals, errs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pin", default="")
    ap.add_argument("--csv", default="")
    ap.add_argument("run_dir")
    args = ap.parse_args()
    vals, errs = load(args.run_dir)
    allocs = sorted({a for (_, a, _) in list(vals) + list(errs)},
                    key=lambda a: (ORDER.index(a) if a in ORDER else len(ORDER), a))
    out = ["## scaling: throughput against threads", ""]
    ncpu = len(os.sched_getaffinity(0))
    out.append(f"{os.path.basename(os.path.normpath(args.run_dir))} on {platform.node()}: "
               f"{ncpu} CPUs, load {', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end, "
               f"{'pinned to CPU ' + args.pin if args.pin else 'not pinned'}. Rows above {ncpu} "
               "threads are oversubscribed: they should hold the total, not scale it.")
    rows = []
    for shape, what in SHAPES:
        threads = sorted({t for (s, _, t) in list(vals) + list(errs) if s == shape})
        if not threads:
            continue
        out += ["", f"### {shape}", "", what + ". Total M items/s (per thread), ×" + BASE + ":", ""]
        head = ["allocator"] + [f"{t} thr" for t in threads] + [f"×{BASE} at {t}" for t in threads]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|")
        for a in allocs:
            cells, ratios = [], []
            for t in threads:
                v = vals.get((shape, a, t))
                if v is None:
                    cells.append("error" if (shape, a, t) in errs else "—")
                    ratios.append("—")
                    continue
                cells.append(f"{v:.1f} ({v / t:.1f})")
                rows.append([shape, a, t, f"{v:.3f}", f"{v / t:.3f}"])
                b = vals.get((shape, BASE, t))
                ratios.append(f"{v / b:.2f}" if b else "—")
            if any(c != "—" for c in cells):
                out.append("| " + " | ".join([a] + cells + ratios) + " |")
    if errs:
        out += ["", "Rows that failed:", ""]
        out += [f"- {a} {s} at {t} threads: {m}" for (s, a, t), m in sorted(errs.items())]
    out += ["", "items_per_second of google-benchmark (median of the repetitions), summed over "
            "the threads on real time; per thread = total / threads. core/pair's jemalloc is "
            "mallocx/dallocx (as in core), malloc/*'s is malloc/free (as in malloc). Each "
            "allocator's rows of one binary run in one process."]
    print("\n".join(out))
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["shape", "allocator", "threads", "total_mops", "per_thread_mops"])
            w.writerows(rows)


if __name__ == "__main__":
    main()
