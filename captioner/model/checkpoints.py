"""Model directories (save/load) and import of the ClipCap authors' ``.pt`` checkpoints.

A model directory holds ``config.json`` (a ClipCapConfig: every hyper-parameter, the full
vision and text configs, and where the parts came from), ``model.safetensors`` (vision tower,
mapper and GPT-2 together) and the tokenizer files. It rebuilds its model without downloads.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from transformers import (
    AutoTokenizer,
    CLIPVisionModelWithProjection,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
)

try:  # transformers 5
    from transformers.initialization import no_init_weights
except ImportError:  # transformers 4
    from transformers.modeling_utils import no_init_weights

from captioner.config import ClipCapConfig, MappingType
from captioner.errors import CheckpointMismatch, ModelError, ModelNotFound
from captioner.model.modeling import ClipCapModel, build_mapper

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def is_model_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Write through a temp file in the same folder, then rename: never a half-written file.

    ``write(tmp)`` fills the temp file (given by name: safetensors and torch want a path)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_pretrained(
    model: ClipCapModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike
) -> Path:
    """Save a model directory. Weights and tokenizer first, config.json last, each atomically,
    so a directory with a config is complete."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        for f in Path(tmp).iterdir():
            os.replace(f, out / f.name)
    atomic_write(out / WEIGHTS_NAME, lambda t: save_model(model, t, metadata={"format": "pt"}))
    text = json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write(out / CONFIG_NAME, lambda t: Path(t).write_text(text))
    return out


def load_config(model_dir: str | os.PathLike) -> ClipCapConfig:
    path = Path(model_dir) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelNotFound(f"{model_dir} is not a model directory (no {CONFIG_NAME})") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    if data.get("model_type") != "clipcap":
        raise ModelError(f"{path} is not a ClipCap model config (model_type != 'clipcap')")
    return ClipCapConfig.from_dict(data)


def load_pretrained(model_dir: str | os.PathLike) -> tuple[ClipCapModel, PreTrainedTokenizerBase]:
    """Load a model directory (local path) into a float32 model on the CPU, in eval mode."""
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    with no_init_weights():  # every tensor is loaded below (checked): random init was 95% of it
        model = ClipCapModel.from_config(config)
    try:
        state = load_file(model_dir / WEIGHTS_NAME)
    except (OSError, SafetensorError) as e:
        raise ModelError(f"cannot read {model_dir / WEIGHTS_NAME}: {e}") from None
    _load_checked(model, state, str(model_dir / WEIGHTS_NAME))
    try:
        # config= keeps transformers from reading our config.json as a transformers config
        tokenizer = AutoTokenizer.from_pretrained(
            str(model_dir), config=GPT2Config(**config.text_config)
        )
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the tokenizer from {model_dir}: {e}") from None
    return model.eval(), tokenizer


def _load_checked(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """load_state_dict with every shape checked first and all problems reported at once.

    Keys the model shares (GPT-2's tied lm_head/wte) may be present once.
    """
    expected = model.state_dict()
    problems = []
    for key, tensor in state.items():
        if key not in expected:
            problems.append(f"unexpected tensor {key}")
        elif tuple(tensor.shape) != tuple(expected[key].shape):
            problems.append(
                f"{key}: checkpoint has shape {list(tensor.shape)}, "
                f"model expects {list(expected[key].shape)}"
            )
    absent = [k for k in expected if k not in state]
    aliases = [k for k in absent if _is_tied_alias(model, k, state)]
    problems += [f"missing tensor {k}" for k in absent if k not in aliases]
    if problems:
        shown = "; ".join(problems[:8]) + (
            f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        )
        raise CheckpointMismatch(f"{what} does not fit the model: {shown}")
    state = dict(state)
    for key in aliases:  # a tied tensor saved once: load it under both names
        state[key] = state[_TIED[key]]
    model.load_state_dict(state, strict=True)
    if isinstance(model, ClipCapModel) and model.lm.config.tie_word_embeddings:
        model.lm.tie_weights()


_TIED = {
    "lm.lm_head.weight": "lm.transformer.wte.weight",
    "lm.transformer.wte.weight": "lm.lm_head.weight",
}


def _is_tied_alias(model: torch.nn.Module, key: str, state: Mapping[str, torch.Tensor]) -> bool:
    if not isinstance(model, ClipCapModel) or not model.lm.config.tie_word_embeddings:
        return False
    return key in _TIED and _TIED[key] in state


# --- the reference ClipCap checkpoints ---------------------------------------------------

# Buffers that old transformers versions saved with GPT-2 and that are not weights.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def load_reference_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ClipCap ``.pt`` state dict safely (``weights_only=True``: no pickle code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelNotFound(f"checkpoint {path} not found") from None
    except Exception as e:  # torch raises many kinds for bad or hostile files
        raise ModelError(f"cannot read {path} as a weights-only PyTorch checkpoint: {e}") from None
    if (
        isinstance(state, Mapping)
        and "state_dict" in state
        and isinstance(state["state_dict"], Mapping)
    ):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelError(f"{path} is not a state dict of tensors")
    return dict(state)


def infer_reference_layout(state: Mapping[str, torch.Tensor]) -> dict[str, int | str]:
    """What a reference state dict says about itself: mapper kind, CLIP and GPT-2 widths,
    prefix length (and clip length / depth for the transformer mapper)."""
    if "clip_project.model.0.weight" in state:
        w0, w2 = state["clip_project.model.0.weight"], state["clip_project.model.2.weight"]
        gpt_dim = state["gpt.transformer.wte.weight"].shape[1]
        return {
            "mapping_type": "mlp",
            "clip_dim": w0.shape[1],
            "gpt_dim": gpt_dim,
            "prefix_length": w2.shape[0] // gpt_dim,
        }
    if "clip_project.linear.weight" in state:
        lin, const = state["clip_project.linear.weight"], state["clip_project.prefix_const"]
        layers = {
            k.split(".")[3] for k in state if k.startswith("clip_project.transformer.layers.")
        }
        return {
            "mapping_type": "transformer",
            "clip_dim": lin.shape[1],
            "gpt_dim": const.shape[1],
            "prefix_length": const.shape[0],
            "clip_length": lin.shape[0] // const.shape[1],
            "num_layers": len(layers),
        }
    raise CheckpointMismatch(
        "not a ClipCap checkpoint: no clip_project.model.* (MLP) or clip_project.linear.* "
        "(transformer) tensors"
    )


def convert_reference(
    state: Mapping[str, torch.Tensor],
    *,
    mapping_type: MappingType,
    vision: CLIPVisionModelWithProjection,
    text_config: GPT2Config,
    prefix_length: int = 10,
    clip_length: int = 10,
    num_layers: int = 8,
    image_encoder: str = "",
    language_model: str = "",
    source: str = "",
) -> ClipCapModel:
    """Build a ClipCapModel from a reference state dict and a ready vision tower.

    The mapper and GPT-2 weights come from the checkpoint; the options given must agree with
    it, and every shape is checked, so a checkpoint trained on another CLIP (e.g. 640-d
    RN50x4) fails with a message that says so instead of a size error deep in torch.
    """
    layout = infer_reference_layout(state)
    clip_dim = int(vision.config.projection_dim)
    problems = []
    if layout["mapping_type"] != mapping_type:
        problems.append(f"it has a {layout['mapping_type']} mapper, not {mapping_type}")
    if layout["clip_dim"] != clip_dim:
        problems.append(
            f"it expects {layout['clip_dim']}-d CLIP embeddings but the image encoder "
            f"{image_encoder or ''} gives {clip_dim}-d (a checkpoint for another CLIP model?)"
        )
    if layout["gpt_dim"] != text_config.n_embd:
        problems.append(f"its GPT-2 is {layout['gpt_dim']}-d, not {text_config.n_embd}-d")
    if layout["prefix_length"] != prefix_length:
        problems.append(f"its prefix length is {layout['prefix_length']}, not {prefix_length}")
    if mapping_type == "transformer" and layout["mapping_type"] == "transformer":
        if layout["clip_length"] != clip_length:
            problems.append(f"its clip length is {layout['clip_length']}, not {clip_length}")
        if layout["num_layers"] != num_layers:
            problems.append(f"it has {layout['num_layers']} mapper layers, not {num_layers}")
    if problems:
        raise CheckpointMismatch("checkpoint does not match the options: " + "; ".join(problems))

    lm_state = {}
    mapper_state = {}
    for key, t in state.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        if key.startswith("gpt."):
            lm_state[key.removeprefix("gpt.")] = t
        elif key.startswith("clip_project."):
            mapper_state[key.removeprefix("clip_project.")] = t
        else:
            raise CheckpointMismatch(f"unexpected tensor {key} in a ClipCap checkpoint")
    head, wte = lm_state.get("lm_head.weight"), lm_state.get("transformer.wte.weight")
    text_config.tie_word_embeddings = head is None or (wte is not None and torch.equal(head, wte))
    config = ClipCapConfig(
        mapping_type=mapping_type,
        prefix_length=prefix_length,
        clip_length=clip_length,
        num_layers=num_layers,
        image_encoder=image_encoder,
        language_model=language_model,
        image_size=int(vision.config.image_size),
        vision_config=vision.config.to_dict(),
        text_config=text_config.to_dict(),
        source=source,
    )
    model = ClipCapModel(config, vision, build_mapper(config), GPT2LMHeadModel(text_config))
    full = {f"lm.{k}": v for k, v in lm_state.items()}
    full.update({f"mapper.{k}": v for k, v in mapper_state.items()})
    full.update({f"vision.{k}": v for k, v in vision.state_dict().items()})
    _load_checked(model, full, "the ClipCap checkpoint")
    return model.eval()


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    mapping_type: MappingType,
    vision_source: str | os.PathLike,
    text_source: str | os.PathLike,
    prefix_length: int = 10,
    clip_length: int = 10,
    num_layers: int = 8,
    image_encoder: str = "",
    language_model: str = "",
    source: str = "",
) -> Path:
    """A reference ``.pt`` file + a CLIP vision model + a GPT-2 config and tokenizer (each a
    directory or a Hub id) -> a saved model directory. ``image_encoder`` / ``language_model``
    record where the parts come from when the sources are local copies."""
    state = load_reference_checkpoint(checkpoint)  # a bad checkpoint fails before any loading
    try:
        vision = CLIPVisionModelWithProjection.from_pretrained(vision_source)
        text_config = GPT2Config.from_pretrained(text_source)
        tokenizer = AutoTokenizer.from_pretrained(text_source)
    except OSError as e:
        raise ModelError(
            f"cannot load the image encoder / language model ({e}); give local directories "
            "with --image-encoder and --language-model when offline"
        ) from None
    model = convert_reference(
        state,
        mapping_type=mapping_type,
        vision=vision,
        text_config=text_config,
        prefix_length=prefix_length,
        clip_length=clip_length,
        num_layers=num_layers,
        image_encoder=image_encoder or str(vision_source),
        language_model=language_model or str(text_source),
        source=source or f"converted from {Path(checkpoint).name}",
    )
    return save_pretrained(model, tokenizer, out_dir)
