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
import dataclasses
import hashlib
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from captioner.errors import AltCapError, CheckpointMismatch, ModelError
from captioner.images import CLIP_MEAN, CLIP_STD, DEFAULT_MAX_PIXELS, load_image, preprocess
from captioner.train.data import FORMATS, Item, detect_format, read_dataset
from captioner.train.parts import altcap_model, first_line, from_pretrained
from captioner.train.store import INDEX_NAME, EmbeddingStore, EncoderInfo, StoreError, weights_sha

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 4096
HINT = (  # after why an image encoder cannot be loaded: what to give instead
    "give a CLIP vision model (Hub id, or a directory with config.json and weights when "
    "offline) with --image-encoder, or an AltCap model with --model"
)


class DatasetMismatch(StoreError):
    """OUT_DIR holds embeddings of another data set (or another selection of it)."""

    code = "dataset_mismatch"


class ImageMissing(AltCapError):
    code = "image_missing"


# --- the image encoder ------------------------------------------------------------------


@dataclass
class ImageEncoder:
    """A CLIP vision tower with the preprocessing it was trained with."""

    vision: torch.nn.Module  # CLIPVisionModelWithProjection, eval mode, on device/dtype
    info: EncoderInfo
    device: torch.device
    dtype: torch.dtype

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB images → (B, 3, S, S) float32 pixels (CPU)."""
        i = self.info
        return preprocess(images, image_size=i.image_size, mean=i.image_mean, std=i.image_std)

    @torch.inference_mode()
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → (B, clip_dim) float32 on the CPU."""
        out = self.vision(pixel_values=pixels.to(self.device, self.dtype)).image_embeds
        return out.float().cpu()


def load_encoder(
    model: str | None = None,
    image_encoder: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    hint: str = HINT,
) -> ImageEncoder:
    """The vision tower of a ClipCap model (a name, directory or Hub id), or a CLIP vision
    model (``CLIPVisionModelWithProjection``: Hub id or directory) with the preprocessing from
    its ``preprocessor_config.json``. Neither given: the default model's encoder.

    An AltCap model given as ``image_encoder`` loads as its vision tower. ``hint`` ends the
    message of an image encoder that cannot be loaded: what to give instead."""
    from captioner.pipeline import pick_device, pick_dtype

    if model is not None and image_encoder is not None:
        raise ModelError("give either a model or an image encoder, not both")
    dev = pick_device(device)  # a bad device fails before any loading
    dt = pick_dtype(dtype, dev)
    if image_encoder is not None and altcap_model(image_encoder) is None:
        vision, info = _load_clip_vision(image_encoder, hint)
    else:  # an AltCap model given as the image encoder loads as its vision tower
        model = model if image_encoder is None else image_encoder
        vision, info = _load_model_vision(model)
    return ImageEncoder(vision.to(dev, dt).eval(), info, dev, dt)


def _load_model_vision(name: str | None):
    from safetensors import SafetensorError, safe_open
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from captioner.model.checkpoints import WEIGHTS_NAME, load_config
    from captioner.model.pretrained import DEFAULT_MODEL, resolve

    model_dir = resolve(name or DEFAULT_MODEL)
    config = load_config(model_dir)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**config.vision_config))
    path = Path(model_dir) / WEIGHTS_NAME
    try:  # only the vision tower's tensors: GPT-2 is not needed to embed
        with safe_open(str(path), framework="pt") as f:
            names = [k for k in f.keys() if k.startswith("vision.")]  # noqa: SIM118
            state = {k.removeprefix("vision."): f.get_tensor(k) for k in names}
    except (OSError, SafetensorError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    try:
        vision.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointMismatch(
            f"the vision tower in {path} does not fit its config: {first_line(e)}"
        ) from None
    info = EncoderInfo.from_config(config)
    return vision, dataclasses.replace(info, weights_sha=weights_sha(vision))


def _load_clip_vision(source: str, hint: str):
    from transformers import CLIPVisionModelWithProjection
    from transformers.utils import cached_file

    vision = from_pretrained(CLIPVisionModelWithProjection, source, "image encoder", hint)
    size, mean, std = int(vision.config.image_size), CLIP_MEAN, CLIP_STD
    try:
        proc = cached_file(
            source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
        )
    except OSError:
        proc = None
    if proc:
        size, mean, std = _read_preprocessing(Path(proc), size)
    else:
        log.warning("%s has no preprocessor_config.json; using CLIP's defaults", source)
    info = EncoderInfo.from_vision(
        vision, image_encoder=str(source), image_size=size, image_mean=mean, image_std=std
    )
    return vision, info


def _read_preprocessing(path: Path, model_size: int) -> tuple[int, list[float], list[float]]:
    """(image size, mean, std) from a CLIPImageProcessor config: the one AltCap's own
    ``preprocess`` reproduces (shortest side = crop size, centre crop)."""
    try:
        d = json.loads(path.read_text())
        crop = d.get("crop_size", model_size)
        crop = int(crop["height"] if isinstance(crop, dict) else crop)
        resize = d.get("size", crop)
        resize = int(resize.get("shortest_edge", crop) if isinstance(resize, dict) else resize)
        mean = [float(x) for x in d.get("image_mean", CLIP_MEAN)]
        std = [float(x) for x in d.get("image_std", CLIP_STD)]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ModelError(f"cannot read the preprocessing in {path}: {e}") from None
    if resize != crop or crop != model_size or len(mean) != 3 or len(std) != 3:
        raise ModelError(
            f"{path}: unsupported preprocessing (resize {resize}, crop {crop}, model input "
            f"{model_size}); AltCap resizes the shortest side to the crop size"
        )
    return crop, mean, std


# --- decoding images in DataLoader workers ----------------------------------------------


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


def register(subparsers: Any) -> None:
    """Add ``embed`` to ``python -m captioner``."""
    p = subparsers.add_parser(
        "embed",
        help="CLIP-embed a captioned image set into a resumable store (for `train`)",
        description="CLIP image embeddings of a captioned data set, written in shards to OUT_DIR "
        "for `train`. Run the same command again to resume an interrupted run; bad or missing "
        "images are skipped and counted.",
    )
    p.add_argument(
        "dataset",
        metavar="DATASET",
        help="COCO captions_*.json, Karpathy dataset_coco.json, a .csv/.tsv or .jsonl of "
        "(image, caption) rows, or a folder of images with same-named .txt captions",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="the embedding store to create or resume")
    p.add_argument(
        "--format", choices=FORMATS, default=None, help="data set format (default: detected)"
    )
    p.add_argument(
        "--image-root",
        metavar="DIR",
        default=None,
        help="where relative image paths start (default: the annotation file's folder; COCO "
        "also tries images/ and ../<train2014|val2014...>/)",
    )
    p.add_argument(
        "--split",
        default=None,
        help="Karpathy split: train (includes restval), val, test or restval (default: all)",
    )
    p.add_argument(
        "--image-column", metavar="NAME", default="image", help="CSV/JSONL image path column"
    )
    p.add_argument(
        "--caption-column", metavar="NAME", default="caption", help="CSV/JSONL caption column"
    )
    enc = p.add_mutually_exclusive_group()
    enc.add_argument(
        "--model",
        metavar="NAME|DIR",
        default=None,
        help="use the image encoder of this ClipCap model (name, directory or Hub id; "
        "default: clipcap-coco, i.e. openai/clip-vit-base-patch32)",
    )
    enc.add_argument(
        "--image-encoder",
        metavar="ID|DIR",
        default=None,
        help="a CLIP vision model (Hub id or directory) with its preprocessor_config.json",
    )
    p.add_argument(
        "--batch-size", metavar="N", type=int, default=64, help="images per forward pass (64)"
    )
    p.add_argument(
        "--shard-size",
        metavar="N",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help=f"images per shard file, the unit of resumption ({DEFAULT_SHARD_SIZE}; a resumed "
        "store keeps its own)",
    )
    p.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=0,
        help="DataLoader processes decoding images (default 0: in the main process)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="encoder precision (default: bfloat16 on GPU, float32 on CPU); stored as float32",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


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
