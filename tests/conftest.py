"""Shared fixtures: tiny model directories built offline through the real code paths."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from helpers import png_bytes

# Never reach for the Hub from tests, even by accident.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny MLP-mapper model directory (random weights, trained BPE tokenizer)."""
    from captioner.model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-mlp"), "mlp", seed=0)


@pytest.fixture(scope="session")
def tiny_transformer_dir(tmp_path_factory) -> Path:
    from captioner.model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-transformer"), "transformer", seed=0)


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The trained demo model (``make-tiny --trained``: real captions of synthetic shapes,
    real confidences), trained once and kept under .cache/ for as long as the code that
    makes it is unchanged (about 90 s; the key is a hash of that code)."""
    from captioner.train.demo import code_key, is_current, train_tiny

    root = Path(__file__).resolve().parent.parent
    out = root / ".cache" / f"test-demo-model-{code_key()}"
    if not is_current(out, seed=0):
        train_tiny(out, seed=0)
    return out


@pytest.fixture(scope="session")
def demo_captioner(demo_dir):
    from captioner import Captioner

    return Captioner.from_pretrained(str(demo_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_captioner(tiny_dir):
    from captioner import Captioner

    return Captioner.from_pretrained(str(tiny_dir), device="cpu")


@pytest.fixture
def make_png():
    return png_bytes


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread than on two of a shared 2-core machine.

    Training tests use it for every test: ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
