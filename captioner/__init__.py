"""AltCap: alt text for images with a ClipCap model (CLIP -> prefix -> GPT-2)."""

from captioner.config import ClipCapConfig, DecodingSettings
from captioner.errors import AltCapError

__all__ = ["AltCapError", "CaptionResult", "Captioner", "ClipCapConfig", "DecodingSettings"]


def __getattr__(name: str):
    # The facade pulls in torch and transformers: load it on first use, not on import.
    if name in ("Captioner", "CaptionResult"):
        from captioner import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
