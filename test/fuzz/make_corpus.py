#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_api.c to test/fuzz/corpus/: small programs that reach
each operation, each size kind and each alignment kind at least once. The byte layout is
the harness's decoder (operation byte, then its arguments)."""
import os
import random

OPS = dict(malloc=0, calloc=3, realloc=4, reallocarray=6, free=7, free_sized=9,
           free_aligned_sized=10, aligned_alloc=11, memalign=12, posix_memalign=13,
           valloc=14, pvalloc=15, usable=16, trim=17, fault=18, unfault=19, check=20,
           rewrite=21, realloc_usable=22)


def small(n):  return bytes([0, n & 0xff, n >> 8])
def medium(x): return bytes([6]) + x.to_bytes(4, "little")
def huge(x):   return bytes([9]) + x.to_bytes(4, "little")
def boundary(i): return bytes([10, i])
def impossible(i): return bytes([12, i])
def legal_huge(i): return bytes([13, i])
def pow2(k):   return bytes([0, k])
def bigpow2(k): return bytes([5, k])
def odd(i):    return bytes([7, i])


def op(name, *args):
    return bytes([OPS[name]]) + b"".join(args)


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(out, exist_ok=True)
    seeds = {}
    sizes = [small(24), small(8192), medium(100000), huge(3 << 20), boundary(27),
             impossible(0), legal_huge(2)]
    for i, s in enumerate(sizes):
        seeds[f"malloc-free-{i}"] = op("malloc", s) + op("free", b"\0")
        seeds[f"malloc-realloc-{i}"] = op("malloc", small(100)) + op("realloc", b"\1\0", s) + \
            op("check") + op("free", b"\0")
    for i in range(11):
        seeds[f"calloc-overflow-{i}"] = op("calloc", b"\0", bytes([i]))
    seeds["calloc-medium"] = op("calloc", b"\1", medium(200000), b"\3") + op("free_sized", b"\0")
    seeds["calloc-huge"] = op("calloc", b"\1", huge(1 << 20), b"\1") + op("free_sized", b"\0")
    for i in range(5):
        seeds[f"reallocarray-{i}"] = op("malloc", small(64)) + op("reallocarray", b"\1\0\0", bytes([i]))
    aligns = [pow2(4), pow2(12), pow2(16), bigpow2(3), bigpow2(9), odd(0), odd(3), odd(10),
              odd(13), bytes([6, 0x30, 0x00])]
    for name in ("aligned_alloc", "memalign", "posix_memalign"):
        for i, a in enumerate(aligns):
            free = "free_aligned_sized" if name == "aligned_alloc" else "free"
            seeds[f"{name}-{i}"] = op(name, a, small(100 + 300 * i)) + op("usable", b"\0") + \
                op(free, b"\0")
    seeds["valloc-pvalloc"] = op("valloc", small(5000)) + op("pvalloc", medium(10000)) + \
        op("pvalloc", small(0)) + op("pvalloc", impossible(3)) + op("check") + \
        op("free", b"\0") + op("free", b"\0") + op("free", b"\0")
    for bit in range(5):
        seeds[f"fault-{bit}"] = op("malloc", small(40)) + op("malloc", huge(5 << 20)) + \
            op("fault", bytes([1 << bit, 0, 250])) + op("malloc", medium(300000)) + \
            op("realloc", b"\1\1", huge(6 << 20)) + op("malloc", small(3000)) + \
            op("free", b"\0") + op("trim", b"\0") + op("unfault") + op("free", b"\0")
    seeds["fault-skip"] = op("fault", bytes([0x1f, 3, 2])) + \
        b"".join(op("malloc", medium(50000 * k)) for k in range(1, 9)) + op("unfault")
    seeds["realloc-usable"] = op("malloc", small(100)) + op("realloc_usable", b"\0") + \
        op("rewrite", b"\0") + op("usable", b"\0") + op("free_sized", b"\0")
    rng = random.Random(1)
    for i in range(6):
        seeds[f"random-{i}"] = bytes(rng.randrange(256) for _ in range(64 + 64 * i))
    for name, data in sorted(seeds.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seeds in {out}")


if __name__ == "__main__":
    main()
