"""Loading the Hugging Face parts a run starts from, with messages that say what to give
instead; shared by ``embed`` (the image encoder) and ``parts`` (the model a run trains)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from captioner.errors import ModelError
from captioner.model.checkpoints import CONFIG_NAME
from captioner.model.pretrained import REGISTRY

T = TypeVar("T")


def first_line(e: BaseException) -> str:
    """The first line of an error, cut short: enough for a one-line CLI message."""
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


# What a part that cannot be loaded should be instead, said after the reason.
IMAGE_ENCODER_HINT = (
    "give a CLIP vision model (Hub id, or a directory with config.json and weights when "
    "offline) or an AltCap model directory with --image-encoder, or --init MODEL_DIR"
)
LANGUAGE_MODEL_HINT = (
    "give a GPT-2 (Hub id, or a directory with weights and tokenizer when offline) or an "
    "AltCap model directory with --language-model, or --init MODEL_DIR for both parts"
)


def load_part(load: Callable[[str], T], source: str, what: str, hint: str) -> T:
    """``load(source)`` for a Hugging Face part given as a Hub id or a directory.

    transformers says "not found", "offline" or "bad config" with OSError or ValueError, and
    a config of another kind of model can fail anywhere in it; the user gets one ModelError
    line naming the part and what to give."""
    try:
        return load(source)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"cannot load the {what} {source!r} ({first_line(e)}); {hint}") from None


def from_pretrained(cls: Any, source: str, what: str, hint: str) -> Any:
    """``cls.from_pretrained(source)``, refused unless every weight was in ``source``.

    transformers fills the weights it does not find with random ones and prints a report of
    every key: a directory of another model would load as a random part. Its report is
    silenced here; what matters in it (missing weights) becomes one ModelError line."""

    def load(s: str) -> Any:
        with quiet_transformers(progress=not Path(s).is_dir()):
            model, info = cls.from_pretrained(s, output_loading_info=True)
        missing = sorted(info["missing_keys"])
        if missing:
            raise ModelError(
                f"{s!r} holds no {what}: {len(missing)} of its weights are missing "
                f"(first: {missing[0]}); {hint}"
            )
        return model

    return load_part(load, source, what, hint)


@contextlib.contextmanager
def quiet_transformers(progress: bool = True) -> Iterator[None]:
    """transformers' warnings (its load report) off; its progress bars too unless
    ``progress`` (a download shows one worth seeing)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars and not progress:
            hf_logging.enable_progress_bar()


def altcap_model(source: str) -> str | None:
    """``source`` as an AltCap model (a local model directory or a registry name), or None
    for a Hugging Face part. A model directory given as a part loads as that part."""
    if source in REGISTRY:
        return source
    try:
        config = json.loads((Path(source).expanduser() / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None
    return source if isinstance(config, dict) and config.get("model_type") == "clipcap" else None
