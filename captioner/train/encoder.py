"""The image encoder of the ``embed`` step: a CLIP vision tower with the preprocessing it was
trained with, from an AltCap model or a CLIP vision model (Hub id or directory); and CLIP's
text tower of an AltCap model, for the model a run trains (``parts``)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from captioner.config import ClipCapConfig
from captioner.errors import CheckpointMismatch, ModelError
from captioner.model.checkpoints import (
    CLIP_TOKENIZER_DIR,
    WEIGHTS_NAME,
    ClipTextTower,
    load_clip_tokenizer,
    load_config,
)
from captioner.model.pretrained import DEFAULT_MODEL, resolve
from captioner.model.processing import CLIP_MEAN, CLIP_STD, preprocess
from captioner.runtime.device import pick_device, pick_dtype
from captioner.train.loading import altcap_model, first_line, from_pretrained
from captioner.train.store import EncoderInfo, weights_sha

log = logging.getLogger(__name__)

HINT = (  # after why an image encoder cannot be loaded: what to give instead
    "give a CLIP vision model (Hub id, or a directory with config.json and weights when "
    "offline) with --image-encoder, or an AltCap model with --model"
)


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
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model_dir = resolve(name or DEFAULT_MODEL)
    config = load_config(model_dir)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**config.vision_config))
    _load_tower(vision, Path(model_dir), "vision.", "vision tower")
    info = EncoderInfo.from_config(config)
    return vision, dataclasses.replace(info, weights_sha=weights_sha(vision))


def load_model_text_tower(name: str) -> tuple[ClipTextTower | None, ClipCapConfig]:
    """CLIP's text tower, tokenizer and logit scale of an AltCap model (a name, directory or
    Hub id), and its config; ``None`` for a model without a text tower. GPT-2 stays unread."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    model_dir = resolve(name)
    config = load_config(model_dir)
    if not config.has_text_tower:
        return None, config
    text = CLIPTextModelWithProjection(CLIPTextConfig(**config.clip_text_config))
    _load_tower(text, Path(model_dir), "clip_text.", "CLIP text tower")
    tokenizer = load_clip_tokenizer(Path(model_dir) / CLIP_TOKENIZER_DIR)
    return ClipTextTower(text.eval(), tokenizer, config.clip_logit_scale), config


def _load_tower(tower: torch.nn.Module, model_dir: Path, prefix: str, what: str) -> None:
    """Load the tensors under ``prefix`` of a model directory's weights into ``tower``, and
    only those: the other parts (GPT-2) are not read."""
    from safetensors import SafetensorError, safe_open

    path = model_dir / WEIGHTS_NAME
    try:
        with safe_open(str(path), framework="pt") as f:
            names = [k for k in f.keys() if k.startswith(prefix)]  # noqa: SIM118
            state = {k.removeprefix(prefix): f.get_tensor(k) for k in names}
    except (OSError, SafetensorError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    try:
        tower.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointMismatch(
            f"the {what} in {path} does not fit its config: {first_line(e)}"
        ) from None


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
