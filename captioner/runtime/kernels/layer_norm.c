/* A residual add and the LayerNorm after it, in bfloat16, for the CPU.
 *
 * Why: pre-norm transformers (CLIP, GPT-2) add each sublayer's output to the residual stream
 * and normalise the sum for the next sublayer; torch does that as two passes over memory
 * (~0.5 ms a CLIP layer for 32 images, ~0.4 ms a GPT-2 decoding step) where one will do.
 * Each row alone: nothing depends on the batch.
 *
 * x: (M, C) bfloat16 rows, updated in place to round(x + r) when r is not NULL (as torch's
 * bfloat16 add rounds); y: (M, C) = (x - mean) / sqrt(var + eps) * w + b with float32
 * statistics (the population variance, as torch's layer_norm), rounded to bfloat16.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "altcap.h"
#include "vecmath.h"

int altcap_add_layer_norm_bf16(uint16_t *x, const uint16_t *r, long M, long C,
                               const uint16_t *w, const uint16_t *b, float eps, uint16_t *y,
                               int threads) {
    if (C < 1) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long m = 0; m < M; m++) {
        uint16_t *row = x + m * C, *out = y + m * C;
        __m512 sum = _mm512_setzero_ps();
        for (long c = 0; c < C; c += 16) {
            __m512 v = load16(row + c, C - c);
            if (r) { /* the residual add, rounded to bfloat16 in place */
                const __m256i sum16 =
                    (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(v, load16(r + m * C + c, C - c)));
                _mm256_mask_storeu_epi16(row + c, lanes(C - c), sum16);
                v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(sum16), 16));
            }
            sum = _mm512_add_ps(sum, v);
        }
        /* lanes past C were loaded as zeros: they add nothing */
        const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / (float)C);
        __m512 squares = _mm512_setzero_ps();
        for (long c = 0; c < C; c += 16) {
            const __m512 d = _mm512_maskz_sub_ps(lanes(C - c), load16(row + c, C - c), mean);
            squares = _mm512_fmadd_ps(d, d, squares);
        }
        const float var = _mm512_reduce_add_ps(squares) / (float)C;
        const __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(var + eps));
        for (long c = 0; c < C; c += 16) {
            const __m512 d = _mm512_mul_ps(_mm512_sub_ps(load16(row + c, C - c), mean), rstd);
            const __m512 v = _mm512_fmadd_ps(d, load16(w + c, C - c), load16(b + c, C - c));
            _mm256_mask_storeu_epi16(out + c, lanes(C - c), (__m256i)_mm512_cvtneps_pbh(v));
        }
    }
    return 0;
}
