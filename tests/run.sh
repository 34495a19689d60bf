#!/usr/bin/env bash
# tests/run.sh — run the test binaries and count cmocka test cases.
#
# usage: B=build tests/run.sh quick|long      (run from anywhere; works in the repository root)
#
#   quick  every unit, integration and preload binary in every per-CPU mode (rseq registered by
#          glibc, rseq registered by the library with GLIBC_TUNABLES=glibc.pthread.rseq=0,
#          percpu=fallback), the shell tests, the stress tests for a few seconds per mode
#          (rseq, fallback, rseq on a synthetic 2-node topology) (~100 s on 2 cores)
#   long   the quick set (unless SA_SKIP_QUICK=1: CI runs `make test` just before), then the
#          stress tests 10 s per mode (fork and big_sheaves less; plus the library's own rseq
#          registration, 12 threads, and a synthetic two-node topology with tiny sheaves/barns),
#          every unit test under valgrind (which forces the fallback mode: rseq is ENOSYS there),
#          and, where the toolchain supports them, the unit, integration and stress tests built
#          with ASan+UBSan (build-address/; units in every per-CPU mode) and TSan (build-thread/,
#          tests/tsan.supp; rseq and fallback) by `make SAN=... tests-build` (their stress runs
#          on this machine's topology: the synthetic one is covered above), and the libFuzzer
#          target tests/fuzz/fuzz_api.c (`make fuzz`, clang) for SA_FUZZ_SECS on a copy of its
#          seed corpus (half on this machine's topology, half on two synthetic nodes), counted
#          as two tests (~18 min on 2 cores after the quick set; CI must stay under 30 min:
#          stop 18's CI took 1694 s with 15 s, 10 s and 60 s, hence 10 s, 8 s and 45 s now)
#
# Counting: each binary's cmocka summary lines "[  PASSED  ] N test(s)." and
# "[  FAILED  ] N test(s)" are added up; a binary that crashes, times out, or exits non-zero
# without reporting a failed test (a sanitizer or valgrind report, a lost summary) adds one
# failure. Skipped cmocka tests are reported, not counted. A shell test (tests/*/*.sh) prints the
# same summary lines. The last line is always "N passed, M failed"; the exit status is non-zero
# when M > 0.
#
# Environment: B (build directory, default build), SA_RUN_VERBOSE=1 (print every log),
# SA_STRESS_QUICK / SA_STRESS_LONG / SA_STRESS_SAN (seconds per stress run), SA_RUN_SAN=0 (skip
# sanitizers),
# SA_RUN_VALGRIND=0 (skip valgrind), SA_FUZZ_SECS (seconds of fuzzing, default 45),
# SA_SKIP_QUICK=1 (long: leave out the quick set),
# SA_RUN_FUZZ=0 (skip the fuzzer), FUZZ_CC (its compiler, default clang).
set -u

cd "$(dirname "$0")/.." || exit 2
B=${B:-build}
SET=${1:-quick}
case "$SET" in
quick | long) ;;
*) echo "usage: B=build tests/run.sh quick|long" >&2; exit 2 ;;
esac

PASSED=0
FAILED=0
SKIPPED=0
FAILED_RUNS=()
START=$(date +%s)
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/sheafalloc-tests.XXXXXX") || exit 2
trap 'rm -rf "$LOGDIR"' EXIT
NCPU=$(nproc 2>/dev/null || echo 1)
SYNTH="node:2 core:1 pu:1"

now_ms() { date +%s%3N; }

# Sum of the N in every line "<prefix> N test(s)" of a log.
sum_summary() { # file prefix-regex
	sed -n "s/^$2 \([0-9][0-9]*\) test(s).*/\1/p" "$1" | awk '{ s += $1 } END { print s + 0 }'
}

# run_one LABEL TIMEOUT ENV... -- CMD ARGS...
# Runs one test binary with a timeout; adds its cases to the totals.
run_one() {
	local label=$1 to=$2
	shift 2
	local envs=()
	while [ $# -gt 0 ] && [ "$1" != "--" ]; do
		envs+=("$1")
		shift
	done
	shift
	local log
	log="$LOGDIR/$(echo "$label" | tr -c 'A-Za-z0-9_.-' '_').log"
	local t0 t1 rc
	t0=$(now_ms)
	env ${envs[@]+"${envs[@]}"} timeout -k 10 "$to" "$@" >"$log" 2>&1 </dev/null
	rc=$?
	t1=$(now_ms)
	local secs
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1000 }')

	local p f s has_summary extra="" why=""
	p=$(sum_summary "$log" '\[  PASSED  \]')
	f=$(sum_summary "$log" '\[  FAILED  \]')
	s=$(sum_summary "$log" '\[  SKIPPED \]')
	if grep -qE '^\[  (PASSED|FAILED)  \] [0-9]+ test\(s\)' "$log"; then has_summary=1; else has_summary=0; fi
	if [ "$has_summary" = 0 ]; then
		# no summary: count what finished before the crash
		p=$(grep -c '^\[       OK \]' "$log")
		f=$(grep -E '^\[  FAILED  \] ' "$log" | grep -vc 'test(s)')
	fi
	if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
		extra=1
		why="timed out after ${to}s"
	elif [ "$rc" -gt 128 ]; then
		extra=1
		why="killed by signal $((rc - 128))"
	elif [ "$rc" != 0 ] && [ "$f" = 0 ]; then
		extra=1
		why="exit status $rc with no failed test case (sanitizer/valgrind report or crash?)"
	elif [ "$has_summary" = 0 ]; then
		extra=1
		why="no cmocka summary in the output"
	fi
	[ -n "$extra" ] && f=$((f + extra))
	PASSED=$((PASSED + p))
	FAILED=$((FAILED + f))
	SKIPPED=$((SKIPPED + s))
	local status=PASS
	[ "$f" -gt 0 ] && status=FAIL
	printf '%-4s %-58s %4d passed %3d failed%s  (%ss)\n' "$status" "$label" "$p" "$f" \
		"$([ "$s" -gt 0 ] && echo " $s skipped")" "$secs"
	if [ "$f" -gt 0 ]; then
		FAILED_RUNS+=("$label")
		[ -n "$why" ] && echo "     -> $why"
		echo "     ---- last lines of the output ($*) ----"
		tail -n 60 "$log" | sed 's/^/     | /'
		echo "     ----"
	elif [ "${SA_RUN_VERBOSE:-0}" = 1 ]; then
		sed 's/^/     | /' "$log"
	fi
}

bins() { # dir: the test binaries built from tests/<dir>/*.c
	local d=$B/tests/$1 f
	[ -d "$d" ] || return 0
	for f in "$d"/*; do
		[ -f "$f" ] && [ -x "$f" ] && echo "$f"
	done
}

# Build a sanitizer tree; returns 1 (skip) if the toolchain lacks the sanitizer, counts a failure
# if the toolchain has it but the project does not build.
san_build() { # address|thread
	local san=$1 flags="-fsanitize=$1"
	[ "$san" = address ] && flags="$flags -fsanitize=undefined"
	local probe="$LOGDIR/probe-$san"
	if ! echo 'int main(void){return 0;}' | ${CC:-cc} $flags -x c - -o "$probe" >/dev/null 2>&1 ||
		! "$probe" >/dev/null 2>&1; then
		echo "note: the compiler cannot build or run -fsanitize=$san programs here: skipped"
		return 1
	fi
	echo "== make SAN=$san tests-build"
	local log="$LOGDIR/build-$san.log"
	if ! make --no-print-directory SAN="$san" lib tests-build >"$log" 2>&1; then
		echo "FAIL make SAN=$san tests-build"
		tail -n 40 "$log" | sed 's/^/     | /'
		FAILED=$((FAILED + 1))
		FAILED_RUNS+=("make SAN=$san tests-build")
		return 1
	fi
	return 0
}

# The libFuzzer target: built by `make fuzz` (clang, build-fuzz/), run for SA_FUZZ_SECS on a
# fresh copy of tests/fuzz/corpus; two tests (two topologies), each passed when libFuzzer ends its time without a
# crash, a failed check of the model, a sanitizer report, a leak or an input past 60 s. A crashing
# input is kept as build-fuzz/crash-* (replay: build-fuzz/fuzz_api FILE; SA_FUZZ_TRACE=1 prints
# each call). Skipped with a note where the compiler cannot build and run -fsanitize=fuzzer
# programs (no clang, or no libclang-rt-14-dev: scripts/deps.sh fuzz installs both).
run_fuzz() {
	local secs=${SA_FUZZ_SECS:-45} cc=${FUZZ_CC:-clang}
	local probe="$LOGDIR/probe-fuzz"
	if ! command -v "$cc" >/dev/null 2>&1 ||
		! echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return !d && n; }' |
		"$cc" -fsanitize=fuzzer,address,undefined -x c - -o "$probe" >/dev/null 2>&1 ||
		! "$probe" -runs=1 >/dev/null 2>&1; then
		echo "note: $cc cannot build or run -fsanitize=fuzzer programs here (clang and" \
			"libclang-rt-14-dev: scripts/deps.sh fuzz): fuzz_api skipped"
		return 0
	fi
	echo "== make fuzz"
	local log="$LOGDIR/build-fuzz.log"
	if ! make --no-print-directory FUZZ_CC="$cc" fuzz >"$log" 2>&1; then
		echo "FAIL make fuzz"
		tail -n 40 "$log" | sed 's/^/     | /'
		FAILED=$((FAILED + 1))
		FAILED_RUNS+=("make fuzz")
		return 0
	fi
	local corpus="$LOGDIR/fuzz-corpus"
	if ! rm -rf "$corpus" || ! cp -r tests/fuzz/corpus "$corpus"; then
		echo "FAIL no copy of tests/fuzz/corpus"
		FAILED=$((FAILED + 1))
		FAILED_RUNS+=("fuzz corpus")
		return 0
	fi
	# libFuzzer's own summary, turned into the cmocka lines run_one counts
	local wrap="$LOGDIR/fuzz-run.sh"
	cat >"$wrap" <<'WRAP'
n0=$(ls "$2" | wc -l)
"$1" -max_total_time="$3" -print_final_stats=1 -rss_limit_mb="$4" -max_len=4096 -timeout=60 \
	-artifact_prefix=build-fuzz/ "$2"
rc=$?
echo "fuzz_api: corpus $n0 -> $(ls "$2" | wc -l) inputs, exit status $rc"
if [ "$rc" = 0 ]; then echo "[  PASSED  ] 1 test(s)."; else echo "[  FAILED  ] 1 test(s)"; fi
exit "$rc"
WRAP
	# half the time on this machine's topology, half on two synthetic nodes (the node paths:
	# remote frees, node-pure sheaves, the reserve's node), on the same growing corpus
	local half=$(((secs + 1) / 2)) name stats
	for topo in machine synthetic; do
		name="fuzz/fuzz_api [libFuzzer, $topo topology, ${half}s]"
		if [ $topo = machine ]; then
			run_one "$name" $((half + 300)) -- \
				bash "$wrap" build-fuzz/fuzz_api "$corpus" "$half" "${FUZZ_RSS_MB:-2048}"
		else
			run_one "$name" $((half + 300)) HWLOC_SYNTHETIC="$SYNTH" -- \
				bash "$wrap" build-fuzz/fuzz_api "$corpus" "$half" "${FUZZ_RSS_MB:-2048}"
		fi
		stats="$LOGDIR/$(echo "$name" | tr -c 'A-Za-z0-9_.-' '_').log"
		grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)|^fuzz_api: corpus' \
			"$stats" 2>/dev/null | sed 's/^/     /'
	done
}

# Per-CPU modes: rseq through glibc's registration, rseq through the library's own registration
# (glibc told not to register), and the lock fallback.
MODES=("rseq" "rseq-own" "fallback")
mode_env() { # mode -> env assignments
	case "$1" in
	rseq) echo "SHEAFALLOC_OPTIONS=" ;;
	rseq-own) echo "SHEAFALLOC_OPTIONS= GLIBC_TUNABLES=glibc.pthread.rseq=0" ;;
	fallback) echo "SHEAFALLOC_OPTIONS=percpu=fallback" ;;
	esac
}

run_unit_integration() { # timeout
	local t=$1 mode bin
	for mode in "${MODES[@]}"; do
		for bin in $(bins unit) $(bins integration); do
			run_one "${bin#"$B"/tests/} [$mode]" "$t" $(mode_env "$mode") B="$B" -- "$bin"
		done
	done
}

# tests/preload: plain programs using the standard malloc names, run with the malloc replacement
# preloaded (LD_PRELOAD is set for the program only, not for timeout/env).
run_preload() { # timeout
	local t=$1 mode bin so
	so=$(cd "$(dirname "$B/x")" && pwd)/libsheafalloc_malloc.so
	for mode in "${MODES[@]}"; do
		for bin in $(bins preload); do
			if [ ! -f "$so" ]; then
				run_one "${bin#"$B"/tests/} [$mode, LD_PRELOAD]" "$t" -- sh -c "echo 'no $so'; exit 1"
				continue
			fi
			run_one "${bin#"$B"/tests/} [$mode, LD_PRELOAD]" "$t" $(mode_env "$mode") B="$B" \
				SA_MALLOC_SO="$so" -- env LD_PRELOAD="$so" "$bin"
		done
	done
}

# A backstop again: tests/programs/run_programs.sh bounds each program it runs itself (120-240 s
# a side) and took 190-205 s in all on a 2-vCPU machine with two busy loops beside it, where
# the 600 s this was left a margin of 3x only.
SHELL_TIMEOUT=1200
run_shell_tests() {
	local sh
	for sh in tests/*/*.sh; do
		[ -f "$sh" ] || continue
		if [ -x "$sh" ]; then
			run_one "${sh#tests/} [shell]" "$SHELL_TIMEOUT" B="$B" -- "./$sh"
		else
			run_one "${sh#tests/} [shell]" "$SHELL_TIMEOUT" B="$B" -- sh "$sh"
		fi
	done
}

# Seconds for one stress binary: the fork test gets a third (it needs many forks, not a long
# run), big_sheaves (two scenarios, each reproduces within a second when broken) a quarter, at
# most 5 s; cancel, signals and fork_many count events (their seconds only add more of them) and
# churn_threads repeats one pattern: at most 10 and 15 s.
secs_for() { # binary seconds
	local s
	case "$(basename "$1")" in
	fork) s=$(($2 / 3)) ;;
	big_sheaves) s=$(($2 / 4)); [ "$s" -gt 5 ] && s=5 ;;
	cancel | signals | fork_many) s=$2; [ "$s" -gt 10 ] && s=10 ;;
	churn_threads) s=$2; [ "$s" -gt 15 ] && s=15 ;;
	*) s=$2 ;;
	esac
	[ "$s" -lt 2 ] && s=2
	echo "$s"
}

# Extra TSAN_OPTIONS for a binary: the fork tests trip TSan's deadlock detector, which cannot
# track the >64 mutexes the allocator's atfork handler holds at once (a TSan limit). rcu_fork's
# children start the RCU thread again after a multi-threaded fork, which TSan refuses by default.
tsan_extra() {
	case "$(basename "$1")" in
	fork | options | big_sheaves | nowait_nosys) echo ":detect_deadlocks=0" ;;
	rcu_fork) echo ":detect_deadlocks=0:die_after_fork=0" ;;
	esac
}

run_stress() { # seconds-per-run [build-dir]; env: RUN_TAG, STRESS_ENV, WRAP, STRESS_SYNTH, STRESS_ONLY,
	# STRESS_NOFALLBACK
	local secs=$1 bdir=${2:-$B} bin
	for bin in $(B=$bdir bins stress); do
		local name=${bin#"$bdir"/tests/} s to tenv=""
		[ -n "${STRESS_ONLY:-}" ] && [ "$(basename "$bin")" != "$STRESS_ONLY" ] && continue
		s=$(secs_for "$bin" "$secs")
		to=$((s * 4 + 120))
		[ -n "${TSAN_BASE:-}" ] && tenv="TSAN_OPTIONS=$TSAN_BASE$(tsan_extra "$bin")"
		run_one "$name [${RUN_TAG:+$RUN_TAG, }rseq, ${s}s]" "$to" SHEAFALLOC_OPTIONS= ${STRESS_ENV:-} $tenv \
			-- ${WRAP:-} "$bin" "$s"
		[ -n "${STRESS_NOFALLBACK:-}" ] ||
			run_one "$name [${RUN_TAG:+$RUN_TAG, }fallback, ${s}s]" "$to" SHEAFALLOC_OPTIONS=percpu=fallback \
				${STRESS_ENV:-} $tenv -- ${WRAP:-} "$bin" "$s"
		if [ "${STRESS_SYNTH:-1}" = 1 ] && [ "$NCPU" -ge 2 ]; then
			run_one "$name [${RUN_TAG:+$RUN_TAG, }rseq, 2 synthetic nodes, ${s}s]" "$to" SHEAFALLOC_OPTIONS= \
				HWLOC_SYNTHETIC="$SYNTH" ${STRESS_ENV:-} $tenv -- ${WRAP:-} "$bin" "$s"
		fi
	done
}

echo "== sheafalloc tests: set '$SET', build '$B', $NCPU CPU(s), $(uname -sr)"
if [ ! -d "$B/tests" ]; then
	echo "no $B/tests: build the tests first (make tests-build)"
	FAILED=$((FAILED + 1))
fi

# Timeouts are a backstop, not a measure: the tests find their own deadlocks (no progress for
# 30-60 s, or a generous guard on a child) and report them with their own messages; a binary
# takes 0-15 s on an idle 2-vCPU machine. BIN_TIMEOUT leaves room for a loaded or slow machine
# and for a test's own no-progress windows (it was 120 s, close to a few of them together);
# a test's own guards should stay well below it.
BIN_TIMEOUT=300

# ------------------------------------------------------------------ quick -------------------
if [ "$SET" = quick ] || [ "${SA_SKIP_QUICK:-0}" != 1 ]; then
	echo "== unit and integration tests, every per-CPU mode (${MODES[*]})"
	run_unit_integration "$BIN_TIMEOUT"
	run_preload "$BIN_TIMEOUT"
	run_shell_tests
	echo "== stress"
	run_stress "${SA_STRESS_QUICK:-4}"
else
	echo "== the quick set left out (SA_SKIP_QUICK=1)"
fi

# ------------------------------------------------------------------ long --------------------
if [ "$SET" = long ]; then
	LONG=${SA_STRESS_LONG:-10}
	echo "== long stress: ${LONG}s per mode"
	STRESS_SYNTH=0 run_stress "$LONG"
	RUN_TAG="own rseq registration" STRESS_SYNTH=0 STRESS_NOFALLBACK=1 \
		STRESS_ENV="GLIBC_TUNABLES=glibc.pthread.rseq=0" run_stress $((LONG / 3))
	RUN_TAG="12 threads" STRESS_ONLY=stress STRESS_SYNTH=0 STRESS_ENV="SA_STRESS_THREADS=12" \
		run_stress $((LONG / 3))
	for bin in $(bins stress); do
		s=$(secs_for "$bin" $((LONG / 2)))
		run_one "${bin#"$B"/tests/} [fallback, 2 synthetic nodes, tiny sheaves and barns, ${s}s]" \
			$((s * 4 + 120)) \
			SHEAFALLOC_OPTIONS=percpu=fallback,sheaf_capacity=3,barn_max_full=1,barn_max_empty=1 \
			HWLOC_SYNTHETIC="$SYNTH" -- "$bin" "$s"
		run_one "${bin#"$B"/tests/} [rseq, 2 synthetic nodes, tiny sheaves and barns, ${s}s]" \
			$((s * 4 + 120)) \
			SHEAFALLOC_OPTIONS=sheaf_capacity=2,barn_max_full=0,barn_max_empty=0 \
			HWLOC_SYNTHETIC="$SYNTH" -- "$bin" "$s"
	done

	if [ "${SA_RUN_VALGRIND:-1}" = 1 ]; then
		echo "== valgrind (forces the fallback mode)"
		if command -v valgrind >/dev/null 2>&1; then
			for bin in $(bins unit); do
				run_one "${bin#"$B"/tests/} [valgrind]" 900 SA_TEST_EXPECT_PERCPU=fallback \
					SHEAFALLOC_OPTIONS= -- valgrind -q --error-exitcode=99 "$bin"
			done
		else
			echo "FAIL valgrind is not installed (scripts/deps.sh test installs it)"
			FAILED=$((FAILED + 1))
			FAILED_RUNS+=("valgrind missing")
		fi
	fi

	if [ "${SA_RUN_SAN:-1}" = 1 ]; then
		SAN_SECS=${SA_STRESS_SAN:-8}
		echo "== ASan + UBSan"
		if san_build address; then
			SB=build-address
			for mode in "${MODES[@]}"; do
				for bin in $(B=$SB bins unit) $(B=$SB bins integration); do
					run_one "${bin#"$SB"/tests/} [asan, $mode]" 300 $(mode_env "$mode") B="$SB" \
						ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 -- "$bin"
				done
			done
			RUN_TAG=asan STRESS_SYNTH=0 \
				STRESS_ENV="ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1" \
				run_stress "$SAN_SECS" "$SB"
		fi
		echo "== TSan"
		if san_build thread; then
			SB=build-thread
			# older TSan runtimes reject high-entropy ASLR layouts: run without ASLR
			WRAPT=""
			if setarch "$(uname -m)" -R true >/dev/null 2>&1; then
				WRAPT="setarch $(uname -m) -R"
			fi
			TSAN_BASE="halt_on_error=0:second_deadlock_stack=1:report_thread_leaks=0:history_size=7:suppressions=$PWD/tests/tsan.supp"
			# rseq and fallback (the library's own registration differs from glibc's only
			# at thread start, which the ASan runs cover)
			for mode in rseq fallback; do
				for bin in $(B=$SB bins unit) $(B=$SB bins integration); do
					run_one "${bin#"$SB"/tests/} [tsan, $mode]" 300 $(mode_env "$mode") B="$SB" \
						"TSAN_OPTIONS=$TSAN_BASE$(tsan_extra "$bin")" -- $WRAPT "$bin"
				done
			done
			RUN_TAG=tsan WRAP=$WRAPT STRESS_SYNTH=0 run_stress "$SAN_SECS" "$SB"
			TSAN_BASE=""
		fi
	fi

	if [ "${SA_RUN_FUZZ:-1}" = 1 ]; then
		echo "== libFuzzer: tests/fuzz/fuzz_api.c"
		run_fuzz
	fi
fi

END=$(date +%s)
echo "== done in $((END - START))s"
[ "$SKIPPED" -gt 0 ] && echo "note: $SKIPPED test(s) skipped"
if [ "${#FAILED_RUNS[@]}" -gt 0 ]; then
	echo "failed runs:"
	printf '  %s\n' "${FAILED_RUNS[@]}"
fi
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
