"""The embed step: every layout end to end, skipped images, resume, refusals, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from captioner.cli.main import main
from captioner.errors import ModelError
from captioner.images import load_image
from captioner.train.data import read_dataset
from captioner.train.embed import DatasetMismatch, embed_dataset
from captioner.train.encoder import load_encoder
from captioner.train.store import EmbeddingStore, EncoderMismatch
from captioner.train.synthetic import LAYOUTS, make_shapes


@pytest.fixture(scope="module")
def encoder(tiny_dir):
    return load_encoder(str(tiny_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def vision_dir(tiny_dir, tmp_path_factory):
    """The tiny model's vision tower saved as a plain CLIPVisionModelWithProjection directory."""
    from captioner.model.checkpoints import load_pretrained

    model, _ = load_pretrained(tiny_dir)
    out = tmp_path_factory.mktemp("vision")
    model.vision.save_pretrained(out)
    cfg = model.config
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": cfg.image_size, "width": cfg.image_size},
                "size": {"shortest_edge": cfg.image_size},
                "image_mean": list(cfg.image_mean),
                "image_std": list(cfg.image_std),
            }
        )
    )
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_end_to_end(tmp_path, encoder, tiny_captioner, layout):
    path = make_shapes(tmp_path / "set", 10, layout=layout, image_size=40, captions_per_image=2)
    items = read_dataset(path)
    store = embed_dataset(
        items, encoder, tmp_path / "out", batch_size=4, shard_size=4, progress=False
    )
    assert [s.items for s in store.index.shards] == [4, 4, 2]
    embeds, records = EmbeddingStore.open(tmp_path / "out").load()
    assert embeds.shape == (10, encoder.info.clip_dim)
    assert records == [it.to_record() for it in items]
    # the same numbers the Captioner computes for the same image at caption time
    im = load_image(items[7].image)
    expected = tiny_captioner.embed(tiny_captioner.preprocess([im]))[0]
    torch.testing.assert_close(embeds[7], expected, atol=1e-5, rtol=1e-4)
    assert store.encoder.weights_sha and store.index.dataset["items"] == 10


def test_bad_and_missing_images_are_skipped_and_counted(tmp_path, tiny_dir, capsys):
    path = make_shapes(tmp_path / "set", 9, layout="csv")
    images = tmp_path / "set" / "images"
    (images / "shape-00000.png").unlink()
    (images / "shape-00001.png").unlink()  # the whole first shard is missing
    (images / "shape-00004.png").write_bytes(b"<html>not a png</html>")
    data = (images / "shape-00006.png").read_bytes()
    (images / "shape-00006.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert (
        main(
            [
                "embed",
                str(path),
                str(out),
                "--model",
                str(tiny_dir),
                "--shard-size",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "embedded 5 of 9 images" in captured.out
    assert "4 skipped: 2 image_missing" in captured.out
    assert "not_an_image" in captured.out and "truncated_image" in captured.out
    assert captured.err.count("skipped ") == 4
    store = EmbeddingStore.open(out)
    assert store.index.shards[0].rows == 0 and store.index.items_done == 9
    skipped = {s["image"].rsplit("/", 1)[1]: s["code"] for s in store.index.skipped}
    assert skipped == {
        "shape-00000.png": "image_missing",
        "shape-00001.png": "image_missing",
        "shape-00004.png": "not_an_image",
        "shape-00006.png": "truncated_image",
    }
    embeds, records = store.load()
    assert embeds.shape[0] == 5 and [r["image"][-9:-4] for r in records] == [
        "00002",
        "00003",
        "00005",
        "00007",
        "00008",
    ]


def _interrupt_after(monkeypatch, shards: int, exc=RuntimeError):
    real = EmbeddingStore.append_shard
    calls = {"n": 0}

    def append(self, *a, **kw):
        if calls["n"] == shards:
            raise exc("injected failure")
        calls["n"] += 1
        return real(self, *a, **kw)

    monkeypatch.setattr(EmbeddingStore, "append_shard", append)
    return lambda: monkeypatch.setattr(EmbeddingStore, "append_shard", real)


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, encoder, monkeypatch):
    items = read_dataset(make_shapes(tmp_path / "set", 11, layout="jsonl"))
    (tmp_path / "set" / "images" / "shape-00009.png").unlink()
    whole = embed_dataset(
        items, encoder, tmp_path / "whole", batch_size=3, shard_size=4, progress=False
    )

    restore = _interrupt_after(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="injected"):
        embed_dataset(items, encoder, tmp_path / "part", batch_size=3, shard_size=4, progress=False)
    restore()
    part = EmbeddingStore.open(tmp_path / "part")
    assert part.index.items_done == 4 and not part.index.complete

    resumed = embed_dataset(
        items, encoder, tmp_path / "part", batch_size=3, shard_size=100, progress=False
    )
    assert resumed.index.shard_items == 4  # the store keeps its own shard size
    a, ra = whole.load()
    b, rb = EmbeddingStore.open(tmp_path / "part").load()
    assert rb == ra and len({r["id"] for r in rb}) == 10  # no duplicates, one missing image
    torch.testing.assert_close(a, b)
    assert resumed.index.skipped == whole.index.skipped and len(resumed.index.skipped) == 1
    # a complete store is left as it is
    again = embed_dataset(items, encoder, tmp_path / "part", progress=False)
    assert len(again.index.shards) == len(whole.index.shards) == 3


def test_cli_interrupt_then_resume(tmp_path, tiny_dir, monkeypatch, capsys):
    path = make_shapes(tmp_path / "set", 6)
    argv = [
        "embed",
        str(path),
        str(tmp_path / "out"),
        "--model",
        str(tiny_dir),
        "--shard-size",
        "2",
        "--no-progress",
    ]
    restore = _interrupt_after(monkeypatch, 2, KeyboardInterrupt)
    assert main(argv) == 130
    assert "run the same command again" in capsys.readouterr().err
    restore()
    assert EmbeddingStore.open(tmp_path / "out").index.items_done == 4
    assert main(argv) == 0
    assert "embedded 6 of 6 images" in capsys.readouterr().out


def test_other_dataset_or_encoder_refused(tmp_path, encoder, tiny_dir):
    from captioner.model.tiny import make_tiny

    items = read_dataset(make_shapes(tmp_path / "a", 4))
    embed_dataset(items, encoder, tmp_path / "out", shard_size=2, progress=False)
    others = read_dataset(make_shapes(tmp_path / "b", 4, seed=1))
    with pytest.raises(DatasetMismatch) as e:
        embed_dataset(others, encoder, tmp_path / "out", progress=False)
    assert e.value.code == "dataset_mismatch"
    with pytest.raises(DatasetMismatch):
        embed_dataset(items[:3], encoder, tmp_path / "out", progress=False)  # a subset is not it
    # same architecture, other weights (seed 1): only the weights fingerprint tells them apart
    other = load_encoder(str(make_tiny(tmp_path / "tiny1", seed=1)), device="cpu")
    assert other.info.vision_sha == encoder.info.vision_sha
    with pytest.raises(EncoderMismatch, match="weights"):
        embed_dataset(items, other, tmp_path / "out", progress=False)


def test_image_encoder_directory_matches_the_model(tmp_path, encoder, vision_dir, capsys):
    enc = load_encoder(image_encoder=str(vision_dir), device="cpu")
    assert enc.info.differences(encoder.info) == []
    assert enc.info.image_encoder == str(vision_dir)
    items = read_dataset(make_shapes(tmp_path / "set", 5, layout="coco"))
    a, _ = embed_dataset(items, encoder, tmp_path / "a", progress=False).load()
    argv = [
        "embed",
        str(tmp_path / "set" / "captions.json"),
        str(tmp_path / "b"),
        "--image-encoder",
        str(vision_dir),
        "--no-progress",
    ]
    assert main(argv) == 0
    b, _ = EmbeddingStore.open(tmp_path / "b").load()
    torch.testing.assert_close(a, b)


def test_image_encoder_preprocessing(tmp_path, vision_dir):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(vision_dir, plain)
    (plain / "preprocessor_config.json").unlink()
    enc = load_encoder(image_encoder=str(plain), device="cpu")  # CLIP defaults
    assert enc.info.image_size == 32 and enc.info.image_mean[0] == pytest.approx(0.48145466)
    (plain / "preprocessor_config.json").write_text(json.dumps({"crop_size": 32, "size": 40}))
    with pytest.raises(ModelError, match="unsupported preprocessing"):
        load_encoder(image_encoder=str(plain), device="cpu")
    with pytest.raises(ModelError, match="cannot load the image encoder"):
        load_encoder(image_encoder=str(tmp_path / "nothing-here"), device="cpu")


def test_workers_decode_images(tmp_path, encoder):
    items = read_dataset(make_shapes(tmp_path / "set", 6))
    a, _ = embed_dataset(items, encoder, tmp_path / "a", batch_size=2, progress=False).load()
    b, _ = embed_dataset(
        items, encoder, tmp_path / "b", batch_size=2, workers=2, progress=False
    ).load()
    torch.testing.assert_close(a, b)


def test_cli_user_errors_print_one_line(tmp_path, tiny_dir, capsys):
    assert (
        main(
            [
                "embed",
                str(tmp_path / "missing.csv"),
                str(tmp_path / "out"),
                "--model",
                str(tiny_dir),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: invalid_dataset:") and "\n" not in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    assert main(["embed", str(bad), str(tmp_path / "out"), "--model", str(tiny_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: invalid_dataset: {bad} line 1: not valid JSON")
    assert "\n" not in err
    path = make_shapes(tmp_path / "set", 2)
    assert main(["embed", str(path), str(tmp_path / "out"), "--model", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: model_not_found:")


def test_cli_help_and_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["embed", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in [
        "--format",
        "--image-root",
        "--split",
        "--model",
        "--image-encoder",
        "--batch-size",
        "--shard-size",
        "--workers",
        "--device",
        "--dtype",
    ]:
        assert option in out
    with pytest.raises(SystemExit) as e:
        main(["embed", "a", "b", "--model", "m", "--image-encoder", "e"])
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_a_model_directory_as_the_image_encoder_is_its_vision_tower(
    tmp_path, encoder, tiny_dir, capsys
):
    """`--image-encoder MODEL_DIR` (an AltCap model) embeds as `--model MODEL_DIR` does; it
    printed transformers' report of unexpected keys and embedded with a random tower."""
    enc = load_encoder(image_encoder=str(tiny_dir), device="cpu", dtype="float32")
    assert enc.info == encoder.info
    path = make_shapes(tmp_path / "set", 3)
    argv = ["embed", str(path), str(tmp_path / "a"), "--no-progress"]
    assert main([*argv, "--image-encoder", str(tiny_dir)]) == 0
    err = capsys.readouterr().err
    assert "UNEXPECTED" not in err and "LOAD REPORT" not in err
    argv[2] = str(tmp_path / "b")
    assert main([*argv, "--model", str(tiny_dir)]) == 0
    a, _ = EmbeddingStore.open(tmp_path / "a").load()
    b, _ = EmbeddingStore.open(tmp_path / "b").load()
    torch.testing.assert_close(a, b)
