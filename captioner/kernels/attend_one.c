/* Attention of one new token over a key/value cache, for GPT-2 decoding on the CPU.
 *
 * Why: at each step every (row, head) pair attends with one query over the cached positions;
 * as batched matrix-vector products plus a softmax, torch spent ~0.3 ms a layer on that at
 * batch 32 (several passes and small-matrix dispatch); this reads each key and value once.
 * Each (row, head) is computed alone, in a fixed order, so rows do not depend on their batch.
 *
 * q: (B, H, D) float32 at strides (q_b, q_h), unit stride in D; k, v: float32 caches at
 * strides (kv_b, kv_h, kv_s), unit stride in D, positions 0..S-1 used; y: (B, H * D)
 * bfloat16, contiguous, ready for the output projection.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define MAX_POSITIONS 4096

static inline uint16_t to_bf16(float f) { /* round to nearest even, as torch does */
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)(v.u >> 16);
}

int altcap_attend_one(const float *q, long q_b, long q_h, const float *k, const float *v,
                      long kv_b, long kv_h, long kv_s, uint16_t *y, long B, long H, long S,
                      long D, float scale, int threads) {
    if (S < 1 || S > MAX_POSITIONS || D < 1) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long bh = 0; bh < B * H; bh++) {
        const long b = bh / H, h = bh % H;
        const float *qq = q + b * q_b + h * q_h;
        const float *kk = k + b * kv_b + h * kv_h, *vv = v + b * kv_b + h * kv_h;
        float p[MAX_POSITIONS], top = -INFINITY, sum = 0.0f;
        for (long s = 0; s < S; s++) {
            __m512 acc = _mm512_setzero_ps();
            long d = 0;
            for (; d + 16 <= D; d += 16)
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(qq + d), _mm512_loadu_ps(kk + s * kv_s + d), acc);
            float dot = _mm512_reduce_add_ps(acc);
            for (; d < D; d++) dot += qq[d] * kk[s * kv_s + d];
            p[s] = dot * scale;
            top = p[s] > top ? p[s] : top;
        }
        for (long s = 0; s < S; s++) {
            p[s] = expf(p[s] - top);
            sum += p[s];
        }
        const float inv = 1.0f / sum;
        uint16_t *out = y + b * H * D + h * D;
        long d = 0;
        for (; d + 16 <= D; d += 16) {
            __m512 acc = _mm512_setzero_ps();
            for (long s = 0; s < S; s++)
                acc = _mm512_fmadd_ps(_mm512_set1_ps(p[s]), _mm512_loadu_ps(vv + s * kv_s + d), acc);
            acc = _mm512_mul_ps(acc, _mm512_set1_ps(inv));
            _mm256_storeu_si256((__m256i *)(out + d), (__m256i)_mm512_cvtneps_pbh(acc));
        }
        for (; d < D; d++) {
            float acc = 0.0f;
            for (long s = 0; s < S; s++) acc += p[s] * vv[s * kv_s + d];
            out[d] = to_bf16(acc * inv);
        }
    }
    return 0;
}
