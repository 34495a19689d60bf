#!/usr/bin/env bash
# bench/rss.sh — the rss part: RSS over time of one macro workload (bench/rss_bench.c, whose
# opening comment is the method) under each allocator, then rss_report.py.
#
# usage: rss.sh OUT.md
# Environment:
#   B                 the build directory holding bench/rss_bench and libsheafalloc_malloc.so
#   BENCH_ALLOCATORS  allocators (default: sheafalloc jemalloc mimalloc tcmalloc glibc)
#   BENCH_RSS_ARGS    rss_bench flags (default: --peak 128 --hold 200 --tail 4000 --period 5)
#   BENCH_PIN         a taskset CPU list to run under
#   BENCH_RAW_DIR     where the raw folder goes (default bench/results/raw)
#   BENCH_STRICT=1    (make bench-quick) a sheafalloc run that fails its self-checks fails this
# Each allocator is an LD_PRELOAD of its library (by soname; sheafalloc: $B/libsheafalloc_malloc.so;
# glibc: none). A peer whose library does not load is skipped with a note (rss_bench --expect
# exits 77 when malloc is not served by the preloaded library); a peer that fails is a note.
# Raw data: <raw>/rss-<UTC time>/<allocator>.csv (the samples), .txt (the summary line), .err.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
B=${B:-$root/build}
out_md=${1:-$here/results/rss.md}
ALLOCS=${BENCH_ALLOCATORS:-sheafalloc jemalloc mimalloc tcmalloc glibc}
ARGS=${BENCH_RSS_ARGS:---peak 128 --hold 200 --tail 4000 --period 5}
PIN=${BENCH_PIN:-}
PIN_CMD=()
[ -n "$PIN" ] && PIN_CMD=(taskset -c "$PIN")
raw=${BENCH_RAW_DIR:-$here/results/raw}/rss-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$raw" "$(dirname "$out_md")"
start=$(date +%s)
note() {
	echo "$*" >>"$raw/notes"
	echo "== rss: $*" >&2
}
failed=0
for a in $ALLOCS; do
	case $a in
	sheafalloc) pre=$B/libsheafalloc_malloc.so expect=libsheafalloc_malloc ;;
	jemalloc) pre=libjemalloc.so.2 expect=libjemalloc ;;
	mimalloc) pre=libmimalloc.so.2 expect=libmimalloc ;;
	tcmalloc) pre=libtcmalloc_minimal.so.4 expect=libtcmalloc ;;
	glibc) pre= expect=libc.so ;;
	*) note "unknown allocator $a, skipped"; continue ;;
	esac
	echo "== rss_bench: $a" >&2
	rc=0
	# shellcheck disable=SC2086 # ARGS is a list of flags
	LD_PRELOAD=$pre "${PIN_CMD[@]}" "$B/bench/rss_bench" $ARGS --expect "$expect" "$raw/$a.csv" \
		>"$raw/$a.txt" 2>"$raw/$a.err" || rc=$?
	case $rc in
	0) echo "   $(cat "$raw/$a.txt")" >&2 ;;
	77) rm -f "$raw/$a.csv" "$raw/$a.txt"
	    note "$a: $pre did not load (apt-get install its package), skipped" ;;
	*) rm -f "$raw/$a.txt"
	   note "$a: rss_bench failed (exit $rc): $(head -c 300 "$raw/$a.err")"
	   [ "$a" = sheafalloc ] && failed=1 ;;
	esac
done
{
	echo "start $(date -u -d "@$start" +%Y-%m-%dT%H:%M:%SZ)"
	echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "args $ARGS"
} >"$raw/meta"
echo "== rss: $(($(date +%s) - start)) s; raw results in ${raw#"$root"/}" >&2
python3 "$here/rss_report.py" --pin "$PIN" "$raw" >"$out_md" && cat "$out_md"
if [ -n "${BENCH_STRICT:-}" ] && [ $failed -ne 0 ]; then
	echo "FAIL: rss_bench failed under sheafalloc (see $raw)" >&2
	exit 1
fi
[ -n "${BENCH_STRICT:-}" ] && echo "quick check of $raw: sheafalloc ok"
exit 0
