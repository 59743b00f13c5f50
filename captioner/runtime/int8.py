"""Int8 linear layers for CPU inference: 8-bit weights and activations, 32-bit sums.

CLIP's text tower scores every caption; on the CPU its linear layers are compute-bound
(about 53 GFLOP for 32 captions of 20 tokens), and bfloat16 already runs them at the CPU's
bfloat16 peak. Int8 products run at about twice that rate on CPUs with AVX512-VNNI (oneDNN
behind ``torch._int_mm``), so the text tower takes ~25-40% less time this way.

The quantization is the usual one for transformer inference (dynamic W8A8):

- weights: symmetric, one scale per output channel, made once at load time;
- activations: symmetric, one scale per row (token), made at every call from the row's
  largest magnitude; so a token with a large activation does not coarsen the others;
- ``y = (x_q @ w_q^T) * x_scale * w_scale + bias`` in float32.

Rounding moves a text embedding by a cosine of about 1e-3 or less; ``agreement`` measures it
on real texts, and the captioner keeps the exact path when a model disagrees more than that
(``pipeline.Captioner``; docs/confidence.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

QMAX = 127.0
ENV = "ALTCAP_TEXT_INT8"  # auto (the default) | off
# the lowest cosine between exact and int8 embeddings of the same text that is accepted:
# rounding moves a full-size tower's by about 5e-4 (tested); a model that moves more keeps
# its exact layers
MIN_AGREEMENT = 0.998


def available(device: torch.device) -> bool:
    """Whether int8 products run here (a CPU, a torch with ``_int_mm`` there) and are wanted
    (``ALTCAP_TEXT_INT8`` is not ``off``)."""
    if os.environ.get(ENV, "auto").strip().lower() in ("0", "off", "false", "no"):
        return False
    if device.type != "cpu" or not hasattr(torch, "_int_mm"):
        return False
    try:
        one = torch.ones(1, 8, dtype=torch.int8)
        return int(torch._int_mm(one, one.t().contiguous())[0, 0]) == 8
    except RuntimeError as exc:  # a build without the CPU kernel
        log.info("int8 products are not available: %s", exc)
        return False


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) float -> ``(q, scale)``: int8 (M, K) and float32 (M, 1), ``x ~ q * scale``."""
    x = x.float()
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12).div_(QMAX)
    return torch.div(x, scale).round_().to(torch.int8), scale


class Int8Linear(nn.Module):
    """Drop-in inference replacement for ``nn.Linear`` (weights frozen when made): int8
    weights and activations, float32 out."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float()
        self.out_features, self.in_features = w.shape
        q, scale = quantize_rows(w)  # a row of the weight is an output channel
        self.weight = q.t().contiguous()  # (in, out): the layout torch._int_mm takes
        self.scale = scale.reshape(-1)  # (out,)
        self.bias = None if bias is None else bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        q, x_scale = quantize_rows(x.reshape(-1, self.in_features))
        y = torch._int_mm(q, self.weight).float().mul_(x_scale).mul_(self.scale)  # in place:
        if self.bias is not None:  # fewer passes over the output than addcmul's
            y.add_(self.bias)
        return y.reshape(*lead, self.out_features)

    @classmethod
    def concat(cls, parts: Sequence[Int8Linear]) -> Int8Linear:
        """One layer computing ``parts`` side by side (their outputs concatenated), e.g. a
        query, key and value projection of the same input: one product, one quantization of
        the input, the same numbers as the parts (the scales are per row and per channel)."""
        if len({p.in_features for p in parts}) != 1:
            raise ValueError("layers computed side by side must share their input size")
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.in_features = parts[0].in_features
        fused.out_features = sum(p.out_features for p in parts)
        fused.weight = torch.cat([p.weight for p in parts], dim=1)
        fused.scale = torch.cat([p.scale for p in parts])
        fused.bias = None
        if any(p.bias is not None for p in parts):
            zeros = [torch.zeros(p.out_features) if p.bias is None else p.bias for p in parts]
            fused.bias = torch.cat(zeros)
        return fused


def quantize_linears(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by an ``Int8Linear``; returns the count.

    Only for inference copies: the quantized weights no longer follow the module's parameters.
    """
    n = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child.weight, child.bias))
            n += 1
        else:
            n += quantize_linears(child)
    return n


def agreement(exact: torch.Tensor, approx: torch.Tensor) -> float:
    """The lowest row-wise cosine between two (T, D) embeddings of the same texts."""
    return float(F.cosine_similarity(exact.float(), approx.float(), dim=-1).min())
