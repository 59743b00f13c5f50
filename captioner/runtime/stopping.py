"""When a generated row is finished; shared by the decoding loops and the CUDA-graph greedy."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["StopRule"]


@dataclass(frozen=True)
class StopRule:
    """When a row is finished: at ``stop_id`` (".") or ``eos_id``, never before ``min_tokens``."""

    stop_id: int | None
    eos_id: int | None
    min_tokens: int = 0

    def hits(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Bool mask of rows whose just-generated ``tokens`` (step is 0-based) end them."""
        hit = torch.zeros_like(tokens, dtype=torch.bool)
        if step + 1 < self.min_tokens:
            return hit
        for i in (self.stop_id, self.eos_id):
            if i is not None:
                hit |= tokens == i
        return hit
