# sheafalloc — build, test, bench. `make`, `make test`, `make bench`, `make check-long`.
# Variables: SAN=address|thread (sanitizer build of libraries and tests into build-$(SAN)/).

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
TEST_HDRS := $(wildcard tests/*.h)

.PHONY: all lib deps test check-long bench format format-check tidy clean install
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

deps:
	@scripts/deps.sh build

test:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory lib tests-build
	@B=$(B) tests/run.sh quick

tests-build: $(TEST_BINS) $(PRELOAD_BINS)

# Long stress, both per-CPU modes, sanitizers, valgrind. Run by CI.
check-long:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory lib tests-build
	@B=$(B) tests/run.sh long

bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory lib
	@$(MAKE) --no-print-directory -C bench run B=$(abspath $(B))

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cc')

# CI: fails when a file is not formatted
format-check:
	@bad=$$(for f in $$(git ls-files '*.c' '*.h' '*.cc'); do clang-format "$$f" | cmp -s - "$$f" || echo "$$f"; done); \
	if [ -n "$$bad" ]; then echo "not clang-formatted (run make format):"; echo "$$bad"; exit 1; fi

tidy:
	cppcheck --quiet --enable=warning,performance,portability --inline-suppr --error-exitcode=1 \
		--suppress=legacyUninitvar:sheaf/arch/x86_64/rseq_pcs.h \
		-Iinclude -I. $(LIB_SRCS) $(wildcard alloc/override/*.c)

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
