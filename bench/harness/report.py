"""Tables, targets, charts and documents from the suite's results (standard library and
gnuplot only)."""

import json
import os
import shutil
import subprocess

REFS = ("jemalloc", "mimalloc")

TARGET_INSTR_32 = 44
TARGET_TIME_VS_MI = 1.05
TARGET_RSS_VS_JE = 1.10

FAIL_WORDS = {
    "missing": "missing", "crashed": "crashed", "wrong output": "wrong output",
    "timeout": "timeout", "not interposed": "not interposed", "not run": "not run",
}


# ---- small formatting helpers ----------------------------------------------------------------

def fmt_time(s):
    if s is None:
        return "-"
    if s >= 100:
        return "%.0fs" % s
    if s >= 10:
        return "%.1fs" % s
    return "%.2fs" % s


def fmt_mib(kib):
    if kib is None:
        return "-"
    mib = kib / 1024.0
    if mib >= 1024:
        return "%.2fG" % (mib / 1024)
    if mib >= 100:
        return "%.0fM" % mib
    return "%.1fM" % mib


def fmt_ratio(r):
    return "-" if r is None else "%.2f" % r


def allocator_names(results):
    return [a["name"] for a in results["allocators"]]


def configs(results):
    seen, order = set(), []
    for c in results["summary"]:
        key = (c["workload"], c["threads"])
        if key not in seen:
            seen.add(key)
            order.append(key)
    return order


def cell(results, workload, threads, alloc):
    for c in results["summary"]:
        if c["workload"] == workload and c["threads"] == threads and c["allocator"] == alloc:
            return c
    return None


def threaded(results, workload):
    for w in results["workloads"]:
        if w["name"] == workload:
            return w["threaded"]
    return False


def label(workload, threads, results):
    return "%s/%d" % (workload, threads) if threaded(results, workload) else workload


# ---- progress lines ----------------------------------------------------------------------------

def progress_cells(cells):
    ref = next((c for c in cells if c["allocator"] == "jemalloc" and c["status"] == "ok"), None)
    parts = []
    for c in cells:
        if c["status"] != "ok":
            parts.append("%s %s" % (c["allocator"], c["status"]))
        elif ref:
            parts.append("%s %.2fx" % (c["allocator"], c["median_wall_s"] / ref["median_wall_s"]))
        else:
            parts.append("%s ok" % c["allocator"])
    return "  ".join(parts)


def progress_instr(entries):
    parts = []
    for e in entries:
        if e["size"] != 32:
            continue
        parts.append("%s %s" % (e["allocator"], e["per_pair"] if e["status"] == "ok" else e["status"]))
    return "32 B pair: " + "  ".join(parts)


# ---- targets ---------------------------------------------------------------------------------------

def targets(results, subject="tamalloc"):
    """The project's goals for tamalloc, each marked met, missed or not measured."""
    names = allocator_names(results)
    out = []
    present = subject in names
    alloc = next((a for a in results["allocators"] if a["name"] == subject), None)

    def add(goal, state, detail):
        out.append({"goal": goal, "state": state, "detail": detail})

    if not present:
        return [{"goal": "all targets", "state": "not measured",
                 "detail": "%s was not among the allocators of this run" % subject}]
    if alloc["status"] != "ok":
        return [{"goal": "all targets", "state": "not measured",
                 "detail": "%s: %s%s" % (subject, alloc["status"],
                                         (" (%s)" % alloc["detail"]) if alloc["detail"] else "")}]

    # 1. Instructions per 32-byte pair.
    e = next((e for e in results["instructions"] if e["allocator"] == subject and e["size"] == 32), None)
    goal = "at most %d instructions per malloc+free pair of 32 bytes" % TARGET_INSTR_32
    if not e:
        add(goal, "not measured", "the instr workload was not run")
    elif e["status"] != "ok":
        add(goal, "missed", "instr: %s" % e["status"])
    else:
        refs = ", ".join("%s %s" % (x["allocator"], x["per_pair"]) for x in results["instructions"]
                         if x["size"] == 32 and x["status"] == "ok" and x["allocator"] != subject)
        add(goal, "met" if e["per_pair"] <= TARGET_INSTR_32 else "missed",
            "%s per pair (%s)" % (e["per_pair"], refs))

    cfgs = configs(results)

    def over(goal, ref, limit, key):
        missed, measured, failed = [], 0, []
        for w, t in cfgs:
            me, other = cell(results, w, t, subject), cell(results, w, t, ref)
            if not me or not other or other["status"] != "ok":
                continue
            if me["status"] != "ok":
                failed.append("%s (%s)" % (label(w, t, results), me["status"]))
                continue
            ratio = me.get(key)
            if ratio is None:
                continue
            measured += 1
            if ratio > limit + 1e-9:
                missed.append("%s %.2fx" % (label(w, t, results), ratio))
        if not measured and not failed:
            add(goal, "not measured", "no workload with both %s and %s" % (subject, ref))
            return
        bad = failed + missed
        if bad:
            add(goal, "missed", "%d of %d workloads: %s" % (len(bad), measured + len(failed), ", ".join(bad)))
        else:
            add(goal, "met", "all %d workloads" % measured)

    if "jemalloc" in names:
        over("median time at most jemalloc's on every workload", "jemalloc", 1.0, "time_vs_jemalloc")
    else:
        add("median time at most jemalloc's on every workload", "not measured", "jemalloc not in this run")
    if "mimalloc" in names:
        over("median time within 5% of mimalloc's on every workload", "mimalloc", TARGET_TIME_VS_MI,
             "time_vs_mimalloc")
    else:
        add("median time within 5% of mimalloc's on every workload", "not measured", "mimalloc not in this run")
    if "jemalloc" in names:
        over("peak RSS at most 1.1x jemalloc's on every workload", "jemalloc", TARGET_RSS_VS_JE,
             "rss_vs_jemalloc")
    else:
        add("peak RSS at most 1.1x jemalloc's on every workload", "not measured", "jemalloc not in this run")

    # Never the worst peak RSS.
    worst, measured = [], 0
    for w, t in cfgs:
        cs = [cell(results, w, t, n) for n in names]
        me = cell(results, w, t, subject)
        if not me or me["status"] != "ok" or not me.get("median_rss_kib"):
            if me and me["status"] not in ("ok", "missing"):
                worst.append("%s (%s)" % (label(w, t, results), me["status"]))
            continue
        others = [c for c in cs if c and c["allocator"] != subject and c["status"] == "ok"
                  and c.get("median_rss_kib")]
        if not others:
            continue
        measured += 1
        if me["median_rss_kib"] > max(c["median_rss_kib"] for c in others):
            worst.append(label(w, t, results))
    goal = "peak RSS never the worst of the %d allocators" % len(names)
    if not measured and not worst:
        add(goal, "not measured", "no workload with RSS figures")
    else:
        add(goal, "missed" if worst else "met",
            ("worst on %s" % ", ".join(worst)) if worst else "all %d workloads" % measured)

    # Large blocks at least as fast as glibc.
    goal = "large-block workload at least as fast as glibc"
    me, g = cell(results, "large", 1, subject), cell(results, "large", 1, "glibc")
    if not me or not g:
        add(goal, "not measured", "large or glibc not in this run")
    elif me["status"] != "ok":
        add(goal, "missed", me["status"])
    elif g["status"] != "ok":
        add(goal, "not measured", "glibc: %s" % g["status"])
    else:
        r = me["median_wall_s"] / g["median_wall_s"]
        add(goal, "met" if r <= 1.0 else "missed", "%.2fx glibc's time" % r)
    return out


# ---- the thread pool's memory over its life ------------------------------------------------------

POOL = "pool"


def _figure_text(c, value, fmt, failed):
    """One cell of a figures table: '-' for no run or no value, the failure's word, or the
    value formatted."""
    if c is None:
        return "-"
    if c["status"] != "ok":
        return failed(FAIL_WORDS.get(c["status"], c["status"]))
    v = value(c)
    return "-" if v is None else fmt(v)


def pool_table(results, failed=lambda word: word):
    """Rows for the pool workload, four per thread count, one column per allocator:
    peak RSS and idle RSS over peak live bytes, RSS kept after the threads exit (less
    the RSS at start), and the busy phase's wall time. None when pool did not run."""
    names = allocator_names(results)
    threads = sorted({t for w, t in configs(results) if w == POOL})
    if not threads:
        return None
    rows = []
    for t in threads:
        cs = [cell(results, POOL, t, n) for n in names]
        lives = [c["figures"]["live_peak"] for c in cs
                 if c and c["status"] == "ok" and "live_peak" in c.get("figures", {})]
        live = " (%s live)" % fmt_mib(sorted(lives)[len(lives) // 2]) if lives else ""
        measures = [
            ("peak RSS / live peak" + live, "pool_peak_over_live", fmt_ratio),
            ("idle RSS / live peak", "pool_idle_over_live", fmt_ratio),
            ("exit RSS - start RSS", "pool_exit_growth_mib", lambda v: fmt_mib(v * 1024)),
            ("busy phase", None, fmt_time),
        ]
        for what, key, fmt in measures:
            value = (lambda c, k=key: c.get(k)) if key else \
                (lambda c: c.get("figures", {}).get("busy_s"))
            rows.append(["%d: %s" % (t, what)] + [_figure_text(c, value, fmt, failed) for c in cs])
    return ["threads: measure"] + names, rows


# ---- memory given back on its own ---------------------------------------------------------------

def giveback_table(results, failed=lambda word: word):
    """Rows for the giveback workload, one column per allocator: RSS above the start once
    everything is freed, and after the idle second. None when it did not run."""
    names = allocator_names(results)
    if ("giveback", 1) not in set(configs(results)):
        return None
    cs = [cell(results, "giveback", 1, n) for n in names]
    rows = []
    for what, key in (("all freed: RSS - start RSS", "giveback_freed_mib"),
                      ("idle second later: RSS - start RSS", "giveback_idle_mib")):
        rows.append([what] + [_figure_text(c, lambda c, k=key: c.get(k),
                                           lambda v: fmt_mib(v * 1024), failed) for c in cs])
    return ["measure"] + names, rows


# ---- redis: the slowest requests ---------------------------------------------------------------

REDIS_P99 = "p99_ms_"


def redis_table(results, failed=lambda word: word):
    """Rows for the redis workload, one per redis-benchmark test, one column per allocator:
    the 99th percentile latency of its requests (ms, median over the rounds): where a
    server stalls (a purge, a burst of page faults), its wall time barely shows it. None
    when redis did not run."""
    names = allocator_names(results)
    if ("redis", 1) not in set(configs(results)):
        return None
    cs = [cell(results, "redis", 1, n) for n in names]
    tests = []
    for c in cs:
        for k in (c or {}).get("figures", {}):
            if k.startswith(REDIS_P99) and k not in tests:
                tests.append(k)
    if not tests:
        return None
    rows = []
    for k in tests:
        rows.append([k[len(REDIS_P99):]] + [
            _figure_text(c, lambda c, k=k: c.get("figures", {}).get(k),
                         lambda v: "%.1f ms" % v, failed) for c in cs])
    return ["test (p99 latency)"] + names, rows


# ---- plain-text table for the terminal ---------------------------------------------------------

def _text_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = []
    for n, r in enumerate([header] + rows):
        cells = []
        for i, v in enumerate(r):
            cells.append(str(v).ljust(widths[i]) if i == 0 else str(v).rjust(widths[i]))
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell_text(c, value_key, fmt, ratio_prefix):
    if c is None:
        return "-"
    if c["status"] != "ok":
        return FAIL_WORDS.get(c["status"], c["status"])
    v = c.get(value_key)
    if v is None:
        return "-"
    r1, r2 = c.get(ratio_prefix + "jemalloc"), c.get(ratio_prefix + "mimalloc")
    flag = "~" if c.get("low_cpu_rounds") else ""
    return "%s %s/%s%s" % (fmt(v), fmt_ratio(r1), fmt_ratio(r2), flag)


def terminal(results):
    names = allocator_names(results)
    out = []
    cfgs = configs(results)
    if cfgs:
        rows = []
        for w, t in cfgs:
            rows.append([w, t] + [_cell_text(cell(results, w, t, n), "median_wall_s", fmt_time, "time_vs_")
                                  for n in names])
        out.append("Median wall time, then its ratio to jemalloc / to mimalloc (lower is better)")
        out.append(_text_table(["workload", "thr"] + names, rows))
        out.append("")
        rows = []
        for w, t in cfgs:
            rows.append([w, t] + [_cell_text(cell(results, w, t, n), "median_rss_kib", fmt_mib, "rss_vs_")
                                  for n in names])
        out.append("Median peak RSS, then its ratio to jemalloc / to mimalloc (lower is better)")
        out.append(_text_table(["workload", "thr"] + names, rows))
        out.append("")
    for table, title in (
            (pool_table, "Thread pool: RSS over peak live bytes at the peak and when idle, RSS kept "
                         "after the threads exit, busy time (medians; lower is better)"),
            (giveback_table, "Given back on its own: RSS above the start once 800 MiB are freed, "
                             "and after an idle second of small allocations (medians; lower is better)"),
            (redis_table, "redis: 99th percentile latency of each redis-benchmark test (medians; "
                          "lower is better)")):
        rows = table(results)
        if rows:
            out += [title, _text_table(*rows), ""]
    if results["instructions"]:
        rows = []
        for size in sorted({e["size"] for e in results["instructions"]}):
            row = ["%d B" % size]
            for n in names:
                e = next((e for e in results["instructions"] if e["allocator"] == n and e["size"] == size), None)
                row.append("-" if not e else (e["per_pair"] if e["status"] == "ok" else e["status"]))
            rows.append(row)
        out.append("Instructions per malloc+free pair (callgrind, including the call and loop)")
        out.append(_text_table(["size"] + names, rows))
        out.append("")
    out.append("Targets for tamalloc")
    for t in results["targets"]:
        out.append("  [%s] %s: %s" % (t["state"], t["goal"], t["detail"]))
    if any(c.get("low_cpu_rounds") for c in results["summary"]):
        out.append("  ~ some 2-thread rounds stayed below %.1f cores after reruns" % results["min_cores"])
    return "\n".join(out)


# ---- markdown -------------------------------------------------------------------------------------

def _md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(v) for v in r) + " |")
    return "\n".join(lines)


def _md_cell(c, value_key, fmt, ratio_prefix):
    if c is None:
        return "-"
    if c["status"] != "ok":
        return "**%s**" % FAIL_WORDS.get(c["status"], c["status"])
    v = c.get(value_key)
    if v is None:
        return "-"
    flag = " ~" if c.get("low_cpu_rounds") else ""
    return "%s · %s · %s%s" % (fmt(v), fmt_ratio(c.get(ratio_prefix + "jemalloc")),
                              fmt_ratio(c.get(ratio_prefix + "mimalloc")), flag)


def machine_lines(results):
    m = results["machine"]
    lines = [
        "- CPU: %s, %s cores (%s usable)" % (m.get("cpu", "?"), m.get("cores", "?"), m.get("cores_usable", "?")),
        "- Memory: %s GiB" % m.get("memory_gib", "?"),
        "- OS: %s, kernel %s (%s)" % (m.get("os", "?"), m.get("kernel", "?"), m.get("arch", "?")),
        "- C library: %s" % m.get("glibc", "?"),
    ]
    status = {a["name"]: a["status"] for a in results["allocators"]}
    versions = dict(m.get("peers", {}))
    for a in results["allocators"]:
        if a["name"] != "glibc" and a["name"] not in versions:
            versions[a["name"]] = a.get("version") or "?"
    for name, v in versions.items():
        state = status.get(name)
        note = "" if state in (None, "ok") else " (%s in this run)" % state
        lines.append("- %s: %s%s" % (name, v or "not installed", note))
    tools = m.get("tools", {})
    lines.append("- Programs: " + "; ".join("%s" % v for v in tools.values() if v))
    return lines


def markdown(results, link_prefix="", title="Benchmark results"):
    names = allocator_names(results)
    cfgs = configs(results)
    L = ["# " + title, ""]
    more = ["%s also %s" % (w["name"], ", ".join(map(str, extra)))
            for w in results["workloads"]
            for extra in [sorted(set(w.get("threads", [])) - set(results["threads"]))] if extra]
    L.append("%s run started %s, %d round(s) per workload, threads %s%s; it took %.1f minutes%s." % (
        results["mode"].capitalize(), results["started"], results["rounds"],
        ", ".join(map(str, results["threads"])), "".join(" (%s)" % m for m in more),
        results.get("duration_s", 0) / 60,
        "" if results.get("complete") else " (interrupted: incomplete)"))
    loads = sorted(r["loadavg_before"] for r in results["runs"] if r.get("loadavg_before") is not None)
    if loads:
        L.append("Load average before the runs: %.1f to %.1f (median %.1f) on %s cores; a load above "
                 "the core count means other work shared the machine." % (
                     loads[0], loads[-1], loads[len(loads) // 2], results["machine"].get("cores", "?")))
    L.append("Every figure is a median over the rounds; allocators ran interleaved, in a rotated "
             "order each round, on the same binaries. Cells read `value · ratio to jemalloc · "
             "ratio to mimalloc`; below 1.00 is better than the reference. A failed cell names "
             "the failure instead of a value. Absolute times depend on the machine; compare the ratios.")
    L.append("")
    L.append("## Machine")
    L.append("")
    L.extend(machine_lines(results))
    L.append("")
    L.append("## Targets for tamalloc")
    L.append("")
    for t in results["targets"]:
        L.append("- **%s**: %s. %s" % (t["state"], t["goal"], t["detail"]))
    L.append("")
    if cfgs:
        L.append("## Time")
        L.append("")
        L.append("Median wall time of the measured process (for redis: of the benchmark run).")
        L.append("")
        L.append(_md_table(["workload", "threads"] + names,
                           [[w, t] + [_md_cell(cell(results, w, t, n), "median_wall_s", fmt_time, "time_vs_")
                                      for n in names] for w, t in cfgs]))
        L.append("")
        L.append("## CPU time")
        L.append("")
        L.append("Median user+sys time of the measured process and its children (for redis: of "
                 "the server during the benchmark), then the ratio to jemalloc's.")
        L.append("")
        rows = []
        for w, t in cfgs:
            row = [w, t]
            je = cell(results, w, t, "jemalloc")
            for n in names:
                c = cell(results, w, t, n)
                if not c or c["status"] != "ok":
                    row.append("-" if not c else "**%s**" % c["status"])
                    continue
                r = (c["median_cpu_s"] / je["median_cpu_s"]) if je and je["status"] == "ok" and \
                    je.get("median_cpu_s") else None
                row.append("%s · %s" % (fmt_time(c["median_cpu_s"]), fmt_ratio(r)))
            rows.append(row)
        L.append(_md_table(["workload", "threads"] + names, rows))
        L.append("")
        L.append("## Peak RSS")
        L.append("")
        L.append("Median peak resident set (VmHWM) of the measured process; for the build, the "
                 "largest process of the tree (ru_maxrss).")
        L.append("")
        L.append(_md_table(["workload", "threads"] + names,
                           [[w, t] + [_md_cell(cell(results, w, t, n), "median_rss_kib", fmt_mib, "rss_vs_")
                                      for n in names] for w, t in cfgs]))
        L.append("")
        frag = [(n, cell(results, "frag", 1, n)) for n in names]
        if any(c and c.get("rss_over_live") for _, c in frag):
            L.append("## Fragmentation")
            L.append("")
            L.append("The frag workload: peak RSS (less the program's bookkeeping and start-up "
                     "footprint) over peak live bytes requested. 1.00 would be no overhead at all.")
            L.append("")
            L.append(_md_table(["", *names], [["peak RSS / peak live"] + [
                ("%.2f" % c["rss_over_live"]) if c and c.get("rss_over_live") else
                ("**%s**" % c["status"] if c and c["status"] != "ok" else "-") for _, c in frag]]))
            L.append("")
    for table, heading, text in (
            (pool_table, "Thread pool over its life",
             "The pool workload counts the bytes it has requested and not yet freed and "
             "reads its own resident set at each stage. *Peak RSS / live peak*: VmHWM over "
             "the peak of live bytes (the peak's size is in parentheses). *Idle RSS / live "
             "peak*: VmRSS after 1.5 s with every thread alive and blocked, still holding "
             "its cache of responses, over the same peak. *Exit RSS - start RSS*: what the "
             "process still holds 1.5 s after the last thread was joined, less what it "
             "held at start (the program's own bookkeeping and thread stacks are unmapped "
             "by then). *Busy phase*: wall time of the requests alone; the Time table's "
             "figure for pool also includes the two 1.5 s pauses. Each figure is the "
             "median over the rounds; lower is better."),
            (giveback_table, "Memory given back on its own",
             "The giveback workload: four threads allocate 800 MiB in blocks of 16 B to "
             "8 MiB and exit; the main thread frees half, four new threads free the rest. "
             "Then the process idles a second, making only small allocations (16 to 128 B, "
             "which need no slow path). *All freed*: VmRSS above the start right after the "
             "frees; *idle second later*: after the idle second. Medians over the rounds; "
             "lower is better."),
            (redis_table, "redis: the slowest requests",
             "The 99th percentile latency of each redis-benchmark test (50 clients, 16 "
             "requests pipelined), as redis-benchmark reports it, in milliseconds: a "
             "server that stalls now and then (a purge giving back memory it faults in "
             "again at once) shows it here more than in the Time table. Medians over the "
             "rounds; lower is better.")):
        rows = table(results, failed=lambda word: "**%s**" % word)
        if rows:
            L += ["## " + heading, "", text, "", _md_table(*rows), ""]
    if results["instructions"]:
        L.append("## Instructions per malloc+free pair")
        L.append("")
        L.append("Counted by callgrind with 256 other blocks of the size live: (count with 2N pairs "
                 "- count with N pairs) / N, so start-up cancels out. Includes the call and the "
                 "loop around it (12 instructions); the allocator's own share is in latest.json.")
        L.append("")
        rows = []
        for size in sorted({e["size"] for e in results["instructions"]}):
            row = ["%d B" % size]
            for n in names:
                e = next((e for e in results["instructions"] if e["allocator"] == n and e["size"] == size), None)
                row.append("-" if not e else (e["per_pair"] if e["status"] == "ok" else "**%s**" % e["status"]))
            rows.append(row)
        L.append(_md_table(["size"] + names, rows))
        L.append("")
    charts = [c for c in ("time-ratio.png", "rss-ratio.png", "scaling.png", "instructions.png")
              if c in results.get("charts", [])]
    if charts:
        L.append("## Charts")
        L.append("")
        for c in charts:
            L.append("![%s](%s%s)" % (c[:-4], link_prefix, c))
            L.append("")
    notes = notes_lines(results)
    if notes:
        L.append("## Notes")
        L.append("")
        L.extend(notes)
        L.append("")
    return "\n".join(L)


def notes_lines(results):
    L = []
    for a in results["allocators"]:
        if a["status"] != "ok":
            L.append("- %s: %s%s" % (a["name"], a["status"], (" — %s" % a["detail"]) if a["detail"] else ""))
        for p in a.get("probe_problems", []):
            L.append("- %s: the start-up probe found a problem: %s" % (a["name"], p))
        rb = a.get("redis_bindings")
        if rb and "malloc" in rb:
            L.append("- %s under redis-server: malloc -> %s, mallctl -> %s, nallocx -> %s" % (
                a["name"], _short(rb.get("malloc")), _short(rb.get("mallctl")), _short(rb.get("nallocx"))))
    for c in results["summary"]:
        if c["status"] not in ("ok", "missing") and c.get("detail"):
            who = next((a for a in results["allocators"] if a["name"] == c["allocator"]), None)
            if who and who["status"] != "ok":
                continue
            L.append("- %s, %s: %s — %s" % (label(c["workload"], c["threads"], results),
                                             c["allocator"], c["status"], c["detail"]))
        if c.get("low_cpu_rounds"):
            L.append("- %s, %s: %d round(s) stayed below %.1f cores even after the reruns" % (
                label(c["workload"], c["threads"], results), c["allocator"], c["low_cpu_rounds"],
                results["min_cores"]))
    seen = set()
    for e in results["instructions"]:
        if e["status"] == "ok" and e.get("detail") and e["allocator"] not in seen:
            seen.add(e["allocator"])
            L.append("- instr, %s: %s" % (e["allocator"], e["detail"]))
        if e["status"] not in ("ok", "missing") and e.get("detail"):
            L.append("- instr %d B, %s: %s — %s" % (e["size"], e["allocator"], e["status"], e["detail"]))
    if results.get("instructions_rederived"):
        L.append("- Note: %s." % results["instructions_rederived"])
    reruns = sum(1 for r in results["runs"] if not r.get("used", True))
    if reruns:
        L.append("- %d starved 2-thread round(s) (below %.1f cores) were rerun (at most %s times each%s); "
                 "all attempts are in latest.json." % (
                     reruns, results["min_cores"], results.get("retries", "?"),
                     ", and %s" % results["rerun_budget"] if results.get("rerun_budget") else ""))
    return L


def _short(path):
    if not path:
        return "?"
    return os.path.basename(path) if path.startswith("/") else path


# ---- charts -------------------------------------------------------------------------------------------

def _gnuplot(script, workdir):
    exe = shutil.which("gnuplot")
    if not exe:
        return False
    path = os.path.join(workdir, "chart.gp")
    with open(path, "w") as f:
        f.write(script)
    r = subprocess.run([exe, path], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        with open(os.path.join(workdir, "chart.err"), "a") as f:
            f.write(r.stderr)
    return r.returncode == 0


def _quote(s):
    return '"%s"' % s.replace('"', "'")


def _bar_chart(path, workdir, title, ylabel, labels, series, ref_line=True, logscale=True):
    """Clustered bars: one group per label, one bar per series (name, values)."""
    data = os.path.join(workdir, os.path.basename(path) + ".dat")
    with open(data, "w") as f:
        f.write("label " + " ".join(_quote(n) for n, _ in series) + "\n")
        for i, lab in enumerate(labels):
            vals = ["?" if v[i] is None else "%.5g" % v[i] for _, v in series]
            f.write(_quote(lab) + " " + " ".join(vals) + "\n")
    vals = [x for _, v in series for x in v if x]
    lo = min(vals) if vals else 1
    hi = max(vals) if vals else 1
    width = max(900, 70 * len(labels) + 200)
    script = """set terminal pngcairo size %d,560 font "sans,10"
set output %s
set title %s
set ylabel %s
set datafile missing "?"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top left horizontal reverse Left
set grid ytics
set xtics rotate by -40 scale 0
set bmargin 7
""" % (width, _quote(path), _quote(title), _quote(ylabel))
    if logscale:
        script += "set logscale y 2\nset yrange [%g:%g]\n" % (min(0.5, lo / 1.3), max(2.0, hi * 1.3))
    else:
        script += "set yrange [0:%g]\n" % (hi * 1.15)
    if ref_line:
        script += "set arrow from graph 0, first 1 to graph 1, first 1 nohead lw 1.5 dt 2 front\n"
    script += "plot for [i=2:%d] %s using i:xtic(1) title columnheader(i)\n" % (len(series) + 1, _quote(data))
    return _gnuplot(script, workdir)


def _ref_for(results):
    names = allocator_names(results)
    for n in ("jemalloc", "mimalloc", "glibc"):
        if n in names:
            return n
    return names[0] if names else None


def charts(results, out_dir, workdir):
    made = []
    names = allocator_names(results)
    ref = _ref_for(results)
    cfgs = configs(results)
    if not ref or not cfgs:
        return made

    def ratios(key):
        labels, series = [], {n: [] for n in names}
        for w, t in cfgs:
            base = cell(results, w, t, ref)
            if not base or base["status"] != "ok" or not base.get(key):
                continue
            labels.append(label(w, t, results))
            for n in names:
                c = cell(results, w, t, n)
                series[n].append(c[key] / base[key] if c and c["status"] == "ok" and c.get(key) else None)
        return labels, [(n, series[n]) for n in names]

    labels, series = ratios("median_wall_s")
    if labels and _bar_chart(os.path.join(out_dir, "time-ratio.png"), workdir,
                             "Median time relative to %s (lower is better; missing bar: failed or absent)" % ref,
                             "time / %s's time" % ref, labels, series):
        made.append("time-ratio.png")
    labels, series = ratios("median_rss_kib")
    if labels and _bar_chart(os.path.join(out_dir, "rss-ratio.png"), workdir,
                             "Median peak RSS relative to %s (lower is better)" % ref,
                             "peak RSS / %s's" % ref, labels, series):
        made.append("rss-ratio.png")

    # Scaling: per threaded workload, time over thread count relative to the reference's
    # time at the smallest thread count.
    multi = [w["name"] for w in results["workloads"] if w["threaded"]]
    panels = []
    for wname in multi:
        ts = sorted({t for w, t in cfgs if w == wname})
        if len(ts) < 2:
            continue
        base = cell(results, wname, ts[0], ref)
        if not base or base["status"] != "ok":
            continue
        data = os.path.join(workdir, "scaling-%s.dat" % wname)
        with open(data, "w") as f:
            f.write("threads " + " ".join(_quote(n) for n in names) + "\n")
            for t in ts:
                vals = []
                for n in names:
                    c = cell(results, wname, t, n)
                    vals.append("%.5g" % (c["median_wall_s"] / base["median_wall_s"])
                                if c and c["status"] == "ok" else "?")
                f.write("%d %s\n" % (t, " ".join(vals)))
        panels.append((wname, data, ts))
    if panels:
        cols = 3 if len(panels) > 4 else 2
        rows = (len(panels) + cols - 1) // cols
        script = """set terminal pngcairo size %d,%d font "sans,10"
set output %s
set datafile missing "?"
set logscale x 2
set logscale y 2
set grid
set key top left reverse Left font ",8"
set xlabel "threads"
set ylabel "time / %s's, fewest threads"
set multiplot layout %d,%d title %s
""" % (460 * cols, 360 * rows, _quote(os.path.join(out_dir, "scaling.png")), ref,
            rows, cols,
            _quote("Scaling over threads on %s cores: time relative to %s with the fewest threads "
                   "(lower is better)" % (results["machine"].get("cores", "?"), ref)))
        for wname, data, ts in panels:
            script += "set title %s\nset xtics (%s)\nset xrange [%g:%g]\n" % (
                _quote(wname), ", ".join(str(t) for t in ts), ts[0] / 1.3, ts[-1] * 1.3)
            script += "plot for [i=2:%d] %s using 1:i with linespoints lw 2 title columnheader(i)\n" % (
                len(names) + 1, _quote(data))
        script += "unset multiplot\n"
        if _gnuplot(script, workdir):
            made.append("scaling.png")

    if results["instructions"]:
        sizes = sorted({e["size"] for e in results["instructions"]})
        series = []
        for n in names:
            vals = []
            for s in sizes:
                e = next((e for e in results["instructions"] if e["allocator"] == n and e["size"] == s), None)
                vals.append(e["per_pair"] if e and e["status"] == "ok" else None)
            series.append((n, vals))
        if any(v for _, vs in series for v in vs) and _bar_chart(
                os.path.join(out_dir, "instructions.png"), workdir,
                "Instructions per malloc+free pair (callgrind; lower is better)",
                "instructions", ["%d B" % s for s in sizes], series, ref_line=False, logscale=False):
            made.append("instructions.png")
    return made


# ---- writing everything -------------------------------------------------------------------------------

CHARTS = ("time-ratio.png", "rss-ratio.png", "scaling.png", "instructions.png")


def write_all(results, out_dir, root, publish=False):
    """Writes latest.json, latest.md and the charts to out_dir (bench/out/ by default, which
    git ignores); with publish, also the published run (publish_all). Returns the paths."""
    workdir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".work", "charts")
    os.makedirs(workdir, exist_ok=True)
    for old in CHARTS:
        p = os.path.join(out_dir, old)
        if os.path.exists(p):
            os.unlink(p)
    results["charts"] = charts(results, out_dir, workdir)
    paths = []
    jpath = os.path.join(out_dir, "latest.json")
    with open(jpath, "w") as f:
        json.dump(results, f, indent=1, sort_keys=False)
        f.write("\n")
    paths.append(jpath)
    mpath = os.path.join(out_dir, "latest.md")
    with open(mpath, "w") as f:
        f.write(markdown(results))
        f.write("\n")
    paths.append(mpath)
    paths.extend(os.path.join(out_dir, c) for c in results["charts"])
    if publish:
        paths.extend(publish_all(results, out_dir, root))
    return paths


def publish_all(results, out_dir, root):
    """The published run, the only benchmark output under version control:
    docs/benchmarks.md, and beside it docs/benchmarks/ with the charts and latest.json
    (copied from out_dir, where write_all has just written them). Returns the paths."""
    docs = os.path.join(root, "docs")
    pub = os.path.join(docs, "benchmarks")
    os.makedirs(pub, exist_ok=True)
    same = os.path.abspath(pub) == os.path.abspath(out_dir)
    paths = []
    if not same:
        for old in CHARTS:
            p = os.path.join(pub, old)
            if os.path.exists(p):
                os.unlink(p)
        for name in list(results["charts"]) + ["latest.json"]:
            shutil.copyfile(os.path.join(out_dir, name), os.path.join(pub, name))
            paths.append(os.path.join(pub, name))
    dpath = os.path.join(docs, "benchmarks.md")
    with open(dpath, "w") as f:
        f.write(publish_doc(results, "benchmarks/"))
    paths.append(dpath)
    return paths


def publish_doc(results, prefix):
    head = [
        "# tamalloc benchmarks",
        "",
        "Generated by `bench/run --publish`; do not edit by hand. The suite, its workloads and "
        "its method are described in [bench/README.md](../bench/README.md). To answer the "
        "question for your own machine, run `bench/run` (about an hour) or `bench/run --quick` "
        "(under ten minutes): it installs what it lacks, builds tamalloc in Release and writes "
        "its report to bench/out/ (latest.md, latest.json and the charts), which git ignores. "
        "The charts and the full data of the run below are in [benchmarks/](benchmarks/).",
        "",
        "The figures below come from one machine and one run. Allocators are compared with "
        "each other on that machine, never by absolute times.",
        "",
    ]
    if results.get("mode") != "full":
        head += ["These figures come from a %s run (fewer rounds, threads and work than the full "
                 "run); `bench/run --publish` replaces them with a full comparison." % results.get("mode"), ""]
    body = markdown(results, link_prefix=prefix, title="Results").splitlines()
    body = ["#" + line if line.startswith("#") else line for line in body]
    return "\n".join(head + body) + "\n"
