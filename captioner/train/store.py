"""The embedding store: CLIP embeddings of a captioned image set, in shards, with an index.

The ``embed`` step writes it and ``train`` reads it. A store is a directory::

    embeddings.json          the index: format, encoder, dataset fingerprint, shards, skips
    shard-00000.safetensors  "embeds": float32 (rows, clip_dim); metadata "records": JSON list
    shard-00001.safetensors  ...

Each shard covers a fixed run of the input items (``items`` of them, skipped ones included),
so an interrupted ``embed`` resumes after the last complete shard. Every shard and the index
are written atomically (temp file + rename): a crash leaves the previous state, never a torn
file. The encoder (vision config hash and preprocessing) is recorded so training refuses
embeddings made by another CLIP model. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from captioner.config import ClipCapConfig
from captioner.errors import AltCapError
from captioner.model.checkpoints import atomic_write

FORMAT = "altcap-embeddings"
VERSION = 1
INDEX_NAME = "embeddings.json"


class StoreError(AltCapError):
    """An embedding store that is missing, damaged, or does not fit the request."""

    code = "invalid_embeddings"


class EncoderMismatch(StoreError):
    code = "encoder_mismatch"


@dataclass(frozen=True)
class EncoderInfo:
    """What made the embeddings: two stores (or a store and a model) mix only when equal."""

    image_encoder: str  # provenance (hub id or path); not compared
    vision_sha: str  # sha256 of the canonical vision config JSON
    clip_dim: int
    image_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    # sha256 of the vision weights: two CLIP models of one architecture (OpenAI vs LAION
    # ViT-B/32) differ only here. "" = unknown; compared only when both sides know it.
    weights_sha: str = ""

    @classmethod
    def from_config(cls, config: ClipCapConfig) -> EncoderInfo:
        return cls(
            image_encoder=config.image_encoder,
            vision_sha=vision_sha(config.vision_config),
            clip_dim=config.clip_dim,
            image_size=int(config.image_size),
            image_mean=tuple(float(x) for x in config.image_mean),
            image_std=tuple(float(x) for x in config.image_std),
        )

    @classmethod
    def from_vision(
        cls,
        vision: torch.nn.Module,
        *,
        image_encoder: str,
        image_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
    ) -> EncoderInfo:
        """The encoder info of a loaded ``CLIPVisionModelWithProjection``, weights included."""
        return cls(
            image_encoder=image_encoder,
            vision_sha=vision_sha(vision.config.to_dict()),
            clip_dim=int(vision.config.projection_dim),
            image_size=int(image_size),
            image_mean=tuple(float(x) for x in image_mean),
            image_std=tuple(float(x) for x in image_std),
            weights_sha=weights_sha(vision),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderInfo:
        return cls(
            image_encoder=str(d["image_encoder"]),
            vision_sha=str(d["vision_sha"]),
            clip_dim=int(d["clip_dim"]),
            image_size=int(d["image_size"]),
            image_mean=tuple(float(x) for x in d["image_mean"]),
            image_std=tuple(float(x) for x in d["image_std"]),
            weights_sha=str(d.get("weights_sha", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        return d

    def differences(self, other: EncoderInfo) -> list[str]:
        """Human-readable reasons why embeddings from ``other`` cannot be mixed with these."""
        out = []
        for name in ("vision_sha", "clip_dim", "image_size", "image_mean", "image_std"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name}: {a} vs {b}")
        if self.weights_sha and other.weights_sha and self.weights_sha != other.weights_sha:
            out.append("weights_sha: the vision weights differ")
        return out

    def check(self, other: EncoderInfo, what: str) -> None:
        diff = self.differences(other)
        if diff:
            raise EncoderMismatch(
                f"these embeddings were made by {self.image_encoder!r}, not by the image encoder "
                f"of {what} ({other.image_encoder!r}): " + "; ".join(diff)
            )


# The CLIPVisionConfig fields that change what the tower computes. Provenance, dropout and
# initialisation fields are left out, and missing ones take their defaults: a tiny config that
# lists only its overrides and the full ``to_dict()`` of the same model hash the same.
_VISION_ARCH_KEYS = (
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
)


def vision_sha(vision_config: dict[str, Any]) -> str:
    """A stable fingerprint of a vision architecture (defaults filled in, provenance ignored)."""
    from transformers import CLIPVisionConfig

    defaults = CLIPVisionConfig().to_dict()
    canon = {k: vision_config.get(k, defaults.get(k)) for k in _VISION_ARCH_KEYS}
    return hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode()).hexdigest()


def weights_sha(module: torch.nn.Module) -> str:
    """sha256 over a module's tensors (names, shapes, float32 values): the same weights give the
    same hash whatever dtype or device they are loaded in."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class Shard:
    file: str  # name inside the store directory
    items: int  # input items this shard covers (embedded + skipped)
    rows: int  # embeddings it holds


@dataclass
class StoreIndex:
    encoder: EncoderInfo
    dataset: dict[str, Any]  # where the items came from + a fingerprint, for safe resume
    shard_items: int  # input items per shard (the last may hold fewer)
    shards: list[Shard] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"image", "code", "message"}
    complete: bool = False  # every input item is covered

    @property
    def items_done(self) -> int:
        return sum(s.items for s in self.shards)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "encoder": self.encoder.to_dict(),
            "dataset": self.dataset,
            "shard_items": self.shard_items,
            "shards": [asdict(s) for s in self.shards],
            "skipped": self.skipped,
            "complete": self.complete,
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreIndex:
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise StoreError(f"not an AltCap embedding store (format {d.get('format')!r})")
        return cls(
            encoder=EncoderInfo.from_dict(d["encoder"]),
            dataset=dict(d.get("dataset") or {}),
            shard_items=int(d["shard_items"]),
            shards=[Shard(**s) for s in d.get("shards", [])],
            skipped=list(d.get("skipped", [])),
            complete=bool(d.get("complete", False)),
        )


class EmbeddingStore:
    """Read and append shards. ``create`` / ``open`` build one; ``load`` returns everything."""

    def __init__(self, path: str | os.PathLike, index: StoreIndex) -> None:
        self.path = Path(path)
        self.index = index

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        encoder: EncoderInfo,
        dataset: dict[str, Any],
        shard_items: int = 4096,
    ) -> EmbeddingStore:
        """A new, empty store (the directory may exist but must not hold a store)."""
        p = Path(path)
        if (p / INDEX_NAME).exists():
            raise StoreError(f"{p} already holds an embedding store (use it, or pick another)")
        if shard_items < 1:
            raise StoreError("shard_items must be >= 1")
        p.mkdir(parents=True, exist_ok=True)
        store = cls(p, StoreIndex(encoder, dict(dataset), int(shard_items)))
        store._write_index()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> EmbeddingStore:
        p = Path(path)
        try:
            d = json.loads((p / INDEX_NAME).read_text())
        except FileNotFoundError:
            raise StoreError(f"no embedding store at {p} (run `embed` first)") from None
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read {p / INDEX_NAME}: {e}") from None
        if not isinstance(d, dict):
            raise StoreError(f"damaged index {p / INDEX_NAME}: not a JSON object")
        try:
            return cls(p, StoreIndex.from_dict(d))
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"damaged index {p / INDEX_NAME}: {e}") from None

    @property
    def encoder(self) -> EncoderInfo:
        return self.index.encoder

    def _write_index(self) -> None:
        text = json.dumps(self.index.to_dict(), indent=1)
        atomic_write(self.path / INDEX_NAME, lambda tmp: Path(tmp).write_text(text))

    def append_shard(
        self,
        embeds: torch.Tensor,
        records: Sequence[dict[str, Any]],
        skipped: Sequence[dict[str, str]] = (),
        *,
        items: int,
    ) -> Shard:
        """Write the next shard (``items`` input items: ``len(records)`` embedded, the rest
        skipped), then the index. A crash between the two leaves an orphan shard file that the
        next append overwrites."""
        if self.index.complete:
            raise StoreError(f"{self.path} is complete; nothing more can be appended")
        if embeds.ndim != 2 or embeds.shape[0] != len(records):
            raise StoreError("embeds must be (rows, clip_dim) with one record per row")
        if len(records) and embeds.shape[1] != self.encoder.clip_dim:
            raise StoreError(
                f"embeds are {embeds.shape[1]}-d, the store holds {self.encoder.clip_dim}-d"
            )
        if len(records) + len(skipped) != items:
            raise StoreError("items must equal embedded + skipped")
        shard = Shard(f"shard-{len(self.index.shards):05d}.safetensors", int(items), len(records))
        tensors = {"embeds": embeds.detach().to("cpu", torch.float32).contiguous()}
        meta = {"records": json.dumps(list(records))}
        atomic_write(self.path / shard.file, lambda tmp: save_file(tensors, tmp, metadata=meta))
        self.index.shards.append(shard)
        self.index.skipped.extend(dict(s) for s in skipped)
        self._write_index()
        return shard

    def mark_complete(self) -> None:
        self.index.complete = True
        self._write_index()

    def read_shard(self, shard: Shard) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        path = self.path / shard.file
        try:
            with safe_open(str(path), framework="pt") as f:
                embeds = f.get_tensor("embeds")
                records = json.loads((f.metadata() or {})["records"])
        except (OSError, KeyError, ValueError, Exception) as e:  # safetensors raises its own
            raise StoreError(f"cannot read shard {path}: {e}") from None
        if embeds.ndim != 2 or embeds.shape[1] != self.encoder.clip_dim:
            raise StoreError(
                f"shard {path} holds {list(embeds.shape)} embeddings, not (rows, "
                f"{self.encoder.clip_dim})"
            )
        if embeds.shape[0] != shard.rows or len(records) != shard.rows:
            raise StoreError(
                f"shard {path} holds {embeds.shape[0]} rows, the index says {shard.rows}"
            )
        return embeds, records

    def load(self, *, require_complete: bool = True) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """All embeddings (rows, clip_dim) float32 and one record per row
        (``{"image": str, "captions": [str, ...]}`` plus whatever the reader added)."""
        if require_complete and not self.index.complete:
            raise StoreError(
                f"{self.path} is incomplete ({self.index.items_done} items embedded): "
                "run `embed` again to finish it"
            )
        parts, records = [], []
        for shard in self.index.shards:
            e, r = self.read_shard(shard)
            parts.append(e)
            records.extend(r)
        dim = self.encoder.clip_dim
        embeds = torch.cat(parts) if parts else torch.empty(0, dim)
        return embeds, records
