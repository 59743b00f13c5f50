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
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "altcap.h"
#include "vecmath.h"

#define VECS 2           /* 512-bit vectors of outputs per panel */
#define PANEL (16 * VECS) /* output rows per panel */
#define MB 12            /* input rows per block: VECS * MB = 24 accumulators */
#define AHEAD 16         /* k pairs to prefetch ahead (2 KB of a panel) */

enum { ACT_NONE, ACT_GELU, ACT_ARGMAX };

/* Greedy decoding's argmax, fused: a row's running maximum over the panels a thread does,
 * lane by lane (lane l sees the columns = l mod 16), instead of writing the logits out. */
typedef struct {
    __m512 best;
    __m512i at;  /* the column of each lane's best (the first one on a tie) */
    long nan_at; /* the first NaN column seen, or -1: torch counts NaN as the largest */
} running_max;

static inline void running_update(running_max *r, __m512 out, long n, __mmask16 live) {
    const __mmask16 nan = _mm512_mask_cmp_ps_mask(live, out, out, _CMP_UNORD_Q);
    if (nan && r->nan_at < 0) r->nan_at = n + __builtin_ctz(nan);
    const __mmask16 up = _mm512_mask_cmp_ps_mask(live, out, r->best, _CMP_GT_OQ);
    const __m512i cols = _mm512_add_epi32(_mm512_set1_epi32((int)n),
                                          _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
                                                           5, 4, 3, 2, 1, 0));
    r->best = _mm512_mask_mov_ps(r->best, up, out);
    r->at = _mm512_mask_mov_epi32(r->at, up, cols);
}

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
            if (act == ACT_ARGMAX) {
                running_update((running_max *)y + j, out, n, live);
                continue;
            }
            if (act == ACT_GELU) out = gelu_tanh512(out);
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

/* One panel against all M rows, in blocks of MB; y and ldy as for the panel's first column
 * (for ACT_ARGMAX, y is the rows' running_max array). */
static void panel_rows(const uint16_t *x, long ldx, const uint16_t *packed, long panel_size,
                       long p, long panels, const uint16_t *bias, void *y, long ldy, long esize,
                       int out_bf16, int act, long M, long N, long K) {
    /* with several blocks, the first streams the panel from memory and the others find it
     * in cache: they fetch the next panel into L2 meanwhile, each a share of it */
    const long parts = (M + MB - 1) / MB;
    const char *next =
        parts > 1 && p + 1 < panels ? (const char *)(packed + (p + 1) * panel_size) : NULL;
    for (long m0 = 0; m0 < M; m0 += MB) {
        const int mb = (int)(M - m0 < MB ? M - m0 : MB);
        block_any(x + m0 * ldx, ldx, packed + p * panel_size, K, bias, p * PANEL, N,
                  (char *)y + m0 * ldy * esize, ldy, out_bf16, act, mb, next, m0 / MB, parts);
    }
}

int altcap_linear_bf16(const uint16_t *x, long ldx, const uint16_t *packed, const uint16_t *bias,
                       void *y, long ldy, int out_bf16, int act, long M, long N, long K,
                       int threads) {
    if (M <= 0 || N <= 0 || K <= 0 || act == ACT_ARGMAX) return act == ACT_ARGMAX;
    const long panels = (N + PANEL - 1) / PANEL, panel_size = PANEL * ((K + 1) / 2 * 2);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long p = 0; p < panels; p++)
        panel_rows(x, ldx, packed, panel_size, p, panels, bias, y, ldy, out_bf16 ? 2 : 4,
                   out_bf16, act, M, N, K);
    return 0;
}

/* out[m] = argmax over n of (x @ w.T + bias)[m, n], as torch.argmax (the first index on a
 * tie, the first NaN if any): greedy decoding without writing (M, N) logits and reading them
 * back. Each thread keeps running maxima over its panels (a contiguous range, in order);
 * the threads' answers are merged in order. */
int altcap_linear_argmax_bf16(const uint16_t *x, long ldx, const uint16_t *packed,
                              const uint16_t *bias, long M, long N, long K, int64_t *out,
                              int threads) {
    if (M <= 0 || N <= 0 || K <= 0 || threads < 1) return 1;
    const long panels = (N + PANEL - 1) / PANEL, panel_size = PANEL * ((K + 1) / 2 * 2);
    float *val = malloc(sizeof *val * threads * M);
    long *idx = malloc(sizeof *idx * threads * M), *nan_at = malloc(sizeof *nan_at * threads * M);
    int failed = !val || !idx || !nan_at;
    for (long i = 0; !failed && i < threads * M; i++) idx[i] = nan_at[i] = -1; /* no answer */
    if (!failed) {
#pragma omp parallel num_threads(threads) reduction(| : failed)
        {
            const long tid = omp_get_thread_num();
            running_max *run = aligned_alloc(64, (sizeof *run * M + 63) / 64 * 64);
            long first = -1; /* this thread's first column */
            for (long m = 0; run && m < M; m++) {
                run[m].best = _mm512_set1_ps(-INFINITY);
                run[m].at = _mm512_set1_epi32(INT32_MAX);
                run[m].nan_at = -1;
            }
#pragma omp for schedule(static)
            for (long p = 0; p < panels; p++) {
                if (!run) {
                    failed = 1;
                    continue;
                }
                if (first < 0) first = p * PANEL;
                panel_rows(x, ldx, packed, panel_size, p, panels, bias, run, 1,
                           sizeof *run, 0, ACT_ARGMAX, M, N, K);
            }
            for (long m = 0; run && first >= 0 && m < M; m++) {
                const float top = _mm512_reduce_max_ps(run[m].best);
                const __mmask16 eq =
                    _mm512_cmp_ps_mask(run[m].best, _mm512_set1_ps(top), _CMP_EQ_OQ);
                const long at = _mm512_mask_reduce_min_epi32(eq, run[m].at);
                val[tid * M + m] = top;
                idx[tid * M + m] = at == INT32_MAX ? first : at; /* all -inf: the first */
                nan_at[tid * M + m] = run[m].nan_at;
            }
            free(run);
        }
    }
    for (long m = 0; !failed && m < M; m++) {
        long best = -1, nan = -1;
        for (long t = 0; t < threads; t++) {
            const long i = t * M + m;
            if (nan < 0 && nan_at[i] >= 0) nan = nan_at[i];
            if (idx[i] >= 0 && (best < 0 || val[i] > val[best])) best = i;
        }
        out[m] = nan >= 0 ? nan : idx[best];
    }
    free(val);
    free(idx);
    free(nan_at);
    return failed;
}
