#!/usr/bin/env bash
# Runs the ta_ API fuzz harness over the seed corpus, then for a fixed number of executions
# with a fixed seed (the same inputs every time), and prints one Criterion-style synthesis
# line: one test, passing when the harness found nothing.
#
#   run.sh <fuzz_api binary> <mmap|brk> <executions> <corpus dir>
#
# Inputs the harness rejects are written to the current directory as crash-* files (the
# reproducer: run the binary with the file as its argument).
set -u
bin="$1" mode="$2" runs="$3" corpus="$4"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
brk=0
[[ "$mode" == brk ]] && brk=1
start=$(date +%s)
rc=0
TAFUZZ_BRK=$brk "$bin" -runs="$runs" -seed=1 -max_len=2048 -timeout=60 -rss_limit_mb=4096 \
    -print_final_stats=1 "$work" "$corpus" 2>&1 | tail -n 40 || true
rc=${PIPESTATUS[0]}
elapsed=$(($(date +%s) - start))
echo "fuzz_api ($mode chunks): $runs executions after the corpus, exit status $rc, $elapsed s"
if ((rc == 0)); then
    echo "[====] Synthesis: Tested: 1 | Passing: 1 | Failing: 0 | Crashing: 0"
else
    echo "[====] Synthesis: Tested: 1 | Passing: 0 | Failing: 1 | Crashing: 1"
fi
exit "$rc"
