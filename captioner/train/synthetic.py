"""A synthetic captioned-image set: large coloured shapes on a near-white background.

Tests and smoke runs need a data set that a tiny model can learn in seconds and whose captions
can be checked mechanically: every image shows one filled shape of one colour, and every caption
names that colour and that shape ("a red circle on a white background."). The set is written in
each on-disk layout the readers in ``captioner.train.data`` accept, so one generator exercises
them all. Everything is drawn with PIL from a seeded RNG: the same seed gives the same bytes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw

Layout = Literal["folder", "coco", "csv", "jsonl"]
LAYOUTS: tuple[str, ...] = ("folder", "coco", "csv", "jsonl")

# Far apart in RGB so that even a tiny random CLIP tower separates them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
    "orange": (245, 130, 10),
    "purple": (130, 40, 170),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

# Caption templates; the first is the canonical one, the others appear only when an image gets
# several captions. Each names the colour and the shape, nothing else varies.
_TEMPLATES = (
    "{a} {c} {s} on a white background.",
    "{a} {c} {s}.",
    "a picture of {a} {c} {s}.",
    "a white background with {a} {c} {s} on it.",
    "one {c} {s} in the middle of a white image.",
)

# File names inside a generated set (readers find them by these names or by extension).
COCO_FILE = "captions.json"
CSV_FILE = "captions.csv"
JSONL_FILE = "captions.jsonl"


def shape_vocabulary() -> tuple[list[str], list[str]]:
    """(colour words, shape words): what a caption of a synthetic image must name."""
    return list(COLOURS), list(SHAPES)


def shape_caption(colour: str, shape: str, variant: int = 0) -> str:
    """The caption of an image showing a ``colour`` ``shape`` (``variant`` picks a template)."""
    article = "an" if colour[0] in "aeiou" else "a"
    return _TEMPLATES[variant % len(_TEMPLATES)].format(a=article, c=colour, s=shape)


def draw_shape(
    colour: str, shape: str, *, image_size: int = 64, rng: random.Random | None = None
) -> Image.Image:
    """One RGB image: a filled ``shape`` in ``colour``, large, with a little jitter."""
    rng = rng or random.Random(0)
    grey = rng.randint(235, 255)  # "white", give or take
    img = Image.new("RGB", (image_size, image_size), (grey, grey, rng.randint(235, 255)))
    d = ImageDraw.Draw(img)
    r = image_size * rng.uniform(0.28, 0.4)  # half the extent of the shape
    cx = image_size / 2 + rng.uniform(-0.08, 0.08) * image_size
    cy = image_size / 2 + rng.uniform(-0.08, 0.08) * image_size
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.9
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in _angles(3, -math.pi / 2)]
        d.polygon(pts, fill=fill)
    elif shape == "star":
        pts = []
        for i, a in enumerate(_angles(10, -math.pi / 2)):
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        d.polygon(pts, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return img


def turn(image: Image.Image, rng: random.Random, max_degrees: float = 45.0) -> Image.Image:
    """The drawing turned by up to ``max_degrees`` either way (``draw_shape`` never turns)."""
    return image.rotate(rng.uniform(-max_degrees, max_degrees), fillcolor=image.getpixel((0, 0)))


def shrink(image: Image.Image, rng: random.Random, scale: float = 0.8) -> Image.Image:
    """The drawing shrunk to ``scale`` and placed at random (``draw_shape``'s are large and
    central)."""
    side = int(image.width * scale)
    canvas = Image.new("RGB", image.size, image.getpixel((0, 0)))
    at = (rng.randint(0, image.width - side), rng.randint(0, image.height - side))
    canvas.paste(image.resize((side, side), Image.BILINEAR), at)
    return canvas


def _angles(n: int, start: float) -> list[float]:
    return [start + 2 * math.pi * i / n for i in range(n)]


def make_shapes(
    out_dir: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    layout: Layout = "folder",
    captions_per_image: int = 1,
) -> Path:
    """Write ``n`` captioned shape images to ``out_dir`` and return the path to give a reader.

    Colour/shape pairs are dealt from a shuffled deck of all 24 combinations, so any 24
    consecutive images cover every pair once (balanced classes for tiny training runs).
    Layouts and the returned path:

    - ``"folder"``: ``shape-00000.png`` + ``shape-00000.txt`` (one caption a line) → ``out_dir``
    - ``"coco"``: ``images/`` + ``captions.json`` (official COCO captions format) → the JSON
    - ``"csv"``: ``images/`` + ``captions.csv`` (columns ``image,caption``) → the CSV
    - ``"jsonl"``: ``images/`` + ``captions.jsonl`` (``{"image", "caption"}``) → the JSONL

    Different seeds give different jitter and order, so ``seed=1`` makes a held-out set.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if n < 0 or captions_per_image < 1:
        raise ValueError("n must be >= 0 and captions_per_image >= 1")
    out = Path(out_dir)
    img_dir = out if layout == "folder" else out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    rng = random.Random(seed)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    deck: list[tuple[str, str]] = []
    rows: list[tuple[str, list[str]]] = []  # (file name, captions)
    for i in range(n):
        if not deck:
            deck = pairs[:]
            rng.shuffle(deck)
        colour, shape = deck.pop()
        name = f"shape-{i:05d}.png"
        draw_shape(colour, shape, image_size=image_size, rng=rng).save(img_dir / name)
        caps = [shape_caption(colour, shape, v) for v in range(captions_per_image)]
        rows.append((name, caps))

    if layout == "folder":
        for name, caps in rows:
            (img_dir / name).with_suffix(".txt").write_text("\n".join(caps) + "\n")
        return out
    if layout == "coco":
        images, annotations = [], []
        for image_id, (name, caps) in enumerate(rows, start=1):
            images.append(
                {"id": image_id, "file_name": name, "width": image_size, "height": image_size}
            )
            for cap in caps:
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image_id, "caption": cap}
                )
        doc = {
            "info": {"description": f"AltCap synthetic shapes (seed {seed})"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
        }
        path = out / COCO_FILE
        path.write_text(json.dumps(doc))
        return path
    if layout == "csv":
        path = out / CSV_FILE
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption"])
            for name, caps in rows:
                for cap in caps:
                    w.writerow([f"images/{name}", cap])
        return path
    path = out / JSONL_FILE
    with path.open("w") as f:
        for name, caps in rows:
            for cap in caps:
                f.write(json.dumps({"image": f"images/{name}", "caption": cap}) + "\n")
    return path
