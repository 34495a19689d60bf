#!/bin/sh
# tests/unit/exports.sh — the libraries export the contract's names only.
#   1. every dynamic symbol defined by $B/libsheafalloc.so is an sa_* function declared in
#      include/sheafalloc.h (or a header it includes under include/sheafalloc/)
#   2. every global symbol defined by $B/libsheafalloc.a is in the sa_ namespace (static
#      linking must not clash with the user's names; STYLE.md: internal names are sa_<module>_*)
#   3. $B/libsheafalloc_malloc.so (where built) exports the sa_* API, exactly the malloc family
#      of CONTRACT.md, glibc's statistics functions (mallinfo, mallinfo2, malloc_stats,
#      malloc_info) and C++'s global operator new / delete, and libsheafalloc.so none of those
# Run from the repository root (tests/run.sh does). Prints cmocka-style summary lines so that
# tests/run.sh counts its checks like any other test.
B=${B:-build}
CC=${CC:-cc}
passed=0
failed=0
failed_names=""
ok() { echo "[       OK ] $1"; passed=$((passed + 1)); }
ko() { echo "[  FAILED  ] $1"; failed=$((failed + 1)); failed_names="$failed_names $1"; }

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

echo "[ RUN      ] exported_symbols_are_declared"
if [ ! -f "$B/libsheafalloc.so" ]; then
	echo "no $B/libsheafalloc.so"
	ko exported_symbols_are_declared
else
	# Names declared as functions (or objects) in the public header, after preprocessing:
	# comments gone, included sub-headers expanded.
	$CC -E -P -Iinclude -x c include/sheafalloc.h >"$tmp/hdr.i" 2>"$tmp/cpp.err" || cat "$tmp/cpp.err"
	grep -oE '\bsa_[A-Za-z0-9_]+[[:space:]]*\(' "$tmp/hdr.i" | sed 's/[[:space:]]*($//' | sort -u >"$tmp/declared"
	grep -E '^[[:space:]]*extern[^(]*\bsa_[A-Za-z0-9_]+[[:space:]]*(\[[^]]*\])?;' "$tmp/hdr.i" |
		grep -oE '\bsa_[A-Za-z0-9_]+[[:space:]]*(\[[^]]*\])?;' | sed 's/[[:space:]]*\[.*//; s/;$//' >>"$tmp/declared"
	sort -u -o "$tmp/declared" "$tmp/declared"
	nm -D --defined-only "$B/libsheafalloc.so" | awk 'NF >= 3 { print $3 }' | sed 's/@.*//' | sort -u >"$tmp/exported"
	bad=$(comm -23 "$tmp/exported" "$tmp/declared")
	if [ ! -s "$tmp/exported" ]; then
		echo "libsheafalloc.so exports nothing"
		ko exported_symbols_are_declared
	elif [ -n "$bad" ]; then
		echo "exported by $B/libsheafalloc.so but not declared in include/sheafalloc.h:"
		echo "$bad" | sed 's/^/    /'
		ko exported_symbols_are_declared
	else
		echo "$(wc -l <"$tmp/exported") exported symbols, all declared sa_* names"
		ok exported_symbols_are_declared
	fi
fi

echo "[ RUN      ] static_library_namespace"
if [ ! -f "$B/libsheafalloc.a" ]; then
	echo "no $B/libsheafalloc.a"
	ko static_library_namespace
else
	nm -g --defined-only "$B/libsheafalloc.a" 2>/dev/null | awk 'NF >= 3 { print $3 }' | sort -u >"$tmp/globals"
	bad=$(grep -vE '^sa_' "$tmp/globals")
	if [ -n "$bad" ]; then
		echo "global symbols of $B/libsheafalloc.a outside the sa_ namespace:"
		echo "$bad" | sed 's/^/    /'
		ko static_library_namespace
	else
		ok static_library_namespace
	fi
fi

echo "[ RUN      ] malloc_library_exports"
# The malloc replacement exports the sa_* API and exactly the standard names CONTRACT.md lists.
if [ ! -f "$B/libsheafalloc_malloc.so" ]; then
	echo "no $B/libsheafalloc_malloc.so (not built in this tree): nothing to check"
	ok malloc_library_exports
else
	std="malloc free calloc realloc reallocarray aligned_alloc posix_memalign memalign valloc pvalloc malloc_usable_size malloc_trim mallinfo mallinfo2 malloc_stats malloc_info"
	# C++'s global operator new and delete (alloc/override/cxx.c)
	std="$std _Znwm _Znam _ZnwmSt11align_val_t _ZnamSt11align_val_t _ZdlPv _ZdaPv _ZdlPvm _ZdaPvm"
	std="$std _ZdlPvRKSt9nothrow_t _ZdaPvRKSt9nothrow_t _ZdlPvSt11align_val_t _ZdaPvSt11align_val_t"
	std="$std _ZdlPvmSt11align_val_t _ZdaPvmSt11align_val_t _ZdlPvSt11align_val_tRKSt9nothrow_t _ZdaPvSt11align_val_tRKSt9nothrow_t"
	{ cat "$tmp/declared"; for n in $std; do echo "$n"; done; } | sort -u >"$tmp/allowed_malloc"
	nm -D --defined-only "$B/libsheafalloc_malloc.so" | awk 'NF >= 3 { print $3 }' | sed 's/@.*//' | sort -u >"$tmp/exported_malloc"
	bad=$(comm -23 "$tmp/exported_malloc" "$tmp/allowed_malloc")
	missing=""
	for n in $std; do grep -qx "$n" "$tmp/exported_malloc" || missing="$missing $n"; done
	if [ -n "$bad" ] || [ -n "$missing" ]; then
		[ -n "$bad" ] && { echo "exported by $B/libsheafalloc_malloc.so beyond the contract:"; echo "$bad" | sed 's/^/    /'; }
		[ -n "$missing" ] && echo "standard names missing from $B/libsheafalloc_malloc.so:$missing"
		ko malloc_library_exports
	else
		ok malloc_library_exports
	fi
	# and the API library must not define them
	if nm -D --defined-only "$B/libsheafalloc.so" | awk 'NF >= 3 { print $3 }' | grep -qxE 'malloc|free|calloc|realloc'; then
		echo "$B/libsheafalloc.so defines malloc-family names"
		ko api_library_has_no_malloc
	fi
fi

echo "[==========] $((passed + failed)) test(s) run."
echo "[  PASSED  ] $passed test(s)."
if [ "$failed" -gt 0 ]; then
	echo "[  FAILED  ] $failed test(s), listed below:"
	for n in $failed_names; do echo "[  FAILED  ] $n"; done
	exit 1
fi
exit 0
