#!/usr/bin/env python3
"""bench/sheaf_report.py — the markdown table of one sheaf run (sheafalloc's sheaf and bulk API).

usage: sheaf_report.py [--pin CPUS] RUN_DIR
RUN_DIR holds sheaf.json (google-benchmark output of core_bench's rows 'sheaf/<shape>/<n>') and
sheaf.rss, as the sheaf part of bench/Makefile writes them. Prints markdown on stdout.
Numbers: ns per object (allocated and freed once), the median of the repetitions of real time
divided by the objects of an iteration; ratios are shape / loop at the same n (below 1: cheaper).
"""
import argparse
import json
import os
import platform
import re

UNIT_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
SHAPES = ["loop", "prefill", "prefill_half", "bulk"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pin", default="")
    ap.add_argument("run_dir")
    args = ap.parse_args()
    ns, errs, cap = {}, {}, None
    with open(os.path.join(args.run_dir, "sheaf.json")) as fh:
        d = json.load(fh)
    for b in d.get("benchmarks", []):
        m = re.match(r"^sheaf/([a-z_]+)/(\d+)$", b.get("run_name", ""))
        if not m:
            continue
        key = (m.group(1), int(m.group(2)))
        if b.get("error_occurred"):
            errs[key] = b.get("error_message", "?")
            continue
        agg = b.get("aggregate_name", "")
        if b.get("run_type") == "aggregate" and agg != "median":
            continue
        per = b.get("objs_per_iter") or 1
        cap = b.get("sheaf_capacity", cap)
        if agg == "median" or key not in ns:
            ns[key] = b["real_time"] * UNIT_NS.get(b.get("time_unit", "ns"), 1.0) / per
    sizes = sorted({n for (_, n) in list(ns) + list(errs)})
    out = ["## sheaf: the sheaf and bulk API against sa_cache_alloc loops (sheafalloc only)", ""]
    out.append(f"{d.get('context', {}).get('date', '?')} on {platform.node()}: {os.cpu_count()} "
               f"CPUs, {'pinned to CPU ' + args.pin if args.pin else 'not pinned'}; one 64-byte "
               f"cache, sheaf capacity {int(cap) if cap else '?'}. ns per object (alloc + free).")
    out.append("")
    head = ["n", "loop", "prefill", "prefill ×loop", "prefill_half", "prefill_half ×loop", "bulk",
            "bulk ×loop"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["--:"] * len(head)) + "|")
    for n in sizes:
        base = ns.get(("loop", n))
        cells = [str(n)]
        for s in SHAPES:
            v = ns.get((s, n))
            if v is None:
                cells.append("error" if (s, n) in errs else "—")
                if s != "loop":
                    cells.append("—")
                continue
            cells.append(f"{v:.2f}")
            if s != "loop":
                cells.append(f"{v / base:.2f}" if base else "—")
        out.append("| " + " | ".join(cells) + " |")
    if errs:
        out += ["", "Rows that failed:", ""] + [f"- sheaf/{s}/{n}: {m}" for (s, n), m in
                                                 sorted(errs.items())]
    out += ["", "loop: n sa_cache_alloc, then n sa_cache_free. prefill: sa_sheaf_prefill(n), n "
            "sa_sheaf_alloc, sa_sheaf_return, n sa_cache_free. prefill_half: the same using n/2 "
            "of the n reserved (per object used). bulk: sa_cache_alloc_bulk(n), "
            "sa_cache_free_bulk(n). n above the sheaf capacity makes an oversize sheaf. The "
            "peers have no such API: this table compares sheafalloc with itself (bench/"
            "core_bench.c)."]
    print("\n".join(out))


if __name__ == "__main__":
    main()
