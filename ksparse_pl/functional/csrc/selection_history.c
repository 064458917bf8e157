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
 * with no fused multiply-add. */
__attribute__((optimize("fp-contract=off"))) static inline float idle_sensitivity(float s0, int64_t idle,
                                                                                 const float *decay, float s_max) {
    return s_max - (s_max - s0) * decay[idle];
}

/* Cottonwood's sensitivity factor of every pair, given its previous selection (previous[p], from the function
 * above or from sorting): after an earlier selection in the batch the unit restarts from 1 and has been idle
 * samples[p] - previous[p] - 1 samples, else it starts from sensitivity[units[p]] and has been idle
 * samples[p] samples; decay has an entry for every i in [0, batch).  One pass instead of about a dozen torch
 * operations over the pairs.  Returns 0 on success, 1 if a sample lies outside [0, batch) or a unit outside
 * [0, n). */
__attribute__((optimize("fp-contract=off"))) int ksparse_sensitivity_factors(
    const int64_t *samples, const int64_t *units, const int64_t *previous, int64_t pairs, const float *sensitivity,
    int64_t n, const float *decay, int64_t batch, float s_max, float *factors) {
    for (int64_t p = 0; p < pairs; p++) {
        int64_t s = samples[p], u = units[p], before = previous[p];
        if ((uint64_t)s >= (uint64_t)batch || (uint64_t)u >= (uint64_t)n || before >= s) return 1;
        factors[p] = before >= 0 ? idle_sensitivity(1.0f, s - before - 1, decay, s_max)
                                 : idle_sensitivity(sensitivity[u], s, decay, s_max);
    }
    return 0;
}

/* A whole batch of pairs in nondecreasing sample order, in one pass over the pairs and one over the units:
 * every pair's factor (as ksparse_sensitivity_factors, each unit's previous selection tracked on the way) and
 * the state after the batch, after[u] (as ksparse_pl.functional.sensitivity_after: idle since the unit's
 * last selection, or since the batch began from sensitivity[u]); decay has an entry for every i in
 * [0, batch].  Returns 0 on success, 1 if a sample lies outside [0, batch) or a unit outside [0, n), 2 if the
 * samples decrease somewhere (the caller then sorts), 3 if the work array could not be allocated, 4 if a pair
 * is listed twice. */
__attribute__((optimize("fp-contract=off"))) int ksparse_sensitivity_step(const int64_t *samples, const int64_t *units,
                                                                         int64_t pairs, const float *sensitivity,
                                                                         int64_t n, const float *decay, int64_t batch,
                                                                         float s_max, float *factors, float *after) {
    int64_t *last = malloc((n > 0 ? n : 1) * sizeof(int64_t));
    if (!last) return 3;
    for (int64_t u = 0; u < n; u++) last[u] = -1;
    int status = 0;
    for (int64_t p = 0; p < pairs && !status; p++) {
        int64_t s = samples[p], u = units[p];
        if ((uint64_t)s >= (uint64_t)batch || (uint64_t)u >= (uint64_t)n) status = 1;
        else if (p > 0 && s < samples[p - 1]) status = 2;
        else if (last[u] == s) status = 4;
        else {
            factors[p] = last[u] >= 0 ? idle_sensitivity(1.0f, s - last[u] - 1, decay, s_max)
                                      : idle_sensitivity(sensitivity[u], s, decay, s_max);
            last[u] = s;
        }
    }
    for (int64_t u = 0; u < n && !status; u++)
        after[u] = last[u] >= 0 ? idle_sensitivity(1.0f, batch - last[u] - 1, decay, s_max)
                                : idle_sensitivity(sensitivity[u], batch, decay, s_max);
    free(last);
    return status;
}
