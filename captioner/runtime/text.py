"""A lean forward pass of CLIP's text tower for CPU inference (scoring captions).

``transformers``' CLIPTextModelWithProjection holds the weights (its linear layers packed by
``packed.pack_linears`` on the CPU); this runs the same arithmetic with less waste:

- causal attention through ``scaled_dot_product_attention(is_causal=True)``, without the
  padding mask: CLIP pools at the end-of-text token, and causal attention never lets the
  padding after it reach that position;
- only the pooled token in the last layer: the other tokens need keys and values there and
  nothing else (the query, output projection and MLP of one token per text, not ~20);
- QuickGELU as ``sigmoid(1.702 h)`` multiplied into itself in place (one temporary).

The results equal the module's own forward up to rounding (tested against it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPTextModelWithProjection


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
        for layer in self.layers[:-1]:
            x = x + layer.self_attn.out_proj(_causal(layer.layer_norm1(x), layer.self_attn))
            x = x + layer.mlp.fc2(_quick_gelu(layer.mlp.fc1(layer.layer_norm2(x))))
        layer, rows = self.layers[-1], torch.arange(t)
        last = self.pooled_positions(input_ids)
        a, h = layer.self_attn, layer.layer_norm1(x)
        q = a.q_proj(h[rows, last]).unsqueeze(1)  # (T, 1, C): the pooled token's query only
        k, v = a.k_proj(h), a.v_proj(h)  # (T, L, C)
        allowed = torch.arange(n).unsqueeze(0) <= last.unsqueeze(1)  # (T, L): causal, one row
        y = F.scaled_dot_product_attention(
            *(_heads(z, a.num_heads) for z in (q, k, v)),
            attn_mask=allowed[:, None, None, :],
            scale=a.scale,
        )  # (T, H, 1, D)
        x = x[rows, last] + a.out_proj(y.transpose(1, 2).reshape(t, -1))  # (T, C)
        x = x + layer.mlp.fc2(_quick_gelu(layer.mlp.fc1(layer.layer_norm2(x))))
        return self.projection(self.final_layer_norm(x))


def _causal(h: torch.Tensor, a) -> torch.Tensor:
    """Causal self-attention of (T, L, C) normalised states, before the output projection."""
    t, n, c = h.shape
    q, k, v = (_heads(proj(h), a.num_heads) for proj in (a.q_proj, a.k_proj, a.v_proj))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=a.scale)  # (T, H, L, D)
    return y.transpose(1, 2).reshape(t, n, c)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(T, L, C) -> (T, H, L, C / H)."""
    t, n, c = x.shape
    return x.view(t, n, heads, c // heads).transpose(1, 2)


def _quick_gelu(h: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(h * 1.702).mul_(h)
