"""The Captioner facade: ``from_pretrained(name_or_path)`` and ``caption(images)``."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from captioner.alttext import clean_caption
from captioner.config import DecodingSettings
from captioner.errors import InvalidSettings
from captioner.images import DEFAULT_MAX_PIXELS, ImageInput, load_image
from captioner.model.checkpoints import load_pretrained
from captioner.model.modeling import ClipCapModel
from captioner.model.pretrained import DEFAULT_MODEL, resolve
from captioner.model.processing import preprocess
from captioner.runtime import cpu_kernel
from captioner.runtime.decoding import generate
from captioner.runtime.device import pick_device, pick_dtype
from captioner.runtime.graphs import GraphedGreedy
from captioner.runtime.lm import CachedGPT2
from captioner.runtime.packed import can_pack, pack_linears
from captioner.runtime.stopping import StopRule
from captioner.runtime.vision import LeanVision

log = logging.getLogger(__name__)


@dataclass
class CaptionResult:
    """One image's caption. ``timings`` are those of the batch the image was decoded in."""

    text: str  # cleaned: capitalised, one final period
    raw: str  # as the model wrote it
    tokens: int  # new tokens generated (the stop token included)
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds
    batch_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "caption": self.text,
            "raw": self.raw,
            "tokens": self.tokens,
            "timings_ms": self.timings,
            "batch_size": self.batch_size,
        }


class Captioner:
    """Turns images into captions with a ClipCap model."""

    def __init__(
        self,
        model: ClipCapModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        model_id: str = "",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        compile: bool = False,
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        # inference-only from here: linear layers are packed for the CPU where possible
        self.packed = can_pack(self.device, self.dtype)
        self.kernel = cpu_kernel.available(self.device, self.dtype)
        self._encode = self.model.encode_images
        if self.packed:  # CLIP on the CPU: a leaner forward (vision.py), oneDNN's kernels
            try:
                self._encode = LeanVision(self.model.vision, kernel=self.kernel)
            except ValueError as exc:  # a CLIP variant it does not cover: the module's own
                log.info("CLIP runs its own forward: %s", exc)
            pack_linears(self.model.vision)
        if self.kernel:  # a few rows per image: the batch-invariant kernel (cpu_kernel.py)
            pack_linears(self.model.mapper, kernel=True)
        self.tokenizer = tokenizer
        self.lm = CachedGPT2(self.model.lm, pack=self.packed, kernel=self.kernel)
        cuda = self.device.type == "cuda"
        self.graphed = GraphedGreedy(self.lm) if cuda else None
        if compile:  # fuses CLIP's element-wise work: ~20% faster at batch 2048 on an H100
            self._encode = torch.compile(self.model.encode_images)
        self.model_id = model_id
        self.max_pixels = max_pixels
        self.default_settings = DecodingSettings()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> Captioner:
        """Load a named model, a model directory or a Hub repo id (see ``pretrained.resolve``)."""
        device_ = pick_device(device)  # fail on a bad device before any download
        dtype_ = pick_dtype(dtype, device_)
        model, tokenizer = load_pretrained(resolve(name_or_path))
        return cls(model, tokenizer, device=device_, dtype=dtype_, model_id=name_or_path, **kwargs)

    @property
    def config(self):
        return self.model.config

    @property
    def language(self) -> str:
        """The language tag of the captions this model writes (``en`` for ClipCap's)."""
        return self.model.config.language

    def settings(
        self, settings: DecodingSettings | None = None, **overrides: Any
    ) -> DecodingSettings:
        s = settings or self.default_settings
        s = (replace(s, **overrides) if overrides else s).validate()
        room = self.lm.max_positions - self.config.prefix_length
        if s.max_tokens > room:
            raise InvalidSettings(f"max_tokens must be at most {room} for this model")
        return s

    def stop_rule(self, settings: DecodingSettings) -> StopRule:
        stop_id = None
        if settings.stop_token:
            ids = self.tokenizer.encode(settings.stop_token)
            stop_id = ids[0] if ids else None  # as the reference: the first token of the text
        eos = self.tokenizer.eos_token_id if settings.stop_at_eos else None
        return StopRule(stop_id, eos, settings.min_tokens)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        cfg = self.config
        return preprocess(images, image_size=cfg.image_size, mean=cfg.image_mean, std=cfg.image_std)

    @torch.inference_mode()
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels -> (B, clip_dim) CLIP embeddings, float32."""
        pixels = pixel_values.to(self.device, self.dtype)
        return self._encode(pixels).float()

    def caption(
        self,
        images: ImageInput | Sequence[ImageInput],
        settings: DecodingSettings | None = None,
        *,
        batch_size: int = 32,
        **overrides: Any,
    ) -> list[CaptionResult]:
        """Caption images (bytes, paths or PIL images): one result per image, in order.

        A bad image raises its typed ``ImageError``; decode first with ``images.load_image``
        to handle failures image by image.
        """
        if isinstance(images, (bytes, bytearray, str, Image.Image)) or not isinstance(
            images, Sequence
        ):
            images = [images]
        settings = self.settings(settings, **overrides)
        results: list[CaptionResult] = []
        for start in range(0, len(images), max(1, batch_size)):
            t0 = time.perf_counter()
            chunk = [
                load_image(im, max_pixels=self.max_pixels)
                for im in images[start : start + batch_size]
            ]
            pixels = self.preprocess(chunk)
            pre_ms = (time.perf_counter() - t0) * 1e3
            for r in self.caption_pixels(pixels, settings):
                r.timings["preprocess_ms"] = round(pre_ms, 3)
                r.timings["total_ms"] = round(r.timings["total_ms"] + pre_ms, 3)
                results.append(r)
        return results

    @torch.inference_mode()
    def caption_pixels(
        self, pixel_values: torch.Tensor, settings: DecodingSettings | None = None
    ) -> list[CaptionResult]:
        """Caption a preprocessed batch (B, 3, S, S) in one pass."""
        settings = self.settings(settings)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        prefix = self.model.prefix(self.embed(pixel_values).to(self.dtype))
        sync()
        t1 = time.perf_counter()
        ids = generate(self.lm, prefix, settings, self.stop_rule(settings), self.graphed)
        t2 = time.perf_counter()
        timings = {
            "encode_ms": (t1 - t0) * 1e3,
            "decode_ms": (t2 - t1) * 1e3,
            "total_ms": (t2 - t0) * 1e3,
        }
        timings = {k: round(v, 3) for k, v in timings.items()}
        out = []
        for row in ids:
            raw = self.tokenizer.decode(row, skip_special_tokens=True)
            out.append(CaptionResult(clean_caption(raw), raw, len(row), dict(timings), len(ids)))
        return out
