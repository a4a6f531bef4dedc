#!/usr/bin/env bash
# The install check (ctest test install_check): installs the build into a staging prefix
# and uses the installed files the way a user would.
#
#   run.sh <build dir> <version>        (environment: CMAKE, CPACK, CC; default from PATH)
#
#   1. `cmake --install` into <build>/install-check/prefix puts every file in place;
#   2. pkg-config: programs built with `pkg-config tamalloc` (run with the installed library
#      preloaded) and `pkg-config tamalloc-api` (linked) find malloc where they should;
#      DESTDIR staging writes the real prefix into the .pc files;
#   3. CMake: this directory's project, with find_package(tamalloc), builds and runs against
#      tamalloc::tamalloc, tamalloc::static, tamalloc::api (and tamalloc::secure);
#   4. the launcher bin/tamalloc: --version, --help, --stats on real commands (text, JSON),
#      settings, the hardened library, LD_PRELOAD kept, a bad option, a moved prefix and a
#      symbolic link to it;
#   5. the manual pages render (man -l, groff -ww without a warning);
#   6. `cpack -G DEB` makes a .deb with every file, depending on libc6.
#
# Each numbered check prints "ok" or "FAILED" with the reason, and the script ends with a
# Criterion-style synthesis line for ci/test to count (one test per check). Work files stay
# in <build>/install-check/ for a look after a failure.
set -u
build="$(cd "$1" && pwd)"
version="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cmake="${CMAKE:-cmake}"
cpack="${CPACK:-cpack}"
cc="${CC:-cc}"
work="$build/install-check"
prefix="$work/prefix"
log="$work/log"

rm -rf "$work"
mkdir -p "$work"
: >"$log"

passed=0
failed=0
check_name=""
check_failed=0
start=$(date +%s)

begin() {
    check_name="$1"
    check_failed=0
    echo "== $check_name" >>"$log"
}
# fail REASON: the current check fails (each reason is printed).
fail() {
    echo "   FAILED: $check_name: $*"
    check_failed=1
}
end() {
    if ((check_failed)); then
        failed=$((failed + 1))
        echo "FAILED $check_name (log: $log)"
    else
        passed=$((passed + 1))
        echo "ok     $check_name"
    fi
}
# run CMD...: runs it with its output in the log; returns its status.
run() {
    echo "\$ $*" >>"$log"
    "$@" >>"$log" 2>&1
}
# capture FILE CMD...: stdout to FILE, stderr to FILE.err; returns the command's status.
capture() {
    local out="$1"
    shift
    echo "\$ $* >$out" >>"$log"
    "$@" >"$out" 2>"$out.err"
}
has() { grep -q -- "$2" "$1" 2>/dev/null; }

# ---- 1. cmake --install --------------------------------------------------------------
begin "cmake --install puts every file in place"
if run "$cmake" --install "$build" --prefix "$prefix"; then
    pc="$(find "$prefix" -name tamalloc.pc -path '*/pkgconfig/*' | head -n 1)"
    libdir="$(dirname "$(dirname "${pc:-$prefix/lib/pkgconfig/x}")")"
    for f in "$libdir/libtamalloc.so" "$libdir/libtamalloc.so.0" "$libdir/libtamalloc.so.$version" \
             "$libdir/libtamalloc.a" "$libdir/libtamalloc_api.a" "$prefix/include/tamalloc.h" \
             "$libdir/pkgconfig/tamalloc.pc" "$libdir/pkgconfig/tamalloc-api.pc" \
             "$libdir/cmake/tamalloc/tamalloc-config.cmake" \
             "$libdir/cmake/tamalloc/tamalloc-config-version.cmake" \
             "$prefix/share/man/man3/tamalloc.3" "$prefix/share/man/man1/tamalloc.1" \
             "$prefix/bin/tamalloc"; do
        [[ -e "$f" ]] || fail "missing ${f#"$prefix"/}"
    done
    [[ -x "$prefix/bin/tamalloc" ]] || fail "bin/tamalloc is not executable"
    soname="$(objdump -p "$libdir/libtamalloc.so.$version" 2>/dev/null | awk '$1 == "SONAME" { print $2 }')"
    [[ "$soname" == libtamalloc.so.0 ]] || fail "SONAME of libtamalloc is '$soname', not libtamalloc.so.0"
    secure=0
    [[ -e "$libdir/libtamalloc-secure.so.0" ]] && secure=1
else
    fail "cmake --install failed"
    libdir="$prefix/lib"
    secure=0
fi
end

# ---- 2. pkg-config -------------------------------------------------------------------
begin "pkg-config: tamalloc (preloaded) and tamalloc-api (linked)"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
if ! command -v pkg-config >/dev/null; then
    fail "pkg-config is not installed"
else
    v="$(pkg-config --modversion tamalloc 2>>"$log")"
    [[ "$v" == "$version" ]] || fail "pkg-config --modversion tamalloc says '$v', not $version"
    v="$(pkg-config --variable=prefix tamalloc 2>>"$log")"
    [[ "$v" == "$prefix" ]] || fail "tamalloc.pc names prefix '$v', not $prefix"
    # shellcheck disable=SC2046
    if run "$cc" -o "$work/pc-replacement" "$here/replacement.c" $(pkg-config --cflags --libs tamalloc); then
        capture "$work/pc-replacement.out" env LD_PRELOAD="$libdir/libtamalloc.so.0" "$work/pc-replacement" ||
            fail "the replacement program failed: $(cat "$work/pc-replacement.out.err")"
    else
        fail "cannot build with pkg-config --cflags --libs tamalloc"
    fi
    # shellcheck disable=SC2046
    if run "$cc" -o "$work/pc-api" "$here/api.c" $(pkg-config --cflags --libs tamalloc-api); then
        capture "$work/pc-api.out" "$work/pc-api" ||
            fail "the ta_ API program failed: $(cat "$work/pc-api.out.err")"
        if objdump -p "$work/pc-api" | grep -q 'NEEDED.*libtamalloc'; then
            fail "the ta_ API program needs a shared libtamalloc"
        fi
    else
        fail "cannot build with pkg-config --cflags --libs tamalloc-api"
    fi
    # Staged with DESTDIR (as packagers do), the .pc files name the final prefix.
    if DESTDIR="$work/destdir" run "$cmake" --install "$build" --prefix /opt/tamalloc; then
        f="$(find "$work/destdir/opt/tamalloc" -name tamalloc-api.pc | head -n 1)"
        has "$f" '^prefix=/opt/tamalloc$' || fail "with DESTDIR, tamalloc-api.pc does not say prefix=/opt/tamalloc"
    else
        fail "DESTDIR=... cmake --install --prefix /opt/tamalloc failed"
    fi
fi
end

# ---- 3. CMake find_package -----------------------------------------------------------
begin "CMake: find_package(tamalloc) and its imported targets"
if run "$cmake" -S "$here" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" \
        -DCMAKE_C_COMPILER="$cc" -DTAMALLOC_EXPECTED_VERSION="$version" &&
   run "$cmake" --build "$work/consumer"; then
    dir="$(sed -n 's/^tamalloc_DIR:PATH=//p' "$work/consumer/CMakeCache.txt")"
    [[ "$dir" == "$libdir/cmake/tamalloc" ]] || fail "found the package in '$dir', not in the staging prefix"
    programs=(replacement_shared replacement_static api)
    ((secure)) && programs+=(replacement_secure)
    for p in "${programs[@]}"; do
        capture "$work/consumer-$p.out" "$work/consumer/$p" ||
            fail "$p failed: $(cat "$work/consumer-$p.out.err")"
    done
    if objdump -p "$work/consumer/replacement_static" | grep -q 'NEEDED.*libtamalloc'; then
        fail "replacement_static (tamalloc::static) needs a shared libtamalloc"
    fi
else
    fail "the CMake project test/install does not configure or build (log: $log)"
fi
end

# ---- 4. the launcher -----------------------------------------------------------------
begin "launcher: bin/tamalloc [options] -- command"
launcher="$prefix/bin/tamalloc"
real_libdir="$(cd "$libdir" && pwd -P)"
capture "$work/l-version" "$launcher" --version && has "$work/l-version" "^tamalloc $version\$" ||
    fail "--version: $(cat "$work/l-version" "$work/l-version.err")"
capture "$work/l-help" "$launcher" --help && has "$work/l-help" '^Usage: tamalloc' ||
    fail "--help prints no usage"
# --stats on a command that allocates nothing, then on one that does.
capture "$work/l-true" "$launcher" --stats -- /bin/true && has "$work/l-true.err" '^tamalloc statistics' ||
    fail "--stats -- /bin/true prints no statistics"
printf '%s\n' delta alpha charlie bravo >"$work/words"
capture "$work/l-sort" "$launcher" --stats -- sort "$work/words" ||
    fail "--stats -- sort failed: $(cat "$work/l-sort.err")"
[[ "$(head -n 1 "$work/l-sort")" == alpha ]] || fail "sort under the launcher printed the wrong output"
n="$(grep -o 'mallocs [0-9]*' "$work/l-sort.err" | head -n 1 | awk '{ print $2 }')"
[[ "${n:-0}" -gt 0 ]] || fail "sort's allocations were not tamalloc's (mallocs ${n:-none})"
capture "$work/l-json" "$launcher" --stats=json -- sort "$work/words" &&
    python3 -c 'import json, sys; d = json.loads(open(sys.argv[1]).read()); assert d["mallocs"] > 0' \
        "$work/l-json.err" 2>>"$log" ||
    fail "--stats=json does not print a JSON report with mallocs"
# Settings reach the library (a bad one is reported), after those already in the environment.
capture "$work/l-conf" env TAMALLOC_CONF=decay_ms:100 "$launcher" -c decay_ms:abc -- /bin/true &&
    has "$work/l-conf.err" "bad value 'decay_ms:abc'" || fail "-c settings do not reach tamalloc"
capture "$work/l-env" env TAMALLOC_CONF=decay_ms:100 "$launcher" --json -c huge_pages:false -- \
    sh -c 'printf "%s\n" "$TAMALLOC_CONF"' &&
    [[ "$(cat "$work/l-env")" == decay_ms:100,huge_pages:false,stats_print:true,stats_format:json ]] ||
    fail "TAMALLOC_CONF under the launcher is '$(cat "$work/l-env")'"
# LD_PRELOAD: tamalloc first, what was there kept.
printf 'int tamalloc_install_check_keep;\n' >"$work/keep.c"
run "$cc" -shared -fPIC -o "$work/libkeep.so" "$work/keep.c" || fail "cannot build a library to preload"
capture "$work/l-preload" env LD_PRELOAD="$work/libkeep.so" "$launcher" -- sh -c 'printf "%s\n" "$LD_PRELOAD"' &&
    [[ "$(cat "$work/l-preload")" == "$real_libdir/libtamalloc.so.0:$work/libkeep.so" ]] ||
    fail "LD_PRELOAD under the launcher is '$(cat "$work/l-preload")'"
if ((secure)); then
    capture "$work/l-secure" "$launcher" --secure -- sh -c 'printf "%s\n" "$LD_PRELOAD"' &&
        [[ "$(cat "$work/l-secure")" == "$real_libdir/libtamalloc-secure.so.0" ]] ||
        fail "--secure preloads '$(cat "$work/l-secure")'"
    capture "$work/l-secure-stats" "$launcher" --secure --stats -- sort "$work/words" &&
        has "$work/l-secure-stats.err" '^tamalloc statistics' || fail "--secure --stats -- sort failed"
fi
# A bad option or no command: one line, exit status 2.
"$launcher" --no-such-option -- /bin/true >"$work/l-bad" 2>"$work/l-bad.err"
rc=$?
[[ $rc -eq 2 && "$(wc -l <"$work/l-bad.err")" -eq 1 && ! -s "$work/l-bad" ]] ||
    fail "a bad option gives status $rc and '$(cat "$work/l-bad.err")'"
"$launcher" --stats >/dev/null 2>"$work/l-none.err"
rc=$?
[[ $rc -eq 2 && "$(wc -l <"$work/l-none.err")" -eq 1 ]] || fail "no command gives status $rc"
"$launcher" -- /no/such/command >/dev/null 2>"$work/l-missing.err"
rc=$?
[[ $rc -eq 127 ]] || fail "a missing command gives status $rc"
# A moved prefix, and a symbolic link to the launcher elsewhere.
rm -rf "$work/moved"
cp -a "$prefix" "$work/moved"
moved_libdir="$work/moved/${libdir#"$prefix"/}"
capture "$work/l-moved" "$work/moved/bin/tamalloc" -- sh -c 'printf "%s\n" "$LD_PRELOAD"' &&
    [[ "$(cat "$work/l-moved")" == "$(cd "$moved_libdir" && pwd -P)/libtamalloc.so.0" ]] ||
    fail "the moved launcher preloads '$(cat "$work/l-moved")'"
mkdir -p "$work/links"
ln -sf "$work/moved/bin/tamalloc" "$work/links/tamalloc"
capture "$work/l-link" "$work/links/tamalloc" --stats -- sort "$work/words" &&
    has "$work/l-link.err" '^tamalloc statistics' || fail "a symbolic link to the launcher does not work"
end

# ---- 5. manual pages -----------------------------------------------------------------
begin "manual pages tamalloc(3) and tamalloc(1) render"
for page in man3/tamalloc.3 man1/tamalloc.1; do
    f="$prefix/share/man/$page"
    [[ -s "$f" ]] || { fail "$page is missing"; continue; }
    if command -v groff >/dev/null; then
        capture "$work/groff-${page##*/}" groff -man -Tutf8 -ww -z "$f" || fail "groff fails on $page"
        [[ -s "$work/groff-${page##*/}.err" ]] && fail "groff warns on $page: $(head -n 3 "$work/groff-${page##*/}.err")"
    else
        echo "   (groff is not installed: $page not rendered)"
        has "$f" '^\.TH TAMALLOC' || fail "$page has no .TH line"
    fi
    if command -v man >/dev/null && command -v groff >/dev/null; then
        capture "$work/man-${page##*/}" env MANWIDTH=80 man -l "$f" ||
            fail "man -l $page failed: $(head -n 3 "$work/man-${page##*/}.err")"
    fi
done
if [[ -s "$work/man-tamalloc.3" ]]; then
    for word in TAMALLOC_CONF decay_ms dirty_max_kb huge_cache_mb huge_pages huge_halves:bool huge_fresh:bool background_thread \
                stats_print stats_format stats_log stats_interval_ms ta_stats_get libtamalloc-secure; do
        has "$work/man-tamalloc.3" "$word" || fail "tamalloc(3) does not mention $word"
    done
fi
end

# ---- 6. cpack -G DEB -----------------------------------------------------------------
begin "cpack -G DEB: a Debian package with every file"
if ! command -v dpkg-deb >/dev/null; then
    fail "dpkg-deb is not installed"
elif run "$cpack" -G DEB --config "$build/CPackConfig.cmake" -B "$work/deb"; then
    deb="$(find "$work/deb" -maxdepth 1 -name '*.deb' | head -n 1)"
    if [[ -z "$deb" ]]; then
        fail "cpack made no .deb"
    else
        dpkg-deb -c "$deb" >"$work/deb-contents" 2>>"$log" || fail "dpkg-deb -c fails"
        dpkg-deb -f "$deb" Package Version Depends >"$work/deb-control" 2>>"$log" || fail "dpkg-deb -f fails"
        cat "$work/deb-contents" "$work/deb-control" >>"$log"
        for f in 'usr/lib/.*libtamalloc\.so\.0 ' "usr/lib/.*libtamalloc\.so\.$version\$" \
                 'usr/lib/.*libtamalloc\.a$' 'usr/lib/.*libtamalloc_api\.a$' \
                 'usr/include/tamalloc\.h$' 'usr/lib/.*pkgconfig/tamalloc\.pc$' \
                 'usr/lib/.*pkgconfig/tamalloc-api\.pc$' 'usr/lib/.*cmake/tamalloc/tamalloc-config\.cmake$' \
                 'usr/lib/.*cmake/tamalloc/tamalloc-config-version\.cmake$' \
                 'usr/share/man/man3/tamalloc\.3' 'usr/share/man/man1/tamalloc\.1' 'usr/bin/tamalloc$'; do
            grep -q -- "$f" "$work/deb-contents" || fail "the package lacks $f"
        done
        ((secure)) && { grep -q 'libtamalloc-secure\.so\.0 ' "$work/deb-contents" || fail "the package lacks libtamalloc-secure"; }
        grep -q '^Package: tamalloc$' "$work/deb-control" || fail "the package is not named tamalloc"
        grep -q "^Version: $version" "$work/deb-control" || fail "the package's version is not $version"
        grep -q '^Depends:.*libc6' "$work/deb-control" || fail "the package does not depend on libc6"
        # The .pc file inside names /usr.
        rm -rf "$work/deb-x"
        dpkg-deb -x "$deb" "$work/deb-x" 2>>"$log"
        f="$(find "$work/deb-x" -name tamalloc.pc | head -n 1)"
        has "$f" '^prefix=/usr$' || fail "the packaged tamalloc.pc does not say prefix=/usr"
    fi
else
    fail "cpack -G DEB failed (log: $log)"
fi
end

elapsed=$(($(date +%s) - start))
echo "install check: $passed passed, $failed failed in $elapsed s (work files: $work)"
echo "[====] Synthesis: Tested: $((passed + failed)) | Passing: $passed | Failing: $failed | Crashing: 0"
((failed == 0))
