"""A small web site on a local HTTP server, with every image case batch captioning meets.

Shared by the crawler, report, batch CLI and jobs tests (``from testsite import ...``; the
name ``site`` would be shadowed by the standard library's ``site`` module). The site:

* ``/index.html``: one <img> per alt case (missing, empty, meaningless words and file names,
  good alt, role=presentation, aria-hidden, aria-label), srcset with w and x descriptors,
  data-src lazy loading, <picture>/<source>, <input type=image>, duplicates, data: and
  javascript: URLs, a 404 image, a non-image, an image on a blocked address, a <template>;
* ``/blog/post.html``: ``<base href="/assets/">``, ``../``, root-relative and
  protocol-relative URLs, an image shared with the index;
* ``/latin1.html``: an ISO-8859-1 page (patched copies must keep its encoding);
* ``/text.html`` (in no sitemap): an image of text (``SALE_TEXT``, its alt is its text), a
  picture with a small sign (``SIGN_TEXT``: caption, then "Appears to say: OPEN") and a
  plain picture;
* ``/shapes.html`` (in no sitemap): shapes drawn as the trained demo model learnt them
  (``SHAPES``): a red circle with its right alt, another with a swapped one (``SWAPPED_ALT``),
  and a green square without alt;
* ``/private/secret.html``: disallowed by ``/robots.txt``; ``/notes.txt``: not HTML;
* ``/sitemap_index.xml`` -> ``/sitemap-main.xml``, ``/sitemap-more.xml.gz`` (gzip) and
  ``/sitemap-broken.xml`` (404), listing the pages above and ``/gone.html`` (404).

``Site.routes`` answers chosen paths with any status, headers and body (a 503 robots.txt, a
gzip bomb, ``Content-Encoding: gzip``); ``Site.requests`` logs every path asked for.
"""

from __future__ import annotations

import gzip
import io
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

from helpers import QuietHandler, png_bytes
from PIL import Image, ImageDraw, ImageFont

from captioner.train.synthetic import draw_shape

# Image files of the site (path under the root -> colour); each a distinct real PNG.
IMAGES: dict[str, tuple[int, int, int]] = {
    "img/missing.png": (200, 30, 30),
    "img/empty.png": (30, 200, 30),
    "img/word.png": (30, 30, 200),
    "img/filename.png": (200, 200, 30),
    "img/photo.png": (200, 30, 200),
    "img/good.png": (30, 200, 200),
    "img/presentation.png": (120, 120, 120),
    "img/hidden.png": (60, 60, 60),
    "img/labelled.png": (250, 250, 250),
    "img/w-small.png": (10, 10, 10),
    "img/w-medium.png": (20, 20, 20),
    "img/w-large.png": (240, 120, 10),
    "img/x1.png": (40, 40, 40),
    "img/x2.png": (10, 120, 240),
    "img/lazy.png": (120, 240, 10),
    "img/pic-small.png": (50, 50, 50),
    "img/pic-large.png": (240, 10, 120),
    "img/pic-fallback.png": (70, 70, 70),
    "img/go.png": (10, 240, 120),
    "img/template.png": (80, 80, 80),
    "assets/cat.png": (180, 90, 20),
    "assets/dog.png": (20, 90, 180),
    "latin/caf.png": (90, 20, 180),
}

INDEX_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>AltCap test site</title>
</head>
<body>
<h1>Every image case</h1>
<img src="img/missing.png">
<img src="img/empty.png" alt="">
<img src="img/word.png" alt="image">
<img src="img/filename.png" alt="IMG_1234.jpg">
<img src='img/photo.png' alt=photo width=64>
<img src="img/good.png" alt="A red square on a white wall">
<img src="img/presentation.png" role="presentation">
<div aria-hidden="true"><img src="img/hidden.png"></div>
<img src="img/labelled.png" aria-label="Company logo">
<img src="img/w-small.png"
     srcset="img/w-small.png 160w, img/w-large.png 640w, img/w-medium.png 320w"
     sizes="50vw">
<img srcset="img/x1.png, img/x2.png 2x" alt="picture">
<img class="lazy" src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="img/lazy.png">
<picture>
  <source srcset="img/pic.jxl" type="image/jxl">
  <source srcset="img/pic-small.png 1x, img/pic-large.png 2x" type="image/png">
  <img src="img/pic-fallback.png">
</picture>
<form action="/search"><input type="text" name="q"><input type="image" src="img/go.png"></form>
<p>Again: <img src="img/missing.png#again" alt=""> <IMG SRC="./img/word.png" ALT="image"/></p>
<img src="data:image/png;base64,iVBORw0KGgo=">
<img src="javascript:alert(1)">
<img src="img/broken.png">
<img src="http://169.254.169.254/latest/logo.png">
<img src="img/notanimage.png">
<template><img src="img/template.png"></template>
</body>
</html>
"""

POST_HTML = """<html><head><base href="/assets/"><title>A post</title></head>
<body>
<article>
<IMG SRC="cat.png">
<img src="../img/good.png" alt="A red square on a white wall">
<img src="/img/missing.png">
<img src="//{host}/assets/dog.png" alt="spacer">
</article>
</body></html>
"""

# Images of text, drawn with a real font for the real OCR engine to read.
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SALE_TEXT = "SALE 50% OFF"  # img/sale.png: black on white, 40 px, nothing else
SIGN_TEXT = "OPEN"  # img/shop.png: a sign in a drawn landscape

TEXT_HTML = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Images of text</title></head>
<body>
<h1>Images of text</h1>
<img src="img/sale.png">
<img src="img/shop.png" alt="photo">
<img src="img/missing.png">
</body>
</html>
"""

# Drawn shapes (train.synthetic.draw_shape: colour, shape, seed), for the demo model.
SHAPES = {
    "shapes/circle.png": ("red", "circle", 1),
    "shapes/circle-2.png": ("red", "circle", 2),
    "shapes/square.png": ("green", "square", 3),
}
RIGHT_ALT = "A red circle on a white background."
SWAPPED_ALT = "A blue star on a white background."  # on a red circle: another colour and shape
SHAPES_HTML = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Shapes</title></head>
<body>
<img src="shapes/circle.png" alt="{RIGHT_ALT}">
<img src="shapes/circle-2.png" alt="{SWAPPED_ALT}">
<img src="shapes/square.png">
</body>
</html>
"""

LATIN1_HTML = """<html><head><meta charset="iso-8859-1"><title>Café</title></head>
<body><p>Crème brûlée.</p><img src="latin/caf.png"></body></html>
"""

SECRET_HTML = '<html><body><img src="/img/missing.png"></body></html>\n'
ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"


def urlset(urls: list[str]) -> bytes:
    items = "".join(f"  <url><loc>{u}</loc></url>\n" for u in urls)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
        f"{items}</urlset>\n"
    ).encode()


def sitemapindex(urls: list[str]) -> bytes:
    items = "".join(f"  <sitemap><loc>{u}</loc></sitemap>\n" for u in urls)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
        f"{items}</sitemapindex>\n"
    ).encode()


Route = tuple[int, dict[str, str], bytes]  # status, headers, body


@dataclass
class Site:
    root: Path
    base: str = ""  # http://127.0.0.1:<port>
    routes: dict[str, Route] = field(default_factory=dict)  # path -> canned answer
    requests: list[str] = field(default_factory=list)  # paths asked for, in order

    @property
    def host(self) -> str:
        return self.base.split("://", 1)[1]

    def url(self, path: str) -> str:
        return self.base + "/" + path.lstrip("/")

    def image_bytes(self, path: str) -> bytes:
        return (self.root / path.lstrip("/")).read_bytes()

    def write(self, path: str, data: bytes | str) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def sale_png() -> bytes:
    """An image of text: ``SALE_TEXT`` in black on white, 40 px DejaVu Sans."""
    image = Image.new("RGB", (420, 80), "white")
    ImageDraw.Draw(image).text((20, 15), SALE_TEXT, fill="black", font=ImageFont.truetype(FONT, 40))
    return _png(image)


def shop_png() -> bytes:
    """A picture with some text: sky, grass, a sun and a small sign saying ``SIGN_TEXT``."""
    image = Image.new("RGB", (320, 240), (70, 130, 180))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 170, 320, 240), fill=(60, 140, 60))
    draw.ellipse((220, 30, 280, 90), fill=(250, 220, 60))
    draw.rectangle((40, 60, 190, 110), fill="white", outline="black", width=3)
    draw.text((55, 68), SIGN_TEXT, fill="black", font=ImageFont.truetype(FONT, 28))
    draw.rectangle((110, 110, 120, 190), fill=(100, 70, 40))  # its post
    return _png(image)


def build_site(site: Site) -> None:
    """Write the site's files (the server must be up: sitemaps hold absolute URLs)."""
    for path, color in IMAGES.items():
        site.write(path, png_bytes(color))
    site.write("img/notanimage.png", "this is text, not a PNG\n")
    site.write("img/sale.png", sale_png())
    site.write("img/shop.png", shop_png())
    site.write("text.html", TEXT_HTML)
    for path, (colour, shape, seed) in SHAPES.items():
        site.write(path, _png(draw_shape(colour, shape, rng=random.Random(seed))))
    site.write("shapes.html", SHAPES_HTML)
    site.write("index.html", INDEX_HTML)
    site.write("blog/post.html", POST_HTML.format(host=site.host))
    site.write("latin1.html", LATIN1_HTML.encode("iso-8859-1"))
    site.write("private/secret.html", SECRET_HTML)
    site.write("notes.txt", "plain text\n")
    site.write("robots.txt", ROBOTS_TXT)
    site.write(
        "sitemap_index.xml",
        sitemapindex(
            [
                site.url("sitemap-main.xml"),
                site.url("sitemap-more.xml.gz"),
                site.url("sitemap-broken.xml"),
            ]
        ),
    )
    site.write(
        "sitemap-main.xml",
        urlset(
            [site.url("index.html"), site.url("blog/post.html"), site.url("private/secret.html")]
        ),
    )
    more = urlset(
        [
            site.url("latin1.html"),
            site.url("index.html"),
            site.url("notes.txt"),
            site.url("gone.html"),
        ]
    )
    site.write("sitemap-more.xml.gz", gzip.compress(more, mtime=0))


def _handler(site: Site) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(site.root), **kwargs)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            site.requests.append(path)
            route = site.routes.get(path)
            if route is None:
                super().do_GET()
                return
            status, headers, body = route
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def serve_site(root: Path, *, build: bool = True) -> Iterator[Site]:
    """Serve ``root`` on 127.0.0.1 (a free port), with the test site written into it unless
    ``build`` is false; yields the ``Site``."""
    site = Site(root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
    server.daemon_threads = True
    site.base = f"http://127.0.0.1:{server.server_port}"
    if build:
        build_site(site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
