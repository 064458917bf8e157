/* Row gathers and scatters of top-k codes, for wide sparse autoencoders on CPU.  Built with topk_rows.c by
 * ksparse_pl/functional/native.py; wrapped by ksparse_pl/functional/native_rows.py.
 *
 * B samples select k rows each (idx, B x k) of an M x d matrix:
 *   gather:  out[b] = sum_j coef[b, j] * rows[idx[b, j]]        (the decode; the encoder's input gradient)
 *   dot:     out[b, j] = rows[idx[b, j]] . src[b]               (the gradient of the decode's coefficients)
 *   scatter: out = 0, then out[idx[b, j]] += coef[b, j] * src[b] (the encoder's and decoder's weight gradients)
 * gather and dot split the samples over threads.  scatter splits the M output rows: each thread scans all B*k
 * pairs for the rows it owns, so no two threads write one row, and each row sums its terms in sample order
 * whatever the number of threads.  Every function returns nonzero, having written nothing, if an index lies
 * outside [0, M).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "threads.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* The row loops in AVX2 where the CPU has it (chosen at load time), SSE2 elsewhere. */
#if defined(__x86_64__) && defined(__GNUC__)
#define ROW_LOOP __attribute__((target_clones("avx2", "default")))
#else
#define ROW_LOOP
#endif

static int out_of_range(const int64_t *idx, int64_t count, int64_t m) {
    for (int64_t p = 0; p < count; p++)
        if ((uint64_t)idx[p] >= (uint64_t)m) return 1;
    return 0;
}

ROW_LOOP static void axpy(float a, const float *x, float *y, int64_t d) {
    for (int64_t i = 0; i < d; i++) y[i] += a * x[i];
}

/* Eight partial sums, so that the compiler can vectorize without reordering a single sum. */
ROW_LOOP static float dot(const float *a, const float *b, int64_t d) {
    float part[8] = {0};
    int64_t body = d - d % 8;
    for (int64_t i = 0; i < body; i += 8)
        for (int l = 0; l < 8; l++) part[l] += a[i + l] * b[i + l];
    float total = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (int64_t i = body; i < d; i++) total += a[i] * b[i];
    return total;
}

int ksparse_gather_rows(const float *rows, const int64_t *idx, const float *coef, float *out, int64_t batch,
                        int64_t k, int64_t m, int64_t d, int threads) {
    if (out_of_range(idx, batch * k, m)) return 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads_for(batch * k * d, threads)) schedule(static)
#endif
    for (int64_t b = 0; b < batch; b++) {
        float *o = out + b * d;
        memset(o, 0, d * sizeof(float));
        for (int64_t j = 0; j < k; j++) axpy(coef[b * k + j], rows + idx[b * k + j] * d, o, d);
    }
    return 0;
}

int ksparse_dot_rows(const float *rows, const int64_t *idx, const float *src, float *out, int64_t batch, int64_t k,
                     int64_t m, int64_t d, int threads) {
    if (out_of_range(idx, batch * k, m)) return 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads_for(batch * k * d, threads)) schedule(static)
#endif
    for (int64_t b = 0; b < batch; b++)
        for (int64_t j = 0; j < k; j++) out[b * k + j] = dot(rows + idx[b * k + j] * d, src + b * d, d);
    return 0;
}

ROW_LOOP static void scale(float a, const float *x, float *y, int64_t d) {
    for (int64_t i = 0; i < d; i++) y[i] = a * x[i];
}

/* scatter for the output rows [lo, hi).  A row's first term is stored rather than added to zeros (a * x equals
 * 0 + a * x, fused or not, but for the sign of a zero), so each row of the M x d output is written once instead
 * of zeroed first (the scatter took 0.51 instead of 0.75 ms at M = 4096, d = 768, B = 256, k = 32); rows that
 * no pair selects are zeroed at the end. */
static void scatter_part(const float *src, const int64_t *idx, const float *coef, float *out, int64_t pairs,
                         int64_t k, int64_t d, int64_t lo, int64_t hi) {
    unsigned char *seen = calloc(hi - lo, 1);
    if (!seen) memset(out + lo * d, 0, (hi - lo) * d * sizeof(float)); /* no room to track: zero, then add */
    for (int64_t p = 0; p < pairs; p++) {
        int64_t r = idx[p];
        if (r < lo || r >= hi) continue;
        if (seen && !seen[r - lo]) {
            scale(coef[p], src + (p / k) * d, out + r * d, d);
            seen[r - lo] = 1;
        } else {
            axpy(coef[p], src + (p / k) * d, out + r * d, d);
        }
    }
    if (!seen) return;
    for (int64_t r = lo; r < hi; r++)
        if (!seen[r - lo]) memset(out + r * d, 0, d * sizeof(float));
    free(seen);
}

int ksparse_scatter_rows(const float *src, const int64_t *idx, const float *coef, float *out, int64_t batch,
                         int64_t k, int64_t m, int64_t d, int threads) {
    if (out_of_range(idx, batch * k, m)) return 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads_for(m * d, threads))
    {
        int64_t t = omp_get_thread_num(), count = omp_get_num_threads();
        scatter_part(src, idx, coef, out, batch * k, k, d, m * t / count, m * (t + 1) / count);
    }
#else
    (void)threads;
    scatter_part(src, idx, coef, out, batch * k, k, d, 0, m);
#endif
    return 0;
}
