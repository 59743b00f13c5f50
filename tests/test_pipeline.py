"""The Captioner facade and the CLI, on tiny model directories loaded through the real code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import png_bytes, write_reference_parts
from PIL import Image

from captioner import Captioner, DecodingSettings
from captioner.alttext import clean_caption
from captioner.cli.main import main
from captioner.errors import InvalidSettings, NotAnImage

COLOURS = [(200, 30, 30), (20, 160, 40), (30, 40, 220), (250, 250, 250), (0, 0, 0)]


def test_caption_inputs_and_results(tiny_captioner, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes((20, 160, 40)))
    pil = Image.new("RGB", (40, 60), (30, 40, 220))
    results = tiny_captioner.caption([png_bytes(), str(path), pil])
    assert len(results) == 3
    for r in results:
        assert r.text == clean_caption(r.raw) and r.text.endswith(".")
        assert 1 <= r.tokens <= 67
        assert {"encode_ms", "decode_ms", "total_ms", "preprocess_ms"} <= r.timings.keys()
        assert r.batch_size == 3
    # order is kept: the same image alone gives the same text as in the batch
    assert tiny_captioner.caption(pil)[0].text == results[2].text


@pytest.mark.parametrize("method", ["greedy", "beam", "nucleus"])
def test_batched_equals_single_images(tiny_captioner, method):
    images = [png_bytes(c, size=(50 + 7 * i, 40)) for i, c in enumerate(COLOURS)]
    s = DecodingSettings(method=method, seed=11, max_tokens=12)
    batched = [r.raw for r in tiny_captioner.caption(images, s, batch_size=8)]
    single = [tiny_captioner.caption(im, s)[0].raw for im in images]
    assert batched == single
    split = [r.raw for r in tiny_captioner.caption(images, s, batch_size=2)]
    assert split == batched


def test_caption_is_the_model_output(tiny_dir, tiny_captioner):
    """Changing the weights must change captions: the facade really decodes with the model."""
    other = Captioner.from_pretrained(str(tiny_dir), device="cpu")
    with torch.no_grad():
        for p in other.model.mapper.parameters():
            p.mul_(-3.0)
    images = [png_bytes(c) for c in COLOURS]
    a = [r.raw for r in tiny_captioner.caption(images, max_tokens=10)]
    b = [r.raw for r in other.caption(images, max_tokens=10)]
    assert a != b


def test_bfloat16_runs_and_settings_are_checked(tiny_dir):
    cap = Captioner.from_pretrained(str(tiny_dir), device="cpu", dtype="bfloat16")
    assert cap.model.lm.transformer.wte.weight.dtype == torch.bfloat16
    assert cap.caption(png_bytes(), max_tokens=5)[0].tokens <= 5
    with pytest.raises(InvalidSettings):
        cap.caption(png_bytes(), method="sideways")
    with pytest.raises(InvalidSettings):
        Captioner.from_pretrained(str(tiny_dir), dtype="int3")
    with pytest.raises(NotAnImage):
        cap.caption(b"<html>not an image</html>")


def test_clean_caption():
    assert clean_caption(" a dog on a  couch .") == "A dog on a couch."
    assert clean_caption("a cat...") == "A cat."
    assert clean_caption("two birds") == "Two birds."
    assert clean_caption("  ") == ""


def test_the_tiny_model_writes_readable_captions(tiny_captioner):
    """Its random weights never pick the tokens that are no text alone (their embeddings are
    zero): demos and tests get captions, not U+FFFD that cleans to nothing."""
    for r in tiny_captioner.caption([png_bytes(c) for c in COLOURS]):
        assert r.text and "\ufffd" not in r.raw and r.raw.isprintable()


def test_clean_caption_drops_what_a_screen_reader_should_not_read():
    # a caption cut inside a character: GPT-2's tokenizer writes U+FFFD for the lost bytes
    assert clean_caption("a cat with a \ufffd") == "A cat with a."
    assert clean_caption("\ufffd\ufffd dog") == "Dog."
    assert clean_caption("a\x00 b\x1b[0m c\x7f") == "A b[0m c."  # control characters
    assert clean_caption("a\tcat\non a mat") == "A cat on a mat."  # whitespace is spacing
    assert clean_caption("un café ☕") == "Un café ☕."  # real characters stay
    assert clean_caption("\ufffd") == ""  # nothing left: no caption, not "."


# --- CLI ----------------------------------------------------------------------------------


def test_cli_caption_json(tiny_dir, tmp_path, capsys):
    paths = []
    for i, c in enumerate(COLOURS[:3]):
        p = tmp_path / f"im{i}.png"
        p.write_bytes(png_bytes(c))
        paths.append(str(p))
    rc = main(["caption", *paths, "--model", str(tiny_dir), "--json", "--max-tokens", "8"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["image"] for x in lines] == paths
    # alt text, or "" where the random tiny model wrote only cut-off bytes (U+FFFD)
    assert all(x["caption"] in ("", clean_caption(x["caption"])) for x in lines)
    assert any(x["caption"].endswith(".") for x in lines)
    assert all(x["tokens"] <= 8 for x in lines)
    # the model's public name, as the service reports it, not the local path
    assert all(x["model"].startswith(f"{tiny_dir.parent.name}/{tiny_dir.name}@") for x in lines)
    assert all(x["language"] == "en" for x in lines)  # the captions' language tag
    rc = main(
        ["caption", paths[0], "--model", str(tiny_dir), "--decoding", "beam", "--beam-size", "3"]
    )
    assert rc == 0 and capsys.readouterr().out.strip().endswith(".")


def test_cli_bad_image_fails_alone(tiny_dir, tmp_path, capsys):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(png_bytes())
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rc = main(["caption", str(bad), str(good), "--model", str(tiny_dir)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert str(good) in out and str(bad) not in out
    assert err.count("\n") == 1 and "bad.png" in err and "Traceback" not in err


def test_cli_user_errors_are_one_line(tmp_path):
    """The real entry point: a missing model is one line on stderr, exit 1, no traceback."""
    p = tmp_path / "x.png"
    p.write_bytes(png_bytes())
    proc = subprocess.run(
        [sys.executable, "-m", "captioner", "caption", str(p), "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: model_not_found:")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_cli_make_tiny_and_convert(tmp_path, capsys):
    assert main(["make-tiny", str(tmp_path / "tiny"), "--mapping", "transformer"]) == 0
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
    pt, vision_dir, lm_dir, _ = write_reference_parts(tmp_path / "ref", "mlp")
    out = tmp_path / "converted"
    argv = ["convert-clipcap", str(pt), str(out), "--mapping", "mlp", "--prefix-length", "4"]
    argv += ["--image-encoder", str(vision_dir), "--language-model", str(lm_dir)]
    assert main(argv) == 0
    cap = Captioner.from_pretrained(str(out), device="cpu")
    assert cap.caption(png_bytes())[0].text
    capsys.readouterr()
    argv[4] = "transformer"
    assert main(argv) == 1
    assert "checkpoint_mismatch" in capsys.readouterr().err


def test_max_tokens_is_bounded_by_the_model(tiny_captioner):
    room = tiny_captioner.lm.max_positions - tiny_captioner.config.prefix_length
    assert tiny_captioner.caption(png_bytes(), max_tokens=room, min_tokens=room)[0].tokens == room
    with pytest.raises(InvalidSettings) as e:
        tiny_captioner.caption(png_bytes(), max_tokens=room + 1)
    assert str(room) in e.value.message


# --- scores and confidence (CLIP's text tower) ----------------------------------------------


def test_every_caption_gets_a_confidence_from_one_text_pass(tiny_captioner):
    images = [png_bytes(c) for c in COLOURS]
    results = tiny_captioner.caption(images, max_tokens=8)
    for r in results:
        assert 0.0 < r.confidence < 1.0 and -1.0 <= r.similarity <= 1.0
        assert r.to_dict()["confidence"] == r.confidence
        assert "confidence_ms" in r.timings
    # the same numbers as scoring the captions afterwards
    sims = tiny_captioner.score(images, [r.text for r in results])
    torch.testing.assert_close(
        sims, torch.tensor([r.similarity for r in results]), atol=1e-4, rtol=0
    )
    alone = tiny_captioner.caption(images[1], max_tokens=8)[0]
    assert alone.confidence == pytest.approx(results[1].confidence, abs=1e-4)


def test_score_forms(tiny_captioner):
    images = [png_bytes(c) for c in COLOURS[:2]]
    pixels = tiny_captioner.preprocess([Image.new("RGB", (64, 48), c) for c in COLOURS[:2]])
    embeds = tiny_captioner.embed(pixels)
    one = tiny_captioner.score(images, ["a red circle.", "a green square."])
    assert one.shape == (2,)
    torch.testing.assert_close(
        tiny_captioner.score(pixels, ["a red circle.", "a green square."]), one
    )
    torch.testing.assert_close(
        tiny_captioner.score(embeds, ["a red circle.", "a green square."]), one
    )
    many = tiny_captioner.score(
        embeds, [["a red circle.", "x", "a dog"], ["a green square.", "y", "z"]]
    )
    assert many.shape == (2, 3)
    torch.testing.assert_close(many[:, 0], one)
    with pytest.raises(InvalidSettings):
        tiny_captioner.score(embeds, ["only one text"])


def test_a_model_without_text_tower_captions_without_confidence(tmp_path):
    from captioner.errors import ModelError
    from captioner.model.checkpoints import save_pretrained
    from captioner.model.tiny import tiny_tokenizer_and_model

    tok, model = tiny_tokenizer_and_model("mlp", text_tower=False)
    cap = Captioner.from_pretrained(str(save_pretrained(model, tok, tmp_path / "m")), device="cpu")
    r = cap.caption(png_bytes(), max_tokens=5)[0]
    assert r.confidence is None and "confidence" not in r.to_dict()
    assert "confidence_ms" not in r.timings
    with pytest.raises(ModelError):
        cap.score([png_bytes()], ["a cat."])


# --- candidates and reranking (the trained demo model: real captions, real scores) ----------


def held_out_shapes(seed: int = 1, rotate: bool = False) -> list[Image.Image]:
    """One held-out drawing of each of the 24 colour/shape pairs; ``rotate``: turned by up to
    45 degrees, a harder draw on which the model sometimes writes the wrong caption."""
    import random

    from captioner.train.demo import PAIRS
    from captioner.train.synthetic import draw_shape

    rng = random.Random(seed)
    images = [draw_shape(c, s, rng=rng) for c, s in PAIRS]
    if rotate:
        images = [im.rotate(rng.uniform(-45, 45), fillcolor=im.getpixel((0, 0))) for im in images]
    return images


def test_candidates_are_sorted_and_the_first_is_the_caption(demo_captioner):
    from captioner.model.scoring import log_confidence

    images = held_out_shapes(rotate=True)[:8]
    results = demo_captioner.caption(images, method="beam", candidates=5, clip_weight=1.0)
    for r in results:
        cands = r.candidates
        assert 1 < len(cands) <= 5 and len({c["caption"] for c in cands}) == len(cands)
        scores = [c["score"] for c in cands]
        assert scores == sorted(scores, reverse=True)
        first = cands[0]
        assert (first["caption"], first["similarity"], first["confidence"]) == (
            r.text,
            r.similarity,
            r.confidence,
        )
        assert r.to_dict()["candidates"] == cands
        for c in cands:  # the documented mix, on the candidate's own numbers
            assert set(c) == {"caption", "score", "logprob", "similarity", "confidence"}
            assert c["logprob"] < 0 and 0 <= c["confidence"] < 1
            clip = float(log_confidence(torch.tensor(c["similarity"]), demo_captioner.config))
            assert c["score"] == pytest.approx(c["logprob"] + clip, abs=2e-3)  # clip_weight 1
    # the confidence of each candidate is that of its caption scored alone
    sims = demo_captioner.score(images, [[c["caption"] for c in r.candidates[:2]] for r in results])
    got = torch.tensor([[c["similarity"] for c in r.candidates[:2]] for r in results])
    torch.testing.assert_close(sims, got, atol=1e-4, rtol=0)


def test_reranking_follows_clip_weight(demo_captioner):
    """clip_weight 0: the language model's best (beam search's own caption); a large weight:
    a caption CLIP is most confident of (log-confidence saturates: among captions CLIP is
    near-sure of, the language model still decides); on hard draws the two differ."""
    images = held_out_shapes(rotate=True)
    beam = [r.text for r in demo_captioner.caption(images, method="beam")]
    lm_only = demo_captioner.caption(images, method="beam", candidates=5, clip_weight=0.0)
    assert [r.text for r in lm_only] == beam
    for r in lm_only:
        assert r.candidates[0]["logprob"] == max(c["logprob"] for c in r.candidates)
    clip = demo_captioner.caption(images, method="beam", candidates=5, clip_weight=100.0)
    for r in clip:
        most = max(c["confidence"] for c in r.candidates)
        assert r.candidates[0]["confidence"] >= most - 0.02
    assert sum(a.text != b.text for a, b in zip(lm_only, clip, strict=True)) >= 1


def test_one_candidate_is_the_caption_as_before(demo_captioner):
    """candidates = 1 (the default) decodes as before: the demo model's right captions, no
    candidates field, the settings' keys (cache keys) unchanged."""
    from captioner.train.demo import PAIRS
    from captioner.train.synthetic import shape_caption

    images = held_out_shapes()
    want = [shape_caption(c, s).capitalize() for c, s in PAIRS]
    for method in ("greedy", "beam"):
        results = demo_captioner.caption(images, method=method)
        assert sum(r.text == w for r, w in zip(results, want, strict=True)) >= 23
        assert all(r.candidates is None and "candidates" not in r.to_dict() for r in results)
        keys = set(DecodingSettings(method=method).to_dict())
        assert not keys & {"candidates", "clip_weight"}
    s = DecodingSettings(method="beam", candidates=2).to_dict()
    assert (s["candidates"], s["clip_weight"]) == (2, DecodingSettings().clip_weight)


@pytest.mark.parametrize(
    "settings",
    [
        DecodingSettings(method="beam", candidates=4),
        DecodingSettings(method="nucleus", temperature=2.0, seed=5, candidates=4),
    ],
    ids=lambda s: s.method,
)
def test_a_batch_gives_each_image_its_candidates_alone(demo_captioner, settings):
    images = held_out_shapes(rotate=True)[:6]
    batched = demo_captioner.caption(images, settings, batch_size=6)
    assert any(len(r.candidates) > 1 for r in batched)
    for image, r in zip(images, batched, strict=True):
        alone = demo_captioner.caption(image, settings)[0]
        assert [c["caption"] for c in alone.candidates] == [c["caption"] for c in r.candidates]
        for a, b in zip(alone.candidates, r.candidates, strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-3)


def test_alts_are_checked_against_the_picked_caption(demo_captioner):
    images = held_out_shapes()[:2]  # a red circle, a red square
    alts = ["A red circle on a white background.", "A purple star on a white background."]
    for r in demo_captioner.caption(images, method="beam", candidates=3, alts=alts):
        assert r.alt_check is not None and r.similarity == r.candidates[0]["similarity"]
    plain = demo_captioner.caption(images, alts=alts)
    assert [r.alt_check["verdict"] for r in plain] == ["matches", "suspect"]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"method": "greedy", "candidates": 2}, "greedy"),
        ({"method": "beam", "beam_size": 3, "candidates": 4}, "beam_size"),
        ({"method": "nucleus", "candidates": 0}, "between 1 and 8"),
        ({"method": "nucleus", "candidates": 9}, "between 1 and 8"),
        ({"method": "beam", "candidates": 2, "clip_weight": -1.0}, "clip_weight"),
    ],
)
def test_bad_candidate_settings_are_refused(demo_captioner, overrides, words):
    with pytest.raises(InvalidSettings, match=words):
        demo_captioner.caption(held_out_shapes()[0], **overrides)
    with pytest.raises(InvalidSettings, match=words):
        DecodingSettings.from_dict(overrides)


def test_without_a_text_tower_candidates_rank_by_logprob(tmp_path):
    from captioner.model.checkpoints import save_pretrained
    from captioner.model.tiny import tiny_tokenizer_and_model

    tok, model = tiny_tokenizer_and_model("mlp", text_tower=False)
    cap = Captioner.from_pretrained(str(save_pretrained(model, tok, tmp_path / "m")), device="cpu")
    s = DecodingSettings(method="nucleus", temperature=3.0, seed=2, max_tokens=6, candidates=5)
    r = cap.caption(png_bytes(), s)[0]
    assert r.confidence is None and r.text == r.candidates[0]["caption"]
    assert all(set(c) == {"caption", "score", "logprob"} for c in r.candidates)
    assert all(c["score"] == c["logprob"] for c in r.candidates)
    logprobs = [c["logprob"] for c in r.candidates]
    assert len(logprobs) > 1 and logprobs == sorted(logprobs, reverse=True)
