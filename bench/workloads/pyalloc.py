"""pyalloc - an allocation-heavy Python program for the python workload.

Run as: python3 -S pyalloc.py SCALE   (with PYTHONMALLOC=malloc, PYTHONHASHSEED=0)

With PYTHONMALLOC=malloc every object the interpreter creates (ints, strings, tuples,
dicts, lists, instances) comes from malloc, so this measures the allocator under a
dynamic language runtime: many tiny objects of a few size classes, dict and list
growth by realloc, and waves of frees as generations of data die. The checksum depends
only on SCALE.
"""
import json
import sys
import zlib


class Order:
    def __init__(self, oid, customer, lines):
        self.oid = oid
        self.customer = customer
        self.lines = lines
        self.notes = None

    def total(self):
        return sum(qty * price for _, qty, price in self.lines)


def lcg(seed):
    state = seed & 0xFFFFFFFF
    while True:
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        yield state


def make_orders(rand, count, base):
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    orders = []
    for i in range(count):
        r = next(rand)
        nlines = 1 + r % 7
        lines = [("sku-%d-%s" % (next(rand) % 5000, words[(r >> (k + 3)) % 8]),
                  1 + (r >> k) % 9, ((r >> (2 * k)) % 10000) / 100.0)
                 for k in range(nlines)]
        o = Order(base + i, "cust-%05d" % (r % 20000), lines)
        if r % 5 == 0:
            o.notes = {"gift": r % 2 == 0, "tags": [words[(r >> j) % 8] for j in range(r % 6)]}
        orders.append(o)
    return orders


def wave(rand, count, base):
    """One generation: build, transform, serialise, aggregate, then let it all die."""
    orders = make_orders(rand, count, base)
    by_customer = {}
    for o in orders:
        by_customer.setdefault(o.customer, []).append(o)
    totals = {c: round(sum(o.total() for o in os_), 2) for c, os_ in by_customer.items()}
    top = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:50]
    records = [{"id": o.oid, "customer": o.customer,
                "lines": [list(line) for line in o.lines], "notes": o.notes}
               for o in orders if o.oid % 3 != 0]
    text = json.dumps(records, sort_keys=True)
    back = json.loads(text)
    skus = set()
    for rec in back:
        for sku, _, _ in rec["lines"]:
            skus.add(sku.split("-")[1])
    words = " ".join(o.customer for o in orders).split()
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    crc = zlib.crc32(text.encode())
    crc = zlib.crc32(repr(top).encode(), crc)
    crc = zlib.crc32(repr(sorted(skus)[:100]).encode(), crc)
    crc = zlib.crc32(repr(sorted(counts.items())[:100]).encode(), crc)
    return crc, len(back), len(skus)


def vmhwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def main():
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    rand = lcg(12345)
    waves = max(2, int(24 * scale))
    keep = []          # a slowly growing set of survivors, like caches in a long-lived program
    check = 0
    bad = False
    for w in range(waves):
        crc, nrec, nsku = wave(rand, 6000, w * 6000)
        if nrec <= 0 or nsku <= 0:
            bad = True
        check = zlib.crc32(("%d:%d:%d" % (crc, nrec, nsku)).encode(), check)
        keep.append(make_orders(rand, 500, 10**7 + w * 500))
        if len(keep) > 6:
            keep.pop(0)
    check = zlib.crc32(repr(sum(o.total() for batch in keep for o in batch)).encode(), check)
    sys.stdout.write("checksum %016x\nverify %s\nvmhwm_kib %d\n" % (check, "FAILED" if bad else "ok", vmhwm_kib()))
    return 3 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
