/* tests/programs/workload.c — a deterministic C program that run_programs.sh compiles with gcc
 * under the sheafalloc preload (the compiler's own allocations go through the allocator) and
 * without it; the objects must be identical, and the program's output (run both ways) too.
 *
 * It is written to give the compiler real work (inlining, loops, switch tables, structs, many
 * functions) and to allocate at run time itself: an AVL tree, a chained hash table that rehashes,
 * a growable vector, a tiny expression evaluator, a sort and a string builder.
 *
 * usage: workload [N]   prints one line per phase and a final checksum
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

static uint64_t mix(uint64_t h, uint64_t v)
{
	h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
	return h * 0xff51afd7ed558ccdull;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n);
	if (!p) {
		fprintf(stderr, "out of memory (%zu bytes)\n", n);
		exit(2);
	}
	return p;
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p) {
		fprintf(stderr, "out of memory (realloc %zu bytes)\n", n);
		exit(2);
	}
	return p;
}

/* ---------------------------------------------------------------- AVL tree ------------ */
struct avl {
	struct avl *l, *r;
	int h;
	uint64_t key;
	char *val;
};

static int height(struct avl *n)
{
	return n ? n->h : 0;
}
static int imax(int a, int b)
{
	return a > b ? a : b;
}
static void fix(struct avl *n)
{
	n->h = 1 + imax(height(n->l), height(n->r));
}

static struct avl *rot_right(struct avl *y)
{
	struct avl *x = y->l;
	y->l = x->r;
	x->r = y;
	fix(y);
	fix(x);
	return x;
}

static struct avl *rot_left(struct avl *x)
{
	struct avl *y = x->r;
	x->r = y->l;
	y->l = x;
	fix(x);
	fix(y);
	return y;
}

static struct avl *balance(struct avl *n)
{
	fix(n);
	int bf = height(n->l) - height(n->r);
	if (bf > 1) {
		if (height(n->l->l) < height(n->l->r))
			n->l = rot_left(n->l);
		return rot_right(n);
	}
	if (bf < -1) {
		if (height(n->r->r) < height(n->r->l))
			n->r = rot_right(n->r);
		return rot_left(n);
	}
	return n;
}

static struct avl *avl_insert(struct avl *n, uint64_t key, const char *val)
{
	if (!n) {
		n = xmalloc(sizeof(*n));
		n->l = n->r = NULL;
		n->h = 1;
		n->key = key;
		n->val = strdup(val);
		return n;
	}
	if (key < n->key)
		n->l = avl_insert(n->l, key, val);
	else if (key > n->key)
		n->r = avl_insert(n->r, key, val);
	else {
		size_t a = strlen(n->val), b = strlen(val);
		n->val = xrealloc(n->val, a + b + 1);
		memcpy(n->val + a, val, b + 1);
	}
	return balance(n);
}

static struct avl *avl_pop_min(struct avl *n, struct avl **min)
{
	if (!n->l) {
		*min = n;
		return n->r;
	}
	n->l = avl_pop_min(n->l, min);
	return balance(n);
}

static struct avl *avl_delete(struct avl *n, uint64_t key)
{
	if (!n)
		return NULL;
	if (key < n->key)
		n->l = avl_delete(n->l, key);
	else if (key > n->key)
		n->r = avl_delete(n->r, key);
	else {
		struct avl *l = n->l, *r = n->r, *m;
		free(n->val);
		free(n);
		if (!r)
			return l;
		r = avl_pop_min(r, &m);
		m->l = l;
		m->r = r;
		return balance(m);
	}
	return balance(n);
}

static uint64_t avl_walk(struct avl *n, uint64_t h, size_t *count)
{
	if (!n)
		return h;
	h = avl_walk(n->l, h, count);
	h = mix(h, n->key);
	for (const char *p = n->val; *p; p++)
		h = mix(h, (unsigned char)*p);
	(*count)++;
	return avl_walk(n->r, h, count);
}

static void avl_free(struct avl *n)
{
	if (!n)
		return;
	avl_free(n->l);
	avl_free(n->r);
	free(n->val);
	free(n);
}

/* ---------------------------------------------------------------- hash table ---------- */
struct entry {
	struct entry *next;
	size_t klen;
	uint64_t count;
	char key[]; /* flexible array: entries of many sizes */
};

struct table {
	struct entry **b;
	size_t nb, n;
};

static uint64_t hash_str(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
	return h;
}

static void table_grow(struct table *t)
{
	size_t nb = t->nb ? t->nb * 2 : 16;
	struct entry **b = calloc(nb, sizeof(*b));
	if (!b)
		exit(2);
	for (size_t i = 0; i < t->nb; i++) {
		struct entry *e = t->b[i], *next;
		for (; e; e = next) {
			next = e->next;
			size_t j = hash_str(e->key, e->klen) & (nb - 1);
			e->next = b[j];
			b[j] = e;
		}
	}
	free(t->b);
	t->b = b;
	t->nb = nb;
}

static void table_add(struct table *t, const char *k, size_t n)
{
	if (t->n >= t->nb)
		table_grow(t);
	size_t i = hash_str(k, n) & (t->nb - 1);
	for (struct entry *e = t->b[i]; e; e = e->next)
		if (e->klen == n && memcmp(e->key, k, n) == 0) {
			e->count++;
			return;
		}
	struct entry *e = xmalloc(sizeof(*e) + n + 1);
	memcpy(e->key, k, n);
	e->key[n] = 0;
	e->klen = n;
	e->count = 1;
	e->next = t->b[i];
	t->b[i] = e;
	t->n++;
}

static int cmp_entry(const void *a, const void *b)
{
	const struct entry *x = *(const struct entry *const *)a,
			   *y = *(const struct entry *const *)b;
	if (x->count != y->count)
		return x->count > y->count ? -1 : 1;
	return strcmp(x->key, y->key);
}

static uint64_t table_summary(struct table *t, size_t top)
{
	struct entry **all = xmalloc(t->n * sizeof(*all));
	size_t k = 0;
	for (size_t i = 0; i < t->nb; i++)
		for (struct entry *e = t->b[i]; e; e = e->next)
			all[k++] = e;
	qsort(all, k, sizeof(*all), cmp_entry);
	uint64_t h = k;
	for (size_t i = 0; i < k && i < top; i++)
		h = mix(mix(h, all[i]->count), hash_str(all[i]->key, all[i]->klen));
	free(all);
	return h;
}

static void table_free(struct table *t)
{
	for (size_t i = 0; i < t->nb; i++) {
		struct entry *e = t->b[i], *next;
		for (; e; e = next) {
			next = e->next;
			free(e);
		}
	}
	free(t->b);
}

/* ---------------------------------------------------------------- string builder ------ */
struct sb {
	char *s;
	size_t n, cap;
};

static void sb_put(struct sb *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		b->cap = (b->n + n + 1) * 3 / 2 + 8;
		b->s = xrealloc(b->s, b->cap);
	}
	memcpy(b->s + b->n, s, n);
	b->n += n;
	b->s[b->n] = 0;
}

static void sb_num(struct sb *b, long v)
{
	char tmp[32];
	int n = snprintf(tmp, sizeof(tmp), "%ld", v);
	sb_put(b, tmp, (size_t)n);
}

/* ---------------------------------------------------------------- expressions --------- */
/* A tiny recursive-descent evaluator over generated expression strings: + - * / % ( ) */
struct parser {
	const char *p;
	int depth;
};

static long parse_expr(struct parser *ps);

static long parse_atom(struct parser *ps)
{
	if (*ps->p == '(') {
		ps->p++;
		ps->depth++;
		long v = parse_expr(ps);
		if (*ps->p == ')')
			ps->p++;
		ps->depth--;
		return v;
	}
	if (*ps->p == '-') {
		ps->p++;
		return -parse_atom(ps);
	}
	long v = 0;
	while (*ps->p >= '0' && *ps->p <= '9')
		v = v * 10 + (*ps->p++ - '0');
	return v;
}

static long parse_term(struct parser *ps)
{
	long v = parse_atom(ps);
	for (;;) {
		char op = *ps->p;
		if (op != '*' && op != '/' && op != '%')
			return v;
		ps->p++;
		long r = parse_atom(ps);
		switch (op) {
		case '*':
			v = (long)((unsigned long)v * (unsigned long)r) % 1000000007L;
			break;
		case '/':
			v = r ? v / r : v;
			break;
		default:
			v = r ? v % r : v;
			break;
		}
	}
}

static long parse_expr(struct parser *ps)
{
	long v = parse_term(ps);
	for (;;) {
		char op = *ps->p;
		if (op != '+' && op != '-')
			return v;
		ps->p++;
		long r = parse_term(ps);
		v = op == '+' ? v + r : v - r;
		v %= 1000000007L;
	}
}

static void gen_expr(struct sb *b, int depth)
{
	uint64_t r = rng();
	if (depth <= 0 || r % 4 == 0) {
		sb_num(b, (long)(r >> 20) % 1000);
		return;
	}
	static const char ops[] = "+-*/%";
	if (r % 7 == 1) {
		sb_put(b, "(", 1);
		gen_expr(b, depth - 1);
		sb_put(b, ")", 1);
		return;
	}
	gen_expr(b, depth - 1);
	sb_put(b, &ops[(r >> 8) % 5], 1);
	gen_expr(b, depth - 1);
}

/* ---------------------------------------------------------------- vector + sort -------- */
struct rec {
	uint32_t a, b;
	char name[12];
};

static int cmp_rec(const void *x, const void *y)
{
	const struct rec *p = x, *q = y;
	if (p->a != q->a)
		return p->a < q->a ? -1 : 1;
	if (p->b != q->b)
		return p->b < q->b ? -1 : 1;
	return strcmp(p->name, q->name);
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 200000;
	uint64_t total = 0;

	/* AVL: insert, update (realloc the value), delete half, walk */
	struct avl *root = NULL;
	char buf[64];
	for (long i = 0; i < n; i++) {
		uint64_t k = rng() % (uint64_t)(n / 2 + 1);
		snprintf(buf, sizeof(buf), "v%lu.", (unsigned long)(k % 97));
		root = avl_insert(root, k, buf);
	}
	for (long i = 0; i < n / 2; i++)
		root = avl_delete(root, rng() % (uint64_t)(n / 2 + 1));
	size_t cnt = 0;
	uint64_t h = avl_walk(root, 0, &cnt);
	printf("avl: %zu nodes, height %d, %016llx\n", cnt, height(root), (unsigned long long)h);
	total = mix(total, h);
	avl_free(root);

	/* hash table of generated words of many lengths */
	struct table t = {0};
	for (long i = 0; i < n; i++) {
		size_t len = 1 + rng() % 40;
		for (size_t j = 0; j < len; j++)
			buf[j] = (char)('a' + (rng() % 4 == 0 ? rng() % 26 : j % 3));
		table_add(&t, buf, len);
	}
	h = table_summary(&t, 1000);
	printf("table: %zu keys, %zu buckets, %016llx\n", t.n, t.nb, (unsigned long long)h);
	total = mix(total, h);
	table_free(&t);

	/* expressions: generate, evaluate, keep a growing log */
	struct sb log = {0};
	long acc = 0;
	for (long i = 0; i < n / 20; i++) {
		struct sb e = {0};
		gen_expr(&e, 6);
		struct parser ps = {e.s, 0};
		long v = parse_expr(&ps);
		acc = (acc * 31 + v) % 1000000007L;
		if (i % 16 == 0) {
			sb_put(&log, e.s, e.n > 20 ? 20 : e.n);
			sb_put(&log, "=", 1);
			sb_num(&log, v);
			sb_put(&log, ";", 1);
		}
		free(e.s);
	}
	h = hash_str(log.s ? log.s : "", log.n);
	printf("expr: acc %ld, log %zu bytes, %016llx\n", acc, log.n, (unsigned long long)h);
	total = mix(mix(total, (uint64_t)acc), h);
	free(log.s);

	/* vector of records: grow by realloc, sort, dedupe */
	struct rec *v = NULL;
	size_t vn = 0, vcap = 0;
	for (long i = 0; i < n; i++) {
		if (vn == vcap) {
			vcap = vcap ? vcap * 2 : 4;
			v = xrealloc(v, vcap * sizeof(*v));
		}
		v[vn].a = (uint32_t)(rng() % 1000);
		v[vn].b = (uint32_t)(rng() % 1000);
		snprintf(v[vn].name, sizeof(v[vn].name), "r%lu", (unsigned long)(rng() % 100000));
		vn++;
	}
	qsort(v, vn, sizeof(*v), cmp_rec);
	size_t u = 0;
	for (size_t i = 0; i < vn; i++)
		if (u == 0 || cmp_rec(&v[u - 1], &v[i]) != 0)
			v[u++] = v[i];
	v = xrealloc(v, (u ? u : 1) * sizeof(*v));
	h = 0;
	for (size_t i = 0; i < u; i += 7)
		h = mix(mix(h, v[i].a * 1000003ull + v[i].b),
			hash_str(v[i].name, strlen(v[i].name)));
	printf("sort: %zu records, %zu unique, %016llx\n", vn, u, (unsigned long long)h);
	total = mix(total, h);
	free(v);

	/* many short-lived blocks of mixed sizes, freed in a scrambled order */
	enum { SLOTS = 4096 };
	void **slot = calloc(SLOTS, sizeof(*slot));
	size_t *sz = calloc(SLOTS, sizeof(*sz));
	h = 0;
	for (long i = 0; i < n * 4; i++) {
		size_t s = (size_t)rng() % SLOTS;
		if (slot[s]) {
			unsigned char *p = slot[s];
			h = mix(h, p[0] + p[sz[s] - 1] * 256u + sz[s]);
			free(p);
		}
		size_t want = rng() % 16 == 0 ? 1 + rng() % 70000 : 1 + rng() % 600;
		unsigned char *p = xmalloc(want);
		memset(p, (int)(s & 0xff), want);
		p[want - 1] = (unsigned char)(want & 0xff);
		slot[s] = p;
		sz[s] = want;
	}
	for (size_t s = 0; s < SLOTS; s++)
		free(slot[s]);
	free(slot);
	free(sz);
	printf("churn: %016llx\n", (unsigned long long)h);
	total = mix(total, h);

	printf("total: %016llx\n", (unsigned long long)total);
	return 0;
}
