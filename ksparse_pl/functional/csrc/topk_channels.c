/* Top-k over the channels of feature maps at every position, in the maps' own (B, C, P) layout: the channel
 * mode of KSparse2d / KWinners2d.  Built with topk_rows.c by ksparse_pl/functional/native.py; wrapped by
 * ksparse_pl/functional/native_topk.py.
 *
 * The row kernel would need the channels last (a copy of the map in, one of the gradient out) and pays a
 * fixed cost per row that outweighs the work on rows of a few dozen channels.  Here 8 neighbouring positions
 * are 8 lanes: one pass over the channels keeps each lane's k largest keys in sorted registers (a
 * compare-exchange per kept key), a second writes the output, the winners, the gradient bits and the counts.
 * Same winners as the row kernel: the k largest scores (x, |x| with by_magnitude, times a per-channel boost),
 * NaN above every number, -0 tied with 0, the lower channel first among tied scores.  AVX2 where the CPU has
 * it, else the same steps lane by lane.
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
#define KSPARSE_X86
#include <immintrin.h>
#endif

#define LANES 8
_Static_assert(LANES == 8, "a group's gradient bits are one byte per channel");
#define MAX_K 16 /* kept keys per lane; CHANNELS_MAX_K in native_topk.py */

/* The score of activation v (|v| with by_magnitude, times factor) as an int ordered as the floats, -0 as +0
 * and NaN above everything. */
static inline int32_t key_of_score(float v, float factor, int by_magnitude) {
    float s = (by_magnitude ? fabsf(v) : v) * factor + 0.0f; /* -0 becomes +0 */
    int32_t u;
    memcpy(&u, &s, sizeof u);
    return s != s ? INT32_MAX : u ^ ((u >> 31) & 0x7FFFFFFF);
}

/* Where a group's results go besides its output: idx[j * LANES + l] = the j-th winning channel of lane l
 * (ascending), unless idx is NULL; over the valid lanes (bit l for lane l), the number of lanes channel c won
 * is added to counts[c], and the lanes where its gradient passes (won, and with relu not x <= 0, as torch's
 * ReLU lets a NaN's gradient through) are stored at pass[c * pass_stride], bit l of a byte: straight into the
 * gradient bits where a group's bits make whole bytes there (a scalar pass over the channels after each group
 * took a fifth to a quarter of the kernel's time at the benchmark shapes). */
typedef struct {
    int32_t *idx;
    unsigned valid;
    int64_t *counts;
    uint8_t *pass;
    int64_t pass_stride;
} group_results;

/* The set bits of a byte (__builtin_popcount is a library call where the compiler may not assume popcnt). */
static inline int lanes_set(unsigned byte) {
    byte = byte - ((byte >> 1) & 0x55);
    byte = (byte & 0x33) + ((byte >> 2) & 0x33);
    return (int)((byte + (byte >> 4)) & 0x0F);
}

/* One group of LANES positions of one sample: channel c of lane l at x[c * stride + l].  Writes out (same
 * layout) and r (see group_results).  keep_ties (threshold mode, no idx): every channel whose key is at least
 * the k-th largest wins, ties included, and all of them where a NaN is among the k largest (as the minimum of
 * the k largest, the threshold, is NaN then). */
static void select_group_portable(const float *x, int64_t stride, int64_t channels, int64_t k, const float *boost,
                                  int by_magnitude, int relu, int keep_ties, float *out, const group_results *r) {
    int32_t top[MAX_K][LANES], key[LANES], kth[LANES], ties[LANES], taken[LANES];
    int32_t *idx = r->idx;
    for (int64_t j = 0; j < k; j++)
        for (int l = 0; l < LANES; l++) top[j][l] = INT32_MIN; /* below every key: -inf's is INT32_MIN + 2^23 - 1 */
    for (int64_t c = 0; c < channels; c++) {
        float factor = boost ? boost[c] : 1.0f;
        for (int l = 0; l < LANES; l++) key[l] = key_of_score(x[c * stride + l], factor, by_magnitude);
        for (int64_t j = 0; j < k; j++)
            for (int l = 0; l < LANES; l++) {
                int32_t t = top[j][l], v = key[l];
                top[j][l] = t > v ? t : v;
                key[l] = t > v ? v : t;
            }
    }
    for (int l = 0; l < LANES; l++) {
        kth[l] = top[k - 1][l];
        ties[l] = 1; /* how many keys equal to the k-th win: k minus the keys above it, all among the top k */
        for (int64_t j = 0; j < k - 1; j++) ties[l] += top[j][l] == kth[l];
        if (keep_ties) { /* no tie budget; with a NaN on top, a threshold below every key */
            ties[l] = INT32_MAX;
            kth[l] = top[0][l] == INT32_MAX ? INT32_MIN : kth[l];
        }
        taken[l] = 0;
    }
    for (int64_t c = 0; c < channels; c++) {
        float factor = boost ? boost[c] : 1.0f;
        unsigned won_bits = 0, pass_bits = 0;
        for (int l = 0; l < LANES; l++) {
            float v = x[c * stride + l];
            int32_t key_l = key_of_score(v, factor, by_magnitude);
            int tie = key_l == kth[l] && ties[l] > 0, keep = key_l > kth[l] || tie;
            ties[l] -= tie;
            out[c * stride + l] = keep ? (relu && v < 0.0f ? 0.0f : v) : 0.0f;
            for (int64_t j = 0; idx && j < k; j++)
                idx[j * LANES + l] = keep && taken[l] == j ? (int32_t)c : idx[j * LANES + l];
            taken[l] += keep;
            won_bits |= (unsigned)keep << l;
            pass_bits |= (unsigned)(keep && !(relu && v <= 0.0f)) << l;
        }
        r->counts[c] += lanes_set(won_bits & r->valid);
        r->pass[c * r->pass_stride] = (uint8_t)(pass_bits & r->valid);
    }
}

#ifdef KSPARSE_X86
/* key_of_score of 8 lanes at once. */
__attribute__((target("avx2"))) static __m256i keys_avx2(const float *x, __m256 factor, __m256 magnitude) {
    __m256 s = _mm256_add_ps(_mm256_mul_ps(_mm256_and_ps(_mm256_loadu_ps(x), magnitude), factor), _mm256_setzero_ps());
    __m256i u = _mm256_castps_si256(s);
    __m256i key = _mm256_xor_si256(u, _mm256_srli_epi32(_mm256_srai_epi32(u, 31), 1));
    __m256 nan = _mm256_cmp_ps(s, s, _CMP_UNORD_Q);
    return _mm256_blendv_epi8(key, _mm256_set1_epi32(INT32_MAX), _mm256_castps_si256(nan));
}

/* The cache line two groups further along a channel, for a pass over the channels: the hardware's prefetching
 * follows only so many streams at once, far fewer than a map's channels.  The address may lie past the end of the
 * map, so it is formed as an integer (pointer arithmetic there is undefined; the prefetch itself never faults).
 * With the callers' target: GCC 12 dropped the prefetch of a helper without it once inlined into them. */
__attribute__((target("avx2"), always_inline)) static inline void prefetch_groups_ahead(const float *at) {
    _mm_prefetch((const char *)((uintptr_t)at + 2 * LANES * sizeof(float)), _MM_HINT_T0);
}

/* select_group_portable in AVX2: the lanes are one vector.  kcap >= k is a constant in each of the functions
 * below, so that the kept keys stay in registers (slots past k hold the next largest keys, and no winner), and
 * so is track, whether idx is written: keeping the winners' slots took about a third of the kernel's time at
 * k = 8. */
__attribute__((target("avx2,popcnt"), always_inline)) static inline void select_group_avx2(
    const float *x, int64_t stride, int64_t channels, int64_t k, const float *boost, int by_magnitude, int relu,
    int keep_ties, float *out, const group_results *r, const int kcap, const int track) {
    __m256i top[MAX_K], slot[MAX_K];
    int32_t *idx = r->idx;
    int64_t *counts = r->counts, pass_stride = r->pass_stride;
    uint8_t *pass = r->pass;
    unsigned valid = r->valid;
    __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(by_magnitude ? 0x7FFFFFFF : -1));
    __m256 zero = _mm256_setzero_ps();
    for (int j = 0; j < kcap; j++) top[j] = _mm256_set1_epi32(INT32_MIN);
    for (int64_t c = 0; c < channels; c++) {
        prefetch_groups_ahead(x + c * stride);
        prefetch_groups_ahead(out + c * stride);
        __m256i key = keys_avx2(x + c * stride, _mm256_set1_ps(boost ? boost[c] : 1.0f), magnitude);
        for (int j = 0; j < kcap; j++) {
            __m256i t = top[j];
            top[j] = _mm256_max_epi32(t, key);
            key = _mm256_min_epi32(t, key);
        }
    }
    __m256i kth = top[0], ties = _mm256_set1_epi32(1), taken = _mm256_setzero_si256();
    for (int j = 1; j < kcap; j++) /* constant indices keep top in registers */
        if (j == k - 1) kth = top[j];
    for (int j = 0; j < kcap; j++)
        if (j < k - 1) ties = _mm256_sub_epi32(ties, _mm256_cmpeq_epi32(top[j], kth));
    if (keep_ties) {
        ties = _mm256_set1_epi32(INT32_MAX);
        __m256i nan_on_top = _mm256_cmpeq_epi32(top[0], _mm256_set1_epi32(INT32_MAX));
        kth = _mm256_blendv_epi8(kth, _mm256_set1_epi32(INT32_MIN), nan_on_top);
    }
    for (int j = 0; j < kcap; j++) slot[j] = _mm256_setzero_si256();
    for (int64_t c = 0; c < channels; c++) {
        __m256i key = keys_avx2(x + c * stride, _mm256_set1_ps(boost ? boost[c] : 1.0f), magnitude);
        __m256i tie = _mm256_and_si256(_mm256_cmpeq_epi32(key, kth), _mm256_cmpgt_epi32(ties, _mm256_setzero_si256()));
        __m256i keep = _mm256_or_si256(_mm256_cmpgt_epi32(key, kth), tie); /* a true lane is -1 */
        ties = _mm256_add_epi32(ties, tie);
        __m256 v = _mm256_loadu_ps(x + c * stride), kept = _mm256_castsi256_ps(keep);
        _mm256_storeu_ps(out + c * stride, _mm256_and_ps(kept, relu ? _mm256_max_ps(zero, v) : v));
        __m256 passes = relu ? _mm256_and_ps(kept, _mm256_cmp_ps(v, zero, _CMP_NLE_UQ)) : kept;
        counts[c] += _mm_popcnt_u32((unsigned)_mm256_movemask_ps(kept) & valid);
        pass[c * pass_stride] = (uint8_t)((unsigned)_mm256_movemask_ps(passes) & valid);
        if (!track) continue;
        __m256i channel = _mm256_set1_epi32((int32_t)c);
        for (int j = 0; j < kcap; j++) {
            __m256i here = _mm256_and_si256(keep, _mm256_cmpeq_epi32(taken, _mm256_set1_epi32(j)));
            slot[j] = _mm256_blendv_epi8(slot[j], channel, here);
        }
        taken = _mm256_sub_epi32(taken, keep);
    }
    for (int64_t j = 0; track && j < k; j++) _mm256_storeu_si256((__m256i *)(idx + j * LANES), slot[j]);
}

/* The group functions for kcap, with (idx written) and without the winners (idx NULL). */
#define SELECT_GROUP_AVX2(kcap)                                                                                      \
    __attribute__((target("avx2,popcnt"))) static void select_group_avx2_##kcap(                                    \
        const float *x, int64_t stride, int64_t channels, int64_t k, const float *boost, int by_magnitude, int relu,   \
        int keep_ties, float *out, const group_results *r) {                                                         \
        if (r->idx)                                                                                                  \
            select_group_avx2(x, stride, channels, k, boost, by_magnitude, relu, keep_ties, out, r, kcap, 1);          \
        else                                                                                                         \
            select_group_avx2(x, stride, channels, k, boost, by_magnitude, relu, keep_ties, out, r, kcap, 0);          \
    }
SELECT_GROUP_AVX2(2)
SELECT_GROUP_AVX2(4)
SELECT_GROUP_AVX2(8)
SELECT_GROUP_AVX2(16)
#endif

typedef void (*group_fn)(const float *, int64_t, int64_t, int64_t, const float *, int, int, int, float *,
                         const group_results *);

typedef struct {
    const float *x, *boost;
    int by_magnitude, relu, keep_ties;
    int64_t batch, channels, positions, k;
    float *out;
    int64_t *indices; /* or NULL (always with keep_ties): the winners are not written */
    uint8_t *bits;
    group_fn select_group;
} channel_job;

/* Bits [at, at + 8) of a zeroed bit row: mask (bit i of mask to bit at + i). */
static void or_bits(uint8_t *row, int64_t at, unsigned mask) {
    unsigned shifted = mask << (at & 7);
    row[at >> 3] |= (uint8_t)shifted;
    if (shifted >> 8) row[(at >> 3) + 1] |= (uint8_t)(shifted >> 8);
}

/* Whether each group's gradient bits are whole bytes of the bit rows: with a multiple of 8 (LANES) positions,
 * every group is whole and channel c's bits of the group at p are byte (c * P + p) / 8. */
static int bits_in_whole_bytes(const channel_job *job) { return job->positions % LANES == 0; }

/* Sample b, positions [p, p + lanes): the group in place when it is whole, else through the buffers of LANES
 * lanes per channel (tmp_x, tmp_out), lanes past the end padded with zeros and never written back.  idx holds
 * the group's winners on their way to job->indices (NULL when that is); pass (a byte per channel) its gradient
 * bits on their way into a zeroed bit row, unless they are whole bytes of it. */
static void select_positions(const channel_job *job, int64_t b, int64_t p, int lanes, float *tmp_x, float *tmp_out,
                             int32_t *idx, uint8_t *pass, int64_t *counts) {
    int64_t C = job->channels, P = job->positions, k = job->k;
    const float *x = job->x + b * C * P + p;
    float *out = job->out + b * C * P + p;
    uint8_t *bit_row = job->bits + b * ((C * P + 7) / 8);
    int whole = bits_in_whole_bytes(job);
    group_results r = {idx, (1u << lanes) - 1, counts, whole ? bit_row + p / 8 : pass, whole ? P / 8 : 1};
    if (lanes == LANES) {
        job->select_group(x, P, C, k, job->boost, job->by_magnitude, job->relu, job->keep_ties, out, &r);
    } else {
        for (int64_t c = 0; c < C; c++)
            for (int l = 0; l < LANES; l++) tmp_x[c * LANES + l] = l < lanes ? x[c * P + l] : 0.0f;
        job->select_group(tmp_x, LANES, C, k, job->boost, job->by_magnitude, job->relu, job->keep_ties, tmp_out, &r);
        for (int64_t c = 0; c < C; c++)
            for (int l = 0; l < lanes; l++) out[c * P + l] = tmp_out[c * LANES + l];
    }
    for (int64_t j = 0; job->indices && j < k; j++)
        for (int l = 0; l < lanes; l++) job->indices[(b * k + j) * P + p + l] = idx[j * LANES + l];
    for (int64_t c = 0; !whole && c < C; c++) or_bits(bit_row, c * P + p, pass[c]);
}

/* Both entry points below; indices NULL with keep_ties; counts (channels,), or with per_sample (batch, channels). */
static int run_channels(const float *x, const float *boost, int by_magnitude, int relu, int keep_ties, float *out,
                        int64_t *indices, uint8_t *bits, int64_t *counts, int per_sample, int64_t batch,
                        int64_t channels, int64_t positions, int64_t k, int vectorized, int threads) {
    if (k < 1 || k > MAX_K || k > channels) return 1;
    group_fn select_group = select_group_portable;
#ifdef KSPARSE_X86
    __builtin_cpu_init(); /* done by ksparse_init too; cheap, and this file then needs nothing from it */
    if (vectorized && __builtin_cpu_supports("avx2"))
        select_group = k <= 2   ? select_group_avx2_2
                       : k <= 4 ? select_group_avx2_4
                       : k <= 8 ? select_group_avx2_8
                                : select_group_avx2_16;
#else
    (void)vectorized;
#endif
    channel_job job = {x,   boost,   by_magnitude, relu, keep_ties, batch, channels, positions, k,
                       out, indices, bits,         select_group};
    threads = threads_for(batch * channels * positions, threads);
    /* Work goes out by sample, or with fewer samples than threads by parts of a sample's groups: where the bits
     * are whole bytes, each part writes bytes of its own (not with per-sample counts, which a sample's thread adds
     * to in place). */
    int whole = bits_in_whole_bytes(&job);
    int64_t groups = (positions + LANES - 1) / LANES;
    int64_t parts = whole && batch < threads && !(counts && per_sample) ? (threads + batch - 1) / batch : 1;
    if (parts > groups) parts = groups > 0 ? groups : 1;
    if (threads > batch * parts) threads = batch * parts > 0 ? (int)(batch * parts) : 1;
    /* per thread: tmp_x, tmp_out (LANES per channel), counts (one per channel), pass (a byte per channel) */
    int64_t share = channels * (2 * LANES * sizeof(float) + sizeof(int64_t) + 1);
    share += (8 - share % 8) % 8;
    char *work = malloc(threads * share);
    if (!work) return 2;
    int64_t bytes = (channels * positions + 7) / 8;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
#ifdef _OPENMP
        char *mine = work + omp_get_thread_num() * share;
#else
        char *mine = work;
#endif
        float *tmp_x = (float *)mine, *tmp_out = tmp_x + channels * LANES;
        int64_t *own_counts = (int64_t *)(tmp_out + channels * LANES);
        uint8_t *pass = (uint8_t *)(own_counts + channels);
        int32_t idx[MAX_K * LANES];
        memset(own_counts, 0, channels * sizeof(int64_t));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t item = 0; item < batch * parts; item++) {
            int64_t b = item / parts, part = item % parts;
            if (!whole) memset(bits + b * bytes, 0, bytes); /* one part per sample then; else every byte is written */
            for (int64_t g = groups * part / parts; g < groups * (part + 1) / parts; g++) {
                int64_t p = g * LANES;
                int lanes = positions - p < LANES ? (int)(positions - p) : LANES;
                select_positions(&job, b, p, lanes, tmp_x, tmp_out, indices ? idx : NULL, pass,
                                 counts && per_sample ? counts + b * channels : own_counts);
            }
        }
        if (counts && !per_sample) {
#ifdef _OPENMP
#pragma omp critical(ksparse_channel_counts)
#endif
            for (int64_t c = 0; c < channels; c++) counts[c] += own_counts[c];
        }
    }
    free(work);
    return 0;
}

/* Per sample of x (batch, channels, positions) and position: out = x at the k largest scores over the
 * channels (ReLU'd if relu), 0 elsewhere; indices (batch, k, positions) the winning channels, ascending, unless
 * indices is NULL; bits (batch, ceil(channels * positions / 8)), bit c * positions + p of a sample's row set
 * where the gradient passes (as in ksparse_keep_at_least_rows); if counts (channels,), zeroed by the caller:
 * at how many positions each channel won, or with per_sample counts (batch, channels): in each sample.
 * vectorized = 0 takes the portable code even where AVX2 is available (tests).
 * Returns 1 for k outside [1, min(MAX_K, channels)], 2 if the buffers could not be allocated. */
int ksparse_select_channels(const float *x, const float *boost, int by_magnitude, int relu, float *out,
                            int64_t *indices, uint8_t *bits, int64_t *counts, int per_sample, int64_t batch,
                            int64_t channels, int64_t positions, int64_t k, int vectorized, int threads) {
    return run_channels(x, boost, by_magnitude, relu, 0, out, indices, bits, counts, per_sample, batch, channels,
                        positions, k, vectorized, threads);
}

/* Threshold mode of ksparse_select_channels: every score at least the position's k-th largest is kept (ties
 * and NaN included, and the whole position where a NaN is among the k largest), as ksparse_keep_at_least_rows
 * does along rows; no indices. */
int ksparse_keep_at_least_channels(const float *x, const float *boost, int by_magnitude, int relu, float *out,
                                   uint8_t *bits, int64_t *counts, int64_t batch, int64_t channels, int64_t positions,
                                   int64_t k, int vectorized, int threads) {
    return run_channels(x, boost, by_magnitude, relu, 1, out, NULL, bits, counts, 0, batch, channels, positions, k,
                        vectorized, threads);
}

/* grad[b, indices[b, j, p], p] *= factors[b, j, p] for grad (batch, channels, positions) and indices, factors
 * (batch, k, positions): the winners' gradient factors (sensitivity), in place.  Returns 1, having changed
 * nothing, if an index lies outside [0, channels). */
int ksparse_scale_channel_winners(float *grad, const int64_t *indices, const float *factors, int64_t batch,
                                  int64_t channels, int64_t positions, int64_t k, int threads) {
    int64_t count = batch * k * positions;
    for (int64_t i = 0; i < count; i++)
        if ((uint64_t)indices[i] >= (uint64_t)channels) return 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads_for(count, threads)) schedule(static)
#endif
    for (int64_t b = 0; b < batch; b++)
        for (int64_t j = 0; j < k; j++)
            for (int64_t p = 0; p < positions; p++) {
                int64_t at = (b * k + j) * positions + p;
                grad[(b * channels + indices[at]) * positions + p] *= factors[at];
            }
    return 0;
}
