#!/usr/bin/env bash
# tests/programs/run_programs.sh — real Debian programs with and without the malloc preload.
#
# usage: tests/programs/run_programs.sh [BUILD-DIR] [quick|long]
#        (defaults: $B or build, quick; run from anywhere)
#
# Every case runs the same work twice, once plainly (glibc malloc) and once with
# LD_PRELOAD=<abs BUILD-DIR>/libsheafalloc_malloc.so (inherited by every child process), and
# compares what the two runs printed and how they exited — not only "it did not crash":
#
#   python-workload     tests/programs/workload.py (dicts, lists, strings, a json round trip of
#                       ~400k objects, pickle, sorting, threads; PYTHONMALLOC=malloc so every
#                       object goes through malloc): per-phase digests must match
#   python-regrtest     /usr/bin/python3 -m test on a slice of CPython's own suite: exit 0 and
#                       "SUCCESS" in both runs (Debian: libpython3.X-testsuite)
#   sqlite3             200k rows (long: 1M) inserted through a recursive CTE in one
#                       transaction, two indexes, aggregates, a join, a window function, update,
#                       delete, VACUUM, integrity_check and the sha256 of `.dump`
#   git                 500 files (long: 3000), commits, a branch, a merge, a tag, gc, log --stat,
#                       fsck, archive: with fixed names and dates, so every hash must be equal
#   gcc                 tests/programs/workload.c compiled -O2 -g and linked (long: also
#                       -O3 -flto), tests/programs/workload.cpp with g++ -O2 (long: -g): the
#                       objects and binaries (sha256), their disassembly and the programs'
#                       output (run on the same side) must be equal
#   redis               redis-server on a unix socket (no TCP port), redis-benchmark, then known
#                       keys written and read back with redis-cli, DBSIZE, shutdown nosave: the
#                       transcript and the server's exit status must match
# long adds bigger variants (workload x5, 1M rows, 3000 files, 200k redis requests pipelined),
# the workload with Python's own allocator, ~35 regression-test modules plus a set run with
# PYTHONMALLOC=malloc, and the workload and sqlite3 again with SHEAFALLOC_OPTIONS=percpu=fallback
# (compared with the plain run of the same case).
#
# Before any case the script checks that the preload is really active: the library is mapped
# in a preloaded process (/proc/self/maps) and initialises (SHEAFALLOC_OPTIONS=verbose=1 prints
# "sheafalloc" on stderr). If it is not, that is the one failure reported.
#
# Output: one line per case, "PASS name (sa <wall>s <peak RSS>MB cpu <user+sys>s / glibc ...)",
# "FAIL name: why" (followed by indented detail lines) or "SKIP name: why"; then cmocka-style
# "[  PASSED  ] N test(s)." / "[  FAILED  ] M test(s)." lines (so tests/run.sh can count this
# script like its other shell tests) and last "N passed, M failed". Exit status 1 if any failed.
# Skips are not failures. Times and peak RSS come from /usr/bin/time (package `time`) and are
# informational; peak RSS is the largest process of the run.
#
# Packages: python3 (with libpython3.X-testsuite), sqlite3, git, gcc/g++/binutils,
# redis-server + redis-tools, time. As root a missing one is installed with apt-get
# (SA_PROGRAMS_INSTALL=0 turns that off); otherwise its case is skipped.
# Environment: SA_PROGRAMS_KEEP=1 keeps the work directory; SA_PROGRAMS_ONLY="git sqlite3" runs
# only those cases (names as printed, prefix match); SHEAFALLOC_OPTIONS is passed through to the
# preloaded runs.

if [ -z "${BASH_VERSION:-}" ]; then
	exec bash "$0" "$@"
fi
set -u
export LC_ALL=C TZ=UTC

SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
HERE=$(dirname "$SELF")
ROOT=$(cd "$HERE/../.." && pwd)
PY=/usr/bin/python3

# =============================================================================================
# Case bodies. Each runs in its own empty directory (the current one), once per side, with
# LD_PRELOAD set or not by the caller; it prints what must be equal on both sides to stdout,
# diagnostics to stderr, and exits non-zero when a check of its own fails. Args: MODE.
# =============================================================================================

body_python_workload() {
	local scale=1
	[ "$1" = long ] && scale=5
	PYTHONHASHSEED=0 PYTHONMALLOC=${BODY_PYTHONMALLOC:-malloc} PYTHONDONTWRITEBYTECODE=1 \
		timeout -k 5 600 "$PY" "$HERE/workload.py" "$scale"
}

body_python_regrtest() {
	# BODY_MODULES: the modules; pass = exit 0 and SUCCESS in the output (printed on stdout so
	# both sides can be compared; the full log goes to stderr)
	local rc
	# shellcheck disable=SC2086 # BODY_MODULES is a list of words
	HOME=$PWD TMPDIR=$PWD PYTHONDONTWRITEBYTECODE=1 timeout -k 5 600 \
		"$PY" -m test -q $BODY_MODULES >regrtest.log 2>&1
	rc=$?
	cat regrtest.log >&2
	echo "exit status $rc"
	if grep -q 'SUCCESS' regrtest.log; then echo "result SUCCESS"; else echo "result no SUCCESS"; fi
	[ "$rc" = 0 ]
}

body_sqlite3() {
	local rows=200000
	[ "$1" = long ] && rows=1000000
	cat >q.sql <<EOF
PRAGMA cache_size=-65536;
PRAGMA journal_mode=WAL;
PRAGMA synchronous=OFF;
CREATE TABLE item(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val REAL, payload BLOB);
CREATE TABLE grp(id INTEGER PRIMARY KEY, label TEXT);
BEGIN;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < $rows)
INSERT INTO item SELECT x, (x*7919) % 997,
  printf('name-%07d-%s', (x*104729) % 10000019, substr('abcdefghijklmnopqrstuvwxyz', 1 + x % 26, 1 + x % 13)),
  (x % 1000) / 7.0, zeroblob(x % 300) FROM c;
WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x+1 FROM c WHERE x < 996)
INSERT INTO grp SELECT x, 'group-' || (x*x % 101) || '-' || x FROM c;
COMMIT;
CREATE INDEX item_grp ON item(grp, val);
CREATE INDEX item_name ON item(name);
SELECT 'count', count(*), sum(grp), total(val), sum(length(payload)) FROM item;
SELECT 'bygrp', grp, count(*), round(avg(val), 6), min(name), max(name) FROM item
  GROUP BY grp ORDER BY count(*) DESC, grp LIMIT 20;
SELECT 'join', g.label, count(*) AS n, round(sum(i.val), 3) FROM item i JOIN grp g ON g.id = i.grp
  WHERE i.val > 100 GROUP BY g.label ORDER BY n DESC, g.label LIMIT 15;
SELECT 'like', name FROM item WHERE name LIKE 'name-00001%' ORDER BY name LIMIT 10;
SELECT 'distinct', count(DISTINCT name), count(DISTINCT substr(name, -3)) FROM item;
SELECT 'window', id, grp, rank() OVER (PARTITION BY grp ORDER BY val DESC, id) AS r FROM item
  WHERE grp < 3 ORDER BY grp, r LIMIT 12;
SELECT 'concat', length(group_concat(name, ',')) FROM (SELECT name FROM item ORDER BY name DESC);
SELECT 'sorted', name FROM item ORDER BY substr(name, 14), val DESC, id LIMIT 5 OFFSET 1000;
UPDATE item SET name = name || '-u', payload = zeroblob(500) WHERE id % 10 = 0;
DELETE FROM item WHERE id % 7 = 3;
SELECT 'after', count(*), sum(length(name)), sum(length(payload)) FROM item;
VACUUM;
PRAGMA integrity_check;
EOF
	timeout -k 5 600 sqlite3 -batch -bail t.db <q.sql || return 1
	echo "dump $(timeout -k 5 300 sqlite3 t.db .dump | sha256sum)"
	timeout -k 5 300 sqlite3 t.db 'SELECT count(*) FROM item' || return 1
}

body_git() {
	local nfiles=500 rounds=3 aggressive=""
	if [ "$1" = long ]; then
		nfiles=3000
		rounds=12
		aggressive=--aggressive
	fi
	export HOME=$PWD/home GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=$PWD/home/.gitconfig
	export GIT_AUTHOR_NAME="Ada Tester" GIT_AUTHOR_EMAIL=ada@example.invalid
	export GIT_COMMITTER_NAME="Bob Committer" GIT_COMMITTER_EMAIL=bob@example.invalid
	mkdir -p home
	local t=1700000000
	tick() {
		t=$((t + 60))
		export GIT_AUTHOR_DATE="@$t +0000" GIT_COMMITTER_DATE="@$t +0000"
	}
	g() { timeout -k 5 300 git "$@"; }
	g init -q -b main repo || return 1
	cd repo || return 1
	g config gc.auto 0
	g config core.autocrlf false
	g config pack.threads 2
	mkdir -p src/d{00..19}
	# files of 20..69 lines
	awk -v n="$nfiles" 'BEGIN { for (i = 0; i < n; i++) {
		f = sprintf("src/d%02d/f%05d.txt", i % 20, i)
		for (j = 0; j < 20 + i % 50; j++) print "line", j, "of file", i, "salt", (i * j * 7919) % 10007 > f
		close(f) } }' || return 1
	tick
	g add -A && g commit -q -m "initial: $nfiles files" || return 1
	g checkout -q -b feature || return 1
	local r
	for ((r = 0; r < rounds; r++)); do
		# feature: edit files i % 5 == 0, add files, remove a few
		awk -v n="$nfiles" -v r="$r" 'BEGIN { for (i = 0; i < n; i += 5) {
			f = sprintf("src/d%02d/f%05d.txt", i % 20, i); print "feature round", r, "file", i >> f; close(f) }
			for (i = 0; i < 20; i++) { f = sprintf("src/d%02d/new-%d-%d.txt", i, r, i); print "new", r, i > f; close(f) } }'
		# remove a file neither side edits (i % 5 == 3, i % 7 == 3)
		local i=$((r * 35 + 3))
		g rm -q "$(printf 'src/d%02d/f%05d.txt' $((i % 20)) "$i")" || return 1
		tick
		g add -A && g commit -q -m "feature round $r" || return 1
	done
	g checkout -q main || return 1
	for ((r = 0; r < rounds; r++)); do
		# main: edit files i % 7 == 1 that the feature branch leaves alone (i % 5 != 0)
		awk -v n="$nfiles" -v r="$r" 'BEGIN { for (i = 1; i < n; i += 7) if (i % 5 != 0) {
			f = sprintf("src/d%02d/f%05d.txt", i % 20, i); print "main round", r, "file", i >> f; close(f) } }'
		tick
		g commit -q -a -m "main round $r" || return 1
	done
	tick
	g merge -q --no-ff -m "merge feature" feature || return 1
	tick
	g tag -a v1 -m "release v1" || return 1
	echo "HEAD $(g rev-parse HEAD) parents $(g rev-parse HEAD^1 HEAD^2 | tr '\n' ' ')tag $(g rev-parse v1)"
	g gc -q $aggressive || return 1
	echo "after gc $(g rev-parse HEAD)"
	g log --stat --format='commit %H%nauthor %an <%ae> %ad%ncommitter %cn <%ce> %cd%n%n    %s' --date=raw main ||
		return 1
	g fsck --full --strict --no-progress 2>&1 || return 1
	echo "fsck ok"
	g count-objects -v | grep -E '^(count|in-pack|packs|garbage):'
	echo "tree $(g ls-tree -r HEAD | sha256sum)"
	echo "archive $(g archive --format=tar HEAD | sha256sum)"
	g diff --stat HEAD^1 HEAD | tail -n 1
	g blame -s --abbrev=12 src/d00/f00000.txt | sha256sum | sed 's/^/blame /'
	g grep -c 'salt 1' | sort | sha256sum | sed 's/^/grep /'
	echo "commits $(g rev-list --all | wc -l) status '$(g status --porcelain)'"
}

body_gcc() {
	local n=200000 flto=""
	[ "$1" = long ] && { n=600000; flto=1; }
	cp "$HERE/workload.c" "$HERE/workload.cpp" . || return 1
	local map="-fdebug-prefix-map=$PWD=."
	cc_() { timeout -k 5 300 "$@"; }
	cc_ gcc -O2 -g "$map" -Wall -Wextra -c workload.c -o workload.o || return 1
	echo "object $(sha256sum <workload.o)"
	echo "disasm $(objdump -d workload.o | sha256sum) $(objdump -d workload.o | wc -l) lines"
	cc_ gcc -O2 -g "$map" workload.o -o workload || return 1
	echo "binary $(sha256sum <workload)"
	timeout -k 5 120 ./workload "$n" || return 1
	if [ -n "$flto" ]; then
		cc_ gcc -O3 -flto -g "$map" -Wall workload.c -o workload-lto || return 1
		echo "lto binary $(sha256sum <workload-lto)"
		timeout -k 5 120 ./workload-lto "$n" || return 1
	fi
	if command -v g++ >/dev/null 2>&1; then
		# -g only in long: cc1plus with debug info on <regex> costs seconds
		cc_ g++ -O2 ${flto:+-g "$map"} -std=c++17 -Wall -Wextra -c workload.cpp -o workload_cpp.o || return 1
		echo "c++ object $(sha256sum <workload_cpp.o)"
		echo "c++ disasm $(objdump -d workload_cpp.o | sha256sum)"
		cc_ g++ workload_cpp.o -o workload_cpp || return 1
		timeout -k 5 120 ./workload_cpp $((n / 2)) || return 1
	else
		echo "no g++"
	fi
}

body_redis() {
	local n=20000 extra=() big=1000
	[ "$1" = long ] && { n=200000; extra=(-P 8 -d 200); big=20000; }
	local sock=$PWD/redis.sock ok=1
	rcli() { timeout -k 5 60 redis-cli -s "$sock" "$@"; }
	timeout -k 5 500 redis-server --port 0 --unixsocket "$sock" --unixsocketperm 700 --save '' \
		--appendonly no --dir "$PWD" --logfile "$PWD/redis.log" --daemonize no &
	local pid=$!
	echo "$pid" >redis.pid
	# wait for the server while it runs, up to 60 s (a start-up time, not a test: it was 200
	# tries 50 ms apart, about 10 s, which a loaded machine could use up)
	local up=0 t0=$SECONDS
	while [ $((SECONDS - t0)) -lt 60 ]; do
		if [ -S "$sock" ] && [ "$(rcli ping 2>/dev/null)" = PONG ]; then
			up=1
			break
		fi
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	if [ "$up" != 1 ]; then
		echo "redis-server did not come up" >&2
		cat redis.log >&2
		kill "$pid" 2>/dev/null
		wait "$pid"
		echo "server exit status $?"
		return 1
	fi
	echo "server up"
	# the server (the child of timeout) has the library mapped exactly when LD_PRELOAD is set
	local spid mapped=no
	spid=$(awk '{ print $1 }' "/proc/$pid/task/$pid/children" 2>/dev/null)
	grep -qs libsheafalloc_malloc "/proc/${spid:-0}/maps" && mapped=yes
	if [ "$mapped" = "$([ "$SA_PROGRAMS_SIDE" = sa ] && echo yes || echo no)" ]; then
		echo "server preload state as expected"
	else
		echo "server pid '${spid}': libsheafalloc_malloc mapped: $mapped, LD_PRELOAD='${LD_PRELOAD:-}'"
		ok=0
	fi
	local rc
	timeout -k 5 300 redis-benchmark -s "$sock" -n "$n" -c 10 -r 100000 -q -t set,get,lpush,lpop,incr,hset \
		"${extra[@]}" >bench.out 2>&1
	rc=$?
	cat bench.out >&2
	echo "benchmark exit status $rc"
	[ "$rc" = 0 ] || ok=0
	# the benchmark's keys are random: start the checked part from an empty database
	rcli flushall
	# known keys through a pipe of commands, then read back
	awk -v n="$big" 'BEGIN { for (i = 0; i < n; i++) {
		v = sprintf("value-%d-", i); while (length(v) < 10 + (i * 37) % 900) v = v "x"
		printf "SET key:%d %s\n", i, v
		printf "RPUSH list %d\n", i
		printf "HSET hash f%d %d\n", i, i * i
		printf "ZADD zset %d m%d\n", (i * 7919) % 1000, i } }' >cmds.txt
	rcli <cmds.txt >replies.txt
	echo "replies: $(wc -l <replies.txt) lines, $(grep -c '^OK$' replies.txt) OK, $(sha256sum <replies.txt)"
	awk -v n="$big" 'BEGIN { for (i = 0; i < n; i++) {
		v = sprintf("value-%d-", i); while (length(v) < 10 + (i * 37) % 900) v = v "x"; print v } }' >want.txt
	awk -v n="$big" 'BEGIN { for (i = 0; i < n; i++) printf "GET key:%d\n", i }' | rcli >got.txt
	if cmp -s want.txt got.txt; then echo "get round trip: $big values equal"; else
		echo "get round trip: values differ"
		ok=0
	fi
	# a 4 MiB value (the allocator's huge path), appended to and read back
	head -c 4194304 /dev/zero | tr '\0' 'q' >bigval
	rcli -x set bigkey <bigval
	rcli append bigkey tail
	printf 'tail' >>bigval
	if [ "$(rcli get bigkey | sha256sum)" = "$( (cat bigval; echo) | sha256sum)" ]; then echo "big value round trip ok"; else
		echo "big value differs"
		ok=0
	fi
	echo "llen $(rcli llen list) hlen $(rcli hlen hash) zcard $(rcli zcard zset)"
	echo "hget $(rcli hget hash f77) lrange $(rcli lrange list 10 12 | tr '\n' ' ')"
	echo "zrange $(rcli zrange zset 0 4 withscores | tr '\n' ' ')"
	local dbsize
	dbsize=$(rcli dbsize)
	echo "dbsize $dbsize"
	[ "$dbsize" = $((big + 4)) ] || ok=0
	rcli del list hash >/dev/null
	echo "dbsize after del $(rcli dbsize)"
	rcli shutdown nosave >/dev/null 2>&1
	wait "$pid"
	rc=$?
	echo "server exit status $rc"
	[ "$rc" = 0 ] || ok=0
	rm -f bigval
	[ "$ok" = 1 ]
}

if [ "${1:-}" = __body ]; then
	# __body NAME MODE: run one case body in the current directory. First make sure that a
	# child process has the library mapped exactly on the preloaded side (SA_PROGRAMS_SIDE).
	if grep -qs libsheafalloc_malloc <(cat /proc/self/maps); then m=sa; else m=glibc; fi
	if [ "$m" != "${SA_PROGRAMS_SIDE:-}" ]; then
		echo "run_programs.sh: side ${SA_PROGRAMS_SIDE:-?} but a child process has" \
			"$([ "$m" = sa ] || echo "no ")libsheafalloc_malloc mapped (LD_PRELOAD='${LD_PRELOAD:-}')" >&2
		exit 97
	fi
	"body_$2" "$3"
	exit $?
fi
unset LD_PRELOAD

# =============================================================================================
# Driver
# =============================================================================================

BDIR=${1:-${B:-build}}
MODE=${2:-quick}
case "$MODE" in
quick | long) ;;
*)
	echo "usage: $0 <build-dir> [quick|long]" >&2
	exit 2
	;;
esac
if [ ! -d "$BDIR" ] && [ -d "$ROOT/$BDIR" ]; then
	BDIR=$ROOT/$BDIR
fi
BDIR=$(cd "$BDIR" 2>/dev/null && pwd) || {
	echo "no build directory '$1'" >&2
	echo "0 passed, 1 failed"
	exit 1
}
LIB=$BDIR/libsheafalloc_malloc.so

PASSED=0
FAILED=0
SKIPPED=0
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sheafalloc-programs.XXXXXX") || exit 2
cleanup() {
	local f p
	# a redis-server left behind by a body that was killed
	for f in "$WORK"/*/*/redis.pid; do
		[ -f "$f" ] || continue
		p=$(cat "$f")
		if [ -n "$p" ] && grep -qs redis-server "/proc/$p/cmdline"; then
			kill "$p" 2>/dev/null
		fi
	done
	if [ "${SA_PROGRAMS_KEEP:-0}" = 1 ]; then
		echo "work directory kept: $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { echo "PASS $1${2:+ ($2)}"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1: $2"; FAILED=$((FAILED + 1)); }
skip() { echo "SKIP $1: $2"; SKIPPED=$((SKIPPED + 1)); }
detail() { sed 's/^/    | /' | head -n "${1:-25}"; } # [max lines]: indented lines from stdin

is_root() { [ "$(id -u)" = 0 ]; }
APT_UPDATED=0
# ensure CMD PKG: CMD is on PATH (or is an executable path) or gets installed (root only)
ensure() {
	local cmd=$1 pkg=$2
	have "$cmd" && return 0
	is_root && [ "${SA_PROGRAMS_INSTALL:-1}" = 1 ] && command -v apt-get >/dev/null 2>&1 || return 1
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >"$WORK/apt.log" 2>&1; then
		if [ "$APT_UPDATED" = 0 ]; then
			APT_UPDATED=1
			apt-get update -qq >>"$WORK/apt.log" 2>&1
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >>"$WORK/apt.log" 2>&1
		fi
	fi
	have "$cmd"
}
have() {
	case "$1" in
	/*) [ -e "$1" ] ;;
	*) command -v "$1" >/dev/null 2>&1 ;;
	esac
}

selected() { # case name: SA_PROGRAMS_ONLY filter
	[ -z "${SA_PROGRAMS_ONLY:-}" ] && return 0
	local w
	for w in $SA_PROGRAMS_ONLY; do
		case "$1" in "$w"*) return 0 ;; esac
	done
	return 1
}

TIMEBIN=""
ensure /usr/bin/time time && TIMEBIN=/usr/bin/time

# run_side SIDE NAME BODY TIMEOUT [SA-OPTIONS]: one run of a body; sets SIDE_RC, writes
# $WORK/NAME/SIDE.{out,err,time}
run_side() {
	local side=$1 name=$2 body=$3 to=$4 opts=${5-} dir=$WORK/$2/$1
	mkdir -p "$dir"
	local envs=(env -u LD_PRELOAD SA_PROGRAMS_SIDE="$side")
	if [ "$side" = sa ]; then
		envs=(env LD_PRELOAD="$LIB" SA_PROGRAMS_SIDE="$side")
		[ -n "$opts" ] && envs+=(SHEAFALLOC_OPTIONS="$opts")
	fi
	local tcmd=()
	[ -n "$TIMEBIN" ] && tcmd=("$TIMEBIN" -f '%e %M %U %S' -o "$WORK/$name/$side.time")
	(cd "$dir" && "${tcmd[@]}" timeout -k 10 "$to" "${envs[@]}" bash "$SELF" __body "$body" "$MODE") \
		>"$WORK/$name/$side.out.raw" 2>"$WORK/$name/$side.err" </dev/null
	SIDE_RC=$?
	# the work directory differs between the sides: normalise it
	sed "s#$dir#@DIR@#g" "$WORK/$name/$side.out.raw" >"$WORK/$name/$side.out"
}

# "1.23s 45MB (cpu 1.10s)" from a time file: wall, peak RSS of the largest process, user+sys
usage_of() {
	local f=$WORK/$1/$2.time
	[ -s "$f" ] || { echo "n/a"; return; }
	tail -n 1 "$f" | awk '{ printf "%.2fs %dMB cpu %.2fs", $1, ($2 + 512) / 1024, $3 + $4 }'
}

why_rc() { # rc -> words
	case "$1" in
	124) echo "timed out" ;;
	137) echo "killed (SIGKILL: timed out and did not stop)" ;;
	*) if [ "$1" -gt 128 ]; then echo "killed by signal $(($1 - 128)) ($(kill -l $(($1 - 128)) 2>/dev/null))"; else echo "exit status $1"; fi ;;
	esac
}

# run_case NAME BODY TIMEOUT [SA-OPTIONS [BASE-CASE]]: both sides, compare exit status and
# stdout. With BASE-CASE (a case already run with the same body and environment), its plain run
# is reused as this case's baseline instead of running it again.
run_case() {
	local name=$1 body=$2 to=$3 opts=${4-} base=${5-}
	selected "$name" || return 0
	mkdir -p "$WORK/$name"
	local grc
	if [ -n "$base" ] && [ -f "$WORK/$base/glibc.rc" ]; then
		cp "$WORK/$base"/glibc.* "$WORK/$name/"
	else
		run_side glibc "$name" "$body" "$to"
		echo "$SIDE_RC" >"$WORK/$name/glibc.rc"
	fi
	grc=$(cat "$WORK/$name/glibc.rc")
	run_side sa "$name" "$body" "$to" "$opts"
	local src=$SIDE_RC
	local d=$WORK/$name
	local times
	times="sa $(usage_of "$name" sa) / glibc $(usage_of "$name" glibc)"
	if [ "$src" != 0 ]; then
		if [ "$grc" != 0 ]; then
			fail "$name" "preloaded run: $(why_rc "$src"); the plain run failed too ($(why_rc "$grc")): environment problem?"
		else
			fail "$name" "preloaded run: $(why_rc "$src") (plain run: exit status 0)"
		fi
		{
			echo "--- preloaded stderr (last lines):"
			tail -n 15 "$d/sa.err"
			echo "--- preloaded stdout (last lines):"
			tail -n 8 "$d/sa.out"
		} | detail 40
		return
	fi
	if [ "$grc" != 0 ]; then
		fail "$name" "the plain run (no preload) failed: $(why_rc "$grc") — environment problem, nothing compared"
		tail -n 15 "$d/glibc.err" | detail
		return
	fi
	if [ ! -s "$d/glibc.out" ]; then
		fail "$name" "the plain run printed nothing to compare"
		return
	fi
	if ! cmp -s "$d/glibc.out" "$d/sa.out"; then
		local first
		first=$(diff "$d/glibc.out" "$d/sa.out" | head -n 1)
		fail "$name" "output differs from the plain run ($(wc -l <"$d/sa.out") vs $(wc -l <"$d/glibc.out") lines; first hunk $first)"
		diff -u --label glibc --label sheafalloc "$d/glibc.out" "$d/sa.out" | detail 30
		return
	fi
	pass "$name" "$times"
}

# --------------------------------------------------------------------- preload check ------
check_preload() {
	if [ ! -f "$LIB" ]; then
		fail preload "$LIB does not exist (run make first)"
		return 1
	fi
	local maps err
	maps=$(LD_PRELOAD="$LIB" cat /proc/self/maps 2>"$WORK/preload.err")
	if ! grep -qF "$LIB" <<<"$maps"; then
		fail preload "the library is not mapped in a process run with LD_PRELOAD=$LIB"
		detail <"$WORK/preload.err"
		return 1
	fi
	# the caller's SHEAFALLOC_OPTIONS too: they are what the preloaded runs will use
	err=$(LD_PRELOAD="$LIB" SHEAFALLOC_OPTIONS="${SHEAFALLOC_OPTIONS:+$SHEAFALLOC_OPTIONS,}verbose=1" \
		ls -l / 2>&1 >/dev/null)
	if ! grep -q sheafalloc <<<"$err" || grep -q 'ld.so' <<<"$err"; then
		fail preload "SHEAFALLOC_OPTIONS=verbose=1 ls: no 'sheafalloc' on stderr (the preload did not take over malloc)"
		detail <<<"$err"
		return 1
	fi
	pass preload "mapped and initialised: $(grep -m1 sheafalloc <<<"$err")"
}

echo "== programs under LD_PRELOAD=$LIB ($MODE, $(nproc 2>/dev/null || echo '?') CPUs)"
if ! check_preload; then
	echo "the preload is not active: no program was run"
	echo "[  PASSED  ] $PASSED test(s)."
	echo "[  FAILED  ] $FAILED test(s)."
	echo "$PASSED passed, $FAILED failed"
	exit 1
fi

# timeouts: several times the expected duration on a loaded 2-core machine
if [ "$MODE" = long ]; then T=(600 300); else T=(240 120); fi

# ------------------------------------------------------------------------ python ---------
if ! have "$PY"; then
	ensure "$PY" python3-minimal
fi
if have "$PY"; then
	run_case python-workload python_workload "${T[0]}"
	if [ "$MODE" = long ]; then
		BODY_PYTHONMALLOC=pymalloc run_case python-workload-pymalloc python_workload "${T[0]}"
		run_case python-workload-fallback python_workload "${T[0]}" percpu=fallback python-workload
	fi

	PYV=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	TESTDIR=$("$PY" -c 'import os, test; print(os.path.dirname(test.__file__))' 2>/dev/null)
	TESTDIR=${TESTDIR:-/usr/lib/python$PYV/test}
	# Debian ships regrtest itself in libpython3.X-stdlib but the test modules in -testsuite
	[ -e "$TESTDIR/test_list.py" ] || ensure "$TESTDIR/test_list.py" "libpython$PYV-testsuite"
	# present_modules LIST: the modules of LIST this Python has; notes the others
	present_modules() {
		local m out="" missing=""
		for m in $1; do
			if [ -e "$TESTDIR/$m.py" ] || [ -d "$TESTDIR/$m" ]; then out="$out $m"; else missing="$missing $m"; fi
		done
		[ -n "$missing" ] && echo "note: $2: not in this Python's test package, left out:$missing" >&2
		echo "$out"
	}
	if "$PY" -c 'import test.libregrtest' >/dev/null 2>&1 && [ -e "$TESTDIR/test_list.py" ]; then
		MODS="test_list test_dict test_set test_json test_re test_unicode"
		[ "$MODE" = long ] && MODS="$MODS test_collections test_itertools test_functools test_pickle
			test_bytes test_string test_struct test_zlib test_sqlite3 test_tuple test_deque test_heapq
			test_bisect test_array test_memoryview test_hashlib test_weakref test_gc test_random
			test_decimal test_fractions test_textwrap test_csv test_xml_etree test_email test_threading
			test_bz2 test_lzma test_codecs test_math test_long test_float test_format test_mmap"
		if selected python-regrtest; then
			BODY_MODULES=$(present_modules "$MODS" python-regrtest) run_case python-regrtest python_regrtest "${T[0]}"
		fi
		if [ "$MODE" = long ] && selected python-regrtest-malloc; then
			# every Python object through malloc, threads included
			MODS="test_list test_dict test_set test_json test_re test_unicode test_threading test_gc
				test_weakref test_pickle test_collections"
			BODY_MODULES=$(present_modules "$MODS" python-regrtest-malloc) PYTHONMALLOC=malloc \
				run_case python-regrtest-malloc python_regrtest "${T[0]}"
		fi
	else
		selected python-regrtest &&
			skip python-regrtest "python3 -m test or its modules unavailable (package libpython$PYV-testsuite; installed when run as root)"
	fi
else
	selected python && skip python "no $PY (package python3-minimal)"
fi

# ------------------------------------------------------------------------ sqlite3 --------
if ensure sqlite3 sqlite3; then
	run_case sqlite3 sqlite3 "${T[0]}"
	[ "$MODE" = long ] && run_case sqlite3-fallback sqlite3 "${T[0]}" percpu=fallback sqlite3
else
	selected sqlite3 && skip sqlite3 "sqlite3 not installed (package sqlite3)"
fi

# ------------------------------------------------------------------------ git ------------
if ensure git git; then
	run_case git git "${T[0]}"
else
	selected git && skip git "git not installed (package git)"
fi

# ------------------------------------------------------------------------ gcc ------------
if ensure gcc gcc && ensure objdump binutils; then
	ensure g++ g++ >/dev/null
	run_case gcc gcc "${T[0]}"
else
	selected gcc && skip gcc "gcc or objdump not installed (packages gcc, binutils)"
fi

# ------------------------------------------------------------------------ redis ----------
if ensure redis-server redis-server && ensure redis-benchmark redis-tools && ensure redis-cli redis-tools; then
	run_case redis redis "${T[1]}"
else
	selected redis && skip redis "redis-server/redis-benchmark/redis-cli not installed (packages redis-server, redis-tools)"
fi

END=$(date +%s)
echo "== done in $((END - START))s ($MODE)$([ "$SKIPPED" -gt 0 ] && echo ", $SKIPPED skipped")"
echo "[  PASSED  ] $PASSED test(s)."
echo "[  FAILED  ] $FAILED test(s)."
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
