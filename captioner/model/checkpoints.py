"""Model directories (save/load) and import of the ClipCap authors' ``.pt`` checkpoints.

A model directory holds ``config.json`` (a ClipCapConfig: every hyper-parameter, the full
vision and text configs, and where the parts came from), ``model.safetensors`` (vision tower,
mapper and GPT-2 together, and CLIP's text tower under ``clip_text.`` when it has one), GPT-2's
tokenizer files, and CLIP's tokenizer in ``clip_tokenizer/`` with the text tower. It rebuilds
its model without downloads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from transformers import (
    AutoConfig,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTextModelWithProjection,
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
CLIP_TOKENIZER_DIR = "clip_tokenizer"  # CLIP's tokenizer, beside GPT-2's (same file names)


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
    if model.has_text_tower:
        _save_folder(out / CLIP_TOKENIZER_DIR, model.clip_tokenizer.save_pretrained)
    elif model.config.has_text_tower:
        raise ModelError("the model has a CLIP text tower but no CLIP tokenizer to save")
    atomic_write(out / WEIGHTS_NAME, lambda t: save_model(model, t, metadata={"format": "pt"}))
    text = json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write(out / CONFIG_NAME, lambda t: Path(t).write_text(text))
    return out


def _save_folder(path: Path, write: Callable[[str], object]) -> None:
    """Fill a temp folder beside ``path``, then swap it in: never a half-written folder."""
    tmp = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.")
    old = None
    try:
        write(tmp)
        if path.exists():  # a directory cannot be replaced in one rename: move it aside first
            old = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old.")
            os.replace(path, Path(old) / path.name)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            if leftover and os.path.exists(leftover):
                shutil.rmtree(leftover)


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
    if config.has_text_tower:
        model.clip_tokenizer = load_clip_tokenizer(model_dir / CLIP_TOKENIZER_DIR)
    return model.eval(), tokenizer


def load_clip_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load CLIP's tokenizer from {path}: {e}") from None


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
    text_tower: ClipTextTower | None = None,
) -> ClipCapModel:
    """Build a ClipCapModel from a reference state dict and a ready vision tower (and, when
    given, the text tower of the same CLIP model).

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
    clip_text = clip_tokenizer = None
    if text_tower is not None:
        clip_text, clip_tokenizer = text_tower.model, text_tower.tokenizer
        config.clip_text_config = clip_text.config.to_dict()
        config.text_encoder = image_encoder  # one CLIP model: both towers from one source
        config.clip_logit_scale = text_tower.logit_scale
        config.validate()
    lm = GPT2LMHeadModel(text_config)
    model = ClipCapModel(config, vision, build_mapper(config), lm, clip_text, clip_tokenizer)
    full = {f"lm.{k}": v for k, v in lm_state.items()}
    full.update({f"mapper.{k}": v for k, v in mapper_state.items()})
    full.update({f"vision.{k}": v for k, v in vision.state_dict().items()})
    if clip_text is not None:
        full.update({f"clip_text.{k}": v for k, v in clip_text.state_dict().items()})
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
        vision, text_tower = load_clip_towers(vision_source)
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
        text_tower=text_tower,
    )
    return save_pretrained(model, tokenizer, out_dir)


@dataclass
class ClipTextTower:
    """CLIP's text tower and projection, its tokenizer, and CLIP's logit scale."""

    model: CLIPTextModelWithProjection
    tokenizer: PreTrainedTokenizerBase
    logit_scale: float  # exp of CLIPModel.logit_scale (100.0 for OpenAI's CLIP)


def load_clip_towers(
    source: str | os.PathLike,
) -> tuple[CLIPVisionModelWithProjection, ClipTextTower | None]:
    """The vision tower of a CLIP model (a directory or Hub id), and its text tower and
    tokenizer when the source is a whole CLIP model (``openai/clip-vit-base-patch32`` is);
    a vision-only source gives ``None`` for the text tower. Raises OSError as transformers."""
    config = AutoConfig.from_pretrained(source)
    if not isinstance(config, CLIPConfig):
        return CLIPVisionModelWithProjection.from_pretrained(source), None
    clip = CLIPModel.from_pretrained(source)  # once, then split: the two towers and the scale
    # the sub-configs may carry a stale projection_dim: the projections are the whole model's
    config.vision_config.projection_dim = config.text_config.projection_dim = config.projection_dim
    with no_init_weights():
        vision = CLIPVisionModelWithProjection(config.vision_config)
        text = CLIPTextModelWithProjection(config.text_config)
    vision.vision_model, vision.visual_projection = clip.vision_model, clip.visual_projection
    text.text_model, text.text_projection = clip.text_model, clip.text_projection
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer_spells(tokenizer):  # its scores would be nonsense: refused
        raise ModelError(
            f"{source} has CLIP's weights but no tokenizer files (vocab.json and merges.txt, "
            "or tokenizer.json): save the CLIP model with its tokenizer"
        )
    scale = float(clip.logit_scale.detach().exp())
    return vision.eval(), ClipTextTower(text.eval(), tokenizer, scale)


def tokenizer_spells(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether a tokenizer spells plain words without its unknown token: where a CLIP model's
    tokenizer files are missing, transformers 5 makes an empty one (two special tokens)."""
    ids = tokenizer("a photo of a cat", add_special_tokens=False)["input_ids"]
    return tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
