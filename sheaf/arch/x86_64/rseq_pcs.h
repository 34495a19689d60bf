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
 * into slots above a sheaf's size (push) or into the caller's registers, which a redo rewrites.
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

/* Results of the sections; the fast paths hand them to the slow path as `why`. */
enum sa_pcs_why {
	SA_WHY_EMPTY = 1, /* pop: main empty */
	SA_WHY_FULL,	  /* push: main full */
	SA_WHY_UNREG,	  /* not registered / fallback mode */
	SA_WHY_STOPPED,	  /* a remote thread owns the slot */
	SA_WHY_FOLD,	  /* the sheaf's op counter needs folding into the stats */
	SA_WHY_REMOTE,	  /* push: the object's node is not this CPU's */
	SA_WHY_WRONGNODE, /* xchg: the new sheaf's node is not this CPU's */
	SA_WHY_RETRY,	  /* swap: main changed meanwhile, just retry the fast path */
	SA_WHY_NOSPARE,	  /* swap: spare cannot help */
};

/*
 * Pop: obj = main->objects[size - 1]; commit main->state = state + (2^32 - 1), i.e. size - 1 and
 * ops + 1 in one 64-bit store. A negative result (ops reached 2^31) goes to fold before commit.
 */
static inline __attribute__((always_inline)) void *sa_rseq_pop(struct sa_pcs_slot *tab, long off,
							       int *why)
{
	unsigned long t, st;
	struct sa_sheaf *sh;
	void *obj; /* holds the slot address until the object is loaded */
	asm volatile goto(SA_RSEQ_PROLOGUE_AS(obj) "movq 16(%[obj]), %[sh]\n\t"
						   "movq (%[sh]), %[st]\n\t"
						   "testl %k[st], %k[st]\n\t"
						   "jz %l[empty]\n\t"
						   "movl %k[st], %k[t]\n\t"
						   "movq 56(%[sh],%[t],8), %[obj]\n\t"
						   "movl $0xffffffff, %k[t]\n\t"
						   "addq %[t], %[st]\n\t"
						   "js %l[fold]\n\t"
						   "movq %[st], (%[sh])\n\t" /* commit */
			  SA_RSEQ_EPILOGUE
			  : [obj] "=&r"(obj), [t] "=&r"(t), [st] "=&r"(st), [sh] "=&r"(sh)
			  : [off] "r"(off), [tab] "r"(tab)
			  : "memory", "cc"
			  : unreg, stopped, empty, fold);
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
 * Push: main->objects[size] = obj (speculative: above size, invisible until the commit);
 * commit main->state = state + 2^32 + 1 (size + 1, ops + 1). The object's node must be the slot's.
 */
static inline __attribute__((always_inline)) int sa_rseq_push(struct sa_pcs_slot *tab, long off,
							      void *obj, int node)
{
	unsigned long idx, st; /* idx: the slot, then scratch once main is loaded */
	struct sa_sheaf *sh;
	asm volatile goto(SA_RSEQ_ARM_CPU(idx)
			  /* one compare checks stopped == 0 and node == the slot's node */
			  "cmpq %[key], (%[idx])\n\t"
			  "jne %l[remote]\n\t"
			  "movq 16(%[idx]), %[sh]\n\t"
			  "movq (%[sh]), %[st]\n\t"
			  "cmpl 8(%[sh]), %k[st]\n\t"
			  "jae %l[full]\n\t"
			  "movl %k[st], %k[idx]\n\t"
			  "movq %[obj], 64(%[sh],%[idx],8)\n\t"
			  "movabsq $0x100000001, %[idx]\n\t"
			  "addq %[idx], %[st]\n\t"
			  "js %l[fold]\n\t"
			  "movq %[st], (%[sh])\n\t" /* commit */
			  SA_RSEQ_EPILOGUE
			  : [idx] "=&r"(idx), [st] "=&r"(st), [sh] "=&r"(sh)
			  : [off] "r"(off), [tab] "r"(tab), [obj] "r"(obj),
			    [key] "r"((unsigned long)(unsigned)node << 32)
			  : "memory", "cc"
			  : unreg, remote, full, fold);
	return 0;
unreg:
	return SA_WHY_UNREG;
remote: /* or stopped: the slow path tells them apart */
	return SA_WHY_REMOTE;
full:
	return SA_WHY_FULL;
fold:
	return SA_WHY_FOLD;
}

/*
 * Swap main and spare when that serves the direction: for alloc (dir 0) when main is empty and
 * the spare has objects; for free (dir 1) when main is full and the spare has room.
 * Commit: one 16-byte store of {spare, main} over {main, spare}, which
 * an interrupt cannot split.
 */
static inline __attribute__((always_inline)) int sa_rseq_swap(struct sa_pcs_slot *tab, long off,
							      int dir)
{
	unsigned long idx, t;
	struct sa_sheaf *sh;
	__attribute__((vector_size(16))) long long x;
	if (dir == 0) {
		asm volatile goto(
			SA_RSEQ_PROLOGUE
			"movq 16(%[idx]), %[sh]\n\t"
			"cmpl $0, (%[sh])\n\t"
			"jne %l[retry]\n\t"
			"movq 24(%[idx]), %[sh]\n\t"
			"cmpl $0, (%[sh])\n\t"
			"je %l[nospare]\n\t"
			"movdqa 16(%[idx]), %[x]\n\t"
			"pshufd $0x4e, %[x], %[x]\n\t"
			"movdqa %[x], 16(%[idx])\n\t" /* commit: main and spare swapped at once */
			SA_RSEQ_EPILOGUE
			: [idx] "=&r"(idx), [t] "=&r"(t), [sh] "=&r"(sh), [x] "=&x"(x)
			: [off] "r"(off), [tab] "r"(tab)
			: "memory", "cc"
			: unreg, stopped, retry, nospare);
	} else {
		unsigned long st;
		asm volatile goto(
			SA_RSEQ_PROLOGUE
			"movq 16(%[idx]), %[sh]\n\t"
			"movl (%[sh]), %k[st]\n\t"
			"cmpl 8(%[sh]), %k[st]\n\t"
			"jb %l[retry]\n\t"
			"movq 24(%[idx]), %[sh]\n\t"
			"movl (%[sh]), %k[st]\n\t"
			"cmpl 8(%[sh]), %k[st]\n\t"
			"jae %l[nospare]\n\t"
			"movdqa 16(%[idx]), %[x]\n\t"
			"pshufd $0x4e, %[x], %[x]\n\t"
			"movdqa %[x], 16(%[idx])\n\t" /* commit: main and spare swapped at once */
			SA_RSEQ_EPILOGUE
			:
			[idx] "=&r"(idx), [t] "=&r"(t), [sh] "=&r"(sh), [st] "=&r"(st), [x] "=&x"(x)
			: [off] "r"(off), [tab] "r"(tab)
			: "memory", "cc"
			: unreg, stopped, retry, nospare);
	}
	return 0;
unreg:
	return SA_WHY_UNREG;
stopped:
	return SA_WHY_STOPPED;
retry:
	return SA_WHY_RETRY;
nospare:
	return SA_WHY_NOSPARE;
}

/*
 * Exchange main (which 0) or spare (which 1) of this CPU's slot for `nw`, handing the old sheaf
 * to the caller, who owns it from the commit on. node >= 0 must equal the slot's node.
 * Commit: the store of nw into the slot.
 */
static inline __attribute__((always_inline)) int sa_rseq_xchg(struct sa_pcs_slot *tab, long off,
							      unsigned which, struct sa_sheaf *nw,
							      int node, struct sa_sheaf **oldp)
{
	unsigned long idx, t;
	struct sa_sheaf *old;
	asm volatile goto(SA_RSEQ_PROLOGUE "cmpl $-1, %k[node]\n\t"
					   "je .Lsa_any%=\n\t"
					   "cmpl %k[node], 4(%[idx])\n\t"
					   "jne %l[wrongnode]\n\t"
					   ".Lsa_any%=:\n\t"
					   "movq 16(%[idx],%[which],8), %[old]\n\t"
					   "movq %[nw], 16(%[idx],%[which],8)\n\t" /* commit */
			  SA_RSEQ_EPILOGUE
			  : [idx] "=&r"(idx), [t] "=&r"(t), [old] "=&r"(old)
			  : [off] "r"(off), [tab] "r"(tab), [nw] "r"(nw), [node] "r"(node),
			    [which] "r"((unsigned long)which)
			  : "memory", "cc"
			  : unreg, stopped, wrongnode);
	*oldp = old;
	return 0;
unreg:
	return SA_WHY_UNREG;
stopped:
	return SA_WHY_STOPPED;
wrongnode:
	return SA_WHY_WRONGNODE;
}

#endif
