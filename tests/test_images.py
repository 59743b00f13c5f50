"""Tests for captioner.images: safe decoding of untrusted bytes and CLIP preprocessing.

Every fixture image is generated here (PIL, or struct/zlib for headers PIL will not
write), so no binary files live in the repository.
"""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageSequence

from captioner import images
from captioner.errors import ImageError
from captioner.images import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, load_image, sniff_format
from captioner.model.processing import CLIP_MEAN, CLIP_STD, preprocess

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


# --- helpers ----------------------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def two_colour(width: int = 48, height: int = 32) -> Image.Image:
    """Left half red, right half blue: survives lossy codecs, shows a flipped image."""
    im = Image.new("RGB", (width, height), BLUE)
    im.paste(RED, (0, 0, width // 2, height))
    return im


def pixel(im: Image.Image, xy: tuple[int, int]) -> np.ndarray:
    return np.asarray(im, dtype=np.int32)[xy[1], xy[0]]


def assert_close(actual: np.ndarray, expected: tuple[int, ...], tol: int) -> None:
    diff = np.abs(np.asarray(actual, dtype=np.int32) - np.asarray(expected)).max()
    assert diff <= tol, f"{actual.tolist()} != {expected} (tolerance {tol})"


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_by_hand(
    width: int, height: int, idat: bytes, *, bit_depth: int = 8, colour: int = 2
) -> bytes:
    """A PNG with whatever IHDR we like; PIL refuses to write the interesting ones."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def assert_error(code: str, source: object, **kwargs: object) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(source, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code, f"{info.value.code}: {info.value.message}"
    assert info.value.message  # a human-readable reason, not an empty string
    return info.value


# --- round trips -------------------------------------------------------------------------

ROUND_TRIPS = [
    ("JPEG", {"quality": 95}, 12),
    ("JPEG", {"progressive": True}, 12),
    ("PNG", {}, 0),
    ("GIF", {}, 0),
    ("WEBP", {"quality": 95}, 12),
    ("WEBP", {"lossless": True}, 0),
    ("BMP", {}, 0),
    ("TIFF", {}, 0),
    ("TIFF", {"compression": "tiff_lzw"}, 0),
    ("AVIF", {"quality": 95}, 12),
]


@pytest.mark.parametrize(("fmt", "params", "tol"), ROUND_TRIPS)
def test_round_trip_allowed_formats(fmt: str, params: dict, tol: int) -> None:
    data = encode(two_colour(), fmt, **params)
    assert sniff_format(data) == fmt
    out = load_image(data)
    assert out.mode == "RGB"
    assert out.size == (48, 32)
    assert_close(pixel(out, (6, 16)), RED, tol)
    assert_close(pixel(out, (42, 16)), BLUE, tol)


def test_allowed_formats_are_the_webs() -> None:
    """requirements.txt asks for a Pillow whose wheels decode AVIF (11.3+)."""
    assert frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF"}) == ALLOWED_FORMATS
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_avif_with_a_pillow_that_cannot_decode_it_is_refused_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(images, "ALLOWED_FORMATS", ALLOWED_FORMATS - {"AVIF"})
    error = assert_error("unsupported_image", encode(two_colour(), "AVIF"))
    assert "Pillow 11.3" in error.message


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytes_like_inputs(wrap: type) -> None:
    out = load_image(wrap(encode(two_colour(), "PNG")))
    assert_close(pixel(out, (6, 16)), RED, 0)


def test_path_inputs(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(encode(two_colour(), "PNG"))
    for source in (path, str(path)):
        out = load_image(source)
        assert out.size == (48, 32)
        assert_close(pixel(out, (42, 16)), BLUE, 0)


def test_path_checks_content_not_extension(tmp_path: Path) -> None:
    path = tmp_path / "page.jpg"
    path.write_bytes(b"<!doctype html><html><body>hi</body></html>")
    assert_error("not_an_image", path)


def test_missing_path_is_a_typed_error(tmp_path: Path) -> None:
    err = assert_error("not_an_image", tmp_path / "nope.png")
    assert "nope.png" in err.message


def test_wrong_python_type_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


# --- sniffing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG"),
        (b"GIF89a\x01\x00\x01\x00", "GIF"),
        (b"GIF87a\x01\x00\x01\x00", "GIF"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),  # a RIFF that is audio
        (b"BM" + bytes(12) + struct.pack("<I", 40), "BMP"),
        (b"BMW drivers are a menace to society", None),  # "BM" text is not a bitmap
        (b"II*\x00\x08\x00\x00\x00", "TIFF"),
        (b"MM\x00*\x00\x00\x00\x08", "TIFF"),
        (b"\x00\x00\x01\x00\x01\x00\x10\x10", "ICO"),
        (b"\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00 \x00 \x00", None),  # TGA
        (b"8BPS\x00\x01", "PSD"),
        (b"%!PS-Adobe-3.0 EPSF-3.0", "EPS"),
        (b"%PDF-1.7\n", "PDF"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "AVIF"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIF"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00", None),  # MP4 video
        (b"P6\n32 32\n255\n", "PPM"),
        (b"qoif\x00\x00\x00 ", "QOI"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (b"", None),
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")])
def test_empty_input(empty: object) -> None:
    assert_error("empty_image", empty)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert_error("empty_image", path)


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not found</body></html>",
        b"  <html><body><img src=x></body></html>",
        b"hello, this is a text file and not a picture\n" * 20,
        b"\x00" * 1000,
    ],
    ids=["random", "html", "html-leading-space", "text", "zeros"],
)
def test_not_an_image(data: bytes) -> None:
    assert_error("not_an_image", data)


def test_svg_is_not_a_raster_image() -> None:
    svg = (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" '
        b'height="10"><rect width="10" height="10" fill="red"/></svg>'
    )
    err = assert_error("not_an_image", svg)
    assert "SVG" in err.message


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(Image.new("RGB", (32, 32), RED), "ICO"),
        lambda: encode(Image.new("RGB", (32, 32), RED), "PPM"),
        lambda: encode(Image.new("RGB", (32, 32), RED), "EPS"),
        lambda: encode(Image.new("RGB", (32, 32), RED), "QOI"),
        lambda: b"8BPS\x00\x01" + bytes(64),
    ],
    ids=["ico", "ppm", "eps", "qoi", "psd"],
)
def test_formats_outside_the_allowlist_are_refused(make) -> None:
    data = make()
    fmt = sniff_format(data)
    assert fmt is not None and fmt not in ALLOWED_FORMATS
    err = assert_error("unsupported_image", data)
    assert fmt in err.message


# --- truncation --------------------------------------------------------------------------


def noisy(width: int = 96, height: int = 64) -> Image.Image:
    """Random pixels, so every format needs many bytes and a cut lands in pixel data."""
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("GIF", {}),
        ("WEBP", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("AVIF", {}),
    ],
    ids=["jpeg", "progressive-jpeg", "png", "gif", "webp", "bmp", "tiff", "avif"],
)
@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_file(fmt: str, params: dict, fraction: float) -> None:
    data = encode(noisy(), fmt, **params)
    load_image(data)  # the complete file is fine
    assert_error("truncated_image", data[: int(len(data) * fraction)])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("cut", [10, 24, 40])
def test_truncated_inside_the_header(fmt: str, cut: int) -> None:
    assert_error("truncated_image", encode(noisy(), fmt)[:cut])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF"])
def test_truncated_even_if_pil_is_told_to_load_truncated_images(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some other library in the process may flip this global; we must not go grey."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = encode(noisy(), fmt)
    assert_error("truncated_image", data[: len(data) // 2])
    assert load_image(data).size == (96, 64)  # and complete files still load


def test_corrupt_png_checksum_is_not_an_image() -> None:
    data = bytearray(encode(two_colour(), "PNG"))
    data[29] ^= 0xFF  # the IHDR CRC
    assert_error("not_an_image", bytes(data))


def test_damaged_bytes_never_leak_raw_exceptions() -> None:
    """Flip random bytes in valid files: each result is an RGB image or a typed error."""
    rng = np.random.default_rng(11)
    outcomes: set[str] = set()
    for fmt in sorted(ALLOWED_FORMATS):
        original = encode(noisy(48, 32), fmt)
        for _ in range(40):
            data = bytearray(original)
            for pos in rng.integers(0, len(data), 4):
                data[pos] = int(rng.integers(0, 256))
            try:
                out = load_image(bytes(data), max_pixels=1_000_000)
            except ImageError as e:
                outcomes.add(e.code)
            else:
                assert out.mode == "RGB"
                outcomes.add("ok")
    assert "ok" in outcomes and len(outcomes) > 1  # the mutations did hit something


# --- decompression bombs -----------------------------------------------------------------


def test_png_header_claiming_10_gigapixels() -> None:
    data = png_by_hand(100_000, 100_000, zlib.compress(b"\x00" * 64))
    start = time.perf_counter()
    err = assert_error("image_too_many_pixels", data)
    assert time.perf_counter() - start < 0.5
    assert isinstance(err, ImageError) and err.http_status == 413


@pytest.mark.parametrize("side", [7_000, 10_000])  # under / inside PIL's own warning zone
def test_size_is_checked_from_the_header_before_decoding(side: int) -> None:
    """The IDAT is far too short: decoding first would say truncated, not too many pixels."""
    data = png_by_hand(side, side, zlib.compress(b"\x00" * 64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_error("image_too_many_pixels", data)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_small_file_with_large_dimensions() -> None:
    """A valid 8000x6000 1-bit PNG is a few KB; it must be refused without decoding."""
    width, height = 8000, 6000
    rows = (b"\x00" + bytes(width // 8)) * height  # filter byte + 1000 zero bytes per row
    data = png_by_hand(width, height, zlib.compress(rows, 9), bit_depth=1, colour=0)
    assert len(data) < 50_000
    start = time.perf_counter()
    assert_error("image_too_many_pixels", data)
    assert time.perf_counter() - start < 0.5
    # The same file is a perfectly good image under a larger limit.
    assert load_image(data, max_pixels=width * height).size == (width, height)


def test_avif_size_is_checked_before_decoding() -> None:
    """libavif reads the size from the file's boxes: a large AVIF is refused unread."""
    data = encode(Image.new("L", (6000, 4000)), "AVIF", quality=10, speed=10)
    assert len(data) < 50_000
    start = time.perf_counter()
    assert_error("image_too_many_pixels", data, max_pixels=10_000_000)
    assert time.perf_counter() - start < 0.5


def test_gif_logical_screen_of_65535_squared() -> None:
    data = bytearray(encode(Image.new("P", (4, 4), 1), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)
    assert_error("image_too_many_pixels", bytes(data))


def test_max_pixels_is_per_call() -> None:
    data = encode(Image.new("RGB", (64, 64), RED), "PNG")
    assert_error("image_too_many_pixels", data, max_pixels=64 * 64 - 1)
    assert load_image(data, max_pixels=64 * 64).size == (64, 64)
    with pytest.raises(ValueError):
        load_image(data, max_pixels=0)


def test_thousand_frame_gif_decodes_only_the_first_frame() -> None:
    palette = [c for i in range(256) for c in (i, 255 - i, (i * 7) % 256)]
    palette[3:6] = RED  # index 1 is red and only frame 0 uses it
    frames = []
    for i in range(1000):
        frame = Image.new("P", (64, 64), 1 if i == 0 else 2 + i % 200)
        frame.putpalette(palette)
        frames.append(frame)
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=20)
    assert Image.open(io.BytesIO(data)).n_frames == 1000

    start = time.perf_counter()
    for frame in ImageSequence.Iterator(Image.open(io.BytesIO(data))):
        frame.load()
    all_frames = time.perf_counter() - start

    start = time.perf_counter()
    out = load_image(data)
    ours = time.perf_counter() - start
    assert out.size == (64, 64)
    assert_close(pixel(out, (32, 32)), RED, 0)
    assert ours < 0.2 and ours < all_frames / 5, (ours, all_frames)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "MPO", "AVIF"])  # APNG, WebP, MPO, AVIF sequence
def test_animations_and_multi_picture_files_give_the_first_frame(fmt: str) -> None:
    first, second = Image.new("RGB", (40, 30), RED), Image.new("RGB", (40, 30), BLUE)
    data = encode(first, fmt, save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert sniff_format(data) in ALLOWED_FORMATS  # MPO is a JPEG to the sniffer
    assert_close(pixel(load_image(data), (20, 15)), RED, 3)


# --- colour handling ---------------------------------------------------------------------


def test_cmyk_jpeg() -> None:
    im = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    data = encode(im, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = load_image(data)
    assert out.mode == "RGB"
    assert_close(pixel(out, (16, 16)), RED, 3)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_is_scaled_not_clipped(fmt: str) -> None:
    levels = np.array([0, 257 * 64, 257 * 128, 1000, 65535], dtype=np.uint16)
    data = encode(Image.fromarray(np.tile(levels, (8, 1))), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = np.asarray(load_image(data))
    assert out[0, :, 0].tolist() == [0, 64, 128, 4, 255]  # clipping would give 255, 255, ...
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_32_bit_integer_grey_from_pil() -> None:
    arr = np.tile(np.array([0, 257 * 100, 65535], dtype=np.int32), (4, 1))
    im = Image.fromarray(arr)
    assert im.mode == "I"
    assert np.asarray(load_image(im))[0, :, 0].tolist() == [0, 100, 255]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_grayscale(fmt: str) -> None:
    out = load_image(encode(Image.new("L", (16, 16), 77), fmt))
    assert out.mode == "RGB"
    assert_close(pixel(out, (8, 8)), (77, 77, 77), 1)


def test_one_bit() -> None:
    im = Image.new("1", (16, 8), 0)
    im.paste(1, (8, 0, 16, 8))
    out = load_image(encode(im, "PNG"))
    assert_close(pixel(out, (2, 4)), (0, 0, 0), 0)
    assert_close(pixel(out, (12, 4)), WHITE, 0)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt: str) -> None:
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)  # index 0 black, 1 green
    im.paste(1, (8, 0, 16, 16))
    data = encode(im, fmt, transparency=0)  # index 0 (black) is see-through
    out = load_image(data)
    assert_close(pixel(out, (2, 8)), WHITE, 0)  # transparent → white, not black
    assert_close(pixel(out, (12, 8)), (0, 200, 0), 0)


def test_palette_without_transparency() -> None:
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert_close(pixel(load_image(encode(im, "PNG")), (4, 4)), (10, 20, 30), 0)


def rgba_fixture() -> Image.Image:
    im = Image.new("RGBA", (3, 1))
    im.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    return im


@pytest.mark.parametrize(("fmt", "params"), [("PNG", {}), ("WEBP", {"lossless": True})])
def test_rgba_is_composited_onto_white(fmt: str, params: dict) -> None:
    out = np.asarray(load_image(encode(rgba_fixture(), fmt, **params)), dtype=np.int32)
    assert out[0, 0].tolist() == list(WHITE)  # fully transparent red → white
    assert out[0, 1].tolist() == list(BLUE)  # opaque stays itself
    assert_close(out[0, 2], (127, 127, 127), 1)  # half-transparent black → mid grey


def test_avif_alpha_is_composited_onto_white() -> None:
    """AVIF keeps alpha in a plane of its own; regions, as its chroma is subsampled."""
    im = Image.new("RGBA", (48, 16), (255, 0, 0, 0))  # transparent red on the left
    im.paste((0, 0, 255, 255), (16, 0, 32, 16))  # opaque blue in the middle
    im.paste((0, 0, 0, 128), (32, 0, 48, 16))  # half-transparent black on the right
    out = load_image(encode(im, "AVIF", quality=100))
    assert_close(pixel(out, (6, 8)), WHITE, 6)
    assert_close(pixel(out, (24, 8)), BLUE, 12)
    assert_close(pixel(out, (42, 8)), (127, 127, 127), 6)


def test_grey_with_alpha() -> None:
    im = Image.new("LA", (2, 1))
    im.putdata([(0, 0), (60, 255)])
    out = np.asarray(load_image(encode(im, "PNG")))
    assert out[0].tolist() == [list(WHITE), [60, 60, 60]]


def test_pil_image_input_is_converted_and_left_alone() -> None:
    im = rgba_fixture()
    out = load_image(im)
    assert out.mode == "RGB" and im.mode == "RGBA"
    assert np.asarray(out)[0, 0].tolist() == list(WHITE)
    assert np.asarray(im)[0, 0].tolist() == [255, 0, 0, 0]


def exif_rotated_jpeg(orientation: int) -> bytes:
    """64x32 as stored, blue with a red 16x16 block in the stored top-left corner."""
    im = Image.new("RGB", (64, 32), BLUE)
    im.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_6_rotates_clockwise() -> None:
    out = load_image(exif_rotated_jpeg(6))
    assert out.size == (32, 64)  # width and height swapped
    # Orientation 6 = display rotated 90° clockwise: stored top-left → displayed top-right.
    assert_close(pixel(out, (32 - 8, 8)), RED, 12)
    assert_close(pixel(out, (8, 8)), BLUE, 12)
    assert_close(pixel(out, (24, 56)), BLUE, 12)


def test_exif_orientation_in_avif_rotates_as_in_jpeg() -> None:
    im = Image.new("RGB", (64, 32), BLUE)
    im.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_image(encode(im, "AVIF", quality=95, exif=exif.tobytes()))
    assert out.size == (32, 64)
    assert_close(pixel(out, (32 - 8, 8)), RED, 16)
    assert_close(pixel(out, (8, 8)), BLUE, 16)


def test_exif_orientation_applies_to_pil_input_too() -> None:
    out = load_image(Image.open(io.BytesIO(exif_rotated_jpeg(6))))
    assert out.size == (32, 64)
    assert_close(pixel(out, (32 - 8, 8)), RED, 12)


def test_exif_orientation_1_is_untouched() -> None:
    out = load_image(exif_rotated_jpeg(1))
    assert out.size == (64, 32)
    assert_close(pixel(out, (8, 8)), RED, 12)


# --- preprocess --------------------------------------------------------------------------


def smooth(width: int, height: int, seed: int) -> Image.Image:
    """Random low-frequency colour field: realistic for bicubic, unlike white noise."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return small.resize((width, height), Image.Resampling.BILINEAR)


def test_preprocess_shape_and_dtype() -> None:
    images = [smooth(300, 200, 0), smooth(120, 500, 1), Image.new("L", (50, 50), 10)]
    x = preprocess(images)
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    assert x.is_contiguous()
    assert preprocess(images, image_size=32).shape == (3, 3, 32, 32)
    assert preprocess([]).shape == (0, 3, 224, 224)


def test_preprocess_normalises_with_clip_mean_and_std() -> None:
    rgb = (255, 0, 128)
    x = preprocess([Image.new("RGB", (10, 10), rgb)])
    expected = [(v / 255 - m) / s for v, m, s in zip(rgb, CLIP_MEAN, CLIP_STD, strict=True)]
    assert torch.allclose(x[0, :, 5, 5], torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize(
    "size",
    [(300, 200), (200, 300), (640, 480), (225, 1000), (224, 224), (100, 37), (1001, 999)],
)
def test_preprocess_matches_clip_image_processor(size: tuple[int, int]) -> None:
    """Same PIL bicubic resize and crop offsets, so the pixels agree exactly.

    The difference measured is 0.0: both resize with the same PIL call and normalise in
    float32. The 1e-5 tolerance only allows for float rounding order; one grey level off
    anywhere would show as about 0.015 (1/255/0.26 in normalised units) and fail.
    """
    transformers = pytest.importorskip("transformers")
    reference = transformers.CLIPImageProcessorPil()
    images = [smooth(*size, seed=5), noisy(*size)]
    expected = reference(images=images, return_tensors="pt")["pixel_values"]
    actual = preprocess(images)
    assert actual.shape == expected.shape == (2, 3, 224, 224)
    assert (actual - expected).abs().max().item() < 1e-5


def test_preprocess_extreme_aspect_ratio_is_cheap_and_close() -> None:
    """A 1:100 strip would need a 224x22400 intermediate; only the crop box is resized."""
    strip = smooth(30_000, 300, seed=9)
    start = time.perf_counter()
    x = preprocess([strip])
    assert time.perf_counter() - start < 1.0
    transformers = pytest.importorskip("transformers")
    expected = transformers.CLIPImageProcessorPil()(images=[strip], return_tensors="pt")
    diff = (x - expected["pixel_values"]).abs()
    assert diff.mean().item() < 0.01 and diff.max().item() < 0.1  # a few grey levels at most
