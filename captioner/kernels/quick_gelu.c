/* CLIP's QuickGELU, h * sigmoid(1.702 h), in place over bfloat16, for the CPU.
 *
 * Why: torch computes it as three passes over the MLP's activations (a scaled copy, a
 * sigmoid, a product), ~2.8 ms a layer for 32 images on two Zen 4 cores; one pass that
 * rounds once is ~5x faster. Each element alone: nothing depends on the batch.
 */
#include <immintrin.h>
#include <stdint.h>

#include "vecmath.h"

static inline __m512 quick_gelu512(__m512 h) {
    const __m512 e = exp512(_mm512_mul_ps(h, _mm512_set1_ps(-1.702f)));
    return _mm512_div_ps(h, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

int altcap_quick_gelu_bf16(uint16_t *x, long n, int threads) {
    const long blocks = (n + 15) / 16;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long i = 0; i < blocks; i++) {
        const long at = i * 16, left = n - at;
        const __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        const __m256i raw = _mm256_maskz_loadu_epi16(m, x + at);
        const __m512 h = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
        _mm256_mask_storeu_epi16(x + at, m, (__m256i)_mm512_cvtneps_pbh(quick_gelu512(h)));
    }
    return 0;
}
