/* Attention of one new token over a key/value cache, for GPT-2 decoding on the CPU.
 *
 * Why: at each step every (row, head) pair stores its new key and value and attends with one
 * query over the cached positions; as strided copies, batched matrix-vector products and a
 * softmax, torch spent ~0.4 ms a layer on that at batch 32 (several passes, small-matrix
 * dispatch, dtype conversions); this reads each key and value once.
 * Each (row, head) is computed alone, in a fixed order, so rows do not depend on their batch.
 *
 * k, v: one layer's float32 caches at strides (kv_b, kv_h, kv_s), unit stride in D;
 * y: (B, H * D) bfloat16, contiguous, ready for the output projection.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define MAX_POSITIONS 4096
#define MAX_HEAD_DIM 1024

static inline uint16_t to_bf16(float f) { /* round to nearest even, as torch does */
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)(v.u >> 16);
}

static inline float from_bf16(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

/* One decoding step of one layer: qkv (B, 3 * H * D) bfloat16 rows ld_qkv apart (queries,
 * keys, values, as GPT-2's c_attn writes them) -> the new key and value stored in the caches
 * at position pos (as float32), then the attention of the query over positions 0..pos. */
int altcap_attend_step(const uint16_t *qkv, long ld_qkv, float *k, float *v, long kv_b,
                       long kv_h, long kv_s, long pos, uint16_t *y, long B, long H, long D,
                       float scale, int threads) {
    const long S = pos + 1, C = H * D;
    if (pos < 0 || S > MAX_POSITIONS || D < 1 || D > MAX_HEAD_DIM) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long bh = 0; bh < B * H; bh++) {
        const long b = bh / H, h = bh % H;
        const uint16_t *row = qkv + b * ld_qkv + h * D;
        float *kk = k + b * kv_b + h * kv_h, *vv = v + b * kv_b + h * kv_h;
        float qq[MAX_HEAD_DIM];
        for (long d = 0; d < D; d++) {
            qq[d] = from_bf16(row[d]);
            kk[pos * kv_s + d] = from_bf16(row[C + d]);
            vv[pos * kv_s + d] = from_bf16(row[2 * C + d]);
        }
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

/* The index of each row's largest value (the first one on a tie, as torch.argmax), for
 * greedy decoding over float32 logits: x (M, N) rows ldx apart -> out (M) int64. */
int altcap_argmax_rows(const float *x, long ldx, long M, long N, int64_t *out, int threads) {
    if (N < 1) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long m = 0; m < M; m++) {
        const float *row = x + m * ldx;
        __m512 best = _mm512_set1_ps(-INFINITY);
        __mmask16 nan = 0;
        long n = 0;
        for (; n + 16 <= N; n += 16) {
            const __m512 v = _mm512_loadu_ps(row + n);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            best = _mm512_max_ps(best, v);
        }
        float top = _mm512_reduce_max_ps(best);
        for (; n < N; n++) {
            nan |= row[n] != row[n];
            top = row[n] > top ? row[n] : top;
        }
        long at = 0;
        if (nan) /* torch counts NaN as the largest value */
            while (row[at] == row[at]) at++;
        else
            while (row[at] != top) at++;
        out[m] = at;
    }
    return 0;
}
