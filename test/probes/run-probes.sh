#!/bin/sh
# Runs every misuse probe under each allocator given and prints one line per probe.
#
#     test/probes/run-probes.sh <probes binary> <library>...
#
# A library is the path of a shared object to preload, or `glibc` for none. Outcomes:
#   detected     the process ended by SIGABRT (the allocator's check)
#   crash:SIG    the process ended by another signal (SIGSEGV: an unchecked access)
#   undetected   the misuse went through
#   safe         a write after free, and malloc handed out only legitimate blocks
#   FAIL         malloc handed out a forged address or a live block
#   unsupported  the allocator lacks the entry point (free_sized)
# The last lines count the outcomes per allocator. Nothing is fetched or installed.
set -u
if [ $# -lt 2 ]; then
    echo "usage: $0 <probes binary> <library|glibc>..." >&2
    exit 2
fi
probes=$1
shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

outcome() { # <library> <case>
    if [ "$1" = glibc ]; then
        timeout -s KILL 30 "$probes" "$2" >"$tmp/out" 2>"$tmp/err"
    else
        LD_PRELOAD=$1 timeout -s KILL 30 "$probes" "$2" >"$tmp/out" 2>"$tmp/err"
    fi
    rc=$?
    last=$(tail -n 1 "$tmp/out")
    case $rc in
    134) echo detected ;;
    0) case $last in safe|undetected) echo "$last" ;; *) echo error ;; esac ;;
    3) echo FAIL ;;
    4) echo unsupported ;;
    137) echo timeout ;;
    *) if [ "$rc" -gt 128 ]; then echo "crash:$(kill -l $((rc - 128)))"; else echo "exit:$rc"; fi ;;
    esac
}

printf '%-40s' probe
for lib in "$@"; do printf ' %-14s' "$(basename "$lib" | sed 's/^lib//; s/\.so.*//')"; done
echo
for c in $("$probes" list); do
    printf '%-40s' "$c"
    i=0
    for lib in "$@"; do
        i=$((i + 1))
        o=$(outcome "$lib" "$c")
        echo "$o" >>"$tmp/count.$i"
        printf ' %-14s' "$o"
    done
    echo
done
i=0
for lib in "$@"; do
    i=$((i + 1))
    printf '%s: %s\n' "$(basename "$lib")" \
        "$(sort "$tmp/count.$i" | uniq -c | awk '{printf "%s %s, ", $1, $2}' | sed 's/, $//')"
done
