/* y = x @ w.T + bias in bfloat16 for x86-64 CPUs with AVX512-BF16 (Zen 4, Sapphire Rapids).
 *
 * Why: a GPT-2 decoding step multiplies a few rows by every weight matrix, so at small
 * batches it is a stream of 250 MB of weights; oneDNN reached ~25 GB/s on that shape on two
 * Zen 4 cores, this loop reaches ~50 GB/s.
 *
 * Batch-invariant by construction: every output element is one float32 accumulator that runs
 * over k in the same order, whatever the number of rows, the block an element falls in or the
 * thread that computes it. So a caption does not depend on the images it was batched with.
 *
 * Layout. w is packed once by `altcap_pack_bf16` into panels of PANEL = 32 output rows: for
 * each pair of k, the 32 rows' two weights, so a panel is read as one sequential stream and
 * each 512-bit load feeds 16 outputs (`vdpbf16ps` multiplies bf16 pairs and adds both products
 * to one float32 lane; x's pair is broadcast to every lane). N is padded to a whole panel and
 * K to an even number, with zeros.
 *
 * x: (M, K) rows ldx apart; bias: (N) or NULL; y: (M, N) rows ldy apart, float32 (out_bf16 = 0)
 * or bfloat16 rounded to nearest even (out_bf16 = 1). act = 1 applies GPT-2's GELU (the tanh
 * form) to the float32 sums before they are rounded, which spares a pass over the output.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "vecmath.h"

#define VECS 2           /* 512-bit vectors of outputs per panel */
#define PANEL (16 * VECS) /* output rows per panel */
#define MB 12            /* input rows per block: VECS * MB = 24 accumulators */
#define AHEAD 16         /* k pairs to prefetch ahead (2 KB of a panel) */

long altcap_packed_size(long N, long K) { /* in bf16 elements */
    return (N + PANEL - 1) / PANEL * PANEL * ((K + 1) / 2 * 2);
}

/* w: (N, K) rows ldw apart -> packed[(panel, k / 2, lane of PANEL, k % 2)] */
void altcap_pack_bf16(const uint16_t *w, long ldw, long N, long K, uint16_t *packed) {
    const long pairs = (K + 1) / 2, panels = (N + PANEL - 1) / PANEL;
    for (long p = 0; p < panels; p++)
        for (long q = 0; q < pairs; q++)
            for (long r = 0; r < PANEL; r++)
                for (long s = 0; s < 2; s++) {
                    const long n = p * PANEL + r, k = 2 * q + s;
                    packed[((p * pairs + q) * PANEL + r) * 2 + s] =
                        n < N && k < K ? w[n * ldw + k] : 0;
                }
}

static inline uint32_t x_pair(const uint16_t *x, long q, long K) {
    uint32_t lo = x[2 * q], hi = 2 * q + 1 < K ? x[2 * q + 1] : 0;
    return lo | hi << 16;
}

/* One panel against mb rows of x; mb is a compile-time constant at each call site, so the
 * accumulators stay in registers. */
static inline __attribute__((always_inline)) void block(
    const uint16_t *x, long ldx, const uint16_t *panel, long K, const uint16_t *bias,
    long n0, long N, void *y, long ldy, int out_bf16, int act, const int mb,
    const char *next, long part, long parts) {
    __m512 acc[VECS][MB];
    for (int v = 0; v < VECS; v++)
        for (int j = 0; j < mb; j++) acc[v][j] = _mm512_setzero_ps();
    const long pairs = (K + 1) / 2, full = K / 2;
    const long share = ((long)PANEL * 4 << 16) / parts; /* bytes of panel a k pair, 16.16 */
    for (long q = 0; q < pairs; q++) {
        __m512bh wv[VECS];
        for (int v = 0; v < VECS; v++) {
            /* without this a single row ran at half the memory bandwidth */
            _mm_prefetch((const char *)(panel + ((q + AHEAD) * PANEL + v * 16) * 2), _MM_HINT_T0);
            wv[v] = (__m512bh)_mm512_loadu_si512(panel + (q * PANEL + v * 16) * 2);
        }
        if (next) /* this block's share of the next panel (see altcap_linear_bf16) */
            _mm_prefetch(next + ((part * pairs + q) * share >> 16), _MM_HINT_T1);
        for (int j = 0; j < mb; j++) {
            uint32_t pair;
            if (q < full)
                memcpy(&pair, x + j * ldx + 2 * q, sizeof pair);
            else
                pair = x_pair(x + j * ldx, q, K);
            const __m512bh xb = (__m512bh)_mm512_set1_epi32((int)pair);
            for (int v = 0; v < VECS; v++) acc[v][j] = _mm512_dpbf16_ps(acc[v][j], wv[v], xb);
        }
    }
    for (int v = 0; v < VECS; v++) {
        const long n = n0 + v * 16;
        if (n >= N) break;
        const __mmask16 live = lanes(N - n);
        const __m512 b = bias ? load16(bias + n, N - n) : _mm512_setzero_ps();
        for (int j = 0; j < mb; j++) {
            __m512 out = _mm512_add_ps(acc[v][j], b);
            if (act == 1) out = gelu_tanh512(out);
            if (out_bf16)
                _mm256_mask_storeu_epi16((uint16_t *)y + j * ldy + n, live,
                                         (__m256i)_mm512_cvtneps_pbh(out));
            else
                _mm512_mask_storeu_ps((float *)y + j * ldy + n, live, out);
        }
    }
}

static void block_any(const uint16_t *x, long ldx, const uint16_t *panel, long K,
                      const uint16_t *bias, long n0, long N, void *y, long ldy, int out_bf16,
                      int act, int mb, const char *next, long part, long parts) {
    switch (mb) {
#define CASE(m) \
    case m: \
        block(x, ldx, panel, K, bias, n0, N, y, ldy, out_bf16, act, m, next, part, parts); \
        break;
        CASE(12) CASE(11) CASE(10) CASE(9) CASE(8) CASE(7)
        CASE(6) CASE(5) CASE(4) CASE(3) CASE(2) CASE(1)
#undef CASE
    }
}

int altcap_linear_bf16(const uint16_t *x, long ldx, const uint16_t *packed, const uint16_t *bias,
                       void *y, long ldy, int out_bf16, int act, long M, long N, long K,
                       int threads) {
    if (M <= 0 || N <= 0 || K <= 0) return 0;
    const long panels = (N + PANEL - 1) / PANEL, panel_size = PANEL * ((K + 1) / 2 * 2);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long p = 0; p < panels; p++) {
        /* with several blocks, the first streams the panel from memory and the others find
         * it in cache: they fetch the next panel into L2 meanwhile, each a share of it */
        const long parts = (M + MB - 1) / MB;
        const char *next =
            parts > 1 && p + 1 < panels ? (const char *)(packed + (p + 1) * panel_size) : NULL;
        for (long m0 = 0; m0 < M; m0 += MB) {
            const int mb = (int)(M - m0 < MB ? M - m0 : MB);
            block_any(x + m0 * ldx, ldx, packed + p * panel_size, K, bias, p * PANEL, N,
                      (char *)y + m0 * ldy * (out_bf16 ? 2 : 4), ldy, out_bf16, act, mb,
                      next, m0 / MB, parts);
        }
    }
    return 0;
}
