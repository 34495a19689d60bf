/*
 * sheaf/arch/x86_64/rseq_pcs.h — the rseq critical sections of the per-CPU layer (docs/design.md §3).
 *
 * Each section is one `asm goto`. Common shape:
 *   arm:    store the section's descriptor into rseq->rseq_cs (%fs:8(off))
 *   start:  read cpu_id (%fs:4(off)) inside the section; < 0: thread not registered (or fallback
 *           mode, whose area never registers) -> label unreg
 *           slot = tab + cpu * 64; slot->stopped != 0 -> label stopped (a remote thread owns it)
 *   ...     loads and speculative stores that are harmless if redone
 *   commit: exactly one store, the last instruction before post_commit
 *   abort:  in .text.unlikely, preceded by RSEQ_SIG; jumps back to arm, so all of it is redone.
 * Nothing before the commit is visible to another thread on this CPU except speculative stores
 * into slots above a sheaf's size (push), into the header state of the main sheaf (exchange: a
 * word nobody reads while the sheaf is main), or into the caller's registers; a redo rewrites
 * them all.
 * No function is called inside a section.
 */
#ifndef SA_RSEQ_PCS_X86_64_H
#define SA_RSEQ_PCS_X86_64_H

#include "alloc/internal.h"

#define SA_RSEQ_SIG 0x53053053

/* Section prologue: descriptor, arming, cpu and slot lookup, stop check. Leaves the slot in idx. */
#define SA_RSEQ_PROLOGUE SA_RSEQ_PROLOGUE_AS(idx)
#define SA_RSEQ_PROLOGUE_AS(idx)     \
	SA_RSEQ_ARM_CPU(idx)         \
	"cmpl $0, (%[" #idx "])\n\t" \
	"jne %l[stopped]\n\t"

/* Descriptor, arming, cpu and slot lookup; no stop check. */
#define SA_RSEQ_ARM_CPU(idx)                                               \
	".pushsection __rseq_cs, \"aw\"\n\t"                               \
	".balign 32\n\t"                                                   \
	".Lsa_cs%=:\n\t"                                                   \
	".long 0, 0\n\t"                                                   \
	".quad .Lsa_start%=, .Lsa_post%= - .Lsa_start%=, .Lsa_abort%=\n\t" \
	".popsection\n\t"                                                  \
	".pushsection __rseq_cs_ptr_array, \"aw\"\n\t"                     \
	".quad .Lsa_cs%=\n\t"                                              \
	".popsection\n\t"                                                  \
	".Lsa_arm%=:\n\t"                                                  \
	"leaq .Lsa_cs%=(%%rip), %[" #idx "]\n\t"                           \
	"movq %[" #idx "], %%fs:8(%[off])\n\t"                             \
	".Lsa_start%=:\n\t"                                                \
	"movl %%fs:4(%[off]), %k[" #idx "]\n\t"                            \
	"testl %k[" #idx "], %k[" #idx "]\n\t"                             \
	"js %l[unreg]\n\t"                                                 \
	"shlq $6, %[" #idx "]\n\t"                                         \
	"addq %[tab], %[" #idx "]\n\t"

#define SA_RSEQ_EPILOGUE                          \
	".Lsa_post%=:\n\t"                        \
	".pushsection .text.unlikely, \"ax\"\n\t" \
	".byte 0x0f, 0xb9, 0x3d\n\t"              \
	".long 0x53053053\n\t"                    \
	".Lsa_abort%=:\n\t"                       \
	"jmp .Lsa_arm%=\n\t"                      \
	".popsection\n\t"

/*
 * GCC before 14 can miscompile an `asm goto` with outputs (GCC bug 113921: seen here at -O1 with
 * gcc 12, sa_pcs_fold reached with a NULL sheaf); an empty volatile asm after each one, as the
 * Linux kernel does, keeps the compiler from merging across it. No instruction is emitted.
 */
#define SA_ASM_GOTO_OUTPUT_FIX() asm volatile("")

/* Results of the sections; the fast paths hand them to the slow path as `why`. */
enum sa_pcs_why {
	SA_WHY_EMPTY = 1, /* pop: main empty */
	SA_WHY_FULL,	  /* push: main full */
	SA_WHY_UNREG,	  /* not registered / fallback mode */
	SA_WHY_STOPPED,	  /* a remote thread owns the slot */
	SA_WHY_FOLD,	  /* the main's op counter (in the slot's top) needs folding */
	SA_WHY_REMOTE,	  /* push: the object's node is not this CPU's */
	SA_WHY_WRONGNODE, /* xchg: the new sheaf's node is not this CPU's */
	SA_WHY_RETRY,	  /* just retry the fast path */
	SA_WHY_NOSPARE,	  /* slow path: the spare cannot help */
	SA_WHY_DOUBLE,	  /* push: the object is the last one pushed (a double free) */
};

/*
 * Pop: obj = top[-1] (the guard below objects[0] means empty); commit slot->top = top - 8 with
 * ops + 1, one 64-bit store. A negative result (ops reached 2^15) goes to fold before commit.
 * Only the slot's line and the object array's line are read.
 */
static inline __attribute__((always_inline)) void *sa_rseq_pop(struct sa_pcs_slot *tab, long off,
							       int *why)
{
	unsigned long idx, t, st;
	void *obj;
	asm volatile goto(SA_RSEQ_PROLOGUE "movq 16(%[idx]), %[st]\n\t"
					   "movabsq $0xffffffffffff, %[t]\n\t"
					   "andq %[st], %[t]\n\t"
					   "movq -8(%[t]), %[obj]\n\t"
					   "cmpq $1, %[obj]\n\t"
					   "je %l[empty]\n\t"
					   "movabsq $0xfffffffffff8, %[t]\n\t"
					   "addq %[t], %[st]\n\t"
					   "js %l[fold]\n\t"
					   "movq %[st], 16(%[idx])\n\t" /* commit */
			  SA_RSEQ_EPILOGUE
			  : [idx] "=&r"(idx), [t] "=&r"(t), [st] "=&r"(st), [obj] "=&r"(obj)
			  : [off] "r"(off), [tab] "r"(tab)
			  : "memory", "cc"
			  : unreg, stopped, empty, fold);
	SA_ASM_GOTO_OUTPUT_FIX();
	if (obj == NULL) /* objects are never NULL: lets callers drop their test */
		__builtin_unreachable();
	return obj;
unreg:
	*why = SA_WHY_UNREG;
	return NULL;
stopped:
	*why = SA_WHY_STOPPED;
	return NULL;
empty:
	*why = SA_WHY_EMPTY;
	return NULL;
fold:
	*why = SA_WHY_FOLD;
	return NULL;
}

/*
 * Push: *top = obj (speculative: above size, invisible until the commit), unless *top is the
 * guard at objects[capacity] (full) or top[-1] is obj itself (freed twice in a row: reported by
 * the slow path, never pushed twice); commit slot->top = top + 8 with ops + 1. The object's node
 * must be the slot's.
 */
static inline __attribute__((always_inline)) int sa_rseq_push(struct sa_pcs_slot *tab, long off,
							      void *obj, int node)
{
	unsigned long idx, t, st;
	asm volatile goto(SA_RSEQ_ARM_CPU(idx)
			  /* one compare checks stopped == 0 and node == the slot's node */
			  "cmpq %[key], (%[idx])\n\t"
			  "jne %l[remote]\n\t"
			  "movq 16(%[idx]), %[st]\n\t"
			  "movabsq $0xffffffffffff, %[t]\n\t"
			  "andq %[st], %[t]\n\t"
			  /* the last object pushed again: a double free (the guard below objects[0]
			   * never equals an object); before the full test, so that a full sheaf's
			   * top is checked too */
			  "cmpq %[obj], -8(%[t])\n\t"
			  "je %l[dfree]\n\t"
			  "cmpq $1, (%[t])\n\t"
			  "je %l[full]\n\t"
			  "movq %[obj], (%[t])\n\t"
			  "movabsq $0x1000000000008, %[t]\n\t"
			  "addq %[t], %[st]\n\t"
			  "js %l[fold]\n\t"
			  "movq %[st], 16(%[idx])\n\t" /* commit */
			  SA_RSEQ_EPILOGUE
			  : [idx] "=&r"(idx), [t] "=&r"(t), [st] "=&r"(st)
			  : [off] "r"(off), [tab] "r"(tab), [obj] "r"(obj),
			    [key] "r"((unsigned long)(unsigned)node << 32)
			  : "memory", "cc"
			  : unreg, remote, full, fold, dfree);
	SA_ASM_GOTO_OUTPUT_FIX();
	return 0;
unreg:
	return SA_WHY_UNREG;
remote: /* or stopped: the slow path tells them apart */
	return SA_WHY_REMOTE;
full:
	return SA_WHY_FULL;
fold:
	return SA_WHY_FOLD;
dfree:
	return SA_WHY_DOUBLE;
}

/*
 * Exchange main for `nw` (whose top word is nwtop), handing the old main to the caller, who owns
 * it from the commit on. Before the commit the old main's state word is written back into its
 * header from the slot's top (size = (top - objects) / 8, ops = top >> 48), a speculative store:
 * while the sheaf is main nobody reads that word, and a redo writes it again. The sentinel is
 * never written. node >= 0 must equal the slot's node.
 * Commit: one 16-byte store of {nwtop, nw} over {top, main}.
 */
static inline __attribute__((always_inline)) int
sa_rseq_xchg_main(struct sa_pcs_slot *tab, long off, struct sa_sheaf *nw, uint64_t nwtop, int node,
		  struct sa_sheaf *sentinel, struct sa_sheaf **oldp)
{
	unsigned long idx, t, u;
	struct sa_sheaf *old;
	__attribute__((vector_size(16))) long long x = {(long long)nwtop, (long long)nw};
	asm volatile goto(
		SA_RSEQ_PROLOGUE "cmpl $-1, %k[node]\n\t"
				 "je .Lsa_any%=\n\t"
				 "cmpl %k[node], 4(%[idx])\n\t"
				 "jne %l[wrongnode]\n\t"
				 ".Lsa_any%=:\n\t"
				 "movq 24(%[idx]), %[old]\n\t"
				 "cmpq %[sent], %[old]\n\t"
				 "je .Lsa_nowb%=\n\t"
				 "movq 16(%[idx]), %[t]\n\t"
				 "movq %[t], %[u]\n\t"
				 "shrq $48, %[u]\n\t"
				 "shlq $32, %[u]\n\t" /* ops << 32 */
				 "shlq $16, %[t]\n\t"
				 "shrq $16, %[t]\n\t"
				 "subq %[old], %[t]\n\t"
				 "subq $56, %[t]\n\t"
				 "shrq $3, %[t]\n\t" /* size */
				 "orq %[u], %[t]\n\t"
				 "movq %[t], (%[old])\n\t" /* write back */
				 ".Lsa_nowb%=:\n\t"
				 "movdqa %[x], 16(%[idx])\n\t" /* commit */
		SA_RSEQ_EPILOGUE
		: [idx] "=&r"(idx), [t] "=&r"(t), [u] "=&r"(u), [old] "=&r"(old)
		: [off] "r"(off), [tab] "r"(tab), [x] "x"(x), [node] "r"(node), [sent] "r"(sentinel)
		: "memory", "cc"
		: unreg, stopped, wrongnode);
	SA_ASM_GOTO_OUTPUT_FIX();
	*oldp = old;
	return 0;
unreg:
	return SA_WHY_UNREG;
stopped:
	return SA_WHY_STOPPED;
wrongnode:
	return SA_WHY_WRONGNODE;
}

/*
 * Exchange the spare for `nw`, handing the old spare to the caller, who owns it from the commit
 * on. node >= 0 must equal the slot's node. Commit: the store of nw into the slot.
 */
static inline __attribute__((always_inline)) int sa_rseq_xchg_spare(struct sa_pcs_slot *tab,
								    long off, struct sa_sheaf *nw,
								    int node,
								    struct sa_sheaf **oldp)
{
	unsigned long idx;
	struct sa_sheaf *old;
	asm volatile goto(SA_RSEQ_PROLOGUE "cmpl $-1, %k[node]\n\t"
					   "je .Lsa_any%=\n\t"
					   "cmpl %k[node], 4(%[idx])\n\t"
					   "jne %l[wrongnode]\n\t"
					   ".Lsa_any%=:\n\t"
					   "movq 32(%[idx]), %[old]\n\t"
					   "movq %[nw], 32(%[idx])\n\t" /* commit */
			  SA_RSEQ_EPILOGUE
			  : [idx] "=&r"(idx), [old] "=&r"(old)
			  : [off] "r"(off), [tab] "r"(tab), [nw] "r"(nw), [node] "r"(node)
			  : "memory", "cc"
			  : unreg, stopped, wrongnode);
	SA_ASM_GOTO_OUTPUT_FIX();
	*oldp = old;
	return 0;
unreg:
	return SA_WHY_UNREG;
stopped:
	return SA_WHY_STOPPED;
wrongnode:
	return SA_WHY_WRONGNODE;
}

/*
 * RCU push: obj into this CPU's rcu sheaf (slot->rcu, offset 40), whose size lives in its own
 * header (low 32 bits of the state word): objects[size] = obj (speculative: above size), then
 * commit the 32-bit store of size + 1. The sentinel (capacity 0) is always full. No node check:
 * an rcu sheaf holds objects of any node (they are freed with sa_free after the grace period).
 */
static inline __attribute__((always_inline)) int sa_rseq_rcu_push(struct sa_pcs_slot *tab, long off,
								  void *obj)
{
	unsigned long idx, sh, n;
	asm volatile goto(SA_RSEQ_PROLOGUE "movq 40(%[idx]), %[sh]\n\t"
					   "movl (%[sh]), %k[n]\n\t"
					   "cmpl 8(%[sh]), %k[n]\n\t"
					   "jae %l[full]\n\t"
					   "movq %[obj], 56(%[sh],%[n],8)\n\t"
					   "addl $1, %k[n]\n\t"
					   "movl %k[n], (%[sh])\n\t" /* commit */
			  SA_RSEQ_EPILOGUE
			  : [idx] "=&r"(idx), [sh] "=&r"(sh), [n] "=&r"(n)
			  : [off] "r"(off), [tab] "r"(tab), [obj] "r"(obj)
			  : "memory", "cc"
			  : unreg, stopped, full);
	SA_ASM_GOTO_OUTPUT_FIX();
	return 0;
unreg:
	return SA_WHY_UNREG;
stopped:
	return SA_WHY_STOPPED;
full:
	return SA_WHY_FULL;
}

/*
 * Exchange the rcu sheaf for `nw`, handing the old one to the caller, who owns it from the
 * commit on. Commit: the store of nw into slot->rcu.
 */
static inline __attribute__((always_inline)) int
sa_rseq_xchg_rcu(struct sa_pcs_slot *tab, long off, struct sa_sheaf *nw, struct sa_sheaf **oldp)
{
	unsigned long idx;
	struct sa_sheaf *old;
	asm volatile goto(SA_RSEQ_PROLOGUE "movq 40(%[idx]), %[old]\n\t"
					   "movq %[nw], 40(%[idx])\n\t" /* commit */
			  SA_RSEQ_EPILOGUE
			  : [idx] "=&r"(idx), [old] "=&r"(old)
			  : [off] "r"(off), [tab] "r"(tab), [nw] "r"(nw)
			  : "memory", "cc"
			  : unreg, stopped);
	SA_ASM_GOTO_OUTPUT_FIX();
	*oldp = old;
	return 0;
unreg:
	return SA_WHY_UNREG;
stopped:
	return SA_WHY_STOPPED;
}

/*
 * Take the spare out if it serves direction dir: for alloc (dir 0) if it has objects, for free
 * (dir 1) if it has room (the sentinel does neither). The caller owns it from the commit on.
 * Commit: the store of the sentinel into spare.
 */
static inline __attribute__((always_inline)) int sa_rseq_take_spare(struct sa_pcs_slot *tab,
								    long off, int dir,
								    struct sa_sheaf *sentinel,
								    struct sa_sheaf **oldp)
{
	unsigned long idx, t;
	struct sa_sheaf *sp;
	if (dir == 0) {
		asm volatile goto(SA_RSEQ_PROLOGUE "movq 32(%[idx]), %[sp]\n\t"
						   "cmpl $0, (%[sp])\n\t"
						   "je %l[nospare]\n\t"
						   "movq %[sent], 32(%[idx])\n\t" /* commit */
				  SA_RSEQ_EPILOGUE
				  : [idx] "=&r"(idx), [sp] "=&r"(sp)
				  : [off] "r"(off), [tab] "r"(tab), [sent] "r"(sentinel)
				  : "memory", "cc"
				  : unreg, stopped, nospare);
		SA_ASM_GOTO_OUTPUT_FIX();
	} else {
		asm volatile goto(SA_RSEQ_PROLOGUE "movq 32(%[idx]), %[sp]\n\t"
						   "movl (%[sp]), %k[t]\n\t"
						   "cmpl 8(%[sp]), %k[t]\n\t"
						   "jae %l[nospare]\n\t"
						   "movq %[sent], 32(%[idx])\n\t" /* commit */
				  SA_RSEQ_EPILOGUE
				  : [idx] "=&r"(idx), [sp] "=&r"(sp), [t] "=&r"(t)
				  : [off] "r"(off), [tab] "r"(tab), [sent] "r"(sentinel)
				  : "memory", "cc"
				  : unreg, stopped, nospare);
		SA_ASM_GOTO_OUTPUT_FIX();
	}
	*oldp = sp;
	return 0;
unreg:
	return SA_WHY_UNREG;
stopped:
	return SA_WHY_STOPPED;
nospare:
	return SA_WHY_NOSPARE;
}

#endif
