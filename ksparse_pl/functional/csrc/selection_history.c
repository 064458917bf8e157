/* When each unit was selected before, and the sensitivity factors that follow: Cottonwood's sensitivity on
 * CPU.  Built with topk_rows.c by ksparse_pl/functional/native.py; wrapped by
 * ksparse_pl/functional/native_history.py.
 *
 * A sensitivity factor depends on how long its unit sat idle, i.e. on the sample of the unit's previous
 * selection.  torch finds it by sorting the B*k (sample, unit) pairs by unit; pairs that come in sample
 * order (as a top-k layer produces them) need only one pass that remembers each unit's latest sample.
 */
#include <stdint.h>
#include <stdlib.h>

#include "threads.h"

/* A pair's work in the elementwise operations that threads_for counts: a checked, dependent lookup and a few
 * float32 operations. */
#define PAIR_WORK 8
/* The fewest pairs per unit in a chunk of ksparse_sensitivity_step (below). */
#define PAIRS_PER_UNIT 4

/* previous[p] = the sample of the last pair before p with the same unit, -1 if none, for pairs given in
 * nondecreasing sample order.  Returns 0 on success, 1 if a unit lies outside [0, n), 2 if the samples
 * decrease somewhere (the caller then sorts), 3 if the work array could not be allocated. */
int ksparse_previous_selection(const int64_t *samples, const int64_t *units, int64_t pairs, int64_t n,
                               int64_t *previous) {
    int64_t *last = malloc((n > 0 ? n : 1) * sizeof(int64_t));
    if (!last) return 3;
    for (int64_t u = 0; u < n; u++) last[u] = -1;
    int status = 0;
    for (int64_t p = 0; p < pairs; p++) {
        int64_t s = samples[p], u = units[p];
        if ((uint64_t)u >= (uint64_t)n) {
            status = 1;
            break;
        }
        if (p > 0 && s < samples[p - 1]) {
            status = 2;
            break;
        }
        previous[p] = last[u];
        last[u] = s;
    }
    free(last);
    return status;
}

/* Cottonwood's sensitivity after `idle` unselected samples from s0: s_max - (s_max - s0) * decay[idle],
 * decay[i] being (1 - 1/tau)^i.  The float32 operations of ksparse_pl.functional.idle_sensitivity one by one,
 * with no fused multiply-add (native.py compiles with -ffp-contract=off). */
static inline float idle_sensitivity(float s0, int64_t idle, const float *decay, float s_max) {
    return s_max - (s_max - s0) * decay[idle];
}

/* Cottonwood's sensitivity factor of every pair, given its previous selection (previous[p], from the function
 * above or from sorting): after an earlier selection in the batch the unit restarts from 1 and has been idle
 * samples[p] - previous[p] - 1 samples, else it starts from sensitivity[units[p]] and has been idle
 * samples[p] samples; decay has an entry for every i in [0, batch).  One pass instead of about a dozen torch
 * operations over the pairs.  Returns 0 on success, 1 if a sample lies outside [0, batch) or a unit outside
 * [0, n). */
int ksparse_sensitivity_factors(const int64_t *samples, const int64_t *units, const int64_t *previous, int64_t pairs,
                                const float *sensitivity, int64_t n, const float *decay, int64_t batch, float s_max,
                                float *factors) {
    for (int64_t p = 0; p < pairs; p++) {
        int64_t s = samples[p], u = units[p], before = previous[p];
        if ((uint64_t)s >= (uint64_t)batch || (uint64_t)u >= (uint64_t)n || before >= s) return 1;
        factors[p] = before >= 0 ? idle_sensitivity(1.0f, s - before - 1, decay, s_max)
                                 : idle_sensitivity(sensitivity[u], s, decay, s_max);
    }
    return 0;
}

/* ksparse_sensitivity_step's pairs [begin, end), whole samples, on one thread: the factor of every pair whose unit
 * was selected before in the chunk, and with initial (the state before the batch: the first chunk) of every pair.
 * Without it, the pairs that select their unit for the first time in the chunk go to first, for the caller (who
 * knows the selections before the chunk).  last[u] ends as the chunk's latest sample of unit u (-1: none).
 * Returns the status of the chunk's first bad pair (as ksparse_sensitivity_step), else 0. */
static int step_chunk(const int64_t *samples, const int64_t *units, int64_t begin, int64_t end, const float *initial,
                      int64_t n, const float *decay, int64_t batch, float s_max, float *factors, int64_t *last,
                      int64_t *first, int64_t *firsts) {
    for (int64_t u = 0; u < n; u++) last[u] = -1;
    int64_t f = 0;
    for (int64_t p = begin; p < end; p++) {
        int64_t s = samples[p], u = units[p];
        if ((uint64_t)s >= (uint64_t)batch || (uint64_t)u >= (uint64_t)n) return 1;
        if (p > 0 && s < samples[p - 1]) return 2;
        if (last[u] == s) return 4;
        if (last[u] >= 0) factors[p] = idle_sensitivity(1.0f, s - last[u] - 1, decay, s_max);
        else if (initial) factors[p] = idle_sensitivity(initial[u], s, decay, s_max);
        else first[f++] = p;
        last[u] = s;
    }
    *firsts = f;
    return 0;
}

/* The first pair at or after p that starts a sample (pairs if none): chunks of whole samples, so that a pair
 * listed twice falls in one chunk. */
static int64_t sample_start(const int64_t *samples, int64_t pairs, int64_t p) {
    while (p > 0 && p < pairs && samples[p] == samples[p - 1]) p++;
    return p;
}

/* A whole batch of pairs in nondecreasing sample order: every pair's factor (as ksparse_sensitivity_factors, each
 * unit's previous selection tracked on the way) and the state after the batch, after[u] (as
 * ksparse_pl.functional.sensitivity_after: idle since the unit's last selection, or since the batch began from
 * sensitivity[u]); decay has an entry for every i in [0, batch].  The pairs go to threads in chunks of whole
 * samples; then, chunk by chunk in order, the first selections of a unit in a chunk take their factors from the
 * unit's latest selection in the chunks before, with the same float32 operations whatever the thread count.
 * Returns 0 on success, 1 if a sample lies outside [0, batch) or a unit outside [0, n), 2 if the samples decrease
 * somewhere (the caller then sorts), 3 if the work arrays could not be allocated, 4 if a pair is listed twice;
 * the status of the first bad pair. */
int ksparse_sensitivity_step(const int64_t *samples, const int64_t *units, int64_t pairs, const float *sensitivity,
                             int64_t n, const float *decay, int64_t batch, float s_max, float *factors, float *after,
                             int threads) {
    /* Each chunk fills its own last array, and the first selections of the chunks after the first (up to n each)
     * are finished on one thread: with fewer than PAIRS_PER_UNIT * n pairs a chunk, two threads took longer than
     * one (1.2 times at 64 x 4096). */
    int chunks = threads_for(pairs * PAIR_WORK, threads);
    int64_t width = n > 0 ? n : 1, most = pairs / (PAIRS_PER_UNIT * width);
    if (chunks > most) chunks = most > 1 ? (int)most : 1;
    /* per chunk: its bounds, last (n), status and count of first selections; with chunks after the first, first
     * (pairs) in chunk order */
    int64_t listed = chunks > 1 ? pairs : 0;
    int64_t *work = malloc(((chunks + 1) + chunks * width + listed + 2 * chunks) * sizeof(int64_t));
    if (!work) return 3;
    int64_t *bounds = work, *last = bounds + chunks + 1, *first = last + chunks * width;
    int64_t *status = first + listed, *firsts = status + chunks;
    for (int c = 0; c <= chunks; c++) bounds[c] = sample_start(samples, pairs, pairs * c / chunks);
#ifdef _OPENMP
#pragma omp parallel for num_threads(chunks) schedule(static, 1) if (chunks > 1)
#endif
    for (int c = 0; c < chunks; c++)
        status[c] = step_chunk(samples, units, bounds[c], bounds[c + 1], c == 0 ? sensitivity : NULL, n, decay,
                               batch, s_max, factors, last + c * width, first + bounds[c], firsts + c);
    int failed = 0;
    for (int c = 0; c < chunks && !failed; c++) failed = (int)status[c];
    int64_t *latest = last; /* the first chunk's last array becomes each unit's latest sample in the chunks so far */
    for (int c = 1; c < chunks && !failed; c++) {
        const int64_t *chunk_first = first + bounds[c], *chunk_last = last + c * width;
        for (int64_t j = 0; j < firsts[c]; j++) {
            int64_t p = chunk_first[j], s = samples[p], u = units[p];
            factors[p] = latest[u] >= 0 ? idle_sensitivity(1.0f, s - latest[u] - 1, decay, s_max)
                                        : idle_sensitivity(sensitivity[u], s, decay, s_max);
        }
        for (int64_t j = 0; j < firsts[c]; j++) latest[units[chunk_first[j]]] = chunk_last[units[chunk_first[j]]];
    }
    for (int64_t u = 0; u < n && !failed; u++)
        after[u] = latest[u] >= 0 ? idle_sensitivity(1.0f, batch - latest[u] - 1, decay, s_max)
                                  : idle_sensitivity(sensitivity[u], batch, decay, s_max);
    free(work);
    return failed;
}
