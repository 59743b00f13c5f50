"""Untrusted image bytes → RGB ``PIL.Image`` (no torch here: the crawler and the service's
settings use it; ``captioner.model.processing`` makes the CLIP tensor).

Every image AltCap sees comes from a stranger (an upload, a URL on someone's page), so
decoding is defensive: the format is sniffed from magic bytes and only an allowlist of
common web formats reaches a PIL plugin; the pixel count is checked from the header
before any pixel is decoded; truncated files are refused instead of half-decoded into
grey; and every failure is one of the typed ``ImageError`` subclasses from
``captioner.errors``, so the API answers with a stable code instead of a 500.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, features

from captioner.errors import (
    AltCapError,
    EmptyImage,
    NotAnImage,
    TooManyPixels,
    TruncatedImage,
    UnsupportedFormat,
)

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageInput",
    "load_image",
    "sniff_format",
]


def _pillow_decodes_avif() -> bool:
    """Pillow 11.3+ wheels bundle libavif (AVIF: every browser shows it, sites serve it)."""
    try:
        return bool(features.check("avif"))
    except Exception:  # an older Pillow without the feature name
        return False


# PIL format names we hand to a decoder at all: the web's image formats. Every other PIL
# plugin (EPS runs Ghostscript, PSD/ICO/TGA/... are rarely fuzzed) stays out of reach of
# untrusted bytes. AVIF where this Pillow decodes it.
_AVIF_SUPPORTED = _pillow_decodes_avif()
ALLOWED_FORMATS: frozenset[str] = frozenset(
    {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"} | ({"AVIF"} if _AVIF_SUPPORTED else set())
)

# 40 MP covers any camera photo; a 3-channel image this size is ~120 MB once decoded.
DEFAULT_MAX_PIXELS: int = 40_000_000

ImageInput = bytes | bytearray | memoryview | Image.Image | str | os.PathLike

_WHITE = (255, 255, 255, 255)
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_EXIF_ORIENTATION = 0x0112


# --- format sniffing ------------------------------------------------------------------

# (magic prefix, PIL-style format name). Formats outside ALLOWED_FORMATS are listed so a
# PSD or an ICO gets "unsupported format" rather than the misleading "not an image".
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"8BPS", "PSD"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),  # DOS EPS binary header
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),  # raw codestream
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JXL"),
    (b"\xff\x0a", "JXL"),
    (b"icns", "ICNS"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"\x01\xda", "SGI"),
)
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_NETPBM = re.compile(rb"P[1-7]\s")
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


def sniff_format(data: bytes) -> str | None:
    """Name the image format from the first bytes, or ``None`` if none matches.

    Returns a PIL format name (``"JPEG"``, ``"PNG"``, ...), also for formats we refuse
    (``"PSD"``, ``"ICO"``, ...): callers check membership in ``ALLOWED_FORMATS``. Needs
    at most the first 32 bytes, so the HTTP fetcher can call it on the first chunk of a
    download and stop early. Content-Type headers and file names are not trusted; this is.
    """
    head = bytes(data[:32])
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    # "BM" alone matches plenty of text; also require a known DIB header size.
    if head[:2] == b"BM" and len(head) >= 18:
        if struct.unpack_from("<I", head, 14)[0] in _BMP_HEADER_SIZES:
            return "BMP"
        return None
    # ICO/CUR: reserved 0, type 1 or 2, at least one entry (rules out TGA's zeros).
    icon_type = head[2:4] in (b"\x01\x00", b"\x02\x00")
    if head[:2] == b"\x00\x00" and icon_type and len(head) >= 6 and head[4:6] != b"\x00\x00":
        return "ICO" if head[2] == 1 else "CUR"
    if head[4:8] == b"ftyp":
        if head[8:12] in _AVIF_BRANDS:
            return "AVIF"
        if head[8:12] in _HEIF_BRANDS:
            return "HEIF"
    if _NETPBM.match(head):
        return "PPM"
    return None


def _declared_length(data: bytes, fmt: str) -> int | None:
    """Total length the container header promises, where it promises one.

    WebP is decoded by libwebp from the whole buffer at open time, so the read-tracking
    below never sees it run short; the RIFF size field says whether bytes are missing.
    """
    if fmt == "WEBP" and len(data) >= 8:
        return struct.unpack_from("<I", data, 4)[0] + 8
    if fmt == "AVIF":  # libavif, too, reads the whole buffer at once
        return _bmff_length(data)
    return None


def _bmff_length(data: bytes, most_boxes: int = 64) -> int | None:
    """Where the top-level boxes of an ISO BMFF file (AVIF: ftyp, meta, mdat...) say it
    ends; None where they do not say (a box "to the end of the file", or one too short to
    be a box: the decoder judges those), or past ``most_boxes`` boxes."""
    pos = 0
    for _ in range(most_boxes):
        if pos + 8 > len(data):
            return pos
        size = struct.unpack_from(">I", data, pos)[0]
        if size == 1:  # a 64-bit size follows the type
            if pos + 16 > len(data):
                return pos + 16
            size = struct.unpack_from(">Q", data, pos + 8)[0]
        if size < 8:  # 0: to the end of the file; 2-7: no box at all
            return None
        pos += size
    return None


# --- decoding ---------------------------------------------------------------------------


class _ReadTracker(io.BytesIO):
    """A BytesIO that remembers whether a decoder asked for bytes that were not there.

    PIL reports truncation inconsistently (``UnidentifiedImageError``, ``SyntaxError``,
    "Truncated File Read", ...) and, if anyone in the process sets
    ``ImageFile.LOAD_TRUNCATED_IMAGES = True``, not at all. Watching the reads tells us
    directly: a header parser that failed after a short read, or a pixel decoder that
    asked for more and got nothing, ran out of file. Complete files never do the latter.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.short_read = False  # a read returned fewer bytes than asked for
        self.empty_read = False  # a read at the end returned nothing at all

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if size is not None and size > 0:
            self.short_read |= len(chunk) < size
            self.empty_read |= not chunk
        return chunk

    def reset_flags(self) -> None:
        self.short_read = self.empty_read = False


def load_image(source: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode safely to an RGB image ready for CLIP.

    ``source`` is encoded bytes, a path (``str`` or ``os.PathLike``), or a PIL image.
    Bytes and files go through the format allowlist, the ``max_pixels`` header check and
    truncation detection; a PIL image is trusted as already decoded and only converted.
    Either way the result is upright (EXIF orientation applied), RGB, with transparency
    composited onto white (what a transparent logo looks like on a typical page), and
    only the first frame of an animation. May return ``source`` itself when a PIL image
    needs no change; never modifies it.

    Raises an ``ImageError`` subclass for every problem with the data itself.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if isinstance(source, Image.Image):
        try:
            return _to_rgb(source)
        except AltCapError:
            raise
        except Exception as e:  # a lazily opened image may still fail to decode here
            raise _decode_error(e, source.format or "image", ran_out=False) from e
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(bytes(source), max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _decode(_read_file(source), max_pixels)
    raise TypeError(f"expected bytes, a path or a PIL image, got {type(source).__name__}")


def _read_file(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise NotAnImage(f"cannot read image file {os.fspath(path)!r}: {reason}") from e


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise EmptyImage("the image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise NotAnImage(_not_an_image_message(data))
    if fmt not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        why = " by this server's Pillow (AVIF needs Pillow 11.3 or later)" if fmt == "AVIF" else ""
        raise UnsupportedFormat(f"{fmt} images are not supported{why}; use one of {allowed}")
    declared = _declared_length(data, fmt)
    if declared is not None and declared > len(data):
        raise TruncatedImage(f"the {fmt} file is truncated ({len(data)} of {declared} bytes)")

    stream = _ReadTracker(data)
    # catch_warnings mutates process-wide state and is not thread-safe; the filters are
    # chosen so that one leaking out of a race is harmless. PIL's bomb warning is
    # redundant with our own max_pixels check, and its UserWarnings about corrupt
    # metadata are noise for untrusted input that we either decode or refuse anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        try:
            im = Image.open(stream, formats=[fmt])
        except Image.DecompressionBombError as e:
            raise TooManyPixels(f"the {fmt} image has too many pixels: {e}") from e
        except Exception as e:
            if stream.short_read:
                raise TruncatedImage(f"the {fmt} file is truncated (header incomplete)") from e
            raise NotAnImage(f"the data starts like a {fmt} file but is not a valid one") from e

        try:
            out = _pixels_to_rgb(im, stream, fmt, max_pixels)
        except BaseException:
            im.close()
            raise
    if out is not im:
        im.close()  # the decoded frame was copied; release the original
    return out


def _pixels_to_rgb(
    im: ImageFile.ImageFile, stream: _ReadTracker, fmt: str, max_pixels: int
) -> Image.Image:
    """Check the header size, decode the first frame, and convert it to RGB."""
    width, height = im.size
    if width * height > max_pixels:
        raise TooManyPixels(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    stream.reset_flags()  # from here on, any read past the end means truncation
    try:
        im.load()  # first frame only; later frames are never decoded
    except Image.DecompressionBombError as e:
        raise TooManyPixels(f"the {fmt} image has too many pixels: {e}") from e
    except Exception as e:
        raise _decode_error(e, fmt, ran_out=stream.empty_read) from e
    if stream.empty_read and ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone set the global flag, so PIL padded the image with grey. Refuse it.
        raise TruncatedImage(f"the {fmt} file is truncated")
    try:
        return _to_rgb(im)
    except Exception as e:
        raise _decode_error(e, fmt, ran_out=False) from e


def _decode_error(e: Exception, fmt: str, *, ran_out: bool) -> AltCapError:
    """Map whatever PIL raised while decoding pixels to the closest typed error."""
    detail = str(e) or type(e).__name__
    lowered = detail.lower()
    if ran_out or "truncated" in lowered:
        return TruncatedImage(f"the {fmt} file is truncated: {detail}")
    if "not available" in lowered or "not supported" in lowered or "unsupported" in lowered:
        return UnsupportedFormat(f"this kind of {fmt} image is not supported: {detail}")
    return NotAnImage(f"could not decode the {fmt} image: {detail}")


def _not_an_image_message(data: bytes) -> str:
    head = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<"):
        kind = "SVG" if b"<svg" in data[:4096].lower() else "HTML/XML"
        return f"the data is {kind} markup, not a raster image"
    return "the data is not a recognised image format"


# --- conversion to RGB ------------------------------------------------------------------


def _to_rgb(im: Image.Image) -> Image.Image:
    """Upright RGB: EXIF rotation, high bit depths scaled, alpha composited onto white."""
    im = _upright(im)
    if im.mode in _HIGH_DEPTH_MODES:
        im = _high_depth_to_l(im)
    if im.mode == "RGB":
        return im
    if im.has_transparency_data:  # RGBA, LA, PA, P or RGB/L with a tRNS colour key
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, _WHITE), rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, so phone photos are not captioned lying on their side.

    A broken EXIF block is ignored rather than fatal: the pixels are still fine.
    """
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(im)
    except Exception:
        pass
    return im


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit grey to 8-bit by scaling, where PIL's ``convert("L")`` would clip at 255.

    ``I;16*`` and ``I`` are read as 16-bit (``I`` is what PIL gives 16-bit data in many
    paths); ``I`` values outside 0..65535 and float (``F``) images are min-max stretched.
    """
    arr = np.asarray(im)
    if im.mode != "F" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        scaled = arr.astype(np.float32) / 257.0  # 65535 / 257 == 255 exactly
    else:
        arr = np.nan_to_num(arr.astype(np.float64))
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = arr * 255.0
        else:
            scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
