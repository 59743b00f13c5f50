/* Vector helpers shared by AltCap's CPU kernels (AVX-512): lane masks, bfloat16 loads,
 * float32 functions. */
#ifndef ALTCAP_VECMATH_H
#define ALTCAP_VECMATH_H

#include <immintrin.h>
#include <stdint.h>

/* the first min(n, 16) of 16 lanes */
static inline __mmask16 lanes(long n) {
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

/* the first min(n, 32) of 32 lanes (16-bit elements) */
static inline __mmask32 lanes32(long n) {
    return n >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << n) - 1);
}

/* 16 bfloat16 values (the first n of them; zeros after) as float32: a 16-bit shift */
static inline __m512 load16(const uint16_t *src, long n) {
    const __m256i raw = _mm256_maskz_loadu_epi16(lanes(n), src);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

/* e^x for x in [-88, 88] (clamped): 2^n * 2^f with f in [-1/2, 1/2], 2^f by its Taylor series
 * to degree 7 (relative error < 1e-8 before float32 rounding). */
static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(88.0f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)); /* log2(e) */
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    static const float c[] = {1.52527338e-5f, 1.54035304e-4f, 1.33335581e-3f, 9.61812911e-3f,
                              5.55041087e-2f, 2.40226507e-1f, 6.93147181e-1f, 1.0f};
    __m512 p = _mm512_set1_ps(c[0]);
    for (int i = 1; i < 8; i++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c[i]));
    return _mm512_scalef_ps(p, n);
}

/* Softmax numerators in place: p[0..n) <- e^(p - max), zeros from n up to the next multiple
 * of 16 (p must have room for them); returns their sum, the denominator. */
static inline float softmax_numerators(float *p, long n, float max) {
    __m512 sums = _mm512_setzero_ps();
    for (long s = 0; s < n; s += 16) {
        const __mmask16 m = lanes(n - s);
        const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + s), _mm512_set1_ps(max));
        const __m512 e = _mm512_maskz_mov_ps(m, exp512(x));
        _mm512_storeu_ps(p + s, e);
        sums = _mm512_add_ps(sums, e);
    }
    return _mm512_reduce_add_ps(sums);
}

/* GPT-2's gelu_new: x/2 (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), written as
 * x / (1 + e^(-2u)), which is the same function. */
static inline __m512 gelu_tanh512(__m512 x) {
    const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    const __m512 u = _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x);
    const __m512 minus_2_sqrt_2_over_pi = _mm512_set1_ps(-1.5957691216057308f);
    const __m512 e = exp512(_mm512_mul_ps(u, minus_2_sqrt_2_over_pi));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

#endif
