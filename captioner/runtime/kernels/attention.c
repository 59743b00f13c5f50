/* Full (non-causal) softmax attention over a short sequence in bfloat16, for CLIP on the CPU.
 *
 * Why: CLIP's 50 tokens make tiny matrices per (image, head); torch spent ~30 ms of a 32-image
 * batch on them (head transposes copied out and back, two batched products, a float32
 * softmax in three passes), this ~18. Here each (image, head) pair is done in one go from the
 * projections as they lie, (B, T, C) with the heads side by side, straight into the output
 * layout: keys and values are laid out once into pairs along the summed dimension, so both
 * products run on `vdpbf16ps` (bfloat16 pairs, float32 sums). Scores and softmax stay in
 * float32; probabilities are rounded to bfloat16 for the weighted sum of the values, as torch
 * does in bfloat16. Each pair alone, in a fixed order: nothing depends on the batch.
 *
 * q, k, v: (B, T, H * D) bfloat16 at strides (ld_b, ld_t), unit stride inside a row;
 * y: (B, T, H * D) bfloat16, contiguous.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vecmath.h"

#define GROUP 4 /* vectors of keys (or of value dims) per pass: 2 queries x 4 accumulators */

/* the bf16 pair at `at`, in every lane */
static inline __m512bh bcast_pair(const uint16_t *at) {
    uint32_t pair;
    memcpy(&pair, at, sizeof pair);
    return (__m512bh)_mm512_set1_epi32((int)pair);
}

/* Scaled scores of queries a and b against nv (<= GROUP) vectors of 16 keys from c0:
 * kt holds the keys as (D/2, tpad) bf16 pairs along d. */
static inline __attribute__((always_inline)) void scores(
    const uint16_t *qa, const uint16_t *qb, const uint32_t *kt, long tpad, long c0, long dp,
    float scale, float *pa, float *pb, const int nv) {
    __m512 acc_a[GROUP], acc_b[GROUP];
    for (int c = 0; c < nv; c++) acc_a[c] = acc_b[c] = _mm512_setzero_ps();
    for (long i = 0; i < dp; i++) {
        const __m512bh xa = bcast_pair(qa + 2 * i), xb = bcast_pair(qb + 2 * i);
        for (int c = 0; c < nv; c++) {
            const __m512bh key = (__m512bh)_mm512_loadu_si512(kt + i * tpad + (c0 + c) * 16);
            acc_a[c] = _mm512_dpbf16_ps(acc_a[c], key, xa);
            acc_b[c] = _mm512_dpbf16_ps(acc_b[c], key, xb);
        }
    }
    const __m512 s = _mm512_set1_ps(scale);
    for (int c = 0; c < nv; c++) {
        _mm512_storeu_ps(pa + (c0 + c) * 16, _mm512_mul_ps(acc_a[c], s));
        _mm512_storeu_ps(pb + (c0 + c) * 16, _mm512_mul_ps(acc_b[c], s));
    }
}

/* Weighted sums of nv (<= GROUP) vectors of 16 value dims from d0 for two queries whose
 * probabilities wa, wb are bf16 (tpad, pairs along t); vt holds the values as (T/2, D) pairs. */
static inline __attribute__((always_inline)) void weighted(
    const uint16_t *wa, const uint16_t *wb, const uint32_t *vt, long D, long d0, long tp,
    uint16_t *ya, uint16_t *yb, const int nv) {
    __m512 acc_a[GROUP], acc_b[GROUP];
    for (int c = 0; c < nv; c++) acc_a[c] = acc_b[c] = _mm512_setzero_ps();
    for (long i = 0; i < tp; i++) {
        const __m512bh xa = bcast_pair(wa + 2 * i), xb = bcast_pair(wb + 2 * i);
        for (int c = 0; c < nv; c++) {
            const __m512bh value = (__m512bh)_mm512_loadu_si512(vt + i * D + d0 + c * 16);
            acc_a[c] = _mm512_dpbf16_ps(acc_a[c], value, xa);
            acc_b[c] = _mm512_dpbf16_ps(acc_b[c], value, xb);
        }
    }
    for (int c = 0; c < nv; c++) {
        _mm256_storeu_si256((__m256i *)(ya + d0 + c * 16), (__m256i)_mm512_cvtneps_pbh(acc_a[c]));
        _mm256_storeu_si256((__m256i *)(yb + d0 + c * 16), (__m256i)_mm512_cvtneps_pbh(acc_b[c]));
    }
}

/* A row of float32 scores (masked to T) -> softmax probabilities rounded to bf16 (zeros
 * after T). */
static void softmax_row(float *p, long T, long tv, uint16_t *w) {
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (long c = 0; c < tv; c++)
        top = _mm512_mask_max_ps(top, lanes(T - c * 16), top, _mm512_loadu_ps(p + c * 16));
    const float sum = softmax_numerators(p, T, _mm512_reduce_max_ps(top));
    const __m512 inv = _mm512_set1_ps(1.0f / sum);
    for (long c = 0; c < tv; c++) {
        const __m512 prob = _mm512_mul_ps(_mm512_loadu_ps(p + c * 16), inv);
        _mm256_storeu_si256((__m256i *)(w + c * 16), (__m256i)_mm512_cvtneps_pbh(prob));
    }
}

/* call(min(n, GROUP)) with a constant argument, so that accumulators stay in registers */
#define BY_COUNT(n, call)                \
    switch ((n) < GROUP ? (n) : GROUP) { \
    case 4: call(4); break;              \
    case 3: call(3); break;              \
    case 2: call(2); break;              \
    default: call(1);                    \
    }

/* 16 x 16 transpose of 32-bit elements: r[i][j] -> r[j][i] */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    /* u[4g + c], lane L: column 4L + c of rows 4g..4g+3 */
    for (int g = 0; g < 16; g += 4) {
        u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    for (int c = 0; c < 4; c++) {
        const __m512i x = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44);
        const __m512i y = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
        const __m512i x2 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xee);
        const __m512i y2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xee);
        r[c] = _mm512_shuffle_i32x4(x, y, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(x, y, 0xdd);
        r[8 + c] = _mm512_shuffle_i32x4(x2, y2, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(x2, y2, 0xdd);
    }
}

/* keys (T rows ld_t apart, D bf16 each) -> kt (D/2, tpad): pairs along d, one row per pair
 * index, zeros past T. All loads are independent, so they overlap their cache misses. */
static void lay_out_keys(const uint16_t *k, long ld_t, long T, long D, long tpad, uint32_t *kt) {
    const long dp = D / 2;
    for (long t0 = 0; t0 < tpad; t0 += 16)
        for (long i0 = 0; i0 < dp; i0 += 16) {
            const __mmask16 cols = lanes(dp - i0);
            __m512i r[16];
            for (int t = 0; t < 16; t++)
                r[t] = t0 + t < T ? _mm512_maskz_loadu_epi32(cols, k + (t0 + t) * ld_t + 2 * i0)
                                  : _mm512_setzero_si512();
            transpose16(r);
            for (long j = 0; j < 16 && i0 + j < dp; j++)
                _mm512_storeu_si512(kt + (i0 + j) * tpad + t0, r[j]);
        }
}

/* values (T rows) -> vt ((T + 1)/2, D): rows 2i and 2i + 1 interleaved into pairs along t */
static void lay_out_values(const uint16_t *v, long ld_t, long T, long D, uint32_t *vt) {
    const __m512i first = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i second = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    for (long i = 0; 2 * i < T; i++)
        for (long d0 = 0; d0 < D; d0 += 32) {
            const __mmask32 m = lanes32(D - d0);
            const uint16_t *row = v + 2 * i * ld_t + d0;
            const __m512i a = _mm512_maskz_loadu_epi16(m, row);
            const __m512i b = 2 * i + 1 < T ? _mm512_maskz_loadu_epi16(m, row + ld_t)
                                            : _mm512_setzero_si512();
            /* per 128-bit lane L: lo has dims 8L..8L+3, hi 8L+4..8L+7 */
            const __m512i lo = _mm512_unpacklo_epi16(a, b), hi = _mm512_unpackhi_epi16(a, b);
            uint32_t *out = vt + i * D + d0;
            _mm512_storeu_si512(out, _mm512_permutex2var_epi64(lo, first, hi));
            if (d0 + 16 < D)
                _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi64(lo, second, hi));
        }
}

/* One (image, head): scratch kt (D/2 * tpad), vt ((T + 1)/2 * D), qt (T * D bf16),
 * p (2 * tpad floats), w (2 * tpad bf16) with tpad = T rounded up to 16. */
static void one_head(const uint16_t *q, const uint16_t *k, const uint16_t *v, long ld_t,
                     uint16_t *y, long ld_y, long T, long D, float scale, uint32_t *kt,
                     uint32_t *vt, uint16_t *qt, float *p, uint16_t *w) {
    const long tv = (T + 15) / 16, tpad = tv * 16, dp = D / 2, tp = (T + 1) / 2;
    lay_out_keys(k, ld_t, T, D, tpad, kt);
    lay_out_values(v, ld_t, T, D, vt);
    for (long t = 0; t < T; t++) /* the queries, contiguous (loads that overlap, too) */
        for (long d0 = 0; d0 < D; d0 += 32) {
            const __mmask32 m = lanes32(D - d0);
            _mm512_mask_storeu_epi16(qt + t * D + d0, m,
                                     _mm512_maskz_loadu_epi16(m, q + t * ld_t + d0));
        }
    q = qt;
    ld_t = D;
    float *pa = p, *pb = p + tpad;
    uint16_t *wa = w, *wb = w + tpad;
    for (long s = 0; s < T; s += 2) { /* two queries at a time (the last one twice if odd) */
        const long s2 = s + 1 < T ? s + 1 : s;
        const uint16_t *qa = q + s * ld_t, *qb = q + s2 * ld_t;
        for (long c0 = 0; c0 < tv; c0 += GROUP) {
#define SCORES(n) scores(qa, qb, kt, tpad, c0, dp, scale, pa, pb, n)
            BY_COUNT(tv - c0, SCORES)
#undef SCORES
        }
        softmax_row(pa, T, tv, wa);
        softmax_row(pb, T, tv, wb);
        uint16_t *ya = y + s * ld_y, *yb = y + s2 * ld_y;
        for (long d0 = 0; d0 < D; d0 += GROUP * 16) {
#define WEIGHTED(n) weighted(wa, wb, vt, D, d0, tp, ya, yb, n)
            BY_COUNT((D - d0) / 16, WEIGHTED)
#undef WEIGHTED
        }
    }
}

int altcap_attention_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v, long ld_b,
                          long ld_t, uint16_t *y, long B, long T, long H, long D, float scale,
                          int threads) {
    if (T < 1 || D < 16 || D % 16) return 1;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        const long tpad = (T + 15) / 16 * 16;
        uint32_t *kt = malloc(sizeof *kt * (D / 2 * tpad + tpad / 2 * D));
        uint16_t *qt = malloc(sizeof *qt * T * D);
        float *p = malloc(sizeof *p * 2 * tpad);
        uint16_t *w = malloc(sizeof *w * 2 * tpad);
#pragma omp for schedule(static)
        for (long bh = 0; bh < B * H; bh++) {
            if (!kt || !qt || !p || !w) {
                failed = 1;
                continue;
            }
            const long at = bh / H * ld_b + bh % H * D;
            one_head(q + at, k + at, v + at, ld_t, y + (bh / H * T * H + bh % H) * D, H * D, T,
                     D, scale, kt, kt + D / 2 * tpad, qt, p, w);
        }
        free(kt);
        free(qt);
        free(p);
        free(w);
    }
    return failed;
}
