"""Tiny random-weight models that work fully offline, for tests, demos and smoke checks.

The architecture is the real one (CLIP vision tower, mapping network, GPT-2) at toy sizes,
with a byte-level BPE tokenizer trained on a few caption-like sentences.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2TokenizerFast, PreTrainedTokenizerBase

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
) -> ClipCapConfig:
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
    return ClipCapConfig(
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
    """Write a tiny random-weight model directory and return its path."""
    tokenizer, model = tiny_tokenizer_and_model(mapping_type, seed)
    return save_pretrained(model, tokenizer, out_dir)


def tiny_tokenizer_and_model(
    mapping_type: MappingType = "mlp", seed: int = 0
) -> tuple[PreTrainedTokenizerBase, ClipCapModel]:
    tokenizer = train_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(len(tokenizer), mapping_type, eos_token_id=tokenizer.eos_token_id)
    model = ClipCapModel.from_config(config)
    # Random weights pick any token, and over a third of this vocabulary are bytes that are no
    # text alone (parts of multi-byte characters, control characters): captions of nothing
    # but those clean to "". Zero embeddings (tied to the output layer) give those tokens a
    # logit of 0, which the readable tokens' random logits outbid: the demo model writes.
    no_text = [i for i in range(len(tokenizer)) if any(map(unreadable, tokenizer.decode([i])))]
    with torch.no_grad():
        model.lm.get_input_embeddings().weight[no_text] = 0.0
    return tokenizer, model
