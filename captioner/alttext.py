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


# --- caption text: what may be written as alt ---------------------------------------------
# One rule for every caption that becomes alt text or a page's aria-label: the service's
# answers, job rows and reports, the batch CLI and (extension/caption-text.js, held to the
# same tests/vectors/caption-text.json) the extension, which also meets servers that are
# not AltCap. A screen reader must hear what a sighted reader of the alt would see, in the
# order they would see it, and not a novel: no bidi controls that reorder it (U+202E shows
# "gpj.exe" as "exe.jpg"), no invisible characters that hide or pad words, no controls,
# and a bounded length.

MAX_ALT_CHARS = 250  # default cap on alt text, in code points, the ellipsis included: alt
# is one or two sentences (WebAIM, the W3C's alt decision tree); longer belongs beside the
# image. The extension's caption-text.js enforces the same number on any server's text.
ELLIPSIS = "\u2026"  # what ends a caption cut short
# Zero-width non-joiner and joiner: spelling inside a word (Persian, Indic scripts) and one
# emoji out of several ("👩\u200d💻" is "woman technologist", not "woman, laptop"). Kept
# between two visible characters, dropped anywhere else (a word edge, a run of them).
_JOINERS = "\u200c\u200d"
_SPACE_CONTROLS = "\t\n\v\f\r\x85"  # controls that separate words: a space
_SPACE_CATEGORIES = frozenset({"Zs", "Zl", "Zp"})  # U+00A0, U+3000, U+2028...: a space
# Other (Cc), format (Cf: bidi controls, LRM/RLM/ALM, zero-width space, word joiner, BOM,
# soft hyphen, tags) and surrogate (Cs: a lone half of a pair) code points are dropped.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt), which renders as
# nothing, as ranges; beyond Cf it holds the Hangul fillers, the Mongolian free variation
# selectors, the combining grapheme joiner, variation selectors (also the 256 after
# U+E0100, which can smuggle a byte each) and reserved code points. An emoji loses only
# its text/emoji presentation choice, and a subdivision flag (tags) becomes a black flag.
_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_SKIN_TONES = range(0x1F3FB, 0x1F400)  # emoji modifiers: part of the emoji before them
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)  # two make one flag
_TRAILING = frozenset({"Po", "Pd"})  # ",", ".", ";", "-": not left before the ellipsis


def _dropped(c: str) -> bool:
    if c == "\ufffd" or unicodedata.category(c) in _DROPPED_CATEGORIES:
        return True
    n = ord(c)
    return any(lo <= n <= hi for lo, hi in _IGNORABLE)


def tidy_text(text: str) -> str:
    """``text`` with nothing a screen reader should not read, on one line.

    Drops control, format and surrogate code points (bidi embeddings, overrides and
    isolates, LRM/RLM/ALM, zero-width spaces, the BOM, soft hyphens, tags), Unicode's
    default-ignorable ones (variation selectors, Hangul fillers) and U+FFFD, which the
    tokenizer writes for a character whose bytes a caption stopped inside. Zero-width
    joiners and non-joiners stay only between two visible characters. Every run of
    whitespace (tabs, line breaks, no-break and ideographic spaces) is one space; none at
    either end.
    """
    chars = []
    for c in text:
        if c in _JOINERS:
            chars.append(c)
        elif c in _SPACE_CONTROLS or unicodedata.category(c) in _SPACE_CATEGORIES:
            chars.append(" ")
        elif not _dropped(c):
            chars.append(c)
    out: list[str] = []
    edges = " " + _JOINERS
    for i, c in enumerate(chars):
        if c == " " and (not out or out[-1] == " "):
            continue
        if c in _JOINERS:
            after = chars[i + 1] if i + 1 < len(chars) else " "
            if not out or out[-1] in edges or after in edges:
                continue
        out.append(c)
    return "".join(out).rstrip(" ")


def _splits_a_character(chars: list[str], cut: int) -> bool:
    """Whether keeping ``chars[:cut]`` cuts what a reader sees as one character in two: a
    letter from its combining marks, an emoji from its skin tone or its ZWJ sequence, or
    a flag's two regional indicators. (Surrogate pairs are never split: these are code
    points.)"""
    before, after = chars[cut - 1], chars[cut]
    if after in _JOINERS or before in _JOINERS or unicodedata.category(after)[0] == "M":
        return True
    if ord(after) in _SKIN_TONES:
        return True
    if ord(before) in _REGIONAL_INDICATORS and ord(after) in _REGIONAL_INDICATORS:
        run = 0
        while run < cut and ord(chars[cut - 1 - run]) in _REGIONAL_INDICATORS:
            run += 1
        return run % 2 == 1
    return False


def bound_text(text: str, max_chars: int = MAX_ALT_CHARS) -> str:
    """``text`` if it has at most ``max_chars`` code points, else cut short with an ellipsis.

    The cut is at the last space that keeps at least half the room (the text has no such
    space: CJK, a URL, one long "word") else between two characters, moved back rather
    than split a letter from its marks, an emoji sequence or a flag. Punctuation left
    before the ellipsis goes (``"a dog, a cat…"``, not ``"a dog, a cat,…"``). The result,
    ellipsis included, has at most ``max_chars`` code points. Expects ``tidy_text``'s
    output (spaces are single " ").
    """
    if max_chars < 2:
        raise ValueError("max_chars must be at least 2")
    chars = list(text)
    if len(chars) <= max_chars:
        return text
    room = max_chars - 1  # code points before the ellipsis
    half = max(1, room // 2)
    cut = next((i for i in range(room, half - 1, -1) if chars[i] == " "), None)
    if cut is None:
        cut = room
        while cut > 1 and _splits_a_character(chars, cut):
            cut -= 1
        if _splits_a_character(chars, cut):
            cut = room  # one character longer than the room: split, as it cannot be helped
    head = "".join(chars[:cut]).rstrip(" ")
    short = head
    while short and (short[-1] in " " + _JOINERS or unicodedata.category(short[-1]) in _TRAILING):
        short = short[:-1]
    return (short or head) + ELLIPSIS


def alt_text(caption: str, max_chars: int = MAX_ALT_CHARS) -> str:
    """What a caption may put into a page as alt text: ``tidy_text``, then ``bound_text``.

    ``""`` when nothing readable is left (the image then keeps its alt as it is). Applied
    wherever text becomes alt (the API's ``caption``, job and batch rows, patched pages);
    the extension's ``caption-text.js`` applies it to whatever server answered.
    """
    return bound_text(tidy_text(caption), max_chars)


def clean_caption(text: str) -> str:
    """Tidy a raw model caption for use as alt text.

    ``tidy_text`` (nothing a screen reader should not read, whitespace collapsed), then a
    capital first letter and exactly one final period (the model usually writes one,
    sometimes several or none, and sometimes a leading space). A caption with nothing left
    is "". Not bounded: the model's words, cut to a length where they become alt
    (``alt_text``, whose bound is a setting).
    """
    text = tidy_text(text).rstrip(" ." + _JOINERS)
    if not text:
        return ""
    return text[0].upper() + text[1:] + "."
