/* Attention of new tokens over a key/value cache, for GPT-2 decoding on the CPU.
 *
 * Why: at each step every (row, head) pair stores its new key and value and attends with one
 * query over the cached positions; as strided copies, batched matrix-vector products and a
 * softmax, torch spent ~0.4 ms a layer on that at batch 32 (several passes, small-matrix
 * dispatch, dtype conversions); this reads each key and value once, as bfloat16 (the values
 * c_attn wrote, so nothing is lost), and computes in float32. Each (row, head) is computed
 * alone, in a fixed order, so rows do not depend on their batch.
 *
 * The prefix goes through in one call too (each query over the positions up to its own):
 * one pass over the cache instead of one per position.
 *
 * k, v: one layer's bfloat16 caches at strides (kv_b, kv_h, kv_s), unit stride in D;
 * y: (B, T, H * D) bfloat16, contiguous, ready for the output projection.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "altcap.h"
#include "vecmath.h"

#define MAX_POSITIONS 4096
#define KV_AHEAD 32768 /* bytes of keys and values to prefetch ahead, into L2 */

/* One query (D bfloat16) over S cached positions -> out (D bfloat16). nv = D / 16 when it is
 * a compile-time constant from 1 to 4 (the queries and sums stay in registers, the value
 * sums run as nv independent chains), else 0 for any D. */
static inline __attribute__((always_inline)) void one_query(
    const uint16_t *q, const uint16_t *kk, const uint16_t *vv, long kv_s, long S, long D,
    float scale, uint16_t *out, const int nv) {
    float p[MAX_POSITIONS], top = -INFINITY;
    __m512 qf[4];
    for (int c = 0; c < nv; c++) qf[c] = load16(q + 16 * c, 16);
    for (long s = 0; s < S; s++) { /* scores */
        __m512 acc = _mm512_setzero_ps();
        if (nv)
            for (int c = 0; c < nv; c++)
                acc = _mm512_fmadd_ps(qf[c], load16(kk + s * kv_s + 16 * c, 16), acc);
        else
            for (long d = 0; d < D; d += 16)
                acc = _mm512_fmadd_ps(load16(q + d, D - d), load16(kk + s * kv_s + d, D - d), acc);
        p[s] = _mm512_reduce_add_ps(acc) * scale;
        top = p[s] > top ? p[s] : top;
    }
    const __m512 inv = _mm512_set1_ps(1.0f / softmax_numerators(p, S, top));
    if (nv) { /* the weighted sum of the values */
        __m512 acc[4];
        for (int c = 0; c < nv; c++) acc[c] = _mm512_setzero_ps();
        for (long s = 0; s < S; s++) {
            const __m512 w = _mm512_set1_ps(p[s]);
            for (int c = 0; c < nv; c++)
                acc[c] = _mm512_fmadd_ps(w, load16(vv + s * kv_s + 16 * c, 16), acc[c]);
        }
        for (int c = 0; c < nv; c++)
            _mm256_storeu_si256((__m256i *)(out + 16 * c),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[c], inv)));
        return;
    }
    for (long d = 0; d < D; d += 16) {
        __m512 acc = _mm512_setzero_ps();
        for (long s = 0; s < S; s++)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(p[s]), load16(vv + s * kv_s + d, D - d), acc);
        const __m256i r = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc, inv));
        _mm256_mask_storeu_epi16(out + d, lanes(D - d), r);
    }
}

/* T new positions of one layer (T = 1 at each decoding step, the prefix at the start):
 * qkv (B, T, 3 * H * D) bfloat16 at strides (ld_b, ld_t) (queries, keys, values, as GPT-2's
 * c_attn writes them) -> their keys and values stored in the caches at pos..pos+T-1, then
 * the attention of each query over the positions up to its own (causal) -> y (B, T, H * D). */
int altcap_attend_step(const uint16_t *qkv, long ld_b, long ld_t, long T, uint16_t *k,
                       uint16_t *v, long kv_b, long kv_h, long kv_s, long pos, uint16_t *y,
                       long B, long H, long D, float scale, int threads) {
    const long C = H * D;
    if (pos < 0 || T < 1 || pos + T > MAX_POSITIONS || D < 1) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long bh = 0; bh < B * H; bh++) {
        const long b = bh / H, h = bh % H;
        uint16_t *kk = k + b * kv_b + h * kv_h, *vv = v + b * kv_b + h * kv_h;
        for (long j = 0; j < T; j++) {
            const uint16_t *row = qkv + b * ld_b + j * ld_t + h * D;
            memcpy(kk + (pos + j) * kv_s, row + C, D * sizeof *row);
            memcpy(vv + (pos + j) * kv_s, row + 2 * C, D * sizeof *row);
        }
        { /* prefetch a later pair's keys and values into L2: the cache was last read a
           * step ago, ~250 MB of weights before, and its reads start cold */
            const long S = pos + T, ahead = KV_AHEAD / (S * D * 4) + 1, next = bh + ahead;
            if (next < B * H) {
                const long nb = next / H, nh = next % H;
                const char *nk = (const char *)(k + nb * kv_b + nh * kv_h);
                const char *nv = (const char *)(v + nb * kv_b + nh * kv_h);
                for (long s = 0; s < S; s++)
                    for (long off = 0; off < D * 2; off += 64) {
                        _mm_prefetch(nk + s * kv_s * 2 + off, _MM_HINT_T1);
                        _mm_prefetch(nv + s * kv_s * 2 + off, _MM_HINT_T1);
                    }
            }
        }
        for (long j = 0; j < T; j++) {
            const uint16_t *q = qkv + b * ld_b + j * ld_t + h * D;
            uint16_t *out = y + (b * T + j) * C + h * D;
            switch (D) { /* GPT-2's heads are 64 wide: registers for the common sizes */
#define ONE(n) one_query(q, kk, vv, kv_s, pos + j + 1, D, scale, out, n)
            case 64: ONE(4); break;
            case 48: ONE(3); break;
            case 32: ONE(2); break;
            case 16: ONE(1); break;
            default: ONE(0);
#undef ONE
            }
        }
    }
    return 0;
}
