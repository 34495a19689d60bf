#!/usr/bin/env python3
"""tests/fuzz/make_corpus.py — writes the seed corpus of tests/fuzz/fuzz_api.c.

usage: tests/fuzz/make_corpus.py [DIR]      (default: tests/fuzz/corpus next to this script)

Each seed is a short program in the target's byte format (the opcodes and argument readers of
fuzz_api.c: enum op, gen_size, gen_flags, gen_align, op_cache_create): one per area of the API,
so the fuzzer starts from inputs that reach every operation with meaningful arguments instead
of having to discover the format. The files are committed; rerun this after changing the
format and commit the result.
"""
import os
import struct
import sys

OPS = """malloc malloc_flags calloc realloc reallocarray aligned_alloc posix_memalign memalign
free usable cache_create cache_alloc cache_alloc_node cache_free bulk_alloc bulk_free
cache_shrink cache_destroy sheaf_prefill sheaf_alloc sheaf_refill sheaf_return trim scope_save
scope_restore scope_flags free_rcu rcu_barrier check migrate""".split()
OP = {name: i for i, name in enumerate(OPS)}

SA_NOWAIT, SA_NOFS, SA_NOIO, SA_NORECLAIM, SA_NOFAIL = 1, 2, 4, 8, 16
SA_ZERO, SA_NOWARN, SA_HIGH, SA_PIN = 32, 64, 128, 256
TYPESAFE_RCU, HWCACHE_ALIGN = 1, 2
MIB = 1 << 20


def u16(v):
    return list(struct.pack("<H", v))


def size(n):
    """gen_size: a malloc size"""
    if n <= 255:
        return [0, n]
    if n == 256:
        return [1, 255]
    if n <= 4096:
        return [128] + u16(n)
    if n <= 65535:
        return [192] + u16(n)
    if n < 2 * MIB:
        return [232] + u16(n >> 5) + [n & 31]
    d = n - 2 * MIB
    assert 0 <= d <= 4 * MIB
    return [250] + u16(d >> 8) + [d & 0xFF]


def flags(f=0):
    """gen_flags: per-call flags; at most one of NOWAIT, PIN, NOFAIL"""
    if f == 0:
        return [1]
    b = 0
    for bit, flag in enumerate((SA_ZERO, SA_NOWARN, SA_NOFS, SA_NOIO, SA_NORECLAIM, SA_HIGH)):
        if f & flag:
            b |= 1 << bit
    c = 1 if f & SA_NOWAIT else 2 if f & SA_PIN else 3 if f & SA_NOFAIL else 0
    return [0, b, c]


def align(a):
    """gen_align: a power of two up to 4 MiB"""
    return [a.bit_length() - 1]


def idx(i):
    """pick_block: an index modulo the number of live blocks"""
    return u16(i)


def cache_create(sz, al=0, cap=0, fl=0, ctor=0, debug=False):
    # bit 3: with args; (kind >> 1) % 3: the constructor; never 0xf? (a bad argument)
    kind = next(k for k in range(8, 16) if (k >> 1) % 3 == ctor)
    if sz <= 64:
        sb = [0, sz - 1]
    elif sz <= 4096:
        sb = [128] + u16(sz - 1)
    elif sz <= 65536:
        sb = [208] + u16(sz - 1)
    else:
        assert (sz - 1) % 16 == 0
        sb = [248] + u16((sz - 1) >> 4)
    ak = 0 if al == 0 else next(k for k in range(128, 256) if k % 17 == al.bit_length() - 1)
    ck = 0 if cap == 0 else next(k for k in range(160, 256) if 1 + k % 64 == cap)
    fk = (fl & 3) | (0x18 if debug else 0)
    return [OP["cache_create"], kind] + sb + [ak, ck, fk]


def op(name, *args):
    out = [OP[name]]
    for a in args:
        out += a if isinstance(a, list) else [a]
    return out


def seeds():
    s = {}
    s["malloc_small"] = (
        op("malloc", size(0)) + op("malloc", size(1)) + op("malloc", size(24))
        + op("malloc", size(100)) + op("malloc", size(256)) + op("malloc", size(1000))
        + op("usable", idx(2)) + op("realloc", idx(1), size(300)) + op("realloc", idx(3), size(8))
        + op("free", idx(0), 0) + op("calloc", 3, size(90)) + op("reallocarray", idx(2), 4, size(400))
        + op("check") + op("free", idx(1), 0) + op("realloc", idx(0), size(0))
    )
    s["malloc_large"] = (
        op("malloc", size(40000)) + op("malloc", size(300000)) + op("malloc", size(3 * MIB))
        + op("usable", idx(1)) + op("realloc", idx(0), size(1500000))
        + op("realloc", idx(2), size(5 * MIB)) + op("calloc", 1, size(2 * MIB + 4096))
        + op("check") + op("realloc", idx(1), size(100)) + op("free", idx(2), 0)
        + op("trim") + op("calloc", 1, size(3 * MIB)) + op("check")
    )
    s["malloc_aligned"] = (
        op("aligned_alloc", align(64), size(10)) + op("aligned_alloc", align(4096), size(5000))
        + op("posix_memalign", align(256), size(70000)) + op("memalign", align(1 << 20), size(100))
        + op("aligned_alloc", align(2 * MIB), size(3 * MIB)) + op("posix_memalign", align(4), size(1))
        + op("aligned_alloc", [23, 21], size(10)) + op("memalign", [23, 45], size(33))
        + op("malloc_flags", size(5000), flags(SA_ZERO)) + op("malloc_flags", size(64), flags(SA_PIN))
        + op("calloc", 0, size(8)) + op("reallocarray", idx(0), 0xFF, size(1)) + op("check")
    )
    s["cache_life"] = (
        cache_create(48, ctor=1) + op("cache_alloc", 0, flags()) + op("cache_alloc", 0, flags(SA_ZERO))
        + op("bulk_alloc", 0, flags(), 20) + op("cache_free", idx(0)) + op("free", idx(3), 1)
        + op("bulk_free", 0, 10) + op("check") + op("cache_shrink", 0)
        + cache_create(1000, al=256, cap=7, fl=HWCACHE_ALIGN)
        + op("cache_alloc_node", 1, flags(), 1) + op("cache_alloc_node", 1, flags(), 3)
        + op("bulk_alloc", 1, flags(SA_ZERO), 30) + op("bulk_free", 1, 40) + op("cache_destroy", 1)
        + cache_create(200001, al=4096) + op("bulk_alloc", 2, flags(), 5) + op("check")
        + cache_create(16, debug=True) + op("cache_alloc", 3, flags()) + op("free", idx(0), 1)
    )
    s["sheaves"] = (
        cache_create(64) + op("sheaf_prefill", 0, flags(), u16(10))
        + op("sheaf_alloc", 0, flags(), 3) + op("sheaf_refill", 0, flags(), u16(200))
        + op("sheaf_alloc", 0, flags(SA_ZERO), 0xFF) + op("sheaf_prefill", 0, flags(), u16(300))
        + op("sheaf_alloc", 1, flags(), 7) + op("check") + op("sheaf_return", 1, flags())
        + cache_create(3000, cap=4, ctor=2) + op("sheaf_prefill", 1, flags(), u16(4))
        + op("sheaf_prefill", 1, flags(), u16(0)) + op("sheaf_alloc", 2, flags(), 5)
        + op("sheaf_refill", 2, flags(), u16(2)) + op("sheaf_return", 2, flags()) + op("check")
    )
    s["scopes"] = (
        cache_create(128, ctor=1)
        + op("scope_save", 4, 0) + op("malloc", size(50)) + op("cache_alloc", 0, flags())
        + op("scope_save", 5, 0x01) + op("malloc", size(5000)) + op("sheaf_prefill", 0, flags(), u16(5))
        + op("scope_flags", u16(SA_NOFAIL)) + op("scope_flags", u16(0x8400))
        + op("scope_flags", u16(SA_NOFS | SA_HIGH)) + op("cache_create", 8, 0, 10, 0, 0, 0)
        + op("cache_shrink", 0) + op("sheaf_alloc", 0, flags(), 0xFF) + op("scope_restore")
        + op("scope_restore") + op("scope_restore") + op("scope_save", 0, 0) + op("scope_save", 3, 0)
        + op("cache_alloc", 0, flags()) + op("malloc_flags", size(100000), flags(SA_NOWAIT))
        + op("check") + op("scope_restore") + op("scope_save", 2, 0) + op("scope_save", 1, 0)
        + op("calloc", 2, size(64)) + op("check")
    )
    s["rcu"] = (
        cache_create(96, fl=TYPESAFE_RCU, ctor=2) + op("bulk_alloc", 0, flags(), 40)
        + op("malloc", size(70)) + op("malloc", size(50000)) + op("malloc", size(2 * MIB + 100))
        + op("free_rcu", idx(40)) + op("free_rcu", idx(0)) + op("free_rcu", idx(5))
        + op("free_rcu", idx(39)) + op("rcu_barrier") + op("check") + op("bulk_free", 0, 20)
        + op("cache_shrink", 0) + op("free_rcu", idx(1)) + op("trim") + op("rcu_barrier")
    )
    # a regression (issue 16): a constructed cache, a NOWAIT bulk allocation with SA_ZERO that
    # fails part-way (it gave back objects it had zeroed), then allocations
    s["bulk_zero_ctor"] = (
        cache_create(60000 - 59999 % 16, ctor=1) + op("bulk_alloc", 0, flags(), 16)
        + op("bulk_free", 0, 16) + op("scope_save", 4, 0) + op("bulk_alloc", 0, flags(SA_ZERO), 63)
        + op("scope_restore") + op("bulk_alloc", 0, flags(), 40) + op("check")
    )
    # the other way to it (fixed too): a prefill with SA_PIN | SA_ZERO made the pinned companion
    # with one allocation (zeroed) that it freed at once
    s["prefill_pin_zero_ctor"] = (
        cache_create(64, ctor=1) + op("sheaf_prefill", 0, flags(SA_PIN | SA_ZERO), u16(4))
        + op("sheaf_return", 0, flags()) + op("bulk_alloc", 0, flags(SA_PIN), 40) + op("check")
    )
    # a typesafe cache destroyed while its emptied slabs wait for a grace period, and a new
    # cache that reuses its struct (the RCU thread released them through it: fixed in 44f29df;
    # the fuzzer's slabs_freed <= slabs_allocated check found it)
    s["typesafe_destroy"] = (
        cache_create(11216 + 1, fl=TYPESAFE_RCU) + op("bulk_alloc", 0, flags(), 63)
        + op("bulk_free", 0, 63) + op("cache_destroy", 0) + cache_create(64)
        + op("rcu_barrier") + op("check") + op("cache_alloc", 0, flags()) + op("check")
    )
    # a regression (issue 16), on two nodes of a CPU each (HWLOC_SYNTHETIC="node:2 core:1 pu:1"):
    # the reserve prepared on node 0, a reserve slab filed under node 1 and freed through node 0,
    # then another cache's reserve slab
    nowait_alloc = lambda cache: (op("scope_save", 4, 0) + op("cache_alloc", cache, flags(SA_HIGH))
                                  + op("scope_restore"))
    s["reserve_node"] = (
        op("migrate", 0) + op("scope_save", 4, 0) + op("scope_restore") + cache_create(128)
        + cache_create(128) + op("migrate", 1) + nowait_alloc(0) + op("free", idx(0), 1)
        + op("migrate", 0) + nowait_alloc(1) + op("migrate", 1) + nowait_alloc(0)
        + op("cache_free", idx(1)) + op("check")
    )
    # a refill in place that runs out of memory under NOWAIT after it got some objects
    # (op_sheaf_refill in fuzz_api.c: -ENOMEM, the same sheaf, maybe grown: docs/api.md)
    s["refill_partial"] = (
        cache_create(566257) + op("sheaf_prefill", 0, flags(), u16(29))
        + op("sheaf_alloc", 0, flags(), 6) + op("scope_save", 4, 0)
        + op("sheaf_refill", 0, flags(SA_NOWARN), u16(29)) + op("scope_restore") + op("check")
    )
    return s


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus")
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(seeds().items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(bytes(data))
        print(f"{out}/{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
