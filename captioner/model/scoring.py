"""CLIP image-text scores: token ids for the text tower, cosines, and the confidence rule.

A caption is scored by the cosine between CLIP's embedding of the image (the one the prefix
was made from) and CLIP's embedding of the text. The cosine is mapped to a confidence in
(0, 1) by a logistic whose two numbers live in the model's config.json:

    confidence = sigmoid(confidence_slope * (cosine - confidence_center))

The defaults (centre 0.2, slope 10) are the logistic tangent to CLIPScore at its midpoint:
CLIPScore (Hessel et al. 2021) is 2.5 * max(cosine, 0), which is 0.5 at cosine 0.2 with a
slope of 2.5, and sigmoid's slope at its centre is slope / 4. Over the cosines that CLIP
ViT-B/32 gives captions (about 0.1 to 0.35) the two agree within 0.03, but the logistic
never saturates, so confidences stay ordered. ``fit_confidence`` fits both numbers to a
model's own right and wrong captions (logistic regression on the cosine). docs/confidence.md
explains the rule for users.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from captioner.config import ClipCapConfig


def clip_token_ids(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> ``(ids, mask)``, each (T, L), for CLIP's text tower.

    CLIP pools its text embedding at the end-of-text token, so every row ends with one:
    CLIP's own tokenizer adds it (after its start token), a tokenizer that does not (the tiny
    models' GPT-2-style one) gets it appended here. Texts longer than ``max_length`` tokens
    (the tower's positions) are cut, keeping the end-of-text token. Rows are padded with it
    too; CLIP's causal attention never lets the padding reach the pooled position.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the CLIP tokenizer has no end-of-text token")
    rows = []
    # Lower-cased, as CLIP's own tokenizer does to every text: a tokenizer that does not
    # (the tiny models') would otherwise score "A red circle." and "a red circle." apart.
    lowered = [t.lower() for t in texts]
    for ids in tokenizer(lowered, add_special_tokens=True)["input_ids"]:
        if not ids or ids[-1] != eos:
            ids = [*ids, eos]
        if len(ids) > max_length:
            ids = [*ids[: max_length - 1], eos]
        rows.append(ids)
    width = max(len(r) for r in rows) if rows else 1
    ids = torch.full((len(rows), width), eos, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def cosine(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of (N, D) and (N, D) embeddings -> (N,), float32."""
    return F.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)


def confidence(cosines: torch.Tensor, config: ClipCapConfig) -> torch.Tensor:
    """The documented confidence in (0, 1) of each cosine (see the module docstring)."""
    return torch.sigmoid(config.confidence_slope * (cosines.float() - config.confidence_center))


def log_confidence(cosines: torch.Tensor, config: ClipCapConfig) -> torch.Tensor:
    """``log(confidence)`` of each cosine, computed stably (never -inf for a finite cosine)."""
    return F.logsigmoid(config.confidence_slope * (cosines.float() - config.confidence_center))


def rerank_scores(
    logprobs: torch.Tensor,
    cosines: torch.Tensor | None,
    config: ClipCapConfig,
    clip_weight: float,
) -> torch.Tensor:
    """The reranking score of candidate captions: higher is better.

    ``score = logprob + clip_weight * log(confidence)``: the language model's mean
    log-probability per token plus CLIP's calibrated log-probability that the caption is right
    (``confidence`` above), both in nats. Using the calibrated confidence rather than the raw
    cosine puts CLIP on the same footing in every model (cosines of ViT-B/32 sit in 0.1-0.35,
    the demo model's near 0.7), and log-sigmoid saturates: among captions CLIP believes, the
    language model decides; a caption CLIP doubts pays about ``slope * (center - cosine)``.
    Without a text tower (``cosines`` None) the score is the log-probability alone.
    """
    logprobs = logprobs.float()
    if cosines is None:
        return logprobs
    return logprobs + clip_weight * log_confidence(cosines, config)


def fit_confidence(
    right: torch.Tensor, wrong: torch.Tensor, steps: int = 100
) -> tuple[float, float]:
    """``(center, slope)`` of the logistic that best tells ``right`` from ``wrong`` cosines.

    Logistic regression on the cosine alone (the two classes weighted equally, a small ridge
    on the slope so that separable data still give a finite one), solved by Newton's method.
    Calibration uses it to fill config.json."""
    x = torch.cat((right, wrong)).double()
    y = torch.cat((torch.ones_like(right), torch.zeros_like(wrong))).double()
    w = torch.cat(
        (torch.full_like(right, 0.5 / len(right)), torch.full_like(wrong, 0.5 / len(wrong)))
    )
    w, ridge = w.double(), 1e-4
    ab = torch.zeros(2, dtype=torch.float64)  # confidence = sigmoid(ab[0] * cosine + ab[1])
    for _ in range(steps):
        p = torch.sigmoid(ab[0] * x + ab[1])
        g = torch.stack(((w * (p - y) * x).sum() + 2 * ridge * ab[0], (w * (p - y)).sum()))
        r = w * p * (1 - p)
        h = torch.stack(
            (
                torch.stack(((r * x * x).sum() + 2 * ridge, (r * x).sum())),
                torch.stack(((r * x).sum(), r.sum())),
            )
        )
        step = torch.linalg.solve(h, g)
        ab = ab - step
        if step.abs().max() < 1e-10:
            break
    slope = max(float(ab[0]), 1e-3)  # never inverted, even on data that say so
    return float(-ab[1] / slope), slope
