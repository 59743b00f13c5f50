"""Named models and Hugging Face Hub resolution.

``resolve(name_or_path)`` turns what a user typed into a local model directory:
- a local model directory is used as it is;
- a registry name (``clipcap-coco``) is fetched once from the Hub (the CLIP model: its vision
  tower, text tower and tokenizer; GPT-2's config and tokenizer; the authors' ``.pt``
  weights), converted, and cached as a model directory under the AltCap cache;
- anything else that looks like ``owner/name`` is a Hub repo holding a model directory, fetched
  through the Hugging Face cache (``HF_HOME``, ``HF_HUB_OFFLINE`` and tokens apply).

What clients are told about the model, and what the caption cache keys on, is
``captioner.model.identity``: a local path is neither.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hf_constants
from tqdm.auto import tqdm

from captioner.config import MappingType
from captioner.errors import DownloadFailed, ModelNotFound
from captioner.model.checkpoints import convert_checkpoint, is_model_dir
from captioner.model.identity import HUB_ID

log = logging.getLogger(__name__)

DEFAULT_MODEL = "clipcap-coco"


@dataclass(frozen=True)
class PretrainedSpec:
    """Where a named model's parts come from."""

    image_encoder: str  # Hub id of the CLIP model: its vision tower, and text tower for scores
    language_model: str  # Hub id of GPT-2: its config and tokenizer
    weights_repo: str  # Hub repo with the authors' .pt state dict
    weights_file: str
    mapping_type: MappingType = "mlp"
    prefix_length: int = 10
    clip_length: int = 10
    num_layers: int = 8
    description: str = ""


REGISTRY: dict[str, PretrainedSpec] = {
    "clipcap-coco": PretrainedSpec(
        image_encoder="openai/clip-vit-base-patch32",
        language_model="gpt2",
        weights_repo="akhaliq/CLIP-prefix-captioning-COCO-weights",
        weights_file="coco_weights.pt",
        description="ClipCap MLP + fine-tuned GPT-2, trained on COCO captions",
    ),
    "clipcap-conceptual": PretrainedSpec(
        image_encoder="openai/clip-vit-base-patch32",
        language_model="gpt2",
        weights_repo="akhaliq/CLIP-prefix-captioning-conceptual-weights",
        weights_file="conceptual_weights.pt",
        description="ClipCap MLP + fine-tuned GPT-2, trained on Conceptual Captions",
    ),
}

# the CLIP model's configs and its tokenizer (the text tower's weights share the vision's file)
_VISION_FILES = [
    "config.json",
    "preprocessor_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
_TEXT_FILES = ["config.json", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"]
_MODEL_DIR_FILES = ["*.json", "*.txt", "model.safetensors", "clip_tokenizer/*"]


def altcap_cache_dir() -> Path:
    """Converted named models live here: $ALTCAP_CACHE, else $HF_HOME/altcap."""
    env = os.environ.get("ALTCAP_CACHE")
    return Path(env) if env else Path(hf_constants.HF_HOME) / "altcap"


def resolve(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local model directory for a name, path or Hub id (downloading on first use)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if is_model_dir(path):
            return path
        raise ModelNotFound(
            f"{path} is a folder but not a model directory (it needs config.json and "
            "model.safetensors; make one with `python -m captioner convert-clipcap`)"
        )
    if name_or_path in REGISTRY:
        target = Path(cache_dir) if cache_dir else altcap_cache_dir() / name_or_path
        if not is_model_dir(target):
            fetch_and_convert(name_or_path, target)
        return target
    if HUB_ID.match(name_or_path):
        local = _snapshot(name_or_path, _MODEL_DIR_FILES, what="model directory")
        if not is_model_dir(local):
            raise ModelNotFound(f"Hub repo {name_or_path} holds no AltCap model directory")
        return local
    names = ", ".join(REGISTRY)
    raise ModelNotFound(
        f"unknown model {name_or_path!r}: give a model directory, a Hub repo id, or one of: {names}"
    )


def fetch_and_convert(name: str, target: Path) -> Path:
    """Download a named model's parts, convert the reference weights, save a model directory.

    On a terminal a bar shows the three steps. Elsewhere (a log file, cron, CI) a bar is
    redrawn with carriage returns, and the Hub's download bars and transformers' loading
    bar nested under it move the cursor with escapes a file keeps: the bar came out twice,
    with theirs between. There, one plain line per step and no bars at all."""
    spec = REGISTRY[name]
    terminal = sys.stderr.isatty()
    steps = tqdm(total=3, desc=f"Preparing {name}", unit="step", disable=not terminal)
    say = _say if not terminal else lambda _: None
    try:
        with nullcontext() if terminal else _library_bars_off():
            say(f"Preparing {name} (first use): downloading its parts from the Hugging Face Hub")
            weights = _download(spec.weights_repo, spec.weights_file)
            vision_dir = _snapshot(spec.image_encoder, _VISION_FILES, what="image encoder")
            vision_dir = _ensure_weights(spec.image_encoder, vision_dir)
            text_dir = _snapshot(spec.language_model, _TEXT_FILES, what="language model config")
            steps.update()
            say(f"Preparing {name}: converting {spec.weights_file}")
            convert_checkpoint(
                weights,
                target,
                mapping_type=spec.mapping_type,
                vision_source=vision_dir,
                text_source=text_dir,
                prefix_length=spec.prefix_length,
                clip_length=spec.clip_length,
                num_layers=spec.num_layers,
                image_encoder=spec.image_encoder,
                language_model=spec.language_model,
                source=f"converted from {spec.weights_repo}/{spec.weights_file}",
            )
            steps.update(2)
    finally:
        steps.close()
    say(f"Preparing {name}: saved to {target}")
    log.info("saved %s to %s", name, target)
    return target


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def _library_bars_off() -> Iterator[None]:
    """huggingface_hub's download bars and transformers' loading bars off for a while,
    then as they were."""
    from transformers.utils import logging as tf_logging  # heavy: only when converting

    hub = huggingface_hub.utils
    with warnings.catch_warnings():  # an HF_HUB_DISABLE_PROGRESS_BARS that forbids changes
        warnings.simplefilter("ignore")
        hub_on, tf_on = not hub.are_progress_bars_disabled(), tf_logging.is_progress_bar_enabled()
        tf_logging.disable_progress_bar()  # transformers' own flag, and the Hub's
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if tf_on:
                tf_logging.enable_progress_bar()  # turns the Hub's on too: set it next
            if hub_on:
                hub.enable_progress_bars()
            else:
                hub.disable_progress_bars()


def _offline_hint(repo: str) -> str:
    return (
        f"Without access to the Hugging Face Hub, download {repo} elsewhere and convert it: "
        "`python -m captioner convert-clipcap WEIGHTS.pt OUT_DIR --image-encoder DIR "
        "--language-model DIR`, then pass OUT_DIR as the model (--model / ALTCAP_MODEL)."
    )


def _download(repo: str, filename: str) -> str:
    try:
        return huggingface_hub.hf_hub_download(repo, filename)
    except Exception as e:  # network, offline mode, 404, auth: all the same to the user
        raise DownloadFailed(
            f"download of {filename} from Hub repo {repo} failed ({type(e).__name__}: "
            f"{_short(e)}). {_offline_hint(repo)}"
        ) from None


def _snapshot(repo: str, patterns: list[str], *, what: str) -> str:
    try:
        return huggingface_hub.snapshot_download(repo, allow_patterns=patterns)
    except Exception as e:
        raise DownloadFailed(
            f"download of the {what} from Hub repo {repo} failed ({type(e).__name__}: "
            f"{_short(e)}). {_offline_hint(repo)}"
        ) from None


def _ensure_weights(repo: str, local: str) -> str:
    """Fetch the vision tower's weights: safetensors where the repo has them, else .bin."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if not (Path(local) / name).exists():
            local = _snapshot(repo, [*_VISION_FILES, name], what="image encoder weights")
        if (Path(local) / name).exists():
            return local
    raise DownloadFailed(f"Hub repo {repo} has no model.safetensors or pytorch_model.bin")


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else "no details"
