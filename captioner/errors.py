"""Typed, user-facing errors.

Every failure a user can cause (a broken image, a missing model, a bad URL) is an
``AltCapError`` with a stable ``code``. The CLI prints ``code: message``; the HTTP API
turns it into ``{"error": {"code": ..., "message": ...}}``. Codes never change once
published, so clients can branch on them.
"""

from __future__ import annotations


class AltCapError(Exception):
    """Base class: a failure with a stable machine-readable ``code``."""

    code: str = "altcap_error"
    http_status: int = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


# --- images -------------------------------------------------------------------------


class ImageError(AltCapError):
    """The bytes given are not an image we can caption."""

    code = "unsupported_image"
    http_status = 422


class EmptyImage(ImageError):
    code = "empty_image"


class TruncatedImage(ImageError):
    code = "truncated_image"


class NotAnImage(ImageError):
    code = "not_an_image"


class UnsupportedFormat(ImageError):
    code = "unsupported_image"


class TooManyPixels(ImageError):
    code = "image_too_many_pixels"
    http_status = 413


# --- models -------------------------------------------------------------------------


class ModelError(AltCapError):
    """A model could not be found, downloaded or loaded."""

    code = "model_unavailable"
    http_status = 503


class ModelNotFound(ModelError):
    code = "model_not_found"


class DownloadFailed(ModelError):
    code = "download_failed"


class CheckpointMismatch(ModelError):
    code = "checkpoint_mismatch"


class ConfigError(AltCapError):
    """A deployment setting the service cannot run with: stop at start-up, never per request."""

    code = "invalid_config"
    http_status = 500


class InvalidSettings(AltCapError):
    """Decoding or model settings out of range."""

    code = "invalid_settings"


# --- reading text in images (OCR) ---------------------------------------------------


class OcrError(AltCapError):
    """Reading the text of one image failed. Never fails a caption: the result carries the
    code as a warning and no text."""

    code = "ocr_failed"
    http_status = 500


class OcrTimeout(OcrError):
    code = "ocr_timeout"


class OcrUnavailable(ConfigError):
    """The OCR engine or its language data is not installed: text reading is off."""

    code = "ocr_unavailable"
