"""bench/programs/git_gen.py — a git fast-import stream for the git workload of bench/programs.sh.

usage: git_gen.py FILES COMMITS | git -C repo fast-import --quiet
FILES text files of source-like lines in a few directories, then COMMITS commits, each rewriting
a handful of lines in 12 of the files and adding one file. Authors, dates and contents are fixed:
the repository, and so every hash, is the same on every run.
"""
import random
import sys

files = int(sys.argv[1]) if len(sys.argv) > 1 else 400
commits = int(sys.argv[2]) if len(sys.argv) > 2 else 200
rng = random.Random(4242)
out = sys.stdout.buffer
words = ["alloc", "free", "slab", "sheaf", "barn", "cache", "node", "cpu", "page", "unit",
         "segment", "object", "size", "class", "lock", "list", "count", "flags", "order", "map"]


def line():
    return "\tx_%s = %s(%s, %d); /* %s %s */\n" % (
        rng.choice(words), rng.choice(words), rng.choice(words), rng.randrange(100000),
        rng.choice(words), rng.choice(words))


content = {}
for i in range(files):
    content["src/d%02d/f%04d.c" % (i % 16, i)] = [line() for _ in range(rng.randrange(40, 160))]


def blob(text):
    data = text.encode()
    out.write(b"data %d\n" % len(data))
    out.write(data)
    out.write(b"\n")


def commit(n, paths):
    t = 1700000000 + n * 3600
    out.write(b"commit refs/heads/main\n")
    out.write(b"author Bench <bench@example.org> %d +0000\n" % t)
    out.write(b"committer Bench <bench@example.org> %d +0000\n" % t)
    blob("change %d: %s\n" % (n, " ".join(sorted(paths)[:3])))
    if n == 0:
        out.write(b"deleteall\n")
    for p in paths:
        out.write(b"M 100644 inline %s\n" % p.encode())
        blob("".join(content[p]))


commit(0, list(content))
for n in range(1, commits):
    paths = rng.sample(sorted(content), 12)
    for p in paths:
        lines = content[p]
        for _ in range(rng.randrange(1, 6)):
            lines[rng.randrange(len(lines))] = line()
        if rng.random() < 0.5:
            lines.insert(rng.randrange(len(lines)), line())
    newp = "src/new/n%04d.c" % n
    content[newp] = [line() for _ in range(rng.randrange(10, 60))]
    commit(n, paths + [newp])
out.write(b"done\n")
