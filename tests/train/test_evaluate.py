"""`evaluate`: COCO metrics with Java (PTB tokenizer + METEOR) and without, skipped images,
the report and the COCO-results captions, one-line CLI errors.

Java must be installed (`make test` installs a JRE); the no-Java path is taken by patching
the lookup."""

from __future__ import annotations

import gc
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from captioner.cli.main import main
from captioner.train import evaluate as E
from captioner.train.synthetic import make_shapes

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest


REFS = {
    1: ["A red circle on a white background.", "a red circle."],
    2: ["A blue square on a white background.", "a picture of a blue square."],
    3: ["A green star on a white background.", "one green star in the middle."],
    4: ["A yellow triangle on a white background.", "a yellow triangle."],
}


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory) -> Path:
    """Six synthetic images in the official COCO captions format, plus two entries whose
    images cannot be read (one is not an image, one is missing)."""
    ann = make_shapes(tmp_path_factory.mktemp("coco"), 6, seed=3, layout="coco")
    doc = json.loads(ann.read_text())
    (ann.parent / "images" / "broken.png").write_bytes(b"this is not a png")
    for image_id, name in ((7, "broken.png"), (8, "missing.png")):
        doc["images"].append({"id": image_id, "file_name": name, "width": 64, "height": 64})
        doc["annotations"].append({"id": 100 + image_id, "image_id": image_id, "caption": "x."})
    ann.write_text(json.dumps(doc))
    return ann


def test_metrics_are_the_coco_ones():
    """Scores mean what they say: a perfect candidate scores ~1, a wrong one much lower."""
    perfect = {k: v[0] for k, v in REFS.items()}
    metrics, notes = E.score(REFS, perfect, java=E.java_path())
    assert notes == {"tokenizer": "ptb", "unavailable": {}}
    assert set(metrics) == set(E.METRICS)
    for name in ("Bleu_1", "Bleu_4", "ROUGE_L", "METEOR"):
        assert metrics[name] > 0.95, (name, metrics)
    assert metrics["CIDEr"] > 2.0
    wrong = {k: "a dog running in a park." for k in REFS}
    low, _ = E.score(REFS, wrong, java=E.java_path())
    for name in E.METRICS:
        assert low[name] < 0.5 * metrics[name], name


def test_meteor_is_not_reported_for_captions_in_another_language():
    """pycocoevalcap's METEOR matches English stems, synonyms and paraphrases: a German
    model's captions get the other metrics and a note instead of a misleading METEOR."""
    perfect = {k: v[0] for k, v in REFS.items()}
    metrics, notes = E.score(REFS, perfect, java=E.java_path(), language="de")
    assert metrics["METEOR"] is None and "'de'" in notes["unavailable"]["METEOR"]
    assert metrics["Bleu_4"] > 0.95 and notes["tokenizer"] == "ptb"
    british, _ = E.score(REFS, perfect, java=E.java_path(), language="en-GB")
    assert british["METEOR"] > 0.95


def test_ptb_and_simple_tokenizers_agree_on_plain_captions():
    caps = {1: ["A red circle, on a white background.", "Two dogs' toys -- yes!"]}
    simple = E.simple_tokenize(caps)
    assert simple[1][0] == "a red circle on a white background"
    assert E.ptb_tokenize(caps, E.java_path())[1][0] == simple[1][0]


def test_evaluate_writes_report_and_captions(tiny_dir, coco_set, tmp_path, capsys):
    report_path, caps_path = tmp_path / "out" / "report.json", tmp_path / "captions.json"
    rc = main(
        [
            "evaluate",
            str(tiny_dir),
            str(coco_set),
            "--image-root",
            str(coco_set.parent / "images"),
            "--max-tokens",
            "12",
            "--batch-size",
            "4",
            "--out",
            str(report_path),
            "--captions-out",
            str(caps_path),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads(report_path.read_text())
    for name in E.METRICS:  # java is there (`make test` installs a JRE): every metric
        assert isinstance(report["metrics"][name], float), name
    assert report["tokenizer"] == "ptb" and report["unavailable"] == {}
    assert report["counts"] == {"images": 8, "captioned": 6, "skipped": 2, "references": 6}
    skipped = {Path(s["image"]).name: s["code"] for s in report["skipped"]}
    assert skipped == {"broken.png": "not_an_image", "missing.png": "not_an_image"}
    assert report["settings"]["max_tokens"] == 12 and report["model"] == str(tiny_dir)
    assert report["language"] == "en"
    assert report["time_s"]["total"] > 0
    captions = json.loads(caps_path.read_text())
    assert sorted(c["image_id"] for c in captions) == [1, 2, 3, 4, 5, 6]  # COCO: int ids
    assert all(isinstance(c["caption"], str) for c in captions)
    assert "skipped" in err and "broken.png" in err
    assert "6 of 8 images captioned" in out and "CIDEr" in out


def test_without_java_meteor_is_unavailable(tiny_dir, coco_set, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(E, "java_path", lambda: None)
    report_path = tmp_path / "report.json"
    args = ["evaluate", str(tiny_dir), str(coco_set), "--limit", "3", "--no-progress"]
    assert main([*args, "--out", str(report_path)]) == 0
    out, err = capsys.readouterr()
    report = json.loads(report_path.read_text())
    assert report["metrics"]["METEOR"] is None
    assert "java" in report["unavailable"]["METEOR"]
    assert report["tokenizer"] == "simple" and "simple tokenizer" in report["tokenizer_note"]
    assert all(isinstance(report["metrics"][m], float) for m in E.METRICS if m != "METEOR")
    assert report["counts"]["images"] == 3
    assert "note: METEOR unavailable: java not found" in err
    assert "METEOR   n/a" in out

    # the same without Java, through the scorer: a perfect candidate still scores ~1
    metrics, _ = E.score(REFS, {k: v[0] for k, v in REFS.items()}, java=None)
    assert metrics["Bleu_4"] > 0.95 and metrics["METEOR"] is None


def test_broken_java_falls_back(tmp_path):
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'Error: broken JVM' >&2\nexit 1\n")
    fake.chmod(0o755)
    metrics, notes = E.score(REFS, {k: v[0] for k, v in REFS.items()}, java=str(fake))
    assert notes["tokenizer"] == "simple" and "broken JVM" in notes["tokenizer_note"]
    assert "broken JVM" in notes["unavailable"]["METEOR"] and metrics["METEOR"] is None
    assert metrics["Bleu_1"] > 0.95


def test_meteor_failure_is_reported_not_hung(tmp_path, monkeypatch):
    """A JVM that dies under METEOR (the tokenizer still works): METEOR is reported as
    failed, the other metrics stand, and nothing hangs (pycocoevalcap's Meteor keeps a lock
    held on errors that its destructor waits for)."""
    real = shutil.which("java")
    fake = tmp_path / "java"
    fake.write_text(f'#!/bin/sh\ncase "$*" in *-jar*) exit 3;; esac\nexec {real} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert E.java_path() == str(fake)
    out = []
    from pycocoevalcap.meteor import meteor as pycoco_meteor

    made, closed = [], []

    class Recorded(pycoco_meteor.Meteor):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(pycoco_meteor, "Meteor", Recorded)

    def run():
        out.append(E.score(REFS, {k: v[0] for k, v in REFS.items()}, java=E.java_path()))
        # stdin closed before Meteor.__del__ runs: input buffered for the dead JVM would
        # otherwise break the pipe there (an "Exception ignored" traceback on stderr)
        closed.extend(m.meteor_p.stdin.closed for m in made)
        made.clear()
        gc.collect()  # Meteor.__del__, if a cycle kept it

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "scoring hung after METEOR failed"
    assert closed == [True]
    metrics, notes = out[0]
    assert notes["tokenizer"] == "ptb" and metrics["METEOR"] is None
    assert notes["unavailable"]["METEOR"].startswith("METEOR failed")
    assert metrics["CIDEr"] > 2.0


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["MODEL", "/nonexistent/captions.json"], "invalid_dataset"),
        (["/nonexistent/model", "ANN"], "model_not_found"),
        (["MODEL", "ANN", "--limit", "0"], "invalid_settings"),
        (["MODEL", "ANN", "--max-tokens", "0"], "invalid_settings"),
        (["MODEL", "ANN", "--image-root", "/nonexistent"], "evaluation_failed"),
    ],
)
def test_cli_errors_are_one_line(tiny_dir, coco_set, capsys, args, code):
    args = [{"MODEL": str(tiny_dir), "ANN": str(coco_set)}.get(a, a) for a in args]
    assert main(["evaluate", *args, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {code}:"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_captions_of_a_folder_set_name_their_files(tiny_dir, tmp_path, capsys, monkeypatch):
    """A folder set's images are its files: `--captions-out` names them (it gave the ids of
    0.png, 1.png... as the numbers 0, 1...); COCO sets keep COCO's integer ids."""
    monkeypatch.setattr(E, "java_path", lambda: None)  # scores do not matter here: faster
    folder = make_shapes(tmp_path / "set", 3, layout="folder")
    (folder / "sub").mkdir()
    for i, f in enumerate(sorted(folder.glob("shape-*.png"))):
        dest = folder / ("sub" if i == 2 else "") / f"{i:04d}"
        f.rename(dest.with_suffix(".png"))
        f.with_suffix(".txt").rename(dest.with_suffix(".txt"))
    caps = tmp_path / "captions.json"
    args = ["evaluate", str(tiny_dir), str(folder), "--captions-out", str(caps)]
    assert main([*args, "--no-progress", "--max-tokens", "4"]) == 0
    capsys.readouterr()
    results = json.loads(caps.read_text())
    assert [(r["image_id"], r["file_name"]) for r in results] == [
        ("0000", "0000.png"),
        ("0001", "0001.png"),
        ("sub/0002", "sub/0002.png"),
    ]
    coco = make_shapes(tmp_path / "coco", 2, layout="coco")
    assert main(["evaluate", str(tiny_dir), str(coco), "--captions-out", str(caps)]) == 0
    results = json.loads(caps.read_text())
    assert [(r["image_id"], r["file_name"]) for r in results] == [
        (1, "shape-00000.png"),
        (2, "shape-00001.png"),
    ]


def test_one_caption_for_every_image_is_a_warning(tiny_dir, tmp_path, capsys, monkeypatch):
    """A model whose prefix does not depend on the image (its mapper's weights zeroed, as a
    mapper that has learnt nothing) writes one caption for all: said on stderr and in the
    report, pointing at --lr."""
    monkeypatch.setattr(E, "java_path", lambda: None)  # scores do not matter here: faster
    from captioner.model.checkpoints import load_pretrained, save_pretrained

    model, tok = load_pretrained(tiny_dir)
    with torch.no_grad():
        for name, p in model.mapper.named_parameters():
            if name.endswith("weight"):
                p.zero_()
    collapsed = save_pretrained(model, tok, tmp_path / "collapsed")
    ann = make_shapes(tmp_path / "set", 8, layout="coco")
    report = tmp_path / "report.json"
    args = ["evaluate", str(collapsed), str(ann), "--out", str(report), "--no-progress"]
    assert main([*args, "--max-tokens", "6"]) == 0
    err = capsys.readouterr().err
    warnings = json.loads(report.read_text())["warnings"]
    assert len(warnings) == 1 and warnings[0] in err
    assert warnings[0].startswith("warning: one caption for all 8 images")
    assert "--lr" in warnings[0]
    # the tiny model itself looks at the image: no warning
    assert main(["evaluate", str(tiny_dir), str(ann), "--out", str(report), "--no-progress"]) == 0
    assert json.loads(report.read_text())["warnings"] == []
