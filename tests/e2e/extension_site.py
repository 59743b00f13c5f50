"""The test site and the counting service the browser tests of the extension share.

Chromium (``test_extension.py``) and Firefox (``test_extension_firefox.py``) load the same
pages; ``conftest.py`` turns these into fixtures.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXTENSION = Path(__file__).resolve().parents[2] / "extension"
TIMEOUT_MS = 20_000  # generous: CI runs this on two cores

# Every image has a URL of its own, so the server's log says exactly which were sent.
IMAGES = {
    "none": (200, 30, 30),
    "filename": (30, 160, 40),
    "author": (30, 40, 200),
    "decorative": (220, 220, 40),
    "presentation": (200, 40, 200),
    "hidden": (40, 200, 200),
    "tiny": (90, 90, 90),
    "banner": (250, 120, 20),
    "change1": (120, 20, 250),
    "change2": (20, 20, 20),
    "added": (250, 250, 250),
    "lazy": (120, 70, 20),
    "hero": (20, 120, 70),  # a role="img" element's CSS background, no name
    "named-hero": (70, 20, 70),  # the same with an aria-label
    "backdrop": (200, 200, 120),  # a background without role="img": decoration
    "linked": (60, 130, 200),  # alt="" but all its link holds: the link has no name
    "linked-text": (200, 130, 60),  # alt="" beside its link's text: decorative
}
DESCRIBED = {"none", "filename", "change1", "change2", "added", "lazy", "hero", "linked"}
# What reaches the server: those, and the thin banner, sent for the text it might hold (a
# plain colour: answered with a caption alone, which AltCap does not write for a banner).
SENT = DESCRIBED | {"banner"}

TEST_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>AltCap extension test page</title></head>
<body>
<h1>AltCap extension test page</h1>
<p id="script-state">the page script did not run</p>
<button type="button" id="add">Add an image</button>
<p id="clicks">0</p>
<img id="none" src="none.png" width="200" height="150">
<img id="filename" src="filename.png" alt="IMG_0042.jpg" width="200" height="150">
<img id="author" src="author.png" alt="A red bicycle" width="200" height="150">
<img id="decorative" src="decorative.png" alt="" width="200" height="150">
<img id="presentation" src="presentation.png" role="presentation" width="200" height="150">
<img id="hidden" src="hidden.png" aria-hidden="true" width="200" height="150">
<img id="tiny" src="tiny.png" width="10" height="10">
<img id="banner" src="banner.png" width="800" height="40">
<img id="change" src="change1.png" width="200" height="150">
<div id="hero" role="img" style="background: url(hero.png); width: 200px; height: 150px"></div>
<div id="named-hero" role="img" aria-label="A quiet harbour"
  style="background: url(named-hero.png); width: 200px; height: 150px"></div>
<div id="backdrop" style="background: url(backdrop.png); width: 200px; height: 150px"></div>
<a href="#shop"><img id="linked" src="linked.png" alt="" width="200" height="150"></a>
<a href="#home"><img id="linked-text" src="linked-text.png" alt="" width="200" height="150">
  Home</a>
<div id="later"></div>
<div style="height: 9000px"></div>
<img id="lazy" src="lazy.png" loading="lazy" width="200" height="150">
<script>
  document.getElementById("script-state").textContent = "the page script ran";
  document.getElementById("add").addEventListener("click", () => {
    const clicks = document.getElementById("clicks");
    clicks.textContent = String(Number(clicks.textContent) + 1);
    if (document.getElementById("added")) return;
    const img = document.createElement("img");
    img.id = "added";
    img.src = "added.png";
    img.width = 200;
    img.height = 150;
    document.getElementById("later").append(img);
  });
</script>
</body>
</html>
"""


# Web components and iframes: every image here has its own URL too.
COMPONENT_IMAGES = {
    "shadow": (10, 90, 160),  # in an open shadow root
    "kettle": (10, 160, 90),  # there too, with author alt
    "nested": (160, 10, 90),  # in a shadow root inside a shadow root
    "shadow-added": (90, 160, 10),  # added to a shadow root by a click
    "late": (60, 60, 160),  # in an element whose definition arrives after the page loaded
    "closed": (160, 60, 60),  # in a closed shadow root (extensions may open it)
    "framed": (60, 160, 60),  # in a same-origin iframe
    "door": (200, 100, 150),  # there too, with author alt
    "srcdoc": (100, 200, 150),  # in a srcdoc iframe (runs with its parent's origin)
}
COMPONENTS_DESCRIBED = {"shadow", "nested", "shadow-added", "late", "closed", "framed", "srcdoc"}

COMPONENTS_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Web components and frames</title></head>
<body>
<p id="script-state">the page script did not run</p>
<button type="button" id="add">Add an image to the card</button>
<x-card></x-card>
<x-late></x-late>
<x-closed></x-closed>
<iframe id="frame" src="frame.html" width="400" height="400" title="A frame"></iframe>
<iframe id="srcdoc" width="400" height="300" title="A srcdoc frame"
  srcdoc="<img id='srcdoc-img' src='srcdoc.png' width='200' height='150'>"></iframe>
<script>
  const picture = (id, alt) => {
    const img = document.createElement("img");
    img.id = id;
    img.src = id + ".png";
    img.width = 200;
    img.height = 150;
    if (alt !== undefined) img.alt = alt;
    return img;
  };
  customElements.define("x-badge", class extends HTMLElement {
    constructor() {
      super();
      this.attachShadow({ mode: "open" }).append(picture("nested"));
    }
  });
  customElements.define("x-card", class extends HTMLElement {
    constructor() {
      super();
      const root = this.attachShadow({ mode: "open" });
      root.append(picture("shadow"), picture("kettle", "A green kettle"));
      root.append(document.createElement("x-badge"));
    }
  });
  customElements.define("x-closed", class extends HTMLElement {
    constructor() {
      super();
      window.closedImage = picture("closed");
      this.attachShadow({ mode: "closed" }).append(window.closedImage);
    }
  });
  document.getElementById("add").addEventListener("click", () => {
    const root = document.querySelector("x-card").shadowRoot;
    if (!root.getElementById("shadow-added")) root.append(picture("shadow-added"));
  });
  // A component library that arrives late: the element is in the page, undefined, first.
  setTimeout(() => {
    customElements.define("x-late", class extends HTMLElement {
      connectedCallback() {
        if (!this.shadowRoot) this.attachShadow({ mode: "open" }).append(picture("late"));
      }
    });
  }, 1000);
  document.getElementById("script-state").textContent = "the page script ran";
</script>
</body>
</html>
"""

# In French: AltCap's English descriptions there are marked lang="en".
FRAME_PAGE = """<!doctype html>
<html lang="fr">
<head><meta charset="utf-8"><title>Un cadre</title></head>
<body>
<img id="framed" src="framed.png" width="200" height="150">
<img id="door" src="door.png" alt="A blue door" width="200" height="150">
</body>
</html>
"""


# A page of its own for "is the extension working yet?": its image is never asked about again.
PROBE_IMAGES = {"probe": (70, 20, 120)}
PROBE_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Probe</title></head>
<body><img id="probe" src="probe.png" width="200" height="150"></body>
</html>
"""

# An image in a format browsers show and the server does not decode: an SVG drawing.
DRAWING_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="200" height="150">
<rect width="200" height="150" fill="#8ecae6"/><circle cx="100" cy="75" r="40" fill="#fb8500"/>
</svg>
"""
DRAWING_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>A drawing</title></head>
<body><img id="drawing" src="drawing.svg" width="200" height="150"></body>
</html>
"""


@dataclass
class Service:
    url: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, agent
    captions: dict[str, str] = field(default_factory=dict)  # image URL -> caption sent back
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # image URL -> its result
    sent_urls: list[str] = field(default_factory=list)  # every image URL POSTed, in order
    sent_data: list[str] = field(default_factory=list)  # every image POSTed as data (its head)
    sent_sha256: list[str] = field(default_factory=list)  # and the SHA-256 of its bytes
    sent_alts: list[tuple[str, str]] = field(default_factory=list)  # (image URL, author's alt)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.captions.clear()
            self.results.clear()
            self.sent_urls.clear()
            self.sent_data.clear()
            self.sent_sha256.clear()
            self.sent_alts.clear()

    def from_browser(self, agent: str = "Chrom") -> list[tuple[str, str, str]]:
        """Requests whose User-Agent names the browser (``Firefox`` for Firefox)."""
        with self.lock:
            return [r for r in self.requests if agent in r[2]]

    def wait_for_caption(self, url: str) -> str:
        return wait_until(lambda: self.captions.get(url), f"no caption for {url}")

    def wait_for_result(self, url: str) -> dict[str, Any]:
        """The whole result the server sent for the image at ``url`` (caption, text, alt...)."""
        return wait_until(lambda: self.results.get(url), f"no result for {url}")


def log_requests(app: Any) -> Service:
    """A Service (its ``url`` set once it serves) that logs every request ``app`` (the real
    Flask app) gets: what was asked for and what each image was answered."""
    from flask import request

    svc = Service("")

    @app.before_request
    def log_request() -> None:
        with svc.lock:
            svc.requests.append(
                (request.method, request.path, request.headers.get("User-Agent", ""))
            )
        if request.method == "POST" and request.path == "/v1/captions":
            body = json.loads(request.get_data(cache=True) or b"{}")  # the view reads it again
            images = body.get("images", [])
            with svc.lock:
                svc.sent_urls += [i["url"] for i in images if "url" in i]
                data = [i["data"] for i in images if "data" in i]
                svc.sent_data += [d[:32] for d in data]
                svc.sent_sha256 += [sha256_of_data(d) for d in data]
                svc.sent_alts += [(i.get("url", ""), i["alt"]) for i in images if "alt" in i]

    @app.after_request
    def log_captions(response: Any) -> Any:
        if request.method == "POST" and request.path == "/v1/captions":
            body = json.loads(request.get_data(cache=True) or b"{}")
            answer = response.get_json(silent=True) or {}
            pairs = zip(body.get("images", []), answer.get("results", []), strict=False)
            with svc.lock:
                for image, result in pairs:
                    if "url" in image and isinstance(result.get("caption"), str):
                        svc.captions[image["url"]] = result["caption"]
                        svc.results[image["url"]] = result
        return response

    return svc


def sha256_of_data(data: str) -> str:
    """The SHA-256 (hex) of the bytes an image's ``data`` holds (base64, or a data: URL)."""
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    return hashlib.sha256(base64.b64decode(payload)).hexdigest()


def wait_until(probe: Callable[[], Any], what: str, timeout: float = TIMEOUT_MS / 1000) -> Any:
    stop = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < stop, what
        time.sleep(0.05)


def image_url(site: str, name: str) -> str:
    return site.rsplit("/", 1)[0] + f"/{name}.png"


def copy_extension(target: Path, hosts: list[str] | None = None) -> Path:
    """extension/ copied to ``target`` with ``hosts`` (``*://127.0.0.1/*`` unless told)
    granted at install (no dialog to click)."""
    shutil.copytree(EXTENSION, target, ignore=shutil.ignore_patterns("tests"))
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    manifest["host_permissions"] = hosts or ["*://127.0.0.1/*"]
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return target
