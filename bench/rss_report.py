#!/usr/bin/env python3
"""bench/rss_report.py — the markdown table of one bench/rss.sh run.

usage: rss_report.py [--pin CPUS] RUN_DIR
RUN_DIR holds <allocator>.txt (rss_bench's key=value summary line), <allocator>.csv (the samples:
t_ms,rss_mib,live_mib,phase), meta and notes, as rss.sh writes them. Prints markdown on stdout.
"""
import argparse
import os
import platform

ORDER = ["sheafalloc", "jemalloc", "mimalloc", "tcmalloc", "glibc"]
BASE = "jemalloc"


def load(run_dir):
    out = {}
    for f in sorted(os.listdir(run_dir)):
        if not f.endswith(".txt"):
            continue
        with open(os.path.join(run_dir, f)) as fh:
            line = fh.read().strip()
        kv = dict(x.split("=", 1) for x in line.split() if "=" in x)
        if kv:
            out[f[: -len(".txt")]] = kv
    return out


def meta_of(run_dir):
    try:
        with open(os.path.join(run_dir, "meta")) as fh:
            return dict(l.rstrip("\n").split(" ", 1) for l in fh if " " in l)
    except OSError:
        return {}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pin", default="")
    ap.add_argument("run_dir")
    args = ap.parse_args()
    res = load(args.run_dir)
    meta = meta_of(args.run_dir)
    allocs = [a for a in ORDER if a in res] + sorted(a for a in res if a not in ORDER)
    out = ["## rss: RSS over time of one workload that peaks, frees 90% and goes on small", ""]
    out.append(f"{meta.get('start', '?')} on {platform.node()}: {os.cpu_count()} CPUs, load "
               f"{', '.join(meta.get('load', '?').split())} at the end, "
               f"{'pinned to CPU ' + args.pin if args.pin else 'not pinned'}; rss_bench "
               f"{meta.get('args', '')}.")
    out.append("")
    head = ["allocator", "peak MiB", "after free MiB", "after small work MiB", "after idle MiB",
            "live at end MiB", "returned", f"peak ×{BASE}", f"end ×{BASE}", "minor faults k"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|")
    base = res.get(BASE)
    for a in allocs:
        r = res[a]
        f = {k: float(r[k]) for k in ("peak_mib", "free_mib", "small_mib", "end_mib",
                                      "live_end_mib", "minflt") if k in r}
        freed = f["peak_mib"] - f["live_end_mib"]
        ret = 100.0 * (f["peak_mib"] - f["end_mib"]) / freed if freed > 0 else 0.0
        pr = er = "—"
        if base:
            pr = f"{f['peak_mib'] / float(base['peak_mib']):.2f}"
            er = f"{f['end_mib'] / float(base['end_mib']):.2f}"
        out.append("| " + " | ".join([
            a, f"{f['peak_mib']:.1f}", f"{f['free_mib']:.1f}", f"{f['small_mib']:.1f}",
            f"{f['end_mib']:.1f}", f"{f['live_end_mib']:.1f}", f"{ret:.0f}%", pr, er,
            f"{f['minflt'] / 1000:.1f}"]) + " |")
    out.append("")
    out.append(
        "One process per allocator (LD_PRELOAD of its library; glibc: none), 2 worker threads "
        "(bench/rss_bench.c). RSS: /proc/self/statm, sampled every few ms. after free: at the "
        "end of the frees (90% of the blocks); after small work: at the end of the phase of "
        "small, steady work on the tenth that is left; after idle: at the end of the idle phase "
        "after it. live at end: bytes the program still held. returned: (peak − after idle) / "
        "(peak − live at end), the share of the freed memory given back to the system by the "
        "end. Only malloc and free are called (no malloc_trim, mallctl or sa_trim): what comes "
        "back, the allocator gave back by itself within the run (jemalloc's default decay is "
        "10 s, longer than the run, so it may return more later). minor faults: of the whole "
        "process (getrusage). The curves are in the report's RSS plot (build/bench/REPORT.md).")
    notes = os.path.join(args.run_dir, "notes")
    if os.path.exists(notes):
        with open(notes) as fh:
            lines = [l.strip() for l in fh if l.strip()]
        if lines:
            out += ["", "Notes:", ""] + [f"- {l}" for l in lines]
    print("\n".join(out))


if __name__ == "__main__":
    main()
