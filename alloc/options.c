/*
 * alloc/options.c — SHEAFALLOC_OPTIONS and the allocator's messages (docs/api.md "Options").
 *
 * Owns: sa_opt, written once by sa_options_parse during sa_init (under the init lock), read-only
 * afterwards. Parsing never allocates: the string is walked in place. An unknown key or a bad
 * value is reported once on stderr and the default kept; nothing here aborts.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc/internal.h"

struct sa_options sa_opt = {
	.sheaf_capacity = 0,
	.barn_max_full = 10,
	.barn_max_empty = 10,
	.percpu_fallback = 0,
	.limit = 0,
	.reserve = 1u << 20,
	.stats_print = 0,
	.debug = 0,
	.scope_check_abort = 0,
	.bad_free_abort = 1,
	.free_check_key = 1,
	.purge_ms = 1000,
	.decay_ms = 250,
	.rcu_max_pending = 4u << 20,
	.verbose = 0,
};

void sa_msg(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	int nc = sa_nocancel_begin(); /* callers may hold locks: write is a cancellation point */
	ssize_t w = write(2, buf, (size_t)n);
	sa_nocancel_end(nc);
	(void)w;
}

enum opt_type { OPT_UINT, OPT_SIZE, OPT_BOOL, OPT_ENUM, OPT_LETTERS };

struct opt_desc {
	const char *name;
	enum opt_type type;
	void *ptr;
	unsigned long long min, max;
	const char *values; /* OPT_ENUM: '|'-separated, value = index */
	const char *doc;
};

static const struct opt_desc table[] = {
	{"sheaf_capacity", OPT_UINT, &sa_opt.sheaf_capacity, 0, 65536, NULL,
	 "objects per sheaf for every cache (0: chosen from the object size)"},
	{"barn_max_full", OPT_UINT, &sa_opt.barn_max_full, 0, 1u << 20, NULL,
	 "full sheaves a barn keeps per node before flushing to slabs"},
	{"barn_max_empty", OPT_UINT, &sa_opt.barn_max_empty, 0, 1u << 20, NULL,
	 "empty sheaves a barn keeps per node before freeing them"},
	{"percpu", OPT_ENUM, &sa_opt.percpu_fallback, 0, 1, "rseq|fallback",
	 "per-CPU mode: rseq where the kernel has it, or the lock fallback"},
	{"limit", OPT_SIZE, &sa_opt.limit, 0, ~0ull, NULL,
	 "limit on memory held from the OS in bytes, K/M/G suffixes (0: none)"},
	{"reserve", OPT_SIZE, &sa_opt.reserve, 0, 3ull << 20, NULL,
	 "emergency reserve for SA_HIGH, SA_NORECLAIM and SA_NOFAIL, mapped when a limit is set or "
	 "a NOWAIT scope opens (0: none)"},
	{"stats_print", OPT_ENUM, &sa_opt.stats_print, 0, 2, "0|1|json",
	 "print every cache's statistics at exit (1: text, json: JSON)"},
	{"debug", OPT_LETTERS, &sa_opt.debug, 0, SA_DEBUG_ALL, "FZPUG",
	 "debugging checks on every cache and malloc: F sanity on every free, Z red zones, P "
	 "poisoning, U owner tracking, G freed blocks above 32 KiB inaccessible until reused; all "
	 "= FZPUG, 0 = none (docs/robustness.md)"},
	{"scope_check", OPT_ENUM, &sa_opt.scope_check_abort, 0, 1, "warn|abort",
	 "what a scope restored out of order does"},
	{"bad_free", OPT_ENUM, &sa_opt.bad_free_abort, 0, 1, "warn|abort",
	 "what a bad free (double free, foreign or interior pointer) does after its report"},
	{"free_check", OPT_ENUM, &sa_opt.free_check_key, 0, 1, "light|key",
	 "key: every malloc free reads and writes the block's second word, so a double free after "
	 "other frees and a free of a never-allocated object are caught at once; light: free never "
	 "touches the block (a double free is caught on this CPU's sheaf top or at the flush)"},
	{"purge_ms", OPT_UINT, &sa_opt.purge_ms, 0, 3600000, NULL,
	 "delay before free pages are returned to the OS"},
	{"decay_ms", OPT_UINT, &sa_opt.decay_ms, 0, 3600000, NULL,
	 "interval after which cached free objects and empty slabs the program did not use go "
	 "back (0: never)"},
	{"background", OPT_BOOL, &sa_opt.background, 0, 1, NULL,
	 "a background thread runs the decay passes and purges, so memory also goes back while the "
	 "program makes no allocator call (0: passes run only in allocation slow paths)"},
	{"rcu_max_pending", OPT_SIZE, &sa_opt.rcu_max_pending, 0, ~0ull, NULL,
	 "bytes of sa_free_rcu objects waiting for a grace period above which a freeing thread "
	 "gives the RCU thread up to 2 ms to catch up (0: no bound)"},
	{"topology", OPT_ENUM, &sa_opt.topology_hwloc, 0, 1, "auto|hwloc",
	 "auto: load hwloc only on multi-node machines or when HWLOC_* gives a topology"},
	{"verbose", OPT_BOOL, &sa_opt.verbose, 0, 1, NULL, "print the effective settings at start"},
};

static int parse_num(const char *v, size_t len, int with_suffix, unsigned long long *out)
{
	char buf[32];
	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, v, len);
	buf[len] = 0;
	if (buf[0] == '-')
		return -1;
	char *end;
	errno = 0;
	unsigned long long x = strtoull(buf, &end, 0);
	if (errno || end == buf)
		return -1;
	if (with_suffix && *end) {
		unsigned shift = 0;
		switch (*end) {
		case 'k':
		case 'K':
			shift = 10;
			break;
		case 'm':
		case 'M':
			shift = 20;
			break;
		case 'g':
		case 'G':
			shift = 30;
			break;
		case 't':
		case 'T':
			shift = 40;
			break;
		default:
			return -1;
		}
		end++;
		if (x > (~0ull >> shift))
			return -1;
		x <<= shift;
	}
	if (*end)
		return -1;
	*out = x;
	return 0;
}

static int parse_enum(const char *values, const char *v, size_t len)
{
	int idx = 0;
	const char *p = values;
	while (*p) {
		const char *bar = strchr(p, '|');
		size_t l = bar ? (size_t)(bar - p) : strlen(p);
		if (l == len && memcmp(p, v, len) == 0)
			return idx;
		idx++;
		if (!bar)
			break;
		p = bar + 1;
	}
	return -1;
}

static void set_one(const char *key, size_t klen, const char *val, size_t vlen, int has_val)
{
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		const struct opt_desc *d = &table[i];
		if (strlen(d->name) != klen || memcmp(d->name, key, klen) != 0)
			continue;
		unsigned long long x = 0;
		int ok = has_val;
		if (ok && d->type == OPT_LETTERS) { /* a set of letters, "all", or "0" */
			if (vlen == 3 && memcmp(val, "all", 3) == 0) {
				x = d->max;
			} else if (vlen == 1 && val[0] == '0') {
				x = 0;
			} else {
				for (size_t i = 0; i < vlen && ok; i++) {
					const char *at = strchr(d->values, val[i]);
					ok = at && val[i];
					if (ok)
						x |= 1ull << (at - d->values);
				}
			}
		} else if (ok && d->type == OPT_ENUM) {
			int e = parse_enum(d->values, val, vlen);
			/* stats_print=json and debug=all: "1" is accepted as a synonym of the last value */
			if (e < 0 && vlen == 1 && val[0] == '1')
				e = (int)d->max;
			ok = e >= 0;
			x = (unsigned long long)e;
		} else if (ok && d->type == OPT_BOOL) {
			ok = vlen == 1 && (val[0] == '0' || val[0] == '1');
			x = ok ? (unsigned long long)(val[0] - '0') : 0;
		} else if (ok) {
			ok = parse_num(val, vlen, d->type == OPT_SIZE, &x) == 0 && x >= d->min &&
			     x <= d->max;
		}
		if (!ok) {
			if (d->type == OPT_ENUM)
				sa_msg("sheafalloc: SHEAFALLOC_OPTIONS: bad value '%.*s' for '%s' "
				       "(expected %s); keeping the default\n",
				       (int)vlen, val, d->name, d->values);
			else if (d->type == OPT_LETTERS)
				sa_msg("sheafalloc: SHEAFALLOC_OPTIONS: bad value '%.*s' for '%s' "
				       "(expected letters of %s, all or 0); keeping the default\n",
				       (int)vlen, val, d->name, d->values);
			else
				sa_msg("sheafalloc: SHEAFALLOC_OPTIONS: bad value '%.*s' for '%s' "
				       "(expected %s %llu..%llu); keeping the default\n",
				       (int)vlen, val, d->name,
				       d->type == OPT_BOOL ? "0 or 1 in" : "an integer in", d->min,
				       d->max);
			return;
		}
		switch (d->type) {
		case OPT_SIZE:
			*(size_t *)d->ptr = (size_t)x;
			break;
		case OPT_UINT:
			*(unsigned *)d->ptr = (unsigned)x;
			break;
		default:
			*(int *)d->ptr = (int)x;
			break;
		}
		return;
	}
	sa_msg("sheafalloc: SHEAFALLOC_OPTIONS: unknown option '%.*s' (ignored)\n", (int)klen, key);
}

void sa_options_parse(const char *s)
{
	if (!s)
		return;
	while (*s) {
		const char *comma = strchr(s, ',');
		size_t len = comma ? (size_t)(comma - s) : strlen(s);
		const char *eq = memchr(s, '=', len);
		if (len) {
			if (eq)
				set_one(s, (size_t)(eq - s), eq + 1, len - (size_t)(eq - s) - 1, 1);
			else
				set_one(s, len, "", 0, 0);
		}
		if (!comma)
			break;
		s = comma + 1;
	}
}

void sa_options_print(int fd)
{
	char buf[384]; /* the name, the value and the longest doc with room to spare */
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		const struct opt_desc *d = &table[i];
		unsigned long long v;
		switch (d->type) {
		case OPT_SIZE:
			v = *(size_t *)d->ptr;
			break;
		case OPT_UINT:
			v = *(unsigned *)d->ptr;
			break;
		default:
			v = (unsigned long long)*(int *)d->ptr;
			break;
		}
		char val[32];
		if (d->type == OPT_ENUM) {
			/* the value's name: the v-th '|'-separated word */
			const char *p = d->values;
			for (unsigned long long k = 0; k < v && p; k++) {
				p = strchr(p, '|');
				if (p)
					p++;
			}
			size_t l = p ? strcspn(p, "|") : 0;
			snprintf(val, sizeof(val), "%.*s", (int)l, p ? p : "");
		} else if (d->type == OPT_LETTERS) {
			size_t k = 0;
			for (unsigned i = 0; d->values[i] && k + 1 < sizeof(val); i++)
				if (v & (1ull << i))
					val[k++] = d->values[i];
			val[k] = 0;
			if (!k)
				snprintf(val, sizeof(val), "0");
		} else {
			snprintf(val, sizeof(val), "%llu", v);
		}
		int n = snprintf(buf, sizeof(buf), "sheafalloc: option %-15s = %s  (%s)\n", d->name,
				 val, d->doc);
		if (n > 0) {
			ssize_t w = write(fd, buf,
					  (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
			(void)w;
		}
	}
}
