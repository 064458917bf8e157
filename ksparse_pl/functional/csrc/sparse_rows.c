/* Row gathers and scatters of top-k codes, for wide sparse autoencoders on CPU.  Built with topk_rows.c by
 * ksparse_pl/functional/native.py; wrapped by ksparse_pl/functional/native_rows.py.
 *
 * B samples select k rows each (idx, B x k) of an M x d matrix:
 *   gather:  out[b] = sum_j coef[b, j] * rows[idx[b, j]]        (the decode; the encoder's input gradient)
 *   dot:     out[b, j] = rows[idx[b, j]] . src[b]               (the gradient of the decode's coefficients)
 *   scatter: out = 0, then out[idx[b, j]] += coef[b, j] * src[b] (the encoder's and decoder's weight gradients)
 * gather and dot split the samples over threads.  scatter sorts the pairs by row and splits the M output rows:
 * one thread sums each row whole, its terms in sample order whatever the number of threads.  Every function
 * returns 1, having written nothing, if an index lies outside [0, M); scatter returns 2 if it could not
 * allocate its buffers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "threads.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
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

/* out = row (zeros if row is NULL), by stores that do not first read out's lines into the cache (x86-64): the
 * M x d gradient (12 MiB and up at M = 4096, d = 768) fills or exceeds the last-level cache, shared with the rest
 * of the step, and each of its rows is written whole, once. */
static void stream_row(const float *row, float *out, int64_t d) {
#if defined(__x86_64__) && defined(__GNUC__)
    int64_t i = 0;
    for (; i < d && ((uintptr_t)(out + i) & 15); i++) out[i] = row ? row[i] : 0.0f;
    for (; i + 4 <= d; i += 4) _mm_stream_ps(out + i, row ? _mm_loadu_ps(row + i) : _mm_setzero_ps());
    for (; i < d; i++) out[i] = row ? row[i] : 0.0f;
#else
    if (row) memcpy(out, row, d * sizeof(float));
    else memset(out, 0, d * sizeof(float));
#endif
}

/* out[r] = sum of coef[p] * src[p / k] over the pairs p of row r (order[start[r] .. start[r + 1]), ascending),
 * summed in a thread's buffer of d floats (sums + thread * d), which stays in the cache, and then streamed out;
 * rows without pairs are zeroed. */
static void scatter_sorted(const float *src, const float *coef, const int64_t *order, const int64_t *start,
                           float *sums, float *out, int64_t k, int64_t m, int64_t d, int threads) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
#ifdef _OPENMP
        float *sum = sums + omp_get_thread_num() * d;
#pragma omp for schedule(static) nowait
#else
        float *sum = sums;
#endif
        for (int64_t r = 0; r < m; r++) {
            for (int64_t q = start[r]; q < start[r + 1]; q++) {
                int64_t p = order[q];
                if (q == start[r]) scale(coef[p], src + (p / k) * d, sum, d); /* = 0 + a * x but for a zero's sign */
                else axpy(coef[p], src + (p / k) * d, sum, d);
            }
            stream_row(start[r] < start[r + 1] ? sum : NULL, out + r * d, d);
        }
#if defined(__x86_64__) && defined(__GNUC__)
        _mm_sfence(); /* the streamed rows are visible before the threads join */
#endif
    }
}

/* The pairs sorted by row, stably (a counting sort): order lists them row by row in sample order, each row's
 * from start[r] to start[r + 1].  Summing a row whole before writing it took the step of a sparse autoencoder
 * (M = 4096 to 65536, d = 768) 2-5% below adding each term into the output row in place. */
int ksparse_scatter_rows(const float *src, const int64_t *idx, const float *coef, float *out, int64_t batch,
                         int64_t k, int64_t m, int64_t d, int threads) {
    if (out_of_range(idx, batch * k, m)) return 1;
    int64_t pairs = batch * k;
    threads = threads_for(m * d, threads);
    int64_t *start = calloc(m + 1, sizeof(int64_t)), *next = malloc(m * sizeof(int64_t) + 1);
    int64_t *order = malloc(pairs * sizeof(int64_t) + 1);
    float *sums = malloc(threads * d * sizeof(float) + 1);
    int failed = !start || !next || !order || !sums;
    if (!failed) {
        for (int64_t p = 0; p < pairs; p++) start[idx[p] + 1]++;
        for (int64_t r = 0; r < m; r++) start[r + 1] += start[r];
        memcpy(next, start, m * sizeof(int64_t));
        for (int64_t p = 0; p < pairs; p++) order[next[idx[p]]++] = p;
        scatter_sorted(src, coef, order, start, sums, out, k, m, d, threads);
    }
    free(start);
    free(next);
    free(order);
    free(sums);
    return failed ? 2 : 0;
}
