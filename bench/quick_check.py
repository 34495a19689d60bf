#!/usr/bin/env python3
"""bench/quick_check.py — make bench-quick's check of one part's raw results.

usage: quick_check.py RUN_DIR
Every google-benchmark JSON of RUN_DIR is read; a row of sheafalloc (name starting with
"sheafalloc" or "scope/" or "rcu/sheafalloc" or "sheaf/") that reports error_occurred fails the check
(exit 1, the message printed); a peer's error (typically: not installed) is printed as a note.
"""
import json
import os
import sys


def ours(name):
    return name.startswith(("sheafalloc", "scope/", "rcu/sheafalloc", "sheaf/"))


def main():
    run = sys.argv[1]
    bad, notes, rows = [], [], 0
    for f in sorted(os.listdir(run)):
        if not f.endswith(".json"):
            continue
        with open(os.path.join(run, f)) as fh:
            d = json.load(fh)
        for b in d.get("benchmarks", []):
            rows += 1
            if b.get("error_occurred"):
                msg = "%s: %s" % (b.get("name"), b.get("error_message", "?"))
                (bad if ours(b.get("name", "")) else notes).append(msg)
    for n in notes:
        print("note: a peer's row did not run: " + n)
    for b in bad:
        print("FAIL: " + b)
    if not rows:
        print("FAIL: no benchmark row in " + run)
        return 1
    print("quick check of %s: %d rows, %d failed, %d peer notes" % (run, rows, len(bad),
                                                                     len(notes)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
