"""The missing/meaningless alt rules, held to the vectors the extension's tests share."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from pathlib import Path

import pytest
from helpers import png_bytes, serve_directory
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from captioner.alttext import (
    MAX_ALT_CHARS,
    alt_text,
    bound_text,
    classify_alt,
    clean_caption,
    file_name,
    meaningless_words,
    stopwords,
    tidy_text,
    unreadable,
)
from captioner.crawl.pages import find_images
from captioner.errors import ConfigError
from captioner.serve.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "tests/vectors/alttext.json").read_text())
CASES = VECTORS["cases"]
IN_CONTEXT = VECTORS["in_context"]
ALT_DATA = ROOT / "captioner/data/meaningless-alt.json"


def _id(case: dict) -> str:
    return " ".join(repr(case[k]) for k in ("alt", "src", "lang") if k in case)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_shared_vectors(case):
    assert classify_alt(case["alt"]) == case["verdict"]


@pytest.mark.parametrize("case", IN_CONTEXT, ids=_id)
def test_shared_vectors_in_context(case):
    assert classify_alt(case["alt"], case.get("src"), case.get("lang")) == case["verdict"]


@pytest.mark.parametrize("case", IN_CONTEXT, ids=_id)
def test_the_page_scanner_judges_an_alt_by_its_src_and_lang(case):
    # pages.py hands classify_alt the <img>'s src attribute and its nearest lang.
    attrs = {"src": case.get("src", "z.png"), "alt": case["alt"]}
    markup = "<img " + " ".join(f'{k}="{html.escape(v)}"' for k, v in attrs.items()) + ">"
    if "lang" in case:
        markup = f'<div lang="{html.escape(case["lang"])}"><p>{markup}</p></div>'
    images = find_images(markup, "https://docs.example.com/guide/")
    if attrs["src"].startswith(("data:", "blob:")):
        assert images == []  # not an image the scanner fetches
    else:
        assert [im.verdict for im in images] == [case["verdict"]]


def test_every_verdict_is_covered():
    assert {c["verdict"] for c in CASES} == {"missing", "decorative", "meaningless", "ok"}
    assert {c["verdict"] for c in IN_CONTEXT} == {"meaningless", "ok"}


def test_extension_ships_the_same_word_list():
    ours = json.loads(ALT_DATA.read_text())
    theirs = json.loads((ROOT / "extension/meaningless-alt.json").read_text())
    assert ours == theirs
    assert "image" in meaningless_words() and "a dog" not in meaningless_words()


def test_long_numbers_cost_linear_work():
    # A page writes the alt: a backtracking pattern for "word + number" was quadratic here
    # (20,000 digits between two letters: 1.3 s; this one would take ~30 s).
    assert classify_alt("a" + "1" * 100_000 + "x") == "ok"
    assert classify_alt("image" + " 1" * 50_000) == "meaningless"  # a word and numbers only
    assert classify_alt("image" + " 1" * 50_000 + " harbour") == "ok"
    assert classify_alt("Image " + "1" * 100_000) == "meaningless"
    assert classify_alt("the " * 50_000) == "meaningless"
    assert classify_alt("1", "%31" * 30_000 + ".png") == "meaningless"


def test_stopwords_are_chosen_by_the_primary_language_subtag():
    assert "the" in stopwords() and stopwords("") == stopwords(None) == stopwords("en")
    assert stopwords("en-GB") == stopwords(" EN ") == stopwords("en_US") == stopwords("en")
    assert "die" in stopwords("de-CH") and "die" not in stopwords("en")
    assert stopwords("da") == frozenset()  # no list: none ("and" is a duck in Danish)


def test_no_stopword_can_name_a_control_alone():
    # An image button's alt "Up", "Next" or "Aus" (off) names it: such words stay out of the
    # lists, in every language that has one.
    controls = {
        "en": {"up", "down", "in", "on", "off", "out", "next", "back", "home", "more", "go"},
        "de": {"an", "aus", "auf", "zu", "ab", "weiter", "zurück", "mehr"},
        "fr": {"plus", "haut", "bas", "suite", "retour", "oui", "non"},
        "es": {"más", "arriba", "abajo", "sí", "no"},
        "it": {"su", "giù", "più", "sì", "no", "avanti"},
        "pt": {"mais", "sim", "não", "sobre"},
        "nl": {"aan", "uit", "op", "af", "meer", "ja", "nee"},
    }
    assert set(controls) == set(json.loads(ALT_DATA.read_text())["stopwords"])
    for lang, words in controls.items():
        assert not stopwords(lang) & words, lang


def test_file_name():
    assert file_name("callouts/1.png") == "1"
    assert file_name(" https://x.example/a/b/build-info.PNG?v=1#top ") == "build-info"
    assert file_name("/m/caf%C3%A9%20menu.jpg") == "café menu"
    assert file_name("%E9t%E9.png") == "%E9t%E9"  # Latin-1, not UTF-8: as written
    assert file_name("100%.png") == "100%"  # a malformed escape: as written
    assert file_name("archive.tar.gz") == "archive.tar"
    for none in (None, "", "/docs/build-info", "photo.jpeg2000", ".png", "data:,a.png", "x/"):
        assert file_name(none) is None, none


def test_clean_caption_is_what_alt_text_needs():
    assert classify_alt(clean_caption("a dog on a couch")) == "ok"


# --- caption text: what a caption may become as alt (issue 20, finding 7) -------------------

CAPTION_VECTORS = json.loads((ROOT / "tests/vectors/caption-text.json").read_text())
# What a model (or a hostile server) can write: a 5,000-character caption, a right-to-left
# override that shows "gpj.exe" as "exe.jpg", and zero-width characters between words.
HOSTILE = "\u202einvoice gpj.exe\u202c a\u200b dog\u2060 \ufeffon a couch " + "and a dog " * 500
INVISIBLE = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u2060\ufeff\u00ad\u200e"


def _caption_vector_id(case: dict) -> str:
    return case["note"]


def _is_alt_text(text: str, max_chars: int) -> bool:
    """Bounded, and nothing invisible in it (joiners only between two visible characters)."""
    return len(text) <= max_chars and not any(c in INVISIBLE or unreadable(c) for c in text)


def _cut_at_a_word(text: str, alt: str) -> bool:
    """``alt`` is ``text``'s words up to one, then an ellipsis."""
    return alt.endswith("\u2026") and tidy_text(text).startswith(alt[:-1] + " ")


@pytest.mark.parametrize("case", CAPTION_VECTORS["cases"], ids=_caption_vector_id)
def test_caption_text_shared_vectors(case):
    text = case["text"] * case.get("repeat", 1)
    assert alt_text(text, case.get("max_chars", MAX_ALT_CHARS)) == case["alt"]


def test_caption_text_default_cap_is_one_number_everywhere():
    extension = (ROOT / "extension/caption-text.js").read_text()
    assert CAPTION_VECTORS["max_alt_chars"] == MAX_ALT_CHARS == Settings().max_alt_chars
    assert f"const MAX_ALT_CHARS = {MAX_ALT_CHARS};" in extension
    assert Settings.load({"ALTCAP_MAX_ALT_CHARS": "400"}).max_alt_chars == 400
    with pytest.raises(ConfigError, match="ALTCAP_MAX_ALT_CHARS"):
        Settings.load({"ALTCAP_MAX_ALT_CHARS": "3"})


@given(st.text(max_size=400), st.integers(min_value=2, max_value=300))
@hypothesis_settings(max_examples=300, deadline=None)
def test_caption_text_is_bounded_clean_and_stable(text, max_chars):
    alt = alt_text(text, max_chars)
    assert _is_alt_text(alt, max_chars)
    assert alt == alt.strip() and "  " not in alt
    assert alt_text(alt, max_chars) == alt  # applying the rule twice changes nothing


def test_clean_caption_drops_bidi_controls_and_invisible_characters():
    assert clean_caption("\u202einvoice\u200b gpj.exe\u202c") == "Invoice gpj.exe."
    assert clean_caption(" \u2066a\u00a0dog\u2069\ufeff .\u200d") == "A dog."
    assert clean_caption("\u202e\u200b\u00ad") == ""  # nothing readable: no caption


def test_caption_text_a_long_caption_is_cut_at_a_word():
    long = "a dog on a couch " * 300
    assert alt_text(long, 40) == "a dog on a couch a dog on a couch a dog\u2026"  # 40 in all
    alt = alt_text(long)
    assert len(alt) == 249 and alt.endswith(" on a\u2026")  # "couch" would make 251
    assert bound_text("a dog", 5) == "a dog"


def _Result(text: str):
    """What an engine or a captioner backend answers for one image (no text tower)."""
    from captioner.pipeline import CaptionResult

    return CaptionResult(text, text, 256)


class _FakeEngine:
    """The service's engine, answering ``text`` for every image."""

    ready, load_error, captioner, on_batch = True, None, None, None

    def __init__(self, text: str) -> None:
        self.text = text

    def start(self) -> None:
        pass

    def caption_images(self, images, settings, timeout_s=None):
        return [_Result(self.text) for _ in images]

    def wait_ready(self, timeout: float) -> bool:
        return True

    def stats(self) -> dict[str, int]:
        return {"queue_depth": 0}

    def retry_after(self) -> int:
        return 1

    def close(self, timeout: float | None = None) -> None:
        pass


@pytest.fixture
def altcap_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings a developer exported in their shell must not leak into these apps."""
    for name in list(os.environ):
        if name.startswith("ALTCAP_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("altcap_env")
@pytest.mark.parametrize("limit", [None, 40])
def test_caption_in_the_api_answer_is_bounded_and_clean(tmp_path, limit):
    """Before the fix the service answered all 5,000 characters, U+202E and zero-width
    characters included, and the extension wrote that as alt."""
    from app import create_app

    config = {"TESTING": True, "MODEL": "tiny", "DATA_DIR": tmp_path, "CACHE_URL": ""}
    if limit is not None:
        config["MAX_ALT_CHARS"] = limit
    app = create_app({**config, "ENGINE": _FakeEngine(HOSTILE)})
    try:
        client = app.test_client()
        body = {"images": [{"data": base64.b64encode(png_bytes()).decode()}]}
        first, again = (client.post("/v1/captions", json=body).get_json() for _ in range(2))
    finally:
        app.extensions["altcap"].close()
    assert again["results"][0]["cached"] is True  # the cache's copy is bounded on the way out
    for answer in (first, again):
        caption = answer["results"][0]["caption"]
        assert _is_alt_text(caption, limit or MAX_ALT_CHARS), caption
        assert caption.endswith("\u2026") and _cut_at_a_word(HOSTILE, caption)


@pytest.mark.usefixtures("altcap_env")
def test_caption_in_job_rows_reports_and_patched_pages_is_bounded_and_clean(tmp_path):
    from captioner.jobs.consumer import start_consumer
    from captioner.jobs.queue import JobQueue
    from captioner.jobs.reports import write_rows
    from captioner.jobs.request import parse_job

    site = tmp_path / "site"
    site.mkdir()
    (site / "0.png").write_bytes(png_bytes())
    (site / "page.html").write_text('<!doctype html><p><img src="0.png"></p>')
    overrides = {
        "DATA_DIR": tmp_path / "data",
        "ALLOW_PRIVATE_NETWORKS": True,
        "CRAWL_DELAY_S": 0,
        "MODEL": "tiny",
        "MAX_ALT_CHARS": 60,
    }
    queue = JobQueue(Settings.load({}, overrides))
    start_consumer(queue, _Backend(HOSTILE), workers=1)
    try:
        with serve_directory(site) as base:
            job, _ = queue.submit(parse_job({"pages": [f"{base}/page.html"]}, queue.settings))
            stop = time.monotonic() + 30
            while queue.status(job["id"])["state"] not in ("done", "failed", "cancelled"):
                assert time.monotonic() < stop, "the job did not finish"
                time.sleep(0.02)
        rows = queue.rows(job["id"])
        patched = queue.patched_page(job["id"], 1)
    finally:
        queue.close(timeout=5)
    assert [row["status"] for row in rows] == ["done"]
    caption = rows[0]["caption"]
    assert _is_alt_text(caption, 60) and _cut_at_a_word(HOSTILE, caption), caption
    for fmt in ("json", "csv", "html"):
        report = io.StringIO()
        write_rows(rows, fmt, report)
        assert not any(c in INVISIBLE for c in report.getvalue()), fmt
        assert "and a dog and a dog and a dog and a dog and a dog and" not in report.getvalue()
    assert f'alt="{caption}"' in patched and "\u202e" not in patched


class _Backend:
    """A job consumer's captioning backend answering ``text`` for every image."""

    max_pixels = 40_000_000

    def __init__(self, text: str) -> None:
        self.text = text

    def wait_ready(self, timeout: float) -> bool:
        return True

    def caption(self, images, decoding):
        return [_Result(self.text) for _ in images]


class _Captioner(_Backend):
    """The batch CLI's captioner: ``preprocess`` then ``caption_pixels``."""

    def preprocess(self, images):
        return images

    def caption_pixels(self, pixels, settings):
        return [_Result(self.text) for _ in pixels]


def test_caption_in_batch_cli_rows_is_bounded_and_clean(tmp_path):
    from captioner.crawl.urls import FetchLimits
    from captioner.jobs.plan import caption_rows
    from captioner.jobs.rows import PENDING

    (tmp_path / "0.png").write_bytes(png_bytes())
    with serve_directory(tmp_path) as base:
        rows = [{"image_url": f"{base}/0.png", "status": PENDING}]
        limits = FetchLimits(allow_private=True)
        captions = caption_rows(rows, _Captioner(HOSTILE), limits=limits, max_alt_chars=50)
        default = [{"image_url": f"{base}/0.png", "status": PENDING}]
        caption_rows(default, _Captioner(HOSTILE), limits=limits)
    assert rows[0]["status"] == "done" and captions == {rows[0]["image_url"]: rows[0]["caption"]}
    assert _is_alt_text(rows[0]["caption"], 50)
    assert _is_alt_text(default[0]["caption"], MAX_ALT_CHARS)
    assert len(default[0]["caption"]) > 200  # cut near the cap, at a word


def test_caption_that_is_only_invisible_characters_is_no_caption(tmp_path):
    from captioner.crawl.urls import FetchLimits
    from captioner.jobs.plan import caption_rows
    from captioner.jobs.rows import PENDING

    (tmp_path / "0.png").write_bytes(png_bytes())
    with serve_directory(tmp_path) as base:
        rows = [{"image_url": f"{base}/0.png", "status": PENDING}]
        limits = FetchLimits(allow_private=True)
        captions = caption_rows(rows, _Captioner(INVISIBLE), limits=limits)
    assert captions == {}
    assert (rows[0]["status"], rows[0]["error_code"]) == ("skipped", "no_caption")
