#!/usr/bin/env python3
"""bench/malloc_report.py — the markdown tables of one malloc_bench run, from google-benchmark's JSON.

usage: malloc_report.py [--pin CPUS] RUN_DIR
RUN_DIR holds <allocator>.<group>.json (google-benchmark --benchmark_out, run with repetitions and
--benchmark_report_aggregates_only) and <allocator>.<group>.rss (peak RSS in KiB, /usr/bin/time
-f %M) for the groups st (pair, batch, realloc), mixed and mt (prodcons), one process each, as
`make -C bench run-malloc` writes them, and churn (the churn rows, 1 and 2 threads) where the run
has it: its table is left out otherwise. Prints markdown on stdout.

Every time is the median over the repetitions of google-benchmark's real time. Ratios are
time / baseline time: 1.00 is the baseline, below 1 is faster than it. The churn percentiles are
counters of the bench (median over the repetitions where there are several).
"""
import argparse
import math
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in bench/ for the import below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import entry, ns  # noqa: E402  (the same JSON reading as core's report)

import json  # noqa: E402

ORDER = ["sheafalloc", "jemalloc", "jemalloc-mallocx", "mimalloc", "tcmalloc", "glibc", "harness"]
BASELINES = ["jemalloc", "mimalloc"]
GROUPS = ["st", "mixed", "mt", "churn"]
SIZES = [16, 64, 256, 1024, 4096, 16384, 32768]


def load(run_dir):
    """{allocator: {"rss": {group: KiB}, "ctx": {group: context}, "runs": {run_name: {agg: e}}}}"""
    out = {}
    for f in sorted(os.listdir(run_dir)):
        if not f.endswith(".json"):
            continue
        alloc, _, group = f[: -len(".json")].rpartition(".")
        if not alloc:
            continue
        with open(os.path.join(run_dir, f)) as fh:
            try:
                d = json.load(fh)
            except ValueError:
                continue
        a = out.setdefault(alloc, {"rss": {}, "ctx": {}, "runs": {}})
        for b in d.get("benchmarks", []):
            agg = b.get("aggregate_name", "iteration" if b.get("run_type") == "iteration" else "")
            a["runs"].setdefault(b["run_name"], {})[agg] = b
        a["ctx"][group] = d.get("context", {})
        try:
            with open(os.path.join(run_dir, f"{alloc}.{group}.rss")) as fh:
                a["rss"][group] = int(fh.read().split()[-1])
        except (OSError, ValueError, IndexError):
            pass
    return out


def cv_of(runs, name):
    e = runs.get(name, {}).get("cv")  # none with one repetition (churn's default)
    return None if not e or e.get("error_occurred") else 100.0 * e["real_time"]


def noisy(runs, name):
    """Spread over 10% across repetitions, or (one thread) a median CPU time under 90% of the real
    time: the process was not running for part of the timed loop."""
    c, e = cv_of(runs, name), entry(runs, name)
    if c is not None and c > 10.0:
        return True
    return bool(e and e.get("threads", 1) == 1 and not e.get("error_occurred")
                and e["cpu_time"] < 0.9 * e["real_time"])


# The rows: (key, title, unit, run name suffix, how to turn an entry into the number shown)
def per_iter(e):
    return ns(e)


def per_obj(e):
    t = ns(e)
    return t / e.get("objs_per_iter", 1000.0) if t is not None else None


def per_realloc(e):
    t = ns(e)
    return t / e["reallocs_per_chain"] if t is not None and e.get("reallocs_per_chain") else None


def per_chain_us(e):
    t = ns(e)
    return t / 1000.0 if t is not None else None


def per_block(e):
    """prodcons: wall ns per block (one malloc + one remote free), all pairs together."""
    if not e or e.get("error_occurred") or not e.get("items_per_second"):
        return None
    return 1e9 / e["items_per_second"]


ROWS = (
    [(f"pair/{n}", f"pair {n} B", "ns/pair", f"pair/{n}", per_iter, True) for n in SIZES]
    + [(f"batch/{n}", f"batch {n} B", "ns/obj", f"batch/{n}", per_obj, True) for n in SIZES]
    + [
        ("mixed", "mixed 16..4096 B, 10k live", "ns/replace", "mixed", per_iter, True),
        ("realloc/small", "realloc 16→4096 +16 B", "ns/realloc", "realloc/small", per_realloc, True),
        ("realloc/grow", "realloc 16→1 MiB ×1.5", "ns/realloc", "realloc/grow", per_realloc, True),
        # the same run as the row above, shown whole; not a separate sample for the means
        ("realloc/grow-chain", "realloc 16→1 MiB, whole chain", "µs/chain", "realloc/grow",
         per_chain_us, False),
        ("prodcons/2", "prodcons 1P+1C, 16..1024 B", "ns/block", "prodcons/real_time/threads:2",
         per_block, True),
        ("prodcons/4", "prodcons 2P+2C, 16..1024 B", "ns/block", "prodcons/real_time/threads:4",
         per_block, True),
    ]
)
GEO_GROUPS = [
    ("pair (7 sizes)", lambda k: k.startswith("pair/")),
    ("batch (7 sizes)", lambda k: k.startswith("batch/")),
    ("mixed + realloc (3)", lambda k: k in ("mixed", "realloc/small", "realloc/grow")),
    ("prodcons (2)", lambda k: k.startswith("prodcons/")),
]


# churn: the counters of one row (malloc_bench.c), the percentiles shown, the thread counts
CHURN_Q = ["p50", "p99", "p99.9", "p99.99", "max"]
CHURN_RUNS = [(1, "churn"), (2, "churn/real_time/threads:2")]


def lat(v):
    """A latency in ns, in the unit that keeps it short: 9.23, 580, 3.33 µs, 5.27 ms."""
    if v is None:
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.2f} ms"
    if v >= 1e3:
        return f"{v / 1e3:.2f} µs" if v < 1e4 else f"{v / 1e3:.0f} µs"
    return fmt(v)


def churn_table(data, allocs):
    """The tail-latency table, or [] when no churn row ran."""
    rows, clocks = [], []
    base = {}  # (threads, "malloc"|"free") -> jemalloc's p99.9
    for threads, suffix in CHURN_RUNS:
        e = entry(data.get("jemalloc", {}).get("runs", {}), f"jemalloc/{suffix}")
        if e and not e.get("error_occurred"):
            for op in ("malloc", "free"):
                base[threads, op] = e.get(f"{op}_p99.9")
    for threads, suffix in CHURN_RUNS:
        for a in allocs:
            name = f"{a}/{suffix}"
            e = entry(data[a]["runs"], name)
            if not e or e.get("error_occurred"):
                continue
            if e.get("clock_ns") is not None:
                clocks.append(e["clock_ns"])
            t = ns(e)
            per = t / e["ops_per_iter"] if t is not None and e.get("ops_per_iter") else None
            row = [a, str(threads), fmt(per, noisy(data[a]["runs"], name))]
            for op in ("malloc", "free"):
                row += [lat(e.get(f"{op}_{q}")) for q in CHURN_Q]
            for op in ("malloc", "free"):
                v, b = e.get(f"{op}_p99.9"), base.get((threads, op))
                row.append("" if a == "harness" else fmt(v / b) if v is not None and b else "—")
            rem = e.get("remote_pct")
            row.append(f"{rem:.1f}" if rem is not None else "")
            rows.append("| " + " | ".join(row) + " |")
    if not rows:
        return []
    head = (["allocator", "threads", "ns/replace"] + [f"malloc {q}" for q in CHURN_Q]
            + [f"free {q}" for q in CHURN_Q] + ["malloc p99.9 ×jemalloc", "free p99.9 ×jemalloc",
                                                "remote frees %"])
    lo, hi = (min(clocks), max(clocks)) if clocks else (None, None)
    clock = "?" if lo is None else f"{lo:.1f} ns" if hi - lo < 0.05 else f"{lo:.1f}..{hi:.1f} ns"
    return [
        "### Tail latency under churn (ns per call unless marked; lower is better)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "--:"] + ["--:"] * (len(head) - 2)) + "|",
    ] + rows + [
        "",
        "20,000 live blocks a thread (about 56 MiB asked for): 70% 16..128 B, 25% 129..4096 B, "
        "4.9% 4 KiB..64 KiB, 0.1% 256 KiB..1 MiB, from a fixed-seed stream, the same for every "
        "allocator. After a fill and 100,000 untimed replacements, 2,000,000 replacements a "
        "thread (free the block of a random slot, malloc a new size into it, write its first and "
        "last byte; the writes are not timed), every malloc and every free timed alone with "
        f"lfence;rdtsc;lfence; the clock's own cost (median of an empty timed region, {clock}) is "
        "subtracted, so a p50 of 0 means no more than the clock's jitter. ns/replace is wall time "
        "per replacement and thread, clock reads included (the harness row: the loop and the "
        "clock alone). 0.1% of the mallocs are the big blocks, so malloc p99.9 sits at their "
        "edge. 2 threads: each its own working set; 10% of the blocks go to the other thread "
        "through a lock-free ring and are freed there (timed among the frees; remote frees %: "
        "their share, below 10% when the ring was full and the block was freed locally); "
        "percentiles over both threads' samples together. The harness row (no allocator) is the "
        "floor: the clock's jitter, interrupts and preemption; tails at or near it say nothing "
        "about the allocator. ×jemalloc: p99.9 / jemalloc's p99.9, same threads.",
        "",
    ]


def fmt(v, bad=False):
    if v is None:
        return "—"
    s = f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"
    return s + (" †" if bad else "")


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pin", default="", help="the taskset CPU list the run used, if any")
    ap.add_argument("run_dir")
    args = ap.parse_args()
    data = load(args.run_dir)
    if not data:
        sys.exit(f"malloc_report.py: no *.json in {args.run_dir}")
    allocs = [a for a in ORDER if a in data] + sorted(a for a in data if a not in ORDER)
    real = [a for a in allocs if a != "harness"]

    # value[key][alloc] = (number, noisy, cv)
    value = {}
    for key, _, _, suffix, conv, _ in ROWS:
        value[key] = {}
        for a in allocs:
            name = f"{a}/{suffix}"
            runs = data[a]["runs"]
            e = entry(runs, name)
            value[key][a] = (conv(e) if e else None, noisy(runs, name), cv_of(runs, name))
    # harness: the loop alone, shown next to the pair and mixed rows
    if "harness" in data:
        for n in SIZES:
            value[f"pair/{n}"]["harness"] = value["pair/64"]["harness"] if n == 64 else (None, False, None)

    ctxs = [c for a in data.values() for c in a["ctx"].values()]
    ctx = min(ctxs, key=lambda c: c.get("date", ""))
    out = ["## malloc_bench: the malloc family", ""]
    load_avg = ", ".join(f"{x:.2f}" for x in ctx.get("load_avg", []))
    out.append(
        f"{ctx.get('date', '?')} on {ctx.get('host_name', '?')}: {ctx.get('num_cpus', '?')} CPUs at "
        f"{ctx.get('mhz_per_cpu', '?')} MHz, load {load_avg or '?'} when the first process started, "
        f"{'pinned to CPU ' + args.pin if args.pin else 'not pinned'}; google-benchmark library "
        f"built as {ctx.get('library_build_type', '?')}. Four processes per allocator (single-"
        f"thread shapes, mixed, prodcons, churn)."
    )
    out.append("")

    # Table 1: the numbers
    head = ["shape", "unit"] + allocs
    out.append("### Time (median real time; lower is better)")
    out.append("")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---", "---"] + ["--:"] * len(allocs)) + "|")
    for key, title, unit, _, _, _ in ROWS:
        row = [title, unit]
        for a in allocs:
            v, bad, _ = value[key].get(a, (None, False, None))
            cell = fmt(v, bad)
            if key.startswith("prodcons/") and v:
                cell += f" ({1e3 / v:.1f} M/s)"
            row.append(cell if (a != "harness" or v is not None) else "")
        out.append("| " + " | ".join(row) + " |")
    cvrow = ["worst cv", "%"]
    for a in allocs:
        cvs = [value[k][a][2] for k, *_ in ROWS if value[k].get(a) and value[k][a][2] is not None]
        cvrow.append(f"{max(cvs):.1f}" if cvs else "—")
    out.append("| " + " | ".join(cvrow) + " |")
    out.append("")

    # Tables 2 and 3: ratios, with geometric means
    geo = {}
    for b in BASELINES:
        if b not in data:
            continue
        out.append(f"### ×{b}: time / {b}'s time in the same row (below 1.00 is faster than {b})")
        out.append("")
        out.append("| " + " | ".join(["shape"] + real) + " |")
        out.append("|" + "|".join(["---"] + ["--:"] * len(real)) + "|")
        ratios = {a: {} for a in real}
        for key, title, _, _, _, in_mean in ROWS:
            base = value[key][b][0]
            row = [title]
            for a in real:
                v, bad, _ = value[key][a]
                r = v / base if v is not None and base else None
                if in_mean and r:
                    ratios[a][key] = r
                row.append(fmt(r, bad or value[key][b][1]) if r else "—")
            out.append("| " + " | ".join(row) + " |")
        for gname, pred in GEO_GROUPS:
            row = [f"**geomean {gname}**"]
            for a in real:
                g = geomean([r for k, r in ratios[a].items() if pred(k)])
                row.append(f"**{g:.2f}**" if g else "—")
            out.append("| " + " | ".join(row) + " |")
        row = [f"**geomean all ({sum(1 for r in ROWS if r[5])} rows)**"]
        for a in real:
            g = geomean(list(ratios[a].values()))
            geo.setdefault(b, {})[a] = g
            row.append(f"**{g:.2f}**" if g else "—")
        out.append("| " + " | ".join(row) + " |")
        out.append("")

    # Table 4: tail latency under churn (when the run has it)
    out += churn_table(data, allocs)

    # Table 5: memory
    out.append("### Memory (peak RSS of each process, MiB; /usr/bin/time %M)")
    out.append("")
    mhead = ["allocator", "pair+batch+realloc", "mixed", "×jemalloc", "mixed: RSS at end of loop",
             "mixed: live bytes asked", "prodcons"]
    out.append("| " + " | ".join(mhead) + " |")
    out.append("|" + "|".join(["---"] + ["--:"] * (len(mhead) - 1)) + "|")
    base_mixed = data.get("jemalloc", {}).get("rss", {}).get("mixed")

    def mib(kib):
        return f"{kib / 1024:.1f}" if kib else "—"

    for a in allocs:
        rss = data[a]["rss"]
        e = entry(data[a]["runs"], f"{a}/mixed")
        end_rss = e.get("rss_MiB") if e and not e.get("error_occurred") else None
        live = e.get("live_MiB") if e and not e.get("error_occurred") else None
        ratio = f"{rss['mixed'] / base_mixed:.2f}" if rss.get("mixed") and base_mixed else "—"
        out.append("| " + " | ".join([
            a, mib(rss.get("st")), mib(rss.get("mixed")), ratio if a != "harness" else "",
            f"{end_rss:.1f}" if end_rss is not None else "—",
            f"{live:.1f}" if live is not None and a != "harness" else "—",
            mib(rss.get("mt")) if a != "harness" else ""]) + " |")
    out.append("")

    out.append(
        "**pair**: one malloc of the size, one byte written, one free. **batch**: 1000 mallocs "
        "(one byte written into each) then 1000 frees, per object. **mixed**: a ring of 10,000 "
        "live blocks of 16..4096 B; each step frees a random block and mallocs a random size in "
        "its place (fixed-seed table, the same for all). **realloc**: one chain malloc(16) → "
        "realloc … → free; small: +16 B steps to 4096 (255 reallocs); grow: +16 B to 256 then ×1.5 "
        "to 1 MiB (36 reallocs); the last byte of every new size is written. **prodcons**: "
        "producers malloc 16..1024 B blocks (one byte written) and pass them through a bounded "
        "lock-free SPSC ring (1024 slots) to a consumer thread that frees them; wall time per "
        "block of all pairs together, and blocks per second. Every allocator writes the same "
        "bytes: one per block. Harness: the pair and mixed loops with no allocator (a static "
        "buffer), included in those rows. jemalloc is the library's malloc/free/realloc (its fast "
        "path) and the ratios' baseline; jemalloc-mallocx is mallocx/dallocx/rallocx (its general "
        "path, what core_bench's jemalloc row uses). sheafalloc is sa_malloc/sa_free/sa_realloc "
        "through libsheafalloc.so. †: noisy (cv over 10%, or CPU time under 90% of real time on "
        "one thread; in a ratio cell: either side): rerun before drawing conclusions. Geometric "
        "means weigh every row the same (the whole-chain row repeats the per-realloc row and is "
        "left out). Peak RSS is the whole process, framework included (the harness column is that "
        "floor); the mixed process holds only the ring (about 20 MiB asked for) at its peak, so "
        "its RSS over live bytes is a fragmentation and overhead figure."
    )
    out.append("")
    out.append("Entry points (library, version; the library that serves the process's malloc; "
               "1-minute load average when each process started):")
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
        loads = ", ".join(f"{data[a]['ctx'][g].get('load_avg', [0])[0]:.2f}"
                          for g in GROUPS if g in data[a]["ctx"])
        out.append(f"- {a}: {label or '—'}; load {loads or '?'}")
    if errors:
        out += ["", "Failed runs:", ""] + sorted(set(errors))
    print("\n".join(out))


if __name__ == "__main__":
    main()
