"""The description to use as alt text, from the model's caption and the image's own text.

WCAG's rule for an image of text is that its alt is the text itself; a photo-caption model
cannot read, so AltCap reads the text apart (``captioner.read``) and combines the two here:

- an image that is mostly text (a button, a banner, a heading: ``mostly_text``) gets its
  text: ``"Sign up today"``;
- a picture with some text gets the caption and the text after a label in the captions'
  language: ``"A shop window. Appears to say: Summer sale 50% off"``;
- a picture without text (or whose text was not read) gets the caption.

The text in an alt is cut at a sentence end, else a word, to ``text_max_chars``
(``ALTCAP_OCR_MAX_CHARS``), and the whole alt to ``max_chars`` (``ALTCAP_MAX_ALT_CHARS``),
both through ``alttext``: nothing a screen reader should not hear, one line.
``ALT_FROM`` names which of the three an alt is, for clients that mark machine-made alt
("Appears to say: ..." for text, "Appears to be: ..." for a caption).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from captioner.alttext import MAX_ALT_CHARS, alt_text, bound_text, tidy_text

__all__ = [
    "ALT_FROM",
    "LABELS",
    "MAX_TEXT_CHARS",
    "AltRule",
    "describe",
    "shorten_text",
    "text_label",
]

ALT_FROM = ("caption", "text", "caption_and_text")  # what an alt was made of
MAX_TEXT_CHARS = 150  # default room for an image's text inside its alt (characters)
# "Appears to say:" in the languages AltCap has captions and stopwords for; another
# language gets English unless ALTCAP_OCR_LABEL says otherwise.
LABELS = {
    "en": "Appears to say:",
    "de": "Scheint zu sagen:",
    "fr": "Semble dire :",
    "es": "Parece decir:",
    "it": "Sembra dire:",
    "pt": "Parece dizer:",
    "nl": "Lijkt te zeggen:",
}
_SENTENCE_ENDS = ".!?\u3002\uff01\uff1f"


def text_label(language: str | None, override: str = "") -> str:
    """The label before an image's text: ``override`` if set, else by the captions' language."""
    if override.strip():
        return tidy_text(override)
    primary = (language or "en").split("-")[0].strip().lower()
    return LABELS.get(primary, LABELS["en"])


def shorten_text(text: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``text`` on one line (lines joined by spaces), cut at the last sentence end that keeps
    at least half the room, else at a word with an ellipsis (``alttext.bound_text``)."""
    line = tidy_text(text)
    if len(line) <= max_chars:
        return line
    head = line[:max_chars]
    cut = max(head.rfind(c) for c in _SENTENCE_ENDS)
    if cut + 1 >= max_chars // 2:
        return head[: cut + 1]
    return bound_text(line, max_chars)


@dataclass(frozen=True)
class AltRule:
    """How an alt is made: its bounds and the label (the service's and jobs' settings)."""

    max_chars: int = MAX_ALT_CHARS
    text_max_chars: int = MAX_TEXT_CHARS
    label: str = ""  # "" = by the captions' language (``text_label``)


def describe(
    caption: str,
    text: str | None,
    mostly_text: bool,
    *,
    language: str | None = "en",
    rule: AltRule = AltRule(),
) -> dict[str, Any]:
    """``{"caption", "text", "alt", "alt_from"}`` for one image.

    ``caption`` is bounded as alt (``alttext.alt_text``); ``text`` stays as read (lines
    joined by ``"\\n"``; ``""`` when the image says nothing; None when it was not read, and
    then the key is left out); ``alt`` follows the rule in the module docstring.
    """
    caption = alt_text(caption, rule.max_chars)
    out: dict[str, Any] = {"caption": caption}
    if text is not None:
        out["text"] = text
    said = shorten_text(text or "", min(rule.text_max_chars, rule.max_chars))
    if said and (mostly_text or not caption):
        out["alt"], out["alt_from"] = alt_text(said, rule.max_chars), "text"
    elif said:
        whole = f"{_sentence(caption)} {text_label(language, rule.label)} {said}"
        out["alt"], out["alt_from"] = alt_text(whole, rule.max_chars), "caption_and_text"
    else:
        out["alt"], out["alt_from"] = caption, "caption"
    return out


def _sentence(caption: str) -> str:
    """The caption ending in a full stop, so that the label starts a new sentence."""
    caption = caption.rstrip()
    if caption.endswith("\u2026"):
        caption = caption[:-1].rstrip()
    return caption if caption[-1:] in _SENTENCE_ENDS else caption + "."
