/* The persistent thread pool of a compiled graph: workers, and column
 * mode's barrier. */
#include <sched.h>
#include <stdlib.h>
#include <time.h>

#include "compiled.h"
#include "jit_test.h"

/* ---- threads ------------------------------------------------------------- */

typedef struct worker_arg {
    pool *p;
    int idx;
} worker_arg;

/* How long a thread spins before it sleeps, waiting for the next call
 * (a worker) or for the workers to finish one (the caller). Waking a
 * sleeping thread takes a futex and, in a VM, an interrupt to a halted
 * vCPU: on a 2-vCPU KVM guest (Zen 3) two threads ran a 1024-wide MLP at
 * batch 1 (~330 us a call) 0.8x one thread when both sides slept, while
 * oneDNN and XNNPACK, whose pools spin, ran 1.6-1.8x. A caller calling
 * again within this time finds the workers awake; one that does not costs
 * a worker this much CPU once. */
#define SPIN_NS 200000

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* One spin-wait's budget: spin_more pauses once and says whether the wait
 * may go on. Every 64 pauses it reads the clock and yields: the scheduler
 * sometimes wakes a worker on its caller's CPU (the bench's two-thread
 * cells saw a third to a half of the calls so), and then a spin that never
 * yields holds the thread it waits for off the CPU until its budget ends,
 * 0.2 ms a wait. */
typedef struct spin {
    int64_t t0, budget_ns;
    unsigned i;
} spin;

static spin spin_start(const pool *p) {
    return (spin){now_ns(), atomic_load_explicit(&p->spin_ns, memory_order_relaxed), 0};
}

static bool spin_more(spin *s) {
    if (s->budget_ns <= 0) return false;
    cpu_relax();
    if (++s->i % 64 != 0) return true;
    sched_yield();
    return now_ns() - s->t0 <= s->budget_ns;
}

/* Spins while *v == old, within the budget; true if it changed. */
static bool spin_while_equal(const pool *p, _Atomic uint64_t *v, uint64_t old) {
    for (spin s = spin_start(p); atomic_load_explicit(v, memory_order_acquire) == old;)
        if (!spin_more(&s)) return false;
    return true;
}

bool mj_pool_spin_until_zero(const pool *p, atomic_int *v) {
    for (spin s = spin_start(p); atomic_load_explicit(v, memory_order_acquire) != 0;)
        if (!spin_more(&s)) return false;
    return true;
}

/* The mutex is held for a few instructions at a time (publishing or reading
 * a call's parts), so a thread that finds it taken spins instead of
 * sleeping on it at once: a spinning worker sees a call's gen change while
 * the caller still holds mu, and glibc's mutex put it to sleep there, to
 * be woken by the unlock, on 5% of the calls of a 1024-wide MLP at batch 1
 * (2-vCPU KVM guest, Zen 4). Waking a thread costs a futex and, on a halted
 * vCPU, an interrupt: the worker then started its share late. */
void mj_pool_lock(const pool *p, pthread_mutex_t *mu) {
    if (pthread_mutex_trylock(mu) == 0) return;
    for (spin s = spin_start(p); pthread_mutex_trylock(mu) != 0;)
        if (!spin_more(&s)) {
            pthread_mutex_lock(mu);
            return;
        }
}

/* Relaxed claims: the call's publication under mu ordered its buffers, and
 * pending's decrement orders the outputs for the caller. */
void mj_pool_run_row_chunks(pool *p, int idx, const float *const *leaves) {
    const mj_compiled *c = p->c;
    part *pt = &p->parts[idx];
    for (;;) {
        int k = atomic_fetch_add_explicit(&p->next_chunk, 1, memory_order_relaxed);
        if (k >= p->n_chunks) return;
        int64_t r0 = p->batch * k / p->n_chunks, r1 = p->batch * (k + 1) / p->n_chunks;
        for (int i = 0; i < c->n_in; i++) pt->x[i] = p->x[i] + r0 * c->in_rows[i];
        for (int j = 0; j < c->n_out; j++) pt->y[j] = p->y[j] + r0 * c->out_rows[j];
        c->fn(leaves, (const float *const *)pt->x, pt->y, r1 - r0, pt->scratch, 0, 1, &p->sync);
    }
}

/* A worker that starts its share on its caller's CPU moves off it.
 * The scheduler sometimes wakes a worker there (a third to a half of the
 * calls of the bench's two-thread cells once), and then the two threads
 * share one CPU: on a 2-vCPU KVM guest (Zen 4) a 1024-wide MLP at batch 4
 * and 8 ran about ten calls in a row at 2.7-3.2x a split call's time, the worker
 * starting 0.2-0.3 ms late, before the load balancer, which leaves threads
 * that just ran where they are, moved one. Excluding the caller's CPU from
 * the worker's affinity moves it at once; the old mask, put back at once,
 * keeps it where it landed and leaves the user's choice of CPUs as it was.
 * Nothing moves when the mask allows no other CPU, or on a failure. */
static void move_off_cpu(pool *p, int cpu) {
    cpu_set_t mask, others;
    if (sched_getaffinity(0, sizeof mask, &mask) != 0 || !CPU_ISSET(cpu, &mask)) return;
    others = mask;
    CPU_CLR(cpu, &others);
    if (CPU_COUNT(&others) == 0 || sched_setaffinity(0, sizeof others, &others) != 0) return;
    bool moved = sched_getcpu() != cpu;
    (void)sched_setaffinity(0, sizeof mask, &mask);
    if (moved) atomic_fetch_add_explicit(&p->moves, 1, memory_order_relaxed);
}

static void *worker_main(void *arg) {
    pool *p = ((worker_arg *)arg)->p;
    int idx = ((worker_arg *)arg)->idx;
    free(arg);
    uint64_t seen = 0;
    for (;;) {
        spin_while_equal(p, &p->gen, seen);
        mj_pool_lock(p, &p->mu);
        while (!p->quit && atomic_load(&p->gen) == seen) pthread_cond_wait(&p->work, &p->mu);
        if (p->quit) break;
        seen = atomic_load(&p->gen);
        bool mine = idx < p->n_parts, by_rows = p->by_rows;
        part pt = mine ? p->parts[idx] : (part){0};
        const float *const *leaves = p->leaves;
        int caller_cpu = atomic_load_explicit(&p->caller_cpu, memory_order_relaxed);
        pthread_mutex_unlock(&p->mu);
        if (!mine) continue;
        if (caller_cpu >= 0 && sched_getcpu() == caller_cpu) {
            atomic_fetch_add_explicit(&p->colocated, 1, memory_order_relaxed);
            move_off_cpu(p, caller_cpu);
        }
        if (by_rows) mj_pool_run_row_chunks(p, idx, leaves);
        else p->c->fn(leaves, (const float *const *)pt.x, pt.y, pt.rows, pt.use, pt.tid, pt.nth, &p->sync);
        /* The caller may be asleep on done: signal under mu, after the
         * decrement, so that it cannot miss it. It says so before it checks
         * pending (both sequentially consistent): either it sees this
         * decrement, or this sees its flag. Locking mu on every call made
         * the caller's next call wait for it. */
        atomic_store_explicit(&p->worker_cpu, sched_getcpu(), memory_order_relaxed);
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_sleeps)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* The column-mode barrier (mj_body_sync): the last thread to arrive
 * starts the next phase; the others spin on it, yielding now and then (a
 * VM may have descheduled the thread they wait for). acq_rel on arrival
 * and release/acquire on the phase make each op's writes visible to the
 * next op on every thread. */
static void sync_wait(mj_body_sync *s, void *y, void *scratch) {
    (void)y, (void)scratch;
    unsigned phase = atomic_load_explicit(&s->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&s->arrived, 1, memory_order_acq_rel) == s->n - 1) {
        atomic_store_explicit(&s->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&s->next, 0, memory_order_relaxed);
        atomic_store_explicit(&s->phase, phase + 1, memory_order_release);
        return;
    }
    for (unsigned i = 1; atomic_load_explicit(&s->phase, memory_order_acquire) == phase; i++) {
        cpu_relax();
        if (i % 1024 == 0) sched_yield();
    }
}

/* Relaxed: the barrier after the op orders the work itself. */
static int64_t sync_claim(mj_body_sync *s, int64_t n) {
    return atomic_fetch_add_explicit(&s->next, n, memory_order_relaxed);
}

void mj_compiled_pool_free(pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++) pthread_join(p->th[i], NULL);
    if (p->parts)
        for (int i = 0; i < p->n; i++) {
            if (p->parts[i].scratch) free(p->parts[i].scratch - 16);
            free(p->parts[i].x);
            free(p->parts[i].y);
        }
    free(p->parts);
    free(p->th);
    pthread_mutex_destroy(&p->busy);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    free(p);
}

mj_status mj_compiled_pool_new(mj_compiled *c, int n, pool **out) {
    pool *p = mj_alloc(sizeof *p);
    if (!p) return MJ_ERR_NOMEM;
    p->c = c;
    p->n = n;
    atomic_init(&p->spin_ns, SPIN_NS);
    atomic_init(&p->caller_cpu, -1);
    atomic_init(&p->worker_cpu, -1);
    p->sync.wait = sync_wait;
    p->sync.claim = sync_claim;
    p->th = mj_alloc_array((size_t)n, sizeof *p->th);
    p->parts = mj_alloc_array((size_t)n, sizeof *p->parts);
    bool ok = p->th && p->parts;
    for (int i = 0; ok && i < n; i++) {
        p->parts[i].x = mj_alloc_array((size_t)c->n_in, sizeof *p->parts[i].x);
        p->parts[i].y = mj_alloc_array((size_t)c->n_out, sizeof *p->parts[i].y);
        ok = p->parts[i].x && p->parts[i].y;
    }
    if (!ok || pthread_mutex_init(&p->busy, NULL) || pthread_mutex_init(&p->mu, NULL) ||
        pthread_cond_init(&p->work, NULL) || pthread_cond_init(&p->done, NULL)) {
        if (p->parts)
            for (int i = 0; i < n; i++) {
                free(p->parts[i].x);
                free(p->parts[i].y);
            }
        free(p->th);
        free(p->parts);
        free(p);
        return mj_fail(MJ_ERR_NOMEM, "jit: cannot create a thread pool of %d threads", n);
    }
    for (int i = 1; i < n; i++) {
        worker_arg *a = mj_alloc(sizeof *a);
        if (!a) break;
        *a = (worker_arg){p, i};
        if (pthread_create(&p->th[p->started], NULL, worker_main, a) != 0) {
            free(a);
            break;
        }
        p->started++;
    }
    if (p->started != n - 1) {
        mj_compiled_pool_free(p);
        return mj_fail(MJ_ERR_NOMEM, "jit: cannot start %d worker threads", n - 1);
    }
    *out = p;
    return MJ_OK;
}

mj_pool_placement mj_compiled_pool_placement_for_tests(const mj_compiled *c) {
    if (!c || !c->pool) return (mj_pool_placement){0, 0, -1};
    return (mj_pool_placement){atomic_load(&c->pool->colocated), atomic_load(&c->pool->moves),
                               atomic_load(&c->pool->worker_cpu)};
}

void mj_compiled_pool_spin_for_tests(mj_compiled *c, int64_t ns) {
    if (c && c->pool) atomic_store_explicit(&c->pool->spin_ns, ns, memory_order_relaxed);
}
