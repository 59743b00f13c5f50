"""The text in a batch's images, read beside their captioning, and each row's alt.

The batch CLI (``plan.caption_rows``), ``python -m captioner caption`` and the job consumer
(``consumer``) hand each decoded image to the ``Describer`` before its batch goes to the
model (``submit``: Tesseract reads on threads of its own while torch decodes), collect the
reading once the captions are back (``collect``), and make the row's fields with
``describe`` (``fields``): ``caption``, ``text``, ``alt``, ``alt_from`` and ``warnings``.

A reading that failed or ran past ``ALTCAP_OCR_TIMEOUT_S`` is its row's warning
(``ocr_failed``, ``ocr_timeout``), never a failed row; an engine that could not be opened
is every row's (``ocr_unavailable``). Text that was not asked for (``ALTCAP_OCR=off``,
``--no-read-text``, a job's ``"read_text": false``) is ``None`` and warns of nothing.

Jobs cache readings as the service does, apart from captions and in the same entries
(``serve.cache.text_key``: the image's SHA-256 and the engine's id, which names Tesseract's
version, the languages and the reader's rules; the value ``{"text", "mostly_text"}``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from captioner.describe import AltRule, describe
from captioner.jobs.rows import described
from captioner.read import Reading, TextPool
from captioner.serve.cache import text_value
from captioner.serve.settings import Settings
from captioner.trust import MIN_CONFIDENCE, is_confident

__all__ = ["Describer", "Text", "cancel"]

log = logging.getLogger(__name__)

Text = tuple[dict[str, Any] | None, str | None]  # ({"text", "mostly_text"}, None) or (None, code)


@dataclass
class Describer:
    """How a batch's rows get their text and alt: a reader pool (None: no text is read),
    why there is none when text was asked for, the alt rule, the captions' language and the
    confidence below which a caption is not said (``trust.is_confident``)."""

    pool: TextPool | None = None
    warning: str | None = None  # every row's, when the engine could not be opened
    rule: AltRule = field(default_factory=AltRule)
    language: str | None = "en"
    min_confidence: float = MIN_CONFIDENCE  # ALTCAP_MIN_CONFIDENCE

    @classmethod
    def open(
        cls,
        settings: Settings,
        language: str | None,
        *,
        read_text: bool = True,
        langs: str | None = None,
    ) -> Describer:
        """From the service's settings (``ALTCAP_OCR*``, ``ALTCAP_MAX_ALT_CHARS``,
        ``ALTCAP_MIN_CONFIDENCE``); text is read when ``ALTCAP_OCR`` is on and
        ``read_text``; ``langs`` replaces ``ALTCAP_OCR_LANGS``."""
        pool, warning = settings.text_pool(language, read_text=read_text, langs=langs)
        return cls(pool, warning, settings.alt_rule(), language, settings.min_confidence)

    @property
    def reads(self) -> bool:
        return self.pool is not None

    def without_text(self) -> Describer:
        """The same rule with no text read and no warning (a job's ``"read_text": false``)."""
        return dataclasses.replace(self, pool=None, warning=None)

    def submit(self, image: Image.Image) -> Future[Reading] | None:
        """Start reading ``image``'s text; None when no text is read (or the pool was
        closed under a chunk still running: a consumer stopping)."""
        if self.pool is None:
            return None
        try:
            return self.pool.submit(image)
        except RuntimeError:  # "cannot schedule new futures after shutdown"
            log.warning("the text of an image was not read: the reader pool is closed")
            return None

    def collect(self, future: Future[Reading] | None) -> Text:
        """The reading ``submit`` started, or the warning why there is none."""
        if future is None or self.pool is None:
            return None, self.warning
        reading, warning = self.pool.outcome(future)
        return (text_value(reading) if reading is not None else None), warning

    def describe(self, caption: str, text: Mapping[str, Any] | None) -> dict[str, Any]:
        """``describe.describe``'s answer for a caption and its image's text (None: not read)."""
        return describe(
            caption,
            text["text"] if text is not None else None,
            bool(text and text["mostly_text"]),
            language=self.language,
            rule=self.rule,
        )

    def fields(
        self,
        caption: str,
        text: Mapping[str, Any] | None,
        warning: str | None = None,
        *,
        confidence: float | None = None,
        alt_check: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A row's fields (``rows.described``) from its caption, its image's text and, with
        a text tower, the caption's ``confidence`` and the author's ``alt_check``."""
        return described(
            self.describe(caption, text),
            [warning] if warning else [],
            confidence=confidence,
            confident=is_confident(confidence, self.min_confidence),
            alt_check=alt_check,
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def cancel(futures: Iterable[Future[Any] | None]) -> None:
    """Stop readings nobody will collect (their batch failed): they are only cancelled if
    they have not started, the rest run out in the background."""
    for future in futures:
        if future is not None:
            future.cancel()
