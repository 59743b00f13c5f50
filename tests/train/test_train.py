"""`train`: both regimes, padding labels, checkpoints, exact resume, DDP, CLI errors.

Tiny model directories (conftest) and embedding stores filled here with clustered random
vectors (12 classes, one caption template each), made for the tiny model's own image encoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import png_bytes
from safetensors.torch import load_file

from captioner import Captioner
from captioner.cli.main import main
from captioner.config import ClipCapConfig
from captioner.errors import InvalidSettings, ModelError
from captioner.model.checkpoints import load_pretrained, save_pretrained
from captioner.model.tiny import make_tiny, save_clip_model
from captioner.train import options as O
from captioner.train import train as T
from captioner.train.checkpoint import (
    CHECKPOINTS,
    FINAL,
    checkpoint_dirs,
    read_checkpoint,
    save_checkpoint,
)
from captioner.train.collapse import Collapse, one_caption_for_all
from captioner.train.dataset import IGNORE, split_by_image, tokenize_captions
from captioner.train.encoder import load_encoder
from captioner.train.parts import ARCH_OPTIONS, architecture, build_model
from captioner.train.store import EmbeddingStore

REPO = Path(__file__).resolve().parents[2]
COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "star"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest


def make_store(path: Path, model_dir: Path, n: int = 48, seed: int = 0) -> Path:
    """``n`` images in 12 classes: embeddings near a class prototype, captions of two
    lengths (so batches have padding) that name the class."""
    info = load_encoder(str(model_dir), device="cpu").info
    store = EmbeddingStore.create(path, info, {"source": "test", "seed": seed}, shard_items=16)
    g = torch.Generator().manual_seed(seed)
    proto = 3 * torch.randn(12, info.clip_dim, generator=g)
    embeds = torch.stack(
        [proto[i % 12] + 0.1 * torch.randn(info.clip_dim, generator=g) for i in range(n)]
    )
    records = []
    for i in range(n):
        c, s = COLOURS[(i % 12) // 3], SHAPES[i % 3]
        cap = f"a {c} {s} on a white background." if i % 2 else f"a {c} {s}."
        records.append({"image": f"img-{i:03d}.png", "captions": [cap]})
    for start in range(0, n, 16):
        rows = slice(start, start + 16)
        store.append_shard(embeds[rows], records[rows], items=len(records[rows]))
    store.mark_complete()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_dir) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "emb", tiny_dir)


def options(store: Path, out: Path, init: Path, **kw) -> T.TrainOptions:
    base = {
        "embeddings": str(store),
        "out_dir": str(out),
        "init": str(init),
        "epochs": 2,
        "batch_size": 8,
        "lr": 2e-3,
        "warmup_steps": 2,
        "workers": 0,
        "log_every": 1,
        "samples": 1,
        "val_fraction": 0.1,
        "save_every": 0,
    }
    base.update(kw)
    return T.TrainOptions(**base)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / T.LOG_NAME).read_text().splitlines()]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and set(keys) == {k for k in b if k.startswith(prefix)}
    return all(torch.equal(a[k], b[k]) for k in keys)


# --- data ------------------------------------------------------------------------------


def test_batches_ignore_padding_never_label_it_zero(store, tiny_dir, tmp_path):
    trainer = T.Trainer(options(store, tmp_path / "run", tiny_dir))
    trainer.setup()
    eos = trainer.tokenizer.eos_token_id
    assert eos == 0  # the tiny tokenizer's end-of-text is id 0: padding with 0 labels would hurt
    batch = next(iter(trainer.loader))
    mask = batch["attention_mask"].bool()
    labels, ids = batch["labels"], batch["input_ids"]
    assert (~mask).any(), "captions of two lengths: this batch must hold padding"
    assert (labels[~mask] == IGNORE).all()
    assert (labels[mask] == ids[mask]).all()
    # every caption ends with a scored end-of-text, the only 0 label of its row
    last = labels[torch.arange(len(labels)), mask.sum(1) - 1]
    assert (last == eos).all()
    assert ((labels == 0).sum(1) == 1).all()
    assert batch["embeds"].shape == (len(labels), 24)


def test_tokenize_appends_eos_and_cuts(tiny_dir):
    _, tok = load_pretrained(tiny_dir)
    full, cut = tokenize_captions(tok, ["a red circle.", "a red circle."], 40)[0], None
    assert full[-1].item() == tok.eos_token_id and len(full) > 3
    cut = tokenize_captions(tok, ["a red circle on a white background."], 3)[0]
    assert len(cut) == 3 and tok.eos_token_id not in cut.tolist()  # cut: no false ending


def test_validation_is_split_by_image():
    records = [{"image": f"im{i // 3}", "captions": ["x"]} for i in range(60)]  # 3 rows/image
    train, val = split_by_image(records, 0.25, seed=1)
    assert sorted(train + val) == list(range(60))
    train_images = {records[i]["image"] for i in train}
    val_images = {records[i]["image"] for i in val}
    assert not train_images & val_images
    assert len(val_images) == 5  # 25% of 20 images
    assert split_by_image(records, 0.0, seed=1)[1] == []


# --- the two regimes -------------------------------------------------------------------


def test_mlp_regime_loss_falls_and_output_serves(store, tiny_dir, tmp_path):
    out = tmp_path / "run"
    final = T.train(options(store, out, tiny_dir, epochs=6, lr=3e-3))
    assert final == out / FINAL
    log = read_log(out)
    losses = [r["loss"] for r in log if "loss" in r]
    assert sum(losses[-5:]) < 0.75 * sum(losses[:5])
    epochs = [r for r in log if r.get("epoch_done")]
    assert len(epochs) == 6 and epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    assert epochs[-1]["samples"][0]["caption"]  # a sample caption was logged
    assert log[-1]["done"] is True

    init, trained = weights(tiny_dir), weights(final)
    assert same(init, trained, "vision.")  # the image encoder never trains
    assert not same(init, trained, "lm.")  # GPT-2 is fine-tuned in this regime
    assert not same(init, trained, "mapper.")

    cap = Captioner.from_pretrained(str(final), device="cpu")
    assert cap.config.source.startswith("trained with `python -m captioner train`")
    assert cap.config.mapping_type == "mlp"
    assert cap.caption(png_bytes())[0].text


@pytest.mark.parametrize("finetune", [False, True])
def test_transformer_regime_keeps_gpt2_frozen(tiny_transformer_dir, tmp_path, finetune):
    emb = make_store(tmp_path / "emb", tiny_transformer_dir)
    out = tmp_path / "run"
    opts = options(emb, out, tiny_transformer_dir, epochs=4, lr=3e-3, finetune_lm=finetune)
    if not finetune:
        opts.finetune_lm = None  # the regime's default: frozen
    final = T.train(opts)
    init, trained = weights(tiny_transformer_dir), weights(final)
    assert same(init, trained, "vision.")
    # CLIP's text tower and the confidence rule ride along untouched (--init keeps them)
    assert same(init, trained, "clip_text.") and any(k.startswith("clip_text.") for k in trained)
    assert load_pretrained(final)[0].has_text_tower
    assert same(init, trained, "lm.") is (not finetune)
    assert not same(init, trained, "mapper.")
    losses = [r["loss"] for r in read_log(out) if "loss" in r]
    assert sum(losses[-3:]) < sum(losses[:3])
    assert load_pretrained(final)[0].config.mapping_type == "transformer"


def test_keep_mapper_starts_from_the_init_mapper(store, tiny_dir, tmp_path):
    info = EmbeddingStore.open(store).encoder
    kept, _, _ = build_model(options(store, tmp_path, tiny_dir, keep_mapper=True), info)
    fresh, _, _ = build_model(options(store, tmp_path, tiny_dir), info)
    init = weights(tiny_dir)
    mapper = {f"mapper.{k}": v for k, v in kept.mapper.state_dict().items()}
    assert all(torch.equal(v, init[k]) for k, v in mapper.items())
    w = "mapper.model.0.weight"
    assert not torch.equal(fresh.mapper.state_dict()[w.removeprefix("mapper.")], init[w])
    with pytest.raises(InvalidSettings, match="prefix_length"):
        build_model(options(store, tmp_path, tiny_dir, keep_mapper=True, prefix_length=6), info)


def no_text_tower_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "no confidence scores" in r.getMessage()]


def test_parts_from_an_image_encoder_and_a_language_model(store, tiny_dir, tmp_path, caplog):
    """--image-encoder / --language-model: Hugging Face directories (or Hub ids). A CLIP
    vision model alone trains a model without a text tower, and says so once."""
    model, tok = load_pretrained(tiny_dir)
    model.vision.save_pretrained(tmp_path / "clip")
    model.lm.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    opts = options(store, tmp_path / "run", tiny_dir, max_steps=2, mapping="transformer")
    opts.init, opts.image_encoder, opts.language_model = (
        None,
        str(tmp_path / "clip"),
        str(tmp_path / "gpt2"),
    )
    final = T.train(opts)
    trained = load_pretrained(final)[0]
    cfg = trained.config
    assert cfg.image_encoder == str(tmp_path / "clip") and cfg.mapping_type == "transformer"
    assert cfg.language_model == str(tmp_path / "gpt2") and cfg.prefix_length == 10
    assert cfg.language == "en"  # nothing said: English, as ClipCap's
    assert same(weights(tiny_dir), weights(final), "lm.")  # transformer regime: frozen
    # no text tower in a vision model: none in the trained one, and one warning says so
    assert not trained.has_text_tower and cfg.text_encoder == ""
    assert not any(k.startswith("clip_text.") for k in weights(final))
    assert not (final / "clip_tokenizer").exists()
    (warning,) = no_text_tower_warnings(caplog)
    assert f"{tmp_path / 'clip'} is a CLIP vision model alone" in warning
    assert "openai/clip-vit-base-patch32" in warning and "\n" not in warning
    cap = Captioner.from_pretrained(str(final), device="cpu")
    assert not cap.can_score and cap.caption(png_bytes())[0].confidence is None

    # a language model that cannot be loaded: one typed line that says what to give
    opts.language_model = str(tmp_path / "nonexistent-gpt2")
    with pytest.raises(ModelError, match="--language-model") as e:
        build_model(opts, EmbeddingStore.open(store).encoder)
    assert e.value.code == "model_unavailable" and "\n" not in e.value.message
    assert "cannot load the language model" in e.value.message


@pytest.fixture(scope="module")
def clip_parts(tiny_dir, tmp_path_factory) -> tuple[Path, Path]:
    """tiny_dir's parts as Hugging Face directories: a whole CLIP model (both towers and the
    tokenizer, as openai/clip-vit-base-patch32 on the Hub) and a GPT-2 with its tokenizer."""
    model, tok = load_pretrained(tiny_dir)
    root = tmp_path_factory.mktemp("parts")
    clip = save_clip_model(model, root / "clip")
    model.lm.save_pretrained(root / "gpt2")
    tok.save_pretrained(root / "gpt2")
    return clip, root / "gpt2"


def test_a_whole_clip_model_as_the_image_encoder_keeps_its_text_tower(
    store, tiny_dir, clip_parts, tmp_path, monkeypatch, caplog
):
    """The text tower rides along frozen, on the CPU (never in the model that trains), into
    every checkpoint and the final model: a run resumed from a checkpoint keeps it too, and
    the trained model scores its captions."""
    clip, gpt2 = clip_parts
    out = tmp_path / "run"
    opts = options(store, out, tiny_dir, max_steps=4, save_every=2)
    opts.init, opts.image_encoder, opts.language_model = None, str(clip), str(gpt2)
    trainer = T.Trainer(opts)
    trainer.setup()
    assert trainer.model.clip_text is None  # not moved to the training device, not in DDP
    assert trainer.text_tower is not None and trainer.text_tower.model.device.type == "cpu"
    assert not no_text_tower_warnings(caplog)

    real_step, calls = T.train_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # after the step-2 checkpoint
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(T, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.setattr(T, "train_step", real_step)
    (checkpoint,) = checkpoint_dirs(out)
    assert load_pretrained(checkpoint)[0].has_text_tower
    opts.resume = True
    final = T.train(opts)

    tiny, trained = weights(tiny_dir), weights(final)
    assert same(tiny, trained, "clip_text.") and same(tiny, trained, "vision.")
    model = load_pretrained(final)[0]
    cfg, tiny_cfg = model.config, load_pretrained(tiny_dir)[0].config
    assert model.has_text_tower and (final / "clip_tokenizer").is_dir()
    assert cfg.text_encoder == str(clip)  # named after its source, as convert-clipcap does
    assert cfg.clip_text_config["projection_dim"] == cfg.clip_dim
    assert cfg.clip_logit_scale == pytest.approx(tiny_cfg.clip_logit_scale)
    default = ClipCapConfig()  # the default confidence rule: nothing calibrated it yet
    assert (cfg.confidence_center, cfg.confidence_slope) == (
        default.confidence_center,
        default.confidence_slope,
    )
    cap = Captioner.from_pretrained(str(final), device="cpu")
    assert cap.can_score
    result = cap.caption(png_bytes())[0]
    assert result.text and result.confidence is not None and 0.0 <= result.confidence <= 1.0


def test_a_clip_model_without_its_tokenizer_trains_without_a_text_tower(
    store, tiny_dir, clip_parts, tmp_path, caplog
):
    """CLIP weights whose tokenizer is not there (a CLIPModel saved alone) still train, as a
    vision model, and the warning says why the model will have no confidence scores
    (transformers 5 loads such a tokenizer as an empty one, which would score nonsense)."""
    clip, gpt2 = clip_parts
    bare = tmp_path / "clip"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip / name, bare / name)
    opts = options(store, tmp_path / "run", tiny_dir)
    opts.init, opts.image_encoder, opts.language_model = None, str(bare), str(gpt2)
    model, _, _ = build_model(opts, EmbeddingStore.open(store).encoder)
    assert not model.has_text_tower and not model.config.has_text_tower
    (warning,) = no_text_tower_warnings(caplog)
    # transformers 5 makes an empty tokenizer (refused here), transformers 4 raises
    assert warning.startswith(
        (
            f"{bare} has CLIP's weights but no tokenizer files",
            f"cannot load the CLIP text tower of '{bare}'",
        )
    )
    caplog.clear()
    build_model(opts, EmbeddingStore.open(store).encoder, main=False)  # torchrun's other ranks
    assert not no_text_tower_warnings(caplog)


# --- checkpoints and resume ------------------------------------------------------------


def test_checkpoints_keep_the_newest_k(store, tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    T.train(options(store, out, tiny_dir, epochs=3, save_every=2, keep=2))
    ckpts = checkpoint_dirs(out)
    total = read_log(out)[-1]["step"]
    assert [p.name for p in ckpts] == [f"step-{s:08d}" for s in (total - 2, total)]
    assert not [p for p in (out / CHECKPOINTS).iterdir() if p.name.startswith(".")]
    meta, state = read_checkpoint(ckpts[-1])  # weights_only load
    assert meta["step"] == total and meta["epoch"] == 3 and meta["batch"] == 0
    assert set(state) == {"optimizer", "scheduler", "scaler", "rng"} and len(state["rng"]) == 1
    assert load_pretrained(ckpts[0])[0].config.prefix_length == 4  # a servable model dir

    # a crash while writing a checkpoint leaves the others intact and no debris
    model, tok = load_pretrained(ckpts[-1])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(out, model, tok, state, {**meta, "step": total + 1}, keep=2)
    assert checkpoint_dirs(out) == ckpts
    assert sorted(p.name for p in (out / CHECKPOINTS).iterdir()) == [p.name for p in ckpts]


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_save_final_never_leaves_the_run_without_a_final_dir(tiny_dir, tmp_path, monkeypatch):
    """The old final is renamed aside, not deleted, before the new one is renamed in: a
    failure between the two puts it back; a crash there leaves it for the next save."""
    from captioner.train import checkpoint

    out = tmp_path / "run"
    out.mkdir()
    model, tok = load_pretrained(tiny_dir)
    final = checkpoint.save_final(out, model, tok)
    before = _tree(final)
    assert "config.json" in before and load_pretrained(final)[0] is not None
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src).name.startswith(f".tmp-{FINAL}-"):  # the new final's rename
            raise OSError("crash at the swap")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="crash at the swap"):
        checkpoint.save_final(out, model, tok)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert _tree(out / FINAL) == before  # the complete old one, still in place
    assert sorted(p.name for p in out.iterdir()) == [FINAL]  # no temp or aside debris

    # killed between the renames: the old final waits aside; the next save cleans up
    real_replace(out / FINAL, out / f".old-{FINAL}")
    checkpoint.save_final(out, model, tok)
    assert set(_tree(out / FINAL)) == set(before)  # a complete new one (same files)
    assert sorted(p.name for p in out.iterdir()) == [FINAL]
    shutil.copytree(out / FINAL, out / f".old-{FINAL}")  # killed after the second rename
    checkpoint.save_final(out, model, tok)
    assert sorted(p.name for p in out.iterdir()) == [FINAL]


def test_language_of_the_captions_is_stored_and_inherited(store, tiny_dir, tmp_path):
    """--language: the model directory says what language its captions are in; a run from
    --init keeps the init model's unless told otherwise."""
    german = T.train(options(store, tmp_path / "de", tiny_dir, max_steps=1, language="de"))
    assert Captioner.from_pretrained(str(german), device="cpu").language == "de"
    assert json.loads((german / "config.json").read_text())["language"] == "de"
    again = T.train(options(store, tmp_path / "again", german, max_steps=1))
    assert load_pretrained(again)[0].config.language == "de"


def test_max_steps_ends_the_run(store, tiny_dir, tmp_path):
    out = tmp_path / "run"
    T.train(options(store, out, tiny_dir, epochs=5, max_steps=4))
    log = read_log(out)
    assert log[-1] == {"step": 4, "done": True, "final": str(out / FINAL)}
    assert max(r["step"] for r in log) == 4
    meta, _ = read_checkpoint(checkpoint_dirs(out)[-1])
    assert (meta["step"], meta["epoch"], meta["batch"], meta["total_steps"]) == (4, 0, 4, 4)


@pytest.mark.parametrize(("crash_at", "workers"), [(10, 0), (5, 2), (3, 0)])
def test_resume_gives_the_uninterrupted_weights(
    store, tiny_dir, tmp_path, monkeypatch, crash_at, workers
):
    """Dropout is on (tiny GPT-2: 0.1), so the RNG states must be restored too. Crashes: in
    epoch 2 (after the step-8 checkpoint), in epoch 1 with loader workers, and before any
    checkpoint (the resumed run starts afresh)."""
    kw = {"epochs": 3, "save_every": 4, "workers": workers}
    a, b = tmp_path / "a", tmp_path / "b"
    T.train(options(store, a, tiny_dir, **kw))

    real_step, calls = T.train_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == crash_at:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(T, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        T.train(options(store, b, tiny_dir, **kw))
    monkeypatch.setattr(T, "train_step", real_step)
    assert not (b / FINAL).exists()
    T.train(options(store, b, tiny_dir, resume=True, **kw))

    assert same(weights(a / FINAL), weights(b / FINAL))
    # the logged losses match step by step (the interrupted run's extra lines were dropped)
    steps = lambda out: [(r["step"], r["loss"]) for r in read_log(out) if "loss" in r]  # noqa: E731
    assert steps(a) == steps(b)


def test_resume_refuses_other_settings_and_reruns_need_resume(store, tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    T.train(options(store, out, tiny_dir, max_steps=2))
    capsys.readouterr()
    base = ["train", str(store), str(out), "--init", str(tiny_dir), "--workers", "0"]
    assert main([*base, "--batch-size", "8", "--lr", "0.002", "--warmup-steps", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: output_exists:") and "--resume" in err
    assert main([*base, "--resume", "--lr", "0.5"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: resume_mismatch:") and "lr" in err and "\n" not in err


# --- DDP -------------------------------------------------------------------------------


def test_torchrun_two_processes_on_cpu(store, tiny_dir, tmp_path):
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = (
        [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    )
    cmd = [
        *launcher,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "captioner",
        "train",
        str(store),
        str(out),
        "--init",
        str(tiny_dir),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--save-every",
        "3",
        "--log-every",
        "1",
        "--warmup-steps",
        "2",
        "--lr",
        "0.002",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "x 2 processes" in r.stderr
    assert r.stdout.strip().splitlines() == [str(out / FINAL)]  # rank 0 alone prints
    log = read_log(out)
    steps = [x["step"] for x in log if "loss" in x]
    assert steps == list(range(1, len(steps) + 1))  # one line per step: only rank 0 logs
    # 43 training captions over 2 ranks of batch 4: 6 steps an epoch
    assert steps[-1] == 12
    meta, state = read_checkpoint(checkpoint_dirs(out)[-1])
    assert meta["identity"]["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    cap = Captioner.from_pretrained(str(out / FINAL), device="cpu")
    assert cap.caption(png_bytes())[0].text


# --- CLI errors ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory) -> Path:
    """A tiny model whose image encoder has other weights than tiny_dir's."""
    return make_tiny(tmp_path_factory.mktemp("other"), "mlp", seed=1)


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        (["--epochs", "0"], "invalid_settings"),
        (["--precision", "fp16", "--device", "cpu"], "invalid_settings"),
        (["--val-fraction", "1.5"], "invalid_settings"),
        (["--language", "English"], "invalid_settings"),
        (["--language", "en_US"], "invalid_settings"),
        (["--keep-mapper", "--image-encoder", "x"], "invalid_settings"),
        (["--init", "OTHER"], "encoder_mismatch"),
        (["--image-encoder", "/nonexistent/clip"], "model_unavailable"),
        (["--init", "/nonexistent/model"], "model_not_found"),
    ],
)
def test_cli_user_errors_are_one_line(store, tiny_dir, other_dir, tmp_path, capsys, extra, code):
    extra = [str(other_dir) if a == "OTHER" else a for a in extra]
    init = (
        [] if any(a in ("--init", "--image-encoder") for a in extra) else ["--init", str(tiny_dir)]
    )
    rc = main(["train", str(store), str(tmp_path / "run"), *init, *extra, "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith(f"error: {code}:"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_missing_store_is_one_line(tiny_dir, tmp_path, capsys):
    rc = main(["train", str(tmp_path / "none"), str(tmp_path / "run"), "--init", str(tiny_dir)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error: invalid_embeddings:") and "embed" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(("bf16_cpu", "want"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_the_cpu_follows_its_instructions(monkeypatch, bf16_cpu, want):
    from captioner.runtime import cpu_kernel
    from captioner.train.train import resolve_precision

    monkeypatch.setattr(cpu_kernel, "cpu_supported", lambda: bf16_cpu)
    assert resolve_precision("auto", torch.device("cpu")) == want
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"  # asked for: kept


# --- a model directory given as a part (issue 19, item 11) -----------------------------


def test_a_model_directory_given_as_a_part_loads_as_that_part(store, tiny_dir, tmp_path):
    """`--image-encoder DIR --language-model DIR` with AltCap model directories: their vision
    tower and their GPT-2 + tokenizer, quietly, as --init would (it printed transformers'
    load report of unexpected keys, loaded a random tower, then died in a traceback)."""
    out = tmp_path / "run"
    argv = ["train", str(store), str(out), "--image-encoder", str(tiny_dir)]
    argv += ["--language-model", str(tiny_dir), "--mapping", "transformer", "--max-steps", "2"]
    argv += ["--workers", "0", "--lr", "2e-3", "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "captioner", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "UNEXPECTED" not in r.stderr and "Traceback" not in r.stderr
    assert "LOAD REPORT" not in r.stderr
    init, trained = weights(tiny_dir), weights(out / FINAL)
    assert same(init, trained, "vision.")  # the model's own tower, not a random one
    assert same(init, trained, "lm.")  # its GPT-2 (frozen in the transformer regime)
    cfg = load_pretrained(out / FINAL)[0].config
    assert cfg.image_encoder == "tiny-random-clip-vision"  # where that tower came from
    assert cfg.language_model == "tiny-random-gpt2"
    # its CLIP text tower and confidence rule come with its vision tower, as with --init
    assert same(init, trained, "clip_text.") and cfg.text_encoder == "tiny-random-clip-text"
    assert "no confidence scores" not in r.stderr


def test_a_part_of_another_kind_is_refused_in_one_line(store, tiny_dir, tmp_path, capsys):
    """A GPT-2 directory as the image encoder (or a CLIP one as the language model) would
    load as a random part: refused, naming what to give, --init among it."""
    model, tok = load_pretrained(tiny_dir)
    model.vision.save_pretrained(tmp_path / "clip")
    model.lm.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()  # transformers' "Writing model shards" bars
    base = ["train", str(store), str(tmp_path / "run"), "--workers", "0"]
    for wrong in (
        ["--image-encoder", str(tmp_path / "gpt2"), "--language-model", str(tmp_path / "gpt2")],
        ["--image-encoder", str(tmp_path / "clip"), "--language-model", str(tmp_path / "clip")],
    ):
        assert main([*base, *wrong]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: model_unavailable:") and "weights are missing" in err
        assert "--init" in err and len(err.splitlines()) == 1


# --- options: one declaration (item 12) ------------------------------------------------


def _help() -> str:
    parser = argparse.ArgumentParser(prog="train", formatter_class=Wide)
    O.add_arguments(parser)
    return parser.format_help()


class Wide(argparse.HelpFormatter):
    """One option a line in the help, so each option's text can be found whole."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=80, width=10_000)


def test_train_options_are_declared_once():
    """argparse is built from TrainOptions: the parsed defaults are the dataclass's, every
    field has its flag, and the help shows each default as the run takes it."""
    parser = argparse.ArgumentParser(prog="train")
    O.add_arguments(parser)
    args = parser.parse_args(["EMB", "OUT"])
    assert O.options_from_args(args) == T.TrainOptions("EMB", "OUT")
    help_lines = [line for line in _help().splitlines() if line.startswith("  --")]
    lines = {line.split()[0].rstrip(","): line for line in help_lines}
    fields = [f.name for f in dataclasses.fields(T.TrainOptions)][2:]
    assert sorted(lines) == sorted(O.flag(name) for name in fields)
    assert "(default: 40)" in lines["--batch-size"] and "(default: 2e-05)" in lines["--lr"]
    # --init's values are the defaults of the model options, and the help says so
    assert set(O.from_init()) == set(ARCH_OPTIONS.values())
    for name in O.from_init():
        assert (
            f"(default: --init's, else {shown(T.TrainOptions.paper(name))})" in lines[O.flag(name)]
        ), name
        assert O.flag(name) in lines["--init"]
    assert "(default: 10)" not in lines["--prefix-length"]  # a tiny --init model's is 4
    # --precision auto: what resolve_precision does on the CPU, not "fp32 on the CPU"
    assert "on the CPU bf16 where it has bfloat16 instructions" in lines["--precision"]


def shown(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def test_a_blank_model_option_takes_the_paper_value_declared_with_it(store, tiny_dir, tmp_path):
    opts = options(store, tmp_path, tiny_dir)
    opts.init = None
    arch = architecture(opts, None)
    assert arch["prefix_length"] == T.TrainOptions.paper("prefix_length") == 10
    assert arch["mapping_type"] == "mlp" and arch["normalize_prefix"] is False
    assert (
        architecture(options(store, tmp_path, tiny_dir), load_pretrained(tiny_dir)[0].config)[
            "prefix_length"
        ]
        == 4
    )  # --init's


def test_docs_document_the_train_options():
    """The training page's option table is options_table() (``python docs/generate.py``
    rewrites it)."""
    assert O.options_table() in (REPO / "docs" / "training.md").read_text(encoding="utf-8")


# --- collapse: one caption for every image (item 13) -----------------------------------


def collapsed_model(tiny_dir: Path, out: Path) -> Path:
    """The tiny model with its mapper's weights zeroed: the prefix is its bias alone, the
    same for every image, as a mapper that has learnt nothing yet."""
    model, tok = load_pretrained(tiny_dir)
    with torch.no_grad():
        for name, p in model.mapper.named_parameters():
            if name.endswith("weight"):
                p.zero_()
    return save_pretrained(model, tok, out)


def test_one_caption_for_every_held_out_image_warns_pointing_at_lr(
    store, tiny_dir, tmp_path, capsys
):
    init = collapsed_model(tiny_dir, tmp_path / "init")
    out = tmp_path / "run"
    T.train(options(store, out, init, keep_mapper=True, lr=2e-5, max_steps=2, epochs=1))
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    assert warning.startswith("warning: one caption for all ") and "held-out images" in warning
    assert "--lr (2e-05 now" in warning and "small-set recipe" in warning
    epoch = next(r for r in read_log(out) if "val_loss" in r)
    assert epoch["distinct_captions"] == 1 and epoch["probed_images"] >= 4


def test_one_caption_for_all_needs_images_with_different_references():
    refs = ["a red circle.", "a blue star.", "a red circle.", "a green square."]
    assert one_caption_for_all(["x"] * 4, refs) == Collapse("x", 4, 1, 4)
    assert one_caption_for_all(["x"] * 9 + ["y"], refs * 2 + refs[:2]).count == 9
    assert one_caption_for_all(["x", "y", "x", "y"], refs) is None  # references: 3 things
    assert one_caption_for_all(["x"] * 3, refs[:3]) is None  # too few to tell
    assert one_caption_for_all(["x"] * 4, ["a cat."] * 4) is None  # so are the references
    # two captions for images of many kinds: as good as one
    many = [f"a {c} {s}." for c in COLOURS for s in SHAPES]
    two = one_caption_for_all(["x"] * 8 + ["y"] * 4, many)
    assert two == Collapse("x", 8, 2, 12)
    assert two.describe("images") == "2 captions for 12 images (8 of them: 'x')"
    assert one_caption_for_all(["x"] * 8 + ["y"] * 3 + ["z"], many) is None


# --- the progress bar's loss (item 14) -------------------------------------------------


def test_progress_bar_loss_moves_every_step(store, tiny_dir, tmp_path, monkeypatch):
    """The bar showed the mean of each --log-every window only at its end: it looked stuck.
    Now a running average, every step, from values already on the host."""
    bars = []

    class Bar:
        def __init__(self, *args, **kwargs):
            self.postfix, self.updates = [], 0
            bars.append(self)

        def set_postfix(self, refresh=True, **kw):
            self.postfix.append((self.updates, kw))

        def update(self, n=1):
            self.updates += n

        def close(self):
            pass

        write = staticmethod(lambda *args, **kwargs: None)

    monkeypatch.setattr(T, "tqdm", Bar)
    T.train(options(store, tmp_path / "run", tiny_dir, epochs=2, log_every=1000, lr=3e-3))
    losses = [float(kw["loss"]) for bar in bars for _, kw in bar.postfix]
    steps = sum(bar.updates for bar in bars)
    assert steps > 10 and len(losses) == steps  # every step
    assert len(set(losses)) > steps // 2  # and it moves
    assert losses[-1] < losses[0]


def test_running_loss_is_a_bias_corrected_average():
    meter = T.RunningLoss(torch.device("cpu"))
    assert meter.update(torch.tensor(2.0)) == pytest.approx(2.0)  # not 0.05 x 2
    for _ in range(200):
        value = meter.update(torch.tensor(1.0))
    assert value == pytest.approx(1.0, abs=1e-4)


def test_running_loss_on_a_gpu_never_waits():
    """On a GPU the average is copied to the host asynchronously: a step shows the newest
    copy that has arrived and starts another only then (faked here: no GPU in CI)."""

    class Event:  # torch.cuda.Event's two calls, finished when the test says so
        done = False

        def record(self):
            self.done = False

        def query(self):
            return self.done

    meter = T.RunningLoss(torch.device("cpu"))
    meter.cuda, meter.event = True, Event()
    assert meter.update(torch.tensor(2.0)) is None  # a copy in flight, nothing to show yet
    assert meter.update(torch.tensor(2.0)) is None  # still in flight: no wait, no new copy
    meter.event.done = True
    assert meter.update(torch.tensor(1.0)) == pytest.approx(2.0)  # step 1's, arrived
    assert meter.copied_at == 3  # and step 3's is on its way
    meter.event.done = True
    assert meter.update(torch.tensor(1.0)) < 2.0
