"""A lean GPT-2 forward pass over a preallocated key/value cache.

``transformers``' GPT2LMHeadModel is the source of truth for the weights; this module reads
its parameters (no copies) and runs the same arithmetic with less machinery: a static cache
written in place, one fused QKV projection per layer, fused attention for the prefix, and
the vocabulary projection only for the positions that are sampled. ClipCap prompts all have
the same length (the prefix), so a batch never needs padding or an attention mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from captioner.runtime import cpu_kernel
from captioner.runtime.packed import Linear, can_pack


@dataclass
class KVCache:
    """Keys and values of every layer: (layers, batch, heads, max_len, head_dim) each."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0  # positions filled so far

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def select(self, rows: torch.Tensor) -> KVCache:
        """Keep (and reorder/duplicate) batch rows: beam reordering, dropping finished rows."""
        n = self.length
        k = self.k.new_empty((self.k.shape[0], rows.numel(), *self.k.shape[2:]))
        v = torch.empty_like(k)
        k[:, :, :, :n] = self.k[:, rows, :, :n]
        v[:, :, :, :n] = self.v[:, rows, :, :n]
        return KVCache(k, v, n)


def attend_one(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of one query per row, q (B, H, 1, D), over k, v (B, H, S, D); ``bias`` (S,)
    is added to the scores (-inf masks a position).

    Two batched matrix-vector products: the fused kernels are built for long queries and lose
    here (cuDNN's took 0.25 ms a layer at batch 2048 on an H100; on a 2-core CPU the flash
    kernel took 3.3x as long at batch 32). On CPUs in float32: bfloat16 batched products were
    slower there (66 vs 42 us at batch 1). Softmax in float32.
    """
    dtype = q.dtype
    if q.device.type == "cpu":
        q, k, v = q.float(), k.float(), v.float()
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v).to(dtype)


class CachedGPT2:
    """GPT-2 inference on a static KV cache, sharing the parameters of a GPT2LMHeadModel."""

    def __init__(
        self, lm: GPT2LMHeadModel, pack: bool | None = None, kernel: bool | None = None
    ) -> None:
        cfg = lm.config
        if cfg.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"unsupported GPT-2 activation {cfg.activation_function!r}")
        if cfg.scale_attn_by_inverse_layer_idx or cfg.reorder_and_upcast_attn:
            raise ValueError("GPT-2 attention variants are not supported by the cached decoder")
        if not cfg.scale_attn_weights:
            raise ValueError("GPT-2 without attention scaling is not supported")
        t = lm.transformer
        self.n_head = cfg.n_head
        self.eps = cfg.layer_norm_epsilon
        self.max_positions = cfg.n_positions
        self.wte = t.wte.weight  # (V, C)
        self.wpe = t.wpe.weight  # (n_positions, C)
        if pack is None:
            pack = can_pack(self.wte.device, self.wte.dtype)
        if kernel is None:  # bfloat16 on an AVX512-BF16 CPU: see cpu_kernel.py
            kernel = cpu_kernel.available(self.wte.device, self.wte.dtype)
        self.kernel = kernel

        def conv1d(m, gelu: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
            """GPT-2's Conv1D (its weight is (in, out)), with the MLP's GELU if ``gelu``."""
            if kernel:  # the kernel applies GELU to its float32 sums before rounding
                act = "gelu_tanh" if gelu else None
                return cpu_kernel.KernelLinear(m.weight.t(), m.bias, activation=act)
            linear = Linear(m.weight.t(), m.bias, pack)
            return (lambda h: F.gelu(linear(h), approximate="tanh")) if gelu else linear

        self.blocks = [
            (
                (b.ln_1.weight, b.ln_1.bias),
                conv1d(b.attn.c_attn),  # (C -> 3C): queries, keys, values
                conv1d(b.attn.c_proj),
                (b.ln_2.weight, b.ln_2.bias),
                conv1d(b.mlp.c_fc, gelu=True),  # (C -> 4C), GELU included
                conv1d(b.mlp.c_proj),
            )
            for b in t.h
        ]
        self.ln_f = (t.ln_f.weight, t.ln_f.bias)
        head = lm.lm_head.weight  # (V, C), tied to wte in GPT-2
        self.vocab_size = head.shape[0]
        if head.device.type == "cuda" and self.vocab_size % 64:
            # GPT-2's 50257 rows leave cuBLAS on a slow unaligned kernel (~5x slower at batch
            # 2048 on an H100); zero rows pad it and the logits are sliced back.
            pad = head.new_zeros(64 - self.vocab_size % 64, head.shape[1])
            head = torch.cat((head, pad))
        if kernel:  # float32 logits straight from the accumulators: a faster, finer argmax
            self.lm_head = cpu_kernel.KernelLinear(head, None, out_dtype=torch.float32)
            self.fused = cpu_kernel.KernelGPT2(self.blocks, self.ln_f, self.n_head, self.eps)
        else:
            self.lm_head = Linear(head, None, pack)

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.dtype

    @property
    def device(self) -> torch.device:
        return self.wte.device

    def new_cache(self, batch_size: int, max_len: int, zeros: bool = False) -> KVCache:
        if max_len > self.max_positions:
            raise ValueError(
                f"sequence of {max_len} exceeds GPT-2's {self.max_positions} positions"
            )
        c = self.wte.shape[1]
        shape = (len(self.blocks), batch_size, self.n_head, max_len, c // self.n_head)
        # zeros where masked positions are read (static shapes): 0 * NaN garbage would be NaN
        alloc = torch.zeros if zeros else torch.empty
        k = alloc(shape, dtype=self.dtype, device=self.device)
        return KVCache(k, alloc(shape, dtype=self.dtype, device=self.device), 0)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.wte)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run input embeddings (B, T, C) at positions cache.length.. and return the final
        hidden state of the last position, (B, C), ready for ``logits``.

        T > 1 is only allowed on an empty cache (the prefix); later steps feed one token.
        """
        b, t, c = x.shape
        pos = cache.length
        if t > 1 and pos != 0:
            raise ValueError("multi-token steps are only supported at position 0")
        x = x.to(self.dtype) + self.wpe[pos : pos + t]
        if self.kernel:  # every block and ln_f in one call (bfloat16 on the CPU kernels)
            hidden = self.fused(x.contiguous(), cache.k, cache.v, pos)
            cache.length = pos + t
            return hidden[:, -1]  # (B, C)
        h, d = self.n_head, c // self.n_head
        for i, (ln1, attn, proj, ln2, fc, fc_proj) in enumerate(self.blocks):
            qkv = attn(F.layer_norm(x, (c,), *ln1, self.eps)).view(b, t, 3, h, d)  # q, k, v
            q = qkv[:, :, 0].transpose(1, 2)  # (B, H, T, D)
            cache.k[i, :, :, pos : pos + t] = qkv[:, :, 1].transpose(1, 2)
            cache.v[i, :, :, pos : pos + t] = qkv[:, :, 2].transpose(1, 2)
            k = cache.k[i, :, :, : pos + t]  # (B, H, S, D)
            v = cache.v[i, :, :, : pos + t]
            if t == 1:
                y = attend_one(q, k, v)
            else:
                y = F.scaled_dot_product_attention(q.to(k.dtype), k, v, is_causal=True)
            y = y.transpose(1, 2).reshape(b, t, c)  # (B, H, T, D) -> (B, T, C)
            x = x + proj(y.to(x.dtype))
            x = x + fc_proj(fc(F.layer_norm(x, (c,), *ln2, self.eps)))
        cache.length = pos + t
        return F.layer_norm(x[:, -1], (c,), *self.ln_f, self.eps)  # (B, C)

    @torch.inference_mode()
    def forward_static(
        self, x: torch.Tensor, cache: KVCache, pos: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """One decoding step with every shape fixed, so it can be captured in a CUDA graph.

        x: (B, 1, C) input embeddings; pos: (1,) long tensor, the position written; visible:
        (max_len,) bool, the cache positions attended to (0..pos). Attention spans the whole
        cache with masked-out positions instead of a slice that grows each step.
        """
        b, _, c = x.shape
        h, d = self.n_head, c // self.n_head
        x = x.to(self.dtype) + self.wpe[pos]  # (B, 1, C)
        # additive mask over the whole cache (masked slots hold zeros, never NaN garbage)
        bias = torch.zeros(visible.shape, device=x.device).masked_fill_(~visible, float("-inf"))
        for i, (ln1, attn, proj, ln2, fc, fc_proj) in enumerate(self.blocks):
            qkv = attn(F.layer_norm(x, (c,), *ln1, self.eps)).view(b, 1, 3, h, d)
            q = qkv[:, :, 0].transpose(1, 2)  # (B, H, 1, D)
            cache.k[i].index_copy_(2, pos, qkv[:, :, 1].transpose(1, 2))
            cache.v[i].index_copy_(2, pos, qkv[:, :, 2].transpose(1, 2))
            y = attend_one(q, cache.k[i], cache.v[i], bias)
            x = x + proj(y.transpose(1, 2).reshape(b, 1, c))
            x = x + fc_proj(fc(F.layer_norm(x, (c,), *ln2, self.eps)))
        return F.layer_norm(x[:, -1], (c,), *self.ln_f, self.eps)  # (B, C)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, C) final hidden states -> (B, V) float32 next-token logits."""
        return self.raw_logits(hidden).float()

    @torch.inference_mode()
    def greedy(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, C) final hidden states -> (B,) the most likely next tokens."""
        if self.kernel:  # fused: the logits are never written out
            return self.lm_head.argmax(hidden)
        return torch.argmax(self.raw_logits(hidden), dim=-1)

    @torch.inference_mode()
    def raw_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in the model's dtype (float32 from the CPU kernel): enough for an argmax
        (upcasting is exact, so the argmax is the same) without a float32 copy of (B, V)."""
        return self.lm_head(hidden)[:, : self.vocab_size]
