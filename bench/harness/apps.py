"""Inputs for the real-program workloads: the sqlite script, the generated C project
for the parallel build, and the redis check script. Everything is generated
deterministically so that every allocator sees byte-identical input and the expected
results are known in advance."""

import os


# ---- sqlite ----------------------------------------------------------------------------

def sqlite_script(rows):
    """A self-contained SQL session on an in-memory database: bulk insert, indexes,
    aggregation, update, delete, sorting, vacuum. The shell's .system command prints
    the process's own VmHWM at the end (its parent is the sqlite3 process)."""
    return f"""PRAGMA cache_size = -400000;
CREATE TABLE item(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, body TEXT, price REAL);
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {rows})
INSERT INTO item SELECT i, (i * 7919) % 1009,
  printf('n%08x', (i * 2654435761) % 4294967296),
  substr('every row of this table carries a slice of one sentence and a number', 1 + i % 40, 20 + i % 37)
    || printf('%d', i * 31 % 997),
  (i % 1000) / 8.0 FROM seq;
CREATE INDEX item_grp ON item(grp);
CREATE INDEX item_name ON item(name);
CREATE TABLE summary AS
  SELECT grp, count(*) AS n, total(price) AS p, group_concat(substr(name, 2, 3), ',') AS names
  FROM item GROUP BY grp;
UPDATE item SET body = body || '/' || name WHERE grp % 3 = 0;
DELETE FROM item WHERE grp % 7 = 0;
INSERT INTO item(grp, name, body, price)
  SELECT grp + 2000, name || 'x', upper(body), price * 2 FROM item WHERE id % 5 = 0;
SELECT count(*), sum(grp), sum(length(body)), total(price) FROM item;
SELECT count(*), sum(n), sum(length(names)) FROM summary;
SELECT grp, count(*), max(name) FROM item GROUP BY grp ORDER BY count(*) DESC, grp LIMIT 5;
SELECT count(*) FROM (SELECT DISTINCT body FROM item);
SELECT s.grp, s.n, count(i.id) FROM summary s JOIN item i ON i.grp = s.grp
  GROUP BY s.grp ORDER BY s.grp DESC LIMIT 3;
SELECT sum(length(x)) FROM (SELECT body AS x FROM item ORDER BY body DESC, id LIMIT 50000);
DROP INDEX item_name;
VACUUM;
SELECT count(*), sum(length(name)) FROM item;
.system grep VmHWM /proc/$PPID/status
"""


# ---- the generated C project -----------------------------------------------------------

M64 = (1 << 64) - 1


def _fn_value(f, k, x):
    """What generated function k of file f returns for argument x (64-bit wrap)."""
    a = (f * 1000003 + k * 7919 + 1) & M64
    b = (f * 31 + k * 17 + 3) & 63 or 1
    acc = x & M64
    for i in range(b):
        acc = (acc * a + i) & M64
        acc ^= acc >> 13
        if acc & 1:
            acc = (acc + (k << 3)) & M64
        else:
            acc = (acc - f) & M64
    table = [(f * 131 + k * 7 + j * 3) & 0xFFFF for j in range(16)]
    acc = (acc + table[acc & 15]) & M64
    return acc


def _fn_source(f, k):
    a = (f * 1000003 + k * 7919 + 1) & M64
    b = (f * 31 + k * 17 + 3) & 63 or 1
    table = ", ".join(str((f * 131 + k * 7 + j * 3) & 0xFFFF) for j in range(16))
    return f"""
uint64_t f{f}_{k}(uint64_t x)
{{
    static const uint64_t table[16] = {{ {table} }};
    uint64_t acc = x;
    for (uint64_t i = 0; i < {b}u; i++) {{
        acc = acc * UINT64_C({a}) + i;
        acc ^= acc >> 13;
        if (acc & 1)
            acc += (uint64_t){k} << 3;
        else
            acc -= {f}u;
    }}
    switch (acc & 3) {{
    case 0: return acc + table[acc & 15];
    case 1: return acc + table[acc & 15];
    case 2: return acc + table[acc & 15];
    default: return acc + table[acc & 15];
    }}
}}
"""


def make_project(path, files, funcs):
    """Writes a C project of FILES units with FUNCS functions each, a main that calls
    them all, and a Makefile; returns the checksum the built program must print."""
    os.makedirs(path, exist_ok=True)
    names = []
    for f in range(files):
        name = f"unit{f:03d}"
        names.append(name)
        body = ["/* generated for the build workload */", "#include <stdint.h>"]
        for k in range(funcs):
            body.append(_fn_source(f, k))
        # A table of function pointers so nothing can be dropped as unused.
        body.append(f"uint64_t (*const {name}_fns[{funcs}])(uint64_t) = {{")
        body.append(", ".join(f"f{f}_{k}" for k in range(funcs)) + " };")
        _write(os.path.join(path, name + ".c"), "\n".join(body) + "\n")
    decls = "\n".join(f"extern uint64_t (*const unit{f:03d}_fns[{funcs}])(uint64_t);"
                      for f in range(files))
    tables = ", ".join(f"unit{f:03d}_fns" for f in range(files))
    main = f"""/* generated for the build workload */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
{decls}
static uint64_t (*const *const units[{files}])(uint64_t) = {{ {tables} }};
int main(void)
{{
    uint64_t sum = 0;
    for (int f = 0; f < {files}; f++)
        for (int k = 0; k < {funcs}; k++)
            sum += units[f][k]((uint64_t)(f * 1000 + k));
    printf("checksum %016" PRIx64 "\\n", sum);
    return 0;
}}
"""
    _write(os.path.join(path, "main.c"), main)
    objs = " ".join(n + ".o" for n in names + ["main"])
    makefile = f"""# generated for the build workload
CC = gcc
CFLAGS = -O2 -g -Wall
OBJS = {objs}
prog: $(OBJS)
\t$(CC) -o $@ $(OBJS)
%.o: %.c
\t$(CC) $(CFLAGS) -c -o $@ $<
clean:
\trm -f prog $(OBJS)
"""
    _write(os.path.join(path, "Makefile"), makefile)
    total = 0
    for f in range(files):
        for k in range(funcs):
            total = (total + _fn_value(f, k, f * 1000 + k)) & M64
    return "%016x" % total


def clean_project(path):
    for name in os.listdir(path):
        if name.endswith(".o") or name == "prog":
            os.unlink(os.path.join(path, name))


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


# ---- redis -------------------------------------------------------------------------------

REDIS_CHECK_KEYS = 20000

# Run with EVAL after the benchmark: writes strings, lists and hashes, reads them back.
REDIS_CHECK_SCRIPT = """
local s = 0
for i = 1, %d do
  redis.call('SET', 'check:s:' .. i, string.rep('v', i %% 300))
  redis.call('RPUSH', 'check:l:' .. (i %% 50), i)
  redis.call('HSET', 'check:h:' .. (i %% 100), 'f' .. i, i * 3)
end
for i = 1, %d do s = s + #redis.call('GET', 'check:s:' .. i) end
for j = 0, 49 do s = s + redis.call('LLEN', 'check:l:' .. j) end
for j = 0, 99 do s = s + redis.call('HLEN', 'check:h:' .. j) end
return s
""" % (REDIS_CHECK_KEYS, REDIS_CHECK_KEYS)


def redis_check_expected():
    n = REDIS_CHECK_KEYS
    return sum(i % 300 for i in range(1, n + 1)) + n + n
