/* When each unit was selected before: the sequential pass behind Cottonwood's sensitivity on CPU.  Built with
 * topk_rows.c by ksparse_pl/functional/native.py; wrapped by ksparse_pl/functional/native_history.py.
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
