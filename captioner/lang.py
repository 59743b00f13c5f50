"""Language tags (BCP 47, as in ``lang`` attributes): which text is in which language, and
where a ``lang`` mark is needed so that a screen reader pronounces a caption right."""

from __future__ import annotations

import re

__all__ = ["is_language_tag", "lang_to_mark", "same_language"]

# A BCP 47 language tag as HTML's lang attribute takes it: a 2-3 letter language, then
# subtags (script, region, variant) of 1-8 letters or digits: "en", "pt-BR", "zh-Hant".
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")


def is_language_tag(value: object) -> bool:
    """True for a language tag fit for HTML's ``lang`` attribute (``en``, ``pt-BR``)."""
    return isinstance(value, str) and _LANGUAGE_TAG.fullmatch(value) is not None


def same_language(where: str | None, text: str) -> bool:
    """Whether text in language ``text`` reads right where the language is ``where``: the
    same primary subtag (``en-GB`` text on an ``en`` page is fine; no language is not)."""
    if not where:
        return False
    return where.split("-")[0].strip().lower() == text.split("-")[0].strip().lower()


def lang_to_mark(where: str | None, text: str | None) -> str | None:
    """The ``lang`` that text in language ``text`` needs where the language is ``where``:
    ``text`` where they differ (or ``where`` says none); None where no mark is needed, or
    the text's language is not known."""
    return text if text and not same_language(where, text) else None
