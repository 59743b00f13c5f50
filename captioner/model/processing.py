"""CLIP preprocessing: decoded images to the pixel tensor the image encoder expects.

Same steps as ``transformers``' ``CLIPImageProcessor`` (resize the shortest side with PIL
bicubic, centre crop, CLIP mean/std) in a few numpy operations over the whole batch.
Decoding untrusted bytes safely is ``captioner.images``' job, before this.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from captioner.config import ClipCapConfig

__all__ = ["CLIP_MEAN", "CLIP_STD", "preprocess"]

# CLIP's normalisation, declared once (with the model's other defaults) in ClipCapConfig.
CLIP_MEAN = ClipCapConfig.image_mean
CLIP_STD = ClipCapConfig.image_std

# Above this many pixels in the resized (pre-crop) image, resize only the crop box.
# Exact CLIP preprocessing resizes the whole image, and for a 1 x 40M strip that would be
# a 224 x 9e9 intermediate; the box path is within a few grey levels and costs nothing.
_MAX_INTERMEDIATE_PIXELS = 4_000_000


# --- CLIP tensor ------------------------------------------------------------------------


def preprocess(
    images: Sequence[Image.Image],
    *,
    image_size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """Batch images into the ``(N, 3, image_size, image_size)`` float32 tensor CLIP expects.

    Same steps as ``CLIPImageProcessor``: shortest side to ``image_size`` with PIL
    bicubic (long side truncated to int), centre crop with the top/left offset rounded
    down, ``/255``, then ``(x - mean) / std``. Matching it keeps embeddings identical to
    those the mapping network was trained on. Images not in RGB are converted first.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    batch = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)  # (N, H, W, C)
    for i, im in enumerate(images):
        batch[i] = _resize_and_crop(im if im.mode == "RGB" else im.convert("RGB"), image_size)
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    x = (batch.astype(np.float32) / np.float32(255.0) - mean_arr) / std_arr
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (N, C, H, W)


def _resize_and_crop(im: Image.Image, size: int) -> np.ndarray:
    """Shortest side to ``size`` (bicubic), then the central ``size`` x ``size`` square."""
    width, height = im.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if new_w * new_h > _MAX_INTERMEDIATE_PIXELS:
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return np.asarray(im.resize((size, size), Image.Resampling.BICUBIC, box=box))
    if (new_w, new_h) != (width, height):
        im = im.resize((new_w, new_h), Image.Resampling.BICUBIC)
    return np.asarray(im)[top : top + size, left : left + size]
