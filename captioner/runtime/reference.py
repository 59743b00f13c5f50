"""The reference ClipCap decoding loops, kept as a correctness oracle and benchmark baseline.

These follow the algorithm of the ClipCap authors' inference notebook: one image at a time,
GPT-2 re-run over the whole sequence (prefix + every token so far) at every step, no cache.
They are deliberately slow; ``decoding.py`` must produce the same tokens.
"""

from __future__ import annotations

import torch
from transformers import GPT2LMHeadModel


@torch.inference_mode()
def reference_greedy(
    lm: GPT2LMHeadModel,
    prefix: torch.Tensor,
    stop_id: int | None,
    max_tokens: int = 67,
    eos_id: int | None = None,
    min_tokens: int = 0,
) -> list[int]:
    """Greedy decoding of one prefix (1, P, C): argmax of the last position, whole sequence
    re-run each step; stops after emitting ``stop_id`` (or ``eos_id``)."""
    generated = prefix
    tokens: list[int] = []
    for _ in range(max_tokens):
        logits = lm(inputs_embeds=generated).logits[:, -1, :]
        next_token = torch.argmax(logits, -1)  # (1,)
        tokens.append(int(next_token.item()))
        generated = torch.cat((generated, lm.transformer.wte(next_token).unsqueeze(1)), dim=1)
        if len(tokens) >= min_tokens and tokens[-1] in (stop_id, eos_id):
            break
    return tokens


@torch.inference_mode()
def reference_beam(
    lm: GPT2LMHeadModel,
    prefix: torch.Tensor,
    stop_id: int | None,
    beam_size: int = 5,
    max_tokens: int = 67,
    temperature: float = 1.0,
) -> list[list[int]]:
    """ClipCap's beam search for one prefix (1, P, C); returns the beams, best first.

    Scores are summed log-probabilities divided by generated length; a stopped beam can only
    be continued by token 0 at no cost, and its length no longer grows.
    """
    tokens = None
    scores = None
    seq_lengths = torch.ones(beam_size, device=prefix.device)
    is_stopped = torch.zeros(beam_size, device=prefix.device, dtype=torch.bool)
    generated = prefix
    for _ in range(max_tokens):
        logits = lm(inputs_embeds=generated).logits[:, -1, :].float()
        logits = (logits / temperature).softmax(-1).log()
        if scores is None:
            scores, next_tokens = logits.topk(beam_size, -1)
            generated = generated.expand(beam_size, *generated.shape[1:])
            next_tokens, scores = next_tokens.permute(1, 0), scores.squeeze(0)
            tokens = next_tokens
        else:
            logits[is_stopped] = -float("inf")
            logits[is_stopped, 0] = 0
            scores_sum = scores[:, None] + logits
            seq_lengths[~is_stopped] += 1
            scores_sum_average = scores_sum / seq_lengths[:, None]
            scores_sum_average, next_tokens = scores_sum_average.view(-1).topk(beam_size, -1)
            source = torch.div(next_tokens, scores_sum.shape[1], rounding_mode="floor")
            seq_lengths = seq_lengths[source]
            next_tokens = (next_tokens % scores_sum.shape[1]).unsqueeze(1)
            tokens = torch.cat((tokens[source], next_tokens), dim=1)
            generated = generated[source]
            scores = scores_sum_average * seq_lengths
            is_stopped = is_stopped[source]
        embeds = lm.transformer.wte(next_tokens.squeeze(1)).view(generated.shape[0], 1, -1)
        generated = torch.cat((generated, embeds), dim=1)
        is_stopped = is_stopped | next_tokens.eq(stop_id).squeeze(1)
        if is_stopped.all():
            break
    scores = scores / seq_lengths
    order = scores.argsort(descending=True)
    return [tokens[i, : int(seq_lengths[i])].tolist() for i in order.tolist()]
