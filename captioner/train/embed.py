"""The ``embed`` step: CLIP image embeddings of a captioned data set, written to a store.

Training a ClipCap prefix never updates the image encoder, so every image is encoded once,
here, and training reads 512 floats per image instead of decoding JPEGs every epoch. The run
is long on COCO (120k images), so it writes shards as it goes and picks up after the last
complete shard when started again; a bad or missing image is recorded and skipped, never
fatal. The store remembers the encoder (architecture, weights, preprocessing) and a
fingerprint of the data set, so a resumed run cannot mix two data sets or two encoders.

    python -m captioner embed DATASET OUT_DIR [--model NAME|DIR | --image-encoder ID|DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from captioner.errors import AltCapError
from captioner.images import DEFAULT_MAX_PIXELS, load_image
from captioner.model.processing import preprocess
from captioner.train.data import Item, detect_format, read_dataset
from captioner.train.encoder import ImageEncoder, load_encoder
from captioner.train.options import DEFAULT_SHARD_SIZE
from captioner.train.store import INDEX_NAME, EmbeddingStore, EncoderInfo, StoreError

log = logging.getLogger(__name__)


class DatasetMismatch(StoreError):
    """OUT_DIR holds embeddings of another data set (or another selection of it)."""

    code = "dataset_mismatch"


class ImageMissing(AltCapError):
    code = "image_missing"


class _ImageFiles(Dataset):
    """Decode + preprocess one image file; a failure comes back as a record, not an error."""

    def __init__(self, paths: Sequence[str], info: EncoderInfo, max_pixels: int) -> None:
        self.paths, self.info, self.max_pixels = list(paths), info, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, dict[str, str] | None]:
        path = self.paths[i]
        try:
            if not os.path.isfile(path):
                raise ImageMissing(f"no image file at {path}")
            im = load_image(path, max_pixels=self.max_pixels)
            info = self.info
            pixels = preprocess(
                [im], image_size=info.image_size, mean=info.image_mean, std=info.image_std
            )
            return i, pixels[0], None
        except AltCapError as e:
            return i, None, {"image": path, "code": e.code, "message": e.message}
        except Exception as e:  # whatever else a hostile file does, it costs one image
            return i, None, {"image": path, "code": "unreadable_image", "message": repr(e)}


def _as_list(batch: list) -> list:
    return batch


# --- the step ---------------------------------------------------------------------------


def dataset_fingerprint(items: Sequence[Item]) -> str:
    """sha256 of the items in order (ids, image paths, captions): same data, same hash."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.id, it.image, it.captions]).encode())
        h.update(b"\n")
    return h.hexdigest()


def embed_dataset(
    items: Sequence[Item],
    encoder: ImageEncoder,
    out_dir: str | os.PathLike,
    *,
    dataset_info: dict[str, Any] | None = None,
    batch_size: int = 64,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> EmbeddingStore:
    """Embed ``items`` into the store at ``out_dir``, creating it or resuming it.

    A store already there must hold the same items (fingerprint) made by the same encoder, or
    this raises; a complete one is returned as it is. ``dataset_info`` (where the items came
    from) is recorded alongside the fingerprint. Returns the completed store.
    """
    if batch_size < 1 or shard_size < 1 or workers < 0:
        raise StoreError("batch size and shard size must be >= 1, workers >= 0")
    if not items:
        raise StoreError("there are no items to embed")
    dataset = {
        **(dataset_info or {}),
        "items": len(items),
        "fingerprint": dataset_fingerprint(items),
        "dtype": str(encoder.dtype).removeprefix("torch."),
    }
    store = _open_or_create(Path(out_dir), encoder.info, dataset, shard_size)
    if store.index.complete:
        log.info("%s is already complete", out_dir)
        return store
    start = store.index.items_done
    shard_items = store.index.shard_items
    files = _ImageFiles([it.image for it in items[start:]], encoder.info, max_pixels)
    loader = DataLoader(
        files, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_as_list
    )
    # (item index, embedding or None, skip record or None), in item order
    pending: list[tuple[int, torch.Tensor | None, dict[str, str] | None]] = []
    bar = tqdm(total=len(items), initial=start, unit="img", desc="embed", disable=not progress)
    try:
        for batch in loader:
            good = [px for _, px, _ in batch if px is not None]
            embeds = iter(encoder.embed(torch.stack(good)) if good else [])
            for i, px, skip in batch:
                pending.append((start + i, next(embeds) if px is not None else None, skip))
            while len(pending) >= shard_items:
                _write_shard(store, items, pending[:shard_items])
                pending = pending[shard_items:]
            bar.update(len(batch))
        if pending:
            _write_shard(store, items, pending)
    finally:
        bar.close()
    store.mark_complete()
    return store


def _open_or_create(
    out: Path, info: EncoderInfo, dataset: dict[str, Any], shard_size: int
) -> EmbeddingStore:
    if not (out / INDEX_NAME).exists():
        return EmbeddingStore.create(out, info, dataset, shard_items=shard_size)
    store = EmbeddingStore.open(out)
    store.encoder.check(info, "this run")
    theirs = store.index.dataset
    if theirs.get("fingerprint") != dataset["fingerprint"]:
        raise DatasetMismatch(
            f"{out} holds embeddings of another data set ({theirs.get('items')} items from "
            f"{theirs.get('source', '?')}); embed this one into a new folder"
        )
    if store.index.items_done > dataset["items"]:
        raise DatasetMismatch(f"{out} covers more items than the data set has")
    return store


def _write_shard(
    store: EmbeddingStore,
    items: Sequence[Item],
    entries: Sequence[tuple[int, torch.Tensor | None, dict[str, str] | None]],
) -> None:
    rows = [(i, e) for i, e, _ in entries if e is not None]
    embeds = torch.stack([e for _, e in rows]) if rows else torch.empty(0, store.encoder.clip_dim)
    records = [items[i].to_record() for i, _ in rows]
    skipped = [s for _, e, s in entries if e is None]
    store.append_shard(embeds, records, skipped, items=len(entries))


# --- CLI --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if args.shard_size < 1 or args.workers < 0:
        raise StoreError("--shard-size must be >= 1 and --workers >= 0")
    fmt = args.format or detect_format(args.dataset)
    items = read_dataset(
        args.dataset,
        fmt,
        image_root=args.image_root,
        split=args.split,
        image_column=args.image_column,
        caption_column=args.caption_column,
    )
    encoder = load_encoder(args.model, args.image_encoder, device=args.device, dtype=args.dtype)
    info = {
        "source": str(Path(args.dataset).resolve()),
        "format": fmt,
        "split": args.split,
        "image_root": args.image_root,
    }
    try:
        store = embed_dataset(
            items,
            encoder,
            args.out_dir,
            dataset_info=info,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            workers=args.workers,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(f"interrupted: run the same command again to resume {args.out_dir}", file=sys.stderr)
        return 130
    _summary(store, len(items))
    return 0


def _summary(store: EmbeddingStore, n: int) -> None:
    skipped = store.index.skipped
    for s in skipped[:10]:
        print(f"skipped {s['image']}: {s['code']}: {s['message']}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"... and {len(skipped) - 10} more (see {store.path / INDEX_NAME})", file=sys.stderr)
    codes = Counter(s["code"] for s in skipped)
    why = ", ".join(f"{c} {code}" for code, c in codes.most_common())
    print(
        f"embedded {store.index.rows} of {n} images into {store.path} "
        f"({len(skipped)} skipped{': ' + why if why else ''})"
    )
