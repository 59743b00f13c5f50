"""Check authors' alt texts against their images: ``python -m captioner check-alt``.

Reads JSON lines ``{"image": PATH_OR_URL, "alt": TEXT}`` (a file, or ``-`` for stdin) and
writes each line back with the check (``captioner.trust``: the alt placed between a generic
text and AltCap's own caption)::

    {"image": "cat.jpg", "alt": "A dog.", "score": 0.12, "verdict": "suspect",
     "caption": "A cat on a sofa.", "confidence": 0.91, "confident": true}

``verdict`` is ``matches`` or ``suspect``; ``caption`` is AltCap's own description, a
suggestion for a person to check, never a replacement (a score is blind to what the image is
for). Each image costs one caption. A line that cannot be checked is written back with
``error: {"code", "message"}`` (``invalid_line``, an image's or a download's code) and makes
the exit status 1; the others are still checked. Image URLs are fetched with the service's
SSRF-safe downloader (``--allow-private`` for intranet addresses). A model without CLIP's
text tower cannot check anything: one line, ``alt_check_unavailable``, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from captioner.cliopts import add_decoding_arguments, add_device_arguments, decoding_from_args
from captioner.crawl.fetch import fetch_image
from captioner.crawl.urls import FetchLimits
from captioner.errors import AltCapError
from captioner.images import load_image
from captioner.serve.settings import Settings
from captioner.trust import is_confident

__all__ = ["AltCheckUnavailable", "InvalidLine", "UnreadableInput", "register", "run"]

# How check-alt says it may reach loopback and private addresses (see FetchLimits).
ALLOW_PRIVATE_HINT = "give --allow-private to check images on this machine or an intranet"
EXIT_FAILED = 1  # some line could not be checked, or nothing could be


class InvalidLine(AltCapError):
    """A line that is not a JSON object with a string ``image`` and a string ``alt``."""

    code = "invalid_line"


class UnreadableInput(AltCapError):
    """The input file cannot be read (missing, not UTF-8): nothing is checked."""

    code = "invalid_input"


class AltCheckUnavailable(AltCapError):
    """The model has no CLIP text tower, so it cannot compare an alt with its image."""

    code = "alt_check_unavailable"


def register(subparsers: Any) -> None:
    """Add ``check-alt`` to ``python -m captioner``."""
    p = subparsers.add_parser(
        "check-alt",
        help="check authors' alt texts against their images (JSON lines in, out)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "input",
        nargs="?",
        default="-",
        metavar="FILE",
        help='JSON lines {"image": PATH_OR_URL, "alt": TEXT}; - stdin (the default)',
    )
    p.add_argument("--model", default="clipcap-coco", help="model name, directory or Hub id")
    p.add_argument(
        "--json",
        action="store_true",
        help="each line back as JSON with score, verdict, caption, confidence and confident",
    )
    p.add_argument(
        "--allow-private",
        action="store_true",
        help="allow image URLs on loopback and private addresses (intranet sites)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    add_decoding_arguments(p)
    add_device_arguments(p)
    p.set_defaults(func=run)


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank input line."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UnreadableInput(f"cannot read {path}: {exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def _parse(line: str) -> dict[str, Any]:
    """The line's object, or ``InvalidLine`` saying what is wrong with it."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidLine(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(item, dict):
        raise InvalidLine('a line must be a JSON object {"image": ..., "alt": ...}')
    for name in ("image", "alt"):
        if not isinstance(item.get(name), str) or not item[name].strip():
            raise InvalidLine(f'"{name}" must be a non-empty string')
    return item


def _load(source: str, limits: FetchLimits, max_pixels: int):
    """A decoded image from a file or an http(s) URL (fetched SSRF-safely)."""
    if source.lower().startswith(("http://", "https://")):
        return load_image(fetch_image(source, limits).data, max_pixels=max_pixels)
    return load_image(source, max_pixels=max_pixels)


def run(args: argparse.Namespace) -> int:
    """The ``check-alt`` subcommand: every line out in input order, checked or with its error."""
    from captioner.pipeline import Captioner  # torch: when the command runs, not for --help

    settings = decoding_from_args(args)
    service = Settings.load(os.environ)  # ALTCAP_MIN_CONFIDENCE, ALTCAP_ALT_MATCH_SCORE
    lines = list(_lines(args.input))  # a file that cannot be read: before the model loads
    cap = Captioner.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    if not cap.can_score:
        raise AltCheckUnavailable(
            f"the model {args.model} has no CLIP text tower, so it cannot check alt texts; "
            "use a model with one (make-tiny --trained, or convert-clipcap; docs/confidence.md)"
        )
    cap.alt_match_score = service.alt_match_score
    limits = FetchLimits(allow_private=args.allow_private, allow_private_hint=ALLOW_PRIVATE_HINT)
    failed = 0
    for start in range(0, len(lines), args.batch_size):
        outcomes: list[dict[str, Any] | None] = []  # None: to caption below
        todo = []
        for number, line in lines[start : start + args.batch_size]:
            try:
                item = _parse(line)
            except InvalidLine as exc:  # written back as its line number
                outcomes.append({"line": number, "error": exc.to_dict()})
                continue
            try:
                image = _load(item["image"], limits, cap.max_pixels)
            except AltCapError as exc:  # an image or download error: the line, with it
                outcomes.append({**item, "error": exc.to_dict()})
                continue
            outcomes.append(None)
            todo.append((item, image))
        results = []
        if todo:
            results = cap.caption(
                [im for _, im in todo], settings, alts=[item["alt"] for item, _ in todo]
            )
        checked = iter(zip(todo, results, strict=True))
        for outcome in outcomes:
            if outcome is None:
                (item, _), result = next(checked)
                outcome = {
                    **item,
                    **(result.alt_check or {}),
                    "caption": result.text,
                    "confidence": result.confidence,
                    "confident": is_confident(result.confidence, service.min_confidence),
                }
            else:
                failed += 1
            _write(outcome, args.json, sys.stdout)
    return EXIT_FAILED if failed else 0


def _write(outcome: dict[str, Any], as_json: bool, out: TextIO) -> None:
    """One line out: the JSON object, or ``verdict  score  image  alt`` for people (the
    caption after ``appears to be:``), errors on stderr too."""
    error = outcome.get("error")
    where = outcome.get("image") or f"line {outcome.get('line')}"
    if error is not None:
        print(f"error: {where}: {error['code']}: {error['message']}", file=sys.stderr)
    if as_json:
        out.write(json.dumps(outcome, ensure_ascii=False) + "\n")
    elif error is None:
        said = f"{outcome['verdict']:<8} {outcome['score']:6.2f}  {where}  {outcome['alt']!r}"
        out.write(f"{said}  appears to be: {outcome['caption']}\n")
