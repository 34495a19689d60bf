/*
 * barn/topo.c — the NUMA topology, from hwloc (docs/design.md §4).
 *
 * Owns: the node count, the CPU -> node map and each node's nodeset for binding. Loaded once
 * by sa_init (HWLOC_XMLFILE and HWLOC_SYNTHETIC are honoured by hwloc itself). Until it is
 * loaded every CPU is on node 0, which is also what a failed load leaves. Caches, I/O and misc objects
 * are filtered out so that loading stays cheap.
 * Written once under sa_init's lock; read-only afterwards.
 */
#define _GNU_SOURCE
#include <hwloc.h>
#include <stdlib.h>
#include <unistd.h>

#include "alloc/internal.h"

static hwloc_topology_t topo;
static int topo_ok;   /* hwloc loaded */
static int *cpu_node; /* [sa_nr_cpus] */
static hwloc_obj_t node_obj[SA_MAX_NODES];
static int can_bind;

int sa_topo_loaded(void)
{
	return topo_ok;
}

void sa_topo_init(void)
{
	cpu_node = sa_meta_alloc(sizeof(int) * (size_t)sa_nr_cpus);
	sa_nr_nodes = 1;
	/* Loading hwloc costs about 2.7 ms here (it reads much of /sys). On a machine with one
	 * node and no topology given through HWLOC_XMLFILE / HWLOC_SYNTHETIC / HWLOC_FSROOT there
	 * is nothing to learn from it, so start-up skips it (docs/design.md §4). */
	if (!getenv("HWLOC_XMLFILE") && !getenv("HWLOC_SYNTHETIC") && !getenv("HWLOC_FSROOT") &&
	    access("/sys/devices/system/node/node1", F_OK) != 0 && !sa_opt.topology_hwloc)
		return;
	if (hwloc_topology_init(&topo) != 0)
		return;
	/* caches, I/O and misc objects are not needed; the levels that carry NUMA nodes
	 * (package, core, group) must stay, or every node would seem to hold every PU */
	hwloc_topology_set_cache_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_NONE);
	hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_NONE);
	hwloc_topology_set_type_filter(topo, HWLOC_OBJ_MISC, HWLOC_TYPE_FILTER_KEEP_NONE);
	if (hwloc_topology_load(topo) != 0) {
		hwloc_topology_destroy(topo);
		return;
	}
	int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
	if (n < 1)
		n = 1;
	if (n > SA_MAX_NODES) {
		sa_msg("sheafalloc: %d NUMA nodes, using the first %d\n", n, SA_MAX_NODES);
		n = SA_MAX_NODES;
	}
	for (int i = 0; i < n; i++)
		node_obj[i] = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, (unsigned)i);
	/* each node's cpuset lists the OS indexes of its PUs */
	for (int k = n - 1; k >= 0; k--) {
		if (!node_obj[k] || !node_obj[k]->cpuset)
			continue;
		int cpu;
		hwloc_bitmap_foreach_begin(cpu, node_obj[k]->cpuset)
		{
			if (cpu >= 0 && cpu < sa_nr_cpus)
				cpu_node[cpu] = k;
		}
		hwloc_bitmap_foreach_end();
	}
	const struct hwloc_topology_support *sup = hwloc_topology_get_support(topo);
	can_bind = sup && sup->membind && sup->membind->set_area_membind;
	sa_nr_nodes = n;
	topo_ok = 1;
}

int sa_topo_cpu_node(int cpu)
{
	if (!cpu_node || cpu < 0 || cpu >= sa_nr_cpus)
		return 0;
	return cpu_node[cpu];
}

int sa_topo_bind(void *addr, size_t len, int node)
{
	if (!topo_ok || sa_nr_nodes < 2)
		return 0; /* one node: nothing to bind to */
	if (!can_bind || node < 0 || node >= sa_nr_nodes || !node_obj[node])
		return -1;
	if (hwloc_set_area_membind(topo, addr, len, node_obj[node]->nodeset, HWLOC_MEMBIND_BIND,
				   HWLOC_MEMBIND_BYNODESET) != 0)
		return -1;
	return 0;
}

SA_API int sa_numa_nodes(void)
{
	sa_ensure_init();
	return sa_nr_nodes;
}
