"""Command-line options shared by the subcommands that caption (``caption``, ``batch``,
``evaluate``), and those that read the text in images (``caption``, ``batch``).

One declaration, so the same flag has the same name, default and help everywhere, and the
defaults are ``DecodingSettings``'s own: changing a default there changes every CLI.
Light on purpose (no torch): ``--help`` must stay fast.
"""

from __future__ import annotations

import argparse
from typing import Any, get_args

from captioner.config import DecodingMethod, DecodingSettings

__all__ = [
    "DTYPE_CHOICES",
    "add_decoding_arguments",
    "add_device_arguments",
    "add_reading_arguments",
    "decoding_from_args",
]

# The names captioner.DTYPES accepts, spelt out here so the CLI need not import torch.
DTYPE_CHOICES = ("float32", "bfloat16", "float16")

_DEFAULT = DecodingSettings()


def add_decoding_arguments(parser: Any) -> None:
    """Add ``--decoding --beam-size --top-p --temperature --seed --max-tokens --candidates
    --clip-weight`` to ``parser`` (a parser or an argument group); ``decoding_from_args``
    reads them back."""
    parser.add_argument(
        "--decoding",
        choices=list(get_args(DecodingMethod)),
        default=_DEFAULT.method,
        help="(%(default)s)",
    )
    parser.add_argument(
        "--beam-size", type=int, default=_DEFAULT.beam_size, help="beam search width (%(default)s)"
    )
    parser.add_argument(
        "--top-p", type=float, default=_DEFAULT.top_p, help="nucleus sampling mass (%(default)s)"
    )
    parser.add_argument(
        "--temperature", type=float, default=_DEFAULT.temperature, help="(%(default)s)"
    )
    parser.add_argument("--seed", type=int, default=_DEFAULT.seed, help="nucleus sampling seed")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=_DEFAULT.max_tokens,
        help="new tokens at most (%(default)s)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=_DEFAULT.candidates,
        help="captions written per image (beam's best k or k samples), the best kept by"
        " log-probability and CLIP's confidence; --json lists them all (%(default)s)",
    )
    parser.add_argument(
        "--clip-weight",
        type=float,
        default=_DEFAULT.clip_weight,
        help="CLIP's weight in picking among --candidates (%(default)s; docs/confidence.md)",
    )


def decoding_from_args(args: argparse.Namespace) -> DecodingSettings:
    """The validated ``DecodingSettings`` the ``add_decoding_arguments`` flags ask for; an
    out-of-range value raises ``InvalidSettings`` (one line from the CLI, no traceback)."""
    return DecodingSettings(
        method=args.decoding,
        beam_size=args.beam_size,
        top_p=args.top_p,
        temperature=args.temperature,
        seed=args.seed,
        max_tokens=args.max_tokens,
        candidates=args.candidates,
        clip_weight=args.clip_weight,
    ).validate()


def add_device_arguments(parser: Any) -> None:
    """Add ``--device`` and ``--dtype``, passed on to ``Captioner.from_pretrained``."""
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="(default: auto)")


def add_reading_arguments(parser: Any) -> None:
    """Add ``--no-read-text`` and ``--ocr-langs`` (``args.read_text``, ``args.ocr_langs``;
    None: ``ALTCAP_OCR_LANGS``). ``ALTCAP_OCR=off`` turns reading off whatever the flags."""
    parser.add_argument(
        "--no-read-text",
        dest="read_text",
        action="store_false",
        help="do not read the text in images (OCR): alt is the caption",
    )
    parser.add_argument(
        "--ocr-langs",
        default=None,
        metavar="LANGS",
        help="languages of the text in images, as en,de or eng+deu (default: ALTCAP_OCR_LANGS,"
        " else the captions' language)",
    )
