/* A whole GPT-2 forward pass (the prefix, or one decoding step) in one call, for the CPU.
 *
 * Why: a step is 12 layers of 4 linear layers, an attention and 2 residual adds with their
 * LayerNorms: 85 kernel calls, each ~6-9 us of Python and ctypes around it. At one image a
 * step streams ~250 MB of weights in ~9 ms, and those ~0.6 ms of calls left the memory idle;
 * here the same kernels run back to back. Same kernels, same order, same roundings: the
 * output is bit for bit what the calls one by one give.
 *
 * x: (B * T, C) bfloat16 input embeddings (token + position), contiguous; updated in place
 * to the residual stream after the last layer. k, v: the caches (L, B, H, S, D) at strides
 * (kv_l, kv_b, kv_h, kv_s), unit stride in D; the new positions pos..pos+T-1 are written.
 * scale: the attention scores' factor, D^-0.5; hidden: (B * T, C) = ln_f(x), ready for the
 * vocabulary projection.
 */
#include <stdint.h>
#include <stdlib.h>

#include "altcap.h"

typedef struct { /* one transformer block's parameters; linear weights as altcap_pack_bf16 */
    const uint16_t *ln1_w, *ln1_b;
    const uint16_t *attn_w, *attn_b; /* C -> 3C: queries, keys, values */
    const uint16_t *proj_w, *proj_b; /* C -> C */
    const uint16_t *ln2_w, *ln2_b;
    const uint16_t *fc_w, *fc_b;   /* C -> 4C, GELU (tanh form) */
    const uint16_t *fcp_w, *fcp_b; /* 4C -> C */
} altcap_gpt2_block;

enum { GELU = 1 }; /* altcap_linear_bf16's act code */

int altcap_gpt2_forward(const altcap_gpt2_block *blocks, long L, const uint16_t *lnf_w,
                        const uint16_t *lnf_b, float eps, uint16_t *x, long B, long T, long C,
                        long H, uint16_t *k, uint16_t *v, long kv_l, long kv_b, long kv_h,
                        long kv_s, long pos, float scale, uint16_t *hidden, int threads) {
    if (L < 1 || B < 1 || T < 1 || H < 1 || C % H) return 1;
    const long M = B * T, D = C / H;
    uint16_t *normed = malloc(sizeof *normed * M * C * 10); /* + qkv 3C, att C, out C, h 4C */
    if (!normed) return 2;
    uint16_t *qkv = normed + M * C, *att = qkv + 3 * M * C, *out = att + M * C;
    uint16_t *h = out + M * C;
    int failed = altcap_add_layer_norm_bf16(x, NULL, M, C, blocks[0].ln1_w, blocks[0].ln1_b, eps,
                                            normed, threads);
    for (long i = 0; i < L && !failed; i++) {
        const altcap_gpt2_block *p = blocks + i;
        failed |= altcap_linear_bf16(normed, C, p->attn_w, p->attn_b, qkv, 3 * C, 1, 0, M, 3 * C,
                                     C, threads);
        failed |= altcap_attend_step(qkv, T * 3 * C, 3 * C, T, k + i * kv_l, v + i * kv_l, kv_b,
                                     kv_h, kv_s, pos, att, B, H, D, scale, threads);
        failed |= altcap_linear_bf16(att, C, p->proj_w, p->proj_b, out, C, 1, 0, M, C, C, threads);
        failed |= altcap_add_layer_norm_bf16(x, out, M, C, p->ln2_w, p->ln2_b, eps, normed,
                                             threads);
        failed |= altcap_linear_bf16(normed, C, p->fc_w, p->fc_b, h, 4 * C, 1, GELU, M, 4 * C, C,
                                     threads);
        failed |= altcap_linear_bf16(h, 4 * C, p->fcp_w, p->fcp_b, out, C, 1, 0, M, C, 4 * C,
                                     threads);
        const int last = i + 1 == L; /* then ln_f, into hidden */
        failed |= altcap_add_layer_norm_bf16(x, out, M, C, last ? lnf_w : p[1].ln1_w,
                                             last ? lnf_b : p[1].ln1_b, eps,
                                             last ? hidden : normed, threads);
    }
    free(normed);
    return failed;
}
