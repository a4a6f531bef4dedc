#!/usr/bin/env python3
"""Driver of the tamalloc benchmark suite; bench/run builds everything and calls it.

It runs every workload with every allocator, the allocators interleaved and their order
rotated from round to round, and keeps every measurement. Allocators are chosen with
LD_PRELOAD on the very same binaries; glibc is the process without any preload.
Python standard library only.
"""

import argparse
import functools
import hashlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, HERE)

import apps    # noqa: E402
import report  # noqa: E402

WORK = os.path.join(BENCH, ".work")
BIN = os.path.join(WORK, "bin")
STUB_DIR = os.path.join(WORK, "stub")
LAUNCH = os.path.join(BIN, "launch")
PYTHON_WORKLOAD = os.path.join(BENCH, "workloads", "pyalloc.py")
SYSTEM_PYTHON = "/usr/bin/python3"

FAILURES = ("crashed", "wrong output", "timeout", "not interposed")


def rel(path):
    """Paths in results are relative to the repository root."""
    return os.path.relpath(path, ROOT)


# ---- workloads ---------------------------------------------------------------------------

class Workload:
    def __init__(self, name, kind, what, *, threaded=False, quick=1.0, full=1.0,
                 timeout=(60, 150), cpu_check=False, more_threads=None):
        self.name = name
        self.kind = kind            # prog, redis, sqlite, python, build, instr
        self.what = what            # one line: what it stresses
        self.threaded = threaded
        self.scale = {"quick": quick, "full": full}
        self.timeout = {"quick": timeout[0], "full": timeout[1]}
        self.cpu_check = cpu_check  # a 2-thread run should keep both cores busy
        # Thread counts run on top of the suite's own (THREADS), per mode.
        self.more_threads = more_threads or {"quick": [], "full": []}

    def thread_counts(self, mode, chosen=None):
        """The thread counts of this workload: the --threads list when one was given,
        otherwise the suite's list for the mode and this workload's additions."""
        if not self.threaded:
            return [1]
        if chosen:
            return list(chosen)
        return sorted(set(THREADS[mode]) | set(self.more_threads[mode]))

    def describe(self, mode=None, chosen=None):
        d = {"name": self.name, "kind": self.kind, "stresses": self.what,
             "threaded": self.threaded, "scale": self.scale}
        if mode:
            d["threads"] = self.thread_counts(mode, chosen)
        return d


# Scales: 1.0 is each program's own full size; quick runs use less. The figures are
# chosen so that a quick run of the whole suite fits in 10 minutes on 2 cores and the
# full run in an hour, with room for allocators slower than the reference ones.
WORKLOADS = [
    Workload("churn", "prog",
             "one thread churning small objects of a skewed size mix with short, medium and "
             "long lifetimes, some grown by realloc (cfrac, espresso, alloc-test kind)",
             quick=0.4, full=1.0),
    Workload("structs", "prog",
             "small nodes linked into search trees and expression terms, then torn down "
             "(lean, glibc-simple kind)",
             quick=0.4, full=0.8),
    Workload("random", "prog",
             "one thread replacing random blocks among 20,000 live ones of 8 B to 1 KiB: "
             "frees scattered over every run, no locality (hash tables, caches)",
             quick=0.4, full=1.0),
    Workload("server", "prog",
             "threads replace random blocks in slot arrays that pass to newly created threads "
             "every round: remote frees plus thread churn (larson kind)",
             threaded=True, cpu_check=True, quick=0.4, full=1.0),
    Workload("prodcons", "prog",
             "producer threads allocate, consumer threads free what they receive (xmalloc kind)",
             threaded=True, cpu_check=True, quick=0.4, full=0.8),
    Workload("false-passive", "prog",
             "passive false sharing: small objects handed from one thread to others, then "
             "reused for write-heavy work (cache-scratch kind)",
             threaded=True, cpu_check=True, quick=0.4, full=1.0),
    Workload("false-active", "prog",
             "active false sharing: threads allocate small objects at the same time and write "
             "them hard (cache-thrash kind)",
             threaded=True, cpu_check=True, quick=0.4, full=1.0),
    Workload("threads-32k", "prog",
             "many threads replacing blocks of 8 B to 32 KiB, log-uniform sizes "
             "(glibc-thread kind)",
             threaded=True, cpu_check=True, quick=0.4, full=0.8),
    Workload("large", "prog",
             "blocks of 5 to 25 MiB with up to 20 live, every page written "
             "(malloc-large kind)",
             quick=0.3, full=1.0),
    Workload("spans", "prog",
             "blocks of 256 KiB to 4 MiB replaced at random, 8 live, written at both ends: "
             "medium and huge blocks reused, or mapped and unmapped every cycle",
             quick=0.4, full=1.0),
    Workload("sparse", "prog",
             "threads replace blocks of 1 to 12 MiB, 128 live, touching only the first "
             "8 KiB and a byte every 256 KiB: peak RSS against the pages touched",
             threaded=True, quick=0.3, full=1.0),
    Workload("realloc", "prog",
             "vectors and string builders grown with realloc to tens of MiB",
             quick=0.3, full=1.0),
    Workload("abandon", "prog",
             "threads exit leaving live blocks that the next generation frees (mleak kind)",
             threaded=True, cpu_check=True, quick=0.4, full=0.8),
    Workload("frag", "prog",
             "fill to 128 MiB live, free a random half, refill with other sizes, repeat: "
             "peak RSS against peak live bytes (Johnstone and Wilson)",
             quick=0.5, full=1.0),
    Workload("pool", "prog",
             "a pool of threads serving requests (16 B to 256 KiB, a quarter freed by another "
             "thread, a FIFO cache of responses per thread), then idle, then gone: peak, idle "
             "and after-exit RSS against peak live bytes",
             threaded=True, quick=0.5, full=1.0,   # no cpu_check: it pauses by design
             more_threads={"quick": [64, 256], "full": [256, 1024]}),
    Workload("handoff", "prog",
             "one thread frees 96 MiB of 100 KB blocks and blocks, alive; another then "
             "allocates as much: peak RSS against the 96 MiB live at any moment",
             quick=0.5, full=1.0),
    Workload("giveback", "prog",
             "threads allocate 800 MiB (16 B to 8 MiB) and exit; all of it is freed, then an "
             "idle second with small allocations only: RSS kept after it, above the start",
             quick=0.5, full=1.0),   # no cpu_check: it pauses by design
    Workload("redis", "redis",
             "redis-server driven by redis-benchmark: pipelined strings, lists, sets, hashes "
             "and sorted sets (time is the benchmark's, CPU the server's)",
             quick=0.3, full=1.0),
    Workload("sqlite", "sqlite",
             "sqlite3 on an in-memory database: bulk insert, indexes, grouping, updates, "
             "deletes, sorting, vacuum",
             quick=0.4, full=1.0),
    Workload("python", "python",
             "python3 with PYTHONMALLOC=malloc: objects, dicts, lists and JSON round trips",
             quick=0.25, full=1.0),
    Workload("build", "build",
             "make -j2 of a generated C project: make, gcc, cc1, as and ld all on the allocator",
             quick=0.5, full=1.0),
    Workload("instr", "instr",
             "instructions per malloc+free pair at 32, 256 and 4096 bytes with 256 blocks of "
             "the size live, counted by callgrind",
             quick=1.0, full=1.0),
]
BY_NAME = {w.name: w for w in WORKLOADS}

# Full-size parameters of the real programs (multiplied by the scale).
REDIS_REQUESTS = 200000
REDIS_TESTS = "set,get,incr,lpush,rpop,sadd,hset,spop,zadd,zpopmin,lrange_100,mset"
SQLITE_ROWS = 300000
BUILD_FILES = 32
BUILD_FUNCS = 40
PAIR_SIZES = (32, 256, 4096)
PAIR_COUNT = 100000

THREADS = {"quick": [1, 2, 16], "full": [1, 2, 4, 16, 64]}
ROUNDS = {"quick": 3, "full": 5}


# ---- allocators ---------------------------------------------------------------------------

class Allocator:
    def __init__(self, name, path, package=None):
        self.name = name
        self.path = path           # None: glibc, no preload
        self.package = package
        self.status = "ok"         # anything else: no runs, every cell shows it
        self.detail = ""
        self.problems = []         # probe findings that do not stop the runs
        self.symbols = {}
        self.redis_bindings = None
        self.version = ""

    def real(self):
        return os.path.realpath(self.path) if self.path else None

    def describe(self):
        return {"name": self.name, "library": display_path(self.path) if self.path else None,
                "package": self.package, "version": self.version, "status": self.status,
                "detail": self.detail, "probe_problems": self.problems,
                "symbols": self.symbols,
                "redis_bindings": None if self.redis_bindings is None else {
                    k: display_path(v) if isinstance(v, str) and v.startswith("/") else v
                    for k, v in self.redis_bindings.items()}}


@functools.lru_cache(maxsize=None)
def multiarch_dir():
    for cmd in (["gcc", "-print-multiarch"], ["dpkg-architecture", "-qDEB_HOST_MULTIARCH"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if out and os.path.isdir(os.path.join("/usr/lib", out)):
            return os.path.join("/usr/lib", out)
    return "/usr/lib"


def lib_name(path, taken):
    base = os.path.basename(path)
    name = re.sub(r"\.so(\.\d+)*$", "", base)
    if name.startswith("lib"):
        name = name[3:]
    name = name or base
    unique, n = name, 2
    while unique in taken:
        unique, n = "%s-%d" % (name, n), n + 1
    return unique


def discover(args):
    multi = multiarch_dir()
    tamalloc = args.tamalloc_lib or os.path.join(ROOT, "build", "libtamalloc.so")
    allocs = [
        Allocator("glibc", None, "libc6"),
        Allocator("jemalloc", os.path.join(multi, "libjemalloc.so.2"), "libjemalloc2"),
        Allocator("mimalloc", os.path.join(multi, "libmimalloc.so.2"), "libmimalloc2.0"),
        Allocator("tcmalloc", os.path.join(multi, "libtcmalloc_minimal.so.4"), "libtcmalloc-minimal4"),
        Allocator("tamalloc", tamalloc, None),
    ]
    for spec in args.lib:
        for path in filter(None, spec.split(",")):
            path = os.path.abspath(path)
            allocs.append(Allocator(lib_name(path, {a.name for a in allocs}), path))
    if args.allocators:
        wanted = [n.strip() for n in args.allocators.split(",") if n.strip()]
        known = {a.name for a in allocs}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            sys.exit("bench: unknown allocator(s): %s (known: %s)"
                     % (", ".join(unknown), ", ".join(sorted(known))))
        extra = {a.name for a in allocs[5:]}
        allocs = [a for a in allocs if a.name in wanted or a.name in extra]
    for a in allocs:
        if a.package:
            a.version = dpkg_version(a.package)
        if a.path and not os.path.exists(a.path):
            a.status = "missing"
            a.detail = "%s does not exist" % display_path(a.path)
        if a.name == "tamalloc":
            a.version = tamalloc_version()
            if args.tamalloc_note:
                # A failed build: an older library may still be on disk, but it is not
                # what the sources say any more.
                a.status, a.detail = "missing", args.tamalloc_note
    return allocs


def display_path(path):
    """A path as a report shows it: relative inside the repository, whole for the system's
    libraries, and only the file's name elsewhere (a library built by hand: where it lies on
    the machine that ran the suite says nothing about it and does not belong in a report)."""
    ap = os.path.abspath(path)
    if ap.startswith(ROOT + os.sep):
        return rel(ap)
    if ap.startswith(("/usr/", "/lib/", "/lib64/")):
        return ap
    return os.path.basename(ap)


def dpkg_version(package):
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def tamalloc_version():
    version = ""
    try:
        with open(os.path.join(ROOT, "include", "tamalloc.h")) as f:
            text = f.read()
        parts = [re.search(r"#define TAMALLOC_VERSION_%s (\d+)" % k, text) for k in ("MAJOR", "MINOR", "PATCH")]
        if all(parts):
            version = ".".join(p.group(1) for p in parts)
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=20)
        if rev.returncode == 0 and rev.stdout.strip():
            version += " (%s)" % rev.stdout.strip()
        else:
            version += " (no commit yet)"
    except (OSError, subprocess.SubprocessError):
        pass
    return version.strip()


# ---- running one process ----------------------------------------------------------------

def base_env():
    """The user's environment without anything that would pick or tune an allocator."""
    env = {}
    for k, v in os.environ.items():
        if k in ("LD_PRELOAD", "LD_DEBUG", "LD_BIND_NOW", "MALLOC_CONF", "GLIBC_TUNABLES",
                 "PYTHONMALLOC", "PYTHONHASHSEED"):
            continue
        if k.startswith(("MALLOC_", "MIMALLOC_", "TCMALLOC_", "JEMALLOC_", "_RJEM_")):
            continue
        env[k] = v
    env["LC_ALL"] = "C"
    return env


def parse_pairs(path):
    """'key value' lines (the launcher's report, the workloads' figures)."""
    out = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                parts = line.split(None, 1)
                if len(parts) == 2:
                    out[parts[0]] = parts[1].strip()
    except OSError:
        pass
    return out


def launch(cmd, *, preload, timeout, log, env, stdin=None, cwd=None):
    """Runs cmd under the launcher; returns its cost report as a dict (numbers parsed)."""
    cost_path = log + ".cost"
    for p in (cost_path,):
        if os.path.exists(p):
            os.unlink(p)
    args = [LAUNCH, "-t", "%.1f" % timeout, "-o", cost_path]
    if preload:
        args += ["-p", preload]
    args += ["--"] + [str(c) for c in cmd]
    with open(log + ".out", "wb") as out, open(log + ".err", "wb") as err, \
            open(stdin or os.devnull, "rb") as inp:
        proc = subprocess.Popen(args, stdin=inp, stdout=out, stderr=err, env=env, cwd=cwd)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)   # the launcher kills the child's group
            proc.wait()
            raise
    if rc == 130:
        raise KeyboardInterrupt
    raw = parse_pairs(cost_path)
    cost = {}
    for k, v in raw.items():
        try:
            cost[k] = float(v) if "." in v else int(v)
        except ValueError:
            cost[k] = v
    if not cost:
        cost = {"launch_failed": rc}
    return cost


def classify(cost, out):
    """Status of one run from the launcher's report and the program's own report."""
    if cost.get("launch_failed") is not None:
        return "crashed", "the launcher failed (%s)" % cost["launch_failed"]
    if cost.get("timed_out"):
        return "timeout", "killed after the time limit"
    if "signal" in cost:
        sig = int(cost["signal"])
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        return "crashed", "killed by %s" % name
    code = int(cost.get("exit", -1))
    if code == 3 or out.get("verify") == "FAILED":
        return "wrong output", "the program's own verification failed"
    if code != 0:
        return "crashed", "exit status %d" % code
    if out.get("verify") != "ok" or "checksum" not in out:
        return "wrong output", "no checksum report"
    return "ok", ""


def record(wl, alloc, threads, cost, status, detail, log):
    wall = float(cost.get("wall_s", 0.0))
    user = float(cost.get("user_s", 0.0))
    sys_ = float(cost.get("sys_s", 0.0))
    return {
        "workload": wl.name, "threads": threads, "allocator": alloc.name,
        "status": status, "detail": detail,
        "wall_s": round(wall, 6), "user_s": round(user, 6), "sys_s": round(sys_, 6),
        "cpu_s": round(user + sys_, 6),
        "cores": round((user + sys_) / wall, 3) if wall > 0 else 0.0,
        "maxrss_kib": cost.get("maxrss_kib"), "launcher_rss_kib": cost.get("launcher_rss_kib"),
        "rss_kib": None, "rss_source": None, "checksum": None, "figures": {},
        "log": rel(log),
    }


def run_prog(wl, alloc, threads, scale, timeout, log, env):
    cmd = [os.path.join(BIN, wl.name), "-t", threads, "-n", "%.4f" % scale]
    cost = launch(cmd, preload=alloc.path, timeout=timeout, log=log, env=env)
    out = parse_pairs(log + ".out")
    status, detail = classify(cost, out)
    rec = record(wl, alloc, threads, cost, status, detail, log)
    fill_from_report(rec, out, cost)
    return rec


def fill_from_report(rec, out, cost):
    rec["checksum"] = out.get("checksum")
    hwm = out.get("vmhwm_kib")
    if hwm and hwm.lstrip("-").isdigit() and int(hwm) > 0:
        rec["rss_kib"], rec["rss_source"] = int(hwm), "VmHWM at exit"
    elif cost.get("maxrss_kib"):
        rec["rss_kib"], rec["rss_source"] = int(cost["maxrss_kib"]), "ru_maxrss"
    for k, v in out.items():
        if k not in ("checksum", "verify", "vmhwm_kib") and re.fullmatch(r"-?\d+(\.\d+)?", v):
            rec["figures"][k] = float(v) if "." in v else int(v)


def run_python(wl, alloc, threads, scale, timeout, log, env):
    env = dict(env, PYTHONMALLOC="malloc", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    cmd = [SYSTEM_PYTHON, "-S", PYTHON_WORKLOAD, "%.4f" % scale]
    cost = launch(cmd, preload=alloc.path, timeout=timeout, log=log, env=env)
    out = parse_pairs(log + ".out")
    status, detail = classify(cost, out)
    rec = record(wl, alloc, threads, cost, status, detail, log)
    fill_from_report(rec, out, cost)
    return rec


def run_sqlite(wl, alloc, threads, scale, timeout, log, env, ctx):
    cost = launch(["sqlite3", "-batch", "-bail", ":memory:"], preload=alloc.path,
                  timeout=timeout, log=log, env=env, stdin=ctx["sqlite_script"])
    rec = record(wl, alloc, threads, cost, "ok", "", log)
    status, detail = classify(cost, {"verify": "ok", "checksum": "-"})
    try:
        with open(log + ".out", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    hwm = [l for l in lines if l.startswith("VmHWM:")]
    body = "\n".join(l for l in lines if not l.startswith("VmHWM:"))
    rec["checksum"] = hashlib.sha1(body.encode()).hexdigest()[:16]
    if hwm:
        rec["rss_kib"], rec["rss_source"] = int(hwm[-1].split()[1]), "VmHWM at exit"
    elif status == "ok":
        status, detail = "wrong output", "no VmHWM line at the end of the session"
    if status == "ok" and len(lines) < 10:
        status, detail = "wrong output", "the session printed too little"
    rec["status"], rec["detail"] = status, detail
    return rec


def run_build(wl, alloc, threads, scale, timeout, log, env, ctx):
    proj = ctx["build_dir"]
    apps.clean_project(proj)
    cost = launch(["make", "-j2", "-s", "-C", proj], preload=alloc.path, timeout=timeout,
                  log=log, env=env, cwd=proj)
    status, detail = classify(cost, {"verify": "ok", "checksum": "-"})
    rec = record(wl, alloc, threads, cost, status, detail, log)
    if cost.get("maxrss_kib"):
        rec["rss_kib"], rec["rss_source"] = int(cost["maxrss_kib"]), "ru_maxrss of the process tree"
    if status == "ok":
        try:
            out = subprocess.run([os.path.join(proj, "prog")], capture_output=True, text=True,
                                 timeout=60, env=base_env()).stdout
            rec["checksum"] = out.split()[1] if out.startswith("checksum ") else None
        except (OSError, subprocess.SubprocessError, IndexError):
            rec["checksum"] = None
        if rec["checksum"] != ctx["build_expect"]:
            rec["status"], rec["detail"] = "wrong output", "the built program printed %r" % rec["checksum"]
    return rec


# ---- redis -----------------------------------------------------------------------------------

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick   # utime, stime


def proc_vmhwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def mapped_files(pid):
    files = set()
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                files.add(os.path.realpath(parts[5].strip()))
    return files


def redis_env(alloc, env):
    env = dict(env)
    env["LD_LIBRARY_PATH"] = STUB_DIR + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    if alloc.path:
        env["LD_PRELOAD"] = alloc.path
    return env


REDIS_SYMBOLS = ("malloc", "free", "calloc", "realloc", "malloc_usable_size",
                 "mallctl", "nallocx", "malloc_stats_print")


def redis_bindings(alloc, env):
    """Where each allocation symbol of redis-server binds under this column's set-up,
    according to the dynamic loader itself (LD_DEBUG=bindings, everything bound at start)."""
    env = dict(redis_env(alloc, env), LD_DEBUG="bindings", LD_BIND_NOW="1")
    try:
        res = subprocess.run(["redis-server", "--version"], env=env, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": str(e)}
    found = {}
    pat = re.compile(r"binding file (\S+) \[0\] to (\S+) \[\d+\]: normal symbol `(\w+)'")
    for line in res.stderr.splitlines():
        m = pat.search(line)
        if m and os.path.basename(m.group(1)) == "redis-server" and m.group(3) in REDIS_SYMBOLS:
            target = m.group(2)
            found[m.group(3)] = "bench stub" if target.startswith(STUB_DIR) else target
    return found


def bound_to_column(alloc, target):
    if not target:
        return False
    if alloc.path is None:
        return os.path.basename(target).startswith("libc.so")
    return os.path.realpath(target) == alloc.real()


def run_redis(wl, alloc, threads, scale, timeout, log, env, ctx):
    rec = record(wl, alloc, threads, {}, "ok", "", log)
    # The loader's view, once per allocator: malloc and friends must bind to the column.
    if alloc.redis_bindings is None:
        alloc.redis_bindings = redis_bindings(alloc, env)
    wrong = [s for s in ("malloc", "free", "calloc", "realloc", "malloc_usable_size")
             if not bound_to_column(alloc, alloc.redis_bindings.get(s))]
    if wrong:
        rec["status"], rec["detail"] = "not interposed", "redis-server binds %s elsewhere: %s" % (
            ", ".join(wrong), "; ".join("%s -> %s" % (s, alloc.redis_bindings.get(s)) for s in wrong))
        return rec

    port = free_port()
    workdir = os.path.dirname(log)
    requests = max(20000, int(REDIS_REQUESTS * scale))
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
           "--save", "", "--appendonly", "no", "--jemalloc-bg-thread", "no", "--daemonize", "no",
           "--databases", "1", "--dir", workdir, "--logfile", log + ".server.log"]
    err = open(log + ".server.err", "wb")
    server = subprocess.Popen(cmd, env=redis_env(alloc, env), stdin=subprocess.DEVNULL,
                              stdout=err, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not redis_ping(port):
            if server.poll() is not None or time.monotonic() > deadline:
                rec["status"] = "crashed" if server.poll() is not None else "timeout"
                rec["detail"] = "redis-server did not come up (%s)" % describe_exit(server.poll())
                return rec
            time.sleep(0.05)
        maps = mapped_files(server.pid)
        real_je = os.path.realpath(os.path.join(multiarch_dir(), "libjemalloc.so.2"))
        rec["figures"]["preload_mapped"] = int(alloc.path is None or alloc.real() in maps)
        rec["figures"]["system_jemalloc_mapped"] = int(real_je in maps)
        if alloc.path and alloc.real() not in maps:
            rec["status"], rec["detail"] = "not interposed", "the preloaded library is not mapped"
            return rec
        if real_je in maps and alloc.real() != real_je:
            rec["status"], rec["detail"] = "not interposed", "the system jemalloc is mapped as well"
            return rec

        u0, s0 = proc_cpu_s(server.pid)
        cost = launch(["redis-benchmark", "-h", "127.0.0.1", "-p", port, "-n", requests,
                       "-r", 100000, "-d", 256, "-c", 50, "-P", 16, "-t", REDIS_TESTS, "--csv"],
                      preload=None, timeout=timeout, log=log, env=env)
        alive = server.poll() is None
        u1, s1 = proc_cpu_s(server.pid) if alive else (u0, s0)
        rec.update(wall_s=round(float(cost.get("wall_s", 0.0)), 6),
                   user_s=round(u1 - u0, 3), sys_s=round(s1 - s0, 3))
        rec["cpu_s"] = round(rec["user_s"] + rec["sys_s"], 3)
        rec["cores"] = round(rec["cpu_s"] / rec["wall_s"], 3) if rec["wall_s"] > 0 else 0.0
        rec["figures"]["requests_per_test"] = requests
        if not alive:
            rec["status"], rec["detail"] = "crashed", "redis-server died during the benchmark (%s)" % \
                describe_exit(server.poll())
            return rec
        if cost.get("timed_out"):
            rec["status"], rec["detail"] = "timeout", "redis-benchmark did not finish in time"
            return rec
        if cost.get("exit") != 0:
            rec["status"], rec["detail"] = "crashed", "redis-benchmark failed (%s)" % cost
            return rec
        with open(log + ".out", errors="replace") as f:
            rows = list(f)
        head = [c.strip('"') for c in rows[0].strip().split('","')] if rows else []
        p99 = head.index("p99_latency_ms") if "p99_latency_ms" in head else None
        # a redis-benchmark that prints no header row (before 7.0) starts with its first test
        for row in rows[1:] if head[:1] == ["test"] else rows:
            cells = [c.strip('"') for c in row.strip().split('","')]
            if len(cells) >= 2:
                name = re.sub(r"[^a-z0-9]+", "_", cells[0].lower()).strip("_")[:40]
                try:
                    rec["figures"]["rps_" + name] = float(cells[1])
                    # the slowest 1% of its requests: a server's stalls (a purge, page faults)
                    if p99 is not None and len(cells) > p99:
                        rec["figures"]["p99_ms_" + name] = float(cells[p99])
                except ValueError:
                    pass
        try:
            check = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "EVAL",
                                    apps.REDIS_CHECK_SCRIPT, "0"], capture_output=True, text=True,
                                   timeout=120, env=env)
            got = check.stdout.strip()
        except subprocess.TimeoutExpired:
            got = "timeout"
        rec["checksum"] = got
        if got != str(apps.redis_check_expected()):
            rec["status"] = "crashed" if server.poll() is not None else "wrong output"
            rec["detail"] = "the check script returned %r, expected %d" % (got, apps.redis_check_expected())
            return rec
        rec["rss_kib"], rec["rss_source"] = proc_vmhwm_kib(server.pid), "VmHWM of redis-server"
        return rec
    finally:
        stop_server(server, port, rec)
        err.close()


def describe_exit(code):
    if code is None:
        return "still running"
    if code < 0:
        try:
            return "killed by %s" % signal.Signals(-code).name
        except ValueError:
            return "killed by signal %d" % -code
    return "exit status %d" % code


def stop_server(server, port, rec):
    if server.poll() is None:
        try:
            subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "SHUTDOWN", "NOSAVE"],
                           capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            pass
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    if server.poll() is None:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait()
        if rec["status"] == "ok":
            rec["status"], rec["detail"] = "crashed", "redis-server did not shut down"
    elif server.returncode != 0 and rec["status"] == "ok":
        rec["status"], rec["detail"] = "crashed", "redis-server ended with %s" % describe_exit(server.returncode)
    else:
        try:
            os.killpg(server.pid, signal.SIGKILL)   # anything left in its session
        except (ProcessLookupError, PermissionError):
            pass


# ---- instruction counts -------------------------------------------------------------------------

ALLOC_ENTRY_POINTS = {"malloc", "free", "calloc", "realloc", "cfree", "posix_memalign",
                      "aligned_alloc", "memalign", "malloc_usable_size"}


def parse_callgrind(path):
    """Total Ir and self Ir per object from a callgrind output file. Code that callgrind
    cannot place in any object ("???") is keyed "???:FUNCTION" instead."""
    names = {"ob": {}, "fn": {}}
    per_obj = {}
    total = None
    ob = fn = None
    skip_next = False

    def resolve(kind, value):
        m = re.match(r"\((\d+)\)(?: (.*))?$", value)
        if not m:
            return value
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), value)

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and ob is not None:
                    key = "???:%s" % fn if ob == "???" else ob
                    per_obj[key] = per_obj.get(key, 0) + int(parts[1])
                continue
            if line.startswith("ob="):
                ob = resolve("ob", line[3:])
            elif line.startswith("cob="):
                resolve("ob", line[4:])
            elif line.startswith("fn="):
                fn = resolve("fn", line[3:])
            elif line.startswith("cfn="):
                resolve("fn", line[4:])
            elif line.startswith("calls="):
                skip_next = True
            elif line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    if total is None:
        total = sum(per_obj.values())
    return total, per_obj


def evaluate_pairs(entry, alloc, small, big, pairs):
    """Fills ENTRY from the callgrind profiles of COUNT pairs (SMALL) and 2*COUNT (BIG)."""
    (t1, o1), (t2, o2) = small, big
    prog = os.path.realpath(pairs)

    def outside(objs):
        return sum(v for k, v in objs.items() if k.startswith("???") or os.path.realpath(k) != prog)

    def unplaced(objs):
        # Some allocators keep malloc and free in a section of their own that callgrind
        # maps to no object (tcmalloc's google_malloc). Such code counts as the column's
        # when it is an allocation entry point: the probe has already shown that malloc
        # and free resolve to the column's library.
        return {k: v for k, v in objs.items() if k.startswith("???:") and k[4:] in ALLOC_ENTRY_POINTS}

    def in_lib(objs):
        n = sum(unplaced(objs).values())
        if alloc.path is None:
            return n + sum(v for k, v in objs.items() if os.path.basename(k).startswith("libc.so"))
        return n + sum(v for k, v in objs.items()
                       if not k.startswith("???") and os.path.realpath(k) == alloc.real())

    entry["per_pair"] = round((t2 - t1) / PAIR_COUNT, 2)
    entry["per_pair_allocator_only"] = round((outside(o2) - outside(o1)) / PAIR_COUNT, 2)
    share = (in_lib(o2) - in_lib(o1)) / max(1, outside(o2) - outside(o1))
    entry["allocator_share"] = round(share, 4)
    entry["objects"] = {(k if k.startswith("???") else display_path(k)): v
                        for k, v in sorted(o2.items(), key=lambda kv: -kv[1])}
    if unplaced(o2):
        entry["detail"] = "callgrind placed %s's %s in no object; counted by function name" % (
            alloc.name, ", ".join(sorted(k[4:] for k in unplaced(o2))))
    if share < 0.9:
        entry["status"] = "not interposed"
        entry["detail"] = "only %.0f%% of the counted allocator instructions are in %s" % (
            100 * share, alloc.name)


def run_instr(alloc, logdir, env, timeout):
    """Per size: callgrind with COUNT and 2*COUNT pairs; the difference over COUNT."""
    results = []
    pairs = os.path.join(BIN, "pairs")
    for size in PAIR_SIZES:
        entry = {"allocator": alloc.name, "size": size, "status": "ok", "detail": ""}
        failed = [e for e in results if e["status"] in ("crashed", "timeout")]
        if failed:
            # One crash or hang is enough; do not spend the time limit again.
            entry["status"], entry["detail"] = failed[0]["status"], "not run after the %d B failure" % failed[0]["size"]
            results.append(entry)
            continue
        counts = {}
        for n in (PAIR_COUNT, 2 * PAIR_COUNT):
            log = os.path.join(logdir, "%s-%d-%d" % (alloc.name, size, n))
            cg_out = log + ".callgrind"
            cost = launch(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + cg_out,
                           "--toggle-collect=pairs_loop", pairs, size, n],
                          preload=alloc.path, timeout=timeout, log=log, env=env)
            out = parse_pairs(log + ".out")
            status, detail = classify(cost, out)
            if status != "ok" or not os.path.exists(cg_out):
                entry["status"], entry["detail"] = status if status != "ok" else "crashed", \
                    detail or "callgrind wrote no profile"
                break
            counts[n] = parse_callgrind(cg_out)
        if entry["status"] == "ok":
            evaluate_pairs(entry, alloc, counts[PAIR_COUNT], counts[2 * PAIR_COUNT], pairs)
        results.append(entry)
    return results


# ---- the probe ---------------------------------------------------------------------------------

def probe(alloc, env, logdir):
    log = os.path.join(logdir, "probe-" + alloc.name)
    cost = launch([os.path.join(BIN, "probe")], preload=alloc.path, timeout=60, log=log, env=env)
    out_lines = []
    try:
        with open(log + ".out", errors="replace") as f:
            out_lines = f.read().splitlines()
    except OSError:
        pass
    for line in out_lines:
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] == "symbol":
            alloc.symbols[parts[1]] = display_path(parts[2])
        elif line.startswith("problem "):
            alloc.problems.append(line[8:])
    if cost.get("timed_out"):
        alloc.status, alloc.detail = "timeout", "the start-up probe hung"
    elif "signal" in cost or cost.get("launch_failed") is not None or cost.get("exit") not in (0, 3):
        status, detail = classify(cost, {"verify": "ok", "checksum": "-"})
        alloc.status, alloc.detail = "crashed", "the start-up probe failed: %s" % (detail or "no report")
    else:
        target = None
        for line in out_lines:
            if line.startswith("symbol malloc "):
                target = line.split(None, 2)[2]
        if not bound_to_column(alloc, target):
            alloc.status = "not interposed"
            alloc.detail = "malloc resolves to %s" % target
    return alloc.status == "ok"


# ---- machine description ---------------------------------------------------------------------------

def machine():
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["cores"] = os.cpu_count()
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["memory_gib"] = round(int(line.split()[1]) / 1048576, 1)
    except OSError:
        pass
    u = os.uname()
    info["kernel"] = "%s %s" % (u.sysname, u.release)
    info["arch"] = u.machine
    try:
        info["glibc"] = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        info["glibc"] = ""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    info["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass

    def first_line(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return ""

    redis = re.search(r"v=(\S+)", first_line(["redis-server", "--version"]))
    info["tools"] = {
        "gcc": first_line(["gcc", "--version"]),
        "redis-server": "redis-server %s" % (redis.group(1) if redis else "?"),
        "sqlite3": "sqlite3 %s" % (first_line(["sqlite3", "--version"]).split() or ["?"])[0],
        "python3": first_line([SYSTEM_PYTHON, "--version"]),
        "valgrind": first_line(["valgrind", "--version"]),
        "make": first_line(["make", "--version"]),
    }
    info["peers"] = {
        "jemalloc": dpkg_version("libjemalloc2"),
        "mimalloc": dpkg_version("libmimalloc2.0"),
        "tcmalloc": dpkg_version("libtcmalloc-minimal4"),
        "tamalloc": tamalloc_version(),
    }
    return info


# ---- summaries -------------------------------------------------------------------------------------

def summarize(wl, threads, allocs, runs):
    cells = []
    for a in allocs:
        mine = [r for r in runs if r["allocator"] == a.name and r.get("used", True)]
        cell = {"workload": wl.name, "threads": threads, "allocator": a.name}
        if a.status != "ok":
            cell.update(status=a.status, detail=a.detail)
        elif not mine:
            cell.update(status="not run", detail="")
        else:
            bad = [r for r in mine if r["status"] != "ok"]
            if bad:
                cell.update(status=bad[0]["status"], detail=bad[0]["detail"],
                            rounds_failed=len(bad), rounds=len(mine))
            else:
                walls = [r["wall_s"] for r in mine]
                cell.update(
                    status="ok", rounds=len(mine),
                    median_wall_s=round(statistics.median(walls), 6),
                    min_wall_s=min(walls), max_wall_s=max(walls),
                    median_cpu_s=round(statistics.median(r["cpu_s"] for r in mine), 6),
                    median_cores=round(statistics.median(r["cores"] for r in mine), 3),
                    low_cpu_rounds=sum(1 for r in mine if r.get("low_cpu")))
                rss = [r["rss_kib"] for r in mine if r.get("rss_kib")]
                if rss:
                    cell["median_rss_kib"] = int(statistics.median(rss))
                    cell["rss_source"] = mine[0]["rss_source"]
                figs = {}
                # every round's names: a figure one round lacks (redis's p99) is not lost
                for k in dict.fromkeys(k for r in mine for k in r["figures"]):
                    figs[k] = statistics.median(r["figures"][k] for r in mine if k in r["figures"])
                if figs:
                    cell["figures"] = figs
                if "peak_live_kib" in figs and cell.get("median_rss_kib"):
                    base = figs.get("bookkeeping_kib", 0) + figs.get("baseline_kib", 0)
                    cell["rss_over_live"] = round((cell["median_rss_kib"] - base) / figs["peak_live_kib"], 3)
                cell.update(pool_summary(mine))
                cell.update(giveback_summary(mine))
        cells.append(cell)
    for ref in ("jemalloc", "mimalloc"):
        base = next((c for c in cells if c["allocator"] == ref and c["status"] == "ok"), None)
        for c in cells:
            if c["status"] != "ok" or not base:
                continue
            c["time_vs_" + ref] = round(c["median_wall_s"] / base["median_wall_s"], 4) \
                if base["median_wall_s"] > 0 else None
            if c.get("median_rss_kib") and base.get("median_rss_kib"):
                c["rss_vs_" + ref] = round(c["median_rss_kib"] / base["median_rss_kib"], 4)
    return cells


POOL_FIGURES = ("live_peak", "rss_start", "rss_peak", "rss_idle", "rss_exit")


def pool_summary(runs):
    """The pool workload's memory figures, each a median over the rounds of one ratio per
    run: peak RSS / peak live bytes, idle RSS / peak live bytes, and what the process
    still holds after its threads are gone (exit RSS - start RSS, MiB)."""
    per = [r["figures"] for r in runs
           if all(k in r["figures"] for k in POOL_FIGURES) and r["figures"]["live_peak"] > 0]
    if not per:
        return {}
    med = lambda vals: round(statistics.median(vals), 3)
    return {
        "pool_peak_over_live": med([f["rss_peak"] / f["live_peak"] for f in per]),
        "pool_idle_over_live": med([f["rss_idle"] / f["live_peak"] for f in per]),
        "pool_exit_growth_mib": med([(f["rss_exit"] - f["rss_start"]) / 1024 for f in per]),
    }


def giveback_summary(runs):
    """The giveback workload's figures, medians over the rounds: what the process holds
    above its start once everything is freed, and after the idle second (MiB)."""
    per = [r["figures"] for r in runs
           if all(k in r["figures"] for k in ("rss_start", "rss_freed", "rss_idle"))]
    if not per:
        return {}
    med = lambda vals: round(statistics.median(vals), 3)
    return {
        "giveback_freed_mib": med([(f["rss_freed"] - f["rss_start"]) / 1024 for f in per]),
        "giveback_idle_mib": med([(f["rss_idle"] - f["rss_start"]) / 1024 for f in per]),
    }


def cross_check(runs):
    """Every allocator must produce the same checksum for the same configuration;
    the reference is glibc's when it has one, otherwise the most common value."""
    ok = [r for r in runs if r["status"] == "ok" and r.get("checksum") is not None]
    if not ok:
        return
    ref_pool = [r["checksum"] for r in ok if r["allocator"] == "glibc"] or [r["checksum"] for r in ok]
    ref = max(set(ref_pool), key=ref_pool.count)
    for r in ok:
        if r["checksum"] != ref:
            r["status"] = "wrong output"
            r["detail"] = "checksum %s differs from the reference %s" % (r["checksum"], ref)


# ---- the main loop ----------------------------------------------------------------------------------

def rotate(seq, k):
    k %= max(1, len(seq))
    return seq[k:] + seq[:k]


def main():
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the short run: fewer threads, rounds and work")
    ap.add_argument("--only", default="", help="comma-separated workload names")
    ap.add_argument("--allocators", default="", help="comma-separated allocator names")
    ap.add_argument("--lib", action="append", default=[], help="another allocator's shared library")
    ap.add_argument("--publish", action="store_true",
                    help="also publish the run: docs/benchmarks.md and docs/benchmarks/ (charts, latest.json)")
    ap.add_argument("--rounds", type=int, help="rounds per workload (default 5, quick 3)")
    ap.add_argument("--threads", default="", help="thread counts, e.g. 1,2,16")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every workload's size")
    ap.add_argument("--min-cores", type=float, default=1.8,
                    help="a 2-thread round using fewer cores than this is rerun")
    ap.add_argument("--retries", type=int, default=2, help="reruns of a starved 2-thread round")
    ap.add_argument("--out", default=os.path.join(BENCH, "out"),
                    help="where the report goes (default bench/out, ignored by git)")
    ap.add_argument("--tamalloc-lib", default="", help=argparse.SUPPRESS)
    ap.add_argument("--tamalloc-note", default="", help=argparse.SUPPRESS)
    ap.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = ap.parse_args()

    if args.list:
        for w in WORKLOADS:
            print("%-14s %s" % (w.name, w.what))
        return 0

    mode = "quick" if args.quick else "full"
    rounds = args.rounds or ROUNDS[mode]
    chosen = [int(t) for t in args.threads.split(",") if t.strip()]
    thread_list = chosen or THREADS[mode]
    selected = WORKLOADS
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            sys.exit("bench: unknown workload(s): %s (see bench/run --list)" % ", ".join(unknown))
        selected = [w for w in WORKLOADS if w.name in names]
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    logroot = os.path.join(WORK, "logs")
    if os.path.isdir(logroot):
        subprocess.run(["rm", "-rf", logroot])
    os.makedirs(logroot)

    started = time.monotonic()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    env = base_env()
    allocs = discover(args)
    more = ["%s also at %s" % (w.name, ",".join(map(str, sorted(set(w.thread_counts(mode)) - set(thread_list)))))
            for w in selected if not chosen and set(w.thread_counts(mode)) - set(thread_list)]
    print("bench: %s run, %d round(s), threads %s%s" % (mode, rounds, ",".join(map(str, thread_list)),
                                                       "".join(" (%s)" % m for m in more)))
    for a in allocs:
        if a.status == "ok":
            probe(a, env, logroot)
        note = a.detail or ("; ".join(a.problems) and "probe: " + "; ".join(a.problems))
        print("  %-10s %-14s %s" % (a.name, a.status, note))
    active = [a for a in allocs if a.status == "ok"]

    ctx = {}
    if any(w.kind == "sqlite" for w in selected):
        ctx["sqlite_script"] = os.path.join(WORK, "sqlite-session.sql")
        with open(ctx["sqlite_script"], "w") as f:
            f.write(apps.sqlite_script(max(20000, int(SQLITE_ROWS * BY_NAME["sqlite"].scale[mode] * args.scale))))
    if any(w.kind == "build" for w in selected):
        ctx["build_dir"] = os.path.join(WORK, "build-project")
        subprocess.run(["rm", "-rf", ctx["build_dir"]])
        files = max(4, int(BUILD_FILES * BY_NAME["build"].scale[mode] * args.scale))
        ctx["build_expect"] = apps.make_project(ctx["build_dir"], files, BUILD_FUNCS)

    results = {
        "schema": 1, "suite": "tamalloc benchmark suite", "mode": mode, "started": stamp,
        "rounds": rounds, "threads": thread_list, "scale": args.scale,
        "min_cores": args.min_cores, "retries": args.retries,
        "rerun_budget": "at most as many reruns per configuration as there are allocators",
        "machine": machine(),
        "allocators": [a.describe() for a in allocs],
        "workloads": [w.describe(mode, chosen) for w in selected],
        "runs": [], "summary": [], "instructions": [], "complete": False,
    }
    configs = []
    for w in selected:
        if w.kind == "instr":
            continue
        for t in w.thread_counts(mode, chosen):
            configs.append((w, t))

    interrupted = False
    try:
        for i, (w, t) in enumerate(configs, 1):
            t0 = time.monotonic()
            runs = run_config(w, t, allocs, active, rounds, mode, args, env, ctx, logroot)
            results["runs"].extend(runs)
            cells = summarize(w, t, allocs, runs)
            results["summary"].extend(cells)
            print("[%2d/%d] %-14s t=%-3d %s  (%.0fs)" % (i, len(configs), w.name, t,
                  report.progress_cells(cells), time.monotonic() - t0), flush=True)
        if any(w.kind == "instr" for w in selected):
            t0 = time.monotonic()
            logdir = os.path.join(logroot, "instr")
            os.makedirs(logdir, exist_ok=True)
            for a in allocs:
                if a.status != "ok":
                    results["instructions"].extend(
                        {"allocator": a.name, "size": s, "status": a.status, "detail": a.detail}
                        for s in PAIR_SIZES)
                    continue
                results["instructions"].extend(run_instr(a, logdir, env, 120 if mode == "quick" else 300))
            print("[instr] %s  (%.0fs)" % (report.progress_instr(results["instructions"]),
                                          time.monotonic() - t0), flush=True)
        results["complete"] = True
    except KeyboardInterrupt:
        interrupted = True
        print("\nbench: interrupted; writing what was measured so far", file=sys.stderr)

    for a, d in zip(allocs, results["allocators"]):
        d.update(a.describe())
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["targets"] = report.targets(results)
    paths = report.write_all(results, out_dir, ROOT, publish=args.publish and not interrupted)
    print()
    print(report.terminal(results))
    print("bench: wrote %s" % ", ".join(rel(p) for p in paths))
    print("bench: %s run took %.1f minutes" % (mode, results["duration_s"] / 60))
    return 130 if interrupted else 0


def run_config(w, threads, allocs, active, rounds, mode, args, env, ctx, logroot):
    logdir = os.path.join(logroot, "%s-t%d" % (w.name, threads))
    os.makedirs(logdir, exist_ok=True)
    scale = w.scale[mode] * args.scale
    static_timeout = w.timeout[mode]
    runs, failed = [], set()
    # Reruns of starved rounds are bounded per run and per configuration: on a machine
    # that is busy for minutes, rerunning everything would only double the time.
    rerun_budget = max(2, len(active))
    for rnd in range(rounds):
        for pos, a in enumerate(rotate(active, rnd)):
            if a.name in failed:
                continue
            # A hung allocator should not eat the budget: after the first successful
            # runs of this configuration, allow ten times the slowest of them.
            done = [r["wall_s"] for r in runs if r["status"] == "ok"]
            floor = 10.0 if mode == "quick" else 30.0
            timeout = static_timeout if not done else min(static_timeout, max(floor, 10 * max(done)))
            for attempt in range(args.retries + 1):
                log = os.path.join(logdir, "%s-r%d-a%d" % (a.name, rnd, attempt))
                with open("/proc/loadavg") as f:
                    load = float(f.read().split()[0])
                rec = run_one(w, a, threads, scale, timeout, log, env, ctx)
                rec.update(round=rnd, position=pos, attempt=attempt, loadavg_before=load, used=True)
                runs.append(rec)
                starved = (w.cpu_check and threads == 2 and rec["status"] == "ok"
                           and rec["cores"] < args.min_cores)
                rec["low_cpu"] = starved
                if starved and attempt < args.retries and rerun_budget > 0:
                    rerun_budget -= 1
                    rec["used"] = False     # replaced by the rerun, kept in the record
                    continue
                break
            if rec["status"] != "ok":
                failed.add(a.name)
    cross_check([r for r in runs if r["used"]])
    return runs


def run_one(w, a, threads, scale, timeout, log, env, ctx):
    if w.kind == "prog":
        return run_prog(w, a, threads, scale, timeout, log, env)
    if w.kind == "python":
        return run_python(w, a, threads, scale, timeout, log, env)
    if w.kind == "sqlite":
        return run_sqlite(w, a, threads, scale, timeout, log, env, ctx)
    if w.kind == "build":
        return run_build(w, a, threads, scale, timeout, log, env, ctx)
    if w.kind == "redis":
        return run_redis(w, a, threads, scale, timeout, log, env, ctx)
    raise ValueError(w.kind)


if __name__ == "__main__":
    sys.exit(main())
