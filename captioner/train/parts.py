"""The model a run trains: its parts, its mapper options, and which weights learn.

The vision tower and GPT-2 come from an AltCap model (``--init``) or from Hugging Face parts
(``--image-encoder`` / ``--language-model``); the mapper is new unless ``--keep-mapper``. The
vision tower must be the one that made the embeddings, or the served model would see other
vectors than it was trained on.

CLIP's text tower (confidence scores, author-alt checks, reranking) comes with the vision
tower when its source has one: the ``--init`` model's, an AltCap model's given as
``--image-encoder``, or a whole CLIP model's (``openai/clip-vit-base-patch32``, found as the
converter finds it). It never trains and has no part in the loss, so the trainer keeps it on
the CPU, out of the model it moves to the GPU, and puts it back to save
(``detach_text_tower`` / ``with_text_tower``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, TypeVar

from torch import nn
from transformers import PreTrainedTokenizerBase

from captioner.config import ClipCapConfig
from captioner.errors import InvalidSettings, ModelError
from captioner.model.checkpoints import ClipTextTower, load_clip_towers, load_pretrained
from captioner.model.modeling import ClipCapModel, build_mapper
from captioner.model.pretrained import resolve
from captioner.train.encoder import load_encoder, load_model_text_tower
from captioner.train.loading import (
    IMAGE_ENCODER_HINT,
    LANGUAGE_MODEL_HINT,
    altcap_model,
    from_pretrained,
    load_part,
    quiet_transformers,
)
from captioner.train.options import TrainOptions
from captioner.train.store import EncoderInfo, weights_sha

T = TypeVar("T")

log = logging.getLogger(__name__)

NO_TEXT_TOWER = (  # after why a run has no CLIP text tower: what that costs
    "the trained model will give its captions no confidence scores (and check no author "
    "alts, rerank no candidates: docs/confidence.md)"
)
WHOLE_CLIP = (  # after NO_TEXT_TOWER, for a vision model alone: what to give instead
    "a whole CLIP model as --image-encoder (such as openai/clip-vit-base-patch32) keeps "
    "its text tower"
)


def no_text_tower(why: str, instead: str = "") -> str:
    """The warning of a run without CLIP's text tower: why, what it costs, what to give."""
    return f"{why}: {NO_TEXT_TOWER}" + (f"; {instead}" if instead else "")


# the config field each model option sets (options.from_init() names the same ones)
ARCH_OPTIONS = {
    "mapping_type": "mapping",
    "prefix_length": "prefix_length",
    "clip_length": "clip_length",
    "num_layers": "num_layers",
    "normalize_prefix": "normalize_prefix",
    "language": "language",
}


def architecture(opts: TrainOptions, base: ClipCapConfig | None) -> dict[str, Any]:
    """Mapper options and the captions' language: given ones win, then the init model's,
    then the paper's."""
    out = {}
    for key, name in ARCH_OPTIONS.items():
        value = getattr(opts, name)
        if value is None:
            value = getattr(base, key) if base is not None else TrainOptions.paper(name)
        out[key] = value
    out["num_heads"] = base.num_heads if base is not None else 8
    out["mlp_ratio"] = base.mlp_ratio if base is not None else 2.0
    return out


def _load_language_model(source: str) -> tuple[nn.Module, PreTrainedTokenizerBase, str]:
    """GPT-2 and its tokenizer, and where they came from (for config.json)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = altcap_model(source)
    if model is not None:  # its GPT-2 and tokenizer (the vision tower loads along, unused)
        clipcap, tokenizer = load_pretrained(resolve(model))
        return clipcap.lm, tokenizer, clipcap.config.language_model
    lm = from_pretrained(GPT2LMHeadModel, source, "language model", LANGUAGE_MODEL_HINT)
    tokenizer = load_part(
        AutoTokenizer.from_pretrained, source, "language model's tokenizer", LANGUAGE_MODEL_HINT
    )
    return lm, tokenizer, source


def _load_text_tower(source: str) -> tuple[ClipTextTower | None, dict[str, Any], str]:
    """CLIP's text tower that goes with the image encoder ``source``, the config fields it
    brings, and the warning that says why there is none ("" when there is one).

    A whole CLIP model (Hub id or ``CLIPModel`` directory with its tokenizer) gives its text
    tower, logit scale and the default confidence rule, as ``convert-clipcap`` does; an
    AltCap model gives its own, with its confidence rule; a vision model alone gives none."""
    model = altcap_model(source)
    if model is not None:
        tower, config = load_model_text_tower(model)
        if tower is None:
            return None, {}, no_text_tower(f"the AltCap model {source} has no CLIP text tower")
        fields = {
            "text_encoder": config.text_encoder,
            "confidence_center": config.confidence_center,
            "confidence_slope": config.confidence_slope,
        }
    else:
        try:  # the converter's loader: it reads the vision tower once more (at start only)
            with quiet_transformers(progress=not Path(source).is_dir()):
                _, tower = load_part(
                    load_clip_towers, source, "CLIP text tower of", "training goes on without it"
                )
        except ModelError as e:  # e.g. no tokenizer beside the weights: as a vision model
            return None, {}, no_text_tower(e.message)
        if tower is None:
            return None, {}, no_text_tower(f"{source} is a CLIP vision model alone", WHOLE_CLIP)
        fields = {"text_encoder": source}  # one CLIP model: both towers from one source
    fields["clip_text_config"] = tower.model.config.to_dict()
    fields["clip_logit_scale"] = tower.logit_scale
    return tower, fields, ""


def build_model(
    opts: TrainOptions, encoder: EncoderInfo, *, main: bool = True
) -> tuple[ClipCapModel, PreTrainedTokenizerBase, str]:
    """The model to train (mapper fresh unless --keep-mapper), its tokenizer, and a line
    saying where its parts came from. Refuses a vision tower other than the one that made
    the embeddings.

    CLIP's text tower comes along when the vision tower's source has one; without one a
    warning says what the model will lack (only where ``main``: rank 0 of a torchrun job)."""
    if opts.init:
        base, tokenizer = load_pretrained(resolve(opts.init))
        config = ClipCapConfig(
            **architecture(opts, base.config),
            image_encoder=base.config.image_encoder,
            language_model=base.config.language_model,
            image_size=base.config.image_size,
            image_mean=base.config.image_mean,
            image_std=base.config.image_std,
            vision_config=dict(base.config.vision_config),
            text_config=dict(base.config.text_config),
            # CLIP's text tower rides along untouched (frozen, like the vision tower), and
            # with it the confidence rule, which is about CLIP's cosines alone
            clip_text_config=dict(base.config.clip_text_config),
            text_encoder=base.config.text_encoder,
            clip_logit_scale=base.config.clip_logit_scale,
            confidence_center=base.config.confidence_center,
            confidence_slope=base.config.confidence_slope,
        )
        vision, lm, origin = base.vision, base.lm, f"init from {opts.init}"
        text = None
        if base.has_text_tower:
            text = ClipTextTower(base.clip_text, base.clip_tokenizer, config.clip_logit_scale)
        no_text = no_text_tower(f"the --init model {opts.init} has no CLIP text tower")
        info = EncoderInfo.from_config(config)
        info = dataclasses.replace(info, weights_sha=weights_sha(vision))
    else:
        image_encoder = opts.image_encoder or encoder.image_encoder
        language_model = opts.language_model or "gpt2"
        # the loader `embed` used: the same preprocessing read
        clip = load_encoder(
            image_encoder=image_encoder, device="cpu", dtype="float32", hint=IMAGE_ENCODER_HINT
        )
        vision, info = clip.vision, clip.info
        text, text_fields, no_text = _load_text_tower(image_encoder)
        lm, tokenizer, lm_source = _load_language_model(language_model)
        base = None
        config = ClipCapConfig(
            **architecture(opts, None),
            image_encoder=info.image_encoder,  # an AltCap model's: the one its tower came from
            language_model=lm_source,
            image_size=info.image_size,
            image_mean=info.image_mean,
            image_std=info.image_std,
            vision_config=vision.config.to_dict(),
            text_config=lm.config.to_dict(),
            **text_fields,
        )
        origin = f"image encoder {image_encoder}, language model {language_model}"
    config.validate()
    what = f"--init {opts.init}" if opts.init else f"--image-encoder {config.image_encoder}"
    encoder.check(info, what)
    if config.mapping_type == "transformer" and config.gpt_dim % config.num_heads:
        raise InvalidSettings(
            f"the transformer mapper's {config.num_heads} heads do not divide GPT-2's width "
            f"{config.gpt_dim}"
        )
    if tokenizer.eos_token_id is None or len(tokenizer) > lm.config.vocab_size:
        raise ModelError(
            f"the tokenizer ({len(tokenizer)} tokens) does not fit the language model "
            f"({lm.config.vocab_size}) or has no end-of-text token"
        )
    if opts.keep_mapper:
        mapper = _kept_mapper(base, config)
        origin += ", mapper kept"
    else:
        mapper = build_mapper(config)
    if text is None and main:
        log.warning("%s", no_text)
    model = ClipCapModel(
        config,
        vision,
        mapper,
        lm,
        clip_text=text.model if text is not None else None,
        clip_tokenizer=text.tokenizer if text is not None else None,
    )
    return model, tokenizer, origin


def _kept_mapper(base: ClipCapModel, config: ClipCapConfig) -> nn.Module:
    keys = ["mapping_type", "prefix_length", "normalize_prefix"]
    if config.mapping_type == "transformer":
        keys += ["clip_length", "num_layers", "num_heads", "mlp_ratio"]
    diff = [
        f"{k} {getattr(base.config, k)} vs {getattr(config, k)}"
        for k in keys
        if getattr(base.config, k) != getattr(config, k)
    ]
    if diff:
        raise InvalidSettings(
            "--keep-mapper: the init model's mapper does not fit the options: " + "; ".join(diff)
        )
    return base.mapper


def detach_text_tower(model: ClipCapModel) -> ClipTextTower | None:
    """Take CLIP's text tower out of a model to train (``None`` if it has none).

    The tower has no part in the loss: kept aside, it stays on the CPU when the model moves to
    the GPU, out of DDP, and joins the model again only to be saved (``with_text_tower``)."""
    if model.clip_text is None:
        return None
    tower = ClipTextTower(
        model.clip_text.eval(), model.clip_tokenizer, model.config.clip_logit_scale
    )
    model.clip_text, model.clip_tokenizer = None, None
    return tower


def with_text_tower(model: ClipCapModel, tower: ClipTextTower | None) -> ClipCapModel:
    """The model to save: the trained one with CLIP's text tower back (the same modules, the
    text tower on the CPU; saving reads each tensor where it is)."""
    if tower is None:
        return model
    return ClipCapModel(
        model.config, model.vision, model.mapper, model.lm, tower.model, tower.tokenizer
    )


def set_trainable(model: ClipCapModel, finetune_lm: bool) -> None:
    """The mapper always trains, CLIP's towers never do, GPT-2 as the regime says."""
    model.vision.requires_grad_(False)
    if model.clip_text is not None:
        model.clip_text.requires_grad_(False)
    model.mapper.requires_grad_(True)
    model.lm.requires_grad_(finetune_lm)


def train_mode(model: ClipCapModel, finetune_lm: bool) -> None:
    """As the reference ClipCapPrefix: a frozen GPT-2 stays in eval mode (no dropout)."""
    model.train()
    model.vision.eval()
    if model.clip_text is not None:
        model.clip_text.eval()
    if not finetune_lm:
        model.lm.eval()
