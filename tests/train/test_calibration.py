"""Calibration in `evaluate`: score distributions of reference, generated and shuffled
captions, the thresholds that separate them, and `--calibrate`, which writes the fitted
confidence rule into the model's config.json.

The trained demo model (conftest's `demo_dir`) gives real scores: references must beat
shuffled ones. The fixture's directory is shared, so `--calibrate` writes into a copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from captioner.cli.main import main
from captioner.errors import InvalidSettings
from captioner.model.checkpoints import load_pretrained, save_pretrained
from captioner.train import calibration as C
from captioner.train import evaluate as E
from captioner.train.synthetic import make_shapes

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest


@pytest.fixture(autouse=True)
def no_java(monkeypatch):
    """BLEU and friends are not under test here: the simple tokenizer, no JVM (faster)."""
    monkeypatch.setattr(E, "java_path", lambda: None)


# --- the statistics, without a model ---------------------------------------------------


def test_shuffled_references_are_never_an_images_own():
    refs = [["a red circle."], ["a red circle.", "a circle."], ["a blue star."], ["a cat."]]
    out = C.shuffled_references(refs)
    for own, other in zip(refs, out, strict=True):
        assert other is not None and other.lower() not in {c.lower() for c in own}
    assert out == C.shuffled_references(refs)  # the same every run
    assert C.shuffled_references([["a dog."], ["A dog."]]) == [None, None]  # no mismatch exists


def test_best_cut_maximises_youdens_j():
    right = torch.tensor([0.30, 0.32, 0.28, 0.35, 0.21, 0.33])
    wrong = torch.tensor([0.10, 0.15, 0.22, 0.12, 0.18])
    cut = C.best_cut(right, wrong)

    def j(c):
        return float((right >= c).double().mean() - (wrong >= c).double().mean())

    brute = max(j(float(c) + 1e-9) for c in torch.cat((right, wrong)))
    assert j(cut) == pytest.approx(brute)
    assert 0.22 < cut < 0.28  # between the last wrong and the first right beyond the overlap
    tie = C.best_cut(right[:5], wrong)  # J 0.8 below 0.21 and above 0.22: the lower
    assert tie == pytest.approx(0.195)
    separable = C.separation(torch.tensor([0.3, 0.4]), torch.tensor([0.1, 0.2]), digits=4)
    assert separable == {
        "cut": 0.25,
        "false_positive_rate": 0.0,
        "false_negative_rate": 0.0,
        "balanced_accuracy": 1.0,
        "auroc": 1.0,
    }
    assert C.auroc(torch.tensor([0.5]), torch.tensor([0.5])) == 0.5  # a tie counts half


def test_write_calibration_changes_two_numbers_atomically(tiny_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    before = json.loads((model / "config.json").read_text())
    C.write_calibration(model, 0.31, 12.5)
    after = json.loads((model / "config.json").read_text())
    assert after == before | {"confidence_center": 0.31, "confidence_slope": 12.5}
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in tiny_dir.iterdir())
    with pytest.raises(InvalidSettings):  # an inverted rule is refused, the file kept
        C.write_calibration(model, 0.31, -1.0)
    assert json.loads((model / "config.json").read_text()) == after


# --- evaluate on the trained demo model ------------------------------------------------


def test_calibrate_the_demo_model(demo_dir, tmp_path, capsys):
    """References score above shuffled ones; the cut lies between their medians; the fitted
    rule, written by --calibrate, reads back and gives right captions of held-out images a
    confidence above 0.5 and mismatched ones below."""
    shared = (demo_dir / "config.json").read_bytes()
    model = tmp_path / "model"
    shutil.copytree(demo_dir, model)
    ann = make_shapes(tmp_path / "set", 48, seed=1, layout="coco")
    report_path = tmp_path / "report.json"
    args = ["evaluate", str(model), str(ann), "--out", str(report_path), "--calibrate"]
    assert main([*args, "--no-progress", "--device", "cpu", "--batch-size", "16"]) == 0
    out, err = capsys.readouterr()
    cal = json.loads(report_path.read_text())["calibration"]

    assert cal["images"] == cal["shuffled_pairs"] == 48
    sims = {k: v["similarity"] for k, v in cal["distributions"].items()}
    assert set(sims) == {"reference", "generated", "shuffled"}
    assert set(sims["reference"]) == {"n", "mean", "std", "q05", "q25", "q50", "q75", "q95"}
    assert sims["reference"]["q25"] > sims["shuffled"]["q75"]
    assert sims["shuffled"]["q50"] < cal["similarity_cut"]["cut"] < sims["reference"]["q50"]
    assert cal["similarity_cut"]["auroc"] >= 0.9
    assert cal["similarity_cut"]["false_positive_rate"] <= 0.1
    assert cal["similarity_cut"]["false_negative_rate"] <= 0.1
    assert 0 < cal["min_confidence"]["suggested"] < 1
    alt = cal["alt_check"]  # references match, shuffled references are suspect
    assert alt["shuffled"]["q50"] < alt["suggested_match_score"] < alt["reference"]["q50"]
    assert alt["false_positive_rate"] <= 0.1 and alt["false_negative_rate"] <= 0.1

    fitted = cal["confidence_rule"]["fitted"]
    assert cal["written"] == str(model / "config.json")
    config = load_pretrained(model)[0].config
    assert config.confidence_center == fitted["confidence_center"]
    assert config.confidence_slope == fitted["confidence_slope"]
    assert (demo_dir / "config.json").read_bytes() == shared  # the fixture's is untouched
    assert f"suggested ALTCAP_MIN_CONFIDENCE={cal['min_confidence']['suggested']}" in out
    assert f"suggested ALTCAP_ALT_MATCH_SCORE={alt['suggested_match_score']}" in out
    assert "wrote confidence_center and confidence_slope" in out
    assert "calibration from 48 images" in err  # a small set: said

    # the written rule on held-out images: right captions > 0.5, another image's < 0.5
    from captioner import Captioner

    captioner = Captioner.from_pretrained(str(model), device="cpu", dtype="float32")
    held_out = make_shapes(tmp_path / "held-out", 24, seed=2, layout="jsonl")
    rows = [json.loads(line) for line in held_out.read_text().splitlines()]
    images = [str(held_out.parent / r["image"]) for r in rows]
    right = [r["caption"] for r in rows]
    wrong = C.shuffled_references([[c] for c in right])
    conf_right = captioner.confidence(captioner.score(images, right))
    conf_wrong = captioner.confidence(captioner.score(images, wrong))
    assert (conf_right > 0.5).double().mean() >= 0.95, conf_right
    assert (conf_wrong < 0.5).double().mean() >= 0.95, conf_wrong


def test_without_calibrate_nothing_is_written(demo_dir, tmp_path, capsys):
    before = (demo_dir / "config.json").read_bytes()
    ann = make_shapes(tmp_path / "set", 6, seed=1, layout="coco")
    report = tmp_path / "report.json"
    args = ["evaluate", str(demo_dir), str(ann), "--out", str(report), "--no-progress"]
    assert main(args) == 0
    out, _ = capsys.readouterr()
    assert json.loads(report.read_text())["calibration"]["written"] is None
    assert "--calibrate writes" in out
    assert (demo_dir / "config.json").read_bytes() == before


# --- a model without a text tower ------------------------------------------------------


@pytest.fixture(scope="module")
def no_tower_dir(tmp_path_factory) -> Path:
    from captioner.model.tiny import tiny_tokenizer_and_model

    tok, model = tiny_tokenizer_and_model("mlp", text_tower=False)
    return save_pretrained(model, tok, tmp_path_factory.mktemp("no-tower"))


def test_a_model_without_a_text_tower_evaluates_with_a_note(no_tower_dir, tmp_path, capsys):
    ann = make_shapes(tmp_path / "set", 3, layout="coco")
    report_path = tmp_path / "report.json"
    args = ["evaluate", str(no_tower_dir), str(ann), "--out", str(report_path), "--no-progress"]
    assert main([*args, "--max-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(report_path.read_text())
    assert "calibration" not in report and "no CLIP text tower" in report["calibration_note"]
    notes = [line for line in err.splitlines() if "calibration" in line]
    assert notes == [f"note: {report['calibration_note']}"]
    assert "CIDEr" in out and "ALTCAP_MIN_CONFIDENCE" not in out

    assert main([*args, "--calibrate"]) == 1  # nothing to fit: said before captioning
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: invalid_settings:") and "text tower" in err
    assert len(err.splitlines()) == 1


def test_calibrate_needs_a_model_directory(tmp_path, capsys):
    ann = make_shapes(tmp_path / "set", 2, layout="coco")
    assert main(["evaluate", "clipcap-coco", str(ann), "--calibrate", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: invalid_settings:") and "copy its directory" in err


def test_calibrate_refuses_a_rule_that_tells_nothing(demo_dir, tmp_path, capsys, monkeypatch):
    """References that score no higher than shuffled ones (AUROC <= 0.5, forced here): the
    rule would mean nothing, so config.json is kept, and the exit status says so."""
    model = tmp_path / "model"
    shutil.copytree(demo_dir, model)
    before = (model / "config.json").read_bytes()
    monkeypatch.setattr(C, "auroc", lambda right, wrong: 0.5)
    ann = make_shapes(tmp_path / "set", 6, seed=1, layout="coco")
    report = tmp_path / "report.json"
    args = ["evaluate", str(model), str(ann), "--calibrate", "--out", str(report)]
    assert main([*args, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "AUROC 0.5" in err and "error: calibration_not_written:" in err
    assert json.loads(report.read_text())["calibration"]["written"] is None
    assert (model / "config.json").read_bytes() == before
