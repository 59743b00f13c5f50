"""The missing/meaningless alt rules, held to the vectors the extension's tests share."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from captioner.alttext import classify_alt, clean_caption, file_name, meaningless_words, stopwords
from captioner.pages import find_images

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
