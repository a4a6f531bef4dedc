#!/bin/sh
# git workload for the preload tests: a repository with several commits of many files,
# then log --stat, diff, grep and fsck. Dates and identities are fixed, so the output is
# the same on every run. Runs in the current directory.
set -eu
export GIT_AUTHOR_NAME=Tester GIT_AUTHOR_EMAIL=tester@example.org
export GIT_COMMITTER_NAME=Tester GIT_COMMITTER_EMAIL=tester@example.org
export GIT_AUTHOR_DATE='2024-01-02T03:04:05Z' GIT_COMMITTER_DATE='2024-01-02T03:04:05Z'
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null HOME="$PWD"
git init -q -b main repo
cd repo
c=0
while [ $c -lt 6 ]; do
    f=0
    while [ $f -lt 20 ]; do
        d="dir$((f % 4))"
        mkdir -p "$d"
        seq 1 $((c * 37 + f * 11 + 5)) | awk -v c=$c -v f=$f '{ print "line", $1, c * $1 + f }' \
            > "$d/file$f.txt"
        f=$((f + 1))
    done
    if [ $c -ge 3 ]; then rm -f "dir$c/file$c.txt"; fi
    git add -A
    git commit -q -m "commit $c"
    c=$((c + 1))
done
git log --stat
git diff --stat HEAD~3 HEAD
git grep -c 'line 7 ' HEAD -- dir1 | head -5
git rev-list --all --objects | wc -l
git gc -q
git fsck --full --strict
git log --oneline | wc -l
git cat-file -p HEAD^{tree}
