"""A lean forward pass of CLIP's text tower for CPU inference (scoring captions).

``transformers``' CLIPTextModelWithProjection holds the weights (its linear layers packed by
``packed.pack_linears`` on the CPU); this runs the same arithmetic with less waste:

- causal attention through ``scaled_dot_product_attention(is_causal=True)``, without the
  padding mask: CLIP pools at the end-of-text token, and causal attention never lets the
  padding after it reach that position;
- only the pooled token in the last layer: the other tokens need keys and values there and
  nothing else (the query, output projection and MLP of one token per text, not ~20);
- QuickGELU as ``sigmoid(1.702 h)`` multiplied into itself in place (one temporary);
- with int8 layers (``int8.quantize_linears``, what the captioner uses on the CPU), a layer's
  query, key and value projections as one product over one quantized input.

The results equal the module's own forward up to rounding (tested against it); int8 layers
round more (int8.py says how much, and the captioner checks it on ``PROBE_TEXTS``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPTextModelWithProjection

from captioner.runtime.int8 import Int8Linear

# Texts of the kinds the tower scores (captions, alts, generic texts) on which int8 layers
# are checked against the exact ones at load time (pipeline.Captioner, runtime/int8.py).
PROBE_TEXTS = (
    "an image.",
    "a photo of something.",
    "A red circle on a white background.",
    "A man riding a wave on top of a surfboard.",
    "Two dogs playing with a frisbee in the park at sunset.",
    "A screenshot of a login form with a blue button.",
    "SALE 50% OFF",
    "Logo of the company, a green leaf above the word ACME.",
    "A chart showing rising sales from 2019 to 2024, by quarter.",
    "IMG_2024_0613.jpg",
)


class LeanText:
    """``text_embeds`` of a CLIPTextModelWithProjection, for inference."""

    def __init__(self, model: CLIPTextModelWithProjection) -> None:
        cfg = model.config
        if cfg.hidden_act != "quick_gelu":
            raise ValueError(f"unsupported CLIP activation {cfg.hidden_act!r}")
        tm = model.text_model
        self.tokens = tm.embeddings.token_embedding
        self.positions = tm.embeddings.position_embedding.weight
        self.layers = list(tm.encoder.layers)
        self.final_layer_norm = tm.final_layer_norm
        self.projection = model.text_projection
        self.eos_token_id = int(cfg.eos_token_id)
        # int8 layers (int8.py): the query, key and value projections of a layer as one
        # product (the last layer's key and value: its query is of the pooled token only)
        self.qkv = [_side_by_side(a.q_proj, a.k_proj, a.v_proj) for a in self._attns[:-1]]
        self.kv = _side_by_side(self._attns[-1].k_proj, self._attns[-1].v_proj)

    def pooled_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(T, L) ids -> (T,) the position CLIP pools at, as transformers chooses it."""
        if self.eos_token_id == 2:  # configs from before transformers#24773: the highest id
            return input_ids.argmax(dim=-1)
        return (input_ids == self.eos_token_id).int().argmax(dim=-1)  # the first end-of-text

    @torch.inference_mode()
    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(T, L) ids -> (T, projection_dim) text embeddings (``attention_mask`` is unused:
        see the module docstring)."""
        t, n = input_ids.shape
        x = self.tokens(input_ids) + self.positions[:n]  # (T, L, C)
        for layer, qkv in zip(self.layers[:-1], self.qkv, strict=True):
            h = _causal(layer.layer_norm1(x), layer.self_attn, qkv)
            x = x + layer.self_attn.out_proj(h)
            x = x + layer.mlp.fc2(_quick_gelu(layer.mlp.fc1(layer.layer_norm2(x))))
        layer, rows = self.layers[-1], torch.arange(t)
        last = self.pooled_positions(input_ids)
        a, h = layer.self_attn, layer.layer_norm1(x)
        q = a.q_proj(h[rows, last]).unsqueeze(1)  # (T, 1, C): the pooled token's query only
        k, v = self.kv(h).chunk(2, dim=-1) if self.kv else (a.k_proj(h), a.v_proj(h))
        allowed = torch.arange(n).unsqueeze(0) <= last.unsqueeze(1)  # (T, L): causal, one row
        y = F.scaled_dot_product_attention(
            *(_heads(z, a.num_heads) for z in (q, k, v)),
            attn_mask=allowed[:, None, None, :],
            scale=a.scale,
        )  # (T, H, 1, D)
        x = x[rows, last] + a.out_proj(y.transpose(1, 2).reshape(t, -1))  # (T, C)
        x = x + layer.mlp.fc2(_quick_gelu(layer.mlp.fc1(layer.layer_norm2(x))))
        return self.projection(self.final_layer_norm(x))

    @property
    def _attns(self) -> list:
        return [layer.self_attn for layer in self.layers]


def _side_by_side(*projections) -> Int8Linear | None:
    """Int8 projections of the same input as one layer; None for other kinds of layer."""
    if all(isinstance(p, Int8Linear) for p in projections):
        return Int8Linear.concat(projections)
    return None


def _causal(h: torch.Tensor, a, qkv: Int8Linear | None) -> torch.Tensor:
    """Causal self-attention of (T, L, C) normalised states, before the output projection
    (``qkv``: the three projections as one layer, if they are)."""
    t, n, c = h.shape
    parts = qkv(h).chunk(3, dim=-1) if qkv else (p(h) for p in (a.q_proj, a.k_proj, a.v_proj))
    q, k, v = (_heads(z, a.num_heads) for z in parts)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=a.scale)  # (T, H, L, D)
    return y.transpose(1, 2).reshape(t, n, c)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(T, L, C) -> (T, H, L, C / H)."""
    t, n, c = x.shape
    return x.view(t, n, heads, c // heads).transpose(1, 2)


def _quick_gelu(h: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(h * 1.702).mul_(h)
