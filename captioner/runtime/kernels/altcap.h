/* The kernels' entry points that other kernels call (gpt2.c composes the rest); each file
 * that defines one includes this, so the compiler holds definitions and callers to one
 * signature. The comments at each definition say what they compute. */
#ifndef ALTCAP_H
#define ALTCAP_H

#include <stdint.h>

int altcap_linear_bf16(const uint16_t *x, long ldx, const uint16_t *packed, const uint16_t *bias,
                       void *y, long ldy, int out_bf16, int act, long M, long N, long K,
                       int threads);

int altcap_attend_step(const uint16_t *qkv, long ld_b, long ld_t, long T, uint16_t *k,
                       uint16_t *v, long kv_b, long kv_h, long kv_s, long pos, uint16_t *y,
                       long B, long H, long D, float scale, int threads);

int altcap_add_layer_norm_bf16(uint16_t *x, const uint16_t *r, long M, long C,
                               const uint16_t *w, const uint16_t *b, float eps, uint16_t *y,
                               int threads);

#endif
