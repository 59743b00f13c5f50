"""Training data: captions tokenised once, split by image, batched with ignored padding.

A caption set is one item per caption, the image's CLIP embedding beside the caption's token
ids; the sampler shuffles by (seed, epoch) and can start an epoch part-way, which is what
makes ``--resume`` continue with the very batches the interrupted run would have seen.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler
from transformers import PreTrainedTokenizerBase

from captioner.errors import ModelError

IGNORE = -100  # label of positions the loss skips (never 0: that is a real token id)


class CaptionSet(Dataset):
    """One item per caption: (the image's CLIP embedding, the caption's token ids).

    The token ids live in one flat tensor with offsets, not a Python list of small tensors:
    COCO's 566k captions then take ~30 MB, and forked loader workers share them instead of
    copying pages that reference counting touches."""

    def __init__(self, embeds: torch.Tensor, rows: Sequence[int], tokens: Sequence[torch.Tensor]):
        self.embeds = embeds  # (N_images, clip_dim) float32
        self.rows = torch.as_tensor(list(rows), dtype=torch.long)  # image row of each caption
        lengths = torch.tensor([len(t) for t in tokens], dtype=torch.long)
        self.offsets = torch.zeros(len(tokens) + 1, dtype=torch.long)
        self.offsets[1:] = lengths.cumsum(0)
        self.flat = torch.cat(list(tokens)) if len(tokens) else torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.offsets[i].item(), self.offsets[i + 1].item()
        return self.embeds[self.rows[i]], self.flat[start:end]


class Collate:
    """Right-pads a batch. Padding gets label -100 so the loss never scores it; causal
    attention with right padding means real tokens never see the pads either."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        b, n = len(items), max(len(t) for _, t in items)
        ids = torch.full((b, n), self.pad_id, dtype=torch.long)
        labels = torch.full((b, n), IGNORE, dtype=torch.long)
        mask = torch.zeros((b, n), dtype=torch.long)
        for i, (_, t) in enumerate(items):
            ids[i, : len(t)] = t
            labels[i, : len(t)] = t
            mask[i, : len(t)] = 1
        embeds = torch.stack([e for e, _ in items])  # (B, clip_dim)
        return {"embeds": embeds, "input_ids": ids, "labels": labels, "attention_mask": mask}


def tokenize_captions(
    tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], max_length: int
) -> list[torch.Tensor]:
    """Token ids of each caption + end-of-text, cut at ``max_length`` (a cut caption loses its
    end-of-text rather than teaching the model to stop mid-sentence)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelError("the tokenizer has no end-of-text token; captions could never end")
    out = []
    chunk = 4096
    for start in range(0, len(captions), chunk):
        batch = tokenizer(list(captions[start : start + chunk]), add_special_tokens=False)
        for ids in batch["input_ids"]:
            out.append(torch.tensor([*ids, eos][:max_length], dtype=torch.long))
    return out


def split_by_image(
    records: Sequence[dict[str, Any]], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Row indices for training and validation. Held out by image (all captions of an image
    go to the same side), so the validation loss measures images the model never saw."""
    images = sorted({str(r["image"]) for r in records})
    n_val = round(len(images) * val_fraction)
    if val_fraction > 0 and len(images) > 1:
        n_val = min(max(n_val, 1), len(images) - 1)
    random.Random(seed).shuffle(images)
    held = set(images[:n_val])
    train = [i for i, r in enumerate(records) if str(r["image"]) not in held]
    val = [i for i, r in enumerate(records) if str(r["image"]) in held]
    return train, val


def caption_set(
    embeds: torch.Tensor,
    records: Sequence[dict[str, Any]],
    rows: Sequence[int],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
) -> CaptionSet:
    """The captions of ``rows`` (blank ones dropped), tokenised, beside their image's row."""
    pairs = [
        (r, c.strip())
        for r in rows
        for c in records[r].get("captions", [])
        if isinstance(c, str) and c.strip()
    ]
    tokens = tokenize_captions(tokenizer, [c for _, c in pairs], max_length)
    return CaptionSet(embeds, [r for r, _ in pairs], tokens)


class ResumableSampler(Sampler[int]):
    """A DistributedSampler (shuffled by seed + epoch, one shard per rank) that can start an
    epoch part-way: the indices a resumed run skips are those the interrupted run consumed."""

    def __init__(self, inner: DistributedSampler) -> None:
        self.inner = inner
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)
