/*
 * bench/rcu_bench.c — objects freed through RCU: sheafalloc's sa_free_rcu (objects batched in
 * per-CPU rcu sheaves, one grace period per batch of sheaves, one "callback" per sheaf) against
 * the usual way, one liburcu call_rcu per object whose callback frees it (urcu_memb_call_rcu,
 * liburcu 0.13, its default call_rcu thread), with jemalloc's and glibc's malloc/free.
 *
 * Shape (every row): the benchmark thread, registered with urcu_memb, allocates a 64-byte object,
 * writes all of it, and frees it through RCU, in a loop; no reader. One google-benchmark
 * iteration is a run of RUN_OBJS objects followed by a barrier (sa_rcu_barrier /
 * urcu_memb_barrier), inside the timing: every object of the run has been freed when the
 * iteration ends, so the time counts the deferred work too, not only its queueing.
 *   rcu/sheafalloc          sa_cache_alloc(c, 0) of a 64-byte cache, 64 bytes written,
 *                           sa_free_rcu(p)
 *   rcu/sheafalloc-malloc   sa_malloc(64), 64 bytes written, sa_free_rcu(p)
 *   rcu/jemalloc            jemalloc's malloc(64) (dlopen'ed as in core_bench.c), the 48 bytes
 *                           after the struct rcu_head written, urcu_memb_call_rcu(&head, cb),
 *                           cb calls jemalloc's free
 *   rcu/glibc               the same with __libc_malloc / __libc_free
 *   rcu/sheafalloc-callrcu  the same with sa_malloc / sa_free: the allocator held constant, the
 *                           batching taken away (what sa_free_rcu's sheaves buy)
 * Items are objects: items_per_second is objects per second. Counters: callbacks_per_object
 * (sheafalloc rows: the cache's rcu_callbacks / rcu_queued over the run, from sa_cache_stats
 * or, for the malloc-64 class cache, sa_stats_print_json; call_rcu rows: 1 by construction).
 * bench/Makefile runs each row in its own process under /usr/bin/time for its peak RSS, and
 * rcu_report.py prints the table with the ratios to the call_rcu rows.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <urcu/urcu-memb.h>

#include "sheafalloc.h"
#include "shim.h"
#include "lib_of.h"

#define OBJ_SIZE 64
#define RUN_OBJS (1 << 18) /* objects per iteration (then the barrier) */

extern void *__libc_malloc(size_t size);
extern void __libc_free(void *p);

/* A call_rcu object: the rcu_head inside the 64 bytes. */
struct cb_obj {
	struct rcu_head head;
	unsigned char payload[OBJ_SIZE - sizeof(struct rcu_head)];
};
_Static_assert(sizeof(struct cb_obj) == OBJ_SIZE, "64 bytes including the rcu_head");

static void *(*je_malloc)(size_t);
static void (*je_free)(void *);
static char je_error[512];
static char je_version[64] = "?";
static struct sa_cache *c64;

static void register_once(void)
{
	static __thread int registered;
	if (!registered) {
		urcu_memb_register_thread();
		registered = 1;
	}
}

static void je_open(void)
{
	void *h = dlopen("libjemalloc.so.2", RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		const char *e = dlerror();
		snprintf(je_error, sizeof(je_error), "dlopen: %s%s", e ? e : "libjemalloc.so.2",
			 e && strstr(e, "static TLS")
				 ? " (run with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096, "
				   "as bench/Makefile does)"
				 : "");
		return;
	}
	je_malloc = (void *(*)(size_t))dlsym(h, "malloc");
	je_free = (void (*)(void *))dlsym(h, "free");
	int (*ctl)(const char *, void *, size_t *, void *, size_t) =
		(int (*)(const char *, void *, size_t *, void *, size_t))dlsym(h, "mallctl");
	const char *v = NULL;
	size_t len = sizeof(v);
	if (ctl && ctl("version", (void *)&v, &len, NULL, 0) == 0 && v)
		snprintf(je_version, sizeof(je_version), "%s", v);
	if (!je_malloc || !je_free)
		snprintf(je_error, sizeof(je_error), "dlsym(libjemalloc.so.2, malloc/free) failed");
}

/* rcu_queued and rcu_callbacks of the cache named name, from sa_stats_print_json. */
static int json_rcu_stats(const char *name, double *queued, double *callbacks)
{
	int fd = memfd_create("rcu-bench-stats", 0);
	if (fd < 0)
		return -1;
	sa_stats_print_json(fd);
	off_t len = lseek(fd, 0, SEEK_END);
	char *text = calloc(1, (size_t)len + 1);
	int r = -1;
	if (text && pread(fd, text, (size_t)len, 0) == len) {
		char key[96];
		snprintf(key, sizeof(key), "\"name\": \"%s\"", name);
		const char *b = strstr(text, key);
		const char *q = b ? strstr(b, "\"rcu_queued\": ") : NULL;
		const char *cb = b ? strstr(b, "\"rcu_callbacks\": ") : NULL;
		if (q && cb) {
			*queued = strtod(q + strlen("\"rcu_queued\": "), NULL);
			*callbacks = strtod(cb + strlen("\"rcu_callbacks\": "), NULL);
			r = 0;
		}
	}
	free(text);
	close(fd);
	return r;
}

static void label_sheaf(sab_state *st, const char *how)
{
	char l[256];
	snprintf(l, sizeof(l), "sheafalloc %d.%d per-CPU %s; %s", SHEAFALLOC_VERSION_MAJOR,
		 SHEAFALLOC_VERSION_MINOR, sa_percpu_mode(), how);
	sab_label(st, l);
}

/* ---- sa_free_rcu ---------------------------------------------------------------------------- */
static void sheaf_cache(sab_state *st, const void *arg)
{
	(void)arg;
	if (!c64)
		c64 = sa_cache_create("rcu-bench-64", OBJ_SIZE, NULL);
	if (!c64) {
		sab_skip(st, "sa_cache_create failed");
		return;
	}
	register_once(); /* not needed by sa_free_rcu; every row's thread is registered alike */
	label_sheaf(st, "sa_cache_alloc + sa_free_rcu, sa_rcu_barrier per run");
	struct sa_cache_stats s0, s1;
	sa_cache_stats(c64, &s0);
	while (sab_keep_running(st)) {
		for (unsigned i = 0; i < RUN_OBJS; i++) {
			void *p = sa_cache_alloc(c64, 0);
			memset(p, (int)i, OBJ_SIZE);
			sab_escape(p);
			sa_free_rcu(p);
		}
		sa_rcu_barrier();
	}
	sa_cache_stats(c64, &s1);
	sab_set_items(st, sab_iterations(st) * RUN_OBJS);
	double q = (double)(s1.rcu_queued - s0.rcu_queued);
	sab_counter(st, "callbacks_per_object",
		    q > 0 ? (double)(s1.rcu_callbacks - s0.rcu_callbacks) / q : 0);
}

static void sheaf_malloc(sab_state *st, const void *arg)
{
	(void)arg;
	register_once();
	label_sheaf(st, "sa_malloc(64) + sa_free_rcu, sa_rcu_barrier per run");
	double q0 = 0, c0 = 0, q1 = 0, c1 = 0;
	void *warm = sa_malloc(OBJ_SIZE); /* the class cache exists from here on */
	sa_free(warm);
	int have = json_rcu_stats("malloc-64", &q0, &c0) == 0;
	while (sab_keep_running(st)) {
		for (unsigned i = 0; i < RUN_OBJS; i++) {
			void *p = sa_malloc(OBJ_SIZE);
			memset(p, (int)i, OBJ_SIZE);
			sab_escape(p);
			sa_free_rcu(p);
		}
		sa_rcu_barrier();
	}
	have = have && json_rcu_stats("malloc-64", &q1, &c1) == 0;
	sab_set_items(st, sab_iterations(st) * RUN_OBJS);
	if (have && q1 > q0)
		sab_counter(st, "callbacks_per_object", (c1 - c0) / (q1 - q0));
}

/* ---- per-object call_rcu -------------------------------------------------------------------- */
struct peer {
	void *(*alloc)(size_t);
	void (*cb)(struct rcu_head *);
};

static void *je_alloc(size_t n)
{
	return je_malloc(n);
}

static void je_cb(struct rcu_head *h)
{
	je_free(h);
}

static void glibc_cb(struct rcu_head *h)
{
	__libc_free(h);
}

static void sheaf_cb(struct rcu_head *h)
{
	sa_free(h);
}

static const struct peer peer_je = {je_alloc, je_cb};
static const struct peer peer_glibc = {__libc_malloc, glibc_cb};
static const struct peer peer_sheaf = {sa_malloc, sheaf_cb};

static void call_rcu_loop(sab_state *st, const struct peer *pr)
{
	register_once(); /* urcu_memb_call_rcu wants a registered thread */
	void *first = pr->alloc(OBJ_SIZE);
	if (!first) {
		sab_skip(st, "the first allocation returned NULL");
		return;
	}
	urcu_memb_call_rcu(first, pr->cb);
	urcu_memb_barrier();
	while (sab_keep_running(st)) {
		for (unsigned i = 0; i < RUN_OBJS; i++) {
			struct cb_obj *o = pr->alloc(OBJ_SIZE);
			memset(o->payload, (int)i, sizeof(o->payload));
			sab_escape(o);
			urcu_memb_call_rcu(&o->head, pr->cb);
		}
		urcu_memb_barrier();
	}
	sab_set_items(st, sab_iterations(st) * RUN_OBJS);
	sab_counter(st, "callbacks_per_object", 1.0);
}

static void callrcu_je(sab_state *st, const void *arg)
{
	(void)arg;
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, je_open);
	if (je_error[0]) {
		sab_skip(st, je_error);
		return;
	}
	char l[256];
	snprintf(l, sizeof(l), "%s %s malloc/free + urcu_memb_call_rcu per object; malloc: %s",
		 lib_of((const void *)je_malloc), je_version,
		 lib_of(dlsym(RTLD_DEFAULT, "malloc")));
	sab_label(st, l);
	call_rcu_loop(st, &peer_je);
}

static void callrcu_glibc(sab_state *st, const void *arg)
{
	(void)arg;
	char l[256];
	snprintf(l, sizeof(l), "glibc %s __libc_malloc/__libc_free + urcu_memb_call_rcu per object",
		 gnu_get_libc_version());
	sab_label(st, l);
	call_rcu_loop(st, &peer_glibc);
}

static void callrcu_sheaf(sab_state *st, const void *arg)
{
	(void)arg;
	label_sheaf(st, "sa_malloc/sa_free + urcu_memb_call_rcu per object");
	call_rcu_loop(st, &peer_sheaf);
}

/* max_threads -1: one thread, timed by the wall clock (UseRealTime), so the barrier's wait for
 * the deferred frees counts; the main thread's CPU time alone would leave out the grace periods
 * and the work of the RCU and call_rcu threads. */
const struct sab_bench sab_benches[] = {
	{"rcu/sheafalloc", sheaf_cache, NULL, -1},
	{"rcu/sheafalloc-malloc", sheaf_malloc, NULL, -1},
	{"rcu/jemalloc", callrcu_je, NULL, -1},
	{"rcu/glibc", callrcu_glibc, NULL, -1},
	{"rcu/sheafalloc-callrcu", callrcu_sheaf, NULL, -1},
};
const size_t sab_nbenches = sizeof(sab_benches) / sizeof(sab_benches[0]);
