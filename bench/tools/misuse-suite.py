#!/usr/bin/env python3
"""Runs a directory of built misuse programs under several allocators and counts passes.

    bench/tools/misuse-suite.py [--build] [--c23] [--verbose] DIR LIBRARY...

DIR holds one program per test and the suite's own runner, a Python unittest file
(`test_*.py`) whose test methods each run one program and assert its return code (and
sometimes its output). The expectations are read from that file, not copied here. A
LIBRARY is the path of a shared object to preload, or `glibc` for none.

--build first compiles every DIR/*.c and DIR/*.cc into a program of the same stem in DIR
with the system compiler and C library (not against any allocator). The entry points
glibc lacks (C23's free_sized, free_aligned_sized) are declared weak, so that they resolve
to a preloaded library that has them and crash where none does. Programs that call
extensions of one allocator only (malloc_object_size and kin) are not built, nor counted.

--c23 preloads, after each library, a small object that defines free_sized and
free_aligned_sized as plain free, as a C library with C23's entry points would: a library
that has its own keeps them (it comes first), one that lacks them no longer crashes there.

Pass criterion. For a program expected to exit normally (return code 0), it passes when
it exits with 0 and, where the runner checks its output, prints exactly that. For a program
expected to be killed (by SIGABRT or SIGSEGV: the misuse was detected), it passes when it is
killed by SIGABRT or SIGSEGV, whichever of the two, whatever its message (messages are
allocator-specific); the strict count also requires the very signal the runner expects.
Other outcomes (another signal, a normal exit, a time-out of 30 seconds) fail.

Nothing is fetched: DIR must already be there.
"""
import argparse
import ast
import glob
import os
import signal
import subprocess
import sys
import tempfile

TIMEOUT = 30
SKIP_MARK = "malloc_object_size"  # an extension of one allocator only
WEAK_HEADER = "#pragma weak free_sized\n#pragma weak free_aligned_sized\n"
C23_SOURCE = """#include <stdlib.h>
void free_sized(void *p, size_t n) { (void)n; free(p); }
void free_aligned_sized(void *p, size_t a, size_t n) { (void)a; (void)n; free(p); }
"""


def expectations(directory):
    """{program: (returncode, stdout or None)} from the suite's unittest runner."""
    runners = sorted(glob.glob(os.path.join(directory, "test_*.py")))
    if not runners:
        sys.exit(f"no test_*.py runner in {directory}")
    found = {}
    for path in runners:
        tree = ast.parse(open(path).read(), path)
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef) or not fn.name.startswith("test_"):
                continue
            program, code, out = None, None, None
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                if node.func.attr == "run_test" and node.args:
                    program = ast.literal_eval(node.args[0])
                elif node.func.attr == "assertEqual" and len(node.args) == 2:
                    first, value = node.args
                    if isinstance(first, ast.Name) and first.id == "returncode":
                        code = ast.literal_eval(value)
                    elif "stdout" in ast.unparse(first):
                        out = ast.literal_eval(value)
            if program is not None and code is not None:
                found[program] = (code, out)
    return found


def build(directory):
    header = tempfile.NamedTemporaryFile("w", suffix=".h", delete=False)
    header.write(WEAK_HEADER)
    header.close()
    common = ["-O3", "-D_GNU_SOURCE", "-DSLAB_CANARY=true",
              "-DCONFIG_EXTENDED_SIZE_CLASSES=true", "-pthread"]
    failed = []
    for src in sorted(glob.glob(os.path.join(directory, "*.c")) +
                      glob.glob(os.path.join(directory, "*.cc"))):
        if SKIP_MARK in open(src).read():
            continue
        out = os.path.splitext(src)[0]
        if src.endswith(".c"):
            cmd = ["gcc", "-std=c2x", "-include", header.name] + common + ["-o", out, src]
        else:
            cmd = ["g++", "-std=c++17", "-fsized-deallocation"] + common + ["-o", out, src]
        if subprocess.run(cmd, stderr=subprocess.PIPE).returncode != 0:
            failed.append(os.path.basename(src))
    os.unlink(header.name)
    if failed:
        print("not built:", " ".join(failed), file=sys.stderr)


def c23_object(scratch):
    src = os.path.join(scratch, "c23.c")
    obj = os.path.join(scratch, "c23.so")
    with open(src, "w") as f:
        f.write(C23_SOURCE)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", obj, src], check=True)
    return obj


def run(program, library, extra):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    preload = ([] if library == "glibc" else [os.path.abspath(library)]) + extra
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    try:
        p = subprocess.run([program], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, b""
    return p.returncode, p.stdout


def verdict(expected, code, out):
    """'pass', 'pass-other-signal' (lenient only) or 'fail'."""
    want_code, want_out = expected
    if code is None:
        return "fail"
    if want_code == 0:
        ok = code == 0 and (want_out is None or out.decode("utf-8", "replace") == want_out)
        return "pass" if ok else "fail"
    detected = (-signal.SIGABRT, -signal.SIGSEGV)
    if code == want_code:
        return "pass"
    return "pass-other-signal" if want_code in detected and code in detected else "fail"


def describe(code):
    if code is None:
        return "timeout"
    if code < 0:
        return signal.Signals(-code).name
    return f"exit {code}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", action="store_true", help="compile DIR/*.c, *.cc first")
    ap.add_argument("--c23", action="store_true",
                    help="supply free_sized and free_aligned_sized where a library lacks them")
    ap.add_argument("--verbose", action="store_true", help="one line per program")
    ap.add_argument("dir")
    ap.add_argument("libraries", nargs="+")
    args = ap.parse_args()
    if args.build:
        build(args.dir)
    tests = expectations(args.dir)
    programs = sorted(t for t in tests if os.access(os.path.join(args.dir, t), os.X_OK))
    missing = sorted(set(tests) - set(programs))
    names = [os.path.basename(lib) for lib in args.libraries]
    results = {lib: {} for lib in args.libraries}
    scratch = tempfile.mkdtemp()
    extra = [c23_object(scratch)] if args.c23 else []
    for t in programs:
        for lib in args.libraries:
            code, out = run(os.path.join(args.dir, t), lib, extra)
            results[lib][t] = (verdict(tests[t], code, out), describe(code))
    if args.verbose:
        print(f"{'program':45} {'expects':8} " + " ".join(f"{n[:22]:22}" for n in names))
        for t in programs:
            cells = []
            for lib in args.libraries:
                v, how = results[lib][t]
                mark = {"pass": "+", "pass-other-signal": "~", "fail": "-"}[v]
                cells.append(f"{mark} {how:20}")
            print(f"{t:45} {describe(tests[t][0]):8} " + " ".join(cells))
        print("(+ pass, ~ detected by the other signal: a lenient pass, - fail)")
    print(f"{len(programs)} programs" +
          (f" ({len(missing)} of the runner's not built: {' '.join(missing)})" if missing else ""))
    for lib, n in zip(args.libraries, names):
        v = [results[lib][t][0] for t in programs]
        lenient = sum(x != "fail" for x in v)
        strict = sum(x == "pass" for x in v)
        print(f"{n:28} {lenient:3} of {len(programs)} (strict: {strict})")
    for f in os.listdir(scratch):
        os.unlink(os.path.join(scratch, f))
    os.rmdir(scratch)


if __name__ == "__main__":
    main()
