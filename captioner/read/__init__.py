"""Reading the text in images (OCR): what an image says, for alt text's "Appears to say".

``open_reader(langs, model_language)`` gives a ``TextReader`` (Tesseract 5 through
tesserocr, with the language models the system's packages installed); its
``read(image, timeout_s)`` gives a ``Reading``: ``text`` in reading order and
``mostly_text``, whether the image is its text. See ``reader`` for what is done beyond
Tesseract itself, and docs/ocr.md for the measurements behind the choice of engine.
"""

from __future__ import annotations

import logging

from captioner.errors import OcrUnavailable
from captioner.read.languages import find_tessdata, tesseract_codes
from captioner.read.pool import TextOutcome, TextPool
from captioner.read.reader import Line, Reading, TextReader

__all__ = [
    "Line",
    "Reading",
    "TextOutcome",
    "TextPool",
    "TextReader",
    "open_pool",
    "open_reader",
]

log = logging.getLogger(__name__)


def open_reader(
    langs: str = "", model_language: str = "en", tessdata: str | None = None
) -> TextReader:
    """A reader for ``langs`` (``ALTCAP_OCR_LANGS``; ``""``: the model's language).

    Raises ``OcrUnavailable`` with what to install when tesserocr or the language data is
    missing.
    """
    codes = tesseract_codes(langs, model_language)
    folder = find_tessdata(codes, tessdata)
    try:
        return TextReader(codes, folder)
    except ImportError as exc:
        raise OcrUnavailable(
            f"tesserocr is not installed ({exc}): pip install tesserocr, or set ALTCAP_OCR=off"
        ) from exc


def open_pool(
    enabled: bool,
    langs: str = "",
    model_language: str = "en",
    *,
    threads: int = 2,
    timeout_s: float = 2.0,
) -> tuple[TextPool | None, str | None]:
    """``(pool, None)``, or ``(None, warning)`` when reading is off (``None``) or the engine
    cannot be opened (``"ocr_unavailable"``, logged once with what to install): captions are
    served either way, the results then carry the warning.
    """
    if not enabled:
        return None, None
    try:
        reader = open_reader(langs, model_language)
    except OcrUnavailable as exc:
        log.error("text in images will not be read: %s", exc.message)
        return None, OcrUnavailable.code
    return TextPool(reader, threads=threads, timeout_s=timeout_s), None
