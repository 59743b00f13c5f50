"""Model directories and the import of reference ClipCap checkpoints."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from helpers import write_reference_parts
from transformers import CLIPVisionModelWithProjection, GPT2Config

from captioner.errors import CheckpointMismatch, ModelError, ModelNotFound
from captioner.model.checkpoints import (
    convert_reference,
    load_pretrained,
    load_reference_checkpoint,
    save_pretrained,
)
from captioner.model.modeling import MLPMapper
from captioner.model.tiny import tiny_tokenizer_and_model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("mapping", ["mlp", "transformer"])
def test_save_and_load_round_trip(tmp_path, mapping):
    tok, model = tiny_tokenizer_and_model(mapping, seed=2)
    model.config.normalize_prefix = True
    out = save_pretrained(model, tok, tmp_path / "m")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= names
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")], names
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "clipcap" and cfg["mapping_type"] == mapping
    assert cfg["normalize_prefix"] is True and cfg["vision_config"]["projection_dim"] == 24
    loaded, tok2 = load_pretrained(out)
    _same_weights(model, loaded)
    assert loaded.lm.lm_head.weight is loaded.lm.transformer.wte.weight  # still tied
    assert tok2.encode("a red circle.") == tok.encode("a red circle.")


def test_load_reports_missing_and_broken_dirs(tmp_path):
    with pytest.raises(ModelNotFound):
        load_pretrained(tmp_path)
    tok, model = tiny_tokenizer_and_model("mlp")
    out = save_pretrained(model, tok, tmp_path / "m")
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError) as e:
        load_pretrained(out)
    assert "model.safetensors" in e.value.message


def test_load_checks_every_shape(tmp_path):
    tok, model = tiny_tokenizer_and_model("mlp")
    out = save_pretrained(model, tok, tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    cfg["prefix_length"] = 5  # the saved mapper was built for 4
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatch) as e:
        load_pretrained(out)
    assert "mapper.model.2.weight" in e.value.message and e.value.code == "checkpoint_mismatch"


@pytest.mark.parametrize("mapping", ["mlp", "transformer"])
def test_reference_checkpoint_converts_exactly(tmp_path, mapping):
    pt, vision_dir, lm_dir, original = write_reference_parts(tmp_path, mapping, seed=4)
    state = load_reference_checkpoint(pt)
    model = convert_reference(
        state,
        mapping_type=mapping,
        vision=CLIPVisionModelWithProjection.from_pretrained(vision_dir),
        text_config=GPT2Config.from_pretrained(lm_dir),
        prefix_length=4,
        clip_length=4,
        num_layers=2,
    )
    original.eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        emb = model.encode_images(pixels)
        torch.testing.assert_close(emb, original.encode_images(pixels))
        ids = torch.randint(0, 50, (2, 5))
        got = model(emb, ids).logits
        want = original(emb, ids).logits
    torch.testing.assert_close(got, want)


def test_reference_checkpoint_mismatch_is_explained(tmp_path):
    pt, vision_dir, lm_dir, _original = write_reference_parts(tmp_path, "mlp")
    state = load_reference_checkpoint(pt)
    # a checkpoint trained on a 40-d CLIP (as a 640-d RN50x4 one is for a 512-d ViT-B/32)
    wide = MLPMapper(clip_dim=40, gpt_dim=32, prefix_length=4).state_dict()
    state.update({f"clip_project.{k}": v for k, v in wide.items()})
    kwargs = dict(
        vision=CLIPVisionModelWithProjection.from_pretrained(vision_dir),
        text_config=GPT2Config.from_pretrained(lm_dir),
        prefix_length=4,
        image_encoder="tiny-clip",
    )
    with pytest.raises(CheckpointMismatch) as e:
        convert_reference(state, mapping_type="mlp", **kwargs)
    assert "40-d CLIP embeddings" in e.value.message and "gives 24-d" in e.value.message
    with pytest.raises(CheckpointMismatch) as e:
        convert_reference(load_reference_checkpoint(pt), mapping_type="transformer", **kwargs)
    assert "mlp mapper" in e.value.message
    with pytest.raises(CheckpointMismatch) as e:
        convert_reference(
            load_reference_checkpoint(pt), mapping_type="mlp", **{**kwargs, "prefix_length": 10}
        )
    assert "prefix length is 4, not 10" in e.value.message


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/altcap-pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_reference_loader_refuses_pickled_code(tmp_path):
    import os

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"clip_project.model.0.weight": _Exploit()}, f)
    with pytest.raises(ModelError):
        load_reference_checkpoint(path)
    assert not os.path.exists("/tmp/altcap-pwned")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError):
        load_reference_checkpoint(tmp_path / "junk.pt")
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointMismatch):
        convert_reference(
            load_reference_checkpoint(tmp_path / "other.pt"),
            mapping_type="mlp",
            vision=None,  # never reached: the layout check comes first
            text_config=GPT2Config(),
        )
