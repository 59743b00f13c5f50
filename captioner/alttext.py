"""Alt-text rules shared by the service, the batch jobs and (via test vectors) the extension."""

from __future__ import annotations

import json
import re
import unicodedata
from functools import cache
from importlib import resources
from typing import Literal

Verdict = Literal["missing", "decorative", "meaningless", "ok"]

_SPACES = re.compile(r"\s+")
_IMAGE_FILE = re.compile(r"\.(jpe?g|png|gif|webp|svg|bmp|tiff?|avif|heic|ico)$", re.IGNORECASE)
_URL = re.compile(r"^(https?:|data:|//|/\S)", re.IGNORECASE)
_DIGITS = "0123456789"  # ASCII only, as in detection.js
_NUMBER_SEPARATORS = " _-.#("


@cache
def meaningless_words() -> frozenset[str]:
    """Alt texts that say nothing ("image", "photo", ...): the data file the extension ships
    a copy of (``extension/meaningless-alt.json``; a test keeps the two identical)."""
    text = resources.files("captioner").joinpath("data/meaningless-alt.json").read_text()
    return frozenset(w.lower() for w in json.loads(text)["words"])


def _strip_punctuation(text: str) -> str:
    start, end = 0, len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return text[start:end]


def classify_alt(alt: str | None) -> Verdict:
    """What an ``alt`` attribute tells a screen-reader user.

    ``missing``: no attribute; ``decorative``: empty (the author says: skip it);
    ``meaningless``: a file name, a URL, only digits or punctuation, or a word from
    ``meaningless_words`` (alone, or followed by a number: "Image 1"); ``ok``: author text,
    which is never replaced. The extension's ``detection.js`` implements the same rules;
    tests/vectors/alttext.json holds both to them.
    """
    if alt is None:
        return "missing"
    text = _SPACES.sub(" ", alt).strip()
    if not text:
        return "decorative"
    if not any(c.isalpha() for c in text):
        return "meaningless"
    if _URL.match(text) or _IMAGE_FILE.search(text):
        return "meaningless"
    core = _strip_punctuation(text).lower()
    if core in meaningless_words():
        return "meaningless"
    word = _without_number(core)  # "Image 1", "photo_03", "DSC 0042"
    if word is not None and _strip_punctuation(word) in meaningless_words():
        return "meaningless"
    return "ok"


def _without_number(text: str) -> str | None:
    """``text`` without the number it ends with (and the separators before it), or None if
    it ends with no digit. Not a regular expression: on page-controlled text a backtracking
    pattern for this is quadratic (20,000 digits between two letters took 1.3 s)."""
    word = text.rstrip(_DIGITS)
    return None if word == text else word.rstrip(_NUMBER_SEPARATORS)


def unreadable(c: str) -> bool:
    """A character alt text must not hold: U+FFFD or a control character (not whitespace)."""
    return c == "\ufffd" or (unicodedata.category(c) == "Cc" and not c.isspace())


def clean_caption(text: str) -> str:
    """Tidy a raw model caption for use as alt text.

    Collapses whitespace, capitalises the first letter and ends with exactly one period
    (the model usually writes one, sometimes several or none, and sometimes a leading space).
    Drops what a screen reader should not read: U+FFFD, which the tokenizer writes for a
    character whose bytes were cut off (GPT-2's tokens are bytes, and a caption can stop
    inside a character), and control characters. A caption with nothing left is "".
    """
    text = "".join(c for c in text if not unreadable(c))
    text = _SPACES.sub(" ", text).strip()
    text = text.rstrip(" .")
    if not text:
        return ""
    return text[0].upper() + text[1:] + "."
