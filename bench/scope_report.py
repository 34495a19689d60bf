#!/usr/bin/env python3
"""bench/scope_report.py — the markdown table of one scope_bench run (bench/Makefile run-scope).

usage: scope_report.py [--pin CPUS] RUN_DIR
RUN_DIR holds <group>.json (google-benchmark, repetitions, aggregates only) and <group>.rss
(peak RSS in KiB) for the groups fast, cycle_nolimit, cycle_limit and cycle_tight. Every time is the median
real time over the repetitions; each ratio compares a row with its reference row of the same
run: a scoped row with the same shape without a scope, the limited cycle with the cycle
without a limit.
"""
import argparse
import json
import os

UNIT_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
REF = {
    "scope/pair_nofs": "scope/pair",
    "scope/pair_nowait": "scope/pair",
    "scope/malloc64_nofs": "scope/malloc64",
    "scope/cycle_limit": "scope/cycle_nolimit",
    "scope/cycle_tight": "scope/cycle_nolimit",
}


def load(run_dir):
    rows, rss, ctx = {}, {}, {}
    for f in sorted(os.listdir(run_dir)):
        if not f.endswith(".json"):
            continue
        g = f[:-5]
        with open(os.path.join(run_dir, f)) as fh:
            d = json.load(fh)
        ctx = d.get("context", ctx)
        try:
            with open(os.path.join(run_dir, g + ".rss")) as fh:
                rss[g] = int(fh.read().split()[-1])
        except (OSError, ValueError, IndexError):
            rss[g] = None
        for b in d.get("benchmarks", []):
            if b.get("aggregate_name", "median") != "median" or b.get("error_occurred"):
                continue
            t = b["real_time"] * UNIT_NS.get(b.get("time_unit", "ns"), 1.0)
            rows[b["run_name"]] = (t, b, g)
    return rows, rss, ctx


def fmt_time(t):
    if t >= 1e6:
        return "%.2f ms" % (t / 1e6)
    if t >= 1e3:
        return "%.2f us" % (t / 1e3)
    return "%.2f ns" % t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pin", default="")
    ap.add_argument("run_dir")
    a = ap.parse_args()
    rows, rss, ctx = load(a.run_dir)
    print("# scope_bench: the scope layer's cost (sheafalloc only)\n")
    print("Run %s; %s CPU(s)%s. Medians of the repetitions; ratio = row / its reference row of "
          "the same run (1.00x: no cost).\n" % (os.path.basename(a.run_dir.rstrip("/")),
                                               ctx.get("num_cpus", "?"),
                                               ", pinned to CPUs " + a.pin if a.pin else ""))
    print("| row | time | reference | ratio | counters | peak RSS of its process |")
    print("|---|---|---|---|---|---|")
    order = ["scope/pair", "scope/pair_nofs", "scope/pair_nowait", "scope/malloc64",
             "scope/malloc64_nofs", "scope/save_restore", "scope/cycle_nolimit",
             "scope/cycle_limit", "scope/cycle_tight"]
    for name in order:
        if name not in rows:
            print("| %s | (missing) | | | | |" % name)
            continue
        t, b, g = rows[name]
        ref = REF.get(name)
        ratio = ""
        if ref and ref in rows:
            ratio = "%.2fx" % (t / rows[ref][0])
        counters = ", ".join("%s %.3g" % (k, v) for k, v in sorted(b.items())
                             if k.endswith(("_per_cycle", "_MiB", "failed")) and
                             isinstance(v, (int, float)))
        r = rss.get(g)
        print("| %s | %s | %s | %s | %s | %s |" % (name, fmt_time(t), ref or "", ratio, counters,
                                              "%.1f MiB" % (r / 1024) if r else "?"))


if __name__ == "__main__":
    main()
