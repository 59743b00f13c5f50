"""The alt rule: text for images of text, caption + "Appears to say" for pictures with text."""

from __future__ import annotations

import pytest

from captioner.describe import ALT_FROM, AltRule, describe, shorten_text, text_label


def test_the_three_cases():
    text_image = describe("A blue rectangle.", "SIGN UP\ntoday", True)
    assert text_image == {
        "caption": "A blue rectangle.",
        "text": "SIGN UP\ntoday",
        "alt": "SIGN UP today",
        "alt_from": "text",
    }
    picture = describe("A shop window with a sign.", "Summer sale", False)
    assert picture["alt"] == "A shop window with a sign. Appears to say: Summer sale"
    assert picture["alt_from"] == "caption_and_text"
    plain = describe("A dog on the grass.", "", False)
    assert plain["alt"] == "A dog on the grass." and plain["alt_from"] == "caption"
    assert plain["text"] == ""
    unread = describe("A dog on the grass.", None, False)
    assert "text" not in unread and unread["alt"] == "A dog on the grass."
    assert {d["alt_from"] for d in (text_image, picture, plain)} == set(ALT_FROM)


def test_label_follows_the_language_or_the_setting():
    assert text_label("de-AT") == "Scheint zu sagen:"
    assert text_label("sw") == "Appears to say:"
    assert text_label("en", "Text:") == "Text:"
    fr = describe("Une vitrine.", "Soldes", False, language="fr")
    assert fr["alt"] == "Une vitrine. Semble dire : Soldes"
    own = describe("A sign.", "Exit", False, rule=AltRule(label="Reads:"))
    assert own["alt"] == "A sign. Reads: Exit"


def test_a_caption_without_a_full_stop_gets_one_before_the_label():
    assert describe("a sign", "Exit", False)["alt"] == "a sign. Appears to say: Exit"


def test_long_text_is_cut_at_a_sentence_then_a_word():
    text = "Opening hours changed. We open at ten on Sundays and close late on Fridays."
    assert shorten_text(text, 40) == "Opening hours changed."
    assert shorten_text("word " * 30, 40).endswith("\u2026")
    assert len(shorten_text("word " * 30, 40)) <= 40
    alt = describe("A poster.", "word " * 100, False, rule=AltRule(max_chars=120))["alt"]
    assert len(alt) <= 120 and alt.startswith("A poster. Appears to say: word")


@pytest.mark.parametrize("bad", ["\u202eexe.jpg", "Sale\u200b\u200b 50%"])
def test_text_is_tidied_like_any_alt(bad):
    alt = describe("A sign.", bad, True)["alt"]
    assert "\u202e" not in alt and "\u200b" not in alt
