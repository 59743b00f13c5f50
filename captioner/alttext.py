"""Alt-text rules shared by the service, the batch jobs and (via test vectors) the extension."""

from __future__ import annotations

import re

_SPACES = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    """Tidy a raw model caption for use as alt text.

    Collapses whitespace, capitalises the first letter and ends with exactly one period
    (the model usually writes one, sometimes several or none, and sometimes a leading space).
    """
    text = _SPACES.sub(" ", text).strip()
    text = text.rstrip(" .")
    if not text:
        return ""
    return text[0].upper() + text[1:] + "."
