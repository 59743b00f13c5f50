"""The training commands of ``python -m captioner``: ``embed``, ``train`` and ``evaluate``.

Their arguments are declared here, free of torch, so that ``--help`` stays fast; each
command's module (``captioner.train.*``, torch and transformers) loads when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from captioner.cliopts import add_decoding_arguments, add_device_arguments
from captioner.train.data import FORMATS
from captioner.train.options import DEFAULT_SHARD_SIZE, add_arguments

__all__ = ["register_embed", "register_evaluate", "register_train"]


def _run_embed(args: argparse.Namespace) -> int:
    from captioner.train import embed  # torch: when the command runs, not for --help

    return embed.run(args)


def _run_train(args: argparse.Namespace) -> int:
    from captioner.train import train  # torch: when the command runs, not for --help

    return train.run(args)


def _run_evaluate(args: argparse.Namespace) -> int:
    from captioner.train import evaluate  # torch: when the command runs, not for --help

    return evaluate.run(args)


def register_embed(subparsers: Any) -> None:
    """Add ``embed`` to ``python -m captioner``."""
    p = subparsers.add_parser(
        "embed",
        help="CLIP-embed a captioned image set into a resumable store (for `train`)",
        description="CLIP image embeddings of a captioned data set, written in shards to OUT_DIR "
        "for `train`. Run the same command again to resume an interrupted run; bad or missing "
        "images are skipped and counted.",
    )
    p.add_argument(
        "dataset",
        metavar="DATASET",
        help="COCO captions_*.json, Karpathy dataset_coco.json, a .csv/.tsv or .jsonl of "
        "(image, caption) rows, or a folder of images with same-named .txt captions",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="the embedding store to create or resume")
    p.add_argument(
        "--format", choices=FORMATS, default=None, help="data set format (default: detected)"
    )
    p.add_argument(
        "--image-root",
        metavar="DIR",
        default=None,
        help="where relative image paths start (default: the annotation file's folder; COCO "
        "also tries images/ and ../<train2014|val2014...>/)",
    )
    p.add_argument(
        "--split",
        default=None,
        help="Karpathy split: train (includes restval), val, test or restval (default: all)",
    )
    p.add_argument(
        "--image-column", metavar="NAME", default="image", help="CSV/JSONL image path column"
    )
    p.add_argument(
        "--caption-column", metavar="NAME", default="caption", help="CSV/JSONL caption column"
    )
    enc = p.add_mutually_exclusive_group()
    enc.add_argument(
        "--model",
        metavar="NAME|DIR",
        default=None,
        help="use the image encoder of this ClipCap model (name, directory or Hub id; "
        "default: clipcap-coco, i.e. openai/clip-vit-base-patch32)",
    )
    enc.add_argument(
        "--image-encoder",
        metavar="ID|DIR",
        default=None,
        help="a CLIP vision model (Hub id or directory) with its preprocessor_config.json",
    )
    p.add_argument(
        "--batch-size", metavar="N", type=int, default=64, help="images per forward pass (64)"
    )
    p.add_argument(
        "--shard-size",
        metavar="N",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help=f"images per shard file, the unit of resumption ({DEFAULT_SHARD_SIZE}; a resumed "
        "store keeps its own)",
    )
    p.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=0,
        help="DataLoader processes decoding images (default 0: in the main process)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="encoder precision (default: bfloat16 on GPU, float32 on CPU); stored as float32",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_embed)


def register_train(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a ClipCap prefix model on an embedding store",
        description=(
            "Train a ClipCap mapper (and GPT-2) on CLIP embeddings written by `embed`. "
            "The trained model is written to OUT_DIR/final; checkpoints to "
            "OUT_DIR/checkpoints; the loss log to OUT_DIR/log.jsonl. Multi-GPU: run the "
            "same command under `torchrun --nproc_per_node=N -m captioner train ...`."
        ),
    )
    add_arguments(p)
    p.set_defaults(func=_run_train)


def register_evaluate(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="caption a COCO-format set and compute BLEU, METEOR, ROUGE-L, CIDEr (and, with "
        "CLIP's text tower, the confidence thresholds for this model)",
        description=__doc__.splitlines()[0].strip("`"),
    )
    p.add_argument("model", help="model name, directory (e.g. OUT_DIR/final) or Hub id")
    p.add_argument(
        "annotations",
        help="official COCO captions_*.json (or Karpathy dataset_coco.json with --split, "
        "a .csv/.jsonl, a captioned folder)",
    )
    p.add_argument(
        "--image-root",
        metavar="DIR",
        default=None,
        help="where the images are (COCO: the val2014/ folder; default: found next to the file)",
    )
    p.add_argument("--split", default=None, help="Karpathy split to evaluate (e.g. test)")
    add_decoding_arguments(p.add_argument_group("decoding (as `caption`)"))
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (32)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--workers", type=int, default=4, help="image-decoding threads (4)")
    add_device_arguments(p)
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--captions-out", default=None, help="write the captions (COCO results)")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="write the confidence rule fitted on this set (confidence_center, "
        "confidence_slope) into MODEL's config.json, a model directory; the suggested "
        "ALTCAP_MIN_CONFIDENCE and ALTCAP_ALT_MATCH_SCORE are printed (needs CLIP's text tower)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_evaluate)
