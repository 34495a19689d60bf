#!/usr/bin/env python3
"""bench/report_all.py — the benchmark report: REPORT.md with every part's table and PNG plots.

usage: report_all.py --results DIR --out OUTDIR [--parts "core ..."] [--quick] [--note TEXT]

Reads the tables DIR/<part>.md that the parts of bench/Makefile write (bench/results, or
build/bench/quick for bench-quick) and, for the plots, the newest raw run of a part,
DIR/raw/<part>-<UTC time>/: scaling.csv (throughput against threads), malloc's *.churn.json
(latency percentiles under churn) and rss's *.csv (RSS over time). Writes OUTDIR/REPORT.md and
OUTDIR/plots/*.png (with the data files and the gnuplot script beside them, in OUTDIR/plots/data).
The plots are drawn by gnuplot (Debian gnuplot-nox, which `make bench` installs as root); without
it the report is written without plots and says so. A part with no table or no raw run is named
as missing, never a failure. --parts names the parts that ran in this invocation: the tables of the
others are kept from an earlier run, and the report says so.
"""
import argparse
import csv
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

ORDER = ["scaling", "sheaf", "rss", "core", "malloc", "programs", "scope", "rcu"]
ALLOC_ORDER = ["sheafalloc", "jemalloc", "mimalloc", "tcmalloc", "glibc"]
COLORS = {"sheafalloc": "#d62728", "jemalloc": "#1f77b4", "mimalloc": "#2ca02c",
          "tcmalloc": "#9467bd", "glibc": "#7f7f7f"}
PCTS = ["p50", "p99", "p99.9", "p99.99", "max"]
PHASES = ["grow", "hold", "free", "small", "idle"]


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine():
    """One paragraph describing the machine the numbers come from."""
    model, mem = "?", "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                    break
    except OSError:
        pass
    distro = "?"
    try:
        with open("/etc/os-release") as fh:
            distro = dict(l.strip().split("=", 1) for l in fh if "=" in l).get(
                "PRETTY_NAME", "?").strip('"')
    except OSError:
        pass
    ncpu = len(os.sched_getaffinity(0))
    cc = sh(["cc", "--version"]).splitlines()
    commit = sh(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "describe", "--always",
                 "--dirty"])
    return (f"{platform.node()}: {model}, {ncpu} CPUs usable ({os.cpu_count()} online), {mem} "
            f"RAM; {distro}, Linux {platform.release()} {platform.machine()}; "
            f"{cc[0] if cc else 'cc ?'}; load {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
            f"when the report was written; sheafalloc {commit or '?'}.")


def newest_raw(results, part):
    runs = sorted(d for d in glob.glob(os.path.join(results, "raw", part + "-*")) if os.listdir(d))
    return runs[-1] if runs else None


def order_allocs(names):
    return sorted(names, key=lambda a: (ALLOC_ORDER.index(a) if a in ALLOC_ORDER else 99, a))


class Plots:
    """Writes data files and one gnuplot script; draws them all at the end."""

    def __init__(self, out):
        self.dir = os.path.join(out, "plots")
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.data, exist_ok=True)
        for f in glob.glob(os.path.join(self.dir, "*.png")):
            os.remove(f)
        self.script = []
        self.made = []  # (png name, caption)

    def dat(self, name, lines):
        path = os.path.join(self.data, name)
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        return path

    def png(self, name, caption, body, size="1000,420"):
        self.script += [f"set terminal pngcairo size {size} font 'Sans,10'",
                        f"set output '{os.path.join(self.dir, name)}'",
                        "unset arrow; unset label; unset logscale; unset title",
                        "set autoscale; set grid; set key top left"] + body + ["unset multiplot", "set output"]
        self.made.append((name, caption))

    def draw(self):
        if not self.made:
            return "no plot data"
        gp = shutil.which("gnuplot")
        path = os.path.join(self.data, "plots.gp")
        with open(path, "w") as fh:
            fh.write("\n".join(self.script) + "\n")
        if not gp:
            self.made = []
            return ("gnuplot not found (Debian gnuplot-nox; `make bench` as root installs it): "
                    "the report has no plots; the data and the script are in plots/data/")
        r = subprocess.run([gp, path], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            self.made = []
            return "gnuplot failed: " + r.stderr.strip()[:500]
        self.made = [(n, c) for n, c in self.made if os.path.exists(os.path.join(self.dir, n))]
        return None


def plot_scaling(p, raw):
    rows = []
    with open(os.path.join(raw, "scaling.csv")) as fh:
        rows = list(csv.DictReader(fh))
    ncpu = len(os.sched_getaffinity(0))
    for shape in dict.fromkeys(r["shape"] for r in rows):
        safe = re.sub(r"[^a-z0-9]+", "_", shape)
        series = []
        for a in order_allocs({r["allocator"] for r in rows if r["shape"] == shape}):
            pts = sorted((int(r["threads"]), r["total_mops"], r["per_thread_mops"])
                         for r in rows if r["shape"] == shape and r["allocator"] == a)
            f = p.dat(f"scaling_{safe}_{a}.dat", [f"{t} {v} {pt}" for t, v, pt in pts])
            series.append((a, f))
        maxt = max(int(r["threads"]) for r in rows if r["shape"] == shape)
        common = ["unset label; unset arrow", "set logscale x 2", f"set xrange [0.8:{maxt * 1.25}]", "set xlabel 'threads'",
                  f"set arrow from {ncpu}, graph 0 to {ncpu}, graph 1 nohead dt 2 lc rgb 'black'",
                  f"set label 'CPUs ({ncpu})' at {ncpu}, graph 0.95 offset 0.5,0"]
        body = ["set key below horizontal",
                "set multiplot layout 1,2 title '" + shape + ": throughput against threads'"]
        for col, ylab in ((2, "total M items/s"), (3, "per thread M items/s")):
            body += common + [f"set ylabel '{ylab}'", "set yrange [0:*]", "plot " + ", ".join(
                f"'{f}' using 1:{col} with linespoints lw 2 pt 7 lc rgb '{COLORS.get(a, 'black')}' "
                f"title '{a}'" for a, f in series)]
        p.png(f"scaling_{safe}.png", f"{shape}: total and per-thread throughput against threads "
              f"(dashed line: the machine's {ncpu} CPUs; to its right, oversubscribed)", body)


def ns_of(cell):
    """'491', '2.21 µs', '324 µs', '1,234' -> ns; None when not a number"""
    m = re.match(r"^\s*([0-9][0-9,]*(?:\.[0-9]+)?)\s*(ns|µs|us|ms)?", cell)
    if not m:
        return None
    return float(m.group(1).replace(",", "")) * {"µs": 1e3, "us": 1e3, "ms": 1e6}.get(m.group(2), 1)


def churn_from_md(md):
    """The tail-latency table of results/malloc.md: {(alloc, threads): {"malloc": [5], "free": [5]}}"""
    vals, inside = {}, False
    with open(md) as fh:
        for line in fh:
            if line.startswith("### Tail latency"):
                inside = True
                continue
            if inside and line.startswith("#"):
                break
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not inside or len(cells) < 13 or not cells[1].isdigit():
                continue
            if cells[0] == "harness":
                continue
            v = [ns_of(c) for c in cells[3:13]]
            vals[(cells[0], int(cells[1]))] = {"malloc": v[:5], "free": v[5:]}
    return vals


def plot_latency(p, raw, md=None):
    """malloc's churn rows: percentiles of single malloc and free calls, from the newest raw run
    (raw) or, without one, from the table of results/malloc.md (md)."""
    vals = {}  # (alloc, threads) -> {"malloc": [...], "free": [...]}
    source = "malloc part, newest raw run"
    if not raw and md and os.path.exists(md):
        vals = churn_from_md(md)
        source = "malloc part, the table of " + os.path.basename(md) + ", an earlier run"
    for f in glob.glob(os.path.join(raw, "*.churn.json")) if raw else []:
        with open(f) as fh:
            d = json.load(fh)
        for b in d.get("benchmarks", []):
            if b.get("error_occurred") or (b.get("run_type") == "aggregate"
                                           and b.get("aggregate_name") != "median"):
                continue
            m = re.match(r"^([^/]+)/churn(?:/real_time/threads:(\d+))?$", b.get("run_name", ""))
            if not m or m.group(1) == "harness":
                continue
            key = (m.group(1), int(m.group(2) or 1))
            vals[key] = {op: [b.get(f"{op}_{q}") for q in PCTS] for op in ("malloc", "free")}
    if not vals:
        return False
    body = ["set multiplot layout 1,2 title 'latency of one call under churn (ns, log scale; "
            "solid: 1 thread, dashed: 2 threads)'"]
    for op in ("malloc", "free"):
        series = []
        rank = {a: i for i, a in enumerate(order_allocs({k[0] for k in vals}))}
        for (a, t) in sorted(vals, key=lambda k: (rank[k[0]], k[1])):
            v = vals[(a, t)][op]
            if any(x is None for x in v):
                continue
            f = p.dat(f"latency_{op}_{a}_{t}.dat",
                      [f"{i} {q} {max(x, 0.5):.2f}" for i, (q, x) in enumerate(zip(PCTS, v))])
            series.append(f"'{f}' using 1:3:xtic(2) with linespoints lw 2 pt 7 dt {1 if t == 1 else 2} "
                          f"lc rgb '{COLORS.get(a, 'black')}' title '{a} {t}T'")
        body += ["set logscale y 10", "set format y '%g'", "set xrange [-0.3:4.3]", f"set ylabel '{op} ns'",
                 "set xlabel 'percentile'", "set key below horizontal font ',8' maxrows 3",
                 "plot " + ", ".join(series)]
    p.png("latency_churn.png", f"malloc and free latency percentiles under churn ({source}; "
          "churn rows: 20,000 live blocks, 2,000,000 timed replacements per thread)", body,
          size="1100,450")
    return True


def plot_rss(p, raw):
    series, live, marks = [], None, []
    for a in order_allocs(os.path.basename(f)[:-4] for f in glob.glob(os.path.join(raw, "*.csv"))):
        f = os.path.join(raw, a + ".csv")
        with open(f) as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            continue
        pts = [f"{float(r['t_ms']) / 1000:.4f} {r['rss_mib']} {r['live_mib']} {r['phase']}"
               for r in rows]
        d = p.dat(f"rss_{a}.dat", pts)
        series.append((a, d))
        if live is None:
            live = (a, d)
            last = None
            for r in rows:
                if r["phase"] != last:
                    marks.append((float(r["t_ms"]) / 1000, PHASES[int(r["phase"])]
                                  if int(r["phase"]) < len(PHASES) else r["phase"]))
                    last = r["phase"]
    if not series:
        return False
    body = ["set xlabel 'seconds'", "set ylabel 'MiB'", "set yrange [0:*]", "set key top right",
            "set title 'RSS over time: grow to the peak, free 90%, small work, idle'"]
    for i, (t, name) in enumerate(marks[1:]):  # labels alternate in height: phases can be short
        body.append(f"set arrow from {t}, graph 0 to {t}, graph 1 nohead dt 3 lc rgb 'gray'")
        body.append(f"set label '{name}' at {t}, graph {0.97 - 0.05 * (i % 2):.2f} offset 0.3,0 "
                    "font ',8'")
    plots = [f"'{d}' using 1:2 with lines lw 2 lc rgb '{COLORS.get(a, 'black')}' title '{a}'"
             for a, d in series]
    plots.append(f"'{live[1]}' using 1:3 with lines dt 2 lw 1 lc rgb 'black' "
                 f"title 'live bytes (the program; {live[0]} run)'")
    body.append("plot " + ", ".join(plots))
    p.png("rss_over_time.png", "RSS of one process per allocator over the rss workload "
          "(phases marked; dashed: bytes the program holds)", body)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default="")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    ran = args.parts.split()
    os.makedirs(args.out, exist_ok=True)
    p = Plots(args.out)
    missing = []
    for part, fn in (("scaling", plot_scaling), ("malloc", plot_latency), ("rss", plot_rss)):
        raw = newest_raw(args.results, part)
        ok = False
        if raw or part == "malloc":
            try:
                ok = (fn(p, raw, os.path.join(args.results, "malloc.md")) if part == "malloc"
                      else fn(p, raw))
            except (OSError, ValueError, KeyError) as e:
                missing.append(f"{part}: its newest raw run {raw} could not be read ({e})")
                continue
        if not ok:
            missing.append(f"{part}: no raw run under {args.results}/raw (nor a table) with its "
                           "data: no plot")
    why_not = p.draw()

    out = ["# sheafalloc benchmark report", ""]
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.quick:
        out += ["**bench-quick**: every row ran once, briefly, to check that it runs; these "
                "numbers are not measurements.", ""]
    out += [f"Written {when}. Machine: {machine()}", ""]
    if args.note:
        out += [args.note, ""]
    out += ["Parts run for this report: " + (", ".join(ran) if ran else "none named") +
            ". The other tables below come from an earlier run (the date in each part's first "
            "line says which); the plots come from each part's newest raw run.", ""]
    out += ["## Plots", ""]
    if why_not:
        out += [f"No plots: {why_not}.", ""]
    for name, caption in p.made:
        out += [f"![{caption}](plots/{name})", "", f"*{caption}*", ""]
    for m in missing:
        out += [f"- {m}"]
    if missing:
        out.append("")
    for part in ORDER:
        md = os.path.join(args.results, part + ".md")
        if not os.path.exists(md):
            out += [f"## {part}", "", f"No table: {md} does not exist (the part has not run).", ""]
            continue
        with open(md) as fh:
            text = fh.read().strip()
        if part not in ran:
            text = re.sub(r"^(## .*)$", r"\1 (earlier run)", text, count=1, flags=re.M)
        out += [text, ""]
    path = os.path.join(args.out, "REPORT.md")
    with open(path, "w") as fh:
        fh.write("\n".join(out))
    print(f"== report: {path} ({len(p.made)} plots{'; ' + why_not if why_not else ''})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
