#!/usr/bin/env python3
"""bench/rcu_report.py — the markdown table of one rcu_bench run (bench/Makefile run-rcu).

usage: rcu_report.py [--pin CPUS] RUN_DIR [RUN_DIR ...]
Each RUN_DIR holds <row>.json (google-benchmark, repetitions, aggregates only) and <row>.rss
(peak RSS of that row's process, KiB) for the rows sheafalloc, sheafalloc-malloc, jemalloc,
glibc and sheafalloc-callrcu. Objects per second is the median items_per_second over the
repetitions (every iteration is a run of objects and the barrier that completes them).
Ratios compare the sa_free_rcu rows with the per-object call_rcu rows of the same run:
objects per second (higher is better; the target is at least 5x) and peak RSS (lower is
better; the target is at most 1.2x). Several RUN_DIRs: one table each, then a summary of the
sheafalloc row's ratios over the runs.
"""
import argparse
import json
import os

ROWS = ["sheafalloc", "sheafalloc-malloc", "jemalloc", "glibc", "sheafalloc-callrcu"]
HOW = {
    "sheafalloc": "sa_cache_alloc + sa_free_rcu",
    "sheafalloc-malloc": "sa_malloc + sa_free_rcu",
    "jemalloc": "jemalloc malloc + call_rcu per object",
    "glibc": "glibc malloc + call_rcu per object",
    "sheafalloc-callrcu": "sa_malloc + call_rcu per object",
}
BASELINES = ["jemalloc", "glibc"]
TARGET_SPEED, TARGET_RSS = 5.0, 1.2


def median_of(d, key):
    for b in d.get("benchmarks", []):
        if b.get("aggregate_name") == "median" and not b.get("error_occurred"):
            return b.get(key)
    return None


def load(run_dir):
    rows, ctx = {}, {}
    for r in ROWS:
        path = os.path.join(run_dir, r + ".json")
        if not os.path.exists(path):
            continue
        with open(path) as fh:
            d = json.load(fh)
        ctx = d.get("context", ctx)
        err = next((b.get("error_message") for b in d.get("benchmarks", [])
                    if b.get("error_occurred")), None)
        label = next((b.get("label") for b in d.get("benchmarks", []) if b.get("label")), "")
        rss = None
        try:
            with open(os.path.join(run_dir, r + ".rss")) as fh:
                rss = int(fh.read().split()[-1])
        except (OSError, ValueError, IndexError):
            pass
        rows[r] = {
            "ops": median_of(d, "items_per_second"),
            "cb": median_of(d, "callbacks_per_object"),
            "rss": rss,
            "label": label,
            "error": err,
        }
    return rows, ctx


def ratio(a, b):
    return a / b if a and b else None


def table(run_dir, pin):
    rows, ctx = load(run_dir)
    out = []
    out.append("Run %s; %s CPU(s)%s. One process per row; medians of the repetitions; every "
               "iteration frees its objects completely (a barrier inside the timing).\n"
               % (os.path.basename(run_dir.rstrip("/")), ctx.get("num_cpus", "?"),
                  ", pinned to CPUs " + pin if pin else ""))
    out.append("| row | how | objects/s | ns/object | callbacks/object | peak RSS | "
               "speed vs call_rcu+jemalloc | vs call_rcu+glibc | RSS vs call_rcu+jemalloc | "
               "vs call_rcu+glibc |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in ROWS:
        if r not in rows:
            out.append("| %s | %s | (missing) | | | | | | | |" % (r, HOW[r]))
            continue
        x = rows[r]
        if x["error"] or not x["ops"]:
            out.append("| %s | %s | (error: %s) | | | | | | | |" % (r, HOW[r], x["error"]))
            continue
        cells = []
        for key in ("ops", "rss"):
            for base in BASELINES:
                b = rows.get(base)
                if r in BASELINES or not b:
                    cells.append("")
                    continue
                v = ratio(x[key], b[key]) if key == "ops" else ratio(x["rss"], b["rss"])
                cells.append("%.2fx" % v if v else "?")
        out.append("| %s | %s | %.3g M | %.1f | %s | %s | %s |" % (
            r, HOW[r], x["ops"] / 1e6, 1e9 / x["ops"],
            "%.4f" % x["cb"] if x["cb"] is not None else "?",
            "%.1f MiB" % (x["rss"] / 1024) if x["rss"] else "?", " | ".join(cells)))
    out.append("")
    for r in ROWS:
        if r in rows and rows[r]["label"]:
            out.append("- %s: %s" % (r, rows[r]["label"]))
    return rows, "\n".join(out)


def verdict(rows):
    s = rows.get("sheafalloc")
    lines = []
    for base in BASELINES:
        b = rows.get(base)
        if not s or not b or not s["ops"] or not b["ops"]:
            continue
        sp, rs = ratio(s["ops"], b["ops"]), ratio(s["rss"], b["rss"])
        ok_sp = sp is not None and sp >= TARGET_SPEED
        ok_rs = rs is not None and rs <= TARGET_RSS
        lines.append("sheafalloc vs call_rcu+%s: %.2fx the objects/s (target >= %.0fx: %s), "
                     "%s the peak RSS (target <= %.1fx: %s)" % (
                         base, sp, TARGET_SPEED, "met" if ok_sp else "NOT met",
                         "%.2fx" % rs if rs else "?", TARGET_RSS,
                         "met" if ok_rs else "NOT met"))
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pin", default="")
    ap.add_argument("run_dirs", nargs="+")
    a = ap.parse_args()
    print("# rcu_bench: freeing through RCU, sa_free_rcu vs per-object call_rcu\n")
    print("A 64-byte object allocated, written (all of it) and freed through RCU by one thread, "
          "in runs of 262144 objects each ended by a barrier (sa_rcu_barrier / "
          "urcu_memb_barrier). call_rcu rows: liburcu's urcu_memb_call_rcu with the rcu_head "
          "inside the 64 bytes, its callback frees. Target: sa_free_rcu at least 5x the "
          "objects/s of per-object call_rcu with at most 1.2x its peak RSS.\n")
    summary = []
    for d in a.run_dirs:
        rows, text = table(d, a.pin)
        print(text)
        v = verdict(rows)
        if v:
            print("")
            for line in v:
                print("**%s**" % line if "NOT" in line else line)
        print("")
        summary.append((os.path.basename(d.rstrip("/")), rows))
    if len(summary) > 1:
        print("## Over the runs (sheafalloc row)\n")
        print("| run | objects/s | peak RSS | vs jemalloc speed | vs glibc speed | "
              "vs jemalloc RSS | vs glibc RSS |")
        print("|---|---|---|---|---|---|---|")
        for name, rows in summary:
            s = rows.get("sheafalloc")
            if not s or not s["ops"]:
                continue
            c = []
            for key in ("ops", "rss"):
                for base in BASELINES:
                    b = rows.get(base)
                    v = ratio(s[key], b[key]) if b else None
                    c.append("%.2fx" % v if v else "?")
            print("| %s | %.3g M | %s | %s |" % (name, s["ops"] / 1e6,
                                                 "%.1f MiB" % (s["rss"] / 1024) if s["rss"]
                                                 else "?", " | ".join(c)))


if __name__ == "__main__":
    main()
