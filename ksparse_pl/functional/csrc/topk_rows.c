/* Exact top-k of the rows of a float32 matrix, for CPU.  Built on first use by ksparse_pl/functional/native_topk.py.
 *
 * torch.topk copies every row into (value, index) pairs and runs nth_element on them; for the few percent
 * of winners a sparse layer keeps, it is much cheaper to search a threshold t with exactly k scores >= t:
 * each try is one vectorized counting pass over a row that stays in L1, and interpolating the counts finds
 * t in a handful of tries.  Rows with a NaN or an infinite score take a generic path (order-preserving
 * integer keys and quickselect).
 *
 * Contract of ksparse_topk_rows: for every row, the indices of the k largest scores in ascending index
 * order; NaN ranks above every number, -0 ties with +0, and among tied scores the lower index wins.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KSPARSE_X86 1
#endif

typedef struct {
    float min, max, mean, std;
    int finite; /* no NaN and no infinity in the row */
} row_stats;

/* Running sums behind row_stats; the AVX2 kernel fills them 8 lanes at a time and adds its tail here. */
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

/* ---------------------------------------------------------------- portable kernels */
static row_stats stats_portable(const float *s, int64_t n) {
    stats_sums a = {INFINITY, -INFINITY, 0.0, 0.0, 1};
    add_to_sums(&a, s, n);
    return stats_of_sums(&a, n);
}

static int64_t count_portable(const float *s, int64_t n, float t) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += s[i] >= t;
    return c;
}

/* The scores in [lo, hi), as floats written into out (in index order). */
static int64_t band_portable(const float *s, int64_t n, float lo, float hi, void *out) {
    float *values = out;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (s[i] >= lo && s[i] < hi) values[m++] = s[i];
    return m;
}

static int64_t collect_portable(const float *s, int64_t n, float t, int64_t *idx, int32_t *scratch) {
    (void)scratch;
    int64_t o = 0;
    for (int64_t i = 0; i < n; i++) {
        idx[o] = i;
        o += s[i] >= t;
    }
    return o;
}

/* ---------------------------------------------------------------- AVX2 kernels (chosen at run time) */
#ifdef KSPARSE_X86
__attribute__((target("avx2"))) static float hmin(__m256 v) {
    float a[8];
    _mm256_storeu_ps(a, v);
    float m = a[0];
    for (int j = 1; j < 8; j++) m = a[j] < m ? a[j] : m;
    return m;
}

__attribute__((target("avx2"))) static float hmax(__m256 v) {
    float a[8];
    _mm256_storeu_ps(a, v);
    float m = a[0];
    for (int j = 1; j < 8; j++) m = a[j] > m ? a[j] : m;
    return m;
}

__attribute__((target("avx2"))) static double hsum(__m256 v) {
    float a[8];
    _mm256_storeu_ps(a, v);
    double m = 0.0;
    for (int j = 0; j < 8; j++) m += a[j];
    return m;
}

__attribute__((target("avx2,fma"))) static row_stats stats_avx2(const float *s, int64_t n) {
    int64_t body = n - n % 8;
    __m256 lo = _mm256_set1_ps(INFINITY), hi = _mm256_set1_ps(-INFINITY);
    __m256 sum = _mm256_setzero_ps(), sumsq = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    const __m256 inf = _mm256_set1_ps(INFINITY), sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < body; i += 8) {
        __m256 v = _mm256_loadu_ps(s + i);
        /* |v| is NaN or infinite exactly when it is not < inf (unordered compares are false) */
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_andnot_ps(sign, v), inf, _CMP_NLT_UQ));
        lo = _mm256_min_ps(lo, v);
        hi = _mm256_max_ps(hi, v);
        sum = _mm256_add_ps(sum, v);
        sumsq = _mm256_fmadd_ps(v, v, sumsq);
    }
    stats_sums a = {hmin(lo), hmax(hi), hsum(sum), hsum(sumsq), _mm256_movemask_ps(bad) == 0};
    add_to_sums(&a, s + body, n - body);
    return stats_of_sums(&a, n);
}

__attribute__((target("avx2"))) static int64_t count_avx2(const float *s, int64_t n, float t) {
    int64_t body = n - n % 8;
    __m256 tv = _mm256_set1_ps(t);
    __m256i acc = _mm256_setzero_si256();
    for (int64_t i = 0; i < body; i += 8) {
        __m256 ge = _mm256_cmp_ps(_mm256_loadu_ps(s + i), tv, _CMP_GE_OQ);
        acc = _mm256_sub_epi32(acc, _mm256_castps_si256(ge)); /* a true lane is -1 */
    }
    int32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, acc);
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

/* Writes the indices of the scores >= t to idx (int64), using packed int32 lanes in scratch (n + 8). */
__attribute__((target("avx2,popcnt"))) static int64_t collect_avx2(const float *s, int64_t n, float t, int64_t *idx,
                                                                   int32_t *scratch) {
    int64_t body = n - n % 8, o = 0;
    __m256 tv = _mm256_set1_ps(t);
    __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), eight = _mm256_set1_epi32(8);
    for (int64_t i = 0; i < body; i += 8) {
        unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + i), tv, _CMP_GE_OQ));
        __m256i order = _mm256_loadu_si256((const __m256i *)COMPRESS[mask]);
        _mm256_storeu_si256((__m256i *)(scratch + o), _mm256_permutevar8x32_epi32(lanes, order));
        o += _mm_popcnt_u32(mask);
        lanes = _mm256_add_epi32(lanes, eight);
    }
    for (int64_t i = body; i < n; i++) {
        scratch[o] = (int32_t)i;
        o += s[i] >= t;
    }
    for (int64_t j = 0; j < o; j++) idx[j] = scratch[j];
    return o;
}

__attribute__((target("avx2,bmi"))) static int64_t band_avx2(const float *s, int64_t n, float lo, float hi, void *out) {
    float *values = out;
    int64_t body = n - n % 8, m = 0;
    __m256 lov = _mm256_set1_ps(lo), hiv = _mm256_set1_ps(hi);
    for (int64_t i = 0; i < body; i += 8) {
        __m256 v = _mm256_loadu_ps(s + i);
        __m256 in = _mm256_and_ps(_mm256_cmp_ps(v, lov, _CMP_GE_OQ), _mm256_cmp_ps(v, hiv, _CMP_LT_OQ));
        unsigned mask = (unsigned)_mm256_movemask_ps(in);
        while (mask) {
            values[m++] = s[i + _tzcnt_u32(mask)];
            mask &= mask - 1;
        }
    }
    return m + band_portable(s + body, n - body, lo, hi, values + m);
}
#endif

static row_stats (*stats)(const float *, int64_t) = stats_portable;
static int64_t (*count_at_least)(const float *, int64_t, float) = count_portable;
static int64_t (*collect_at_least)(const float *, int64_t, float, int64_t *, int32_t *) = collect_portable;
static int64_t (*collect_band)(const float *, int64_t, float, float, void *) = band_portable;

/* Picks the kernels for this CPU; returns 1 when the AVX2 ones are in use. */
int ksparse_init(void) {
#ifdef KSPARSE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
        __builtin_cpu_supports("popcnt")) {
        stats = stats_avx2;
        count_at_least = count_avx2;
        init_compress();
        collect_at_least = collect_avx2;
        collect_band = band_avx2;
        return 1;
    }
#endif
    return 0;
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

static float midpoint(float lo, float hi) { return (float)(((double)lo + (double)hi) * 0.5); }

/* Winners once the k-th score is known to lie in [lo, hi), with count(hi) = c_hi scores above: the
 * r = k - c_hi largest of the band are found among its few values (in work). */
static void finish_in_band(const float *s, int64_t n, int64_t k, float lo, float hi, int64_t c_hi, int64_t *idx,
                           uint32_t *work) {
    int64_t m = collect_band(s, n, lo, hi, work);
    for (int64_t j = 0; j < m; j++) { /* the band's floats become keys in place (memcpy: no aliasing) */
        float v;
        memcpy(&v, &work[j], sizeof v);
        work[j] = key_of(v);
    }
    uint32_t kth = rth_largest(work, m, k - c_hi);
    int64_t greater = c_hi, equal = 0;
    for (int64_t j = 0; j < m; j++) {
        greater += work[j] > kth;
        equal += work[j] == kth;
    }
    float t;
    uint32_t bits = kth & 0x80000000u ? kth ^ 0x80000000u : ~kth; /* back from key to float */
    memcpy(&t, &bits, sizeof t);
    if (greater + equal == k) { /* no tie at the k-th score: exactly k scores >= t */
        collect_at_least(s, n, t, idx, (int32_t *)work);
        return;
    }
    int64_t ties = k - greater, o = 0; /* tied k-th scores: the lower indices win */
    for (int64_t i = 0; i < n && o < k; i++)
        if (s[i] > t || (s[i] == t && ties-- > 0)) idx[o++] = i;
}

/* Returns 0 (the caller takes the generic path) for rows with a NaN or an infinite score. */
static int select_by_threshold(const float *s, int64_t n, int64_t k, float z, int64_t *idx, uint32_t *work) {
    if (k == n) {
        for (int64_t i = 0; i < n; i++) idx[i] = i;
        return 1;
    }
    row_stats r = stats(s, n);
    if (!r.finite) return 0;
    /* Invariant: count(lo) = c_lo > k > c_hi = count(hi), where count(t) is the number of scores >= t. */
    float lo = r.min, hi = nextafterf(r.max, INFINITY);
    int64_t c_lo = n, c_hi = 0;
    /* The first guess and the first step assume a normal row: k/n of it lies z deviations above the mean,
     * where the count falls by about n * density(z) / std per unit of threshold. */
    float t = r.mean + z * r.std;
    double slope = -(double)n * exp(-0.5 * (double)z * z) * 0.3989422804014327 / (r.std > 0.0f ? r.std : 1.0f);
    float t_prev = t;
    int64_t c_prev = -1;
    for (int tries = 0; tries < MAX_TRIES && c_lo - c_hi > BAND; tries++) {
        if (!(t > lo && t < hi)) t = midpoint(lo, hi);
        if (!(t > lo && t < hi)) break; /* neighbouring floats: the band holds one (tied) value */
        int64_t c = count_at_least(s, n, t);
        if (c == k) {
            collect_at_least(s, n, t, idx, (int32_t *)work);
            return 1;
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
        double target = c > k ? k - BAND / 4 : k + BAND / 4;
        t = (float)((double)t + (target - (double)c) / slope);
    }
    finish_in_band(s, n, k, lo, hi, c_hi, idx, work);
    return 1;
}

/* ---------------------------------------------------------------- rows split over threads */
typedef struct {
    const float *scores;
    int64_t *indices;
    int64_t n, k;
    float z;
} select_job;

typedef struct {
    const float *src, *factors;
    const int64_t *indices;
    float *dst;
    int64_t n, k;
    int relu;
} take_job;

typedef struct {
    const void *job;
    int64_t begin, end;
} slice;

static void *select_slice(void *arg) {
    const slice *sl = arg;
    const select_job *job = sl->job;
    uint32_t *work = malloc((job->n + 8) * sizeof(uint32_t)); /* + 8: collect_avx2 stores whole vectors */
    if (!work) return (void *)1;
    for (int64_t row = sl->begin; row < sl->end; row++) {
        const float *s = job->scores + row * job->n;
        int64_t *idx = job->indices + row * job->k;
        if (!select_by_threshold(s, job->n, job->k, job->z, idx, work)) select_by_keys(s, job->n, job->k, idx, work);
    }
    free(work);
    return NULL;
}

static void *take_slice(void *arg) {
    const slice *sl = arg;
    const take_job *job = sl->job;
    for (int64_t row = sl->begin; row < sl->end; row++) {
        const float *src = job->src + row * job->n;
        const int64_t *idx = job->indices + row * job->k;
        float *dst = job->dst + row * job->n;
        memset(dst, 0, job->n * sizeof(float));
        for (int64_t j = 0; j < job->k; j++) {
            if ((uint64_t)idx[j] >= (uint64_t)job->n) return (void *)1; /* an index outside [0, n) */
            float v = src[idx[j]];
            if (job->relu && v < 0.0f) v = 0.0f;
            dst[idx[j]] = job->factors ? v * job->factors[row * job->k + j] : v;
        }
    }
    return NULL;
}

/* Runs fn over [0, rows) in contiguous slices, one per thread; returns 0 on success.  The threads are
 * OpenMP's: loaded after torch, this library shares torch's OpenMP runtime (same soname), so the kernel
 * runs on the pool that torch's own CPU ops use instead of competing with its spinning threads. */
static int run_rows(void *(*fn)(void *), const void *job, int64_t rows, int threads) {
    if (threads > rows) threads = (int)rows;
    if (threads < 1) threads = 1;
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

/* indices[r, :] = the k largest of scores[r, :], ascending; z: normal quantile of 1 - k/n (first guess). */
int ksparse_topk_rows(const float *scores, int64_t *indices, int64_t rows, int64_t n, int64_t k, float z,
                      int threads) {
    select_job job = {scores, indices, n, k, z};
    return run_rows(select_slice, &job, rows, threads);
}

/* dst[r, :] = 0 but dst[r, indices[r, j]] = src[r, indices[r, j]] (ReLU'd if relu) * factors[r, j].
 * Returns nonzero if an index lies outside [0, n) (dst is then incomplete). */
int ksparse_take_rows(const float *src, const int64_t *indices, const float *factors, int relu, float *dst,
                      int64_t rows, int64_t n, int64_t k, int threads) {
    take_job job = {src, factors, indices, dst, n, k, relu};
    return run_rows(take_slice, &job, rows, threads);
}
