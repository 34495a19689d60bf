"""bench/programs/alloc_heavy.py — an allocation-heavy Python workload for bench/programs.sh.

Deterministic (fixed seeds, no time, no addresses, no hash-order-dependent output): it prints the
same lines under every allocator, and programs.sh checks that. Mixes what CPython allocates:
small objects (pymalloc, or malloc under PYTHONMALLOC=malloc), and what always comes from malloc:
objects over 512 bytes, list and dict tables that grow (realloc), big strings and bytes, bytearrays
that grow in place.
"""
import hashlib
import json
import random
import sys

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1


def records(rng, n):
    out = []
    for i in range(n):
        out.append({
            "id": i,
            "name": "user%06d" % rng.randrange(1_000_000),
            "tags": [rng.choice("abcdefghij") * rng.randrange(1, 8) for _ in range(rng.randrange(0, 6))],
            "score": rng.random(),
            "blob": "x" * rng.randrange(16, 1500),
        })
    return out


class Node:
    __slots__ = ("left", "right", "val")

    def __init__(self, left, right, val):
        self.left, self.right, self.val = left, right, val


def tree(depth, val):
    if depth == 0:
        return Node(None, None, val)
    return Node(tree(depth - 1, 2 * val), tree(depth - 1, 2 * val + 1), val)


def check(t):
    total, stack = 0, [t]
    while stack:
        n = stack.pop()
        total += n.val
        if n.left:
            stack.append(n.left)
            stack.append(n.right)
    return total


def main():
    rng = random.Random(12345)
    h = hashlib.sha256()
    for rnd in range(3 * SCALE):
        recs = records(rng, 40_000)
        recs.sort(key=lambda r: (r["name"], r["id"]))
        by_tag = {}
        for r in recs:
            for t in r["tags"]:
                by_tag.setdefault(t, []).append(r["id"])
        text = json.dumps(recs[::7], sort_keys=True)
        back = json.loads(text)
        h.update(text.encode())
        h.update(repr(sorted((k, len(v)) for k, v in by_tag.items())).encode())
        print("round", rnd, len(recs), len(by_tag), len(text), len(back))
        del recs, by_tag, text, back
    # growing buffers: list, bytearray, str join, dict
    for rnd in range(2 * SCALE):
        ba = bytearray()
        parts = []
        d = {}
        for i in range(150_000):
            ba += b"%d," % i
            parts.append(str(i * i))
            d[i * 2654435761 % 1_000_003] = i
        s = "|".join(parts)
        h.update(ba)
        h.update(s.encode())
        print("grow", rnd, len(ba), len(s), len(d))
        del ba, parts, d, s
    # short-lived small objects
    for rnd in range(2 * SCALE):
        t = tree(16, 1)
        print("tree", rnd, check(t))
        del t
    # strings of many sizes, most over pymalloc's 512 bytes
    pool = []
    for i in range(60_000):
        pool.append("%d" % i * rng.randrange(1, 400))
        if len(pool) > 5000:
            pool.pop(rng.randrange(len(pool)))
    print("pool", len(pool), sum(map(len, pool)))
    print("sha256", h.hexdigest())


main()
