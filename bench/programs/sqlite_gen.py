"""bench/programs/sqlite_gen.py — writes the SQL script of the sqlite3 workload of bench/programs.sh.

usage: sqlite_gen.py N_INSERTS > script.sql
An in-memory database: N_INSERTS single-row INSERT statements in one transaction (the parser
and the b-tree allocate per statement), a bulk INSERT ... SELECT of 200,000 rows from a recursive
CTE, an index, updates, deletes, GROUP BY / ORDER BY / join / group_concat queries, VACUUM.
Every value is computed from the row number (no random(), no dates): the output is the same under
every allocator.
"""
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 40000
w = sys.stdout.write
w("PRAGMA cache_size=-32768;\n")
w("CREATE TABLE kv(id INTEGER PRIMARY KEY, k TEXT, v TEXT, n INTEGER);\n")
w("BEGIN;\n")
for i in range(n):
    k = "key-%07d-%x" % (i, (i * 2654435761) & 0xffffffff)
    v = ("v%d;" % (i * 7)) * (1 + (i * 31) % 23)
    w("INSERT INTO kv(k, v, n) VALUES ('%s', '%s', %d);\n" % (k, v, (i * 7919) % 10007))
w("COMMIT;\n")
w("""CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL);
WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 200000)
INSERT INTO t(a, b, c) SELECT (x * 7919) % 100003, printf('%08d-%s', (x * 104729) % 1000003,
    substr('abcdefghijklmnopqrstuvwxyz', 1 + x % 26, 1 + x % 17)), x * 0.5 FROM r;
CREATE INDEX t_a ON t(a);
CREATE INDEX t_b ON t(b);
CREATE INDEX kv_n ON kv(n);
UPDATE t SET b = b || '-u' WHERE a % 5 = 0;
DELETE FROM t WHERE a % 11 = 3;
SELECT count(*), sum(a), sum(length(b)), total(c) FROM t;
SELECT a % 13, count(*), min(b), max(b) FROM t GROUP BY a % 13 ORDER BY 1;
SELECT b FROM t ORDER BY b DESC LIMIT 3;
SELECT count(*), sum(length(kv.v)) FROM kv JOIN t ON t.a = kv.n;
SELECT length(group_concat(k, ',')) FROM (SELECT k FROM kv ORDER BY v, k);
SELECT n, count(*) FROM kv GROUP BY n ORDER BY count(*) DESC, n LIMIT 3;
VACUUM;
SELECT count(*) FROM t WHERE b LIKE '%-u';
""")
