"""Alt-text rules shared by the service, the batch jobs and (via test vectors) the extension."""

from __future__ import annotations

import json
import re
import unicodedata
from contextlib import suppress
from functools import cache
from importlib import resources
from itertools import groupby
from typing import Literal
from urllib.parse import unquote

Verdict = Literal["missing", "decorative", "meaningless", "ok"]

_SPACES = re.compile(r"\s+")
_IMAGE_FILE = re.compile(r"\.(jpe?g|png|gif|webp|svg|bmp|tiff?|avif|heic|ico)$", re.IGNORECASE)
_URL = re.compile(r"^(https?:|data:|//|/\S)", re.IGNORECASE)
_DIGITS = "0123456789"  # ASCII only, as in detection.js
_NUMBER_SEPARATORS = " _-.#("
# Symbols that a screen reader reads as something ("+", "→", "€", "✓", "©", emoji): an alt
# holding one says something. Modifier symbols (Sk: "^", "`") and punctuation do not.
_MEANINGFUL_SYMBOLS = frozenset({"Sm", "Sc", "So"})
# A src's scheme, where it has one: only these name a file (data:, blob: and the rest do not).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_FILE_SCHEMES = frozenset({"http", "https", "file", "ftp"})
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")  # decodeURIComponent() refuses these
_SUBTAG_SEPARATORS = re.compile(r"[-_]")
_ASCII_SPACES = " \t\n\f\r"  # what HTML strips from an attribute's URL or language tag


@cache
def _data() -> dict:
    text = resources.files("captioner").joinpath("data/meaningless-alt.json").read_text()
    return json.loads(text)


@cache
def meaningless_words() -> frozenset[str]:
    """Alt texts that say nothing ("image", "photo", ...): the data file the extension ships
    a copy of (``extension/meaningless-alt.json``; a test keeps the two identical)."""
    return frozenset(w.lower() for w in _data()["words"])


@cache
def _stopword_lists() -> dict[str, frozenset[str]]:
    return {
        lang: frozenset(w.lower() for w in words) for lang, words in _data()["stopwords"].items()
    }


def _primary_subtag(lang: str | None) -> str:
    """``lang``'s primary subtag, lower-case ("en-GB": "en"); "en" where none is known."""
    lang = (lang or "").strip(_ASCII_SPACES)
    return _SUBTAG_SEPARATORS.split(lang, maxsplit=1)[0].lower() if lang else "en"


def stopwords(lang: str | None = None) -> frozenset[str]:
    """The words of language ``lang`` that name nothing alone ("a", "the", "of"...).

    Chosen by the primary subtag ("en-GB": English); English where no language is known
    (None or ""); none for a language the data file has no list for: what names nothing
    there is not known, and English's list would take Danish "and" (a duck) or Turkish "at"
    (a horse) for nothing.
    """
    return _stopword_lists().get(_primary_subtag(lang), frozenset())


def file_name(src: str | None) -> str | None:
    """The name of the file ``src`` points at, without its extension; None if it names none.

    The last path segment (no query or fragment), percent-decoded as UTF-8 (left as written
    where it holds a malformed escape or bytes that are not UTF-8, which
    ``decodeURIComponent`` refuses too), less an extension of one to five ASCII letters or
    digits: ``callouts/1.png`` is "1", ``/m/caf%C3%A9-menu.jpg?v=2`` is "café-menu".
    ``data:``, ``blob:`` and other URLs whose scheme is not http(s), file or ftp name none.
    """
    url = (src or "").strip(_ASCII_SPACES)
    scheme = _SCHEME.match(url)
    if scheme and scheme.group(1).lower() not in _FILE_SCHEMES:
        return None
    path = url.split("#", 1)[0].split("?", 1)[0]
    segment = path[max(path.rfind("/"), path.rfind("\\")) + 1 :]
    if "%" in segment and not _BAD_ESCAPE.search(segment):
        with suppress(UnicodeDecodeError):  # not UTF-8: the name as written
            segment = unquote(segment, errors="strict")
    dot = segment.rfind(".")
    extension = segment[dot + 1 :]
    if dot < 0 or not 1 <= len(extension) <= 5 or not (extension.isascii() and extension.isalnum()):
        return None
    return _SPACES.sub(" ", segment[:dot]).strip() or None


def _strip_punctuation(text: str) -> str:
    start, end = 0, len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return text[start:end]


def classify_alt(alt: str | None, src: str | None = None, lang: str | None = None) -> Verdict:
    """What an ``alt`` attribute tells a screen-reader user.

    ``missing``: no attribute; ``decorative``: empty (the author says: skip it);
    ``meaningless``: a file name, a URL, or a word from ``meaningless_words`` (alone, or
    followed by a number: "Image 1"), or nothing but such words, numbers, punctuation and the
    stopwords of the alt's language ("a", "picture of the": what Chrome leaves when it judges
    an alt); ``ok``: author text, which is never replaced. Symbols that read as something
    ("+", "→", "€") and words of any length (a single CJK ideograph: "猫") say something.

    ``src`` (the image's ``src`` attribute, optional): an alt equal to its file name without
    the extension says nothing ("build-info" on ``build-info.png``), unless it is one plain
    word ("search" on ``search.svg`` names what the file shows); an alt of ASCII digits equal
    to it is the text of an image of text, and right ("1" on ``callouts/1.png``). ``lang``
    (the alt's language, its nearest ``lang``; optional): whose ``stopwords`` apply.

    The extension's ``detection.js`` implements the same rules; tests/vectors/alttext.json
    holds both to them.
    """
    if alt is None:
        return "missing"
    text = _SPACES.sub(" ", alt).strip()
    if not text:
        return "decorative"
    name = file_name(src)
    if name is not None and text == name and text.isascii() and text.isdigit():
        return "ok"  # a numbered callout: an image of text, whose alt is its text
    if _URL.match(text) or _IMAGE_FILE.search(text):
        return "meaningless"
    if name is not None and text.lower() == name.lower() and not _one_word(text):
        return "meaningless"  # the file's name, as a CMS fills it in: "build-info"
    core = _strip_punctuation(text).lower()
    if core in meaningless_words():
        return "meaningless"
    word = _without_number(core)  # "Image 1", "photo_03", "DSC 0042"
    if word is not None and _strip_punctuation(word) in meaningless_words():
        return "meaningless"
    return "ok" if _anything_left(text, lang) else "meaningless"


def _one_word(text: str) -> bool:
    """Letters only (with their combining marks): one plain word."""
    return all(unicodedata.category(c)[0] in "LM" for c in text)


def _word_char(c: str) -> bool:
    return unicodedata.category(c)[0] in "LMN"  # letters, their marks, digits


def _anything_left(text: str, lang: str | None) -> bool:
    """Whether anything is left of ``text`` once punctuation, numbers, ``meaningless_words``
    and ``stopwords(lang)`` are taken out: a word with a letter in it, or a symbol that reads
    as something. Words are runs of letters, marks and digits (what is not one separates
    them: "l'image" is "l" and "image")."""
    if any(unicodedata.category(c) in _MEANINGFUL_SYMBOLS for c in text):
        return True
    unsaid = (meaningless_words(), stopwords(lang))
    for is_word, chars in groupby(text, key=_word_char):
        if not is_word:
            continue
        word = "".join(chars)
        if any(c.isalpha() for c in word) and not any(word.lower() in s for s in unsaid):
            return True
    return False


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
