"""Greedy decoding replayed from a CUDA graph.

At large batch on a GPU a GPT-2 step is a few hundred small kernels whose launch cost
exceeds their run time. Capturing one whole step (embedding, 12 blocks, vocabulary
projection, argmax) as a CUDA graph and replaying it turns each step into one launch. Shapes
must not change between replays, so the step attends over the whole static cache with a mask
(``CachedGPT2.forward_static``) and each (batch, length) pair gets its own graph, kept for
reuse. Finished rows keep running (their output is ignored), as compaction would change
shapes; the host checks for an all-finished batch every few steps only, to avoid a sync per
step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captioner.runtime.lm import CachedGPT2, KVCache
from captioner.runtime.stopping import StopRule

CHECK_EVERY = 4  # steps between host syncs that look for an all-finished batch


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph | None
    cache: KVCache
    ids: torch.Tensor  # (B,) long: input token of the step, overwritten with its output
    pos: torch.Tensor  # (1,) long
    visible: torch.Tensor  # (max_len,) bool


class GraphedGreedy:
    """Greedy decoding with static buffers; CUDA graphs when ``use_graphs`` (CUDA only)."""

    def __init__(self, lm: CachedGPT2, use_graphs: bool | None = None, max_graphs: int = 8) -> None:
        self.lm = lm
        self.use_graphs = lm.device.type == "cuda" if use_graphs is None else use_graphs
        self.max_graphs = max_graphs
        self._graphs: dict[tuple[int, int], _Graph] = {}

    def _step(self, g: _Graph) -> None:
        emb = self.lm.embed_tokens(g.ids).unsqueeze(1)
        hidden = self.lm.forward_static(emb, g.cache, g.pos, g.visible)
        g.ids.copy_(torch.argmax(self.lm.raw_logits(hidden), dim=-1))

    def _get(self, batch: int, max_len: int) -> _Graph:
        key = (batch, max_len)
        if key in self._graphs:
            return self._graphs[key]
        dev = self.lm.device
        g = _Graph(
            None,
            self.lm.new_cache(batch, max_len, zeros=True),
            torch.zeros(batch, dtype=torch.long, device=dev),
            torch.zeros(1, dtype=torch.long, device=dev),
            torch.zeros(max_len, dtype=torch.bool, device=dev),
        )
        if self.use_graphs:
            g.visible[0] = True
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(2):  # warm up kernels and the allocator outside the capture
                    self._step(g)
            torch.cuda.current_stream().wait_stream(stream)
            g.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g.graph), torch.inference_mode():
                self._step(g)
        if len(self._graphs) >= self.max_graphs:
            self._graphs.pop(next(iter(self._graphs)))
        self._graphs[key] = g
        return g

    @torch.inference_mode()
    def __call__(self, prefix: torch.Tensor, max_tokens: int, stop: StopRule) -> list[list[int]]:
        n_real = prefix.shape[0]
        bucket = 1 << (n_real - 1).bit_length()  # pad to a power of two: few graphs to keep
        if bucket != n_real:
            prefix = torch.cat((prefix, prefix.new_zeros(bucket - n_real, *prefix.shape[1:])))
        return self._run(prefix, max_tokens, stop)[:n_real]

    def _run(self, prefix: torch.Tensor, max_tokens: int, stop: StopRule) -> list[list[int]]:
        b, p, _ = prefix.shape
        g = self._get(b, p + max_tokens)
        g.cache.length = 0
        hidden = self.lm.forward(prefix, g.cache)  # the prefix, eagerly, into the static cache
        g.visible.zero_()
        g.visible[:p] = True
        out = torch.empty(b, max_tokens, dtype=torch.long, device=prefix.device)
        done = torch.zeros(b, dtype=torch.bool, device=prefix.device)
        lengths = torch.full((b,), max_tokens, dtype=torch.long, device=prefix.device)
        g.ids.copy_(torch.argmax(self.lm.raw_logits(hidden), dim=-1))
        n = max_tokens
        for step in range(max_tokens):
            out[:, step] = g.ids
            hit = stop.hits(g.ids, step) & ~done
            lengths = torch.where(hit, step + 1, lengths)
            done |= hit
            if step + 1 == max_tokens or (
                step % CHECK_EVERY == CHECK_EVERY - 1 and bool(done.all())
            ):
                n = step + 1
                break
            g.pos.fill_(p + step)
            g.visible[p + step] = True
            if g.graph is not None:
                g.graph.replay()
            else:
                self._step(g)
        rows = out[:, :n].tolist()
        return [r[:k] for r, k in zip(rows, lengths.clamp(max=n).tolist(), strict=True)]
