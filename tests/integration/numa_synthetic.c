/*
 * tests/integration/numa_synthetic.c — node-aware behaviour on a synthetic two-node topology.
 *
 * HWLOC_SYNTHETIC="node:2 core:1 pu:1" is set before the library initializes (first thing in
 * main): hwloc then reports two NUMA nodes with one PU each, PU 0 on node 0 and PU 1 on node 1.
 * On a machine with at least 2 CPUs (0 and 1 allowed):
 *   - a thread pinned to CPU n gets node-n objects (plain, bulk, sheaf);
 *   - a node-1 object freed on CPU 0 counts as a remote free and never lands in CPU 0's sheaves
 *     (CPU 0 keeps getting node-0 objects only);
 *   - sa_cache_alloc_node for the other node works and counts a mismatch, and returns an object
 *     of the requested node even while the thread is being moved between CPUs;
 *   - memory binding cannot work on a synthetic topology: the failures are counted, not fatal;
 *   - a reserve slab made for a CPU of the other node is filed under the reserve's own node
 *     (a regression: filed under the asked-for node, its free unlinked it from the wrong list
 *     and another cache later carved objects from the same units).
 * Skipped (cmocka skip) with fewer than 2 usable CPUs.
 */
#include "sa_test.h"

#include <stdatomic.h>

#define SYNTH "node:2 core:1 pu:1"

static int have_two_cpus(void)
{
	cpu_set_t set;
	if (allowed_cpus(&set) < 2)
		return 0;
	return CPU_ISSET(0, &set) && CPU_ISSET(1, &set);
}

struct job {
	int cpu;
	void (*fn)(struct job *);
	struct sa_cache *c;
	void **objs;
	size_t n;
	int bad; /* set by fn on a failed check (cmocka asserts stay on the main thread) */
	char why[256];
};

static void *job_thread(void *p)
{
	struct job *j = p;
	if (pin_to_cpu(j->cpu) != 0) {
		j->bad = 1;
		snprintf(j->why, sizeof(j->why), "cannot pin to CPU %d", j->cpu);
		return NULL;
	}
	j->fn(j);
	return NULL;
}

/* Run fn on a new thread pinned to cpu, wait for it, fail the test if it reported a problem. */
static void run_on_cpu(struct job *j)
{
	pthread_t t;
	j->bad = 0;
	j->why[0] = 0;
	assert_int_equal(pthread_create(&t, NULL, job_thread, j), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	if (j->bad)
		print_error("on CPU %d: %s\n", j->cpu, j->why);
	assert_false(j->bad);
}

static void fail_job(struct job *j, const char *what, const void *obj)
{
	if (!j->bad)
		snprintf(j->why, sizeof(j->why), "%s (object %p node %d, running on CPU %d)", what,
			 obj, sa_object_node(obj), sched_getcpu());
	j->bad = 1;
}

/* Allocate j->n objects on this CPU; each must be of the CPU's node. */
static void job_alloc(struct job *j)
{
	int want = j->cpu; /* synthetic topology: CPU n is on node n */
	if (sched_getcpu() != j->cpu)
		fail_job(j, "not running on the pinned CPU", NULL);
	for (size_t i = 0; i < j->n; i++) {
		void *p = sa_cache_alloc(j->c, 0);
		j->objs[i] = p;
		if (!p) {
			fail_job(j, "allocation failed", p);
			return;
		}
		if (sa_object_node(p) != want)
			fail_job(j, "object of the wrong node", p);
	}
}

/* Free every object in j->objs on this CPU. */
static void job_free(struct job *j)
{
	for (size_t i = 0; i < j->n; i++) {
		if (i & 1)
			sa_free(j->objs[i]);
		else
			sa_cache_free(j->c, j->objs[i]);
	}
}

/* Churn on this CPU: alloc/free cycles, none may return another node's object. */
static void job_churn(struct job *j)
{
	int want = j->cpu;
	void *h[512];
	for (int round = 0; round < 40; round++) {
		for (int i = 0; i < 512; i++) {
			h[i] = sa_cache_alloc(j->c, 0);
			if (!h[i] || sa_object_node(h[i]) != want) {
				fail_job(j, "churn: wrong node or NULL", h[i]);
				for (int k = 0; k < i; k++)
					sa_free(h[k]);
				return;
			}
		}
		for (int i = 0; i < 512; i++)
			sa_cache_free(j->c, h[(i * 7) % 512]);
	}
	size_t got = sa_cache_alloc_bulk(j->c, 0, 300, h);
	if (got != 300)
		fail_job(j, "bulk failed", NULL);
	for (size_t i = 0; i < got; i++)
		if (sa_object_node(h[i]) != want)
			fail_job(j, "bulk: wrong node", h[i]);
	sa_cache_free_bulk(j->c, got, h);
	struct sa_sheaf *s = sa_sheaf_prefill(j->c, 0, 50);
	if (!s) {
		fail_job(j, "prefill failed", NULL);
		return;
	}
	for (int i = 0; i < 50; i++) {
		void *p = sa_sheaf_alloc(j->c, SA_NOWAIT, s);
		if (!p || sa_object_node(p) != want)
			fail_job(j, "sheaf: wrong node or NULL", p);
		if (p)
			sa_free(p);
	}
	sa_sheaf_return(j->c, 0, s);
}

static void *cpu_node_job_alloc_node(struct job *j, int node)
{
	void *p = sa_cache_alloc_node(j->c, 0, node);
	if (!p || sa_object_node(p) != node)
		fail_job(j, "alloc_node: wrong node or NULL", p);
	return p;
}

static void job_alloc_other_node(struct job *j)
{
	for (size_t i = 0; i < j->n; i++)
		j->objs[i] = cpu_node_job_alloc_node(j, 1 - j->cpu);
}

#define NEED_TWO_CPUS()                                                                 \
	do {                                                                            \
		if (!have_two_cpus()) {                                                 \
			print_message("fewer than 2 usable CPUs (0 and 1): skipped\n"); \
			skip();                                                         \
		}                                                                       \
	} while (0)

static void test_two_nodes(void **state)
{
	(void)state;
	NEED_TWO_CPUS();
	assert_int_equal(sa_numa_nodes(), 2);
	assert_int_equal(sa_topo_cpu_node(0), 0);
	assert_int_equal(sa_topo_cpu_node(1), 1);
}

static void test_pinned_threads_get_local_node(void **state)
{
	(void)state;
	NEED_TWO_CPUS();
	enum { M = 2000 };
	static void *o0[M], *o1[M];
	struct sa_cache *c = sa_cache_create("numa-local", 80, NULL);
	assert_non_null(c);
	struct job j1 = {.cpu = 1, .fn = job_alloc, .c = c, .objs = o1, .n = M};
	struct job j0 = {.cpu = 0, .fn = job_alloc, .c = c, .objs = o0, .n = M};
	run_on_cpu(&j1);
	run_on_cpu(&j0);
	for (int i = 0; i < M; i++) {
		assert_int_equal(sa_object_node(o1[i]), 1);
		assert_int_equal(sa_object_node(o0[i]), 0);
		check_object_of(c, o0[i]);
		check_object_of(c, o1[i]);
	}
	/* local frees */
	j1.fn = job_free;
	j0.fn = job_free;
	run_on_cpu(&j1);
	run_on_cpu(&j0);
	assert_stats_consistent(c, 0);
	/* churn on each CPU: always local */
	struct job c1 = {.cpu = 1, .fn = job_churn, .c = c};
	struct job c0 = {.cpu = 0, .fn = job_churn, .c = c};
	run_on_cpu(&c1);
	run_on_cpu(&c0);
	assert_stats_consistent(c, 0);
	assert_int_equal(get_stats(c).remote_free, 0);
	assert_int_equal(sa_cache_shrink(c), 0);
	assert_int_equal(get_stats(c).slabs, 0);
	sa_cache_destroy(c);
}

static void test_remote_free(void **state)
{
	(void)state;
	NEED_TWO_CPUS();
	enum { M = 500 };
	static void *objs[M];
	struct sa_cache *c = sa_cache_create("numa-remote", 64, NULL);
	assert_non_null(c);
	struct job j1 = {.cpu = 1, .fn = job_alloc, .c = c, .objs = objs, .n = M};
	run_on_cpu(&j1);
	struct sa_cache_stats before = get_stats(c);
	/* free the node-1 objects on CPU 0 */
	struct job j0 = {.cpu = 0, .fn = job_free, .c = c, .objs = objs, .n = M};
	run_on_cpu(&j0);
	struct sa_cache_stats after = get_stats(c);
	if (after.remote_free != before.remote_free + M)
		print_error("remote_free %llu -> %llu, expected +%d\n",
			    (unsigned long long)before.remote_free,
			    (unsigned long long)after.remote_free, M);
	assert_int_equal(after.remote_free, before.remote_free + M);
	assert_stats_consistent(c, 0);
	/* CPU 0 never gets those node-1 objects back from its sheaves */
	struct job c0 = {.cpu = 0, .fn = job_churn, .c = c};
	run_on_cpu(&c0);
	static void *o0[4 * M];
	struct job a0 = {.cpu = 0, .fn = job_alloc, .c = c, .objs = o0, .n = 4 * M};
	run_on_cpu(&a0);
	for (int i = 0; i < 4 * M; i++)
		for (int k = 0; k < M; k += 50)
			assert_ptr_not_equal(o0[i], objs[k]);
	a0.fn = job_free;
	run_on_cpu(&a0);
	/* the node-1 objects went back to node 1: CPU 1 can have them again */
	assert_stats_consistent(c, 0);
	assert_int_equal(sa_cache_shrink(c), 0);
	struct sa_cache_stats end = get_stats(c);
	assert_int_equal(end.slabs, 0);
	assert_int_equal(end.objects_cached, 0);
	sa_cache_destroy(c);
}

static void test_alloc_node_other(void **state)
{
	(void)state;
	NEED_TWO_CPUS();
	enum { M = 300 };
	static void *objs[M];
	struct sa_cache *c = sa_cache_create("numa-alloc-node", 200, NULL);
	assert_non_null(c);
	struct sa_cache_stats before = get_stats(c);
	struct job j0 = {.cpu = 0, .fn = job_alloc_other_node, .c = c, .objs = objs, .n = M};
	run_on_cpu(&j0); /* node-1 objects while running on CPU 0 */
	struct sa_cache_stats mid = get_stats(c);
	assert_int_equal(mid.alloc_node_mismatch, before.alloc_node_mismatch + M);
	for (int i = 0; i < M; i++)
		assert_int_equal(sa_object_node(objs[i]), 1);
	assert_stats_consistent(c, M);
	j0.fn = job_free; /* remote frees again */
	run_on_cpu(&j0);
	assert_int_equal(get_stats(c).remote_free, before.remote_free + M);
	struct job j1 = {.cpu = 1, .fn = job_alloc_other_node, .c = c, .objs = objs, .n = M};
	run_on_cpu(&j1); /* node-0 objects on CPU 1 */
	for (int i = 0; i < M; i++)
		assert_int_equal(sa_object_node(objs[i]), 0);
	j1.fn = job_free;
	run_on_cpu(&j1);
	assert_stats_consistent(c, 0);
	errno = 0;
	assert_null(sa_cache_alloc_node(c, SA_NOWARN, 2));
	assert_int_equal(errno, EINVAL);
	sa_cache_destroy(c);
}

static void test_bind_failures_tolerated(void **state)
{
	(void)state;
	NEED_TWO_CPUS();
	struct sa_cache *c = sa_cache_create("numa-bind", 4096, NULL);
	assert_non_null(c);
	enum { M = 2000 }; /* several segments per node */
	static void *o0[M], *o1[M];
	struct job j0 = {.cpu = 0, .fn = job_alloc, .c = c, .objs = o0, .n = M};
	struct job j1 = {.cpu = 1, .fn = job_alloc, .c = c, .objs = o1, .n = M};
	run_on_cpu(&j0);
	run_on_cpu(&j1);
	struct sa_cache_stats s = get_stats(c);
	print_message(
		"bind_failures %llu (segments of this cache's slabs that could not be bound)\n",
		(unsigned long long)s.bind_failures);
	/* hwloc cannot bind memory to the nodes of a synthetic topology */
	if (!getenv("HWLOC_THISSYSTEM"))
		assert_true(s.bind_failures > 0);
	for (int i = 0; i < M; i++) {
		memset(o0[i], 0x42, 4096); /* the memory works anyway */
		memset(o1[i], 0x24, 4096);
	}
	j0.fn = job_free;
	j1.fn = job_free;
	run_on_cpu(&j0);
	run_on_cpu(&j1);
	assert_stats_consistent(c, 0);
	sa_cache_destroy(c);
}

/*
 * sa_cache_alloc_node(node) must return an object of that node even when the thread migrates
 * during the call (the kernel's alloc_from_pcs re-checks the popped object's node for exactly
 * this reason). A shaker thread keeps moving the allocating thread between CPU 0 and CPU 1 with
 * sched_setaffinity(tid); the allocating thread never pins itself. It runs until MIG_CHANGES
 * affinity changes and MIG_CALLS calls have been made (about 3 s on an idle 2-vCPU machine), not
 * for a fixed time, so a slow or loaded machine exercises the same number of migrations (a 3 s
 * window gave it fewer).
 */
#define MIG_CHANGES 100000
#define MIG_CALLS   10000000
struct mig {
	struct sa_cache *c;
	atomic_int stop;
	atomic_int tid;
	long calls, wrong; /* written by the allocating thread, read with __atomic by the shaker */
	int first_want, first_got;
};

static void *mig_alloc(void *p)
{
	struct mig *m = p;
	atomic_store(&m->tid, (int)gettid());
	void *h[64];
	int n = 0;
	while (!atomic_load(&m->stop)) {
		int want = (int)(m->calls & 1);
		void *o = sa_cache_alloc_node(m->c, 0, want);
		__atomic_store_n(&m->calls, m->calls + 1, __ATOMIC_RELAXED);
		if (o && sa_object_node(o) != want) {
			if (!m->wrong) {
				m->first_want = want;
				m->first_got = sa_object_node(o);
			}
			__atomic_store_n(&m->wrong, m->wrong + 1, __ATOMIC_RELAXED);
		}
		if (o)
			h[n++] = o;
		if (n == 64)
			while (n)
				sa_free(h[--n]);
	}
	while (n)
		sa_free(h[--n]);
	return NULL;
}

static void test_alloc_node_under_migration(void **state)
{
	(void)state;
	NEED_TWO_CPUS();
	struct sa_cache_args a = {.sheaf_capacity = 1};
	struct mig m = {.c = sa_cache_create("numa-migrating", 64, &a)};
	assert_non_null(m.c);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, mig_alloc, &m), 0);
	while (!atomic_load(&m.tid))
		sched_yield();
	cpu_set_t sets[3];
	for (int i = 0; i < 3; i++)
		CPU_ZERO(&sets[i]);
	CPU_SET(0, &sets[0]);
	CPU_SET(1, &sets[1]);
	CPU_SET(0, &sets[2]);
	CPU_SET(1, &sets[2]);
	unsigned changes = 0;
	for (;; changes++) {
		sched_setaffinity(atomic_load(&m.tid), sizeof(cpu_set_t), &sets[changes % 3]);
		if (changes % 64 == 0 &&
		    ((changes >= MIG_CHANGES &&
		      __atomic_load_n(&m.calls, __ATOMIC_RELAXED) >= MIG_CALLS) ||
		     __atomic_load_n(&m.wrong, __ATOMIC_RELAXED) > 20))
			break;
	}
	atomic_store(&m.stop, 1);
	pthread_join(t, NULL);
	print_message("%ld sa_cache_alloc_node calls under %u forced migrations, %ld on the wrong "
		      "node\n",
		      m.calls, changes, m.wrong);
	if (m.wrong)
		print_error(
			"sa_cache_alloc_node(node %d) returned an object of node %d (the thread "
			"migrated during the call)\n",
			m.first_want, m.first_got);
	assert_int_equal(m.wrong, 0);
	assert_stats_consistent(m.c, 0);
	sa_cache_destroy(m.c);
}

static uint64_t reserve_allocs(void)
{
	struct sa_scope_stats st;
	assert_int_equal(sa_scope_stats(&st), 0);
	return st.reserve_allocs;
}

/* An object only the emergency reserve can give: no new mapping under NOWAIT, SA_HIGH. */
static void *reserve_alloc(struct sa_cache *c)
{
	unsigned nw = sa_memalloc_nowait_save();
	void *o = sa_cache_alloc(c, SA_HIGH | SA_NOWARN);
	sa_memalloc_nowait_restore(nw);
	return o;
}

/* First in main: node 1 has no memory yet, so its NOWAIT allocations need the reserve. */
static void test_reserve_slab_node(void **state)
{
	(void)state;
	if (!have_two_cpus())
		skip();
	cpu_set_t saved;
	allowed_cpus(&saved);
	assert_int_equal(pin_to_cpu(0), 0);
	sa_memalloc_nowait_restore(sa_memalloc_nowait_save()); /* maps the reserve, on node 0 */
	struct sa_cache *c = sa_cache_create("reserve-c", 128, NULL);
	struct sa_cache *d = sa_cache_create("reserve-d", 128, NULL);
	assert_non_null(c);
	assert_non_null(d);
	uint64_t r0 = reserve_allocs();
	assert_int_equal(pin_to_cpu(1), 0);
	void *a = reserve_alloc(c);
	assert_non_null(a);
	if (reserve_allocs() == r0) {
		/* node 1 had free units after all: the reserve was not needed, nothing to test */
		sched_setaffinity(0, sizeof(saved), &saved);
		sa_cache_free(c, a);
		sa_cache_destroy(c);
		sa_cache_destroy(d);
		skip();
	}
	assert_int_equal(sa_object_node(a), 0); /* the reserve's memory */
	sa_cache_free(c, a); /* the reserve slab empties and goes back to the reserve */
	assert_int_equal(pin_to_cpu(0), 0);
	void *x = reserve_alloc(d);
	assert_int_equal(pin_to_cpu(1), 0);
	void *y = reserve_alloc(c);
	assert_non_null(x);
	assert_non_null(y);
	/* y must be c's, not carved from the slab d now owns: disjoint, and freeing it to c is
	 * no bad free (which aborts: bad_free=abort is the default) */
	assert_true((char *)x + 128 <= (char *)y || (char *)y + 128 <= (char *)x);
	sa_cache_free(c, y);
	sa_cache_free(d, x);
	sched_setaffinity(0, sizeof(saved), &saved);
	assert_stats_consistent(c, 0);
	assert_stats_consistent(d, 0);
	sa_cache_destroy(c);
	sa_cache_destroy(d);
}

int main(void)
{
	/* before any sa_* call: the topology is loaded once, at initialization */
	setenv("HWLOC_SYNTHETIC", SYNTH, 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reserve_slab_node),
		cmocka_unit_test(test_two_nodes),
		cmocka_unit_test(test_pinned_threads_get_local_node),
		cmocka_unit_test(test_remote_free),
		cmocka_unit_test(test_alloc_node_other),
		cmocka_unit_test(test_bind_failures_tolerated),
		cmocka_unit_test(test_alloc_node_under_migration),
	};
	return cmocka_run_group_tests_name("numa_synthetic", tests, NULL, NULL);
}
