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
        const long at = i * 16;
        const __m512 h = quick_gelu512(load16(x + at, n - at));
        _mm256_mask_storeu_epi16(x + at, lanes(n - at), (__m256i)_mm512_cvtneps_pbh(h));
    }
    return 0;
}
