"""``python -m captioner``: caption images, convert reference checkpoints, make tiny models.

User errors print one line (``error: code: message``) on stderr and exit non-zero; no
tracebacks. ``main(argv)`` takes its arguments, so tests call it directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from captioner.cli import batch, check_alt, worker
from captioner.cli.train import register_embed, register_evaluate, register_train
from captioner.cliopts import (
    add_decoding_arguments,
    add_device_arguments,
    add_reading_arguments,
    decoding_from_args,
)
from captioner.errors import AltCapError, InvalidSettings, NotAnImage
from captioner.images import load_image
from captioner.jobs.reading import Describer, cancel
from captioner.model.identity import model_identity
from captioner.serve.settings import Settings
from captioner.train.data import IMAGE_EXTENSIONS
from captioner.trust import is_confident, withholds

EXIT_USAGE = 2
EXIT_FAILED = 1
UNSURE = "(not confident) "  # before a plain-output alt that trust.withholds


def _caption(args: argparse.Namespace) -> int:
    """Caption image files, reading their text meanwhile; print each one's alt (``--json``:
    one object per image with ``caption``, ``text``, ``alt``, ``alt_from``, with a text
    tower ``confidence`` and ``confident`` (``trust.is_confident``), ``candidates`` when
    asked for several, and, when its text could not be read, ``warnings``)."""
    from captioner.pipeline import Captioner  # torch: when the command runs, not for --help

    settings = decoding_from_args(args)
    service = Settings.load(os.environ)  # ALTCAP_OCR*, ALTCAP_MAX_ALT_CHARS: as the service
    paths, failed = _image_paths(args.images, args.json)
    cap = Captioner.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    cap.alt_match_score = service.alt_match_score
    model = model_identity(args.model).name  # --json: the public name, as the service reports it
    language = cap.language
    describer = Describer.open(service, language, read_text=args.read_text, langs=args.ocr_langs)
    named = len(paths) > 1 or any(map(os.path.isdir, args.images))  # a folder's: always
    try:
        # a batch at a time: a folder of many images is never held in memory at once
        for start in range(0, len(paths), args.batch_size):
            loaded = []
            for path in paths[start : start + args.batch_size]:  # one bad file fails alone
                try:
                    loaded.append((path, load_image(path, max_pixels=cap.max_pixels)))
                except AltCapError as e:
                    failed += 1
                    _report(path, e, args.json)
            reading = [describer.submit(im) for _, im in loaded]  # beside the model
            try:
                results = cap.caption(
                    [im for _, im in loaded], settings, batch_size=args.batch_size
                )
            except BaseException:
                cancel(reading)
                raise
            for (path, _), r, future in zip(loaded, results, reading, strict=True):
                text, warning = describer.collect(future)
                described = describer.describe(r.text, text)
                if args.json:
                    line = {"image": path, **r.to_dict(), **described}
                    if r.confidence is not None:
                        line["confident"] = is_confident(r.confidence, service.min_confidence)
                    candidates = getattr(r, "candidates", None)  # decoding's candidates > 1
                    if candidates:
                        line["candidates"] = candidates
                    if warning:
                        line["warnings"] = [warning]
                    print(json.dumps({**line, "model": model, "language": language}))
                else:  # an alt resting on a caption the model does not believe: marked
                    confident = is_confident(r.confidence, service.min_confidence)
                    unsure = UNSURE if withholds(confident, described["alt_from"]) else ""
                    alt = unsure + described["alt"]
                    print(f"{path}\t{alt}" if named else alt)
    finally:
        describer.close()
    return EXIT_FAILED if failed else 0


def _image_paths(given: Sequence[str], as_json: bool) -> tuple[list[str], int]:
    """The files to caption: those given, and each folder's images (recursively, sorted),
    as ``embed`` and ``evaluate`` read a folder; and how many folders held none."""
    paths, failed = [], 0
    for path in given:
        if not os.path.isdir(path):
            paths.append(path)
            continue
        found = sorted(
            p for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not found:
            failed += 1
            kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
            _report(path, NotAnImage(f"no images in this folder ({kinds})"), as_json)
        paths += [str(p) for p in found]
    return paths, failed


def _report(path: str, e: AltCapError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"image": path, "error": e.to_dict()}))
    print(f"error: {path}: {e.code}: {e.message}", file=sys.stderr)


def _convert(args: argparse.Namespace) -> int:
    from captioner.model.checkpoints import convert_checkpoint  # torch: not for --help

    out = convert_checkpoint(
        args.checkpoint,
        args.out_dir,
        mapping_type=args.mapping,
        vision_source=args.image_encoder,
        text_source=args.language_model,
        prefix_length=args.prefix_length,
        clip_length=args.clip_length,
        num_layers=args.num_layers,
    )
    print(out)
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    if args.trained:
        if args.mapping is not None:
            raise InvalidSettings("--mapping does not apply with --trained (an MLP mapper)")
        from captioner.train import demo  # torch, training: not for --help

        if args.keep_current and demo.is_current(args.out_dir, args.seed):
            print(args.out_dir)  # this code's demo model is there already
            return 0
        print(demo.train_tiny(args.out_dir, seed=args.seed))
        return 0
    if args.keep_current:
        raise InvalidSettings("--keep-current applies only with --trained")
    from captioner.model.tiny import make_tiny  # torch: not for --help

    print(make_tiny(args.out_dir, args.mapping or "mlp", seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m captioner", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("caption", help="caption image files")
    c.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, or folders: their images (subfolders too), sorted by path",
    )
    c.add_argument("--model", default="clipcap-coco", help="model name, directory or Hub id")
    add_decoding_arguments(c)
    c.add_argument("--batch-size", type=int, default=32)
    add_device_arguments(c)
    add_reading_arguments(c)
    c.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line: caption, text, alt, alt_from and more",
    )
    c.set_defaults(func=_caption)

    v = sub.add_parser("convert-clipcap", help="convert a ClipCap .pt checkpoint to a model dir")
    v.add_argument("checkpoint", help="the authors' .pt state dict (e.g. coco_weights.pt)")
    v.add_argument("out_dir")
    v.add_argument("--mapping", choices=["mlp", "transformer"], required=True)
    v.add_argument("--prefix-length", type=int, default=10)
    v.add_argument("--clip-length", type=int, default=10)
    v.add_argument("--num-layers", type=int, default=8)
    v.add_argument("--image-encoder", default="openai/clip-vit-base-patch32", help="ID or DIR")
    v.add_argument("--language-model", default="gpt2", help="ID or DIR (config + tokenizer)")
    v.set_defaults(func=_convert)

    t = sub.add_parser(
        "make-tiny", help="write a tiny model directory (random weights, or --trained)"
    )
    t.add_argument("out_dir")
    t.add_argument(
        "--mapping", choices=["mlp", "transformer"], default=None, help="(mlp; not with --trained)"
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--trained",
        action="store_true",
        help="train it on synthetic shapes, about 1.5 minutes: real captions and confidences",
    )
    t.add_argument(
        "--keep-current",
        action="store_true",
        help="with --trained: keep OUT_DIR if it holds the demo model this code makes",
    )
    t.set_defaults(func=_make_tiny)

    for register in _more_subcommands():
        register(sub)
    return p


def _more_subcommands() -> list[Callable[[Any], None]]:
    """Subcommands defined next to their code: each module's ``register(subparsers)`` adds
    its parser with ``set_defaults(func=...)`` (a function taking the args, returning the exit
    status)."""
    return [
        register_embed,
        batch.register,
        check_alt.register,
        register_train,
        register_evaluate,
        worker.register,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "batch_size", 1) < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except AltCapError as e:
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
