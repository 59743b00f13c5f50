"""Which Tesseract language models to read with, and where their files are.

Languages are named as the captions are (BCP 47: ``en``, ``de``, ``pt-BR``) or as
Tesseract names its models (``eng``, ``deu``, ``chi_sim``). ``ALTCAP_OCR_LANGS`` lists them
(comma- or plus-separated); empty means the model's own caption language. The models are
``<code>.traineddata`` files, installed by the system's packages (Debian:
``tesseract-ocr-eng``, ``tesseract-ocr-deu``...); nothing is downloaded at run time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from captioner.errors import OcrUnavailable

__all__ = ["TESSDATA_DIRS", "find_tessdata", "tesseract_codes"]

# Where Debian/Ubuntu (tesseract-ocr-* 4.x and 5.x), Fedora, Homebrew and a source build
# put the models; TESSDATA_PREFIX (Tesseract's own variable) goes first.
TESSDATA_DIRS = (
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
    "/usr/local/share/tessdata",
    "/opt/homebrew/share/tessdata",
)

# BCP 47 primary subtags -> Tesseract's model names, for the languages people ask for most;
# any other value is taken as a Tesseract name as it is.
_TESSERACT = {
    "en": "eng", "de": "deu", "fr": "fra", "es": "spa", "it": "ita", "pt": "por", "nl": "nld",
    "sv": "swe", "da": "dan", "nb": "nor", "no": "nor", "fi": "fin", "pl": "pol", "cs": "ces",
    "sk": "slk", "hu": "hun", "ro": "ron", "tr": "tur", "el": "ell", "ru": "rus", "uk": "ukr",
    "bg": "bul", "ar": "ara", "he": "heb", "hi": "hin", "ja": "jpn", "ko": "kor", "vi": "vie",
    "th": "tha", "id": "ind", "ca": "cat", "zh": "chi_sim", "zh-hant": "chi_tra",
    "zh-tw": "chi_tra", "zh-hk": "chi_tra",
}  # fmt: skip
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{1,31}")


def tesseract_codes(langs: str, model_language: str = "en") -> tuple[str, ...]:
    """``ALTCAP_OCR_LANGS`` -> Tesseract model names, in order, without repeats.

    ``""`` -> the model's caption language. Raises ``OcrUnavailable`` for a name that
    cannot be a language (the setting is checked at start-up).
    """
    names = [n.strip() for n in re.split(r"[,+\s]+", langs or "") if n.strip()]
    out: list[str] = []
    for name in names or [model_language or "en"]:
        if not _NAME.fullmatch(name):
            raise OcrUnavailable(f"ALTCAP_OCR_LANGS: {name!r} is not a language name")
        low = name.lower()
        code = _TESSERACT.get(low) or _TESSERACT.get(low.split("-")[0])
        if code is None and "-" not in name and len(name) > 2:
            code = name  # Tesseract's own name: eng, chi_sim, frk
        if code is None:
            raise OcrUnavailable(
                f"ALTCAP_OCR_LANGS: no Tesseract model is known for {name!r}; "
                "give Tesseract's own name (e.g. 'eng', 'chi_sim')"
            )
        if code not in out:
            out.append(code)
    return tuple(out)


def find_tessdata(codes: tuple[str, ...], where: str | None = None) -> str:
    """The first folder that holds every ``<code>.traineddata``; ``OcrUnavailable`` naming the
    packages to install when there is none."""
    env = [where, os.environ.get("TESSDATA_PREFIX")]  # Tesseract's own variable
    candidates = [d for d in env if d] + list(TESSDATA_DIRS)
    for folder in candidates:
        for path in (Path(folder), Path(folder) / "tessdata"):
            if all((path / f"{code}.traineddata").is_file() for code in codes):
                return str(path)
    packages = " ".join(f"tesseract-ocr-{code.replace('_', '-').lower()}" for code in codes)
    raise OcrUnavailable(
        f"no Tesseract language data for {'+'.join(codes)} in {', '.join(candidates)}; "
        f"install it (Debian: apt-get install {packages}) or set TESSDATA_PREFIX, "
        "or set ALTCAP_OCR=off"
    )
