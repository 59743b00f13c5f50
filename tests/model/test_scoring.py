"""CLIP's text tower in model directories, token ids for it, and the confidence rule."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import write_reference_parts
from transformers import GPT2Config

from captioner.config import ClipCapConfig
from captioner.errors import InvalidSettings
from captioner.model.checkpoints import (
    CLIP_TOKENIZER_DIR,
    convert_checkpoint,
    load_clip_towers,
    load_pretrained,
    save_pretrained,
)
from captioner.model.scoring import clip_token_ids, confidence, fit_confidence
from captioner.model.tiny import save_clip_model, tiny_tokenizer_and_model


def test_token_ids_end_with_the_end_of_text_token():
    tok, _ = tiny_tokenizer_and_model("mlp")
    eos = tok.eos_token_id
    ids, mask = clip_token_ids(tok, ["a red circle.", "a blue star on a white background."], 32)
    lengths = mask.sum(1)
    for row, n in zip(ids, lengths, strict=True):
        assert row[n - 1] == eos and eos not in row[: n - 1].tolist()  # CLIP pools at the first
    long_ids, long_mask = clip_token_ids(tok, ["a red circle " * 40], 16)
    assert long_ids.shape == (1, 16) and long_ids[0, -1] == eos and long_mask.all()


def test_text_tower_round_trips_through_a_model_dir(tmp_path):
    tok, model = tiny_tokenizer_and_model("mlp", seed=3)
    out = save_pretrained(model, tok, tmp_path / "m")
    assert (out / CLIP_TOKENIZER_DIR / "tokenizer_config.json").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["clip_text_config"]["projection_dim"] == 24 and cfg["text_encoder"]
    loaded, _ = load_pretrained(out)
    assert loaded.has_text_tower
    ids, mask = clip_token_ids(loaded.clip_tokenizer, ["a green square."], 32)
    torch.testing.assert_close(loaded.encode_texts(ids, mask), model.eval().encode_texts(ids, mask))
    save_pretrained(model, tok, out)  # saving again over it replaces the tokenizer folder
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_dir_without_text_tower_still_loads(tmp_path):
    tok, model = tiny_tokenizer_and_model("mlp", text_tower=False)
    out = save_pretrained(model, tok, tmp_path / "m")
    assert not (out / CLIP_TOKENIZER_DIR).exists()
    cfg = json.loads((out / "config.json").read_text())
    for key in ("clip_text_config", "text_encoder"):  # as a directory saved before them
        cfg.pop(key)
    (out / "config.json").write_text(json.dumps(cfg))
    loaded, _ = load_pretrained(out)
    assert not loaded.has_text_tower and loaded.clip_text is None


def test_convert_takes_the_text_tower_from_the_clip_model(tmp_path):
    pt, _vision_dir, lm_dir, original = write_reference_parts(tmp_path / "ref", "mlp", seed=5)
    clip_dir = save_clip_model(original, tmp_path / "clip")
    _vision, text = load_clip_towers(clip_dir)
    assert text is not None and text.logit_scale == pytest.approx(100.0)
    out = convert_checkpoint(
        pt,
        tmp_path / "out",
        mapping_type="mlp",
        vision_source=clip_dir,
        text_source=lm_dir,
        prefix_length=4,
        image_encoder="openai/clip-vit-base-patch32",
    )
    model, _ = load_pretrained(out)
    assert model.config.text_encoder == "openai/clip-vit-base-patch32"
    original.eval()
    ids, mask = clip_token_ids(model.clip_tokenizer, ["a red circle.", "a dog."], 32)
    torch.testing.assert_close(model.encode_texts(ids, mask), original.encode_texts(ids, mask))
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.encode_images(pixels), original.encode_images(pixels))


def test_clip_weights_without_their_tokenizer_are_refused(tmp_path):
    """A CLIPModel saved without its tokenizer files: transformers 5 loads an empty tokenizer
    that would give every text the same few ids; the converter refuses it in one line."""
    import shutil

    from captioner.errors import ModelError

    _, _, _, original = write_reference_parts(tmp_path / "ref", "mlp", seed=5)
    clip_dir = save_clip_model(original, tmp_path / "clip")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip_dir / name, bare / name)
    with pytest.raises((ModelError, OSError)) as refused:  # OSError: transformers 4's own
        load_clip_towers(bare)
    if isinstance(refused.value, ModelError):
        assert "no tokenizer files" in refused.value.message
        assert str(bare) in refused.value.message


def test_confidence_rule():
    cfg = ClipCapConfig()  # the CLIPScore tangent: 0.5 at cosine 0.2
    cos = torch.tensor([-1.0, 0.1, 0.2, 0.3, 1.0])
    c = confidence(cos, cfg)
    assert torch.all((c > 0) & (c < 1)) and torch.all(c.diff() > 0)
    assert c[2] == pytest.approx(0.5)
    # within 0.03 of CLIPScore (2.5 * cosine) where CLIP ViT-B/32 puts captions
    for x in (0.1, 0.15, 0.25, 0.3):
        assert float(confidence(torch.tensor(x), cfg)) == pytest.approx(2.5 * x, abs=0.03)


def test_fit_confidence_finds_the_boundary():
    g = torch.Generator().manual_seed(0)
    right = 0.5 + 0.05 * torch.randn(400, generator=g)
    wrong = 0.3 + 0.05 * torch.randn(400, generator=g)
    center, slope = fit_confidence(right, wrong)
    assert center == pytest.approx(0.4, abs=0.01) and slope > 10


def test_text_tower_must_match_the_image_tower():
    with pytest.raises(InvalidSettings, match="projects to 16"):
        ClipCapConfig(
            vision_config={"projection_dim": 24},
            text_config=GPT2Config().to_dict(),
            clip_text_config={"projection_dim": 16},
        ).validate()


def test_the_lean_text_forward_equals_the_module():
    """The pipeline's CPU text forward (runtime/text.py): the same embeddings, padding too."""
    from captioner.runtime.text import LeanText

    tok, model = tiny_tokenizer_and_model("mlp", seed=1)
    model.eval()
    texts = ["a red circle.", "an orange star on a white background.", ""]
    ids, mask = clip_token_ids(tok, texts, 32)
    torch.testing.assert_close(LeanText(model.clip_text)(ids, mask), model.encode_texts(ids, mask))
