/* A k-sparse layer's per-batch bookkeeping on CPU, in place: win counts, samples seen and duty cycles.  Built with
 * topk_rows.c by ksparse_pl/functional/native.py; wrapped by ksparse_pl/functional/native_duty_cycle.py, and with a
 * row selection by ksparse_pl/functional/native_topk.py.
 *
 * The same float32 arithmetic as ksparse_pl.functional.update_duty_cycle, operation for operation (no fused
 * multiply-add: native.py compiles with -ffp-contract=off), so both give identical duty cycles; one call replaces
 * about ten small torch operations, whose dispatch dominates at a layer's few thousand units.
 */
#include <stdint.h>
#include <stdlib.h>

int ksparse_select_rows(const float *x, const float *boost, int by_magnitude, int64_t *indices, float *dst,
                        uint8_t *bits, int relu, int64_t *counts, int64_t rows, int64_t n, int64_t k, float z,
                        float z_low, int threads); /* topk_rows.c */

/* selection_count += counts; samples_seen += batch; then with p = max(batch, min(period, samples_seen), 1):
 * duty = (duty * (p - batch) + counts / positions) / p (an empty batch before any sample leaves it as it is). */
void ksparse_add_wins(float *duty, int64_t *selection_count, int64_t *samples_seen, const int64_t *counts, int64_t n,
                      int64_t batch, int64_t positions, int64_t period) {
    int64_t seen = *samples_seen + batch;
    *samples_seen = seen;
    int64_t p = seen < period ? seen : period;
    if (p < batch) p = batch;
    if (p < 1) p = 1;
    float kept = (float)(p - batch), total = (float)p, share = (float)positions;
    for (int64_t j = 0; j < n; j++) {
        selection_count[j] += counts[j];
        float wins = positions == 1 ? (float)counts[j] : (float)counts[j] / share;
        duty[j] = (duty[j] * kept + wins) / total;
    }
}

/* ksparse_select_rows, then ksparse_add_wins with its rows' win counts, each row one sample at one position: a
 * layer's selection and its bookkeeping in one call.  counts: as there, or NULL when the caller does not want them.
 * Returns nonzero, leaving the state as it was, if the selection or the counts could not be allocated. */
int ksparse_select_rows_adding_wins(const float *x, const float *boost, int by_magnitude, int64_t *indices,
                                    float *dst, uint8_t *bits, int relu, int64_t *counts, int64_t rows, int64_t n,
                                    int64_t k, float z, float z_low, int threads, float *duty,
                                    int64_t *selection_count, int64_t *samples_seen, int64_t period) {
    int64_t *wins = counts ? counts : calloc((size_t)n, sizeof *wins);
    if (!wins) return 1;
    int failed = rows ? ksparse_select_rows(x, boost, by_magnitude, indices, dst, bits, relu, wins, rows, n, k, z,
                                            z_low, threads)
                      : 0;
    if (!failed) ksparse_add_wins(duty, selection_count, samples_seen, wins, n, rows, 1, period);
    if (!counts) free(wins);
    return failed;
}
