/*
 * tests/sa_watch.h — run a test scenario in a child process and tell a hang from a slow machine.
 *
 * Plain C with no library headers: the stress tests (static library) and the preload tests
 * (LD_PRELOAD) both use it.
 *
 * watch_run(w, body, arg) forks; the child runs body(w, arg) and exits with its result; the
 * parent watches w->progress, a counter in MAP_SHARED memory that the scenario moves with every
 * unit of work it completes. There is no deadline on the whole: the parent declares a hang only
 *   - when progress has not moved for `stall` seconds (60: far above any step of these tests
 *     on a loaded machine, and independent of how long the whole run takes), or
 *   - at once, when it sees a deadlock that cannot resolve itself, by reading the tasks of the
 *     child's process group (/proc/PID/task/TID/syscall and process_vm_readv): a thread asleep
 *     in futex(FUTEX_WAIT, 2) on a glibc mutex whose owner field names
 *       * the waiting thread itself (a handler that interrupted its own thread's critical
 *         section; or any mutex, when the test declared that thread the only one that takes
 *         locks, watch_solo: an owner field not written yet reads 0), or
 *       * a thread of the scenario that has exited (a thread cancelled or killed while it held
 *         the lock: watch_thread_start marks a TID as the scenario's, watch_thread_joined as
 *         gone) or that does not exist in the waiter's process (a fork child that inherited a
 *         lock another thread held at fork time).
 *     or a process all of whose threads sleep in private futex waits (FUTEX_WAIT with
 *     FUTEX_PRIVATE_FLAG) with no timeout: a private futex can only be woken by a thread of the
 *     same process, so none of them ever wakes (a fork child that inherited a condition variable
 *     with a waiter that does not exist in it, for one).
 *     Such a state is sampled twice, half a second apart, before it is believed: nothing can ever
 *     end it, so this is a certainty, not a timing guess.
 * Either way the report names the step the scenario was in, the lock (its symbol, read from the
 * ELF symbol table of the object it lives in, or a name the scenario registered with
 * watch_name), and the stacks of the threads involved (each thread, sent SIGDUMP, stores its
 * backtrace() into the shared page; the parent resolves the addresses the same way). The child
 * and everything in its process group are then killed.
 *
 * If /proc or process_vm_readv is not permitted, only the no-progress rule is left.
 */
#ifndef SA_WATCH_H
#define SA_WATCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WATCH_STALL_SEC 60	   /* no progress for this long: a hang */
#define WATCH_TID_BITS	(1u << 22) /* pid_max is at most 4194304 */
#define WATCH_DUMPS	48
#define WATCH_FRAMES	28
#define WATCH_NAMES	256

struct watch_dump {
	_Atomic int tid; /* set last: the slot is complete */
	int pid, n;
	void *pc[WATCH_FRAMES];
};

struct sa_watch {
	_Atomic uint64_t progress; /* moves with every unit of work the scenario completes */
	char step[128];		   /* the step the scenario is in (for the report) */
	_Atomic uint64_t ctr[64];  /* the test's own counters */
	_Atomic int failures;	   /* watch_fail calls */
	char note[1024];	   /* the first failures' messages */
	_Atomic int ndumps;
	struct watch_dump dumps[WATCH_DUMPS];
	_Atomic int nnames;
	struct {
		uintptr_t addr;
		char name[96];
	} names[WATCH_NAMES];
	int root;	  /* the scenario process */
	_Atomic int solo; /* a thread declared to be the only one that takes locks now */
	_Atomic uint64_t known[WATCH_TID_BITS / 64]; /* TIDs of threads the scenario made */
	_Atomic uint64_t dead[WATCH_TID_BITS / 64];  /* ... that were joined since */
};

static struct sa_watch *watch_cur; /* in the scenario (inherited by its fork children) */

static inline pid_t watch_gettid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

static inline void watch_moved(struct sa_watch *w)
{
	atomic_fetch_add_explicit(&w->progress, 1, memory_order_relaxed);
}

__attribute__((format(printf, 2, 3))) static inline void watch_step(struct sa_watch *w,
								    const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(w->step, sizeof(w->step), fmt, ap);
	va_end(ap);
	watch_moved(w);
}

/* A failure of the scenario: counted, and the first few messages kept and printed (stderr). */
__attribute__((format(printf, 2, 3))) static inline void watch_fail(struct sa_watch *w,
								    const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	int k = atomic_fetch_add(&w->failures, 1);
	if (k < 4) {
		size_t at = strnlen(w->note, sizeof(w->note));
		snprintf(w->note + at, sizeof(w->note) - at, "%s%s", at ? "; " : "", buf);
	}
	if (k < 20 && n > 0) {
		char line[300];
		int m = snprintf(line, sizeof(line), "SCENARIO FAILURE: %s\n", buf);
		if (m > 0 && write(2, line, (size_t)m) < 0)
			return;
	}
}

static inline void watch_bit(_Atomic uint64_t *map, pid_t tid, int on)
{
	if (tid <= 0 || (unsigned)tid >= WATCH_TID_BITS)
		return;
	uint64_t b = 1ull << ((unsigned)tid % 64);
	if (on)
		atomic_fetch_or(&map[(unsigned)tid / 64], b);
	else
		atomic_fetch_and(&map[(unsigned)tid / 64], ~b);
}

static inline int watch_has(_Atomic uint64_t *map, pid_t tid)
{
	if (tid <= 0 || (unsigned)tid >= WATCH_TID_BITS)
		return 0;
	return (int)((atomic_load(&map[(unsigned)tid / 64]) >> ((unsigned)tid % 64)) & 1);
}

/* The calling thread belongs to the scenario (its TID may be one that was joined before). */
static inline pid_t watch_thread_start(struct sa_watch *w)
{
	pid_t tid = watch_gettid();
	watch_bit(w->dead, tid, 0);
	watch_bit(w->known, tid, 1);
	return tid;
}

/* The thread with this TID has been joined: it no longer exists. */
static inline void watch_thread_joined(struct sa_watch *w, pid_t tid)
{
	watch_bit(w->dead, tid, 1);
}

/* The calling thread is, from now on, the only thread of the scenario that takes any lock or
 * waits on or wakes a private futex (the others do neither): if it ever sleeps in a private
 * futex wait with no timeout, it waits for itself. (A thread interrupted between taking a glibc
 * mutex and recording itself as the owner leaves the owner field 0, and a pthread_once in
 * progress has no owner field at all: the owner rule cannot see those.) 0 ends it. */
static inline void watch_solo(struct sa_watch *w, pid_t tid)
{
	atomic_store(&w->solo, tid);
}

/* A name for a lock at addr (heap structures have no symbol). */
static inline void watch_name(struct sa_watch *w, const void *addr, const char *name)
{
	int i = atomic_fetch_add(&w->nnames, 1);
	if (i >= WATCH_NAMES)
		return;
	w->names[i].addr = (uintptr_t)addr;
	snprintf(w->names[i].name, sizeof(w->names[i].name), "%s", name);
}

/* ------------------------------------------------------------------ in the scenario --------- */
static inline int watch_sigdump(void)
{
	return SIGRTMIN + 4;
}

/* SIGDUMP: this thread's backtrace into the shared page (no allocation: backtrace() was primed
 * when the scenario started, so libgcc's unwinder is loaded already). */
static void watch_dump_handler(int sig)
{
	(void)sig;
	int e = errno;
	struct sa_watch *w = watch_cur;
	if (w) {
		int i = atomic_fetch_add(&w->ndumps, 1);
		if (i < WATCH_DUMPS) {
			struct watch_dump *d = &w->dumps[i];
			d->n = backtrace(d->pc, WATCH_FRAMES);
			d->pid = getpid();
			atomic_store(&d->tid, watch_gettid());
		}
	}
	errno = e;
}

static inline void watch_child_init(struct sa_watch *w)
{
	watch_cur = w;
	w->root = getpid();
	watch_thread_start(w);
	void *pc[4];
	backtrace(pc, 4); /* loads the unwinder now, not inside a handler */
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = watch_dump_handler;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(watch_sigdump(), &sa, NULL);
}

/* ------------------------------------------------------------------ the watcher ------------- */
static inline double watch_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline struct sa_watch *watch_new(void)
{
	struct sa_watch *w =
		mmap(NULL, sizeof(*w), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	return w == MAP_FAILED ? NULL : w;
}

static inline void watch_free(struct sa_watch *w)
{
	if (w)
		munmap(w, sizeof(*w));
}

static inline int watch_read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return (int)n;
}

static inline int watch_task_exists(int pid, int tid)
{
	char p[64];
	struct stat st;
	snprintf(p, sizeof(p), "/proc/%d/task/%d", pid, tid);
	return stat(p, &st) == 0;
}

/* -- symbols: /proc/PID/maps, then the object's ELF symbol table -- */
struct watch_map {
	uintptr_t start, end, off;
	char path[200];
};

static inline int watch_maps(int pid, struct watch_map *m, int max)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/%d/maps", pid);
	FILE *f = fopen(p, "re");
	if (!f)
		return 0;
	int n = 0;
	char line[512];
	while (n < max && fgets(line, sizeof(line), f)) {
		unsigned long s, e, off;
		char perm[8], path[256] = "";
		if (sscanf(line, "%lx-%lx %7s %lx %*s %*s %255s", &s, &e, perm, &off, path) < 4)
			continue;
		m[n].start = s;
		m[n].end = e;
		m[n].off = off;
		snprintf(m[n].path, sizeof(m[n].path), "%s", path[0] == '/' ? path : "");
		n++;
	}
	fclose(f);
	return n;
}

/* name of the symbol of file `path` that contains vaddr (its .symtab, else .dynsym) */
static inline int watch_elf_sym(const char *path, uintptr_t vaddr, int *is_exec, char *out,
				size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	struct stat st;
	if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(Elf64_Ehdr)) {
		close(fd);
		return -1;
	}
	size_t sz = (size_t)st.st_size;
	const unsigned char *b = mmap(NULL, sz, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (b == MAP_FAILED)
		return -1;
	int rc = -1;
	const Elf64_Ehdr *eh = (const void *)b;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh->e_shoff + (size_t)eh->e_shnum * sizeof(Elf64_Shdr) > sz)
		goto out;
	*is_exec = eh->e_type == ET_EXEC;
	const Elf64_Shdr *sh = (const void *)(b + eh->e_shoff);
	for (int pass = 0; pass < 2 && rc; pass++) {
		uint32_t want = pass == 0 ? SHT_SYMTAB : SHT_DYNSYM;
		for (unsigned i = 0; i < eh->e_shnum && rc; i++) {
			if (sh[i].sh_type != want || sh[i].sh_link >= eh->e_shnum ||
			    sh[i].sh_offset + sh[i].sh_size > sz)
				continue;
			const Elf64_Sym *sym = (const void *)(b + sh[i].sh_offset);
			size_t nsym = sh[i].sh_size / sizeof(Elf64_Sym);
			const Elf64_Shdr *str = &sh[sh[i].sh_link];
			const Elf64_Sym *best = NULL;
			for (size_t k = 0; k < nsym; k++) {
				unsigned t = ELF64_ST_TYPE(sym[k].st_info);
				if (sym[k].st_shndx == SHN_UNDEF || sym[k].st_value > vaddr ||
				    (t != STT_FUNC && t != STT_OBJECT))
					continue;
				if (vaddr < sym[k].st_value +
						    (sym[k].st_size ? sym[k].st_size : 1) &&
				    (!best || sym[k].st_value > best->st_value))
					best = &sym[k];
			}
			if (best && best->st_name < str->sh_size &&
			    str->sh_offset + str->sh_size <= sz) {
				snprintf(out, len, "%s+%#lx",
					 (const char *)b + str->sh_offset + best->st_name,
					 (unsigned long)(vaddr - best->st_value));
				rc = 0;
			}
		}
	}
out:
	munmap((void *)b, sz);
	return rc;
}

/* "symbol+off (object)" for an address in process pid. */
static inline void watch_symbolize(struct sa_watch *w, int pid, uintptr_t a, char *out, size_t len)
{
	for (int i = 0; i < WATCH_NAMES && i < atomic_load(&w->nnames); i++)
		if (w->names[i].addr == a) {
			snprintf(out, len, "%s", w->names[i].name);
			return;
		}
	static struct watch_map m[1024];
	int n = watch_maps(pid, m, 1024);
	int at = -1;
	for (int i = 0; i < n; i++)
		if (a >= m[i].start && a < m[i].end)
			at = i;
	if (at < 0) {
		snprintf(out, len, "%#lx (unmapped)", (unsigned long)a);
		return;
	}
	int f = at; /* an anonymous mapping right after a file's: its .bss */
	while (!m[f].path[0] && f > 0 && m[f - 1].end == m[f].start)
		f--;
	if (!m[f].path[0]) {
		snprintf(out, len, "%#lx (anonymous memory)", (unsigned long)a);
		return;
	}
	uintptr_t base = m[f].start - m[f].off;
	for (int i = 0; i < n; i++)
		if (!strcmp(m[i].path, m[f].path) && m[i].off == 0) {
			base = m[i].start;
			break;
		}
	const char *slash = strrchr(m[f].path, '/');
	char sym[160];
	int is_exec = 0;
	if (watch_elf_sym(m[f].path, a - base, &is_exec, sym, sizeof(sym)) == 0 && !is_exec)
		snprintf(out, len, "%s (%s)", sym, slash ? slash + 1 : m[f].path);
	else if (is_exec && watch_elf_sym(m[f].path, a, &is_exec, sym, sizeof(sym)) == 0)
		snprintf(out, len, "%s (%s)", sym, slash ? slash + 1 : m[f].path);
	else
		snprintf(out, len, "%#lx (%s)", (unsigned long)a, slash ? slash + 1 : m[f].path);
}

/* -- the processes of the scenario: its process group -- */
static inline int watch_group(int pgid, int *pids, int max)
{
	int n = 0;
	pids[n++] = pgid;
	DIR *d = opendir("/proc");
	if (!d)
		return n;
	struct dirent *e;
	while ((e = readdir(d)) && n < max) {
		int pid = atoi(e->d_name);
		if (pid <= 0 || pid == pgid)
			continue;
		char p[64], buf[512];
		snprintf(p, sizeof(p), "/proc/%d/stat", pid);
		if (watch_read_file(p, buf, sizeof(buf)) <= 0)
			continue;
		char *r = strrchr(buf, ')');
		int ppid, pg;
		char state;
		if (r && sscanf(r + 1, " %c %d %d", &state, &ppid, &pg) == 3 && pg == pgid)
			pids[n++] = pid;
	}
	closedir(d);
	return n;
}

static inline int watch_tasks(int pid, int *tids, int max)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/%d/task", pid);
	DIR *d = opendir(p);
	if (!d)
		return 0;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) && n < max) {
		int t = atoi(e->d_name);
		if (t > 0)
			tids[n++] = t;
	}
	closedir(d);
	return n;
}

/* Stacks of the given threads (SIGDUMP each, then print what they stored; a thread that does
 * not answer within a few seconds is skipped: the report must not hang). */
static inline void watch_print_stacks(struct sa_watch *w, const int *pids, const int *tids, int n)
{
	atomic_store(&w->ndumps, 0);
	for (int i = 0; i < WATCH_DUMPS; i++)
		atomic_store(&w->dumps[i].tid, 0);
	int sent = 0;
	for (int i = 0; i < n && sent < WATCH_DUMPS; i++)
		if (syscall(SYS_tgkill, pids[i], tids[i], watch_sigdump()) == 0)
			sent++;
	double t0 = watch_now();
	for (;;) {
		int ready = 0;
		for (int i = 0; i < sent; i++)
			ready += atomic_load(&w->dumps[i].tid) != 0;
		if (ready >= sent || watch_now() - t0 > 3)
			break;
		usleep(10000);
	}
	for (int i = 0; i < sent; i++) {
		struct watch_dump *d = &w->dumps[i];
		int tid = atomic_load(&d->tid);
		if (!tid)
			continue;
		char comm[64] = "?", p[96];
		snprintf(p, sizeof(p), "/proc/%d/task/%d/comm", d->pid, tid);
		if (watch_read_file(p, comm, sizeof(comm)) > 0)
			comm[strcspn(comm, "\n")] = 0;
		fprintf(stderr, "  stack of thread %d (%s) of process %d:%s\n", tid, comm, d->pid,
			d->n > 1 ? "" : " (backtrace() found no frames)");
		for (int k = 1; k < d->n; k++) { /* 0 is the dump handler itself */
			char s[300];
			uintptr_t pc = (uintptr_t)d->pc[k];
			watch_symbolize(w, d->pid, k > 1 ? pc - 1 : pc, s, sizeof(s));
			fprintf(stderr, "    #%-2d %s\n", k - 1, s);
		}
	}
}

/* One pass over the group's threads: a thread waiting for a mutex that nobody can release, or a
 * process whose threads all sleep in private futex waits without a timeout (only its own
 * threads could wake them). Fills out (a report) and sig (what was seen, to compare with the
 * next pass); 1 if found. The thread(s) to dump: wpid and wtid (wtid 0: every thread of wpid). */
static inline int watch_find_deadlock(struct sa_watch *w, int pgid, char *out, size_t len,
				      char *sig, size_t siglen, int *wpid, int *wtid)
{
	static int pids[256], tids[1024];
	int np = watch_group(pgid, pids, 256);
	for (int i = 0; i < np; i++) {
		int nt = watch_tasks(pids[i], tids, 1024);
		int asleep = 0;
		char all[1024] = "";
		size_t at = 0;
		for (int k = 0; k < nt; k++) {
			char p[96], buf[256], st[512];
			snprintf(p, sizeof(p), "/proc/%d/task/%d/syscall", pids[i], tids[k]);
			if (watch_read_file(p, buf, sizeof(buf)) <= 0)
				continue;
			long nr;
			unsigned long a0, a1, a2, a3;
			if (sscanf(buf, "%ld %lx %lx %lx %lx", &nr, &a0, &a1, &a2, &a3) != 5 ||
			    nr != SYS_futex || ((a1 & 0x7f) != 0 && (a1 & 0x7f) != 9))
				continue;
			snprintf(p, sizeof(p), "/proc/%d/task/%d/stat", pids[i], tids[k]);
			char *r = watch_read_file(p, st, sizeof(st)) > 0 ? strrchr(st, ')') : NULL;
			if ((a1 & 128) && a3 == 0 && r && r[2] == 'S') {
				asleep++;
				if (at < sizeof(all))
					at += (size_t)snprintf(all + at, sizeof(all) - at,
							       " %d:%lx:%lx", tids[k], a0, a2);
			}
			if (tids[k] == atomic_load(&w->solo) && (a1 & 128) && a3 == 0) {
				char sym[300];
				watch_symbolize(w, pids[i], a0, sym, sizeof(sym));
				snprintf(out, len,
					 "thread %d of process %d sleeps in a futex wait (value "
					 "%lu) at "
					 "%#lx [%s] with no timeout, but the test declared it the "
					 "only "
					 "thread that takes locks or waits now (watch_solo): it "
					 "waits "
					 "for itself (a mutex or a pthread_once it holds: it "
					 "interrupted "
					 "its own critical section, a signal handler)",
					 tids[k], pids[i], a2, a0, sym);
				snprintf(sig, siglen, "solo %d %d %lx", pids[i], tids[k], a0);
				*wpid = pids[i];
				*wtid = tids[k];
				return 1;
			}
			if (a2 != 2)
				continue;
			int word[3];
			struct iovec local = {word, sizeof(word)},
				     remote = {(void *)a0, sizeof(word)};
			if (process_vm_readv(pids[i], &local, 1, &remote, 1, 0) != sizeof(word))
				continue;
			int owner = word[2];
			if (word[0] != 2 || owner <= 0)
				continue;
			const char *why = NULL;
			if (owner == tids[k])
				why = "that it holds itself (it interrupted its own critical "
				      "section: "
				      "a signal handler)";
			else if (watch_has(w->known, owner) && !watch_task_exists(pids[i], owner) &&
				 (watch_has(w->dead, owner) || pids[i] != w->root))
				why = pids[i] != w->root && !watch_has(w->dead, owner)
					      ? "held by a thread that does not exist in this "
						"process "
						"(a fork child: another thread held it at fork "
						"time)"
					      : "held by a thread of the test that has exited "
						"(cancelled "
						"or returned while it held the lock)";
			if (!why)
				continue;
			char sym[300];
			watch_symbolize(w, pids[i], a0, sym, sizeof(sym));
			snprintf(out, len,
				 "thread %d of process %d waits for the mutex at %#lx [%s], owner "
				 "thread %d, %s",
				 tids[k], pids[i], a0, sym, owner, why);
			snprintf(sig, siglen, "%d %d %lx %d", pids[i], tids[k], a0, owner);
			*wpid = pids[i];
			*wtid = tids[k];
			return 1;
		}
		if (nt > 0 && asleep == nt) {
			size_t o = (size_t)snprintf(
				out, len,
				"every thread of process %d (%d) sleeps in a private "
				"futex wait with no timeout, which only its own "
				"threads could end:",
				pids[i], nt);
			for (int k = 0; k < nt && o < len; k++) {
				char p[96], buf[256], sym[300];
				unsigned long a0 = 0;
				long nr;
				snprintf(p, sizeof(p), "/proc/%d/task/%d/syscall", pids[i],
					 tids[k]);
				if (watch_read_file(p, buf, sizeof(buf)) > 0 &&
				    sscanf(buf, "%ld %lx", &nr, &a0) == 2) {
					watch_symbolize(w, pids[i], a0, sym, sizeof(sym));
					o += (size_t)snprintf(out + o, len - o,
							      " thread %d on %#lx [%s];", tids[k],
							      a0, sym);
				}
			}
			snprintf(sig, siglen, "all %d%.100s", pids[i], all);
			*wpid = pids[i];
			*wtid = 0;
			return 1;
		}
	}
	return 0;
}

/* Every thread of the group: state, wait channel, system call; then their stacks. */
static inline void watch_print_all(struct sa_watch *w, int pgid)
{
	static int pids[256], tids[1024], dp[WATCH_DUMPS], dt[WATCH_DUMPS];
	int nd = 0;
	int np = watch_group(pgid, pids, 256);
	for (int i = 0; i < np; i++) {
		int nt = watch_tasks(pids[i], tids, 1024);
		fprintf(stderr, "  process %d (%d threads):\n", pids[i], nt);
		for (int k = 0; k < nt; k++) {
			char p[96], comm[64] = "?", wchan[64] = "?", sc[128] = "?", st[512] = "";
			snprintf(p, sizeof(p), "/proc/%d/task/%d/comm", pids[i], tids[k]);
			watch_read_file(p, comm, sizeof(comm));
			snprintf(p, sizeof(p), "/proc/%d/task/%d/wchan", pids[i], tids[k]);
			watch_read_file(p, wchan, sizeof(wchan));
			snprintf(p, sizeof(p), "/proc/%d/task/%d/syscall", pids[i], tids[k]);
			watch_read_file(p, sc, sizeof(sc));
			snprintf(p, sizeof(p), "/proc/%d/task/%d/stat", pids[i], tids[k]);
			watch_read_file(p, st, sizeof(st));
			char *r = strrchr(st, ')');
			comm[strcspn(comm, "\n")] = 0;
			sc[strcspn(sc, "\n")] = 0;
			fprintf(stderr, "    thread %d (%s) state %c wchan %s syscall %s\n",
				tids[k], comm, r ? r[2] : '?', wchan, sc);
			if (nd < WATCH_DUMPS && (i == 0 || k < 2)) {
				dp[nd] = pids[i];
				dt[nd++] = tids[k];
			}
		}
	}
	watch_print_stacks(w, dp, dt, nd);
}

/* Run body(w, arg) in a child (its own process group) and watch it. Returns the child's exit
 * status (0: passed), or -1 for a hang (reported on stderr). */
static inline int watch_run(struct sa_watch *w, const char *what,
			    int (*body)(struct sa_watch *, void *), void *arg)
{
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0)
		return -2;
	if (pid == 0) {
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		watch_child_init(w);
		int rc = body(w, arg);
		fflush(stdout);
		fflush(stderr);
		_exit(rc);
	}
	setpgid(pid, pid); /* either of the two calls wins the race */
	uint64_t last = atomic_load(&w->progress);
	double moved = watch_now(), scanned = 0;
	char prev[256] = "", sig[256], rep[2048];
	int st = 0, stall = WATCH_STALL_SEC;
	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			return -2;
		usleep(50000);
		uint64_t p = atomic_load(&w->progress);
		double t = watch_now();
		if (p != last) {
			last = p;
			moved = t;
			prev[0] = 0;
			continue;
		}
		int wp = 0, wt = 0;
		if (t - moved >= 0.5 && t - scanned >= 0.5) {
			scanned = t;
			if (watch_find_deadlock(w, pid, rep, sizeof(rep), sig, sizeof(sig), &wp,
						&wt)) {
				if (!strcmp(sig, prev)) {
					fprintf(stderr,
						"%s: DEADLOCK in step '%s' (progress %llu): %s\n",
						what, w->step, (unsigned long long)p, rep);
					if (wt) {
						watch_print_stacks(w, &wp, &wt, 1);
					} else {
						static int ts[WATCH_DUMPS], ps[WATCH_DUMPS];
						int n = watch_tasks(wp, ts, WATCH_DUMPS);
						for (int k = 0; k < n; k++)
							ps[k] = wp;
						watch_print_stacks(w, ps, ts, n);
					}
					kill(-pid, SIGKILL);
					waitpid(pid, &st, 0);
					return -1;
				}
				snprintf(prev, sizeof(prev), "%s", sig);
			} else {
				prev[0] = 0;
			}
		}
		if (t - moved >= stall) {
			fprintf(stderr,
				"%s: HANG: no progress for %d s in step '%s' (progress %llu); the "
				"threads:\n",
				what, stall, w->step, (unsigned long long)p);
			watch_print_all(w, pid);
			kill(-pid, SIGKILL);
			waitpid(pid, &st, 0);
			return -1;
		}
	}
	if (w->note[0])
		fprintf(stderr, "%s: scenario failures: %s\n", what, w->note);
	if (WIFSIGNALED(st)) {
		fprintf(stderr, "%s: scenario killed by signal %d in step '%s'\n", what,
			WTERMSIG(st), w->step);
		return 128 + WTERMSIG(st);
	}
	return WEXITSTATUS(st);
}

/* With the library's internals (tests/sa_test.h): names for every cache's locks. */
#ifdef SA_TEST_H
static inline void watch_name_caches(struct sa_watch *w)
{
	char n[80];
	atomic_store(&w->nnames, 0);
	pthread_mutex_lock(&sa_caches_lock);
	watch_name(w, &sa_caches_lock, "sa_caches_lock");
	for (struct sa_cache *c = sa_caches; c; c = c->next) {
		snprintf(n, sizeof(n), "drain_lock of cache '%.40s'", c->name);
		watch_name(w, &c->drain_lock, n);
		for (int i = 0; i < sa_nr_nodes; i++) {
			snprintf(n, sizeof(n), "barn lock of cache '%.40s' node %d", c->name,
				 i & 63);
			watch_name(w, &c->nodes[i]->barn.lock, n);
			snprintf(n, sizeof(n), "node lock of cache '%.40s' node %d", c->name,
				 i & 63);
			watch_name(w, &c->nodes[i]->lock, n);
		}
	}
	pthread_mutex_unlock(&sa_caches_lock);
}
#endif

#endif
