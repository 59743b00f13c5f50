"""Tiny random-weight models that work fully offline, for tests, demos and smoke checks.

The architecture is the real one (CLIP vision tower, mapping network, GPT-2) at toy sizes,
with a byte-level BPE tokenizer trained on a few caption-like sentences.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPModel, GPT2TokenizerFast, PreTrainedTokenizerBase

from captioner.alttext import unreadable
from captioner.config import ClipCapConfig, MappingType
from captioner.model.checkpoints import save_pretrained
from captioner.model.modeling import ClipCapModel

EOS = "<|endoftext|>"
_COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
_SHAPES = ["circle", "square", "triangle", "star", "cat", "dog", "car", "tree", "house"]
_PLACES = ["on a white background", "on a table", "in a field", "on the street", "at night"]


def caption_corpus() -> list[str]:
    """Caption-like sentences: enough for a tokenizer that spells captions in few tokens."""
    out = []
    for c in _COLOURS:
        for s in _SHAPES:
            for p in _PLACES:
                out.append(f"a {c} {s} {p}.")
                out.append(f"A photo of a {c} {s} {p}.")
    return out


def train_tokenizer(vocab_size: int = 400) -> GPT2TokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer with '<|endoftext|>' as its EOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(caption_corpus(), trainer=trainer)
    return GPT2TokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, model_max_length=128
    )


def tiny_config(
    vocab_size: int,
    mapping_type: MappingType = "mlp",
    *,
    prefix_length: int = 4,
    image_size: int = 32,
    eos_token_id: int = 0,
    text_tower: bool = False,
) -> ClipCapConfig:
    """The tiny architecture (with a CLIP text tower of the same tiny size if asked)."""
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,  # heads of 16: wide enough for the CPU attention kernel
        "image_size": image_size,
        "patch_size": 8,
        "projection_dim": 24,
    }
    text = {
        "vocab_size": vocab_size,
        "n_positions": 128,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
    }
    clip_text = {
        "vocab_size": vocab_size,  # the tiny models' CLIP tokenizer is their GPT-2 one
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 32,  # tokens per text: captions of shapes need ~10
        "projection_dim": vision["projection_dim"],
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,  # CLIP pools at the first end-of-text token
        "pad_token_id": eos_token_id,
    }
    return ClipCapConfig(
        clip_text_config=clip_text if text_tower else {},
        text_encoder="tiny-random-clip-text" if text_tower else "",
        mapping_type=mapping_type,
        prefix_length=prefix_length,
        clip_length=prefix_length,
        num_layers=2,
        num_heads=8,  # the reference mapper always has 8
        image_encoder="tiny-random-clip-vision",
        language_model="tiny-random-gpt2",
        image_size=image_size,
        vision_config=vision,
        text_config=text,
        source="make-tiny (random weights)",
    )


def make_tiny(out_dir: str | os.PathLike, mapping_type: MappingType = "mlp", seed: int = 0) -> Path:
    """Write a tiny random-weight model directory (with a text tower) and return its path.

    A trained one, which writes right captions of simple shapes: ``captioner.train.demo``."""
    tokenizer, model = tiny_tokenizer_and_model(mapping_type, seed)
    return save_pretrained(model, tokenizer, out_dir)


def tiny_tokenizer_and_model(
    mapping_type: MappingType = "mlp", seed: int = 0, *, text_tower: bool = True
) -> tuple[PreTrainedTokenizerBase, ClipCapModel]:
    """A tiny random model and its tokenizer (also its CLIP tokenizer, with a text tower)."""
    tokenizer = train_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(
        len(tokenizer), mapping_type, eos_token_id=tokenizer.eos_token_id, text_tower=text_tower
    )
    model = ClipCapModel.from_config(config)
    model.clip_tokenizer = tokenizer if text_tower else None
    # Random weights pick any token, and over a third of this vocabulary are bytes that are no
    # text alone (parts of multi-byte characters, control characters): captions of nothing
    # but those clean to "". Zero embeddings (tied to the output layer) give those tokens a
    # logit of 0, which the readable tokens' random logits outbid: the demo model writes.
    no_text = [i for i in range(len(tokenizer)) if any(map(unreadable, tokenizer.decode([i])))]
    with torch.no_grad():
        model.lm.get_input_embeddings().weight[no_text] = 0.0
    return tokenizer, model


def save_clip_model(model: ClipCapModel, out_dir: str | os.PathLike) -> Path:
    """Write a model's two CLIP towers as one ``CLIPModel`` directory with its tokenizer: what
    a CLIP repo on the Hub holds (``openai/clip-vit-base-patch32``), for offline tests of
    conversion and named models."""
    cfg = model.config
    config = CLIPConfig(
        text_config=cfg.clip_text_config,
        vision_config=cfg.vision_config,
        projection_dim=cfg.clip_dim,
    )
    clip = CLIPModel(config)
    clip.vision_model, clip.visual_projection = (
        model.vision.vision_model,
        model.vision.visual_projection,
    )
    clip.text_model, clip.text_projection = (
        model.clip_text.text_model,
        model.clip_text.text_projection,
    )
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(cfg.clip_logit_scale))
    out = Path(out_dir)
    clip.save_pretrained(out)
    model.clip_tokenizer.save_pretrained(out)
    return out
