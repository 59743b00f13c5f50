"""Reading the text in an image with Tesseract 5 (through tesserocr), and nothing else.

Tesseract alone reads clean dark-on-light text well. What it does not do, done here:

- **Polarity**: light text on a dark ground is inverted first (the ground is the border's
  median grey), so Tesseract's own invert-and-retry pass is not needed.
- **Small text** (buttons, 11-13 px interface labels) is upscaled before reading: Tesseract
  reads best at a capital height of 20-40 px.
- **A margin** of the ground's colour around the image, so text touching the edge and a
  button's own rounded edge are not read as letters.
- **Fragments** are dropped: a word below ``MIN_WORD_CONFIDENCE``, with no letter or digit, a
  lone letter that is not a word, and a line whose words average below
  ``MIN_LINE_CONFIDENCE``. That is what keeps a circle from becoming "O" and a bar "I".
- **Text over a photo**: when the first pass finds nothing sure, the image is read again
  from its colour channels and with Sauvola's local threshold; the surest reading wins.
- **Reading order**: lines in Tesseract's block, paragraph and line order (top to bottom,
  left to right for Latin scripts), words joined by one space, lines by ``"\\n"``.

``Reading.mostly_text`` says whether the image *is* its text (a button, banner, heading,
a logo's name): text lines over a ground with nothing else on it, or covering much of it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from captioner.errors import OcrError, OcrTimeout

__all__ = ["Reading", "TextReader"]

READER_VERSION = 2  # part of the cache key: bump when the reading of an image changes
MIN_WORD_CONFIDENCE = 60.0  # Tesseract's 0-100 word confidence; below: a fragment
MIN_LINE_CONFIDENCE = 70.0  # a line whose kept words average less is dropped whole
SURE_CONFIDENCE = 85.0  # a first pass averaging this much needs no second try
TARGET_HEIGHT_PX = 32  # text lines are upscaled to about this height (x-height ~16 px)
MAX_UPSCALE = 4.0
MAX_SIDE_PX = 2400  # larger images are read at this size: text this small is not alt
MARGIN_PX = 12
WHITE_INK = 200  # every channel at least this: white type
BLACK_INK = 60  # every channel at most this: black type
EDGE_STEP = 60  # grey step between neighbours that counts as a sharp edge (type's edges)
BAND_ROW_DENSITY = 0.02  # share of a row's pixels on sharp edges for it to hold type
MIN_BAND_PX = 8
MAX_BANDS = 4  # bands read apart, densest first: the cost stays bounded on busy photos
INK_DIFFERENCE = 40  # grey levels from the ground for a pixel to count as ink
PLAIN_GROUND_SHARE = 0.08  # at most this share of the ground may differ from its median
# colour (a button's corners, a thin rule) for the ground to count as plain
TEXT_AREA_SHARE = 0.35  # text lines covering this share of the image: mostly text
ONE_LETTER_WORDS = frozenset("aAI&+0123456789")  # a lone character kept only if one of these


@dataclass(frozen=True)
class Line:
    words: tuple[str, ...]
    confidence: float  # mean word confidence, 0-100
    box: tuple[int, int, int, int]  # left, top, right, bottom in the original image

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass(frozen=True)
class Reading:
    """What an image says: lines in reading order (``text``: joined by ``"\\n"``)."""

    lines: tuple[Line, ...] = ()
    mostly_text: bool = False

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    @property
    def confidence(self) -> float:
        """Mean word confidence of what was kept, 0-100 (0 when nothing was)."""
        return _mean_confidence(self.lines)


class TextReader:
    """Reads images' text; thread-safe (one Tesseract instance per thread)."""

    def __init__(self, codes: tuple[str, ...], tessdata: str) -> None:
        import tesserocr  # heavy and optional for the model-only paths: loaded here

        self._tesserocr = tesserocr
        self.codes = codes
        self.tessdata = tessdata
        self._local = threading.local()
        self.version = tesserocr.tesseract_version().split()[1]
        self._api()  # fail now, at start-up, on bad language data

    @property
    def engine_id(self) -> str:
        """Names the engine, its version, the languages and this reader's rules (cache keys)."""
        return f"tesseract-{self.version}:{'+'.join(self.codes)}:r{READER_VERSION}"

    def warm(self) -> None:
        """Load this thread's Tesseract now rather than on its first image."""
        self._api()

    def _api(self) -> Any:
        api = getattr(self._local, "api", None)
        if api is None:
            tr = self._tesserocr
            try:
                api = tr.PyTessBaseAPI(
                    path=self.tessdata.rstrip("/") + "/",
                    lang="+".join(self.codes),
                    psm=tr.PSM.AUTO,
                    oem=tr.OEM.LSTM_ONLY,
                )
            except RuntimeError as exc:
                from captioner.errors import OcrUnavailable

                raise OcrUnavailable(f"Tesseract could not load {self.codes}: {exc}") from exc
            api.SetVariable("tessedit_do_invert", "0")  # polarity is settled before reading
            self._local.api = api
        return api

    def read(self, image: Image.Image, timeout_s: float | None = None) -> Reading:
        """The text of ``image``; ``OcrTimeout`` past ``timeout_s``, ``OcrError`` on failure."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            grey, scale = _prepare(image)
            lines, conf = self._pass(grey, scale, image.size, deadline, "otsu")
            # Second tries cost 3-5 more passes: only where text may have been missed, i.e.
            # the first pass was unsure, or found nothing where rows of sharp edges are.
            bands = _edge_bands(image) if conf < SURE_CONFIDENCE else []
            if (lines or bands) and conf < SURE_CONFIDENCE and min(image.size) >= 64:
                for variant, pixels in _alternatives(image, grey):
                    alt_lines, alt_conf = self._pass(pixels, scale, image.size, deadline, variant)
                    if _weight(alt_lines) > _weight(lines):
                        lines, conf = alt_lines, alt_conf
                if bands and conf < SURE_CONFIDENCE:
                    band_lines = self._bands(image, bands, deadline)
                    if _weight(band_lines) > _weight(lines):
                        lines = band_lines
        except (OcrError, MemoryError):
            raise
        except Exception as exc:  # a reader failure is one image's problem, never a crash
            raise OcrError(f"reading the text failed: {type(exc).__name__}: {exc}") from exc
        return Reading(tuple(lines), _mostly_text(image, lines))

    def _bands(
        self, image: Image.Image, bands: list[tuple[int, int, int, int]], deadline: float | None
    ) -> list[Line]:
        """Read each band of dense edges apart, each prepared against its own surroundings
        (a caption box on a photo, white type over a sky): what a whole-image threshold
        cannot separate."""
        out: list[Line] = []
        for box in bands[:MAX_BANDS]:
            crop = image.crop(box)
            pixels, scale = _prepare(crop)
            lines, _ = self._pass(pixels, scale, crop.size, deadline, "otsu")
            for line in lines:
                left, top, right, bottom = line.box
                shifted = (left + box[0], top + box[1], right + box[0], bottom + box[1])
                out.append(Line(line.words, line.confidence, shifted))
        return out

    def _pass(
        self,
        grey: Image.Image,
        scale: float,
        size: tuple[int, int],
        deadline: float | None,
        threshold: str,
    ) -> tuple[list[Line], float]:
        """One Tesseract reading of prepared pixels: (kept lines, their mean confidence)."""
        api = self._api()
        api.SetVariable("thresholding_method", "2" if threshold == "sauvola" else "0")
        api.SetImage(grey)
        timeout_ms = 0
        if deadline is not None:
            timeout_ms = int((deadline - time.monotonic()) * 1e3)
            if timeout_ms <= 0:
                raise OcrTimeout("reading the text ran out of time")
        if not api.Recognize(timeout=timeout_ms):
            if deadline is not None and time.monotonic() >= deadline:
                raise OcrTimeout("reading the text ran out of time")
            raise OcrError("Tesseract could not recognise the image")
        lines = _lines(api.GetTSVText(0), scale, size)
        return lines, _mean_confidence(lines)


def _prepare(image: Image.Image) -> tuple[Image.Image, float]:
    """Grey, dark-on-light, upscaled when small, with a margin: (pixels, scale factor)."""
    grey = _dark_on_light(_grey(image))
    w, h = grey.size
    scale = 1.0
    if h < 3 * TARGET_HEIGHT_PX:  # a button, a strip of small text: text ~ image height
        scale = min(MAX_UPSCALE, 3 * TARGET_HEIGHT_PX / h)
    elif max(w, h) > MAX_SIDE_PX:
        scale = MAX_SIDE_PX / max(w, h)
    if scale != 1.0:
        grey = grey.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    ground = _border_median(grey)
    return ImageOps.expand(grey, border=MARGIN_PX, fill=ground), scale


def _grey(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        ground = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(ground, rgba).convert("L")
    return image.convert("L")


def _dark_on_light(grey: Image.Image) -> Image.Image:
    """Ink darker than the ground, contrast stretched: the ground (the border's median) is
    compared with the pixels that differ from it, not with mid-grey (dark purple type on
    magenta is dark on a dark ground)."""
    a = np.asarray(grey, dtype=np.int16)
    diff = a - _border_median(grey)
    ink = diff[np.abs(diff) > INK_DIFFERENCE]
    if ink.size and np.mean(ink > 0) > 0.5:
        grey = ImageOps.invert(grey)
    return ImageOps.autocontrast(grey, cutoff=1)


def _border_median(grey: Image.Image) -> int:
    a = np.asarray(grey)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return int(np.median(edge))


def _alternatives(image: Image.Image, grey: Image.Image):
    """Other ways to see the same image, for text the grey pass missed: Sauvola's local
    threshold, and white or black ink alone (type set straight on a photo is nearly always
    one of the two, whatever the photo does around it)."""
    yield "sauvola", grey
    if image.mode != "RGB":
        return
    rgb = np.asarray(image, dtype=np.uint8)
    size = (grey.width - 2 * MARGIN_PX, grey.height - 2 * MARGIN_PX)
    for ink in (rgb.min(axis=2) >= WHITE_INK, rgb.max(axis=2) <= BLACK_INK):
        if 0.002 < ink.mean() < 0.5:  # some ink, and not the ground itself
            mask = Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).resize(size)
            yield "otsu", ImageOps.expand(mask, border=MARGIN_PX, fill=255)


def _edge_bands(image: Image.Image) -> list[tuple[int, int, int, int]]:
    """Boxes (left, top, right, bottom) around rows of dense sharp edges, densest first:
    where lines of type are, on a ground whose own edges are soft (a photo's)."""
    a = np.asarray(_grey(image), dtype=np.int16)
    h, w = a.shape
    edges = np.zeros_like(a, dtype=bool)
    edges[:, 1:] |= np.abs(np.diff(a, axis=1)) > EDGE_STEP
    edges[1:, :] |= np.abs(np.diff(a, axis=0)) > EDGE_STEP
    rows = edges.mean(axis=1) > BAND_ROW_DENSITY
    boxes = []
    for top, bottom in _runs(rows):
        height = bottom - top
        if not MIN_BAND_PX <= height <= h // 2:
            continue
        cols = edges[top:bottom].any(axis=0)
        # columns within a letter's height of an edge belong to the same run of words
        near = np.convolve(cols, np.ones(height, dtype=int), mode="same") > 0
        for left, right in _runs(near):
            if right - left < height:
                continue
            pad = height // 2
            box = (max(0, left - pad), max(0, top - pad), min(w, right + pad), min(h, bottom + pad))
            boxes.append((edges[top:bottom, left:right].mean(), box))
    return [box for _, box in sorted(boxes, reverse=True)]


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    change = np.flatnonzero(np.diff(padded))
    return list(zip(change[::2].tolist(), change[1::2].tolist(), strict=True))


def _mean_confidence(lines: tuple[Line, ...] | list[Line]) -> float:
    """Mean word confidence of ``lines``, 0-100, each word counted once (0 for none)."""
    n = sum(len(line.words) for line in lines)
    return sum(line.confidence * len(line.words) for line in lines) / n if n else 0.0


def _weight(lines: list[Line]) -> float:
    """How much sure text a pass found: characters weighted by confidence above the bar."""
    return sum(
        len(line.text.replace(" ", "")) * (line.confidence - MIN_WORD_CONFIDENCE) for line in lines
    )


def _at_edge(box: tuple[int, ...], size: tuple[int, int]) -> bool:
    left, top, right, bottom = box
    return left <= 1 or top <= 1 or right >= size[0] - 1 or bottom >= size[1] - 1


def _lines(tsv: str, scale: float, size: tuple[int, int]) -> list[Line]:
    """Tesseract's TSV -> kept lines, in its order; boxes back in original pixels."""
    groups: dict[tuple[int, int, int], list[tuple[str, float, tuple[int, int, int, int]]]] = {}
    for row in tsv.splitlines():
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5":  # level 5: a word
            continue
        text, conf = cols[11].strip(), float(cols[10])
        left, top, width, height = (int(c) for c in cols[6:10])
        box = (left, top, left + width, top + height)
        if _keep_word(text, conf):
            key = (int(cols[2]), int(cols[3]), int(cols[4]))  # block, paragraph, line
            groups.setdefault(key, []).append((text, conf, box))
    lines = []
    for words in groups.values():
        confidence = sum(c for _, c, _ in words) / len(words)
        if confidence < MIN_LINE_CONFIDENCE:
            continue
        box = tuple(
            round((f(b[i] for _, _, b in words) - MARGIN_PX) / scale)
            for i, f in ((0, min), (1, min), (2, max), (3, max))
        )
        if len("".join(w for w, _, _ in words)) <= 2 and (
            confidence < SURE_CONFIDENCE or _at_edge(box, size)
        ):
            continue  # one or two unsure characters, or at the edge: a shape or a border
        lines.append(Line(tuple(w for w, _, _ in words), confidence, box))  # type: ignore[arg-type]
    return lines


def _keep_word(text: str, conf: float) -> bool:
    if not text or conf < MIN_WORD_CONFIDENCE:
        return False
    if not any(c.isalnum() for c in text):
        return False
    return len(text) > 1 or text in ONE_LETTER_WORDS


def _mostly_text(image: Image.Image, lines: list[Line]) -> bool:
    """The image is its text: lines cover much of it, or nothing but a plain ground is left."""
    if not lines:
        return False
    w, h = image.size
    mask = np.zeros((h, w), dtype=bool)
    for line in lines:
        left, top, right, bottom = line.box
        pad = max(2, (bottom - top) // 3)
        mask[max(0, top - pad) : bottom + pad, max(0, left - pad) : right + pad] = True
    share = mask.mean()
    if share >= TEXT_AREA_SHARE:
        return True
    rest = np.asarray(image.convert("RGB"), dtype=np.int16)[~mask]  # (N, 3)
    if rest.size == 0:
        return True
    ground = np.median(rest, axis=0)
    other = np.abs(rest - ground).max(axis=1) > INK_DIFFERENCE
    return bool(other.mean() < PLAIN_GROUND_SHARE)
