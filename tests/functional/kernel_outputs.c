/* Runs the kernels of ksparse_pl/functional/csrc on deterministic inputs and prints a hash of every output, so that
 * builds for different CPUs (and the instruction sets of one: the argument is ksparse_init's widest) can be compared
 * bit for bit.  Built and run by test_kernel_outputs.py; single-threaded (no OpenMP), as qemu runs it. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ksparse_init(int most);
int ksparse_select_rows(const float *x, const float *boost, int by_magnitude, int64_t *indices, float *dst,
                        uint8_t *bits, int relu, int64_t *counts, int64_t rows, int64_t n, int64_t k, float z,
                        float z_low, int threads);
int ksparse_keep_at_least_rows(const float *x, const float *boost, int by_magnitude, float *dst, uint8_t *bits,
                               int relu, int64_t *counts, int64_t rows, int64_t n, int64_t k, float z, float z_low,
                               int threads);
void ksparse_take_bits_rows(const float *src, const uint8_t *bits, const float *factors, int64_t groups, float *dst,
                            int64_t rows, int64_t n, int threads);
int ksparse_take_bits_rows_at(const float *src, const uint8_t *bits, const int64_t *indices, const float *factors,
                              float *dst, int64_t rows, int64_t n, int64_t k, int threads);
int ksparse_take_rows(const float *src, const int64_t *indices, int relu, float *dst, uint8_t *bits, int64_t rows,
                      int64_t n, int64_t k, int threads);
void ksparse_add_wins(float *duty, int64_t *selection_count, int64_t *samples_seen, const int64_t *counts, int64_t n,
                      int64_t batch, int64_t positions, int64_t period);
int ksparse_select_rows_adding_wins(const float *x, const float *boost, int by_magnitude, int64_t *indices,
                                    float *dst, uint8_t *bits, int relu, int64_t *counts, int64_t rows, int64_t n,
                                    int64_t k, float z, float z_low, int threads, float *duty,
                                    int64_t *selection_count, int64_t *samples_seen, int64_t period);
int ksparse_sensitivity_step(const int64_t *samples, const int64_t *units, int64_t pairs, const float *sensitivity,
                             int64_t n, const float *decay, int64_t batch, float s_max, float *factors, float *after,
                             int threads);
int ksparse_select_channels(const float *x, const float *boost, int by_magnitude, int relu, float *out,
                            int64_t *indices, uint8_t *bits, int64_t *counts, int per_sample, int64_t batch,
                            int64_t channels, int64_t positions, int64_t k, int vectorized, int threads);
int ksparse_gather_rows(const float *rows, const int64_t *idx, const float *coef, float *out, int64_t batch,
                        int64_t k, int64_t m, int64_t d, int threads);
int ksparse_dot_rows(const float *rows, const int64_t *idx, const float *src, float *out, int64_t batch, int64_t k,
                     int64_t m, int64_t d, int threads);
int ksparse_scatter_rows(const float *src, const int64_t *idx, const float *coef, float *out, int64_t batch,
                         int64_t k, int64_t m, int64_t d, int threads);

static uint64_t state = 88172645463325252ull;
static uint64_t next(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}
static float uniform(void) { return (float)((next() >> 40) * (1.0 / 16777216.0)); }
static float normal(void) {
    float s = 0;
    for (int i = 0; i < 12; i++) s += uniform();
    return s - 6.0f;
}

static uint64_t hash(const void *p, size_t bytes) {
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < bytes; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Literals rather than powf, whose last bit may differ between C libraries. */
static const float SCALES[7] = {0.001f, 0.01f, 0.1f, 1.0f, 10.0f, 100.0f, 1000.0f};

/* Rows of several kinds: normal, ties, wide scales, NaN and infinities, constant, integers. */
static void fill(float *x, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * n;
        int kind = (int)(r % 6);
        for (int64_t i = 0; i < n; i++) {
            float v = normal();
            if (kind == 1) v = floorf(v * 2.0f);
            if (kind == 2) v = v * SCALES[i % 7];
            if (kind == 4) v = 0.5f;
            if (kind == 5) v = (float)((i * 37) % 11) - 5.0f;
            row[i] = v;
        }
        if (kind == 3) {
            row[n / 3] = NAN;
            row[n / 2] = INFINITY;
            row[n - 1] = -INFINITY;
        }
    }
}

/* One output's line: what it is, the case it comes from (empty: none), and the hash of its bytes. */
static void report(const char *what, const char *where, const void *p, size_t bytes) {
    char name[80];
    snprintf(name, sizeof name, "%s %s", what, where);
    printf("%-40s %016llx\n", name, (unsigned long long)hash(p, bytes));
}

static void rows_case(int64_t rows, int64_t n, int64_t k, float z, float z_low) {
    float *x = malloc(rows * n * 4), *dst = malloc(rows * n * 4), *grad = malloc(rows * n * 4), *boost = malloc(n * 4);
    float *factors = malloc(rows * k * 4), *groups = malloc(rows * 4 * 4), *out = malloc(rows * n * 4);
    int64_t *idx = malloc(rows * k * 8), *counts = malloc(n * 8);
    uint8_t *bits = malloc(rows * ((n + 7) / 8));
    size_t values = rows * n * 4, bytes = rows * ((n + 7) / 8);
    fill(x, rows, n);
    for (int64_t i = 0; i < rows * n; i++) grad[i] = normal();
    for (int64_t i = 0; i < n; i++) boost[i] = 2.0f * uniform();
    for (int64_t i = 0; i < rows * k; i++) factors[i] = 0.5f + uniform();
    for (int64_t i = 0; i < rows * 4; i++) groups[i] = 0.5f + uniform();
    for (int mode = 0; mode < 8; mode++) {
        int by_magnitude = mode & 1, boosted = mode & 2, relu = mode & 4;
        char where[48];
        snprintf(where, sizeof where, "%lldx%lld k%lld m%d", (long long)rows, (long long)n, (long long)k, mode);
        memset(counts, 0, n * 8);
        const float *b = boosted ? boost : NULL;
        ksparse_select_rows(x, b, by_magnitude, idx, dst, bits, relu, counts, rows, n, k, z, z_low, 1);
        report("select idx", where, idx, rows * k * 8);
        report("select out", where, dst, values);
        report("select bits", where, bits, bytes);
        report("select counts", where, counts, n * 8);
        memset(counts, 0, n * 8); /* the same without the winners' ids wanted: the threshold sought alone */
        ksparse_select_rows(x, b, by_magnitude, NULL, dst, bits, relu, counts, rows, n, k, z, z_low, 1);
        report("select alone out", where, dst, values);
        report("select alone bits", where, bits, bytes);
        report("select alone counts", where, counts, n * 8);
        ksparse_take_bits_rows(grad, bits, NULL, 1, out, rows, n, 1);
        report("take_bits", where, out, values);
        if (n % 4 == 0) {
            ksparse_take_bits_rows(grad, bits, groups, 4, out, rows, n, 1);
            report("take_bits groups", where, out, values);
        }
        ksparse_take_bits_rows_at(grad, bits, idx, factors, out, rows, n, k, 1);
        report("take_bits_at", where, out, values);
        ksparse_take_rows(x, idx, relu, out, bits, rows, n, k, 1);
        report("take_rows", where, out, values);
        memset(counts, 0, n * 8);
        ksparse_keep_at_least_rows(x, b, by_magnitude, dst, bits, relu, counts, rows, n, k, z, z_low, 1);
        report("keep_at_least out", where, dst, values);
        report("keep_at_least bits", where, bits, bytes);
        report("keep_at_least counts", where, counts, n * 8);
    }
    free(x), free(dst), free(grad), free(boost), free(factors), free(groups), free(out), free(idx), free(counts);
    free(bits);
}

static void duty_and_sensitivity(void) {
    int64_t n = 1000, batch = 64, k = 50, period = 1000;
    float *duty = calloc(n, 4);
    int64_t *selections = calloc(n, 8), seen = 0, *counts = malloc(n * 8);
    for (int step = 0; step < 40; step++) {
        for (int64_t i = 0; i < n; i++) counts[i] = (int64_t)(next() % 9);
        ksparse_add_wins(duty, selections, &seen, counts, n, batch, step % 3 ? 1 : 7, period);
    }
    report("duty_cycle", "", duty, n * 4);
    float *x = malloc(batch * n * 4), *dst = malloc(batch * n * 4);
    uint8_t *bits = malloc(batch * ((n + 7) / 8));
    fill(x, batch, n);
    ksparse_select_rows_adding_wins(x, NULL, 0, NULL, dst, bits, 0, NULL, batch, n, k, 1.6449f, 1.2816f, 1, duty,
                                    selections, &seen, period);
    report("select adding wins duty_cycle", "", duty, n * 4);
    report("select adding wins count", "", selections, n * 8);
    free(x), free(dst), free(bits);
    int64_t *samples = malloc(batch * k * 8), *units = malloc(batch * k * 8);
    float *sens = malloc(n * 4), *decay = malloc((batch + 1) * 4), *fac = malloc(batch * k * 4), *after = malloc(n * 4);
    for (int64_t i = 0; i < n; i++) sens[i] = 1.0f + 9.0f * uniform();
    decay[0] = 1.0f;
    for (int64_t i = 1; i <= batch; i++) decay[i] = decay[i - 1] * 0.99f;
    for (int64_t s = 0; s < batch; s++)
        for (int64_t j = 0; j < k; j++) samples[s * k + j] = s, units[s * k + j] = (s * 7 + j * 19) % n;
    ksparse_sensitivity_step(samples, units, batch * k, sens, n, decay, batch, 10.0f, fac, after, 1);
    report("sensitivity factors", "", fac, batch * k * 4);
    report("sensitivity after", "", after, n * 4);
    free(duty), free(selections), free(counts), free(samples), free(units), free(sens), free(decay), free(fac);
    free(after);
}

static void channels_and_sparse_rows(int vectorized) {
    int64_t batch = 3, channels = 24, positions = 37, k = 4;
    float *x = malloc(batch * channels * positions * 4), *out = malloc(batch * channels * positions * 4);
    float *boost = malloc(channels * 4);
    int64_t *idx = malloc(batch * k * positions * 8), *counts = calloc(channels, 8);
    uint8_t *bits = malloc(batch * channels * positions);
    fill(x, batch * channels, positions);
    for (int64_t c = 0; c < channels; c++) boost[c] = 2.0f * uniform();
    ksparse_select_channels(x, boost, 1, 1, out, idx, bits, counts, 0, batch, channels, positions, k, vectorized, 1);
    report("channels out", "", out, batch * channels * positions * 4);
    report("channels idx", "", idx, batch * k * positions * 8);
    report("channels counts", "", counts, channels * 8);
    int64_t m = 300, d = 70, b = 16, kk = 8;
    float *dict = malloc(m * d * 4), *coef = malloc(b * kk * 4), *rows = malloc(b * d * 4), *dots = malloc(b * kk * 4);
    float *grads = calloc(m * d, 4);
    int64_t *units = malloc(b * kk * 8);
    for (int64_t i = 0; i < m * d; i++) dict[i] = normal();
    for (int64_t i = 0; i < b * kk; i++) coef[i] = normal(), units[i] = (int64_t)(next() % m);
    ksparse_gather_rows(dict, units, coef, rows, b, kk, m, d, 1);
    report("gather_rows", "", rows, b * d * 4);
    ksparse_dot_rows(dict, units, rows, dots, b, kk, m, d, 1);
    report("dot_rows", "", dots, b * kk * 4);
    ksparse_scatter_rows(rows, units, coef, grads, b, kk, m, d, 1);
    report("scatter_rows", "", grads, m * d * 4);
    free(x), free(out), free(boost), free(idx), free(counts), free(bits), free(dict), free(coef), free(rows);
    free(dots), free(grads), free(units);
}

int main(int argc, char **argv) {
    int width = ksparse_init(argc > 1 ? atoi(argv[1]) : 2);
    printf("width %d\n", width);
    /* z and z_low: the normal quantiles of 1 - k/n and 1 - 2k/n (where the search starts; any value is exact) */
    rows_case(12, 4096, 205, 1.6446f, 1.2818f);
    rows_case(12, 1000, 100, 1.2816f, 0.8416f);
    rows_case(12, 100, 10, 1.2816f, 0.8416f);
    rows_case(12, 37, 5, 1.1019f, NAN);
    rows_case(12, 17, 3, 0.9280f, NAN);
    duty_and_sensitivity();
    channels_and_sparse_rows(width > 0); /* the channels' AVX2 code with the rows' */
    return 0;
}
