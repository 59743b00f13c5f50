"""Shared fixtures: tiny model directories built offline through the real code paths."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest

# Never reach for the Hub from tests, even by accident.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny MLP-mapper model directory (random weights, trained BPE tokenizer)."""
    from captioner.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-mlp"), "mlp", seed=0)


@pytest.fixture(scope="session")
def tiny_transformer_dir(tmp_path_factory) -> Path:
    from captioner.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-transformer"), "transformer", seed=0)


@pytest.fixture(scope="session")
def tiny_captioner(tiny_dir):
    from captioner import Captioner

    return Captioner.from_pretrained(str(tiny_dir), device="cpu")


def png_bytes(color=(200, 30, 30), size=(64, 48), mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def make_png():
    return png_bytes


def write_reference_parts(out: Path, mapping: str = "mlp", seed: int = 0):
    """What a user converting an authors' checkpoint has: the ``.pt`` state dict (reference key
    names, random weights), a CLIP vision model directory and a GPT-2 config + tokenizer dir.

    Returns (pt_path, vision_dir, lm_dir, original_model)."""
    import torch

    from captioner.tiny import tiny_tokenizer_and_model

    tokenizer, model = tiny_tokenizer_and_model(mapping, seed=seed)
    state = {}
    for key, t in model.state_dict().items():
        if key.startswith("lm."):
            state["gpt." + key.removeprefix("lm.")] = t.clone()
        elif key.startswith("mapper."):
            state["clip_project." + key.removeprefix("mapper.")] = t.clone()
    # old transformers versions saved the causal-mask buffer with GPT-2: must be ignored
    state["gpt.transformer.h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 8, 8))
    out.mkdir(parents=True, exist_ok=True)
    pt = out / "weights.pt"
    torch.save(state, pt)
    vision_dir, lm_dir = out / "vision", out / "gpt2"
    model.vision.save_pretrained(vision_dir)
    model.lm.config.save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    return pt, vision_dir, lm_dir, model
