"""Captioned-image data sets on disk → a list of ``Item(id, image, captions)``.

Researchers arrive with COCO (the official ``captions_*.json`` or Karpathy's
``dataset_coco.json``), a CSV/JSONL exported from somewhere, or a folder of images with
same-named ``.txt`` files. Every reader returns the same small ``Item`` with the captions of an
image grouped together, so ``embed`` and ``train`` never care where the data came from.

Readers only parse the annotation files; they do not open images (a COCO-sized set would take
minutes). Missing or unreadable images are found, counted and skipped by ``embed``. A file that
cannot be parsed, or lacks the fields its format needs, raises ``DatasetError`` with a message
that names the file (and the line or entry) and what was expected.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.errors import AltCapError

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("coco", "karpathy", "csv", "jsonl", "folder")
KARPATHY_SPLITS: tuple[str, ...] = ("train", "val", "test", "restval")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif", ".bmp", ".tif", ".tiff"}
)


class DatasetError(AltCapError):
    """A data set that cannot be read: unknown format, unparsable file, missing fields."""

    code = "invalid_dataset"


@dataclass
class Item:
    """One image and all its captions."""

    id: str  # stable within the data set (COCO image id, file stem, ...)
    image: str  # path of the image file
    captions: list[str] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        """What the embedding store keeps per row."""
        return {"id": self.id, "image": self.image, "captions": list(self.captions)}


def detect_format(path: str | os.PathLike) -> str:
    """Name the format of ``path`` from what it is: a folder, its extension, or (for ``.json``)
    its top-level keys."""
    p = Path(path)
    if p.is_dir():
        return "folder"
    if not p.exists():
        raise DatasetError(f"no data set at {p}")
    ext = p.suffix.lower()
    if ext in (".csv", ".tsv"):
        return "csv"
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".json":
        doc = _load_json(p)
        if isinstance(doc, dict) and "annotations" in doc and "images" in doc:
            return "coco"
        images = doc.get("images") if isinstance(doc, dict) else None
        if isinstance(images, list) and (
            not images or (isinstance(images[0], dict) and "sentences" in images[0])
        ):
            return "karpathy"
        raise DatasetError(
            f"{p} is neither COCO captions JSON (images + annotations) nor a Karpathy split file "
            "(images[].sentences); use --format to say which reader to use"
        )
    raise DatasetError(
        f"cannot tell the format of {p} from its name; use --format ({', '.join(FORMATS)})"
    )


def read_dataset(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
) -> list[Item]:
    """Read any supported data set. ``format`` overrides detection; ``image_root`` is where
    relative image paths start (default: next to the annotation file; for COCO, see
    ``read_coco``); ``split`` selects a Karpathy split; the column names apply to CSV/JSONL."""
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise DatasetError(f"unknown data set format {fmt!r}; use one of {', '.join(FORMATS)}")
    if split is not None and fmt != "karpathy":
        raise DatasetError(f"--split selects a split of a Karpathy file; a {fmt} set has none")
    if fmt == "coco":
        items = read_coco(path, image_root)
    elif fmt == "karpathy":
        items = read_karpathy(path, image_root, split)
    elif fmt == "csv":
        items = read_csv(path, image_root, image_column=image_column, caption_column=caption_column)
    elif fmt == "jsonl":
        items = read_jsonl(
            path, image_root, image_column=image_column, caption_column=caption_column
        )
    else:
        if image_root is not None:
            raise DatasetError("--image-root does not apply to a folder data set")
        items = read_folder(path)
    if not items:
        raise DatasetError(
            f"{path} holds no captioned images" + (f" in split {split!r}" if split else "")
        )
    return items


# --- COCO -------------------------------------------------------------------------------


def read_coco(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[Item]:
    """Official COCO captions (``captions_train2014.json``): ``images[{id, file_name}]`` and
    ``annotations[{image_id, caption}]``.

    Without ``image_root`` the images are looked for in ``images/`` next to the file, in the
    folder named after it one level up (``annotations/captions_val2014.json`` →
    ``val2014/``, the layout of the official downloads), then next to the file itself.
    Images without any caption are left out.
    """
    p = _absolute(path)
    doc = _load_json(p)
    if not isinstance(doc, dict):
        raise DatasetError(f"{p}: expected a JSON object with 'images' and 'annotations'")
    images, annotations = doc.get("images"), doc.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise DatasetError(f"{p}: 'images' and 'annotations' must both be lists (COCO format)")
    names: dict[Any, str] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise DatasetError(f"{p}: images[{i}] needs an 'id' and a 'file_name'")
        names[im["id"]] = im["file_name"]
    captions: dict[Any, list[str]] = {k: [] for k in names}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
            raise DatasetError(f"{p}: annotations[{i}] needs an 'image_id' and a 'caption'")
        image_id = ann.get("image_id")
        if image_id not in captions:
            raise DatasetError(f"{p}: annotations[{i}] refers to unknown image_id {image_id!r}")
        captions[image_id].append(ann["caption"].strip())
    root = _absolute(image_root) if image_root is not None else _coco_root(p, list(names.values()))
    items = [Item(str(k), str(root / names[k]), caps) for k, caps in captions.items() if caps]
    _note_dropped(p, len(names) - len(items), "images without captions")
    return items


def _coco_root(path: Path, file_names: list[str]) -> Path:
    stem = path.stem.removeprefix("captions_")
    candidates = [path.parent / "images", path.parent.parent / stem, path.parent]
    for root in candidates:
        if file_names and (root / file_names[0]).is_file():
            return root
    return path.parent


def read_karpathy(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
) -> list[Item]:
    """Karpathy's ``dataset_coco.json`` (also ``dataset_flickr8k/30k.json``):
    ``images[{filepath?, filename, split, sentences[{raw}], cocoid?}]``.

    Image paths are ``image_root/filepath/filename`` (``image_root`` defaults to the file's
    folder). ``split`` is ``train`` (which includes ``restval``, as in the ClipCap and most
    captioning papers), ``val``, ``test``, ``restval``, or ``None`` for all.
    """
    if split is not None and split not in KARPATHY_SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(KARPATHY_SPLITS)}")
    wanted = {"train", "restval"} if split == "train" else {split}
    p = _absolute(path)
    doc = _load_json(p)
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list):
        raise DatasetError(f"{p}: expected a JSON object with an 'images' list (Karpathy format)")
    root = _absolute(image_root) if image_root is not None else p.parent
    items = []
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not isinstance(im.get("filename"), str):
            raise DatasetError(f"{p}: images[{i}] needs a 'filename'")
        sentences = im.get("sentences")
        if not isinstance(sentences, list) or not all(
            isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences
        ):
            raise DatasetError(f"{p}: images[{i}] needs 'sentences' with a 'raw' caption each")
        if split is not None and im.get("split") not in wanted:
            continue
        image_id = im.get("cocoid", im.get("imgid", im["filename"]))
        caps = [s["raw"].strip() for s in sentences if s["raw"].strip()]
        if caps:
            items.append(
                Item(str(image_id), str(root / im.get("filepath", "") / im["filename"]), caps)
            )
    return items


# --- CSV / JSONL ------------------------------------------------------------------------


def read_csv(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
) -> list[Item]:
    """A CSV (``.tsv``: tab-separated) with a header row; one (image, caption) pair a row,
    several rows per image allowed. Relative image paths start at ``image_root`` (default:
    the file's folder)."""
    p = _absolute(path)
    delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = reader.fieldnames or []
            missing = [c for c in (image_column, caption_column) if c not in header]
            if missing:
                raise DatasetError(
                    f"{p}: no column {' or '.join(map(repr, missing))} in the header "
                    f"({', '.join(header) or 'empty file'}); use --image-column / "
                    "--caption-column to name them"
                )
            pairs = [
                (reader.line_num, row.get(image_column), row.get(caption_column)) for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read {p} as CSV: {e}") from None
    root = _absolute(image_root) if image_root is not None else p.parent
    return _group(p, root, pairs)


def read_jsonl(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
) -> list[Item]:
    """JSON Lines: one object a line with an image path and a caption (a string, or a list of
    strings). Blank lines are ignored."""
    p = _absolute(path)
    pairs: list[tuple[int, Any, Any]] = []
    try:
        with p.open(encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise DatasetError(f"{p} line {n}: not valid JSON ({e})") from None
                if not isinstance(obj, dict):
                    raise DatasetError(f"{p} line {n}: expected a JSON object")
                caps = obj.get(caption_column)
                for cap in caps if isinstance(caps, list) else [caps]:
                    pairs.append((n, obj.get(image_column), cap))
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {p}: {e}") from None
    root = _absolute(image_root) if image_root is not None else p.parent
    return _group(p, root, pairs, columns=(image_column, caption_column))


def _group(
    path: Path,
    root: Path,
    pairs: Iterable[tuple[int, Any, Any]],
    columns: tuple[str, str] = ("image", "caption"),
) -> list[Item]:
    """(line, image, caption) rows → one Item per image, in order of first appearance."""
    by_image: dict[str, Item] = {}
    for line, image, caption in pairs:
        if not isinstance(image, str) or not image.strip():
            raise DatasetError(f"{path} line {line}: no image path in {columns[0]!r}")
        if not isinstance(caption, str):
            raise DatasetError(f"{path} line {line}: {columns[1]!r} must be text")
        image = image.strip()
        item = by_image.get(image)
        if item is None:
            item = by_image[image] = Item(image, str(root / image))
        if caption.strip():
            item.captions.append(caption.strip())
    items = [it for it in by_image.values() if it.captions]
    _note_dropped(path, len(by_image) - len(items), "images with only empty captions")
    return items


# --- folder -----------------------------------------------------------------------------


def read_folder(path: str | os.PathLike) -> list[Item]:
    """Every image under ``path`` (recursively) that has a same-named ``.txt`` beside it, one
    caption a line. Images without one are left out, with a count in the log."""
    p = _absolute(path)
    if not p.is_dir():
        raise DatasetError(f"{p} is not a folder")
    items, uncaptioned = [], 0
    for img in sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS):
        txt = img.with_suffix(".txt")
        try:
            caps = [line.strip() for line in txt.read_text(encoding="utf-8-sig").splitlines()]
        except FileNotFoundError:
            uncaptioned += 1
            continue
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"cannot read captions {txt}: {e}") from None
        caps = [c for c in caps if c]
        if not caps:
            uncaptioned += 1
            continue
        items.append(Item(img.relative_to(p).with_suffix("").as_posix(), str(img), caps))
    _note_dropped(p, uncaptioned, "images without a .txt caption file")
    return items


# --- helpers ----------------------------------------------------------------------------


def _absolute(path: str | os.PathLike) -> Path:
    """Image paths are stored with the embeddings and read from other working directories:
    make them absolute (without resolving symlinks, which users may rely on)."""
    return Path(os.path.abspath(path))


def _load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"no data set at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    except ValueError as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None


def _note_dropped(path: Path, n: int, what: str) -> None:
    if n:
        log.warning("%s: left out %d %s", path, n, what)
