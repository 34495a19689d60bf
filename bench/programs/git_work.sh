#!/bin/bash
# bench/programs/git_work.sh REPO — the timed git workload of bench/programs.sh. Read-only on REPO
# (made by git_gen.py, no work tree checked out), so every run sees the same repository; prints
# checksums and counts only. pack-objects with --no-reuse-delta --no-reuse-object and one thread
# recompresses and re-deltifies every object, deterministically: the bulk of the work.
set -eo pipefail
r=$1
git -C "$r" log -p --stat | cksum
git -C "$r" pack-objects --revs --all --stdout -q --threads=1 --window=20 --depth=20 \
	--no-reuse-delta --no-reuse-object </dev/null | cksum
git -C "$r" blame -s HEAD -- src/d00/f0000.c | cksum
git -C "$r" diff --stat HEAD~150 HEAD | tail -n 1
git -C "$r" rev-list --objects --all | wc -l
