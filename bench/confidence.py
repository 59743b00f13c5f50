"""Confidence on held-out synthetic shapes: does CLIP's score tell right captions from wrong?

With the trained demo model (``make-tiny --trained``, ``captioner.train.demo``), on shapes
drawn with another seed than training's:

- caption accuracy: the greedy caption names the right colour and shape (and is exactly the
  canonical caption);
- AUROC of the confidence of the right caption against captions with a swapped colour, a
  swapped shape, or both (every wrong description of each image);
- AUROC of the confidence of the model's own captions, right against wrong (when it writes
  wrong ones at all).

    python bench/confidence.py                 # trains the demo model first (~1 min)
    python bench/confidence.py --model DIR     # an existing one
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from captioner.pipeline import Captioner
from captioner.train.demo import PAIRS, draw_pairs, swap_cosines, train_tiny
from captioner.train.synthetic import shape_caption


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a positive outscores a negative), ties counting half (Mann-Whitney U / n1 n0)."""
    diff = pos.reshape(-1, 1) - neg.reshape(1, -1)
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a model directory (default: train one)")
    p.add_argument("--rounds", type=int, default=5, help="held-out images per colour/shape")
    p.add_argument("--seed", type=int, default=1, help="held-out drawing seed (training: 0)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            t = time.perf_counter()
            model_dir = train_tiny(Path(tmp) / "demo")
            result["train_s"] = round(time.perf_counter() - t, 1)
        cap = Captioner.from_pretrained(str(model_dir), device="cpu", dtype="float32")
        rng = random.Random(args.seed)
        pairs = PAIRS * args.rounds
        pixels = torch.cat(
            [draw_pairs(PAIRS, cap.config.image_size, rng) for _ in range(args.rounds)]
        )
        results = cap.caption_pixels(pixels)
    want = [shape_caption(c, s).capitalize() for c, s in pairs]
    exact = [r.text == w for r, w in zip(results, want, strict=True)]
    named = [
        c in r.text.lower().split() and s in r.text.lower().replace(".", " ").split()
        for r, (c, s) in zip(results, pairs, strict=True)
    ]
    right, wrong = swap_cosines(cap.model, pixels, pairs)
    conf = cap.confidence
    result.update(
        images=len(pairs),
        exact_caption_accuracy=sum(exact) / len(exact),
        colour_and_shape_accuracy=sum(named) / len(named),
        auroc_right_vs_swapped=auroc(conf(right), conf(wrong)),
        confidence_right_mean=float(conf(right).mean()),
        confidence_swapped_mean=float(conf(wrong).mean()),
        calibration={"center": cap.config.confidence_center, "slope": cap.config.confidence_slope},
    )
    own = torch.tensor([r.confidence for r in results])
    ok = torch.tensor(named)
    if 0 < int(ok.sum()) < len(ok):
        result["auroc_own_captions_right_vs_wrong"] = auroc(own[ok], own[~ok])
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
