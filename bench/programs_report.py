#!/usr/bin/env python3
"""bench/programs_report.py — the markdown table of one bench/programs.sh run.

usage: programs_report.py [--runs N] [--pin CPUS] [--elapsed S] [--allocators "a b ..."] RUN_DIR
RUN_DIR holds runs.tsv (program, allocator, run, wall_s, rss_kib, cpu_s, status, minflt; one line per
run, run "warmup" for the untimed glibc reference run) and notes (skipped programs, ...), as
programs.sh writes them. Prints markdown on stdout.

A cell is the median over the timed runs of wall time, of peak RSS, of CPU time (user + system)
and of minor page faults (all processes of the run; a runs.tsv without the minflt column, from
before it was recorded, leaves that column empty).
Ratios are allocator / jemalloc in the same program: below 1.00 is faster (or smaller).
"""
import argparse
import csv
import math
import os
import platform
import statistics
import time

ORDER = ["sheafalloc", "jemalloc", "mimalloc", "tcmalloc", "glibc"]
BASE = "jemalloc"
NOISY = 25.0  # spread (%) over which a cell is marked †
WHAT = {
    "python": "python3 alloc_heavy.py (pymalloc for objects up to 512 B)",
    "python-malloc": "the same, PYTHONMALLOC=malloc (every object from malloc)",
    "sqlite": "sqlite3 :memory:, 40k INSERTs + 200k-row INSERT…SELECT, indexes, queries, VACUUM",
    "git": "git log -p, pack-objects (re-deltify all), blame, diff, rev-list; 200 commits",
    "gcc": "gcc -O2 -c of a generated 2,600-line C file (100 functions)",
    "redis": "redis-server; redis-benchmark 10 commands × 100k, -P 16 (time: benchmark; RSS: server)",
}


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="?")
    ap.add_argument("--pin", default="")
    ap.add_argument("--elapsed", default="?")
    ap.add_argument("--allocators", default="")
    ap.add_argument("run_dir")
    args = ap.parse_args()

    rows = []
    with open(os.path.join(args.run_dir, "runs.tsv")) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    programs = []
    for r in rows:
        if r["program"] not in programs:
            programs.append(r["program"])
    allocs = args.allocators.split() or sorted({r["allocator"] for r in rows if r["run"] != "warmup"})
    allocs = [a for a in ORDER if a in allocs] + [a for a in allocs if a not in ORDER]

    # cell[(program, alloc)] = {"status": ..., "wall": median, "rss": KiB, "cpu": s, "spread": %}
    cell = {}
    for p in programs:
        for a in allocs:
            runs = [r for r in rows if r["program"] == p and r["allocator"] == a and r["run"] != "warmup"]
            if not runs:
                continue
            failed = [r["status"] for r in runs if r["status"].startswith("failed")]
            wrong = [r for r in runs if r["status"] == "wrong"]
            c = {"n": len(runs)}
            if failed:
                c["status"] = f"FAILED (exit {failed[0].split(':', 1)[1]}, {len(failed)}/{len(runs)} runs)"
            elif wrong:
                c["status"] = f"WRONG OUTPUT ({len(wrong)}/{len(runs)} runs)"
            else:
                c["status"] = "ok"
                walls = [float(r["wall_s"]) for r in runs]
                c["wall"] = statistics.median(walls)
                c["spread"] = 100.0 * (max(walls) - min(walls)) / c["wall"] if c["wall"] else 0.0
                c["rss"] = statistics.median([float(r["rss_kib"]) for r in runs])
                c["cpu"] = statistics.median([float(r["cpu_s"]) for r in runs])
                flts = [float(r["minflt"]) for r in runs if (r.get("minflt") or "").strip()]
                c["minflt"] = statistics.median(flts) if flts else None
            cell[(p, a)] = c

    def ok(p, a):
        c = cell.get((p, a))
        return c if c and c["status"] == "ok" else None

    out = ["## programs: whole programs under each malloc", ""]
    meta = {}
    try:
        with open(os.path.join(args.run_dir, "meta")) as fh:
            meta = dict(l.rstrip("\n").split(" ", 1) for l in fh if " " in l)
    except OSError:
        pass
    when = meta.get("start") or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load = meta.get("load") or " ".join(f"{x:.2f}" for x in os.getloadavg())
    out.append(
        f"{when} on {platform.node()}: {os.cpu_count()} CPUs, load {', '.join(load.split())} at "
        f"the end, {'pinned to CPU ' + args.pin if args.pin else 'not pinned'}; "
        f"{args.runs} timed runs per cell, allocators alternating run by run; {args.elapsed} s in all."
    )
    out.append("")
    head = ["program", "allocator", "wall s", f"×{BASE}", "spread", "CPU s", "peak RSS MiB",
            f"RSS ×{BASE}", "minor faults k", f"faults ×{BASE}"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---", "---"] + ["--:"] * (len(head) - 2)) + "|")
    tratio = {a: {} for a in allocs}
    rratio = {a: {} for a in allocs}
    gratio = {a: {} for a in allocs}
    grss = {a: {} for a in allocs}
    cratio = {a: {} for a in allocs}
    fratio = {a: {} for a in allocs}
    for p in programs:
        base = ok(p, BASE)
        glibc = ok(p, "glibc")
        for a in allocs:
            c = cell.get((p, a))
            if not c:
                continue
            if c["status"] != "ok":
                out.append(f"| {p} | {a} | **{c['status']}** |" + " |" * (len(head) - 3))
                continue
            tr = c["wall"] / base["wall"] if base and base["wall"] else None
            rr = c["rss"] / base["rss"] if base and base["rss"] else None
            fr = (c["minflt"] / base["minflt"] if base and base.get("minflt") and c["minflt"] is not None
                  else None)
            if fr:
                fratio[a][p] = fr
            if tr:
                tratio[a][p] = tr
            if rr:
                rratio[a][p] = rr
            if base and base["cpu"] and c["cpu"]:
                cratio[a][p] = c["cpu"] / base["cpu"]
            if glibc and glibc["wall"]:
                gratio[a][p] = c["wall"] / glibc["wall"]
            if glibc and glibc["rss"]:
                grss[a][p] = c["rss"] / glibc["rss"]
            out.append("| " + " | ".join([
                p, a, f"{c['wall']:.2f}" + (" †" if c["spread"] > NOISY else ""),
                f"{tr:.2f}" if tr else "—", f"{c['spread']:.0f}%",
                f"{c['cpu']:.2f}", f"{c['rss'] / 1024:.1f}", f"{rr:.2f}" if rr else "—",
                f"{c['minflt'] / 1000:.1f}" if c["minflt"] is not None else "—",
                f"{fr:.2f}" if fr else "—"]) + " |")
    out.append("")
    out.append("Geometric means over the programs where both cells are valid (count in brackets); "
               "time is wall time, CPU is user + system time (less disturbed by other load on the "
               "machine, but blind to waiting):")
    out.append("")
    head = ["allocator", f"time ×{BASE}", f"peak RSS ×{BASE}", f"CPU ×{BASE}",
            f"minor faults ×{BASE}", "time ×glibc", "peak RSS ×glibc"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|")

    def g(d):
        m = geomean(list(d.values()))
        return f"**{m:.2f}** ({len(d)})" if m else "—"

    for a in allocs:
        out.append("| " + " | ".join([a, g(tratio[a]), g(rratio[a]), g(cratio[a]), g(fratio[a]),
                                      g(gratio[a]), g(grss[a])]) + " |")
    out.append("")
    out.append("Programs:")
    out.append("")
    for p in programs:
        out.append(f"- **{p}**: {WHAT.get(p, p)}")
    out.append("")
    out.append(
        "wall s: median wall time of the runs. spread: (slowest − fastest) / median, the run-to-run "
        "noise of the cell; †: spread over 25% (a run was slowed by something else on the machine: the "
        "median discounts one such run of three, CPU s is less affected). CPU s: median user + system time of the whole run (redis: of the "
        "server). Peak RSS: /usr/bin/time %M, the largest single process of the run (gcc: cc1; "
        "git: the biggest git process; redis: the server). Minor faults k: median thousands of minor page "
        "faults (/usr/bin/time %R, summed over every process of the run; redis: the server), a "
        "page touched for the first time or again after the allocator returned it: memory given "
        "back and taken again shows here as well as in time. Every run's output is compared with the "
        "glibc warm-up run's: WRONG OUTPUT marks a difference, FAILED a non-zero exit (raw "
        "outputs and stderr are kept). sheafalloc, jemalloc, mimalloc, tcmalloc: LD_PRELOAD of "
        "the library; glibc: no preload, except for a binary linked with another malloc "
        "(redis-server links jemalloc), which gets bench/programs/glibc_malloc.c preloaded to "
        "give it glibc's malloc back. Redis keeps calling jemalloc's mallctl for statistics in "
        "every column (jemalloc stays loaded in the process)."
    )
    notes = os.path.join(args.run_dir, "notes")
    if os.path.exists(notes):
        with open(notes) as fh:
            lines = [l.strip() for l in fh if l.strip()]
        if lines:
            out += ["", "Notes:", ""] + [f"- {l}" for l in lines]
    print("\n".join(out))


if __name__ == "__main__":
    main()
