#!/bin/sh
# Installs the Debian packages a target needs (as root), or prints the one apt-get line and fails.
# usage: scripts/deps.sh build|test|bench|fuzz|lint
set -u
build="gcc make pkg-config libhwloc-dev liburcu-dev"
test="$build g++ python3 libcmocka-dev valgrind time sqlite3 git redis-server redis-tools libpython3.11-testsuite"
# the libFuzzer target (make fuzz, run by make check-long): clang and its runtimes (libFuzzer,
# ASan, UBSan: libclang-rt-14-dev, which clang only recommends)
fuzz="$build clang libclang-rt-14-dev"
# make lint: the formatter and the static analysers
lint="$build clang-format cppcheck clang-tidy"
# gnuplot-nox: the plots of build/bench/REPORT.md (bench/report_all.py)
bench="$build g++ python3 libbenchmark-dev libjemalloc-dev libmimalloc-dev libgoogle-perftools-dev time sqlite3 git redis-server redis-tools gnuplot-nox"
case "${1:-build}" in
build) want=$build ;;
test) want=$test ;;
bench) want=$bench ;;
fuzz) want=$fuzz ;;
lint) want=$lint ;;
*) echo "deps.sh: unknown set '$1'" >&2; exit 2 ;;
esac
missing=""
for p in $want; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
	echo "sheafalloc: installing Debian packages:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null && apt-get install -y -qq $missing >/dev/null || {
		echo "sheafalloc: apt-get install failed:$missing" >&2; exit 1; }
	exit 0
fi
echo "sheafalloc: missing Debian packages. Run as root:" >&2
echo "  apt-get install -y$missing" >&2
exit 1
