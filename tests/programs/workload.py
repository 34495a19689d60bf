# tests/programs/workload.py — an allocation-heavy, fully deterministic Python workload.
#
# usage: python3 workload.py SCALE
#
# Builds and tears down many small and large objects (dicts, lists, tuples, strings, bytes,
# sets), round-trips them through json and pickle, sorts, grows and shrinks containers (realloc
# paths), and allocates from several threads at once. Every phase feeds a running SHA-256; the
# script prints one line per phase and a final digest. run_programs.sh runs it with and without
# the sheafalloc preload (PYTHONHASHSEED=0) and requires identical output.
import gc
import hashlib
import json
import pickle
import random
import sys
import threading
import zlib
from collections import Counter, OrderedDict, defaultdict, deque

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1
N = 100_000 * SCALE  # records per phase (json phase: ~3 objects per record)
digest = hashlib.sha256()


def feed(label, value):
    data = value if isinstance(value, bytes) else repr(value).encode()
    digest.update(label.encode() + b"\0" + data)
    print(f"{label}: {hashlib.sha256(data).hexdigest()[:16]}")


rng = random.Random(12345)
WORDS = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 12)))
         for _ in range(5000)]

# 1. records: dicts of lists and strings, ~3 objects each, json round trip
records = []
for i in range(N):
    records.append({
        "id": i,
        "name": WORDS[rng.randrange(len(WORDS))] + "-" + str(i),
        "tags": [WORDS[rng.randrange(len(WORDS))] for _ in range(rng.randint(0, 5))],
        "score": rng.random() * 1000.0,
        "nested": {"a": i % 7, "b": [i, i * 2, str(i)]},
    })
text = json.dumps(records, sort_keys=True)
back = json.loads(text)
assert back == records, "json round trip changed the data"
feed("json", hashlib.sha256(text.encode()).digest())
del text

# 2. sorting by several keys, grouping, counting
by_score = sorted(back, key=lambda r: (-round(r["score"], 3), r["name"]))
feed("sort", [r["id"] for r in by_score[:2000]])
groups = defaultdict(list)
for r in back:
    for t in r["tags"]:
        groups[t].append(r["id"])
feed("groups", sorted((k, len(v), sum(v) % 1000003) for k, v in groups.items())[:3000])
cnt = Counter(t for r in back for t in r["tags"])
feed("counter", cnt.most_common(200))
del by_score, groups, cnt, back

# 3. string building: joins, formatting, slicing, replace, split, encode
parts = []
for i in range(N):
    s = f"{WORDS[i % len(WORDS)]}:{i:08x}:{i * 31 % 977}"
    parts.append(s.upper() if i % 3 == 0 else s[::-1])
big = "|".join(parts)
pieces = big.split("|")
assert pieces == parts
rebuilt = "".join(p.replace("a", "AA").replace(":", "") for p in pieces)
feed("strings", hashlib.sha256(rebuilt.encode("utf-8")).digest())
uni = "".join(chr(0x400 + (i % 600)) + chr(0x4E00 + (i % 2000)) for i in range(N // 4))
feed("unicode", hashlib.sha256(uni.encode("utf-16")).digest() + uni[1000:1100].encode())
del parts, big, pieces, rebuilt, uni

# 4. containers that grow and shrink (realloc paths): lists, bytearrays, dicts, sets, deques
lst = []
ba = bytearray()
dq = deque()
d = {}
st = set()
for i in range(N):
    lst.append(i)
    ba += i.to_bytes(4, "little")
    dq.append((i, str(i)))
    d[("k", i)] = [i] * (i % 8)
    st.add(i * 2654435761 % 1000003)
    if i % 5 == 4:
        lst.pop(0 if i % 2 else -1)
        del ba[: 3]
        dq.popleft()
        d.pop(("k", i - 3), None)
        st.discard(i * 7 % 1000003)
feed("grow", (len(lst), sum(lst), len(ba), zlib.crc32(ba), len(dq), len(d), len(st), sum(st)))
while len(lst) > 10:
    del lst[len(lst) // 2:]
    lst = lst[:]
ba = ba[: len(ba) // 100]
feed("shrink", (lst, zlib.crc32(bytes(ba))))
del lst, ba, dq, d, st

# 5. pickle round trip of a graph with shared references and cycles
leaves = [{"n": -i, "label": "leaf%d" % i, "edges": []} for i in range(1000)]
nodes = [{"n": i, "edges": [], "data": (i, str(i), float(i) / 3)} for i in range(N // 5)]
for i, node in enumerate(nodes):
    node["self"] = node  # a cycle
    for k in range(1, 4):
        node["edges"].append(leaves[(i * k * 7919 + k) % len(leaves)])
for i, leaf in enumerate(leaves):
    leaf["edges"].append(leaves[(i + 1) % len(leaves)]["label"])
blob = pickle.dumps(nodes, protocol=pickle.HIGHEST_PROTOCOL)
copy = pickle.loads(blob)
assert all(c["self"] is c for c in copy)
feed("pickle", [(c["n"], c["data"], [e["n"] for e in c["edges"]]) for c in copy[::97]])
feed("pickle-shared", len({id(e) for c in copy for e in c["edges"]}))
del nodes, copy, blob, leaves
gc.collect()

# 6. OrderedDict LRU churn: many short-lived entries
lru = OrderedDict()
hits = 0
for i in range(N * 2):
    key = (i * 48271) % (N // 3 + 1)
    if key in lru:
        lru.move_to_end(key)
        hits += 1
    else:
        lru[key] = "v" * (key % 50)
        if len(lru) > 5000:
            lru.popitem(last=False)
feed("lru", (hits, len(lru), list(lru)[:50]))
del lru

# 7. bytes: compression of many buffers of various sizes (large allocations)
bufs = [bytes((j * i) & 0xFF for j in range(64 + (i * 997) % 20000)) for i in range(200 * SCALE)]
comp = [zlib.compress(b, 6) for b in bufs]
assert [zlib.decompress(c) for c in comp] == bufs
feed("zlib", [len(c) for c in comp])
del bufs, comp

# 8. threads: each thread allocates and frees its own structures; results are per thread
results = [None] * 4


def worker(t):
    r = random.Random(t)
    acc = []
    table = {}
    for i in range(N // 4):
        k = r.randrange(10000)
        table[k] = table.get(k, "") + chr(97 + i % 26)
        if len(table[k]) > 40:
            acc.append(table.pop(k))
        if i % 1000 == 0:
            acc = [s[::-1] for s in acc[-100:]]
    results[t] = hashlib.sha256(("".join(acc) + repr(sorted(table.items()))).encode()).hexdigest()


threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
for th in threads:
    th.start()
for th in threads:
    th.join()
feed("threads", results)

print("digest:", digest.hexdigest())
