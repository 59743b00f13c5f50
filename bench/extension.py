"""Extension benchmark: what the content script costs a page, in Chromium.

The browser extension runs on every page the user allows, on the page's main thread, so its
first look at a page (``scan``: every element for shadow roots, every image assessed) is
work the page waits for. This loads the unpacked extension in Debian's Chromium (headless,
driven by Playwright), agrees to a server that is not there (nothing is captioned: only the
scan is measured), and opens synthetic pages of growing size:

- ``E elements, I images``: nested ``div``/``span`` with text, ``I`` images spread in them;
- ``one link, I images``: a page wrapped in one ``<a href>`` holding ``I`` images with
  ``alt=""`` (the worst case for the empty-link rule, which asks what the link holds).

The content script scans in slices (the page gets the main thread back between two), so two
figures matter: the first scan's total time, and its longest slice (the longest the page
waited for it at once). The copy of the extension it loads differs from ``extension/`` in
two ways only: ``*://127.0.0.1/*`` is granted at install (no dialog to click), and
``runScans`` (one slice) is wrapped to time itself (``performance.now()`` around each call,
the total and the longest kept in data attributes the benchmark reads, until no scan is
left). Prints a Markdown table of medians, and writes JSON with ``--json``.

    python bench/extension.py                  # ~1 min
    python bench/extension.py --runs 9 --json bench/results/extension-chromium.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.batch import serve  # noqa: E402 (a quiet static server on 127.0.0.1)
from bench.serve import noise_png  # noqa: E402

EXTENSION = ROOT / "extension"
CHROMIUM = "/usr/bin/chromium"
# Added before this marker in the copy's content script: each slice of scanning timed,
# inside its closure.
MARKER = "  // --- writing and restoring"
TIMED_SCAN = """  {
    const inner = runScans;
    runScans = function () {
      const t = performance.now();
      try {
        return inner();
      } finally {
        const ms = performance.now() - t;
        const root = document.documentElement.dataset;
        root.altcapScanMs = String(Number(root.altcapScanMs || 0) + ms);
        root.altcapSliceMs = String(Math.max(Number(root.altcapSliceMs || 0), ms));
        root.altcapSlices = String(Number(root.altcapSlices || 0) + 1);
        if (!scans.length) root.altcapScanned = "1";
      }
    };
  }
"""


def nested_page(elements: int, images: int) -> str:
    """About ``elements`` elements (div/span pairs holding text) with ``images`` images."""
    per_image = max(0, elements // max(images, 1) // 2 - 1)
    filler = "<div><span>Some text</span></div>" * per_image
    cards = "".join(
        f'<div><span>{filler}<img src="/img.png?{i}" width="40" height="40"></span></div>'
        for i in range(images)
    )
    return f'<!doctype html><html lang="en"><body>{cards}</body></html>'


def one_link_page(images: int) -> str:
    cards = "".join(
        f'<div><span>Item</span><img src="/img.png?{i}" alt="" width="40" height="40"></div>'
        for i in range(images)
    )
    return f'<!doctype html><html lang="en"><body><a href="/all">{cards}</a></body></html>'


def extension_copy(target: Path) -> Path:
    shutil.copytree(EXTENSION, target, ignore=shutil.ignore_patterns("tests"))
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    manifest["host_permissions"] = ["*://127.0.0.1/*"]
    (target / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    script = target / "content-script.js"
    text = script.read_text(encoding="utf-8")
    if MARKER not in text:
        raise SystemExit(f"content-script.js has no {MARKER.strip()!r}: update the benchmark")
    script.write_text(text.replace(MARKER, TIMED_SCAN + MARKER, 1), encoding="utf-8")
    return target


def measure(
    args: argparse.Namespace, pages: dict[str, tuple[str, str]], work: Path
) -> dict[str, dict]:
    """``pages``: file name -> (title, HTML). Results by file name."""
    from playwright.sync_api import sync_playwright

    site = work / "site"
    site.mkdir()
    (site / "img.png").write_bytes(noise_png(0, 40))
    titles = {name: title for name, (title, _) in pages.items()}
    for name, (_, html) in pages.items():
        (site / f"{name}.html").write_text(html, encoding="utf-8")
    server, base = serve(site)
    ext = extension_copy(work / "extension")
    results: dict[str, dict] = {}
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                user_data_dir=work / "profile",
                executable_path=args.chromium,
                headless=True,
                args=[
                    "--headless=new",
                    f"--disable-extensions-except={ext}",
                    f"--load-extension={ext}",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                ],
            )
            try:
                agree(context)
                for name in pages:
                    times: list[float] = []
                    slices: list[float] = []
                    for _ in range(args.runs):
                        page = context.new_page()
                        page.goto(f"{base}/{name}.html")
                        page.wait_for_function(
                            "document.documentElement.dataset.altcapScanned", timeout=120_000
                        )
                        data = page.evaluate("({...document.documentElement.dataset})")
                        times.append(float(data["altcapScanMs"]))
                        slices.append(float(data["altcapSliceMs"]))
                        count = page.evaluate("document.getElementsByTagName('*').length")
                        page.close()
                    results[name] = {
                        "elements": count,
                        "scan_ms_median": round(statistics.median(times), 1),
                        "longest_slice_ms_median": round(statistics.median(slices), 1),
                        "scan_ms_runs": [round(t, 1) for t in times],
                        "longest_slice_ms_runs": [round(t, 1) for t in slices],
                    }
                    r = results[name]
                    print(
                        f"{titles[name]}: {r['scan_ms_median']} ms,"
                        f" longest slice {r['longest_slice_ms_median']} ms",
                        file=sys.stderr,
                    )
            finally:
                context.close()
    finally:
        server.shutdown()
    return results


def agree(context: BrowserContext) -> None:
    """Consent to a server nobody listens on: the content script runs, nothing is sent."""
    worker = context.service_workers or [context.wait_for_event("serviceworker")]
    extension_id = worker[0].url.split("/")[2]
    time.sleep(1)  # the install opens the options page itself; let it settle first
    options = context.new_page()
    options.goto(f"chrome-extension://{extension_id}/options.html")
    options.get_by_label("AltCap server address").fill("http://127.0.0.1:9")
    options.get_by_role("button", name="I agree: save and start describing").click()
    options.locator("#status").filter(has_text="Thank you").wait_for()
    options.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="page loads per page (median reported)")
    p.add_argument("--chromium", default=CHROMIUM)
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args()
    pages = {
        "2,000 elements, 200 images": nested_page(2_000, 200),
        "20,000 elements, 10 images": nested_page(20_000, 10),
        "20,000 elements, 1,000 images": nested_page(20_000, 1_000),
        "100,000 elements, 2,000 images": nested_page(100_000, 2_000),
        "one link, 2,000 images": one_link_page(2_000),
    }
    with tempfile.TemporaryDirectory(prefix="altcap-bench-ext-") as tmp:
        files = {f"p{i}": (title, html) for i, (title, html) in enumerate(pages.items())}
        results = measure(args, files, Path(tmp))
    rows = dict(zip(pages, results.values(), strict=True))
    print("| page | elements | first scan, median ms | longest slice, median ms | runs (scan) |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        runs = ", ".join(f"{t:g}" for t in r["scan_ms_runs"])
        print(
            f"| {name} | {r['elements']:,} | {r['scan_ms_median']:g}"
            f" | {r['longest_slice_ms_median']:g} | {runs} |"
        )
    if args.json:
        meta = {"machine": platform.machine(), "processor": platform.processor(), "runs": args.runs}
        args.json.write_text(json.dumps({"meta": meta, "pages": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
