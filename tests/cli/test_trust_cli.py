"""Trust through the CLI with the trained demo model (real captions, real confidences):
``batch`` checks author alts (``suspect_alt``) and withholds captions that are not confident
(``low_confidence``), ``check-alt`` checks alts given as JSON lines, ``caption --json`` says
its confidence, ``make-tiny --trained`` is wired to the demo model's training."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest
from bs4 import BeautifulSoup
from testsite import RIGHT_ALT, SHAPES_HTML, SWAPPED_ALT, serve_site

from captioner.cli.main import build_parser, main
from captioner.train.synthetic import draw_shape

CIRCLE = "A red circle on a white background."
SQUARE = "A green square on a white background."


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with serve_site(tmp_path_factory.mktemp("site")) as site:
        yield site


def batch(model, *args: str) -> int:
    base = ["batch", "--model", str(model), "--device", "cpu", "--no-progress", "--delay", "0"]
    return main([*base, "--allow-private", "--no-read-text", *args])


def alts_of(page: str) -> list[str | None]:
    return [img.get("alt") for img in BeautifulSoup(page, "html.parser").find_all("img")]


def test_batch_flags_a_swapped_alt_and_keeps_the_right_one(
    site, demo_dir, tmp_path, capsys
) -> None:
    out, table, patched = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "patched"
    args = ["--pages", site.url("shapes.html"), "--out", str(out), "--out", str(table)]
    assert batch(demo_dir, *args, "--patched-dir", str(patched)) == 0
    circle, swapped, square = json.loads(out.read_text())
    # the right alt matches: nothing to do, the author's alt stays, the check says why
    assert (circle["verdict"], circle["status"], circle["alt"]) == ("ok", "skipped", None)
    assert circle["alt_check"]["verdict"] == "matches" and circle["caption"] == CIRCLE
    # the swapped alt is suspect: AltCap's caption is the suggestion
    assert (swapped["verdict"], swapped["status"]) == ("suspect_alt", "done")
    assert swapped["alt_check"]["verdict"] == "suspect"
    assert swapped["alt_check"]["score"] < 0.5 <= circle["alt_check"]["score"]
    assert swapped["author_alt"] == SWAPPED_ALT and swapped["alt"] == CIRCLE
    # the image without alt: a confident caption
    assert (square["verdict"], square["status"], square["alt"]) == ("missing", "done", SQUARE)
    assert square["alt_check"] is None and square["confident"] is True
    assert all(0.5 < r["confidence"] < 1 for r in (circle, swapped, square))
    rows = list(csv.DictReader(io.StringIO(table.read_text(encoding="utf-8"))))
    assert [r["alt_check_verdict"] for r in rows] == ["matches", "suspect", ""]
    assert [r["confident"] for r in rows] == ["true"] * 3
    # the patched page: the square gets its alt; the author's alts are never replaced
    assert alts_of((patched / "1-shapes.html").read_text()) == [RIGHT_ALT, SWAPPED_ALT, SQUARE]
    summary = capsys.readouterr().err.splitlines()[-1]
    assert summary == (  # done: the square and the suspect alt's suggestion
        "1 page, 3 images: 2 done, 0 failed, 1 skipped; by verdict: 1 missing, 1 suspect_alt, 1 ok"
    )


def test_batch_without_checking_alts_leaves_them_alone(site, demo_dir, tmp_path) -> None:
    out = tmp_path / "r.json"
    args = ["--pages", site.url("shapes.html"), "--out", str(out), "--no-check-alts"]
    assert batch(demo_dir, *args) == 0
    rows = json.loads(out.read_text())
    assert [(r["verdict"], r["status"], r["alt_check"]) for r in rows] == [
        ("ok", "skipped", None),
        ("ok", "skipped", None),
        ("missing", "done", None),
    ]
    assert rows[0]["caption"] is None  # not captioned: a caption per alt saved


def test_batch_withholds_captions_that_are_not_confident(
    site, demo_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("ALTCAP_MIN_CONFIDENCE", "0.999")  # above every caption's confidence
    out, patched = tmp_path / "r.json", tmp_path / "patched"
    args = ["--pages", site.url("shapes.html"), "--out", str(out), "--patched-dir", str(patched)]
    assert batch(demo_dir, *args) == 0
    circle, swapped, square = json.loads(out.read_text())
    assert (square["status"], square["confident"], square["alt"]) == (
        "low_confidence",
        False,
        SQUARE,
    )
    assert swapped["verdict"] == "suspect_alt" and swapped["status"] == "low_confidence"
    assert circle["status"] == "skipped"  # the author's alt matches: nothing to withhold
    # left out of the patched page: the square keeps no alt
    page = (patched / "1-shapes.html").read_text()
    assert alts_of(page) == [RIGHT_ALT, SWAPPED_ALT, None]
    assert page == SHAPES_HTML
    # unless asked for
    assert batch(demo_dir, *args, "--include-low-confidence") == 0
    assert alts_of((patched / "1-shapes.html").read_text()) == [RIGHT_ALT, SWAPPED_ALT, SQUARE]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    circle, star = folder / "circle.png", folder / "star.png"
    draw_shape("red", "circle", rng=random.Random(1)).save(circle)
    draw_shape("blue", "star", rng=random.Random(2)).save(star)
    return circle, star


def test_check_alt_writes_each_line_back_with_its_check(
    shapes, site, demo_dir, tmp_path, capsys, monkeypatch
) -> None:
    circle, star = shapes
    lines = [
        json.dumps({"image": str(circle), "alt": RIGHT_ALT, "id": 1}),
        json.dumps({"image": str(circle), "alt": SWAPPED_ALT}),
        "",  # blank: skipped
        "{not json",
        json.dumps({"image": str(star)}),  # no alt
        json.dumps({"image": str(tmp_path / "nope.png"), "alt": "A cat."}),
        json.dumps({"image": site.url("shapes/square.png"), "alt": SQUARE}),
    ]
    given = tmp_path / "alts.jsonl"
    given.write_text("\n".join(lines) + "\n")
    model = ["--model", str(demo_dir), "--device", "cpu", "--allow-private"]
    assert main(["check-alt", str(given), *model, "--json"]) == 1  # some lines failed
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    right, swapped, bad, no_alt, missing, url = out
    assert (right["verdict"], right["caption"], right["id"]) == ("matches", CIRCLE, 1)
    assert right["confident"] is True and 0.5 < right["confidence"] < 1
    assert (swapped["verdict"], swapped["caption"]) == ("suspect", CIRCLE)
    assert swapped["score"] < 0.5 <= right["score"]
    assert bad == {"line": 4, "error": bad["error"]} and bad["error"]["code"] == "invalid_line"
    assert no_alt["error"]["code"] == "invalid_line" and no_alt["line"] == 5
    assert missing["error"]["code"] == "not_an_image" and missing["alt"] == "A cat."
    assert url["verdict"] == "matches" and url["caption"] == SQUARE  # fetched over HTTP

    # stdin, and lines for people
    monkeypatch.setattr("sys.stdin", io.StringIO(lines[1] + "\n"))
    assert main(["check-alt", "-", *model]) == 0
    said = capsys.readouterr().out
    assert said.startswith("suspect ") and f"appears to be: {CIRCLE}" in said


def test_check_alt_refuses_private_urls_unless_allowed(site, demo_dir, capsys, monkeypatch) -> None:
    line = json.dumps({"image": site.url("shapes/square.png"), "alt": SQUARE})
    monkeypatch.setattr("sys.stdin", io.StringIO(line + "\n"))
    assert main(["check-alt", "--model", str(demo_dir), "--device", "cpu", "--json"]) == 1
    (out,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (
        out["error"]["code"] == "blocked_address" and "--allow-private" in out["error"]["message"]
    )


def test_check_alt_needs_a_text_tower(tmp_path_factory, shapes, capsys) -> None:
    from captioner.model.checkpoints import save_pretrained
    from captioner.model.tiny import tiny_tokenizer_and_model

    tokenizer, model = tiny_tokenizer_and_model("mlp", seed=0, text_tower=False)
    plain = save_pretrained(model, tokenizer, tmp_path_factory.mktemp("no-tower"))
    given = tmp_path_factory.mktemp("in") / "alts.jsonl"
    given.write_text(json.dumps({"image": str(shapes[0]), "alt": RIGHT_ALT}) + "\n")
    assert main(["check-alt", str(given), "--model", str(plain), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: alt_check_unavailable: ")
    assert len(captured.err.splitlines()) == 1  # one line, no traceback


def test_caption_json_says_its_confidence(shapes, demo_dir, capsys, monkeypatch) -> None:
    model = ["--model", str(demo_dir), "--device", "cpu", "--no-read-text", "--json"]
    assert main(["caption", str(shapes[0]), *model]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["caption"] == CIRCLE and line["confident"] is True
    assert 0.5 < line["confidence"] < 1
    monkeypatch.setenv("ALTCAP_MIN_CONFIDENCE", "0.999")
    assert main(["caption", str(shapes[0]), *model]) == 0
    assert json.loads(capsys.readouterr().out)["confident"] is False


def test_make_tiny_trained_trains_the_demo_model(tmp_path, monkeypatch, capsys) -> None:
    """The flag's wiring; the training itself is train_tiny's (tests/train, and the
    demo_dir fixture every test here loads)."""
    calls = []

    def train_tiny(out_dir, *, seed=0):
        calls.append((str(out_dir), seed))
        return tmp_path / "demo"

    monkeypatch.setattr("captioner.train.demo.train_tiny", train_tiny)
    assert main(["make-tiny", str(tmp_path / "demo"), "--trained", "--seed", "3"]) == 0
    assert calls == [(str(tmp_path / "demo"), 3)]
    assert capsys.readouterr().out.strip() == str(tmp_path / "demo")
    # --mapping does not apply: one line, before any training
    assert main(["make-tiny", str(tmp_path / "x"), "--trained", "--mapping", "transformer"]) == 1
    assert capsys.readouterr().err.startswith("error: invalid_settings: --mapping")
    assert len(calls) == 1
    assert build_parser().parse_args(["make-tiny", "x"]).trained is False


def test_keep_current_trains_only_what_is_missing_or_stale(tmp_path, monkeypatch, capsys):
    """``--keep-current`` (``make run-tiny``) keeps a directory that holds the demo model
    this code makes with that seed, and trains anything else: nothing there, another seed,
    a model made by other code."""
    from captioner.train import demo

    calls = []
    monkeypatch.setattr(demo, "train_tiny", lambda out, *, seed=0: calls.append(seed) or out)
    out = tmp_path / "demo"
    keep = ["make-tiny", str(out), "--trained", "--keep-current"]
    assert main(keep) == 0 and calls == [0]  # nothing there yet
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"")
    config = {"source": demo.made_by(0)}
    (out / "config.json").write_text(json.dumps(config))
    assert main(keep) == 0 and calls == [0]  # current: kept
    assert capsys.readouterr().out.splitlines()[-1] == str(out)
    assert main([*keep, "--seed", "1"]) == 0 and calls == [0, 1]  # another seed
    config["source"] = config["source"].replace(demo.code_key(), "0" * 12)
    (out / "config.json").write_text(json.dumps(config))
    assert main(keep) == 0 and calls == [0, 1, 0]  # made by other code
    assert main(["make-tiny", str(out), "--keep-current"]) == 1  # only with --trained
    assert "--keep-current applies only with --trained" in capsys.readouterr().err
