/*
 * alloc/init.c — process-wide start-up and fork handling (docs/design.md §6).
 *
 * Owns: sa_nr_cpus, sa_nr_nodes, sa_ready, the cache list and its lock (rank 1).
 * sa_init_slow runs once, under init_lock: options, per-CPU mode, topology, atexit and atfork
 * handlers; then publishes sa_ready with a release store. A re-entrant call from the same thread
 * while it is initializing (hwloc allocating through a preloaded malloc) returns at once and the
 * caller proceeds as on a one-node machine.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/single_threaded.h>
#include <unistd.h>

#include "sheaf/pcs_inline.h"

int sa_nr_cpus = 1;
int sa_nr_nodes = 1;
bool sa_ready;
uint64_t sa_free_key;
pthread_mutex_t sa_caches_lock = PTHREAD_MUTEX_INITIALIZER;
struct sa_cache *sa_caches;

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int initializing __attribute__((tls_model("initial-exec")));

void sa_stats_at_exit(void);

/* Highest possible CPU + 1, from /sys (read without allocating), at least _SC_NPROCESSORS_CONF. */
static int possible_cpus(void)
{
	long conf = sysconf(_SC_NPROCESSORS_CONF);
	int n = conf > 0 ? (int)conf : 1;
	int fd = open("/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		char buf[256];
		ssize_t r = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (r > 0) {
			buf[r] = 0;
			long max = -1, cur = 0;
			int have = 0;
			for (char *p = buf; *p; p++) {
				if (*p >= '0' && *p <= '9') {
					cur = cur * 10 + (*p - '0');
					have = 1;
				} else {
					if (have && cur > max)
						max = cur;
					cur = 0;
					have = 0;
				}
			}
			if (have && cur > max)
				max = cur;
			if (max + 1 > n)
				n = (int)max + 1;
		}
	}
	return n;
}

/*
 * fork (docs/design.md §6 "fork protocol"): the prepare handler takes glibc's stdio list lock
 * first, then every allocator lock in rank order (alloc/internal.h), so that the child finds
 * them free; the parent handler releases them all; the child handler releases ours and resets
 * the list lock (the child is single-threaded: nobody else can hold it).
 *
 * Why the stdio list lock first: glibc's fork takes that lock (_IO_list_lock) itself, but only
 * after the atfork prepare handlers. Taking allocator locks before it makes a cycle with stdio:
 * a thread in getline holds its FILE lock and waits for an allocator lock in realloc, a thread
 * in fflush(NULL) holds the list lock and waits for that FILE lock, and the forking thread holds
 * the allocator lock and waits for the list lock (glibc's tst-malloc-fork-deadlock). glibc's own
 * malloc takes its arena locks after the list lock for this reason; we take the list lock before
 * ours. No allocator lock is ever held across stdio (messages go out with write(2), sa_msg), so
 * a thread holding one never waits for a stdio lock, and the forking thread, once it holds the
 * list lock, only waits for allocator locks whose holders finish. The lock is recursive
 * (glibc's _IO_lock_t), so glibc taking it again inside fork is fine. Found by weak reference:
 * a C library without it leaves the order as before.
 *
 * Not in a process that never created a thread (glibc's __libc_single_threaded, as glibc's own
 * malloc does): no other thread can hold a lock, and a fork from a signal handler that
 * interrupted this thread's allocation would otherwise wait for a lock its own thread holds.
 * A fork from a signal handler that interrupted our prepare or release (fork_depth > 0) skips
 * them too, for the same reason.
 */
extern void _IO_list_lock(void) __attribute__((weak));
extern void _IO_list_unlock(void) __attribute__((weak));
extern void _IO_list_resetlock(void) __attribute__((weak));

static __thread int fork_depth __attribute__((tls_model("initial-exec")));
static __thread bool fork_locked __attribute__((tls_model("initial-exec")));
static __thread bool fork_stdio_locked __attribute__((tls_model("initial-exec")));

static void atfork_prepare(void)
{
	if (__atomic_fetch_add(&fork_depth, 1, __ATOMIC_RELAXED) > 0 || __libc_single_threaded)
		return;
	fork_locked = true;
	/* the RCU thread's batch first: it may wait for a grace period, and a reader may be
	 * inside stdio meanwhile (which the list lock would block) */
	sa_rcu_atfork(0);
	fork_stdio_locked = _IO_list_lock && _IO_list_unlock && _IO_list_resetlock;
	if (fork_stdio_locked)
		_IO_list_lock();
	sa_reclaim_atfork(0);
	sa_cache_pinned_atfork(0);
	pthread_mutex_lock(&sa_caches_lock);
	for (struct sa_cache *c = sa_caches; c; c = c->next)
		pthread_mutex_lock(&c->drain_lock);
	for (struct sa_cache *c = sa_caches; c; c = c->next)
		sa_pcs_atfork(c, 0);
	for (struct sa_cache *c = sa_caches; c; c = c->next) {
		for (int i = 0; i < sa_nr_nodes; i++) {
			pthread_mutex_lock(&c->nodes[i]->barn.lock);
			pthread_mutex_lock(&c->nodes[i]->lock);
		}
	}
	sa_malloc_atfork(0);
	sa_segment_atfork(0);
	sa_meta_atfork(0);
	sa_rcu_atfork(1);
}

/* Release every allocator lock; true if prepare took them (and the stdio list lock's state is
 * left to the caller). */
static bool release_locks(bool child)
{
	if (__atomic_sub_fetch(&fork_depth, 1, __ATOMIC_RELAXED) > 0 || !fork_locked)
		return false;
	fork_locked = false;
	if (child) /* before sa_caches_lock goes: it walks the caches */
		sa_deferred_after_fork();
	sa_rcu_atfork(child ? 3 : 2);
	sa_meta_atfork(1);
	sa_segment_atfork(child ? 2 : 1);
	sa_malloc_atfork(1);
	for (struct sa_cache *c = sa_caches; c; c = c->next) {
		for (int i = sa_nr_nodes - 1; i >= 0; i--) {
			pthread_mutex_unlock(&c->nodes[i]->lock);
			pthread_mutex_unlock(&c->nodes[i]->barn.lock);
		}
	}
	for (struct sa_cache *c = sa_caches; c; c = c->next)
		sa_pcs_atfork(c, 1);
	for (struct sa_cache *c = sa_caches; c; c = c->next)
		pthread_mutex_unlock(&c->drain_lock);
	pthread_mutex_unlock(&sa_caches_lock);
	sa_cache_pinned_atfork(1);
	sa_reclaim_atfork(child ? 2 : 1);
	return true;
}

static void atfork_parent(void)
{
	if (release_locks(false) && fork_stdio_locked)
		_IO_list_unlock(); /* glibc released its own (recursive) hold already */
}

static void atfork_child(void)
{
	sa_decay_atfork_child();
	/* glibc resets the list lock in a multi-threaded child before the child handlers run;
	 * resetting again covers the case where it did not take it: we are the only thread */
	if (release_locks(true) && fork_stdio_locked)
		_IO_list_resetlock();
}

void sa_init_slow(void)
{
	if (initializing)
		return;
	int saved_errno = errno; /* a successful first malloc leaves errno alone */
	/* signals blocked from before the lock until the flag is set: a handler that allocates
	 * right after the acquisition (TSan delivers deferred signals just there, at the end of
	 * its lock interceptor) would otherwise wait on init_lock, which its own thread holds */
	/* and no cancellation: start-up opens and reads files (hwloc, /sys) under init_lock */
	int nc = sa_nocancel_begin();
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_mutex_lock(&init_lock);
	initializing = 1;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!sa_ready) {
		sa_nr_cpus = possible_cpus();
		const unsigned char *rnd = (const unsigned char *)getauxval(AT_RANDOM);
		uint64_t r[2] = {(uint64_t)(uintptr_t)&rnd, 0};
		if (rnd)
			memcpy(r, rnd, sizeof(r)); /* 16 bytes, any alignment */
		sa_free_key = (r[0] ^ r[1]) | 1;
		sa_options_parse(getenv("SHEAFALLOC_OPTIONS"));
		sa_pcs_init_mode();
		/* the malloc classes exist before hwloc runs: it allocates (through us when we
		 * are the process's malloc); they get the other nodes once it has loaded */
		sa_malloc_init();
		sa_topo_init();
		if (sa_nr_nodes > 1) {
			pthread_mutex_lock(&sa_caches_lock);
			for (struct sa_cache *c = sa_caches; c; c = c->next)
				sa_cache_topology_changed(c);
			pthread_mutex_unlock(&sa_caches_lock);
		}
		if (sa_opt.verbose) {
			sa_msg("sheafalloc: per-CPU mode %s, %d possible CPUs, %d NUMA node(s)\n",
			       sa_percpu_mode(), sa_nr_cpus, sa_nr_nodes);
			sa_options_print(2);
		}
		if (sa_opt.limit)
			sa_set_limit(sa_opt.limit); /* maps the emergency reserve too */
		if (sa_opt.stats_print)
			atexit(sa_stats_at_exit);
		pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
		__atomic_store_n(&sa_ready, true, __ATOMIC_RELEASE);
	}
	initializing = 0; /* sa_ready is set: a handler from here on does not come back here */
	pthread_mutex_unlock(&init_lock);
	sa_nocancel_end(nc);
	errno = saved_errno;
}

void sa_init(void)
{
	sa_ensure_init();
}
