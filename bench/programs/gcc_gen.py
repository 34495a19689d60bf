"""bench/programs/gcc_gen.py — a generated C translation unit for the gcc workload of bench/programs.sh.

usage: gcc_gen.py FUNCS > big.c
FUNCS functions of loops, switches, struct arithmetic and calls to each other (inlining and
interprocedural work for -O2), plus tables; fixed seed, so the file and the object file gcc
makes from it are the same on every run.
"""
import random
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
rng = random.Random(777)
w = sys.stdout.write
w("#include <stddef.h>\n#include <string.h>\n\n")
w("struct s { int a, b; long c; unsigned char buf[32]; struct s *next; };\n")
w("static inline int mix(int a, int b) { return (a * 31) ^ (b >> 3) ^ (a + b); }\n\n")
for i in range(n):
    w("static const int tab%d[%d] = {%s};\n" % (i, 16, ", ".join(str(rng.randrange(1000)) for _ in range(16))))
for i in range(n):
    w("__attribute__((noinline)) long f%d(struct s *p, int n)\n{\n\tlong acc = %d;\n" % (i, i))
    w("\tfor (int i = 0; i < n; i++) {\n")
    w("\t\tswitch ((i + p->a) & 7) {\n")
    for c in range(8):
        op = rng.choice(["acc += mix(p->a, i) * %d;" % rng.randrange(1, 9),
                         "acc ^= tab%d[(i + %d) & 15];" % (i, c),
                         "p->buf[(i + %d) & 31] += (unsigned char)acc;" % c,
                         "acc -= p->c >> %d;" % rng.randrange(1, 7),
                         "if (p->next) acc += p->next->b * %d;" % rng.randrange(1, 5)])
        w("\t\tcase %d: %s break;\n" % (c, op))
    w("\t\t}\n\t\tif (acc > %d) acc = acc / 3 + p->b;\n\t}\n" % rng.randrange(10000, 1000000))
    for j in range(3):
        if i > 0:
            k = rng.randrange(i)
            w("\tif (n > %d) acc += f%d(p, n - %d);\n" % (j + 1, k, j + 1))
    w("\tfor (size_t k = 0; k < sizeof(p->buf); k++)\n\t\tacc += p->buf[k] * (long)(k + %d);\n" % i)
    w("\tp->c = acc;\n\treturn acc + p->a * %d;\n}\n\n" % rng.randrange(100))
w("long (*const all_funcs[])(struct s *, int) = {%s};\n" % ", ".join("f%d" % i for i in range(n)))
