"""A labelled set of web-like images, with and without text, for measuring OCR.

``make_set(n, seed)`` draws ``n`` images, each with the exact text drawn on it (``""`` for a
picture without text). The kinds are what the web's images of text look like:

- ``button``: one to three words on a coloured, rounded button, small type;
- ``banner``: a wide ad-sized strip (728x90, 468x60, 970x250) with a short phrase;
- ``heading``: a phrase in large type on a plain background;
- ``dark``: light type on a dark background;
- ``two_lines``: a notice of two lines, read top to bottom;
- ``small_ui``: 11-13 px interface text (labels, menu items);
- ``photo``: a phrase over a photo-like background (gradients, blobs, noise);
- ``picture``: no text at all — shapes (circles, rings, bars, crosses), gradients, noise,
  stripes, icons — the pictures where an engine must read nothing.

Fonts are the TrueType files found under the usual font folders (DejaVu and Liberation on
Debian; ``fonts-freefont-ttf`` adds FreeSans/FreeSerif). The same seed gives the same set on
the same fonts. Words come from common web copy, prices and numbers, so the set does not
match any one engine's dictionary more than web text does.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = ("/usr/share/fonts/truetype", "/usr/share/fonts/opentype", "/usr/local/share/fonts")
TEXT_KINDS = ("button", "banner", "heading", "dark", "two_lines", "small_ui", "photo")
KINDS = (*TEXT_KINDS, "picture")

_COPY = (
    "sign up log in buy now shop sale free shipping learn more contact us about our team "
    "download the app subscribe today newsletter order online open daily from menu home "
    "search cart checkout account settings help support privacy policy terms of service new "
    "arrivals best sellers summer winter spring autumn collection limited offer only this "
    "week book your table tickets available register join event conference workshop welcome "
    "back read article watch video listen podcast share follow us on twitter news weather "
    "sports music travel food health science business world local city park museum library "
    "school garden kitchen coffee bakery market fresh organic local farm closed for "
    "holidays opening hours monday friday saturday sunday call today visit store near you "
    "discover explore create build start project community volunteer donate save the date "
    "annual report results growth quarter revenue chart data annual meeting warning caution "
    "wet floor exit entrance parking no smoking please wait loading error page not found "
    "try again submit cancel continue next previous back close menu more"
)
WORDS = tuple(_COPY.split())
DIGITS = ("2026", "24/7", "50%", "$19.99", "10:30", "No. 5", "3 for 2", "1st", "$5", "100")


@dataclass(frozen=True)
class Sample:
    """One image and the text drawn on it, lines joined by ``"\\n"`` in reading order."""

    image: Image.Image
    text: str
    kind: str

    @property
    def words(self) -> list[str]:
        return words_of(self.text)


def words_of(text: str) -> list[str]:
    """The words of a text as OCR is scored on them: case-folded, outer punctuation gone."""
    out = []
    for token in text.split():
        word = token.strip(".,:;!?\"'()[]{}").casefold()
        if word:
            out.append(word)
    return out


@lru_cache(maxsize=1)
def fonts() -> tuple[str, ...]:
    """Every regular-weight sans, serif and bold TrueType font found (not symbol fonts)."""
    found = []
    for folder in FONT_DIRS:
        for path in sorted(Path(folder).rglob("*.[ot]tf")):
            name = path.name.lower()
            if re.search(r"math|symbol|glyphicon|emoji|mono|italic|oblique|condensed", name):
                continue  # not web body/heading type, or not Latin letters
            found.append(str(path))
    if not found:
        raise RuntimeError(f"no TrueType fonts under {FONT_DIRS}: install fonts-dejavu-core")
    return tuple(found)


def _phrase(rng: random.Random, lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    words = [rng.choice(WORDS) for _ in range(n)]
    if rng.random() < 0.25:
        words.insert(rng.randrange(len(words) + 1), rng.choice(DIGITS))
    style = rng.random()
    if style < 0.4:
        words[0] = words[0].capitalize()
    elif style < 0.6:
        words = [w.upper() for w in words]
    elif style < 0.8:
        words = [w.capitalize() for w in words]
    return " ".join(words)


def _colour(rng: random.Random, lo: int, hi: int) -> tuple[int, int, int]:
    return tuple(rng.randint(lo, hi) for _ in range(3))  # type: ignore[return-value]


def _contrasting(rng: random.Random, bg: tuple[int, int, int]) -> tuple[int, int, int]:
    light = sum(bg) / 3 > 128
    return _colour(rng, 0, 70) if light else _colour(rng, 190, 255)


def _font(rng: random.Random, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(rng.choice(fonts()), size)


def _fit(rng: random.Random, text: str, size: int, max_w: int) -> ImageFont.FreeTypeFont:
    path = rng.choice(fonts())
    while True:
        font = ImageFont.truetype(path, size)
        if font.getlength(text) <= max_w or size <= 9:
            return font
        size -= 1


def _photo_background(rng: random.Random, w: int, h: int) -> Image.Image:
    """Gradients, soft blobs and noise: the look of a photograph without its objects."""
    a, b = _colour(rng, 0, 255), _colour(rng, 0, 255)
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        t = y / max(1, h - 1)
        row = tuple(int(a[i] * (1 - t) + b[i] * t) for i in range(3))
        for x in range(w):
            px[x, y] = row
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 8)):
        cx, cy, r = rng.randint(0, w), rng.randint(0, h), rng.randint(w // 10, w // 3)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_colour(rng, 0, 255))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(6, 14)))
    noise = Image.effect_noise((w, h), rng.uniform(10, 30)).convert("RGB")
    return Image.blend(img, noise, 0.12)


def _draw_centered(img: Image.Image, lines: list[str], font, fill, spacing: int = 6) -> None:
    draw = ImageDraw.Draw(img)
    heights = [font.getbbox(line)[3] - font.getbbox(line)[1] for line in lines]
    total = sum(heights) + spacing * (len(lines) - 1)
    y = (img.height - total) / 2
    for line, h in zip(lines, heights, strict=False):
        x = (img.width - font.getlength(line)) / 2
        draw.text((x, y - font.getbbox(line)[1]), line, font=font, fill=fill)
        y += h + spacing


def make_text_image(rng: random.Random, kind: str) -> Sample:
    """One image of ``kind`` (one of ``TEXT_KINDS``) and its text."""
    if kind == "button":
        text = _phrase(rng, 1, 3)
        font = _font(rng, rng.randint(13, 20))
        w, h = int(font.getlength(text)) + rng.randint(24, 48), font.size * 2 + rng.randint(4, 16)
        bg = _colour(rng, 0, 255)
        img = Image.new("RGB", (w, h), (255, 255, 255))
        ImageDraw.Draw(img).rounded_rectangle((0, 0, w - 1, h - 1), radius=h // 4, fill=bg)
        _draw_centered(img, [text], font, _contrasting(rng, bg))
        return Sample(img, text, kind)
    if kind == "banner":
        w, h = rng.choice([(728, 90), (468, 60), (970, 250), (320, 50)])
        text = _phrase(rng, 2, 5)
        font = _fit(rng, text, int(h * rng.uniform(0.3, 0.5)), w - 20)
        bg = _colour(rng, 0, 255)
        img = Image.new("RGB", (w, h), bg)
        _draw_centered(img, [text], font, _contrasting(rng, bg))
        return Sample(img, text, kind)
    if kind == "heading":
        text = _phrase(rng, 2, 6)
        w, h = rng.choice([(600, 100), (800, 120), (400, 80)])
        font = _fit(rng, text, rng.randint(28, 44), w - 30)
        bg = _colour(rng, 215, 255)
        img = Image.new("RGB", (w, h), bg)
        _draw_centered(img, [text], font, _contrasting(rng, bg))
        return Sample(img, text, kind)
    if kind == "dark":
        text = _phrase(rng, 2, 5)
        w, h = rng.choice([(500, 90), (300, 60), (640, 160)])
        font = _fit(rng, text, rng.randint(18, 36), w - 30)
        bg = _colour(rng, 0, 60)
        img = Image.new("RGB", (w, h), bg)
        _draw_centered(img, [text], font, _colour(rng, 200, 255))
        return Sample(img, text, kind)
    if kind == "two_lines":
        lines = [_phrase(rng, 2, 4), _phrase(rng, 2, 5)]
        w, h = rng.choice([(480, 140), (600, 180), (360, 120)])
        font = _fit(rng, max(lines, key=len), rng.randint(18, 30), w - 30)
        bg = _colour(rng, 0, 255)
        img = Image.new("RGB", (w, h), bg)
        _draw_centered(img, lines, font, _contrasting(rng, bg), spacing=font.size // 2)
        return Sample(img, "\n".join(lines), kind)
    if kind == "small_ui":
        text = _phrase(rng, 1, 3)
        font = _font(rng, rng.randint(11, 13))
        w, h = int(font.getlength(text)) + rng.randint(12, 30), rng.randint(20, 28)
        bg = _colour(rng, 200, 255) if rng.random() < 0.7 else _colour(rng, 20, 80)
        img = Image.new("RGB", (w, h), bg)
        _draw_centered(img, [text], font, _contrasting(rng, bg))
        return Sample(img, text, kind)
    if kind == "photo":
        w, h = rng.choice([(640, 360), (480, 320), (800, 450)])
        img = _photo_background(rng, w, h)
        text = _phrase(rng, 2, 4)
        font = _fit(rng, text, rng.randint(28, 48), w - 60)
        tw, th = font.getlength(text), font.size
        x, y = (w - tw) / 2, rng.uniform(0.15, 0.7) * h
        draw = ImageDraw.Draw(img)
        if rng.random() < 0.5:  # a caption box, as a banner over a photo
            bg = _colour(rng, 0, 255)
            draw.rectangle((x - 14, y - 10, x + tw + 14, y + th * 1.3 + 10), fill=bg)
            draw.text((x, y), text, font=font, fill=_contrasting(rng, bg))
        else:  # type straight on the photo, with an outline for legibility
            fill = _colour(rng, 230, 255) if rng.random() < 0.5 else _colour(rng, 0, 25)
            stroke = (0, 0, 0) if sum(fill) > 384 else (255, 255, 255)
            draw.text((x, y), text, font=font, fill=fill, stroke_width=2, stroke_fill=stroke)
        return Sample(img, text, kind)
    raise ValueError(f"unknown kind {kind!r}")


def make_picture(rng: random.Random) -> Sample:
    """A picture without text: shapes that look like letters (rings, bars) included."""
    w, h = rng.choice([(224, 224), (320, 240), (400, 300), (64, 64), (640, 360)])
    style = rng.choice(["shapes", "photo", "stripes", "noise", "icon", "rings"])
    if style == "photo":
        return Sample(_photo_background(rng, w, h), "", "picture")
    if style == "noise":
        img = Image.effect_noise((w, h), rng.uniform(30, 90)).convert("RGB")
        return Sample(img, "", "picture")
    img = Image.new("RGB", (w, h), _colour(rng, 0, 255))
    draw = ImageDraw.Draw(img)
    if style == "stripes":
        step = rng.randint(6, 30)
        for x in range(0, w + h, step * 2):
            draw.line((x, 0, x - h, h), fill=_colour(rng, 0, 255), width=step)
    elif style == "rings":  # a circle must not read as "O", a bar as "I"
        for _ in range(rng.randint(1, 4)):
            r = rng.randint(min(w, h) // 10, min(w, h) // 3)
            cx, cy = rng.randint(r, w - r), rng.randint(r, h - r)
            draw.ellipse(
                (cx - r, cy - r, cx + r, cy + r),
                outline=_contrasting(rng, (128,) * 3),
                width=max(2, r // 5),
            )
        if rng.random() < 0.5:
            x = rng.randint(5, w - 10)
            draw.rectangle((x, h // 4, x + max(3, w // 40), 3 * h // 4), fill=(0, 0, 0))
    elif style == "icon":  # a hamburger, a cross or an arrow, as UI icons are drawn
        c = _contrasting(rng, img.getpixel((0, 0)))
        m = min(w, h)
        kind = rng.choice(["menu", "cross", "arrow"])
        half, bar = m / 3, m // 12
        if kind == "menu":
            for i in range(3):
                y = h // 2 + (i - 1) * m // 5
                draw.rectangle((w // 2 - m // 3, y - m // 24, w // 2 + m // 3, y + m // 24), fill=c)
        elif kind == "cross":
            draw.line((w / 2 - half, h / 2 - half, w / 2 + half, h / 2 + half), fill=c, width=bar)
            draw.line((w / 2 - half, h / 2 + half, w / 2 + half, h / 2 - half), fill=c, width=bar)
        else:
            pts = [
                (w / 2 + m / 3 * math.cos(a), h / 2 + m / 3 * math.sin(a)) for a in (0, 2.3, 3.98)
            ]
            draw.polygon(pts, fill=c)
    else:
        for _ in range(rng.randint(2, 6)):
            x0, y0 = rng.randint(0, w - 10), rng.randint(0, h - 10)
            x1, y1 = rng.randint(x0 + 5, w), rng.randint(y0 + 5, h)
            shape = rng.choice(["ellipse", "rectangle", "triangle"])
            fill = _colour(rng, 0, 255)
            if shape == "ellipse":
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            elif shape == "rectangle":
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            else:
                draw.polygon([(x0, y1), ((x0 + x1) / 2, y0), (x1, y1)], fill=fill)
    return Sample(img, "", "picture")


def make_set(n: int, seed: int = 0, picture_share: float = 0.3) -> list[Sample]:
    """``n`` samples: ``picture_share`` of them pictures without text, the rest text kinds
    in turn."""
    rng = random.Random(seed)
    pictures = round(n * picture_share)
    out = [make_text_image(rng, TEXT_KINDS[i % len(TEXT_KINDS)]) for i in range(n - pictures)]
    out += [make_picture(rng) for _ in range(pictures)]
    rng.shuffle(out)
    return out
