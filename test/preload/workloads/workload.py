# Python workload for the preload tests: dicts, lists, sorting, json, threads, sets.
# Deterministic output; run with PYTHONMALLOC=malloc so that every object goes through
# the C allocator.
import collections
import hashlib
import json
import random
import threading

random.seed(12345)

records = []
for i in range(60000):
    tags = ["abcdefgh"[random.randrange(8)] * random.randint(1, 20)
            for _ in range(random.randint(0, 6))]
    records.append({"id": i, "name": "item%05d" % random.randrange(100000),
                    "tags": tags, "value": random.random()})
records.sort(key=lambda r: (r["name"], -r["value"]))
by_tag = collections.defaultdict(list)
for r in records:
    for t in r["tags"]:
        by_tag[t].append(r["id"])
print("records", len(records), "tags", len(by_tag))
print("postings", sum(len(v) for v in by_tag.values()))
print("first", records[0]["name"], "last", records[-1]["name"])

text = json.dumps(records[:20000], sort_keys=True)
back = json.loads(text)
assert back == records[:20000]
print("json", len(text), hashlib.sha256(text.encode()).hexdigest())

s = "".join(str(i) for i in range(200000))
print("string", len(s), s.count("7"), s[1000:1020])
parts = s.split("99")
print("split", len(parts), max(len(p) for p in parts))

results = [None] * 8


def work(k):
    rnd = random.Random(k)
    d = {}
    for i in range(40000):
        d.setdefault(rnd.randrange(5000), []).append(i)
    items = sorted(d.items(), key=lambda kv: (len(kv[1]), kv[0]))
    results[k] = (len(d), items[0][0], items[-1][0], sum(len(v) for v in d.values()))


threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for r in results:
    print("thread", r)

big = set()
for i in range(300000):
    big.add((i * 7919) % 1000003)
    if i % 3 == 0:
        big.discard((i * 31) % 1000003)
print("set", len(big))

chunks = [bytes([i % 251]) * (i % 5000) for i in range(4000)]
joined = b"".join(chunks)
print("bytes", len(joined), hashlib.md5(joined).hexdigest())
