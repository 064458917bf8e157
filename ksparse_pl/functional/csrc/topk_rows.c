/* Exact top-k of the rows of a float32 matrix, for CPU.  Built on first use by ksparse_pl/functional/native_topk.py.
 *
 * torch.topk copies every row into (value, index) pairs and runs nth_element on them; for the few percent
 * of winners a sparse layer keeps, it is much cheaper to search a threshold t with exactly k scores >= t:
 * each try is one vectorized counting pass over a row that stays in L1, and interpolating the counts finds
 * t in a handful of tries.  A first pass compacts the row to a few more than k candidates, so that most tries
 * count a few hundred scores; when the winners are exactly the scores >= t, the sparse output is written in one
 * masked pass.  Rows with a NaN or an infinite score take a generic path (order-preserving integer keys and
 * quickselect).
 *
 * Contract of ksparse_topk_rows: for every row, the indices of the k largest scores in ascending index
 * order; NaN ranks above every number, -0 ties with +0, and among tied scores the lower index wins.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "threads.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KSPARSE_X86 1
#endif

/* For the helpers of a pass, so that each caller gets its own loop for its constant arguments. */
#define INLINE __attribute__((always_inline)) static inline

typedef struct {
    float min, max, mean, std;
    int finite; /* no NaN and no infinity in the row */
} row_stats;

/* Running sums behind row_stats; the vector kernels fill them from their lanes, then add the scores past their last
 * whole vector one by one here. */
typedef struct {
    float min, max;
    double sum, sumsq;
    int finite;
} stats_sums;

static void add_to_sums(stats_sums *a, const float *s, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = s[i];
        if (!isfinite(v)) a->finite = 0;
        a->min = v < a->min ? v : a->min;
        a->max = v > a->max ? v : a->max;
        a->sum += v;
        a->sumsq += (double)v * v;
    }
}

static row_stats stats_of_sums(const stats_sums *a, int64_t n) {
    double mean = a->sum / n, var = a->sumsq / n - mean * mean;
    row_stats r = {a->min, a->max, (float)mean, (float)sqrt(var > 0.0 ? var : 0.0), a->finite};
    return r;
}

/* ---------------------------------------------------------------- portable kernels
 * The passes over whole rows take 8 scores a step in the vector types of GCC and clang, 4 lanes wide, which every
 * target compiles to its own vectors (SSE2 on x86-64, NEON on ARM); the compilers vectorized little of the plain
 * loops, which then remain for the last scores of a row. */
typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16))); /* a comparison's lanes: -1 true, 0 false */

static inline f32x4 load4(const float *p) {
    f32x4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store4(float *p, f32x4 v) { memcpy(p, &v, sizeof v); }

/* v where keep is true, +0 elsewhere. */
static inline f32x4 keep4(f32x4 v, i32x4 keep) { return (f32x4)((i32x4)v & keep); }

static inline f32x4 min4(f32x4 a, f32x4 b) { return (f32x4)(((i32x4)a & (a < b)) | ((i32x4)b & ~(a < b))); }

static inline f32x4 max4(f32x4 a, f32x4 b) { return (f32x4)(((i32x4)a & (a > b)) | ((i32x4)b & ~(a > b))); }

/* The bits of the true lanes of two comparisons, the first's lowest. */
static inline unsigned bits8(i32x4 low, i32x4 high) {
    i32x4 set = (low & (i32x4){1, 2, 4, 8}) | (high & (i32x4){16, 32, 64, 128});
    return (unsigned)(set[0] | set[1] | set[2] | set[3]);
}

/* The statistics' running sums, 8 scores a step in two chains (as sums8 of the AVX2 kernels). */
typedef struct {
    f32x4 lo, hi, lo2, hi2, sum, sum2, sumsq, sumsq2;
} sums4;

static inline sums4 sums4_start(void) {
    f32x4 lo = {INFINITY, INFINITY, INFINITY, INFINITY}, hi = -lo, zero = {0.0f, 0.0f, 0.0f, 0.0f};
    sums4 a = {lo, hi, lo, hi, zero, zero, zero, zero};
    return a;
}

static inline void sums4_add(sums4 *a, f32x4 v, f32x4 w) {
    a->lo = min4(a->lo, v);
    a->hi = max4(a->hi, v);
    a->lo2 = min4(a->lo2, w);
    a->hi2 = max4(a->hi2, w);
    a->sum += v;
    a->sum2 += w;
    a->sumsq += v * v;
    a->sumsq2 += w * w;
}

/* The statistics of n scores: those in the sums, then the tail (the last tail_n scores) one by one.  A NaN or an
 * infinity makes a sum or an extreme not finite (see sums8). */
static row_stats sums4_finish(const sums4 *a, const float *tail, int64_t tail_n, int64_t n) {
    f32x4 lo = min4(a->lo, a->lo2), hi = max4(a->hi, a->hi2), sum = a->sum + a->sum2, sumsq = a->sumsq + a->sumsq2;
    stats_sums s = {INFINITY, -INFINITY, 0.0, 0.0, 1};
    for (int j = 0; j < 4; j++) {
        s.min = lo[j] < s.min ? lo[j] : s.min;
        s.max = hi[j] > s.max ? hi[j] : s.max;
        s.sum += sum[j];
        s.sumsq += sumsq[j];
    }
    s.finite = isfinite(s.sum) && isfinite(s.sumsq) && isfinite(s.min) && isfinite(s.max);
    add_to_sums(&s, tail, tail_n);
    return stats_of_sums(&s, n);
}

static row_stats stats_portable(const float *s, int64_t n) {
    int64_t body = n - n % 8;
    sums4 a = sums4_start();
    for (int64_t i = 0; i < body; i += 8) sums4_add(&a, load4(s + i), load4(s + i + 4));
    return sums4_finish(&a, s + body, n - body, n);
}

static int64_t count_portable(const float *s, int64_t n, float t) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += s[i] >= t;
    return c;
}

/* The ids of the scores >= t (ids[i], or i when ids is NULL) in order to out, and the scores to values, each
 * unless it is NULL; returns how many.  out and values have room for n + 8. */
static int64_t collect_portable(const float *s, const int32_t *ids, int64_t n, float t, int32_t *out, float *values) {
    int64_t o = 0;
    for (int64_t i = 0; i < n; i++) {
        if (out) out[o] = ids ? ids[i] : (int32_t)i;
        if (values) values[o] = s[i];
        o += s[i] >= t;
    }
    return o;
}

/* collect_portable of a whole row (out NULL: the scores only), prefetching one cache line per 16 scores of next and
 * of dst (each NULL or n floats), as compact_row_avx2 does; to the first-level cache here, as the second-level hint
 * of the x86 kernels (see select_slice) is unmeasured on ARM. */
static int64_t compact_row_portable(const float *s, int64_t n, float t, int32_t *out, float *values, const float *next,
                                    const float *dst) {
    int64_t o = 0;
    for (int64_t i = 0; i < n; i++) {
        if (i % 16 == 0 && next) __builtin_prefetch(next + i);
        if (i % 16 == 0 && dst) __builtin_prefetch(dst + i);
        if (out) out[o] = (int32_t)i;
        values[o] = s[i];
        o += s[i] >= t;
    }
    return o;
}

/* key_of for a finite score, without branches. */
static inline uint32_t finite_key(float v) {
    float w = v + 0.0f; /* -0 becomes +0 */
    uint32_t u;
    memcpy(&u, &w, sizeof u);
    return u ^ ((uint32_t)((int32_t)u >> 31) | 0x80000000u);
}

/* The keys of the finite scores in [lo, hi), in order, to keys (room for n + 8); returns how many. */
static int64_t band_keys_portable(const float *s, int64_t n, float lo, float hi, uint32_t *keys) {
    int64_t b = 0;
    for (int64_t i = 0; i < n; i++) {
        keys[b] = finite_key(s[i]);
        b += s[i] >= lo && s[i] < hi;
    }
    return b;
}

/* The selection scores of a row: |x| if by_magnitude, times the per-column boost if given. */
static void score_values(const float *x, const float *boost, int by_magnitude, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) {
        float v = by_magnitude ? fabsf(x[i]) : x[i];
        out[i] = boost ? v * boost[i] : v;
    }
}

/* 4 scores of score_values to out; returns them. */
static inline f32x4 scores4(const float *x, const float *boost, i32x4 keep, float *out) {
    f32x4 v = (f32x4)((i32x4)load4(x) & keep);
    if (boost) v *= load4(boost);
    store4(out, v);
    return v;
}

/* The scores of score_values to out, and their statistics, in one pass. */
static row_stats scores_portable(const float *x, const float *boost, int by_magnitude, int64_t n, float *out) {
    int64_t body = n - n % 8;
    i32x4 keep = (i32x4){0, 0, 0, 0} + (by_magnitude ? 0x7FFFFFFF : -1); /* |v|: no sign bit */
    sums4 a = sums4_start();
    for (int64_t i = 0; i < body; i += 8)
        sums4_add(&a, scores4(x + i, boost ? boost + i : NULL, keep, out + i),
                  scores4(x + i + 4, boost ? boost + i + 4 : NULL, keep, out + i + 4));
    score_values(x + body, boost ? boost + body : NULL, by_magnitude, n - body, out + body);
    return sums4_finish(&a, out + body, n - body, n);
}

/* write_above_portable one score at a time, for the last scores of a row. */
static void write_above_one_by_one(const float *s, const float *x, float t, int relu, int64_t n, float *dst,
                                   uint8_t *bits) {
    for (int64_t i = 0; i < n; i++) {
        int won = s[i] >= t;
        float v = relu && x[i] < 0.0f ? 0.0f : x[i];
        dst[i] = won ? v : 0.0f;
        if (i % 8 == 0) bits[i / 8] = 0;
        bits[i / 8] |= (uint8_t)((won && (!relu || !(x[i] <= 0.0f))) << (i % 8));
    }
}

/* keep_at_least_portable one score at a time, for the last scores of a row. */
static void keep_at_least_one_by_one(const float *s, const float *x, float kth, int relu, int64_t n, float *dst,
                                     uint8_t *bits, int32_t *hits) {
    for (int64_t i = 0; i < n; i++) {
        int kept = !(s[i] < kth);
        float v = relu && x[i] < 0.0f ? 0.0f : x[i];
        dst[i] = kept ? v : 0.0f;
        if (i % 8 == 0) bits[i / 8] = 0;
        bits[i / 8] |= (uint8_t)((kept && (!relu || !(x[i] <= 0.0f))) << (i % 8));
        if (hits) hits[i] += kept;
    }
}

/* One vector of the output passes: x (ReLU'd if relu) where the score wins, 0 elsewhere, to dst; returns where the
 * gradient passes.  A score wins at s >= t, or with keep_ties where not s < t, and then also counts in hits (unless
 * NULL, as always without keep_ties). */
static inline i32x4 output4(const float *s, const float *x, f32x4 tv, int relu, int keep_ties, float *dst,
                            int32_t *hits) {
    f32x4 v = load4(x), zero = {0.0f, 0.0f, 0.0f, 0.0f}, score = load4(s);
    i32x4 won = keep_ties ? ~(score < tv) : score >= tv;
    store4(dst, keep4(v, relu ? won & ~(v < zero) : won));
    if (hits) {
        i32x4 h;
        memcpy(&h, hits, sizeof h);
        h -= won;
        memcpy(hits, &h, sizeof h);
    }
    return relu ? won & ~(v <= zero) : won;
}

/* output4 over the first n - n % 8 scores, a byte of bits per 8. */
INLINE void output_by_vectors(const float *s, const float *x, float t, int relu, int keep_ties, int64_t n, float *dst,
                              uint8_t *bits, int32_t *hits) {
    f32x4 tv = {t, t, t, t};
    for (int64_t i = 0; i < n - n % 8; i += 8) {
        i32x4 low = output4(s + i, x + i, tv, relu, keep_ties, dst + i, hits ? hits + i : NULL);
        i32x4 high = output4(s + i + 4, x + i + 4, tv, relu, keep_ties, dst + i + 4, hits ? hits + i + 4 : NULL);
        bits[i / 8] = (uint8_t)bits8(low, high);
    }
}

/* The sparse output of a row whose winners are exactly the scores s >= t: x there (ReLU'd if relu), 0
 * elsewhere.  One pass while the row is in cache, instead of zeroing the output and scattering the winners.
 * Bit i of bits (one byte per 8 scores, the last byte's spare bits 0) is set where the gradient passes: at the
 * winners, and with relu where not x <= 0 (as torch's ReLU, a NaN passes it). */
static void write_above_portable(const float *s, const float *x, float t, int relu, int64_t n, float *dst,
                                 uint8_t *bits) {
    if (relu) output_by_vectors(s, x, t, 1, 0, n, dst, bits, NULL);
    else output_by_vectors(s, x, t, 0, 0, n, dst, bits, NULL);
    int64_t body = n - n % 8;
    write_above_one_by_one(s + body, x + body, t, relu, n - body, dst + body, bits + body / 8);
}

/* Threshold mode's output of a row: x (ReLU'd if relu) where the score is not below kth (a NaN score, or a NaN
 * kth, is kept), 0 elsewhere; bit i of bits (one byte per 8 scores) set where the gradient passes (kept, and
 * with relu not x <= 0: as torch's ReLU, a NaN passes it); hits[i] incremented where kept, unless hits is NULL
 * (each case its own loop). */
static void keep_at_least_portable(const float *s, const float *x, float kth, int relu, int64_t n, float *dst,
                                   uint8_t *bits, int32_t *hits) {
    if (relu && hits) output_by_vectors(s, x, kth, 1, 1, n, dst, bits, hits);
    else if (relu) output_by_vectors(s, x, kth, 1, 1, n, dst, bits, NULL);
    else if (hits) output_by_vectors(s, x, kth, 0, 1, n, dst, bits, hits);
    else output_by_vectors(s, x, kth, 0, 1, n, dst, bits, NULL);
    int64_t body = n - n % 8;
    keep_at_least_one_by_one(s + body, x + body, kth, relu, n - body, dst + body, bits + body / 8,
                             hits ? hits + body : NULL);
}

/* The lanes of two vectors whose bits are set in the 8 bits of set, the first's lowest. */
static inline void lanes_of_bits(unsigned set, i32x4 *low, i32x4 *high) {
    i32x4 b = (i32x4){0, 0, 0, 0} + (int32_t)set;
    *low = (b & (i32x4){1, 2, 4, 8}) != 0;
    *high = (b & (i32x4){16, 32, 64, 128}) != 0;
}

/* dst = src where bit i of bits is set, 0 elsewhere. */
static void take_bits_portable(const float *src, const uint8_t *bits, int64_t n, float *dst) {
    int64_t body = n - n % 8;
    for (int64_t i = 0; i < body; i += 8) {
        i32x4 low, high;
        lanes_of_bits(bits[i / 8], &low, &high);
        store4(dst + i, keep4(load4(src + i), low));
        store4(dst + i + 4, keep4(load4(src + i + 4), high));
    }
    for (int64_t i = body; i < n; i++) dst[i] = (bits[i / 8] >> (i % 8)) & 1 ? src[i] : 0.0f;
}

/* The 8 bits of bits from bit i on, for i + 8 <= the bits' length (so the second byte is read only when needed,
 * and then exists). */
static inline unsigned eight_bits_at(const uint8_t *bits, int64_t i) {
    unsigned low = bits[i >> 3], high = i & 7 ? bits[(i >> 3) + 1] : 0u;
    return ((low | high << 8) >> (i & 7)) & 0xFFu;
}

/* take_bits, each set entry i also multiplied by factors[i / group] (a factor per group of entries: a channel's
 * positions).  0 where the bit is clear, whatever the factor (not 0 * factor, NaN for an infinite one).  8 entries
 * of a group at a time: a group need not start at a whole byte. */
static void take_bits_scaled_portable(const float *src, const uint8_t *bits, const float *factors, int64_t group,
                                      int64_t n, float *dst) {
    for (int64_t start = 0; start < n; start += group) {
        int64_t end = start + group, i = start;
        float f = factors[start / group];
        f32x4 factor = {f, f, f, f};
        for (; i + 8 <= end; i += 8) {
            i32x4 low, high;
            lanes_of_bits(eight_bits_at(bits, i), &low, &high);
            store4(dst + i, keep4(load4(src + i) * factor, low));
            store4(dst + i + 4, keep4(load4(src + i + 4) * factor, high));
        }
        for (; i < end; i++) dst[i] = (bits[i / 8] >> (i % 8)) & 1 ? src[i] * f : 0.0f;
    }
}

/* ---------------------------------------------------------------- AVX2 kernels (chosen at run time) */
#ifdef KSPARSE_X86
/* ksparse_init takes these only where the CPU has all three. */
#define AVX2 __attribute__((target("avx2,fma,popcnt")))

/* counts[c] += how many of the rows of bits (each (n + 7) / 8 bytes) have bit c set: the win counts, as a row's
 * bits are its winners (less, with relu, those with x <= 0, which select_slice adds).  Byte counters for chunk
 * bytes of columns at a time (at most 64: 512 columns), 255 rows a block: add(sums, bits, rows, bytes, width)
 * adds width bytes (at most chunk) of each of the rows of bits, each `bytes` apart, into the counters, then
 * stores them to sums (inlined here, once with the constant chunk for whole vectors).  At 5-25% active the kernel
 * took 0.84-0.97 of its time with the k increments per row scattered over the n counts, and as long at 1-2%; since
 * the rows need no winner ids for it (see select_slice), 0.73-0.83 at 0.25-2.4%. */
INLINE void count_bits_body(const uint8_t *bits, int64_t rows, int64_t n, int64_t *counts, int64_t chunk,
                            void (*add)(uint8_t *, const uint8_t *, int64_t, int64_t, int64_t)) {
    int64_t bytes = (n + 7) / 8;
    for (int64_t from = 0; from < bytes; from += chunk) {
        int64_t width = bytes - from < chunk ? bytes - from : chunk;
        int64_t columns = n - 8 * from < 8 * chunk ? n - 8 * from : 8 * chunk;
        for (int64_t r = 0; r < rows; r += 255) {
            uint8_t sums[512];
            int64_t block = rows - r < 255 ? rows - r : 255;
            if (width == chunk) add(sums, bits + r * bytes + from, block, bytes, chunk); /* whole vectors */
            else add(sums, bits + r * bytes + from, block, bytes, width);
            for (int64_t c = 0; c < columns; c++) counts[8 * from + c] += sums[c];
        }
    }
}

AVX2 static float hmin(__m256 v) {
    float a[8];
    _mm256_storeu_ps(a, v);
    float m = a[0];
    for (int j = 1; j < 8; j++) m = a[j] < m ? a[j] : m;
    return m;
}

AVX2 static float hmax(__m256 v) {
    float a[8];
    _mm256_storeu_ps(a, v);
    float m = a[0];
    for (int j = 1; j < 8; j++) m = a[j] > m ? a[j] : m;
    return m;
}

AVX2 static double hsum(__m256 v) {
    float a[8];
    _mm256_storeu_ps(a, v);
    double m = 0.0;
    for (int j = 0; j < 8; j++) m += a[j];
    return m;
}

/* The statistics' running sums, 32 scores a step: four sets of sums and two of extremes, so that the adds do not
 * wait on each other (with two sets of sums, their latency bounded the pass; more sets would not fit in the
 * registers).  A NaN makes the sum NaN and an infinity makes the sum or the extremes infinite, so the row is
 * finite when they are (a sum of squares that overflows only sends a huge but finite row down the generic path,
 * which is exact too). */
typedef struct {
    __m256 lo, hi, lo2, hi2, sum, sum2, sum3, sum4, sumsq, sumsq2, sumsq3, sumsq4;
} sums8;

AVX2 INLINE sums8 sums8_start(void) {
    __m256 lo = _mm256_set1_ps(INFINITY), hi = _mm256_set1_ps(-INFINITY), zero = _mm256_setzero_ps();
    sums8 a = {lo, hi, lo, hi, zero, zero, zero, zero, zero, zero, zero, zero};
    return a;
}

AVX2 INLINE void sums8_add(sums8 *a, __m256 v, __m256 w, __m256 v2, __m256 w2) {
    a->lo = _mm256_min_ps(a->lo, _mm256_min_ps(v, w));
    a->hi = _mm256_max_ps(a->hi, _mm256_max_ps(v, w));
    a->lo2 = _mm256_min_ps(a->lo2, _mm256_min_ps(v2, w2));
    a->hi2 = _mm256_max_ps(a->hi2, _mm256_max_ps(v2, w2));
    a->sum = _mm256_add_ps(a->sum, v);
    a->sum2 = _mm256_add_ps(a->sum2, w);
    a->sum3 = _mm256_add_ps(a->sum3, v2);
    a->sum4 = _mm256_add_ps(a->sum4, w2);
    a->sumsq = _mm256_fmadd_ps(v, v, a->sumsq);
    a->sumsq2 = _mm256_fmadd_ps(w, w, a->sumsq2);
    a->sumsq3 = _mm256_fmadd_ps(v2, v2, a->sumsq3);
    a->sumsq4 = _mm256_fmadd_ps(w2, w2, a->sumsq4);
}

/* The statistics of n scores: those in the sums, then the tail (the last tail_n scores) one by one. */
AVX2 INLINE row_stats sums8_finish(const sums8 *a, const float *tail, int64_t tail_n, int64_t n) {
    __m256 sum = _mm256_add_ps(_mm256_add_ps(a->sum, a->sum2), _mm256_add_ps(a->sum3, a->sum4));
    __m256 sumsq = _mm256_add_ps(_mm256_add_ps(a->sumsq, a->sumsq2), _mm256_add_ps(a->sumsq3, a->sumsq4));
    double total = hsum(sum), squares = hsum(sumsq);
    stats_sums s = {hmin(_mm256_min_ps(a->lo, a->lo2)), hmax(_mm256_max_ps(a->hi, a->hi2)), total, squares,
                    isfinite(total) && isfinite(squares)};
    s.finite = s.finite && isfinite(s.min) && isfinite(s.max);
    add_to_sums(&s, tail, tail_n);
    return stats_of_sums(&s, n);
}

AVX2 static row_stats stats_avx2(const float *s, int64_t n) {
    int64_t body = n - n % 32;
    sums8 a = sums8_start();
    for (int64_t i = 0; i < body; i += 32)
        sums8_add(&a, _mm256_loadu_ps(s + i), _mm256_loadu_ps(s + i + 8), _mm256_loadu_ps(s + i + 16),
                  _mm256_loadu_ps(s + i + 24));
    return sums8_finish(&a, s + body, n - body, n);
}

AVX2 static int64_t count_avx2(const float *s, int64_t n, float t) {
    int64_t body = n - n % 16;
    __m256 tv = _mm256_set1_ps(t);
    __m256i acc = _mm256_setzero_si256(), acc2 = acc;
    for (int64_t i = 0; i < body; i += 16) { /* a true lane is -1 */
        acc = _mm256_sub_epi32(acc, _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(s + i), tv, _CMP_GE_OQ)));
        acc2 = _mm256_sub_epi32(acc2, _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(s + i + 8), tv, _CMP_GE_OQ)));
    }
    int32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, _mm256_add_epi32(acc, acc2));
    int64_t c = 0;
    for (int j = 0; j < 8; j++) c += lanes[j];
    return c + count_portable(s + body, n - body, t);
}

/* COMPRESS[mask] lists the set bits of an 8-bit mask, lowest first: a lane permutation that packs the
 * selected lanes to the front, so that the collection below needs no branch per winner. */
static int32_t COMPRESS[256][8];

static void init_compress(void) {
    for (int mask = 0; mask < 256; mask++) {
        int o = 0;
        for (int bit = 0; bit < 8; bit++)
            if (mask & (1 << bit)) COMPRESS[mask][o++] = bit;
        while (o < 8) COMPRESS[mask][o++] = 0;
    }
}

/* collect_portable 8 scores at a time; whole vectors of lanes are stored, hence the room for n + 8.  With ahead,
 * one cache line per 16 scores of next and of dst (each NULL or n floats) is prefetched.  ahead is a constant in
 * each caller rather than derived from next and dst: testing them in the loop took 2-6% longer on boosted and
 * absolute scores at 256 x 1024 and 1024 x 512. */
AVX2 INLINE int64_t collect_body(const float *s, const int32_t *ids, int64_t n, float t, int32_t *out, float *values,
                                 int ahead, const float *next, const float *dst) {
    int64_t body = n - n % 8, o = 0;
    __m256 tv = _mm256_set1_ps(t);
    __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), eight = _mm256_set1_epi32(8);
    for (int64_t i = 0; i < body; i += 8) {
        if (ahead && i % 16 == 0) {
            if (next) _mm_prefetch((const char *)(next + i), _MM_HINT_T1);
            if (dst) _mm_prefetch((const char *)(dst + i), _MM_HINT_T1);
        }
        __m256 v = _mm256_loadu_ps(s + i);
        unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, tv, _CMP_GE_OQ));
        __m256i order = _mm256_loadu_si256((const __m256i *)COMPRESS[mask]);
        __m256i id = ids ? _mm256_loadu_si256((const __m256i *)(ids + i)) : lanes;
        if (out) _mm256_storeu_si256((__m256i *)(out + o), _mm256_permutevar8x32_epi32(id, order));
        if (values) _mm256_storeu_ps(values + o, _mm256_permutevar8x32_ps(v, order));
        o += _mm_popcnt_u32(mask);
        lanes = _mm256_add_epi32(lanes, eight);
    }
    int64_t tail = collect_portable(s + body, ids ? ids + body : NULL, n - body, t, out ? out + o : NULL,
                                    values ? values + o : NULL);
    if (out && !ids)
        for (int64_t j = o; j < o + tail; j++) out[j] += (int32_t)body;
    return o + tail;
}

AVX2 static int64_t collect_avx2(const float *s, const int32_t *ids, int64_t n, float t, int32_t *out, float *values) {
    return collect_body(s, ids, n, t, out, values, 0, NULL, NULL);
}

/* out NULL: the scores only, when no winner's id is wanted (see select_slice).  Two calls, so that the inlined body
 * is also compiled without the ids' permutes and stores. */
AVX2 static int64_t compact_row_avx2(const float *s, int64_t n, float t, int32_t *out, float *values, const float *next,
                                     const float *dst) {
    return out ? collect_body(s, NULL, n, t, out, values, 1, next, dst)
               : collect_body(s, NULL, n, t, NULL, values, 1, next, dst);
}

AVX2 static int64_t band_keys_avx2(const float *s, int64_t n, float lo, float hi, uint32_t *keys) {
    int64_t body = n - n % 8, b = 0;
    __m256 lv = _mm256_set1_ps(lo), hv = _mm256_set1_ps(hi), zero = _mm256_setzero_ps();
    __m256i top = _mm256_set1_epi32((int)0x80000000u);
    for (int64_t i = 0; i < body; i += 8) {
        __m256 v = _mm256_loadu_ps(s + i);
        __m256 in = _mm256_and_ps(_mm256_cmp_ps(v, lv, _CMP_GE_OQ), _mm256_cmp_ps(v, hv, _CMP_LT_OQ));
        unsigned mask = (unsigned)_mm256_movemask_ps(in);
        __m256i u = _mm256_castps_si256(_mm256_add_ps(v, zero)); /* finite_key, 8 lanes at a time */
        __m256i key = _mm256_xor_si256(u, _mm256_or_si256(_mm256_srai_epi32(u, 31), top));
        __m256i order = _mm256_loadu_si256((const __m256i *)COMPRESS[mask]);
        _mm256_storeu_si256((__m256i *)(keys + b), _mm256_permutevar8x32_epi32(key, order));
        b += _mm_popcnt_u32(mask);
    }
    return b + band_keys_portable(s + body, n - body, lo, hi, keys + b);
}

/* 8 scores of score_values to out; returns them. */
AVX2 INLINE __m256 scores8(const float *x, const float *boost, __m256 keep, float *out) {
    __m256 v = _mm256_and_ps(_mm256_loadu_ps(x), keep);
    if (boost) v = _mm256_mul_ps(v, _mm256_loadu_ps(boost));
    _mm256_storeu_ps(out, v);
    return v;
}

/* scores_portable in one pass: the statistics are taken as the scores are stored, instead of reading them again. */
AVX2 static row_stats scores_avx2(const float *x, const float *boost, int by_magnitude, int64_t n, float *out) {
    int64_t body = n - n % 32;
    __m256 keep = _mm256_castsi256_ps(_mm256_set1_epi32(by_magnitude ? 0x7FFFFFFF : -1)); /* |v|: no sign bit */
    sums8 a = sums8_start();
    for (int64_t i = 0; i < body; i += 32) {
        const float *b = boost ? boost + i : NULL;
        sums8_add(&a, scores8(x + i, b, keep, out + i), scores8(x + i + 8, b ? b + 8 : NULL, keep, out + i + 8),
                  scores8(x + i + 16, b ? b + 16 : NULL, keep, out + i + 16),
                  scores8(x + i + 24, b ? b + 24 : NULL, keep, out + i + 24));
    }
    score_values(x + body, boost ? boost + body : NULL, by_magnitude, n - body, out + body);
    return sums8_finish(&a, out + body, n - body, n);
}

/* One vector of the output passes: x (ReLU'd if relu) where the score wins, 0 elsewhere, to dst; returns the bits
 * of where the gradient passes.  A score wins at s >= t (write_above_portable), or with keep_ties where not
 * s < t, and then also counts in hits (keep_at_least_portable).  _mm256_max_ps(0, v) is v for a NaN v, as v < 0
 * is false there. */
AVX2 INLINE unsigned output8(const float *s, const float *x, __m256 tv, int relu, int keep_ties, float *dst,
                             int32_t *hits) {
    __m256 v = _mm256_loadu_ps(x), score = _mm256_loadu_ps(s), zero = _mm256_setzero_ps();
    __m256 won = keep_ties ? _mm256_cmp_ps(score, tv, _CMP_NLT_UQ) : _mm256_cmp_ps(score, tv, _CMP_GE_OQ);
    __m256 passes = relu ? _mm256_and_ps(won, _mm256_cmp_ps(v, zero, _CMP_NLE_UQ)) : won;
    if (relu) v = _mm256_max_ps(zero, v);
    _mm256_storeu_ps(dst, _mm256_and_ps(won, v));
    if (hits) {
        __m256i h = _mm256_loadu_si256((const __m256i *)hits); /* a winning lane is -1 */
        _mm256_storeu_si256((__m256i *)hits, _mm256_sub_epi32(h, _mm256_castps_si256(won)));
    }
    return (unsigned)_mm256_movemask_ps(passes);
}

/* output8 over the first n - n % 8 scores.  The bits are stored 32 at a time (x86 is little-endian: the first 8
 * go to the first byte): with a byte store after every vector store the pass took twice as long on Zen 3.
 * Always inlined, so that each call below gets its own loop for its constant relu and keep_ties. */
AVX2 INLINE void output_body(const float *s, const float *x, float t, int relu, int keep_ties, int64_t n, float *dst,
                             uint8_t *bits, int32_t *hits) {
    int64_t words = n - n % 32;
    __m256 tv = _mm256_set1_ps(t);
    for (int64_t i = 0; i < words; i += 32) {
        uint32_t word = 0;
        for (int j = 0; j < 32; j += 8)
            word |= output8(s + i + j, x + i + j, tv, relu, keep_ties, dst + i + j, hits ? hits + i + j : NULL)
                    << j;
        memcpy(bits + i / 8, &word, sizeof word);
    }
    for (int64_t i = words; i < n - n % 8; i += 8)
        bits[i / 8] = (uint8_t)output8(s + i, x + i, tv, relu, keep_ties, dst + i, hits ? hits + i : NULL);
}

/* write_above_portable (the tail starts at a multiple of 8, so at a whole byte). */
AVX2 static void write_above_avx2(const float *s, const float *x, float t, int relu, int64_t n, float *dst,
                                  uint8_t *bits) {
    if (relu) output_body(s, x, t, 1, 0, n, dst, bits, NULL);
    else output_body(s, x, t, 0, 0, n, dst, bits, NULL);
    /* GCC makes the call below a jump, and leaves out the vzeroupper it puts before a return: the vector
     * registers' upper halves then stayed in use after the kernel, and scalar SSE code run after it (the
     * sensitivity step's kernel) took 2.7 times as long on Zen 5, until some vector code cleared them. */
    _mm256_zeroupper();
    int64_t body = n - n % 8;
    write_above_portable(s + body, x + body, t, relu, n - body, dst + body, bits + body / 8);
}

/* keep_at_least_portable (the tail starts at a multiple of 8, so at a whole byte). */
AVX2 static void keep_at_least_avx2(const float *s, const float *x, float kth, int relu, int64_t n, float *dst,
                                    uint8_t *bits, int32_t *hits) {
    if (relu && hits) output_body(s, x, kth, 1, 1, n, dst, bits, hits);
    else if (relu) output_body(s, x, kth, 1, 1, n, dst, bits, NULL);
    else if (hits) output_body(s, x, kth, 0, 1, n, dst, bits, hits);
    else output_body(s, x, kth, 0, 1, n, dst, bits, NULL);
    _mm256_zeroupper(); /* as in write_above_avx2 */
    int64_t body = n - n % 8;
    keep_at_least_portable(s + body, x + body, kth, relu, n - body, dst + body, bits + body / 8,
                           hits ? hits + body : NULL);
}

AVX2 static void take_bits_avx2(const float *src, const uint8_t *bits, int64_t n, float *dst) {
    int64_t body = n - n % 8;
    __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    for (int64_t i = 0; i < body; i += 8) {
        __m256i set = _mm256_and_si256(_mm256_set1_epi32(bits[i / 8]), lane_bit);
        __m256 mask = _mm256_castsi256_ps(_mm256_cmpeq_epi32(set, lane_bit));
        _mm256_storeu_ps(dst + i, _mm256_and_ps(mask, _mm256_loadu_ps(src + i)));
    }
    _mm256_zeroupper(); /* as in write_above_avx2 */
    take_bits_portable(src + body, bits + body / 8, n - body, dst + body);
}

/* take_bits_scaled_portable, 8 entries of a group at a time: a group need not start at a whole byte. */
AVX2 static void take_bits_scaled_avx2(const float *src, const uint8_t *bits, const float *factors, int64_t group,
                                       int64_t n, float *dst) {
    __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    for (int64_t start = 0; start < n; start += group) {
        int64_t end = start + group, i = start;
        __m256 factor = _mm256_set1_ps(factors[start / group]);
        for (; i + 8 <= end; i += 8) {
            __m256i set = _mm256_and_si256(_mm256_set1_epi32((int)eight_bits_at(bits, i)), lane_bit);
            __m256 mask = _mm256_castsi256_ps(_mm256_cmpeq_epi32(set, lane_bit));
            _mm256_storeu_ps(dst + i, _mm256_and_ps(mask, _mm256_mul_ps(_mm256_loadu_ps(src + i), factor)));
        }
        for (; i < end; i++) dst[i] = (bits[i / 8] >> (i % 8)) & 1 ? src[i] * factors[start / group] : 0.0f;
    }
}

/* A row's 32 bits of 32 columns to 32 bytes, 0xFF where set: each byte copied to 8 lanes, then its own bit tested. */
AVX2 INLINE __m256i bytes_of_bits(uint32_t set) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, /* each 128-bit lane */
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3); /* holds the 4 bytes */
    const __m256i bit = _mm256_set1_epi64x((int64_t)0x8040201008040201);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int32_t)set), spread);
    return _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
}

/* count_bits_body's add for 256 columns: a shuffle, an AND, a compare and a subtraction per 32 columns a row. */
AVX2 INLINE void add_rows256(uint8_t *sums, const uint8_t *bits, int64_t rows, int64_t bytes, int64_t width) {
    __m256i counters[8];
    for (int q = 0; q < 8; q++) counters[q] = _mm256_setzero_si256();
    for (int64_t r = 0; r < rows; r++) {
        uint32_t set[8] = {0};
        memcpy(set, bits + r * bytes, width); /* a constant 32 but in the last chunk of a row */
        for (int q = 0; q < 8; q++) counters[q] = _mm256_sub_epi8(counters[q], bytes_of_bits(set[q]));
    }
    for (int q = 0; q < 8; q++) _mm256_storeu_si256((__m256i *)(sums + 32 * q), counters[q]);
}

AVX2 static void count_bits_avx2(const uint8_t *bits, int64_t rows, int64_t n, int64_t *counts) {
    count_bits_body(bits, rows, n, counts, 32, add_rows256);
}
#endif

/* ---------------------------------------------------------------- AVX-512 kernels (chosen at run time)
 * For the passes that gain from 16 lanes: statistics, scores, the compaction of the scores alone, output and the
 * backward's masking; the last, partial vector is masked instead of a scalar tail.  The compactions with ids stay
 * AVX2: on Zen 5 vpcompressd and vcompressps took 1.6-1.8 times as long as the permutes through COMPRESS (a row of
 * 4096 in L1). */
#ifdef KSPARSE_X86
#define AVX512 __attribute__((target("avx512f,popcnt")))

/* The lanes of a vector from entry i on that lie before n. */
AVX512 static inline __mmask16 lanes_before(int64_t i, int64_t n) {
    return n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
}

AVX512 static double hsum16(__m512 v) {
    float a[16];
    _mm512_storeu_ps(a, v);
    double m = 0.0;
    for (int j = 0; j < 16; j++) m += a[j];
    return m;
}

/* sums8 at 16 lanes, 64 scores a step. */
typedef struct {
    __m512 lo, hi, lo2, hi2, sum, sum2, sum3, sum4, sumsq, sumsq2, sumsq3, sumsq4;
} sums16;

AVX512 INLINE sums16 sums16_start(void) {
    __m512 lo = _mm512_set1_ps(INFINITY), hi = _mm512_set1_ps(-INFINITY), zero = _mm512_setzero_ps();
    sums16 a = {lo, hi, lo, hi, zero, zero, zero, zero, zero, zero, zero, zero};
    return a;
}

AVX512 INLINE void sums16_add(sums16 *a, __m512 v, __m512 w, __m512 v2, __m512 w2) {
    a->lo = _mm512_min_ps(a->lo, _mm512_min_ps(v, w));
    a->hi = _mm512_max_ps(a->hi, _mm512_max_ps(v, w));
    a->lo2 = _mm512_min_ps(a->lo2, _mm512_min_ps(v2, w2));
    a->hi2 = _mm512_max_ps(a->hi2, _mm512_max_ps(v2, w2));
    a->sum = _mm512_add_ps(a->sum, v);
    a->sum2 = _mm512_add_ps(a->sum2, w);
    a->sum3 = _mm512_add_ps(a->sum3, v2);
    a->sum4 = _mm512_add_ps(a->sum4, w2);
    a->sumsq = _mm512_fmadd_ps(v, v, a->sumsq);
    a->sumsq2 = _mm512_fmadd_ps(w, w, a->sumsq2);
    a->sumsq3 = _mm512_fmadd_ps(v2, v2, a->sumsq3);
    a->sumsq4 = _mm512_fmadd_ps(w2, w2, a->sumsq4);
}

/* The lanes m of v (0 in the others, which then add nothing) into the sums, keeping the extremes of those lanes. */
AVX512 INLINE void sums16_add_lanes(sums16 *a, __mmask16 m, __m512 v) {
    a->lo = _mm512_mask_min_ps(a->lo, m, a->lo, v);
    a->hi = _mm512_mask_max_ps(a->hi, m, a->hi, v);
    a->sum = _mm512_add_ps(a->sum, v);
    a->sumsq = _mm512_fmadd_ps(v, v, a->sumsq);
}

AVX512 INLINE row_stats sums16_finish(const sums16 *a, int64_t n) {
    __m512 sum = _mm512_add_ps(_mm512_add_ps(a->sum, a->sum2), _mm512_add_ps(a->sum3, a->sum4));
    __m512 sumsq = _mm512_add_ps(_mm512_add_ps(a->sumsq, a->sumsq2), _mm512_add_ps(a->sumsq3, a->sumsq4));
    double total = hsum16(sum), squares = hsum16(sumsq);
    float lo = _mm512_reduce_min_ps(_mm512_min_ps(a->lo, a->lo2));
    float hi = _mm512_reduce_max_ps(_mm512_max_ps(a->hi, a->hi2));
    stats_sums s = {lo, hi, total, squares, isfinite(total) && isfinite(squares)};
    s.finite = s.finite && isfinite(s.min) && isfinite(s.max);
    return stats_of_sums(&s, n);
}

AVX512 static row_stats stats_avx512(const float *s, int64_t n) {
    int64_t body = n - n % 64, i = 0;
    sums16 a = sums16_start();
    for (; i < body; i += 64)
        sums16_add(&a, _mm512_loadu_ps(s + i), _mm512_loadu_ps(s + i + 16), _mm512_loadu_ps(s + i + 32),
                   _mm512_loadu_ps(s + i + 48));
    for (; i < n; i += 16) {
        __mmask16 m = lanes_before(i, n);
        sums16_add_lanes(&a, m, _mm512_maskz_loadu_ps(m, s + i));
    }
    return sums16_finish(&a, n);
}

/* compact_row at 16 lanes where the scores alone are wanted (out NULL): one vcompressps to a register per vector
 * took 0.7 of the time of the permute through COMPRESS per 8 scores (rows of 4096 in L2, Zen 5); the store to
 * memory of vcompressps is slow on Zen 4, hence the register. */
AVX512 static int64_t compact_row_avx512(const float *s, int64_t n, float t, int32_t *out, float *values,
                                         const float *next, const float *dst) {
    if (out) return compact_row_avx2(s, n, t, out, values, next, dst);
    __m512 tv = _mm512_set1_ps(t);
    int64_t body = n - n % 16, o = 0;
    for (int64_t i = 0; i < n; i += 16) {
        if (next) _mm_prefetch((const char *)(next + i), _MM_HINT_T1);
        if (dst) _mm_prefetch((const char *)(dst + i), _MM_HINT_T1);
        __mmask16 m = lanes_before(i, n);
        __m512 v = _mm512_maskz_loadu_ps(m, s + i);
        __mmask16 kept = _mm512_mask_cmp_ps_mask(m, v, tv, _CMP_GE_OQ);
        int c = _mm_popcnt_u32(kept);
        /* whole vectors up to the last one, whose store would pass the room for n + 8 */
        if (i < body) _mm512_storeu_ps(values + o, _mm512_maskz_compress_ps(kept, v));
        else _mm512_mask_storeu_ps(values + o, (__mmask16)((1u << c) - 1u), _mm512_maskz_compress_ps(kept, v));
        o += c;
    }
    return o;
}

/* The lanes m of 16 scores of score_values to out; returns them (0 in the other lanes). */
AVX512 INLINE __m512 scores16(const float *x, const float *boost, __m512i keep, __mmask16 m, float *out) {
    __m512 v = _mm512_castsi512_ps(_mm512_and_si512(_mm512_maskz_loadu_epi32(m, x), keep));
    if (boost) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, boost));
    _mm512_mask_storeu_ps(out, m, v);
    return v;
}

/* scores_avx2 at 16 lanes. */
AVX512 static row_stats scores_avx512(const float *x, const float *boost, int by_magnitude, int64_t n, float *out) {
    __m512i keep = _mm512_set1_epi32(by_magnitude ? 0x7FFFFFFF : -1); /* |v|: no sign bit */
    int64_t body = n - n % 64, i = 0;
    sums16 a = sums16_start();
    for (; i < body; i += 64) {
        const float *b = boost ? boost + i : NULL;
        sums16_add(&a, scores16(x + i, b, keep, 0xFFFF, out + i),
                   scores16(x + i + 16, b ? b + 16 : NULL, keep, 0xFFFF, out + i + 16),
                   scores16(x + i + 32, b ? b + 32 : NULL, keep, 0xFFFF, out + i + 32),
                   scores16(x + i + 48, b ? b + 48 : NULL, keep, 0xFFFF, out + i + 48));
    }
    for (; i < n; i += 16) {
        __mmask16 m = lanes_before(i, n);
        sums16_add_lanes(&a, m, scores16(x + i, boost ? boost + i : NULL, keep, m, out + i));
    }
    return sums16_finish(&a, n);
}

/* output8 over the lanes m of 16 scores. */
AVX512 INLINE __mmask16 output16(const float *s, const float *x, __m512 tv, int relu, int keep_ties, __mmask16 m,
                                 float *dst, int32_t *hits) {
    __m512 v = _mm512_maskz_loadu_ps(m, x), score = _mm512_maskz_loadu_ps(m, s), zero = _mm512_setzero_ps();
    __mmask16 won = keep_ties ? _mm512_mask_cmp_ps_mask(m, score, tv, _CMP_NLT_UQ)
                              : _mm512_mask_cmp_ps_mask(m, score, tv, _CMP_GE_OQ);
    __mmask16 passes = relu ? _mm512_mask_cmp_ps_mask(won, v, zero, _CMP_NLE_UQ) : won;
    if (relu) v = _mm512_max_ps(zero, v);
    _mm512_mask_storeu_ps(dst, m, _mm512_maskz_mov_ps(won, v));
    if (hits) {
        __m512i h = _mm512_maskz_loadu_epi32(m, hits);
        _mm512_mask_storeu_epi32(hits, m, _mm512_mask_add_epi32(h, won, h, _mm512_set1_epi32(1)));
    }
    return passes;
}

/* output_body and its tail: the bits go out 64 at a time, then 16, then the last byte or two. */
AVX512 INLINE void output_row512(const float *s, const float *x, float t, int relu, int keep_ties, int64_t n,
                                 float *dst, uint8_t *bits, int32_t *hits) {
    int64_t words = n - n % 64, i = 0;
    __m512 tv = _mm512_set1_ps(t);
    for (; i < words; i += 64) {
        uint64_t word = 0;
        for (int j = 0; j < 64; j += 16)
            word |= (uint64_t)output16(s + i + j, x + i + j, tv, relu, keep_ties, 0xFFFF, dst + i + j,
                                       hits ? hits + i + j : NULL)
                    << j;
        memcpy(bits + i / 8, &word, sizeof word);
    }
    for (; i < n; i += 16) {
        unsigned half = output16(s + i, x + i, tv, relu, keep_ties, lanes_before(i, n), dst + i,
                                 hits ? hits + i : NULL);
        bits[i / 8] = (uint8_t)half;
        if (n - i > 8) bits[i / 8 + 1] = (uint8_t)(half >> 8);
    }
}

AVX512 static void write_above_avx512(const float *s, const float *x, float t, int relu, int64_t n, float *dst,
                                      uint8_t *bits) {
    if (relu) output_row512(s, x, t, 1, 0, n, dst, bits, NULL);
    else output_row512(s, x, t, 0, 0, n, dst, bits, NULL);
}

AVX512 static void keep_at_least_avx512(const float *s, const float *x, float kth, int relu, int64_t n, float *dst,
                                        uint8_t *bits, int32_t *hits) {
    if (relu && hits) output_row512(s, x, kth, 1, 1, n, dst, bits, hits);
    else if (relu) output_row512(s, x, kth, 1, 1, n, dst, bits, NULL);
    else if (hits) output_row512(s, x, kth, 0, 1, n, dst, bits, hits);
    else output_row512(s, x, kth, 0, 1, n, dst, bits, NULL);
}

/* For the byte operations; ksparse_init takes the kernels that use them only where the CPU has them. */
#define AVX512BW __attribute__((target("avx512f,avx512bw,popcnt")))

/* count_bits_body's add for 512 columns: a masked byte add per 64 columns a row. */
AVX512BW INLINE void add_rows512(uint8_t *sums, const uint8_t *bits, int64_t rows, int64_t bytes, int64_t width) {
    const __m512i one = _mm512_set1_epi8(1);
    __mmask64 lanes = width >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << width) - 1;
    __m512i counters[8];
    for (int q = 0; q < 8; q++) counters[q] = _mm512_setzero_si512();
    for (int64_t r = 0; r < rows; r++) {
        uint64_t set[8];
        if (width == 64) memcpy(set, bits + r * bytes, sizeof set);
        else _mm512_storeu_si512((void *)set, _mm512_maskz_loadu_epi8(lanes, bits + r * bytes)); /* not past the row */
        for (int q = 0; q < 8; q++) counters[q] = _mm512_mask_add_epi8(counters[q], set[q], counters[q], one);
    }
    for (int q = 0; q < 8; q++) _mm512_storeu_si512((void *)(sums + 64 * q), counters[q]);
}

AVX512BW static void count_bits_avx512(const uint8_t *bits, int64_t rows, int64_t n, int64_t *counts) {
    count_bits_body(bits, rows, n, counts, 64, add_rows512);
}

AVX512 static void take_bits_avx512(const float *src, const uint8_t *bits, int64_t n, float *dst) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        uint16_t set;
        memcpy(&set, bits + i / 8, sizeof set);
        _mm512_storeu_ps(dst + i, _mm512_maskz_loadu_ps(set, src + i));
    }
    if (i < n) {
        __mmask16 m = lanes_before(i, n);
        unsigned set = bits[i / 8] | (n - i > 8 ? (unsigned)bits[i / 8 + 1] << 8 : 0u); /* & m: no load past n */
        _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_loadu_ps((__mmask16)set & m, src + i));
    }
}
#endif

static row_stats (*stats)(const float *, int64_t) = stats_portable;
static int64_t (*count_at_least)(const float *, int64_t, float) = count_portable;
static int64_t (*collect_at_least)(const float *, const int32_t *, int64_t, float, int32_t *,
                                   float *) = collect_portable;
static int64_t (*compact_row)(const float *, int64_t, float, int32_t *, float *, const float *,
                              const float *) = compact_row_portable;
static int64_t (*band_keys)(const float *, int64_t, float, float, uint32_t *) = band_keys_portable;
static row_stats (*row_scores)(const float *, const float *, int, int64_t, float *) = scores_portable;
static void (*write_above)(const float *, const float *, float, int, int64_t, float *,
                           uint8_t *) = write_above_portable;
static void (*keep_at_least)(const float *, const float *, float, int, int64_t, float *, uint8_t *,
                             int32_t *) = keep_at_least_portable;
static void (*take_bits)(const float *, const uint8_t *, int64_t, float *) = take_bits_portable;
static void (*take_bits_scaled)(const float *, const uint8_t *, const float *, int64_t, int64_t,
                                float *) = take_bits_scaled_portable;
static void (*count_bits)(const uint8_t *, int64_t, int64_t, int64_t *) = NULL;

/* Picks the kernels for this CPU: the widest it runs, but none wider than most (0: portable, 1: AVX2, 2: AVX-512;
 * tests compare them).  Returns the width in use. */
int ksparse_init(int most) {
    stats = stats_portable;
    count_at_least = count_portable;
    collect_at_least = collect_portable;
    compact_row = compact_row_portable;
    band_keys = band_keys_portable;
    row_scores = scores_portable;
    write_above = write_above_portable;
    keep_at_least = keep_at_least_portable;
    take_bits = take_bits_portable;
    take_bits_scaled = take_bits_scaled_portable;
    count_bits = NULL;
#ifdef KSPARSE_X86
    __builtin_cpu_init();
    if (most < 1 || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") ||
        !__builtin_cpu_supports("popcnt"))
        return 0;
    stats = stats_avx2;
    count_at_least = count_avx2;
    init_compress();
    collect_at_least = collect_avx2;
    compact_row = compact_row_avx2;
    band_keys = band_keys_avx2;
    row_scores = scores_avx2;
    write_above = write_above_avx2;
    keep_at_least = keep_at_least_avx2;
    take_bits = take_bits_avx2;
    take_bits_scaled = take_bits_scaled_avx2;
    count_bits = count_bits_avx2;
    /* AVX-512 only where VBMI2 marks a CPU that keeps its clock under 512-bit code (Intel Ice Lake on, AMD Zen 4 on):
     * Skylake and Cascade Lake servers slow down, and with them the rest of a training step. */
    if (most < 2 || !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512vbmi2")) return 1;
    stats = stats_avx512;
    row_scores = scores_avx512;
    compact_row = compact_row_avx512;
    write_above = write_above_avx512;
    keep_at_least = keep_at_least_avx512;
    take_bits = take_bits_avx512;
    if (__builtin_cpu_supports("avx512bw")) count_bits = count_bits_avx512; /* every CPU with VBMI2 so far */
    return 2;
#else
    (void)most;
    return 0;
#endif
}

/* ---------------------------------------------------------------- generic path: keys and quickselect */
static inline uint32_t key_of(float v) {
    if (v != v) return 0xFFFFFFFFu;
    float w = v + 0.0f; /* -0 becomes +0 */
    uint32_t u;
    memcpy(&u, &w, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* The r-th largest (1-based) of a[0..len), reordering a.  Three-way partitions stay linear on equal keys. */
static uint32_t rth_largest(uint32_t *a, int64_t len, int64_t r) {
    int64_t lo = 0, hi = len, target = r - 1;
    while (hi - lo > 1) {
        uint32_t x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1];
        uint32_t pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        int64_t gt = lo, i = lo, lt = hi; /* [lo, gt) > pivot, [gt, i) == pivot, [lt, hi) < pivot */
        while (i < lt) {
            uint32_t v = a[i];
            if (v > pivot) {
                a[i++] = a[gt];
                a[gt++] = v;
            } else if (v < pivot) {
                a[i] = a[--lt];
                a[lt] = v;
            } else {
                i++;
            }
        }
        if (target < gt) hi = gt;
        else if (target >= lt) lo = lt;
        else return pivot;
    }
    return a[lo];
}

/* rth_largest for a few keys, without branches on them: the r-th largest is the key with fewer than r keys
 * above it and at least r at or above it.  Quickselect's partitions mispredict about once per key there,
 * and the band it finishes is usually this small. */
#define FEW_KEYS 32
static uint32_t rth_largest_of_few(const uint32_t *a, int64_t len, int64_t r) {
    uint32_t kth = a[0];
    for (int64_t j = 0; j < len; j++) {
        int64_t above = 0, at_least = 0;
        for (int64_t i = 0; i < len; i++) {
            above += a[i] > a[j];
            at_least += a[i] >= a[j];
        }
        kth = above < r && r <= at_least ? a[j] : kth;
    }
    return kth;
}

static void select_by_keys(const float *s, int64_t n, int64_t k, int64_t *idx, uint32_t *work) {
    for (int64_t i = 0; i < n; i++) work[i] = key_of(s[i]);
    uint32_t kth = rth_largest(work, n, k);
    int64_t greater = 0;
    for (int64_t i = 0; i < n; i++) greater += key_of(s[i]) > kth;
    int64_t ties = k - greater, o = 0;
    for (int64_t i = 0; i < n && o < k; i++) {
        uint32_t key = key_of(s[i]);
        if (key > kth || (key == kth && ties-- > 0)) idx[o++] = i;
    }
}

/* ---------------------------------------------------------------- fast path: threshold search */
#define MAX_TRIES 12 /* then the band is finished by quickselect, however wide (ties, odd rows) */
#define BAND 48      /* the search stops once at most this many scores lie between its brackets */
#define CANDIDATE_BAND 8 /* the same over the compacted candidates, whose counting passes are cheap */

static float midpoint(float lo, float hi) { return (float)(((double)lo + (double)hi) * 0.5); }

/* Per-thread work space of the threshold search; every array has room for n + 8 entries. */
typedef struct {
    int32_t *cand;      /* the candidates: ids of the scores >= the compaction threshold */
    float *values;      /* and their scores */
    int32_t *winners;   /* the winners' ids, where the search finds them */
    uint32_t *keys;     /* the keys of the scores between the search's brackets */
    /* prefetched while a row is compacted (NULL: nothing): the next row's input, and this row's output */
    const float *next, *dst;
} work_space;

/* What the search assumes of a row before reading it: k/n of it lies z deviations above the mean, where the count
 * falls by about n * density / std per unit of threshold, and z_low deviations above the mean is a little below
 * the k-th score (NaN: no compaction).  The first row of a call takes the normal quantiles (z_low where 2k pass),
 * the next ones what the rows before had (kth_position). */
typedef struct {
    float z, z_low;
    double density;
} normal_guess;

/* Where the winners' threshold of the rows seen so far lay, in deviations above their means.  The rows of one
 * call come from one layer and share a shape, normal or not (a trained encoder's k-th score lay 0.03-0.8
 * deviations off the normal quantile), so each row's first try aims where the rows before had their threshold,
 * and its compaction keeps the scores down to MARGIN mean absolute deviations of that position below it: about k
 * plus the rows' spread (k + 25 to k + 50 on normal rows at the benchmark shapes) rather than 2k.  A row whose
 * compaction keeps fewer than k still gets its exact winners, searched in the whole row. */
#define MARGIN 5.0f
#define LEARNING_RATE 0.125f
/* Rows of one shape (copies, scaled copies) would narrow the margin to nothing and the compaction to fewer than
 * k by rounding: the deviation stays at least this. */
#define LEAST_DEVIATION 0.01f
typedef struct {
    float z, deviation; /* moving mean of the position and of its absolute deviation from that mean */
} kth_position;

/* Starts at the normal quantile, with a deviation that compacts where 2k scores of a normal row pass. */
static kth_position first_position(const normal_guess *g) {
    kth_position p = {g->z, isnan(g->z_low) ? 0.0f : (g->z - g->z_low) / MARGIN};
    return p;
}

/* The guess for the next row (compacting only where g does): g itself where the positions spread wider than g's
 * margin, from its k-th to its 2k-th score.  Rows of several shapes in turn (normal and lognormal rows alternating,
 * 2% active of 1024) spread them so far that the compaction threshold fell below most rows, which were then searched
 * whole: 1.27 times the time of g's guesses; capping the margin at g's instead left fewer than k candidates in half
 * the rows, 1.67 times. */
static normal_guess guess_at(const kth_position *p, const normal_guess *g) {
    if (MARGIN * p->deviation > g->z - g->z_low) return *g;
    normal_guess row = {p->z, isnan(g->z_low) ? NAN : p->z - MARGIN * p->deviation, g->density};
    return row;
}

/* Learns from a row with statistics r and winners' threshold.  Nothing from tied winners (a NaN threshold), a
 * constant row, or scores so large that the position overflows: a position not finite would stay so.  (Written
 * as one isfinite test of the position alone, the kernel took 1.15 times as long at 1024 x 512: how this loop's
 * code lies moves its time by as much as the learning gains.) */
static void learn_position(kth_position *p, float threshold, row_stats r) {
    if (isnan(threshold) || !(r.std > 0.0f)) return;
    float z = (threshold - r.mean) / r.std;
    if (!(fabsf(z) < INFINITY)) return;
    float off = z - p->z;
    p->z += LEARNING_RATE * off;
    p->deviation += LEARNING_RATE * (fabsf(off) - p->deviation);
    p->deviation = p->deviation > LEAST_DEVIATION ? p->deviation : LEAST_DEVIATION;
}

/* Winners once the k-th largest score of s (ids: the scores' ids, NULL for their positions) is known to lie
 * in [lo, hi), with c_hi scores >= hi: one pass takes the keys of the scores in the band, a few when the search
 * closed in, and the k - c_hi largest of those join the c_hi above.  Which side of a bracket a score falls on is
 * unpredictable, so the scores are sifted by vector compares rather than branches.  (Gathering the scores >= lo
 * first, then the keys of those below hi, read k more scores twice: at 256 x 1024, 10% active, the two passes
 * took a quarter of the kernel's samples.)
 *
 * This and the functions below return the winners' threshold: the winners are exactly the scores >= it
 * (NaN when the k-th largest score is tied, so that no threshold separates them).  With idx NULL they seek the
 * threshold only: no winner is written, and no id is gathered (ids is then unused). */
static float finish_in_band(const float *s, const int32_t *ids, int64_t n, int64_t k, float lo, float hi,
                            int64_t c_hi, int64_t *idx, work_space *w) {
    uint32_t *keys = w->keys;
    int64_t b = band_keys(s, n, lo, hi, keys);
    uint32_t kth = b <= FEW_KEYS ? rth_largest_of_few(keys, b, k - c_hi) : rth_largest(keys, b, k - c_hi);
    int64_t above = c_hi, equal = 0;
    for (int64_t j = 0; j < b; j++) {
        above += keys[j] > kth;
        equal += keys[j] == kth;
    }
    if (above + equal == k) { /* no tie at the k-th score: exactly k scores are >= it */
        float t;
        uint32_t bits = kth & 0x80000000u ? kth ^ 0x80000000u : ~kth; /* back from key to float */
        memcpy(&t, &bits, sizeof t);
        if (!idx) return t;
        collect_at_least(s, ids, n, t, w->winners, NULL);
        for (int64_t j = 0; j < k; j++) idx[j] = w->winners[j];
        return t;
    }
    if (!idx) return NAN;
    int64_t ties = k - above, o = 0; /* tied k-th scores: the lower indices win */
    for (int64_t j = 0; j < n && o < k; j++) {
        uint32_t key = finite_key(s[j]);
        if (key > kth || (key == kth && ties-- > 0)) idx[o++] = ids ? ids[j] : j;
    }
    return NAN;
}

/* The winners of the finite scores s (ids as in finish_in_band), given brackets of the k-th largest:
 * count(lo) = c_lo > k > c_hi = count(hi), where count(t) is the number of scores >= t; t: the first try,
 * slope: the expected change of the count per unit of threshold. */
static float search_threshold(const float *s, const int32_t *ids, int64_t n, int64_t k, float lo, float hi,
                              int64_t c_lo, int64_t c_hi, float t, double slope, int64_t band, int64_t *idx,
                              work_space *w) {
    float t_prev = t;
    int64_t c_prev = -1;
    for (int tries = 0; tries < MAX_TRIES && c_lo - c_hi > band; tries++) {
        if (!(t > lo && t < hi)) t = midpoint(lo, hi);
        if (!(t > lo && t < hi)) break; /* neighbouring floats: the band holds one (tied) value */
        int64_t c = count_at_least(s, n, t);
        if (c == k) {
            if (!idx) return t;
            collect_at_least(s, ids, n, t, w->winners, NULL);
            for (int64_t j = 0; j < k; j++) idx[j] = w->winners[j];
            return t;
        }
        if (c > k) {
            lo = t;
            c_lo = c;
        } else {
            hi = t;
            c_hi = c;
        }
        /* Newton steps on the count (the slope from the last two tries), aimed a little past k so the
         * next try lands on the other side and closes the band.  A guess outside the brackets becomes
         * their midpoint. */
        if (c_prev >= 0 && c_prev != c) slope = (double)(c - c_prev) / ((double)t - (double)t_prev);
        t_prev = t;
        c_prev = c;
        double target = c > k ? k - band / 4 : k + band / 4;
        t = (float)((double)t + (target - (double)c) / slope);
    }
    return finish_in_band(s, ids, n, k, lo, hi, c_hi, idx, w);
}

/* Returns 0 (the caller takes the generic path) for rows with a NaN or an infinite score.
 *
 * Before searching, one pass compacts the row to the scores at or above g's z_low (the candidates, in order):
 * every winner is among them when they are at least k, and the search's counting passes then run over a few
 * hundred scores instead of the row.  Fewer than k (a row unlike the ones before) only narrows the search's
 * brackets. */
static int select_by_threshold(const float *s, row_stats r, int64_t n, int64_t k, const normal_guess *g,
                               int64_t *idx, float *threshold, work_space *w) {
    if (!r.finite) return 0;
    float lo = r.min, hi = nextafterf(r.max, INFINITY);
    int64_t c_lo = n, c_hi = 0;
    float t = r.mean + g->z * r.std;
    double slope = -(double)n * g->density / (r.std > 0.0f ? r.std : 1.0f);
    float t_low = r.mean + g->z_low * r.std; /* NaN without compaction: fails both compares */
    if (t_low > lo && t_low < hi) {
        int64_t m = compact_row(s, n, t_low, idx ? w->cand : NULL, w->values, w->next, w->dst);
        if (m == k) {
            if (idx)
                for (int64_t j = 0; j < k; j++) idx[j] = w->cand[j];
            *threshold = t_low;
            return 1;
        }
        if (m > k) {
            *threshold = search_threshold(w->values, idx ? w->cand : NULL, m, k, t_low, hi, m, c_hi, t, slope,
                                          CANDIDATE_BAND, idx, w);
            return 1;
        }
        hi = t_low;
        c_hi = m;
    }
    *threshold = search_threshold(s, NULL, n, k, lo, hi, c_lo, c_hi, t, slope, BAND, idx, w);
    return 1;
}

/* The winners of a row to idx; returns their threshold as search_threshold does (NaN also for rows with a
 * NaN or an infinite score, and for k = n).  r: the statistics of s (unused for k = n).  With idx NULL, the
 * threshold only: a NaN then says that the winners need their ids (ask again with idx). */
static float select_row(const float *s, row_stats r, int64_t n, int64_t k, const normal_guess *g,
                        int64_t *idx, work_space *w) {
    float threshold = NAN;
    if (k == n) {
        if (idx)
            for (int64_t i = 0; i < n; i++) idx[i] = i;
    } else if (!select_by_threshold(s, r, n, k, g, idx, &threshold, w) && idx) {
        select_by_keys(s, n, k, idx, w->keys);
    }
    return threshold;
}

/* ---------------------------------------------------------------- rows split over threads */
typedef struct {
    const float *x;     /* (rows, n) activations */
    const float *boost; /* (n,) factors the scores are multiplied by, or NULL */
    int by_magnitude;   /* rank by |x| */
    int64_t *indices;   /* (rows, k) out: the winners, ascending; or NULL (always in threshold mode) */
    float *dst;         /* (rows, n) out, or NULL: x at the winners (ReLU'd if relu), 0 elsewhere */
    int relu;
    int64_t *counts;    /* (n,) out, or NULL: how many rows each column won in */
    uint8_t *bits;      /* (rows, (n + 7) / 8) out with dst: where the gradient passes, see write_above_portable */
    int keep_ties;      /* threshold mode (bits then required): see keep_at_least_portable */
    int64_t n, k;
    normal_guess guess;
} select_job;

typedef struct {
    const float *src;
    const int64_t *indices;
    float *dst;
    uint8_t *bits;
    int64_t n, k;
    int relu;
} take_job;

typedef struct {
    const void *job;
    int64_t begin, end;
} slice;

/* dst = 0 but dst[idx[j]] = src[idx[j]] (ReLU'd if relu).  Returns 0 if an index lies outside [0, n). */
static int write_row(const float *src, const int64_t *idx, int relu, int64_t n, int64_t k, float *dst) {
    memset(dst, 0, n * sizeof(float));
    for (int64_t j = 0; j < k; j++) {
        if ((uint64_t)idx[j] >= (uint64_t)n) return 0;
        float v = src[idx[j]];
        if (relu && v < 0.0f) v = 0.0f;
        dst[idx[j]] = v;
    }
    return 1;
}

/* The bits of write_above_portable for the winners idx of a row (when no threshold separates them, or given). */
static void winner_bits(const float *x, const int64_t *idx, int relu, int64_t n, int64_t k, uint8_t *bits) {
    memset(bits, 0, (n + 7) / 8);
    for (int64_t j = 0; j < k; j++) {
        int64_t i = idx[j];
        if (!relu || !(x[i] <= 0.0f)) bits[i / 8] |= (uint8_t)(1u << (i % 8));
    }
}

/* The k-th largest score of a row: the smallest of its winners' (NaN if one of them is NaN, as torch's amin). */
static float kth_score(const float *s, const int64_t *idx, int64_t k) {
    float m = INFINITY;
    for (int64_t j = 0; j < k; j++) {
        float v = s[idx[j]];
        if (v != v) return v;
        m = v < m ? v : m;
    }
    return m;
}

static void *select_slice(void *arg) {
    const slice *sl = arg;
    const select_job *job = sl->job;
    int64_t n = job->n, k = job->k, bytes = (n + 7) / 8;
    int scored = job->boost || job->by_magnitude;
    /* the work space: n + 8 for the whole vectors the AVX2 kernels store; scores: n, and one more float for odd n
     * so that the 8-byte counts (n) line up; a row's winners (k) when they are not written out; threshold mode's
     * counts in int32 lanes (n).  In this order: with the counts and the winners first, the kernel took 0.97-1.09
     * times as long at 256 x 1024 (two threads, eight comparisons, six of them slower). */
    char *work = malloc((n + 8) * 4 * sizeof(float) + (n + n % 2) * sizeof(float) + n * sizeof(int64_t) +
                        (job->indices ? 0 : k * sizeof(int64_t)) + (job->keep_ties ? n * sizeof(int32_t) : 0));
    if (!work) return (void *)1;
    work_space w;
    w.cand = (int32_t *)work;
    w.values = (float *)(w.cand + n + 8);
    w.winners = (int32_t *)(w.values + n + 8);
    w.keys = (uint32_t *)(w.winners + n + 8);
    float *scores = (float *)(w.keys + n + 8);
    int64_t *counts = (int64_t *)(scores + n + n % 2);
    int64_t *own_idx = counts + n;
    int32_t *hits = (int32_t *)(own_idx + (job->indices ? 0 : k));
    if (job->counts) memset(counts, 0, n * sizeof(int64_t));
    /* The win counts from the bits where count_bits serves (AVX2, AVX-512); not for boosted or |x| scores with relu,
     * nor threshold mode with relu, where any winner may lack its bit and adding those back costs what the
     * increments do.  With relu on x itself, only rows with a threshold <= 0 may. */
    int from_bits = job->counts && job->dst && count_bits && !(job->relu && (scored || job->keep_ties));
    if (job->keep_ties && !from_bits) memset(hits, 0, n * sizeof(int32_t)); /* else unused */
    /* The winners' ids where something reads them: the indices out, counts by increments (threshold mode counts
     * its hits), the k-th score of a tie in threshold mode.  Else the threshold is sought alone (its compaction
     * then gathers no ids: the kernel took 0.87-0.90 of its time at 256 x 4096, 5% active, 0.76-0.92 at 256 x 1024
     * and 1024 x 512), and a row that turns out to need its winners (a tie at the k-th score, a non-finite score,
     * relu winners x <= 0 that the bits do not count) is selected again with them, as are the slice's rows after
     * it: such inputs (bfloat16 values cast up, with their ties) tend to go on so. */
    int ids_always = job->indices || !job->dst || (job->counts && !from_bits && !job->keep_ties);
    kth_position position = first_position(&job->guess);
    for (int64_t row = sl->begin; row < sl->end; row++) {
        const float *x = job->x + row * n, *s = x;
        int64_t *idx = job->indices ? job->indices + row * k : ids_always ? own_idx : NULL;
        /* The hardware prefetches behind the passes that read memory only, so a row's compute and its memory
         * traffic took turns: prefetching these during the compaction overlaps them (with inputs out of the
         * caches, the kernel took 1.2-1.5 times as long without at the benchmark shapes).  Into the second-level
         * cache, not the first: the kernel then took 0.93-0.99 of its time at n = 4096 and 0.85-0.88 at 8192, and
         * 0.97-1.04 at n = 1024 and 512 (Zen 5), presumably as the next row and the output (32 KiB at 4096) no
         * longer push this row, its scores and the boost out of the 48 KiB first-level cache. */
        w.next = row + 1 < sl->end ? x + n : NULL;
        w.dst = job->dst ? job->dst + row * n : NULL;
        row_stats r = {0};
        if (scored) {
            r = row_scores(x, job->boost, job->by_magnitude, n, scores);
            s = scores;
        } else if (k < n) {
            r = stats(s, n);
        }
        normal_guess guess = guess_at(&position, &job->guess);
        float threshold = select_row(s, r, n, k, &guess, idx, &w);
        if (!idx && (isnan(threshold) || (from_bits && job->relu && !(threshold > 0.0f)))) {
            ids_always = 1;
            idx = own_idx;
            threshold = select_row(s, r, n, k, &guess, idx, &w);
        }
        learn_position(&position, threshold, r);
        uint8_t *bits = job->bits ? job->bits + row * bytes : NULL; /* not NULL with dst */
        if (job->keep_ties) { /* a threshold with k scores at or above it keeps what the k-th score would */
            float kth = isnan(threshold) ? kth_score(s, idx, k) : threshold;
            keep_at_least(s, x, kth, job->relu, n, job->dst + row * n, bits, from_bits ? NULL : hits);
            continue;
        }
        if (job->dst && !isnan(threshold)) {
            write_above(s, x, threshold, job->relu, n, job->dst + row * n, bits);
        } else if (job->dst) {
            write_row(x, idx, job->relu, n, k, job->dst + row * n); /* idx in range by construction */
            winner_bits(x, idx, job->relu, n, k, bits);
        }
        if (job->counts && !from_bits) {
            for (int64_t j = 0; j < k; j++) counts[idx[j]]++;
        } else if (from_bits && job->relu && !(threshold > 0.0f)) { /* the winners x <= 0, which have no bit */
            for (int64_t j = 0; j < k; j++) counts[idx[j]] += x[idx[j]] <= 0.0f;
        }
    }
    if (from_bits) count_bits(job->bits + sl->begin * bytes, sl->end - sl->begin, n, counts);
    if (job->counts && job->keep_ties && !from_bits)
        for (int64_t i = 0; i < n; i++) counts[i] = hits[i];
    if (job->counts) {
#ifdef _OPENMP
#pragma omp critical(ksparse_counts)
#endif
        for (int64_t i = 0; i < n; i++) job->counts[i] += counts[i];
    }
    free(work);
    return NULL;
}

static void *take_slice(void *arg) {
    const slice *sl = arg;
    const take_job *job = sl->job;
    int64_t n = job->n, k = job->k;
    for (int64_t row = sl->begin; row < sl->end; row++) {
        const float *src = job->src + row * n;
        const int64_t *idx = job->indices + row * k;
        if (!write_row(src, idx, job->relu, n, k, job->dst + row * n)) return (void *)1; /* an index outside [0, n) */
        winner_bits(src, idx, job->relu, n, k, job->bits + row * ((n + 7) / 8));
    }
    return NULL;
}

/* Runs fn over [0, rows) of n entries in contiguous slices, one per thread; returns 0 on success.  The threads
 * are OpenMP's: loaded after torch, this library shares torch's OpenMP runtime (same soname), so the kernel
 * runs on the pool that torch's own CPU ops use instead of competing with its spinning threads. */
static int run_rows(void *(*fn)(void *), const void *job, int64_t rows, int64_t n, int threads) {
    threads = threads_for(rows * n, threads);
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        int count = omp_get_num_threads(), t = omp_get_thread_num();
        slice part = {job, rows * t / count, rows * (t + 1) / count};
        failed |= fn(&part) != NULL;
    }
#else
    slice part = {job, 0, rows};
    failed = fn(&part) != NULL;
#endif
    return failed;
}

static normal_guess guess_of(float z, float z_low) {
    normal_guess guess = {z, z_low, exp(-0.5 * (double)z * z) * 0.3989422804014327}; /* the density at z */
    return guess;
}

/* Per row of x (rows, n): indices (unless NULL) = the k largest scores (x, or |x| if by_magnitude, times boost
 * if not NULL), ascending; if dst, the sparse output (x at the winners, ReLU'd if relu), and bits (rows, (n + 7) / 8,
 * not NULL then), where its gradient passes (see write_above_portable); if counts (zeroed by the caller),
 * how many rows each column won in.  z, z_low: the normal quantiles of 1 - k/n and 1 - 2k/n (NaN for no
 * compaction; see select_by_threshold).  Returns nonzero if a thread could not allocate its buffers. */
int ksparse_select_rows(const float *x, const float *boost, int by_magnitude, int64_t *indices, float *dst,
                        uint8_t *bits, int relu, int64_t *counts, int64_t rows, int64_t n, int64_t k, float z,
                        float z_low, int threads) {
    select_job job = {x, boost, by_magnitude, indices, dst, relu, counts, bits, 0, n, k, guess_of(z, z_low)};
    return run_rows(select_slice, &job, rows, n, threads);
}

/* Threshold mode: per row of x (rows, n), dst = x (ReLU'd if relu) where the score (as in ksparse_select_rows)
 * is not below the row's k-th largest, ties and NaN included, 0 elsewhere; bits (rows, (n + 7) / 8): bit i
 * of a row set where its gradient passes (see keep_at_least_portable); if counts (zeroed by the caller), how
 * many rows kept each column.  Returns nonzero if a thread could not allocate its buffers. */
int ksparse_keep_at_least_rows(const float *x, const float *boost, int by_magnitude, float *dst, uint8_t *bits,
                               int relu, int64_t *counts, int64_t rows, int64_t n, int64_t k, float z, float z_low,
                               int threads) {
    select_job job = {x, boost, by_magnitude, NULL, dst, relu, counts, bits, 1, n, k, guess_of(z, z_low)};
    return run_rows(select_slice, &job, rows, n, threads);
}

typedef struct {
    const float *src;
    const uint8_t *bits;
    const float *factors;   /* (rows, groups), or with indices (rows, k); or NULL */
    const int64_t *indices; /* (rows, k) or NULL */
    int64_t groups, k;
    float *dst;
    int64_t n;
} bits_job;

/* A row's set entries at idx (k of them) multiplied by their factors, after take_bits wrote the row: the row is
 * still in cache, so these k scattered stores cost little, where zeroing the row and gathering the winners into
 * it read the gradient out of order.  Returns 0 if an index lies outside [0, n). */
static int scale_set_entries(const float *src, const uint8_t *bits, const int64_t *idx, const float *factors,
                             int64_t n, int64_t k, float *dst) {
    for (int64_t j = 0; j < k; j++) {
        int64_t i = idx[j];
        if ((uint64_t)i >= (uint64_t)n) return 0;
        if ((bits[i / 8] >> (i % 8)) & 1) dst[i] = src[i] * factors[j];
    }
    return 1;
}

static void *take_bits_slice(void *arg) {
    const slice *sl = arg;
    const bits_job *job = sl->job;
    int64_t bytes = (job->n + 7) / 8;
    for (int64_t row = sl->begin; row < sl->end; row++) {
        const float *src = job->src + row * job->n;
        const uint8_t *bits = job->bits + row * bytes;
        float *dst = job->dst + row * job->n;
        if (job->factors && !job->indices) {
            take_bits_scaled(src, bits, job->factors + row * job->groups, job->n / job->groups, job->n, dst);
            continue;
        }
        take_bits(src, bits, job->n, dst);
        if (job->indices && !scale_set_entries(src, bits, job->indices + row * job->k, job->factors + row * job->k,
                                               job->n, job->k, dst))
            return (void *)1;
    }
    return NULL;
}

/* dst[r, i] = src[r, i] where bit i of row r of bits (rows, (n + 7) / 8) is set, 0 elsewhere: the layers'
 * backward.  With factors (rows, groups), groups dividing n, the set entries are also multiplied by
 * factors[r, i / (n / groups)] (sensitivity's factor per sample and channel). */
void ksparse_take_bits_rows(const float *src, const uint8_t *bits, const float *factors, int64_t groups, float *dst,
                            int64_t rows, int64_t n, int threads) {
    bits_job job = {src, bits, factors, NULL, groups, 0, dst, n};
    run_rows(take_bits_slice, &job, rows, n, threads);
}

/* ksparse_take_bits_rows without group factors, then dst[r, i] = src[r, i] * factors[r, j] at i = indices[r, j]
 * where the bit is set (a cleared entry stays 0 whatever its factor): the per-winner gradient factors of
 * sensitivity along rows.  Returns nonzero if an index lies outside [0, n) (dst is then incomplete). */
int ksparse_take_bits_rows_at(const float *src, const uint8_t *bits, const int64_t *indices, const float *factors,
                              float *dst, int64_t rows, int64_t n, int64_t k, int threads) {
    bits_job job = {src, bits, factors, indices, 0, k, dst, n};
    return run_rows(take_bits_slice, &job, rows, n, threads);
}

/* dst[r, :] = 0 but dst[r, indices[r, j]] = src[r, indices[r, j]] (ReLU'd if relu), and bits (rows, (n + 7) / 8)
 * where its gradient passes (see write_above_portable).  Returns nonzero if an index lies outside [0, n) (dst and
 * bits are then incomplete). */
int ksparse_take_rows(const float *src, const int64_t *indices, int relu, float *dst, uint8_t *bits, int64_t rows,
                      int64_t n, int64_t k, int threads) {
    take_job job = {src, indices, dst, bits, n, k, relu};
    return run_rows(take_slice, &job, rows, n, threads);
}
