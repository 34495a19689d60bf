#!/bin/bash
# bench/programs.sh — whole programs under each malloc: sheafalloc (LD_PRELOAD of
# $B/libsheafalloc_malloc.so), jemalloc, mimalloc, tcmalloc (LD_PRELOAD of Debian's libraries)
# and glibc (no preload).
#
# usage: bench/programs.sh [OUT.md]            (`make -C bench run-programs` runs it)
# Environment:
#   B                 the build directory holding libsheafalloc_malloc.so (default ../build)
#   BENCH_PROGRAMS    programs to run (default: python python-malloc sqlite git gcc redis)
#   BENCH_ALLOCATORS  allocators (default: sheafalloc jemalloc mimalloc tcmalloc glibc)
#   BENCH_RUNS        timed runs per program and allocator (default 3; 5 for steadier medians)
#   BENCH_PIN         run everything under `taskset -c $BENCH_PIN`
#   BENCH_TIMEOUT     seconds before one run is killed (default 300)
#
# Programs (inputs generated once into a scratch directory, untimed, the same for everyone):
#   python         python3 bench/programs/alloc_heavy.py (CPython's pymalloc takes objects up to
#                  512 B; larger ones, growing lists, dicts, strings and bytearrays go to malloc)
#   python-malloc  the same with PYTHONMALLOC=malloc: every object goes to malloc
#   sqlite         sqlite3 :memory: < the script of bench/programs/sqlite_gen.py (40,000 INSERT
#                  statements, a 200,000-row INSERT ... SELECT, indexes, queries, VACUUM)
#   git            bench/programs/git_work.sh on a repository made by git_gen.py (log -p,
#                  pack-objects recompressing and re-deltifying everything, blame, diff, rev-list)
#   gcc            gcc -O2 -c of the C file of bench/programs/gcc_gen.py (cc1 and as)
#   redis          redis-server on 127.0.0.1 (a free port, no persistence) under the allocator;
#                  redis-benchmark (not preloaded: the same client for every row) sends 100,000
#                  pipelined requests of each of 10 commands; time is the benchmark's wall time,
#                  peak RSS the server's. The output check is a fixed redis-cli script run against
#                  the server after the benchmark.
# A program whose package is missing is skipped with a note.
#
# Method: one untimed warm-up run per program under glibc, whose output is the reference; then
# BENCH_RUNS rounds, each running every allocator once in turn (A B C D E, A B C D E, ...), so a
# slow phase of a noisy machine hits every allocator. Each run is under /usr/bin/time -f
# '%e %M %U %S %R': wall time, peak RSS (of the largest single process of the run: time reports the
# maximum over the processes it waited for), user and system CPU, minor page faults (summed over
# the processes it waited for: each one a page the program touched for the first time, or touched
# again after the allocator gave it back). A run whose output differs
# from the reference marks its cell WRONG OUTPUT; a non-zero exit marks it FAILED. The glibc
# column of a program linked with another malloc (redis-server: jemalloc) preloads
# bench/programs/glibc_malloc.c, which forwards the malloc family to glibc's own entry points;
# without it that column would measure the linked malloc.
# Raw data: bench/results/raw/programs-<UTC time>/ (runs.tsv, every output and stderr).
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
B=${B:-$root/build}
out_md=${1:-$here/results/programs.md}
PROGRAMS=${BENCH_PROGRAMS:-python python-malloc sqlite git gcc redis}
ALLOCS=${BENCH_ALLOCATORS:-sheafalloc jemalloc mimalloc tcmalloc glibc}
RUNS=${BENCH_RUNS:-3}
PIN=${BENCH_PIN:-}
TIMEOUT=${BENCH_TIMEOUT:-300}
PIN_CMD=()
[ -n "$PIN" ] && PIN_CMD=(taskset -c "$PIN")

raw=${BENCH_RAW_DIR:-$here/results/raw}/programs-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$raw" "$(dirname "$out_md")"
work=$(mktemp -d "${TMPDIR:-/tmp}/sheafalloc-programs.XXXXXX")
redis_pidfile=$work/redis/redis.pid
cleanup() {
	if [ -s "$redis_pidfile" ]; then
		kill "$(cat "$redis_pidfile")" 2>/dev/null
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start=$(date +%s)

note() {
	echo "$*" >>"$raw/notes"
	echo "== programs: $*" >&2
}

# ---- allocators: the preload of each ------------------------------------------------------------
lib_path() { # package soname -> the installed file, or nothing
	local f
	f=$(dpkg -L "$1" 2>/dev/null | grep -m1 "/$2\$")
	[ -z "$f" ] && [ -e "/usr/lib/x86_64-linux-gnu/$2" ] && f=/usr/lib/x86_64-linux-gnu/$2
	[ -n "$f" ] && [ -e "$f" ] && echo "$f"
}

declare -A PRELOAD
allocs=()
for a in $ALLOCS; do
	case $a in
	sheafalloc) lib=$B/libsheafalloc_malloc.so; [ -e "$lib" ] || lib= ;;
	jemalloc) lib=$(lib_path libjemalloc2 libjemalloc.so.2) ;;
	mimalloc) lib=$(lib_path libmimalloc2.0 libmimalloc.so.2) ;;
	tcmalloc) lib=$(lib_path libtcmalloc-minimal4 libtcmalloc_minimal.so.4) ;;
	glibc) PRELOAD[$a]=; allocs+=("$a"); continue ;;
	*) note "unknown allocator $a, skipped"; continue ;;
	esac
	if [ -z "$lib" ]; then
		note "$a: library not found (sheafalloc: run make; others: apt-get install the package), skipped"
		continue
	fi
	# the preload must really be mapped into the program
	if ! LD_PRELOAD=$lib grep -q "$(basename "$lib")" /proc/self/maps; then
		note "$a: LD_PRELOAD=$lib does not load, skipped"
		continue
	fi
	PRELOAD[$a]=$lib
	allocs+=("$a")
done
[ ${#allocs[@]} -gt 0 ] || { note "no allocator to run"; exit 1; }

glibc_shim=$work/libglibc_malloc.so
if ! cc -O2 -shared -fPIC -o "$glibc_shim" "$here/programs/glibc_malloc.c" -ldl 2>"$work/shim.err"; then
	note "could not build programs/glibc_malloc.c: $(head -c 300 "$work/shim.err")"
	glibc_shim=
fi

# The LD_PRELOAD value for allocator $1 running binary $2.
preload_for() {
	if [ "$1" = glibc ]; then
		# a binary linked with a malloc replacement: give it glibc's back
		if ldd "$2" 2>/dev/null | grep -qE 'lib(jemalloc|tcmalloc|mimalloc)'; then
			echo "$glibc_shim"
		fi
		return
	fi
	echo "${PRELOAD[$1]}"
}

have() { command -v "$1" >/dev/null 2>&1; }

# ---- programs: setup_<p> (untimed; non-zero skips it) and the command of one run ----------------
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null HOME=$work LC_ALL=C

setup_python() { have python3 || { note "python: python3 missing (apt-get install python3), skipped"; return 1; }; }
setup_python-malloc() { setup_python; }
setup_sqlite() {
	have sqlite3 || { note "sqlite: sqlite3 missing (apt-get install sqlite3), skipped"; return 1; }
	python3 "$here/programs/sqlite_gen.py" 40000 >"$work/sqlite.sql"
}
setup_git() {
	have git || { note "git: git missing (apt-get install git), skipped"; return 1; }
	git init -q -b main "$work/repo" &&
		python3 "$here/programs/git_gen.py" 400 200 | git -C "$work/repo" fast-import --quiet --done
}
setup_gcc() {
	have gcc || { note "gcc: gcc missing (apt-get install gcc), skipped"; return 1; }
	python3 "$here/programs/gcc_gen.py" 100 >"$work/big.c"
}
setup_redis() {
	if ! have redis-server || ! have redis-benchmark || ! have redis-cli; then
		note "redis: redis-server/redis-benchmark/redis-cli missing (apt-get install redis-server redis-tools), skipped"
		return 1
	fi
	if [ -z "$glibc_shim" ] && ldd "$(command -v redis-server)" | grep -qE 'lib(jemalloc|tcmalloc|mimalloc)'; then
		note "redis: its glibc column measures the malloc redis-server is linked with (no glibc_malloc shim)"
	fi
	mkdir -p "$work/redis"
	# the output check: fixed data in database 1, read back in a fixed order
	python3 - >"$work/redis_check.txt" <<'EOF'
for i in range(3000):
    print("RPUSH list:%d item-%d-%s" % (i % 10, i, "x" * (i % 97)))
    print("SADD set:%d member-%d" % (i % 7, i * 13))
    print("ZADD zset %d zm-%d" % ((i * 7919) % 3001, i))
    print("HSET hash:%d f%d %s" % (i % 5, i, "v" * (i % 61)))
    print("SET str:%d %s" % (i, "s%d" % i * (1 + i % 30)))
    print("APPEND grow:%d %s" % (i % 3, "g" * (i % 200)))
for k in range(10):
    print("LRANGE list:%d 0 -1" % k)
for k in range(7):
    print("SORT set:%d ALPHA" % k)
print("ZRANGE zset 0 -1 WITHSCORES")
for k in range(5):
    print("HMGET hash:%d %s" % (k, " ".join("f%d" % i for i in range(k, 3000, 5))))
print("MGET %s" % " ".join("str:%d" % i for i in range(0, 3000, 7)))
for k in range(3):
    print("STRLEN grow:%d" % k)
print("DBSIZE")
print("FLUSHDB")
EOF
}

# One timed run of program $1 under allocator $2; stdout to $3, stderr to $4, "wall rss user sys minflt"
# to $5. Returns the program's exit status.
run_cmd() {
	local p=$1 a=$2 out=$3 err=$4 tm=$5 pre
	case $p in
	python | python-malloc)
		pre=$(preload_for "$a" "$(command -v python3)")
		local pm=()
		[ "$p" = python-malloc ] && pm=(PYTHONMALLOC=malloc)
		"${PIN_CMD[@]}" /usr/bin/time -f '%e %M %U %S %R' -o "$tm" timeout "$TIMEOUT" \
			env LD_PRELOAD="$pre" "${pm[@]}" python3 "$here/programs/alloc_heavy.py" >"$out" 2>"$err" ;;
	sqlite)
		pre=$(preload_for "$a" "$(command -v sqlite3)")
		"${PIN_CMD[@]}" /usr/bin/time -f '%e %M %U %S %R' -o "$tm" timeout "$TIMEOUT" \
			env LD_PRELOAD="$pre" sqlite3 :memory: <"$work/sqlite.sql" >"$out" 2>"$err" ;;
	git)
		pre=$(preload_for "$a" "$(command -v git)")
		"${PIN_CMD[@]}" /usr/bin/time -f '%e %M %U %S %R' -o "$tm" timeout "$TIMEOUT" \
			env LD_PRELOAD="$pre" "$here/programs/git_work.sh" "$work/repo" >"$out" 2>"$err" ;;
	gcc)
		pre=$(preload_for "$a" "$(command -v gcc)")
		rm -f "$work/big.o"
		"${PIN_CMD[@]}" /usr/bin/time -f '%e %M %U %S %R' -o "$tm" timeout "$TIMEOUT" \
			env LD_PRELOAD="$pre" sh -c 'gcc -O2 -c "$1" -o "$2" && cksum <"$2"' sh \
			"$work/big.c" "$work/big.o" >"$out" 2>"$err" ;;
	redis) run_redis "$a" "$out" "$err" "$tm" ;;
	esac
}

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

run_redis() {
	local a=$1 out=$2 err=$3 tm=$4 pre port srv rc=0 t0 t1 stm=$work/redis/server.time
	pre=$(preload_for "$a" "$(command -v redis-server)")
	port=$(free_port)
	rm -f "$redis_pidfile" "$stm"
	"${PIN_CMD[@]}" /usr/bin/time -f '%e %M %U %S %R' -o "$stm" timeout "$TIMEOUT" \
		env LD_PRELOAD="$pre" redis-server --bind 127.0.0.1 --port "$port" --save '' \
		--appendonly no --dir "$work/redis" --logfile "$work/redis/log" \
		--pidfile "$redis_pidfile" --daemonize no >/dev/null 2>"$err" &
	srv=$!
	for _ in $(seq 200); do
		redis-cli -p "$port" ping >/dev/null 2>&1 && break
		sleep 0.05
	done
	if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
		echo "redis-server did not answer on port $port" >>"$err"
		[ -s "$redis_pidfile" ] && kill "$(cat "$redis_pidfile")" 2>/dev/null
		wait "$srv"
		return 1
	fi
	t0=$(date +%s%N)
	"${PIN_CMD[@]}" timeout "$TIMEOUT" redis-benchmark -h 127.0.0.1 -p "$port" -q -n 100000 -c 16 \
		-P 16 -d 256 -r 100000 -t set,get,lpush,lpop,sadd,spop,hset,zadd,zpopmin,mset --csv \
		>"$out.bench" 2>>"$err" || rc=$?
	t1=$(date +%s%N)
	if ! redis-cli -p "$port" -n 1 <"$work/redis_check.txt" >"$out" 2>>"$err"; then
		[ $rc -ne 0 ] || rc=1
	fi
	redis-cli -p "$port" shutdown nosave >/dev/null 2>&1
	wait "$srv" || rc=$?
	# wall: the benchmark; peak RSS, CPU and minor faults: the server
	read -r _ rss user sys minflt <"$stm" 2>/dev/null || { rss=0 user=0 sys=0 minflt=0; }
	echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }') $rss $user $sys ${minflt:-0}" >"$tm"
	return $rc
}

# ---- the runs ---------------------------------------------------------------------------------
tsv=$raw/runs.tsv
printf 'program\tallocator\trun\twall_s\trss_kib\tcpu_s\tstatus\tminflt\n' >"$tsv"
programs=()
for p in $PROGRAMS; do
	if ! declare -F "setup_$p" >/dev/null; then
		note "unknown program $p, skipped"
		continue
	fi
	if "setup_$p"; then programs+=("$p"); fi
done

one_run() { # program allocator run-label; appends a line to runs.tsv, prints a short status
	local p=$1 a=$2 r=$3 base=$raw/$1.$2.$3 rc=0 status=ok wall rss user sys minflt
	run_cmd "$p" "$a" "$base.out" "$base.err" "$base.time" || rc=$?
	if [ $rc -ne 0 ]; then
		status="failed:$rc"
	elif [ "$r" != warmup ] && ! cmp -s "$base.out" "$raw/$p.glibc.warmup.out"; then
		status=wrong
	fi
	# /usr/bin/time writes "Command exited with non-zero status N" first when N != 0
	read -r wall rss user sys minflt < <(grep -v '^Command' "$base.time" 2>/dev/null | tail -n 1)
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$a" "$r" "${wall:-}" "${rss:-}" \
		"$(awk -v u="${user:-0}" -v s="${sys:-0}" 'BEGIN { printf "%.2f", u + s }')" "$status" \
		"${minflt:-}" >>"$tsv"
	printf ' %s:%s%s' "$a" "${wall:-?}s" "$([ $status = ok ] || echo "($status)")" >&2
}

for p in "${programs[@]}"; do
	echo -n "== programs: $p: warm-up (glibc)" >&2
	one_run "$p" glibc warmup
	if ! awk -F'\t' -v p="$p" '$1 == p && $3 == "warmup" && $7 == "ok" { f = 1 } END { exit !f }' "$tsv"; then
		note "$p: the glibc warm-up run failed (see $raw/$p.glibc.warmup.err); no reference output"
	fi
	echo >&2
	for r in $(seq "$RUNS"); do
		echo -n "== programs: $p: round $r/$RUNS:" >&2
		for a in "${allocs[@]}"; do
			one_run "$p" "$a" "$r"
		done
		echo >&2
	done
done

elapsed=$(($(date +%s) - start))
{
	echo "start $(date -u -d "@$start" +%Y-%m-%dT%H:%M:%SZ)"
	echo "end $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$raw/meta"
echo "== programs: $elapsed s; raw results in ${raw#"$root"/}" >&2
python3 "$here/programs_report.py" --runs "$RUNS" --pin "$PIN" --elapsed "$elapsed" \
	--allocators "${allocs[*]}" "$raw" >"$out_md" && cat "$out_md"
# make bench-quick (BENCH_STRICT=1): a sheafalloc run that failed or printed a wrong output fails
if [ -n "${BENCH_STRICT:-}" ]; then
	bad=$(awk -F'\t' '$2 == "sheafalloc" && $3 != "warmup" && $7 != "ok" { print $1 ": " $7 }' "$tsv")
	if [ -n "$bad" ]; then
		echo "FAIL: sheafalloc runs that failed or gave a wrong output:" >&2
		echo "$bad" >&2
		exit 1
	fi
	echo "quick check of the programs: every sheafalloc run ok" >&2
fi
