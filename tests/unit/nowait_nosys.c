/*
 * tests/unit/nowait_nosys.c — SA_NOWAIT "never blocks and makes no system call" (CONTRACT.md)
 * checked with a seccomp filter, and the sheaf guarantee "the next n sa_sheaf_alloc succeed
 * without a lock wait, a system call or a failure, inside a SA_NOWAIT scope and over the memory
 * limit too".
 *
 * Every scenario runs in a forked child pinned to one CPU. The child prepares (warms the caches
 * up, prefills sheaves, allocates the blocks it will free later), opens the scope, and only then
 * installs a seccomp filter that kills the process on every system call that maps, unmaps,
 * advises, protects, locks or unlocks memory, on membarrier, futex (a lock wait), sched_yield
 * and the sleeps. What the child does afterwards must either succeed (checked: alignment, the
 * right cache, writable, zeroed where asked) or return NULL; the child must exit 0. The parent
 * reports the step the child was in when it died, and runs a child killed by the filter once
 * more with the filter trapping instead, to name the system call and its backtrace. Under
 * valgrind and the sanitizers (their runtimes make system calls of their own) the filtered
 * tests are skipped. In the multi-threaded variants only the NOWAIT thread is filtered.
 *
 *   test_nosys_caches            sa_cache_alloc/free, SA_ZERO, bulk, alloc_node, frees of objects
 *                                allocated before the scope, in caches of several geometries
 *   test_nosys_malloc            sa_malloc/sa_calloc/sa_realloc/sa_free of every size class
 *                                (16 B .. 32 KiB), large blocks (64 KiB .. 2 MiB), huge ones
 *                                (NULL under NOWAIT), frees of small, large and huge blocks
 *                                allocated before the scope (huge ones deferred, not unmapped)
 *   test_nosys_free_aligned_huge a block of sa_aligned_alloc(4 MiB, 4 MiB) allocated before the
 *                                scope, freed inside it: deferred, not unmapped
 *   test_nosys_sheaf_{nowait,nofs,noreclaim,pin,nowait_pin}
 *                                sheaves prefilled before the scope (normal and oversize), a
 *                                memory limit set below what is held, then the scope: every
 *                                prefilled object comes out of sa_sheaf_alloc; under NOWAIT the
 *                                objects are freed and the sheaves returned too
 *   test_nosys_node_barn_locked  another thread holds the cache's node lock and barn lock; the
 *                                NOWAIT thread (filtered itself) allocates and frees many objects
 *   test_nosys_all_locks         another thread holds every allocator lock it can reach (node and
 *                                barn locks of the test cache and of every malloc class, the
 *                                metadata, page, huge-cache and aligned-block locks); the same
 *                                work plus malloc, and frees of large blocks
 *   test_nosys_large_free_stash  the page lock is held; the NOWAIT thread frees large blocks
 *                                allocated before the scope (its CPU's run stash fills up)
 *   test_nosys_untake_at_limit   at the limit, another thread keeps taking the page lock; the
 *                                NOWAIT thread's 256 KiB allocations (which take clean units, then
 *                                find the limit and put them back) must never wait for that lock
 *                                (the filter here kills futex waits only: an unlock that wakes the
 *                                queued thread is not a wait)
 *   test_locked_then_restore     (no filter) node and barn locks held while a NOWAIT scope
 *                                allocates and frees; after the locks go and the scope ends,
 *                                deferred frees have run (deferred_now 0) and the cache's
 *                                statistics are consistent: nothing lost, nothing counted twice
 *   test_all_locked_then_restore (no filter) the same with every reachable lock held, which
 *                                makes object frees go to the deferred list (deferred_frees grows)
 *   test_deferred_free_counted_once  the smallest case of that: 12 objects freed under NOWAIT
 *                                with the node, barn and metadata locks held; afterwards the
 *                                cache counts 12 allocations and 12 frees
 *   test_pending_slab_counted    an SA_HIGH allocation under NOWAIT with the node lock busy makes
 *                                a private slab left pending; once the lock is free and the scope
 *                                ended, sa_cache_stats counts that slab and its objects
 *
 * Static locks of the library (page lock, metadata lock, ...) are found by name in the test
 * binary's own symbol table (it links the static library, not stripped): white box on purpose.
 */
#include "sa_test.h"

#include <dlfcn.h>
#include <elf.h>
#include <execinfo.h>
#include <link.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>

#define GUARD_S	      120 /* a child still running after this is hung (not slow) */
#define CHILD_FAILED  42
#define CHILD_TRAPPED 43

/* ------------------------------------------------------------------ child plumbing --------- */
struct shared {
	const char *volatile step; /* a string literal: the same address in the parent */
	volatile int line;
	volatile int filtered;
	volatile int trap;	 /* diagnosis run: trap instead of kill, record the call */
	volatile int trapped_nr; /* the forbidden call (trap mode) */
	volatile int nframes;	 /* its backtrace (trap mode) */
	void *volatile frames[24];
};
static struct shared *sh;

#define STEP(s)                       \
	do {                          \
		sh->step = (s);       \
		sh->line = __LINE__;  \
		__sync_synchronize(); \
	} while (0)

/* A failed check in a child: one write(2) (no stdio, no malloc), then exit. */
static void __attribute__((noreturn, format(printf, 2, 3)))
child_fail(int line, const char *fmt, ...)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "child check failed at line %d (step '%s'): ", line,
			 sh && sh->step ? sh->step : "?");
	va_list ap;
	va_start(ap, fmt);
	if (n > 0 && (size_t)n < sizeof(buf))
		n += vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	ssize_t w = write(2, buf, (size_t)n);
	(void)w;
	_exit(CHILD_FAILED);
}
#define CHK(cond, ...)                                     \
	do {                                               \
		if (!(cond))                               \
			child_fail(__LINE__, __VA_ARGS__); \
	} while (0)

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void skip_if_unsupported(void)
{
	if (running_on_valgrind() || SA_TEST_SANITIZER) {
		print_message("under valgrind or a sanitizer (their runtimes make system calls): "
			      "skipped\n");
		skip();
	}
}

static const char *func_name(const void *addr, char *buf, size_t len);
static const char *syscall_name(int nr);

/* One run of fn in a forked child, stderr into text; returns the wait status, -1 if hung. */
static int one_run(void (*fn)(void), int trap, char *text, size_t tlen)
{
	memset((void *)sh, 0, sizeof(*sh));
	sh->trap = trap;
	FILE *err = tmpfile();
	assert_non_null(err);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(fileno(err), 2);
		fn();
		_exit(0);
	}
	int st = 0;
	pid_t r;
	double deadline = now_s() + GUARD_S;
	while ((r = waitpid(pid, &st, WNOHANG)) == 0 && now_s() < deadline)
		usleep(10000);
	if (r == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		st = -1;
	}
	fflush(err);
	long len = ftell(err);
	text[0] = 0;
	if (len > 0) {
		rewind(err);
		size_t got = fread(text, 1, tlen - 1, err);
		text[got] = 0;
	}
	fclose(err);
	return st;
}

/*
 * Run fn in a forked child (stderr captured); assert that it exits 0. On a failure the child's
 * stderr and the step it was in are printed; a child killed by the filter is run once more with
 * the filter trapping instead, to name the system call and where it was made.
 */
static void run_child(void (*fn)(void))
{
	sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(sh != MAP_FAILED);
	static char text[4096];
	int st = one_run(fn, 0, text, sizeof(text));
	int ok = st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
	if (!ok) {
		if (st == -1)
			print_error("the child still ran after %d s (a wait it must not make?)\n",
				    GUARD_S);
		else if (WIFSIGNALED(st))
			print_error("the child was killed by signal %d%s\n", WTERMSIG(st),
				    WTERMSIG(st) == SIGSYS ? " (a forbidden system call)" : "");
		else
			print_error("the child exited with status %d\n", WEXITSTATUS(st));
		print_error("  it was in step '%s' (line %d), seccomp filter %s\n",
			    sh->step ? sh->step : "(none)", sh->line,
			    sh->filtered ? "installed" : "not installed yet");
		if (text[0])
			print_error("  its stderr:\n%s\n", text);
	}
	if (!ok && st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS) {
		int st2 = one_run(fn, 1, text, sizeof(text));
		if (st2 != -1 && WIFEXITED(st2) && WEXITSTATUS(st2) == CHILD_TRAPPED) {
			print_error("  diagnosis run: system call %d (%s) in step '%s', from:\n",
				    sh->trapped_nr, syscall_name(sh->trapped_nr),
				    sh->step ? sh->step : "(none)");
			for (int i = 0; i < sh->nframes && i < 24; i++) {
				char b[128];
				print_error("    #%d %p %s\n", i, sh->frames[i],
					    func_name(sh->frames[i], b, sizeof(b)));
			}
		}
	}
	munmap((void *)sh, 4096);
	sh = NULL;
	assert_true(ok);
}

static int the_cpu = -1;
static cpu_set_t all_cpus;

static void pin_child(void)
{
	allowed_cpus(&all_cpus);
	the_cpu = first_allowed_cpu();
	CHK(the_cpu >= 0 && pin_to_cpu(the_cpu) == 0, "cannot pin to a CPU");
}

/* ------------------------------------------------------------------ seccomp ---------------- */
#ifndef SECCOMP_RET_KILL_PROCESS
#define SECCOMP_RET_KILL_PROCESS 0x80000000U
#endif
#if defined(__x86_64__)
#define THIS_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define THIS_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

static const int forbidden[] = {
#ifdef __NR_mmap
	__NR_mmap,
#endif
	__NR_munmap,	  __NR_madvise,	   __NR_mprotect,	 __NR_mlock,	  __NR_munlock,
	__NR_mlockall,	  __NR_munlockall, __NR_mremap,		 __NR_membarrier, __NR_futex,
	__NR_sched_yield, __NR_nanosleep,  __NR_clock_nanosleep,
#ifdef __NR_mlock2
	__NR_mlock2,
#endif
#ifdef __NR_futex_waitv
	__NR_futex_waitv,
#endif
};
#define NFORBIDDEN (sizeof(forbidden) / sizeof(forbidden[0]))

static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	sh->trapped_nr = si->si_syscall;
	void *f[24];
	int n = backtrace(f, 24); /* loaded before the filter: no allocation here */
	for (int i = 0; i < n; i++)
		sh->frames[i] = f[i];
	sh->nframes = n;
	_exit(CHILD_TRAPPED);
}

/*
 * Kill the process on any forbidden call of the calling thread (and of threads it creates
 * later); with tsync, of every thread. With futex_waits_only, a futex call is forbidden only when
 * it waits (FUTEX_WAIT, _BITSET, LOCK_PI, ...): the wake an unlock makes when another thread
 * queued on a mutex the NOWAIT thread got with a try-lock is not a wait.
 */
static void install_filter_how(int tsync, int futex_waits_only)
{
	struct sock_filter f[NFORBIDDEN + 24];
	unsigned k = 0;
	unsigned deny = SECCOMP_RET_KILL_PROCESS;
	if (sh->trap) { /* the diagnosis run: name the call and where it came from */
		void *tmp[4];
		backtrace(tmp, 4); /* loads the unwinder now */
		struct sigaction sa = {.sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO};
		sigaction(SIGSYS, &sa, NULL);
		deny = SECCOMP_RET_TRAP;
	}
	static const unsigned futex_waits[] = {0 /* WAIT */, 6 /* LOCK_PI */, 9 /* WAIT_BITSET */,
					       11 /* WAIT_REQUEUE_PI */, 13 /* LOCK_PI2 */};
	const unsigned nwaits = sizeof(futex_waits) / sizeof(futex_waits[0]);
	unsigned nlist = 0;
	int list[NFORBIDDEN];
	for (unsigned i = 0; i < NFORBIDDEN; i++)
		if (!(futex_waits_only && forbidden[i] == __NR_futex))
			list[nlist++] = forbidden[i];
	/* layout: arch check, nr, [x32], [futex -> FUTEX], list..., ALLOW, DENY, FUTEX: op... */
	f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
					      offsetof(struct seccomp_data, arch));
	f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, THIS_AUDIT_ARCH, 1, 0);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, deny);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
					      offsetof(struct seccomp_data, nr));
	unsigned first_list = k + (futex_waits_only ? 1 : 0); /* k: the next instruction */
#ifdef __x86_64__
	first_list++;
#endif
	unsigned allow_at = first_list + nlist, deny_at = allow_at + 1, futex_at = deny_at + 1;
#ifdef __x86_64__
	/* the x32 ABI numbers: not ours, deny */
	f[k] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u,
					    (unsigned char)(deny_at - k - 1), 0);
	k++;
#endif
	if (futex_waits_only) {
		f[k] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_futex,
						    (unsigned char)(futex_at - k - 1), 0);
		k++;
	}
	CHK(k == first_list, "filter layout");
	for (unsigned i = 0; i < nlist; i++, k++)
		f[k] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)list[i],
						    (unsigned char)(deny_at - k - 1), 0);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, deny);
	if (futex_waits_only) {
		f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
						      offsetof(struct seccomp_data, args[1]));
		f[k++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x7f);
		for (unsigned i = 0; i < nwaits; i++, k++) /* forward only: to the deny below */
			f[k] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
							    futex_waits[i],
							    (unsigned char)(nwaits - i), 0);
		f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
		f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, deny);
	}
	CHK(k <= sizeof(f) / sizeof(f[0]), "filter too long");
	struct sock_fprog prog = {.len = (unsigned short)k, .filter = f};
	CHK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "PR_SET_NO_NEW_PRIVS: %s",
	    strerror(errno));
	CHK(syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, tsync ? SECCOMP_FILTER_FLAG_TSYNC : 0,
		    &prog) == 0,
	    "seccomp: %s", strerror(errno));
	sh->filtered = 1;
}

static void install_filter(int tsync)
{
	install_filter_how(tsync, 0);
}

/* ------------------------------------------------------------------ static symbols --------- */
static int bias_cb(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	*(uintptr_t *)data = info->dlpi_addr; /* the first object is the program */
	return 1;
}

static char *img;
static size_t img_len;

/* This program's file, mapped once (before any filter). */
static const Elf64_Ehdr *self_image(void)
{
	if (!img) {
		int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return NULL;
		struct stat stt;
		if (fstat(fd, &stt) != 0) {
			close(fd);
			return NULL;
		}
		img_len = (size_t)stt.st_size;
		img = mmap(NULL, img_len, PROT_READ, MAP_PRIVATE, fd, 0);
		close(fd);
		if (img == MAP_FAILED) {
			img = NULL;
			return NULL;
		}
	}
	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)img;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64)
		return NULL;
	return eh;
}

/* Calls fn for every symbol of the program's symbol table, with the load bias. */
static void each_symbol(void (*fn)(const Elf64_Sym *, const char *, uintptr_t, void *), void *arg)
{
	const Elf64_Ehdr *eh = self_image();
	if (!eh)
		return;
	const Elf64_Shdr *shdr = (const Elf64_Shdr *)(img + eh->e_shoff);
	uintptr_t bias = 0;
	dl_iterate_phdr(bias_cb, &bias);
	for (unsigned i = 0; i < eh->e_shnum; i++) {
		if (shdr[i].sh_type != SHT_SYMTAB)
			continue;
		const Elf64_Sym *sym = (const Elf64_Sym *)(img + shdr[i].sh_offset);
		const char *str = img + shdr[shdr[i].sh_link].sh_offset;
		size_t n = shdr[i].sh_size / sizeof(Elf64_Sym);
		for (size_t k = 0; k < n; k++)
			fn(&sym[k], str + sym[k].st_name, bias, arg);
	}
}

struct sym_query {
	const char *name;
	size_t size;
	void *found;
	int nfound;
	uintptr_t addr; /* func_name */
	uintptr_t best;
	const char *best_name;
};

static void match_object(const Elf64_Sym *sym, const char *name, uintptr_t bias, void *arg)
{
	struct sym_query *q = arg;
	if (ELF64_ST_TYPE(sym->st_info) != STT_OBJECT || strcmp(name, q->name) != 0 ||
	    (q->size && sym->st_size != q->size))
		return;
	q->found = (void *)(bias + sym->st_value);
	q->nfound++;
}

/* The address of the local data symbol `name` of this program (of size `size` if not 0), or
 * NULL when there is not exactly one. */
static void *local_symbol(const char *name, size_t size)
{
	struct sym_query q = {.name = name, .size = size};
	each_symbol(match_object, &q);
	return q.nfound == 1 ? q.found : NULL;
}

static void match_func(const Elf64_Sym *sym, const char *name, uintptr_t bias, void *arg)
{
	struct sym_query *q = arg;
	uintptr_t a = bias + sym->st_value;
	if (ELF64_ST_TYPE(sym->st_info) != STT_FUNC || a > q->addr ||
	    (sym->st_size && q->addr >= a + sym->st_size) || a < q->best)
		return;
	q->best = a;
	q->best_name = name;
}

/* "function+0xoff" for a code address of this program (local functions too). */
static const char *func_name(const void *addr, char *buf, size_t len)
{
	Dl_info di;
	if (dladdr(addr, &di) && di.dli_fbase) {
		uintptr_t bias = 0;
		dl_iterate_phdr(bias_cb, &bias);
		if ((uintptr_t)di.dli_fbase != bias) { /* another object: its dynamic symbols */
			snprintf(buf, len, "%s+%#lx (%s)", di.dli_sname ? di.dli_sname : "?",
				 (unsigned long)((const char *)addr -
						 (const char *)(di.dli_saddr ? di.dli_saddr
									     : di.dli_fbase)),
				 di.dli_fname ? di.dli_fname : "?");
			return buf;
		}
	}
	struct sym_query q = {.addr = (uintptr_t)addr};
	each_symbol(match_func, &q);
	if (q.best_name)
		snprintf(buf, len, "%s+%#lx", q.best_name, (unsigned long)(q.addr - q.best));
	else
		snprintf(buf, len, "?");
	return buf;
}

static const char *syscall_name(int nr)
{
	static const struct {
		int nr;
		const char *name;
	} names[] = {
#ifdef __NR_mmap
		{__NR_mmap, "mmap"},
#endif
		{__NR_munmap, "munmap"},
		{__NR_madvise, "madvise"},
		{__NR_mprotect, "mprotect"},
		{__NR_mlock, "mlock"},
		{__NR_munlock, "munlock"},
		{__NR_mlockall, "mlockall"},
		{__NR_munlockall, "munlockall"},
		{__NR_mremap, "mremap"},
		{__NR_membarrier, "membarrier"},
		{__NR_futex, "futex (a lock wait)"},
		{__NR_sched_yield, "sched_yield"},
		{__NR_nanosleep, "nanosleep"},
		{__NR_clock_nanosleep, "clock_nanosleep"},
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i].nr == nr)
			return names[i].name;
	return "?";
}

/* ------------------------------------------------------------------ object checks ---------- */
static void chk_object(struct sa_cache *c, void *p, size_t align, int zero, int line)
{
	if (!p)
		return;
	if ((uintptr_t)p % align)
		child_fail(line, "object %p of '%s' not aligned to %zu", p, sa_cache_name(c),
			   align);
	struct sa_slab *s = sa_slab_of(p);
	if (!s || !s->head || (s->cache != c && (!s->cache || s->cache->parent != c)))
		child_fail(line, "%p is not an object of '%s'", p, sa_cache_name(c));
	size_t off = (size_t)((char *)p - sa_slab_base(s->head));
	if (off % s->cache->stride || off / s->cache->stride >= s->head->nobjs)
		child_fail(line, "%p is not at an object boundary of '%s'", p, sa_cache_name(c));
	size_t n = c->size;
	if (zero)
		for (size_t i = 0; i < n; i++)
			if (((unsigned char *)p)[i])
				child_fail(line, "SA_ZERO object %p of '%s': byte %zu is %d", p,
					   sa_cache_name(c), i, ((unsigned char *)p)[i]);
	memset(p, 0xa5, n);
}

static void chk_block(void *p, size_t size, int zero, int line)
{
	if (!p)
		return;
	if ((uintptr_t)p % 16)
		child_fail(line, "block %p of %zu bytes not 16-byte aligned", p, size);
	if (zero)
		for (size_t i = 0; i < size; i++)
			if (((unsigned char *)p)[i])
				child_fail(line, "calloc block %p of %zu bytes: byte %zu is %d", p,
					   size, i, ((unsigned char *)p)[i]);
	if (sa_malloc_usable_size(p) < size)
		child_fail(line, "block %p: usable size %zu < %zu", p, sa_malloc_usable_size(p),
			   size);
	memset(p, 0x5a, size);
}

static uint64_t deferred_frees(void)
{
	struct sa_scope_stats g;
	sa_scope_stats(&g);
	return g.deferred_frees;
}

/* ------------------------------------------------------------------ caches ----------------- */
#define NCACHES 5
static struct sa_cache *cs[NCACHES];
static size_t cs_align[NCACHES];

static void ctor_fill(void *p)
{
	memset(p, 0x11, 24);
}

static void make_caches(unsigned small_capacity)
{
	static const size_t sizes[NCACHES] = {8, 64, 1000, 8192, 24};
	for (int i = 0; i < NCACHES; i++) {
		struct sa_cache_args a = {0};
		cs_align[i] = 8;
		if (i == 1)
			a.sheaf_capacity = small_capacity;
		if (i == 2) {
			a.align = 256;
			cs_align[i] = 256;
		}
		if (i == 3)
			a.flags = SA_CACHE_HWCACHE_ALIGN;
		if (i == 4)
			a.ctor = ctor_fill;
		char name[32];
		snprintf(name, sizeof(name), "nosys-%zu", sizes[i]);
		cs[i] = sa_cache_create(name, sizes[i], &a);
		CHK(cs[i], "sa_cache_create %s", name);
		if (i == 3)
			cs_align[i] = 64;
	}
}

/* Allocate and free 3 sheaves' worth of each cache: sheaves, barns and partial slabs exist. */
static void warm_caches(void)
{
	static void *tmp[4096];
	for (int i = 0; i < NCACHES; i++) {
		unsigned n = 3 * sa_cache_sheaf_capacity(cs[i]) + 7;
		if (n > 4096)
			n = 4096;
		for (unsigned k = 0; k < n; k++)
			CHK(tmp[k] = sa_cache_alloc(cs[i], 0), "warm-up allocation");
		for (unsigned k = 0; k < n; k++)
			sa_cache_free(cs[i], tmp[k]);
	}
}

#define PRE 64
static void *pre[NCACHES][PRE];

/* The NOWAIT work on the caches (the calling thread's scope must hold NOWAIT). Returns the
 * objects served. */
static unsigned long cache_work(int rounds, unsigned per_round)
{
	static void *objs[3000];
	unsigned long served = 0;
	if (per_round > 3000)
		per_round = 3000;
	for (int r = 0; r < rounds; r++) {
		for (int i = 0; i < NCACHES; i++) {
			struct sa_cache *c = cs[i];
			STEP("sa_cache_alloc under NOWAIT");
			unsigned n = 0;
			for (unsigned k = 0; k < per_round; k++) {
				sa_flags_t f = (k % 3 == 0 ? SA_NOWAIT : 0) |
					       (k % 5 == 0 ? SA_ZERO : 0) | SA_NOWARN;
				errno = 0;
				void *p = sa_cache_alloc(c, f);
				chk_object(c, p, cs_align[i], f & SA_ZERO, __LINE__);
				if (p)
					objs[n++] = p;
			}
			served += n;
			STEP("sa_cache_free / sa_free under NOWAIT");
			for (unsigned k = 0; k < n; k++) {
				if (k % 2)
					sa_cache_free(c, objs[k]);
				else
					sa_free(objs[k]);
			}
			STEP("sa_cache_alloc_bulk under NOWAIT");
			size_t b = sa_cache_alloc_bulk(c, SA_NOWARN, 64, objs);
			CHK(b == 0 || b == 64, "bulk returned %zu (all or nothing)", b);
			for (size_t k = 0; k < b; k++)
				chk_object(c, objs[k], cs_align[i], 0, __LINE__);
			served += b;
			STEP("sa_cache_free_bulk under NOWAIT");
			sa_cache_free_bulk(c, b, objs);
			STEP("sa_cache_alloc_node under NOWAIT");
			int node = sa_topo_cpu_node(the_cpu);
			void *p = sa_cache_alloc_node(c, SA_NOWARN, node);
			chk_object(c, p, cs_align[i], 0, __LINE__);
			if (p)
				CHK(sa_object_node(p) == node, "alloc_node gave node %d, not %d",
				    sa_object_node(p), node);
			void *q = sa_cache_alloc_node(c, SA_NOWARN, -1);
			chk_object(c, q, cs_align[i], 0, __LINE__);
			errno = 0;
			void *bad = sa_cache_alloc_node(c, SA_NOWARN, sa_numa_nodes());
			CHK(!bad, "alloc_node of a node that does not exist gave %p", bad);
			STEP("free alloc_node objects under NOWAIT");
			if (p)
				sa_cache_free(c, p);
			if (q)
				sa_free(q);
		}
	}
	return served;
}

static void nosys_caches_child(void)
{
	pin_child();
	make_caches(4);
	warm_caches();
	for (int i = 0; i < NCACHES; i++)
		for (int k = 0; k < PRE; k++)
			CHK(pre[i][k] = sa_cache_alloc(cs[i], 0), "pre-scope allocation");
	unsigned cookie = sa_memalloc_nowait_save();
	CHK(sa_current_flags(0) & SA_NOWAIT, "the scope does not hold SA_NOWAIT");
	install_filter(1);
	unsigned long served = cache_work(4, 1500);
	STEP("free objects allocated before the scope");
	for (int i = 0; i < NCACHES; i++)
		for (int k = 0; k < PRE; k++)
			sa_cache_free(cs[i], pre[i][k]);
	CHK(served > 0, "no NOWAIT allocation was served from warm caches");
	(void)cookie;
	STEP("exit");
	_exit(0);
}

static void test_nosys_caches(void **state)
{
	(void)state;
	skip_if_unsupported();
	run_child(nosys_caches_child);
}

/* ------------------------------------------------------------------ malloc ----------------- */
static const size_t class_sizes[] = {
	16,   32,   48,	  64,	80,    96,    112,   128,   160,   192,	  224,	 256,	320,  384,
	448,  512,  640,  768,	896,   1024,  1280,  1536,  1792,  2048,  2560,	 3072,	3584, 4096,
	5120, 6144, 7168, 8192, 10240, 12288, 14336, 16384, 20480, 24576, 28672, 32768,
};
#define NCLASSES (sizeof(class_sizes) / sizeof(class_sizes[0]))
static const size_t large_sizes[] = {64 << 10, 100 << 10, 256 << 10, 1 << 20, 2 << 20};
#define NLARGE (sizeof(large_sizes) / sizeof(large_sizes[0]))
static const size_t huge_sizes[] = {(2 << 20) + 1, 3 << 20, 8 << 20};
#define NHUGE (sizeof(huge_sizes) / sizeof(huge_sizes[0]))

static void *pre_small[NCLASSES], *pre_large[NLARGE], *pre_huge[NHUGE];

static void malloc_prepare(void)
{
	for (size_t i = 0; i < NCLASSES; i++) { /* warm every class up */
		void *t[8];
		for (int k = 0; k < 8; k++)
			CHK(t[k] = sa_malloc(class_sizes[i]), "warm-up malloc");
		for (int k = 0; k < 8; k++)
			sa_free(t[k]);
	}
	for (size_t i = 0; i < NLARGE; i++) { /* and the large units */
		void *p = sa_malloc(large_sizes[i]);
		CHK(p, "warm-up large malloc");
		sa_free(p);
	}
	for (size_t i = 0; i < NCLASSES; i++)
		CHK(pre_small[i] = sa_malloc(class_sizes[i]), "pre-scope malloc");
	for (size_t i = 0; i < NLARGE; i++)
		CHK(pre_large[i] = sa_malloc(large_sizes[i]), "pre-scope large malloc");
	for (size_t i = 0; i < NHUGE; i++) {
		CHK(pre_huge[i] = sa_malloc(huge_sizes[i]), "pre-scope huge malloc");
		memset(pre_huge[i], 1, 4096);
	}
}

static void malloc_work(void)
{
	for (size_t i = 0; i < NCLASSES; i++) {
		size_t sz = class_sizes[i];
		STEP("sa_malloc of a size class under NOWAIT");
		void *p = sa_malloc(sz);
		chk_block(p, sz, 0, __LINE__);
		void *q = sa_malloc(sz - 1 > 0 ? sz - 1 : 1);
		chk_block(q, sz - 1, 0, __LINE__);
		STEP("sa_calloc of a size class under NOWAIT");
		void *z = sa_calloc(1, sz);
		chk_block(z, sz, 1, __LINE__);
		STEP("sa_realloc of a size class under NOWAIT");
		if (p) {
			size_t nsz = i + 1 < NCLASSES ? class_sizes[i + 1] : sz * 2;
			void *r = sa_realloc(p, nsz);
			if (r) {
				for (size_t k = 0; k < sz; k++)
					CHK(((unsigned char *)r)[k] == 0x5a,
					    "realloc %zu -> %zu lost byte %zu", sz, nsz, k);
				p = r;
				chk_block(p, nsz, 0, __LINE__);
				r = sa_realloc(p, sz / 2 ? sz / 2 : 1);
				if (r)
					p = r;
			}
		}
		STEP("sa_free of size-class blocks under NOWAIT");
		sa_free(p);
		sa_free(q);
		sa_free(z);
	}
	for (size_t i = 0; i < NLARGE; i++) {
		size_t sz = large_sizes[i];
		STEP("sa_malloc of a large block under NOWAIT");
		void *p = sa_malloc(sz);
		chk_block(p, sz, 0, __LINE__);
		STEP("sa_calloc of a large block under NOWAIT");
		void *z = sa_calloc(sz / 16, 16);
		chk_block(z, sz, 1, __LINE__);
		STEP("sa_realloc of a large block under NOWAIT");
		if (p) {
			void *r = sa_realloc(p, sz + (sz < (2u << 20) ? 65536 : 0));
			if (r)
				p = r;
			r = sa_realloc(p, sz / 4);
			if (r)
				p = r;
		}
		STEP("sa_free of large blocks under NOWAIT");
		sa_free(p);
		sa_free(z);
	}
	for (size_t i = 0; i < NHUGE; i++) {
		size_t sz = huge_sizes[i];
		STEP("sa_malloc of a huge block under NOWAIT (must be NULL)");
		errno = 0;
		void *p = sa_malloc(sz);
		CHK(!p, "a huge block of %zu bytes under NOWAIT: %p, not NULL", sz, p);
		CHK(errno == ENOMEM, "huge malloc under NOWAIT: errno %d, not ENOMEM", errno);
		STEP("sa_calloc of a huge block under NOWAIT (must be NULL)");
		p = sa_calloc(1, sz);
		CHK(!p, "a huge calloc of %zu bytes under NOWAIT: %p, not NULL", sz, p);
		STEP("sa_realloc of a small block to huge under NOWAIT (must be NULL)");
		void *s = sa_malloc(100);
		if (s) {
			memset(s, 7, 100);
			void *r = sa_realloc(s, sz);
			CHK(!r, "realloc to a huge block under NOWAIT: %p, not NULL", r);
			for (int k = 0; k < 100; k++)
				CHK(((unsigned char *)s)[k] == 7,
				    "realloc failure changed the block");
			sa_free(s);
		}
	}
}

static void nosys_malloc_child(void)
{
	pin_child();
	malloc_prepare();
	unsigned cookie = sa_memalloc_nowait_save();
	install_filter(1);
	malloc_work();
	malloc_work();
	STEP("free small blocks allocated before the scope");
	for (size_t i = 0; i < NCLASSES; i++)
		sa_free(pre_small[i]);
	STEP("free large blocks allocated before the scope");
	for (size_t i = 0; i < 3; i++) /* a few: a full stash is test_nosys_large_free_stash */
		sa_free(pre_large[i]);
	uint64_t d0 = deferred_frees();
	STEP("free huge blocks allocated before the scope (deferred)");
	for (size_t i = 0; i < NHUGE; i++)
		sa_free(pre_huge[i]);
	uint64_t d1 = deferred_frees();
	CHK(d1 - d0 >= NHUGE, "freeing %zu huge blocks under NOWAIT deferred only %llu frees",
	    (size_t)NHUGE, (unsigned long long)(d1 - d0));
	(void)cookie;
	STEP("exit");
	_exit(0);
}

static void test_nosys_malloc(void **state)
{
	(void)state;
	skip_if_unsupported();
	run_child(nosys_malloc_child);
}

static void nosys_aligned_huge_child(void)
{
	pin_child();
	void *p = sa_aligned_alloc(4 << 20, 4 << 20);
	CHK(p, "sa_aligned_alloc(4 MiB, 4 MiB)");
	memset(p, 1, 4096);
	void *small = sa_malloc(64);
	sa_free(small);
	unsigned cookie = sa_memalloc_nowait_save();
	install_filter(1);
	uint64_t d0 = deferred_frees();
	STEP("sa_free of a 4 MiB-aligned huge block under NOWAIT");
	sa_free(p);
	CHK(deferred_frees() > d0, "the free of a huge block was not deferred");
	(void)cookie;
	STEP("exit");
	_exit(0);
}

static void test_nosys_free_aligned_huge(void **state)
{
	(void)state;
	skip_if_unsupported();
	run_child(nosys_aligned_huge_child);
}

/* ------------------------------------------------------------------ sheaves ---------------- */
static sa_flags_t sheaf_scope;

#define NSHEAVES 5
static void nosys_sheaf_child(void)
{
	pin_child();
	make_caches(16);
	warm_caches();
	/* cache, count: within the capacity, exactly the capacity, and oversize */
	static const struct {
		int cache;
		unsigned count; /* 0: the capacity */
	} want[NSHEAVES] = {{0, 100}, {3, 0}, {2, 500}, {1, 40}, {4, 7}};
	struct sa_sheaf *sv[NSHEAVES];
	unsigned n[NSHEAVES];
	for (int i = 0; i < NSHEAVES; i++) {
		struct sa_cache *c = cs[want[i].cache];
		n[i] = want[i].count ? want[i].count : sa_cache_sheaf_capacity(c);
		sv[i] = sa_sheaf_prefill(c, 0, n[i]);
		CHK(sv[i], "prefill %u of '%s'", n[i], sa_cache_name(c));
		CHK(sa_sheaf_size(sv[i]) >= n[i], "prefill %u gave %u", n[i], sa_sheaf_size(sv[i]));
	}
	/* over the limit: less than what is held now */
	sa_trim();
	size_t held = sa_memory_held();
	CHK(sa_set_limit(held / 2) == 0, "sa_set_limit");
	unsigned cookie = sa_memalloc_flags_save(sheaf_scope);
	CHK(cookie != SA_SCOPE_INVALID, "the scope was refused");
	CHK((sa_current_flags(0) & sheaf_scope) == sheaf_scope,
	    "the scope does not hold its flags");
	install_filter(1);
	static void *objs[NSHEAVES][600];
	for (int i = 0; i < NSHEAVES; i++) {
		struct sa_cache *c = cs[want[i].cache];
		STEP("sa_sheaf_alloc of a prefilled object");
		for (unsigned k = 0; k < n[i]; k++) {
			void *p = sa_sheaf_alloc(c, k % 2 ? SA_ZERO : 0, sv[i]);
			CHK(p, "sa_sheaf_alloc %u of %u prefilled ('%s', scope %#x) gave NULL",
			    k + 1, n[i], sa_cache_name(c), sheaf_scope);
			CHK(sa_slab_of(p) && sa_slab_of(p)->cache == c,
			    "prefilled object %p is not of '%s'", p, sa_cache_name(c));
			chk_object(c, p, cs_align[want[i].cache], k % 2, __LINE__);
			objs[i][k] = p;
		}
		for (unsigned k = 1; k < n[i]; k++) /* no malloc here: quadratic */
			for (unsigned j = 0; j < k; j++)
				CHK(objs[i][j] != objs[i][k],
				    "prefilled object %p handed out twice", objs[i][k]);
	}
	if (sheaf_scope & SA_NOWAIT) {
		/* freeing and returning may not make a system call either */
		for (int i = 0; i < NSHEAVES; i++) {
			struct sa_cache *c = cs[want[i].cache];
			STEP("sa_sheaf_return under NOWAIT over the limit");
			sa_sheaf_return(c, 0, sv[i]);
			STEP("sa_cache_free of prefilled objects under NOWAIT over the limit");
			for (unsigned k = 0; k < n[i]; k++)
				sa_cache_free(c, objs[i][k]);
		}
	}
	(void)cookie;
	STEP("exit");
	_exit(0);
}

static void sheaf_test(sa_flags_t scope)
{
	skip_if_unsupported();
	sheaf_scope = scope;
	run_child(nosys_sheaf_child);
}

static void test_nosys_sheaf_nowait(void **state)
{
	(void)state;
	sheaf_test(SA_NOWAIT);
}

static void test_nosys_sheaf_nofs(void **state)
{
	(void)state;
	sheaf_test(SA_NOFS);
}

static void test_nosys_sheaf_noreclaim(void **state)
{
	(void)state;
	sheaf_test(SA_NORECLAIM);
}

static void test_nosys_sheaf_pin(void **state)
{
	(void)state;
	sheaf_test(SA_PIN);
}

static void test_nosys_sheaf_nowait_pin(void **state)
{
	(void)state;
	sheaf_test(SA_NOWAIT | SA_PIN | SA_NOIO);
}

/* ------------------------------------------------------------------ locks held ------------- */
#define MAX_LOCKS 512
static pthread_mutex_t *locks[MAX_LOCKS];
static unsigned nlocks;
static atomic_int holder_state; /* 1 holding, 2 may release, 3 released */

static void add_lock(pthread_mutex_t *m)
{
	if (m && nlocks < MAX_LOCKS)
		locks[nlocks++] = m;
}

static void add_cache_locks(struct sa_cache *c)
{
	for (int n = 0; n < sa_numa_nodes(); n++) {
		add_lock(&c->nodes[n]->barn.lock);
		add_lock(&c->nodes[n]->lock);
	}
}

extern struct sa_cache *sa_class_cache[40]; /* alloc/malloc.c: the size classes */

/* Every allocator lock this test can reach, in the library's rank order. */
static void add_all_locks(void)
{
	for (int i = 0; i < NCACHES; i++)
		add_cache_locks(cs[i]);
	for (int i = 0; i < 40; i++)
		if (sa_class_cache[i])
			add_cache_locks(sa_class_cache[i]);
	add_lock(local_symbol("aligned_lock", sizeof(pthread_mutex_t)));
	add_lock(local_symbol("huge_cache_lock", sizeof(pthread_mutex_t)));
	pthread_mutex_t *pages = local_symbol("pages", 0);
	for (int n = 0; pages && n < sa_numa_nodes(); n++)
		add_lock((pthread_mutex_t *)((char *)pages + (size_t)n * SA_CACHELINE));
	add_lock(local_symbol("sa_meta_lock", sizeof(pthread_mutex_t)));
}

static void *holder(void *arg)
{
	(void)arg;
	for (unsigned i = 0; i < nlocks; i++)
		pthread_mutex_lock(locks[i]);
	atomic_store(&holder_state, 1);
	while (atomic_load(&holder_state) != 2)
		sched_yield();
	for (unsigned i = nlocks; i-- > 0;)
		pthread_mutex_unlock(locks[i]);
	atomic_store(&holder_state, 3);
	return NULL;
}

static pthread_t start_holder(void)
{
	pthread_t t;
	atomic_store(&holder_state, 0);
	CHK(pthread_create(&t, NULL, holder, NULL) == 0, "pthread_create");
	while (atomic_load(&holder_state) != 1)
		sched_yield();
	return t;
}

/* The NOWAIT worker of the filtered variants: a thread of its own, filtered by itself, which
 * parks when done (a thread exit makes system calls). */
static void (*worker_fn)(void);
static atomic_int worker_done;
static int worker_futex_waits_only;

static void *worker(void *arg)
{
	(void)arg;
	CHK(pin_to_cpu(the_cpu) == 0, "pin");
	unsigned cookie = sa_memalloc_nowait_save();
	(void)cookie;
	install_filter_how(0, worker_futex_waits_only);
	worker_fn();
	STEP("worker done");
	atomic_store(&worker_done, 1);
	for (;;)
		pause();
	return NULL;
}

static void run_filtered_worker(void (*fn)(void))
{
	pthread_t w;
	worker_fn = fn;
	atomic_store(&worker_done, 0);
	CHK(pthread_create(&w, NULL, worker, NULL) == 0, "pthread_create");
	while (!atomic_load(&worker_done))
		sched_yield();
}

static void locked_cache_work(void)
{
	cache_work(4, 2000);
	STEP("free objects allocated before the scope, locks held");
	for (int i = 0; i < NCACHES; i++)
		for (int k = 0; k < PRE; k++)
			sa_cache_free(cs[i], pre[i][k]);
}

static void nosys_node_barn_locked_child(void)
{
	pin_child();
	make_caches(4);
	warm_caches();
	for (int i = 0; i < NCACHES; i++)
		for (int k = 0; k < PRE; k++)
			CHK(pre[i][k] = sa_cache_alloc(cs[i], 0), "pre-scope allocation");
	for (int i = 0; i < NCACHES; i++)
		add_cache_locks(cs[i]);
	pthread_t h = start_holder();
	run_filtered_worker(locked_cache_work);
	atomic_store(&holder_state, 2);
	pthread_join(h, NULL);
	STEP("exit");
	_exit(0);
}

static void test_nosys_node_barn_locked(void **state)
{
	(void)state;
	skip_if_unsupported();
	run_child(nosys_node_barn_locked_child);
}

static void all_locks_work(void)
{
	locked_cache_work();
	malloc_work();
	STEP("free small blocks allocated before the scope, every lock held");
	for (size_t i = 0; i < NCLASSES; i++)
		sa_free(pre_small[i]);
	STEP("free huge blocks allocated before the scope, every lock held");
	for (size_t i = 0; i < NHUGE; i++)
		sa_free(pre_huge[i]);
	STEP("free large blocks allocated before the scope, every lock held");
	sa_free(pre_large[0]); /* one: its CPU's run stash has room */
}

static void nosys_all_locks_child(void)
{
	pin_child();
	make_caches(4);
	warm_caches();
	malloc_prepare();
	sa_trim(); /* empty run stashes */
	for (int i = 0; i < NCACHES; i++)
		for (int k = 0; k < PRE; k++)
			CHK(pre[i][k] = sa_cache_alloc(cs[i], 0), "pre-scope allocation");
	add_all_locks();
	pthread_t h = start_holder();
	run_filtered_worker(all_locks_work);
	atomic_store(&holder_state, 2);
	pthread_join(h, NULL);
	STEP("exit");
	_exit(0);
}

static void test_nosys_all_locks(void **state)
{
	(void)state;
	skip_if_unsupported();
	run_child(nosys_all_locks_child);
}

#define NSTASHED 8
static void *stashed[NSTASHED];

static void stash_work(void)
{
	for (int i = 0; i < NSTASHED; i++) {
		STEP("sa_free of a 256 KiB block under NOWAIT, page lock held");
		sa_free(stashed[i]);
	}
}

static void nosys_large_free_stash_child(void)
{
	pin_child();
	pthread_mutex_t *pages = local_symbol("pages", 0);
	if (!pages) {
		ssize_t w = write(2, "no symbol 'pages'\n", 18);
		(void)w;
		_exit(77);
	}
	void *warm = sa_malloc(256 << 10);
	CHK(warm, "warm-up");
	sa_free(warm);
	sa_trim(); /* empty run stashes */
	for (int i = 0; i < NSTASHED; i++)
		CHK(stashed[i] = sa_malloc(256 << 10), "pre-scope large malloc");
	/* this CPU's node's page lock: the first member of pages[node] (64 bytes each) */
	int node = sa_topo_cpu_node(the_cpu);
	add_lock((pthread_mutex_t *)((char *)pages + (size_t)node * SA_CACHELINE));
	pthread_t h = start_holder();
	run_filtered_worker(stash_work);
	atomic_store(&holder_state, 2);
	pthread_join(h, NULL);
	STEP("exit");
	_exit(0);
}

static void test_nosys_large_free_stash(void **state)
{
	(void)state;
	skip_if_unsupported();
	run_child(nosys_large_free_stash_child);
}

/*
 * NOWAIT at the limit while another thread keeps taking the page lock: a NOWAIT allocation that
 * try-locked the page lock, took clean units and then found the limit in the way must put them
 * back without waiting for that lock. The other thread takes the lock again and again (holding
 * it a little each time); the NOWAIT thread allocates 256 KiB blocks until HITS of them took
 * units and found the limit. A wait for the lock is a futex call: the filter kills the process.
 */
#define HITS	     2000
#define MAX_ATTEMPTS 50000000L /* a guard: each attempt is a try-lock */
static atomic_int churn_stop;
static pthread_mutex_t *churn_lock;
static atomic_long churn_rounds;

static void *lock_churner(void *arg)
{
	(void)arg;
	cpu_set_t set; /* another CPU than the NOWAIT thread's, where there is one */
	if (allowed_cpus(&set) > 1) {
		CPU_CLR(the_cpu, &set);
		sched_setaffinity(0, sizeof(set), &set);
	}
	while (!atomic_load(&churn_stop)) {
		pthread_mutex_lock(churn_lock);
		for (int i = 0; i < 2000; i++)
			__builtin_ia32_pause();
		pthread_mutex_unlock(churn_lock);
		atomic_fetch_add(&churn_rounds, 1);
		for (int i = 0; i < 20; i++) /* a short gap: the try-lock gets in now and then */
			__builtin_ia32_pause();
	}
	return NULL;
}

static uint64_t limit_hits(void)
{
	struct sa_scope_stats g;
	sa_scope_stats(&g); /* loads only: no system call */
	return g.limit_hits;
}

/* Until HITS allocations took units and found the limit (the path under test). */
static void limit_nowait_work(void)
{
	STEP("NOWAIT 256 KiB allocations at the limit, the page lock taken by another thread");
	uint64_t h0 = limit_hits();
	for (long i = 0; i < MAX_ATTEMPTS && limit_hits() - h0 < HITS; i++) {
		void *p = sa_malloc(256 << 10);
		if (p)
			sa_free(p);
	}
}

static void nosys_untake_child(void)
{
	pin_child();
	pthread_mutex_t *pages = local_symbol("pages", 0);
	CHK(pages, "no symbol 'pages'");
	churn_lock = (pthread_mutex_t *)((char *)pages +
					 (size_t)sa_topo_cpu_node(the_cpu) * SA_CACHELINE);
	void *b[48];
	for (int i = 0; i < 48; i++)
		CHK(b[i] = sa_malloc(256 << 10), "warm-up");
	for (int i = 1; i < 48; i++) /* b[0] keeps its segment mapped */
		sa_free(b[i]);
	sa_set_limit(sa_memory_held() + (64 << 20)); /* maps the emergency reserve */
	sa_trim(); /* the free units are clean: taking them needs a charge */
	CHK(sa_set_limit(sa_memory_held()) == 0, "sa_set_limit");
	pthread_t h;
	set_affinity(&all_cpus);
	CHK(pthread_create(&h, NULL, lock_churner, NULL) == 0, "pthread_create");
	pin_to_cpu(the_cpu);
	while (atomic_load(&churn_rounds) < 10)
		sched_yield();
	struct sa_scope_stats g0;
	sa_scope_stats(&g0);
	worker_futex_waits_only = 1; /* the churner queues on the lock: unlocks wake it */
	run_filtered_worker(limit_nowait_work);
	atomic_store(&churn_stop, 1);
	pthread_join(h, NULL);
	struct sa_scope_stats g1;
	sa_scope_stats(&g1);
	STEP("the path was taken: limit hits after a take");
	CHK(g1.limit_hits - g0.limit_hits >= HITS,
	    "only %llu allocations found the limit after taking units (lock rounds %ld)",
	    (unsigned long long)(g1.limit_hits - g0.limit_hits), atomic_load(&churn_rounds));
	STEP("exit");
	_exit(0);
}

static void test_nosys_untake_at_limit(void **state)
{
	(void)state;
	skip_if_unsupported();
	run_child(nosys_untake_child);
}

/* ------------------------------------------------------------------ restore (no filter) ---- */
static uint64_t in_use(struct sa_cache *c)
{
	struct sa_cache_stats s;
	CHK(sa_cache_stats(c, &s) == 0, "sa_cache_stats");
	return s.objects_in_use;
}

/* What assert_stats_consistent checks, for a child. */
static void chk_consistent(struct sa_cache *c, uint64_t expect, int line)
{
	struct sa_cache_stats s;
	CHK(sa_cache_stats(c, &s) == 0, "sa_cache_stats");
	uint64_t slab_out = sa_slab_inuse_racy(c);
	uint64_t out = stats_out(&s), in = stats_in(&s);
	if (out - in != expect || s.objects_in_use != expect ||
	    s.objects_in_use + s.objects_cached != slab_out ||
	    s.refill_objects + s.alloc_slow - s.flush_objects - s.free_slow != slab_out ||
	    s.slabs_allocated - s.slabs_freed != s.slabs)
		child_fail(line,
			   "cache '%s' inconsistent: expected %llu in use; allocs %llu frees %llu "
			   "(free_fast %llu free_slow %llu) in_use %llu cached %llu slab_out %llu "
			   "refill_obj %llu alloc_slow %llu flush_obj %llu",
			   sa_cache_name(c), (unsigned long long)expect, (unsigned long long)out,
			   (unsigned long long)in, (unsigned long long)s.free_fast,
			   (unsigned long long)s.free_slow, (unsigned long long)s.objects_in_use,
			   (unsigned long long)s.objects_cached, (unsigned long long)slab_out,
			   (unsigned long long)s.refill_objects, (unsigned long long)s.alloc_slow,
			   (unsigned long long)s.flush_objects);
}

static int restore_all_locks;

static void locked_then_restore_child(void)
{
	pin_child();
	make_caches(4);
	warm_caches();
	uint64_t base[NCACHES];
	for (int i = 0; i < NCACHES; i++) {
		for (int k = 0; k < PRE; k++)
			CHK(pre[i][k] = sa_cache_alloc(cs[i], 0), "pre-scope allocation");
		base[i] = in_use(cs[i]);
		CHK(base[i] == PRE, "'%s': %llu in use before the scope, not %d",
		    sa_cache_name(cs[i]), (unsigned long long)base[i], PRE);
	}
	if (restore_all_locks)
		add_all_locks();
	else
		for (int i = 0; i < NCACHES; i++)
			add_cache_locks(cs[i]);
	uint64_t d0 = deferred_frees();
	pthread_t h = start_holder();
	unsigned cookie = sa_memalloc_nowait_save();
	STEP("NOWAIT work while another thread holds the locks");
	if (restore_all_locks) {
		cache_work(3, 2000);
	} else {
		/* what the sheaves hold, and one failure per cache (each failed refill parks a
		 * new empty sheaf while the barn lock is busy: a few only) */
		static void *objs[2048];
		for (int i = 0; i < NCACHES; i++) {
			unsigned n = 0;
			while (n < 2048 && (objs[n] = sa_cache_alloc(cs[i], SA_NOWARN)) != NULL) {
				chk_object(cs[i], objs[n], cs_align[i], 0, __LINE__);
				n++;
			}
			for (unsigned k = 0; k < n; k++)
				sa_cache_free(cs[i], objs[k]);
		}
	}
	STEP("free objects allocated before the scope, locks held");
	for (int i = 0; i < NCACHES; i++)
		for (int k = 0; k < PRE / 2; k++)
			sa_cache_free(cs[i], pre[i][k]);
	uint64_t d1 = deferred_frees();
	struct sa_scope_stats g;
	sa_scope_stats(&g);
	int parked = 0; /* sheaves a NOWAIT path could not place (white box) */
	for (int i = 0; i < NCACHES; i++)
		parked += atomic_load(&cs[i]->deferred) != NULL;
	if (restore_all_locks)
		CHK(d1 > d0,
		    "no object free was deferred while every lock was held "
		    "(deferred_frees %llu)",
		    (unsigned long long)d1);
	else
		CHK(d1 > d0 || parked,
		    "nothing was deferred while the node and barn locks were "
		    "held (deferred_frees %llu, no parked sheaf)",
		    (unsigned long long)d1);
	STEP("let the holder go");
	atomic_store(&holder_state, 2);
	while (atomic_load(&holder_state) != 3)
		sched_yield();
	STEP("end the NOWAIT scope");
	sa_memalloc_nowait_restore(cookie);
	sa_scope_stats(&g);
	CHK(g.deferred_now == 0, "%llu deferred frees still waiting after the scope ended",
	    (unsigned long long)g.deferred_now);
	pthread_join(h, NULL);
	STEP("statistics after the scope");
	for (int i = 0; i < NCACHES; i++)
		chk_consistent(cs[i], PRE - PRE / 2, __LINE__);
	STEP("free the rest and check again");
	for (int i = 0; i < NCACHES; i++)
		for (int k = PRE / 2; k < PRE; k++)
			sa_cache_free(cs[i], pre[i][k]);
	for (int i = 0; i < NCACHES; i++)
		chk_consistent(cs[i], 0, __LINE__);
	for (int i = 0; i < NCACHES; i++) {
		CHK(sa_cache_shrink(cs[i]) == 0, "sa_cache_shrink");
		chk_consistent(cs[i], 0, __LINE__);
	}
	STEP("exit");
	_exit(0);
}

static void test_locked_then_restore(void **state)
{
	(void)state;
	restore_all_locks = 0;
	run_child(locked_then_restore_child);
}

static void test_all_locked_then_restore(void **state)
{
	(void)state;
	restore_all_locks = 1;
	run_child(locked_then_restore_child);
}

/*
 * The smallest case of a deferred object free: a cache with 4-object sheaves, 12 objects in
 * use; another thread holds the cache's node and barn locks and the metadata lock, so a NOWAIT
 * free that finds its sheaves full can neither get a sheaf nor reach the slab: it is deferred.
 * After the scope, every object is free exactly once: 0 in use, and allocations minus frees is 0.
 */
static void deferred_free_counted_once_child(void)
{
	pin_child();
	struct sa_cache_args a = {.sheaf_capacity = 4};
	struct sa_cache *c = sa_cache_create("nosys-defer", 64, &a);
	CHK(c, "sa_cache_create");
	void *o[12];
	for (int i = 0; i < 12; i++)
		CHK(o[i] = sa_cache_alloc(c, 0), "allocation");
	chk_consistent(c, 12, __LINE__);
	add_cache_locks(c);
	pthread_mutex_t *meta = local_symbol("sa_meta_lock", sizeof(pthread_mutex_t));
	CHK(meta, "no symbol sa_meta_lock");
	add_lock(meta);
	uint64_t d0 = deferred_frees();
	pthread_t h = start_holder();
	unsigned cookie = sa_memalloc_nowait_save();
	STEP("NOWAIT frees, node, barn and metadata locks held");
	for (int i = 0; i < 12; i++)
		sa_cache_free(c, o[i]);
	uint64_t d = deferred_frees() - d0;
	CHK(d > 0, "no free was deferred");
	atomic_store(&holder_state, 2);
	while (atomic_load(&holder_state) != 3)
		sched_yield();
	STEP("end of the scope: the deferred frees run");
	sa_memalloc_nowait_restore(cookie);
	pthread_join(h, NULL);
	struct sa_scope_stats g;
	sa_scope_stats(&g);
	CHK(g.deferred_now == 0, "deferred frees left");
	STEP("statistics: 12 allocated, 12 freed");
	struct sa_cache_stats st;
	sa_cache_stats(c, &st);
	CHK(stats_out(&st) - stats_in(&st) == 0,
	    "%llu deferred free(s): allocs %llu, frees %llu (free_fast %llu + free_slow %llu): "
	    "a deferred free is counted twice",
	    (unsigned long long)d, (unsigned long long)stats_out(&st),
	    (unsigned long long)stats_in(&st), (unsigned long long)st.free_fast,
	    (unsigned long long)st.free_slow);
	chk_consistent(c, 0, __LINE__);
	STEP("exit");
	_exit(0);
}

static void test_deferred_free_counted_once(void **state)
{
	(void)state;
	run_child(deferred_free_counted_once_child);
}

/*
 * A new slab that a NOWAIT allocation could not publish (the node lock was busy) is pending
 * until the next holder of the lock publishes it. Once the lock is free again and the scope has
 * ended, the cache's statistics count that slab and its objects: 1 object in use, the slab held,
 * every object out of the slabs accounted for.
 */
static void pending_slab_counted_child(void)
{
	pin_child();
	struct sa_cache_args a = {.sheaf_capacity = 8};
	struct sa_cache *c = sa_cache_create("nosys-pending", 512, &a);
	CHK(c, "sa_cache_create");
	chk_consistent(c, 0, __LINE__);
	add_lock(&c->nodes[sa_topo_cpu_node(the_cpu)]->lock);
	pthread_t h = start_holder();
	unsigned cookie = sa_memalloc_nowait_save();
	STEP("SA_HIGH allocation under NOWAIT, the node lock busy: a private, pending slab");
	void *o = sa_cache_alloc(c, SA_HIGH);
	CHK(o, "SA_HIGH under NOWAIT with free units and the node lock busy gave NULL");
	atomic_store(&holder_state, 2);
	while (atomic_load(&holder_state) != 3)
		sched_yield();
	sa_memalloc_nowait_restore(cookie);
	pthread_join(h, NULL);
	STEP("statistics once the lock is free");
	struct sa_cache_stats st;
	sa_cache_stats(c, &st);
	CHK(st.slabs == st.slabs_allocated - st.slabs_freed && st.slabs >= 1,
	    "slabs %llu, allocated %llu, freed %llu: the pending slab is not counted",
	    (unsigned long long)st.slabs, (unsigned long long)st.slabs_allocated,
	    (unsigned long long)st.slabs_freed);
	CHK(st.bytes_held > 0, "bytes_held 0 with a slab holding an object in use");
	chk_consistent(c, 1, __LINE__);
	sa_cache_free(c, o);
	STEP("exit");
	_exit(0);
}

static void test_pending_slab_counted(void **state)
{
	(void)state;
	run_child(pending_slab_counted_child);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nosys_caches),
		cmocka_unit_test(test_nosys_malloc),
		cmocka_unit_test(test_nosys_free_aligned_huge),
		cmocka_unit_test(test_nosys_sheaf_nowait),
		cmocka_unit_test(test_nosys_sheaf_nofs),
		cmocka_unit_test(test_nosys_sheaf_noreclaim),
		cmocka_unit_test(test_nosys_sheaf_pin),
		cmocka_unit_test(test_nosys_sheaf_nowait_pin),
		cmocka_unit_test(test_nosys_node_barn_locked),
		cmocka_unit_test(test_nosys_all_locks),
		cmocka_unit_test(test_nosys_large_free_stash),
		cmocka_unit_test(test_nosys_untake_at_limit),
		cmocka_unit_test(test_locked_then_restore),
		cmocka_unit_test(test_all_locked_then_restore),
		cmocka_unit_test(test_deferred_free_counted_once),
		cmocka_unit_test(test_pending_slab_counted),
	};
	return cmocka_run_group_tests_name("nowait_nosys", tests, NULL, NULL);
}
