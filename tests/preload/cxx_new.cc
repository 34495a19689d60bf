// tests/preload/cxx_new.cc — C++'s global operator new and delete under the malloc replacement
// (alloc/override/cxx.c): they resolve to sheafalloc, every form allocates and frees, aligned
// forms align, new never returns NULL (bad_alloc, after the new-handler), nothrow forms return
// nullptr after calling the new-handler (libstdc++'s nothrow forms around ours). Run with LD_PRELOAD=$PWD/build/libsheafalloc_malloc.so (tests/run.sh does);
// SA_PRELOAD_ALLOW_OTHER=1 checks the expectations against libstdc++'s own operators.
// Prints cmocka-style summary lines, which tests/run.sh counts.
#include <dlfcn.h>
#include <malloc.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

static int passed, failed;

#define CHECK(cond, ...)                                                         \
	do {                                                                     \
		if (cond) {                                                      \
			passed++;                                                \
		} else {                                                         \
			failed++;                                                \
			std::printf("[  FAILED  ] %s:%d: ", __FILE__, __LINE__); \
			std::printf(__VA_ARGS__);                                \
			std::printf("\n");                                       \
		}                                                                \
	} while (0)

static bool ours(const void *fn)
{
	Dl_info di;
	return dladdr(fn, &di) && di.dli_fname && std::strstr(di.dli_fname, "libsheafalloc_malloc");
}

struct alignas(256) Big {
	char b[1000];
};

static int handler_calls;
static void *reserve;
static void release_reserve()
{
	handler_calls++;
	std::free(reserve); // frees memory, then the retry of new fails again (absurd size)
	reserve = nullptr;
	std::set_new_handler(nullptr); // the next failure throws
}

static int nothrow_handler_calls;
static void throwing_handler()
{
	nothrow_handler_calls++;
	throw std::bad_alloc();
}

int main()
{
	const bool allow_other = std::getenv("SA_PRELOAD_ALLOW_OTHER") != nullptr;
	void *(*op_new)(std::size_t) = &::operator new;
	void (*op_delete)(void *) noexcept = &::operator delete;
	if (!allow_other) {
		CHECK(ours(reinterpret_cast<void *>(op_new)), "operator new is not sheafalloc's");
		CHECK(ours(reinterpret_cast<void *>(op_delete)),
		      "operator delete is not sheafalloc's");
	}

	// every form, many sizes; usable size from malloc_usable_size (same allocator)
	std::vector<void *> keep;
	for (std::size_t n = 0; n < 70000; n = n * 3 / 2 + 1) {
		char *a = new char[n + 1];
		std::memset(a, 0x5a, n + 1);
		CHECK(malloc_usable_size(a) >= n + 1, "new char[%zu]: usable %zu", n + 1,
		      malloc_usable_size(a));
		keep.push_back(a);
		int *b = new int(static_cast<int>(n));
		CHECK(*b == static_cast<int>(n), "new int");
		delete b;
		void *c = ::operator new(n, std::nothrow);
		CHECK(c != nullptr, "nothrow new(%zu)", n);
		::operator delete(c, std::nothrow);
		void *d = ::operator new(n + 8);
		::operator delete(d, n + 8); // sized delete
	}
	for (void *p : keep)
		delete[] static_cast<char *>(p);

	// aligned new (C++17): the object and the array forms
	for (int i = 0; i < 200; i++) {
		Big *b = new Big;
		CHECK((reinterpret_cast<std::uintptr_t>(b) & 255) == 0,
		      "new Big: %p not 256-aligned", static_cast<void *>(b));
		std::memset(b, 1, sizeof(*b));
		delete b;
		Big *v = new Big[3];
		CHECK((reinterpret_cast<std::uintptr_t>(v) & 255) == 0, "new Big[3] misaligned");
		delete[] v;
		void *w = ::operator new(100, std::align_val_t(4096), std::nothrow);
		CHECK(w && (reinterpret_cast<std::uintptr_t>(w) & 4095) == 0,
		      "nothrow aligned new");
		::operator delete(w, std::align_val_t(4096));
	}

	// failure: nothrow gives nullptr; throwing forms throw bad_alloc after the handler
	const std::size_t absurd = SIZE_MAX / 2;
	CHECK(::operator new(absurd, std::nothrow) == nullptr, "nothrow new(absurd) != nullptr");
	CHECK(::operator new[](absurd, std::align_val_t(64), std::nothrow) == nullptr,
	      "nothrow aligned new[](absurd) != nullptr");
	bool threw = false;
	try {
		void *volatile p = ::operator new(absurd);
		(void)p;
	} catch (const std::bad_alloc &) {
		threw = true;
	}
	CHECK(threw, "new(absurd) did not throw bad_alloc");
	reserve = std::malloc(1000);
	std::set_new_handler(release_reserve);
	threw = false;
	try {
		void *volatile p = ::operator new[](absurd, std::align_val_t(128));
		(void)p;
	} catch (const std::bad_alloc &) {
		threw = true;
	}
	CHECK(threw && handler_calls == 1, "aligned new[](absurd): threw %d, handler calls %d",
	      threw, handler_calls);

	// nothrow new calls the new-handler too; one that throws bad_alloc makes it return nullptr
	nothrow_handler_calls = 0;
	std::set_new_handler(throwing_handler);
	void *nt = ::operator new(absurd, std::nothrow);
	CHECK(nt == nullptr && nothrow_handler_calls == 1,
	      "nothrow new(absurd) = %p with a throwing handler called %d times (expected once)",
	      nt, nothrow_handler_calls);
	nt = ::operator new[](absurd, std::align_val_t(64), std::nothrow);
	CHECK(nt == nullptr && nothrow_handler_calls == 2,
	      "nothrow aligned new[](absurd): handler calls %d (expected 2)",
	      nothrow_handler_calls);
	std::set_new_handler(nullptr);

	std::printf("[==========] cxx_new: %d check(s) run.\n", passed + failed);
	if (failed) {
		std::printf("[  FAILED  ] %d test(s)\n", 1);
		return 1;
	}
	std::printf("[  PASSED  ] 1 test(s).\n");
	return 0;
}
