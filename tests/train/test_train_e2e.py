"""End to end through the CLI: synthetic shapes → `embed` → `train` → `evaluate` → serve.

A tiny model learns to name the colour and the shape of held-out images. Its image encoder has
random weights, so it is built to keep what the task needs: one 32-pixel patch (the whole
image) into 256 features, white mapped to 0 by the pixel normalisation, and no class or
position embedding, so that the embedding varies with the shape instead of being dominated
by what every image shares. GPT-2 is the tiny one without dropout (it learns in fewer steps).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from captioner import Captioner
from captioner.cli.main import main
from captioner.model.checkpoints import save_pretrained
from captioner.model.modeling import ClipCapModel
from captioner.model.tiny import tiny_config, train_tokenizer
from captioner.train.synthetic import make_shapes, shape_vocabulary

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest


def shape_model(out: Path) -> Path:
    tokenizer = train_tokenizer()
    torch.manual_seed(0)
    config = tiny_config(len(tokenizer), "mlp", eos_token_id=tokenizer.eos_token_id)
    config.vision_config.update(
        hidden_size=256, intermediate_size=512, patch_size=32, projection_dim=128
    )
    config.image_mean, config.image_std = (1.0, 1.0, 1.0), (0.5, 0.5, 0.5)
    config.text_config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = ClipCapModel.from_config(config)
    with torch.no_grad():
        model.vision.vision_model.embeddings.class_embedding.zero_()
        model.vision.vision_model.embeddings.position_embedding.weight.zero_()
    return save_pretrained(model, tokenizer, out)


def named(caption: str) -> tuple[set[str], set[str]]:
    colours, shapes = shape_vocabulary()
    words = caption.lower().replace(".", " ").split()
    return {w for w in words if w in colours}, {w for w in words if w in shapes}


@pytest.mark.slow
def test_shapes_embed_train_evaluate(tmp_path, capsys):
    model_dir = shape_model(tmp_path / "init")
    train_set = make_shapes(tmp_path / "train", 1440, seed=0, layout="folder")
    test_ann = make_shapes(tmp_path / "test", 96, seed=1, layout="coco")  # held out

    emb = tmp_path / "emb"
    assert (
        main(["embed", str(train_set), str(emb), "--model", str(model_dir), "--no-progress"]) == 0
    )

    run = tmp_path / "run"
    train_args = ["--init", str(model_dir), "--prefix-length", "10", "--epochs", "10"]
    train_args += ["--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "30"]
    train_args += ["--val-fraction", "0.05", "--workers", "0", "--save-every", "0"]
    train_args += ["--log-every", "10"]
    assert main(["train", str(emb), str(run), *train_args]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert sum(losses[-5:]) < 0.05 * sum(losses[:5])  # the loss falls, by far
    epochs = [r for r in log if r.get("epoch_done")]
    assert len(epochs) == 10 and epochs[-1]["val_loss"] < 0.2 * epochs[0]["val_loss"]

    report, captions = tmp_path / "report.json", tmp_path / "captions.json"
    final = run / "final"
    eval_args = ["--out", str(report), "--captions-out", str(captions), "--no-progress"]
    assert main(["evaluate", str(final), str(test_ann), *eval_args]) == 0
    capsys.readouterr()

    doc = json.loads(test_ann.read_text())
    truth = {a["image_id"]: named(a["caption"]) for a in doc["annotations"]}
    results = json.loads(captions.read_text())
    assert len(results) == 96
    right = [r for r in results if named(r["caption"]) == truth[r["image_id"]]]
    assert len(right) >= 0.9 * len(results), [r["caption"] for r in results][:20]

    metrics = json.loads(report.read_text())["metrics"]
    assert all(isinstance(metrics[m], float) for m in metrics)
    assert metrics["Bleu_4"] > 0.5 and metrics["CIDEr"] > 1.0

    # the service's loader takes the trained directory as it is, and captions the same
    cap = Captioner.from_pretrained(str(final), device="cpu")
    first = doc["images"][0]
    text = cap.caption(str(test_ann.parent / "images" / first["file_name"]))[0].text
    assert text == next(r["caption"] for r in results if r["image_id"] == first["id"])
