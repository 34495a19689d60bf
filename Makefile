# sheafalloc — build, test, bench. `make`, `make test`, `make bench`, `make check-long`,
# `make bench-quick` (every benchmark once, briefly: CI's check that they run).
# Variables: SAN=address|thread (sanitizer build of libraries and tests into build-$(SAN)/).
# `make fuzz` / `make fuzz-run FUZZ_SECS=N`: the libFuzzer target tests/fuzz/fuzz_api.c (clang).

CC       ?= cc
PREFIX   ?= /usr/local
VERSION  := 0.1.0
CXX      ?= c++
OPT      ?= -O2
SAN      ?=
ifeq ($(SAN),)
B        := build
SANFLAGS :=
else
B        := build-$(SAN)
SANFLAGS := -fsanitize=$(SAN) -fno-omit-frame-pointer
ifeq ($(SAN),address)
SANFLAGS += -fsanitize=undefined -fno-sanitize-recover=undefined
endif
endif

WARN     := -Wall -Wextra -Werror
CFLAGS   := $(OPT) -g $(WARN) -std=gnu11 -fPIC -fvisibility=hidden -fno-semantic-interposition -pthread -Iinclude -I. $(SANFLAGS) $(EXTRA_CFLAGS)
LIBS     := -lhwloc -lurcu-memb -lurcu-common -lpthread
LDFLAGS  := $(SANFLAGS)

LIB_SRCS := $(wildcard alloc/*.c barn/*.c sheaf/*.c)
LIB_OBJS := $(patsubst %.c,$(B)/obj/%.o,$(LIB_SRCS))
HDRS     := $(wildcard include/*.h include/sheafalloc/*.h alloc/*.h barn/*.h sheaf/*.h sheaf/arch/*/*.h)

TEST_SRCS := $(wildcard tests/unit/*.c tests/integration/*.c tests/stress/*.c)
TEST_BINS := $(patsubst tests/%.c,$(B)/tests/%,$(TEST_SRCS))
# tests/preload: plain programs that use the standard malloc names; run.sh runs them with
# LD_PRELOAD=$(B)/libsheafalloc_malloc.so (and without, where the test compares the two)
PRELOAD_SRCS := $(wildcard tests/preload/*.c)
PRELOAD_CXX  := $(wildcard tests/preload/*.cc)
PRELOAD_BINS := $(if $(SAN),,$(patsubst tests/%.c,$(B)/tests/%,$(PRELOAD_SRCS)) \
		$(patsubst tests/%.cc,$(B)/tests/%,$(PRELOAD_CXX)))
TEST_HDRS := $(wildcard tests/*.h tests/*/*.h)

.PHONY: all lib deps test check-long bench bench-quick format format-check tidy lint clean install fuzz fuzz-run
all: lib
lib: $(B)/libsheafalloc.so $(B)/libsheafalloc.a $(if $(SAN),,$(B)/libsheafalloc_malloc.so) $(B)/sheafalloc.pc

$(B)/obj/%.o: %.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS) -c $< -o $@

$(B)/libsheafalloc.so: $(LIB_OBJS) exports.map
	@echo "  LD      $@"
	@$(CC) -shared -o $@ $(LIB_OBJS) $(LDFLAGS) -Wl,--version-script=exports.map -Wl,-z,nodelete -Wl,-Bsymbolic-functions \
		-Wl,-soname,libsheafalloc.so $(LIBS)

# The malloc replacement: the same objects plus the standard names. Not built with sanitizers
# (they replace malloc themselves).
OVERRIDE_OBJS := $(B)/obj/alloc/override/override.o $(B)/obj/alloc/override/cxx.o
$(B)/libsheafalloc_malloc.so: $(LIB_OBJS) $(OVERRIDE_OBJS) exports_malloc.map
	@echo "  LD      $@"
	@$(CC) -shared -o $@ $(LIB_OBJS) $(OVERRIDE_OBJS) $(LDFLAGS) \
		-Wl,--version-script=exports_malloc.map -Wl,-z,nodelete -Wl,-Bsymbolic-functions -Wl,-soname,libsheafalloc_malloc.so $(LIBS)

$(B)/sheafalloc.pc: sheafalloc.pc.in Makefile
	@sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $@

$(B)/libsheafalloc.a: $(LIB_OBJS)
	@rm -f $@
	@echo "  AR      $@"
	@ar rcs $@ $(LIB_OBJS)

# Tests link the static library: white-box tests may call internal (hidden) functions.
$(B)/tests/%: tests/%.c $(B)/libsheafalloc.a $(TEST_HDRS) $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(B)/libsheafalloc.a $(LDFLAGS) -lcmocka $(LIBS) -lm

$(B)/tests/preload/%: tests/preload/%.c $(TEST_HDRS)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(OPT) -g $(WARN) -std=gnu11 -pthread -Itests -o $@ $< -lcmocka -ldl -lm

$(B)/tests/preload/%: tests/preload/%.cc $(TEST_HDRS)
	@mkdir -p $(dir $@)
	@echo "  CXX     $<"
	@$(CXX) $(OPT) -g $(WARN) -std=gnu++17 -pthread -o $@ $< -ldl

# The libFuzzer target (tests/fuzz/fuzz_api.c): the library's sources compiled by clang with
# the fuzzer's coverage instrumentation and ASan+UBSan into build-fuzz/, linked into one program.
# `make fuzz-run` fuzzes for FUZZ_SECS seconds on build-fuzz/corpus, which starts as a copy of
# the seed corpus tests/fuzz/corpus (kept between runs; `make clean` drops it); a crash is saved
# as build-fuzz/crash-<sha1> (replay: build-fuzz/fuzz_api FILE, SA_FUZZ_TRACE=1 to see each
# call). FUZZ_ARGS: more libFuzzer flags (-jobs=N, -seed=N, ...). The RSS limit: a 5-minute run
# peaked at 0.3-0.5 GB (64 MiB of live blocks at most, the allocator's caches, ASan's
# quarantine); 2 GB leaves room and still stops a leak.
FUZZ_CC     ?= clang
FB          := build-fuzz
FUZZ_SECS   ?= 60
FUZZ_RSS_MB ?= 2048
FUZZ_ARGS   ?=
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := -O1 -g $(WARN) -std=gnu11 -pthread -Iinclude -I. $(FUZZ_SAN)
FUZZ_OBJS   := $(patsubst %.c,$(FB)/obj/%.o,$(LIB_SRCS))

$(FB)/obj/%.o: %.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	@echo "  CC(fuzz) $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fPIC -fvisibility=hidden -fsanitize=fuzzer-no-link -c $< -o $@

$(FB)/libsheafalloc.a: $(FUZZ_OBJS)
	@rm -f $@
	@ar rcs $@ $(FUZZ_OBJS)

$(FB)/fuzz_api: tests/fuzz/fuzz_api.c $(FB)/libsheafalloc.a include/sheafalloc.h
	@echo "  LD(fuzz) $@"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FB)/libsheafalloc.a $(LIBS)

fuzz: $(FB)/fuzz_api

fuzz-run: fuzz
	@mkdir -p $(FB)/corpus
	@cp -n tests/fuzz/corpus/* $(FB)/corpus/
	@echo "== fuzz_api for $(FUZZ_SECS)s on $(FB)/corpus ($$(ls $(FB)/corpus | wc -l) inputs)"
	$(FB)/fuzz_api -max_total_time=$(FUZZ_SECS) -print_final_stats=1 -rss_limit_mb=$(FUZZ_RSS_MB) \
		-max_len=4096 -timeout=60 -artifact_prefix=$(FB)/ $(FUZZ_ARGS) $(FB)/corpus
	@echo "== corpus now $$(ls $(FB)/corpus | wc -l) inputs"

deps:
	@scripts/deps.sh build

test:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory lib tests-build
	@B=$(B) tests/run.sh quick

tests-build: $(TEST_BINS) $(PRELOAD_BINS)

# Long stress, both per-CPU modes, sanitizers, valgrind, the fuzzer. Run by CI. Without clang's
# fuzzer runtime (deps.sh fuzz, as non-root) the fuzzer is skipped with a note.
check-long:
	@scripts/deps.sh test
	@scripts/deps.sh fuzz || echo "sheafalloc: no clang/libFuzzer: tests/run.sh will skip the fuzzer"
	@$(MAKE) --no-print-directory lib tests-build
	@B=$(B) tests/run.sh long

# Every part of bench/Makefile (BENCH_PARTS), tables in bench/results, then build/bench/REPORT.md
# with the plots (bench/README.md).
bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory lib
	@$(MAKE) --no-print-directory -C bench run B=$(abspath $(B))

# Every benchmark row once, briefly (results under build/bench/quick, not bench/results): fails
# when a sheafalloc row (or its self-check), a program run under it or rss_bench under it fails.
# Run by CI; it measures nothing.
bench-quick:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory lib
	@$(MAKE) --no-print-directory -C bench run B=$(abspath $(B)) BENCH_QUICK=1

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cc')

# CI: fails when a file is not formatted
format-check:
	@bad=$$(for f in $$(git ls-files '*.c' '*.h' '*.cc'); do clang-format "$$f" | cmp -s - "$$f" || echo "$$f"; done); \
	if [ -n "$$bad" ]; then echo "not clang-formatted (run make format):"; echo "$$bad"; exit 1; fi

# Static analysis of the library's sources: cppcheck, then clang-tidy (checks in .clang-tidy);
# any finding fails. `make lint` (CI) adds format-check and installs the tools first.
TIDY_SRCS := $(LIB_SRCS) $(wildcard alloc/override/*.c)
tidy:
	cppcheck --quiet --enable=warning,performance,portability --inline-suppr --error-exitcode=1 \
		--suppress=legacyUninitvar:sheaf/arch/x86_64/rseq_pcs.h \
		-Iinclude -I. $(TIDY_SRCS)
	clang-tidy --quiet $(TIDY_SRCS) -- -std=gnu11 -Iinclude -I. -pthread

lint:
	@scripts/deps.sh lint
	@$(MAKE) --no-print-directory format-check tidy

install: lib
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig \
		$(DESTDIR)$(PREFIX)/share/doc/sheafalloc
	install -m 644 include/sheafalloc.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 $(B)/libsheafalloc.so $(B)/libsheafalloc_malloc.so $(DESTDIR)$(PREFIX)/lib/
	install -m 644 $(B)/libsheafalloc.a $(DESTDIR)$(PREFIX)/lib/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' sheafalloc.pc.in \
		> $(DESTDIR)$(PREFIX)/lib/pkgconfig/sheafalloc.pc
	install -m 644 README.md docs/*.md $(DESTDIR)$(PREFIX)/share/doc/sheafalloc/

clean:
	rm -rf build build-*
