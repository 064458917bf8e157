/* A k-sparse layer's per-batch bookkeeping on CPU, in place: win counts, samples seen and duty cycles.  Built with
 * topk_rows.c by ksparse_pl/functional/native.py; wrapped by ksparse_pl/functional/native_duty_cycle.py.
 *
 * The same float32 arithmetic as ksparse_pl.functional.update_duty_cycle, operation for operation (no fused
 * multiply-add: native.py compiles with -ffp-contract=off), so both give identical duty cycles; one call replaces
 * about ten small torch operations, whose dispatch dominates at a layer's few thousand units.
 */
#include <stdint.h>

/* selection_count += counts; samples_seen += batch; then with p = max(batch, min(period, samples_seen)):
 * duty = (duty * (p - batch) + counts / positions) / p. */
void ksparse_add_wins(float *duty, int64_t *selection_count, int64_t *samples_seen, const int64_t *counts, int64_t n,
                      int64_t batch, int64_t positions, int64_t period) {
    int64_t seen = *samples_seen + batch;
    *samples_seen = seen;
    int64_t p = seen < period ? seen : period;
    if (p < batch) p = batch;
    float kept = (float)(p - batch), total = (float)p, share = (float)positions;
    for (int64_t j = 0; j < n; j++) {
        selection_count[j] += counts[j];
        float wins = positions == 1 ? (float)counts[j] : (float)counts[j] / share;
        duty[j] = (duty[j] * kept + wins) / total;
    }
}
