"""Trust figures on held-out synthetic shapes with the trained demo model (issue 23).

With the demo model (``make-tiny --trained``, ``captioner.train.demo``), on shapes drawn with
another seed than training's:

- (a) confidence: caption accuracy, the AUROC of the confidence of the right caption against
  captions with a swapped colour, shape or both, and of the model's own captions, right
  against wrong (bar: >= 0.9);
- (b) the author's-alt check (``Captioner.caption(images, alts=...)``): the share of swapped
  alts (another colour AND another shape: all 15 for each image) flagged ``suspect`` (bar:
  >= 90%), and of right alts (the canonical caption, the short "A red circle." and the bare
  "red circle") (bar: <= 5%);
- (c) reranking against beam search: exact-caption accuracy of beam search (beam_size 5) and
  of its 5 best beams reranked by CLIP (``candidates=5``), with the images reranking fixes
  and breaks, for each ``clip_weight`` of a sweep; on the plain held-out draws and on harder
  ones (the shape turned by up to 45 degrees; the shape shrunk to 80% at a random place),
  which the model never saw. The sweep runs on ``--select-seed`` draws too (where the default
  clip_weight was chosen), the table reports ``--seed`` draws.

    python bench/confidence.py                 # trains the demo model first (~1.5 min)
    python bench/confidence.py --model DIR --json bench/results/confidence-cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from captioner.config import DecodingSettings
from captioner.pipeline import Captioner
from captioner.train.demo import DRAW_SIZE, PAIRS, swap_cosines, train_tiny
from captioner.train.synthetic import COLOURS, SHAPES, draw_shape, shape_caption, shrink, turn
from captioner.trust import is_confident

CLIP_WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0)  # the reranking sweep (0: the language model alone)
CANDIDATES = 5  # reranked candidates: beam search's 5 best beams


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a positive outscores a negative), ties counting half (Mann-Whitney U / n1 n0)."""
    diff = pos.reshape(-1, 1) - neg.reshape(1, -1)
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


def plain(colour: str, shape: str, rng: random.Random) -> Image.Image:
    return draw_shape(colour, shape, image_size=DRAW_SIZE, rng=rng)


def turned(colour: str, shape: str, rng: random.Random) -> Image.Image:
    """The shape turned by up to 45 degrees either way (the captions never saw one)."""
    return turn(plain(colour, shape, rng), rng)


def shrunk(colour: str, shape: str, rng: random.Random) -> Image.Image:
    """The drawing shrunk to 80% and placed at random (the captions' shapes are large,
    central)."""
    return shrink(plain(colour, shape, rng), rng)


DRAWS: dict[str, Callable[[str, str, random.Random], Image.Image]] = {
    "plain": plain,
    "turned": turned,
    "shrunk": shrunk,
}


def draw(how: str, rounds: int, seed: int) -> tuple[list[Image.Image], list[tuple[str, str]]]:
    """``rounds`` drawings of each of the 24 pairs, and the pairs, in order."""
    rng = random.Random(seed)
    pairs = PAIRS * rounds
    return [DRAWS[how](c, s, rng) for c, s in pairs], pairs


def exact(results, pairs) -> list[bool]:
    """Whether each caption is exactly the canonical one of its pair."""
    want = [shape_caption(c, s).capitalize() for c, s in pairs]
    return [r.text == w for r, w in zip(results, want, strict=True)]


def confidence_figures(cap: Captioner, images, pairs) -> dict:
    """(a): accuracy of the greedy caption, and AUROCs of the confidence."""
    pixels = cap.preprocess(images)
    results = cap.caption_pixels(pixels)
    ok = exact(results, pairs)
    named = [
        c in r.text.lower().split() and s in r.text.lower().replace(".", " ").split()
        for r, (c, s) in zip(results, pairs, strict=True)
    ]
    right, wrong = swap_cosines(cap.model, pixels, pairs)
    conf = cap.confidence
    out = {
        "exact_caption_accuracy": sum(ok) / len(ok),
        "colour_and_shape_accuracy": sum(named) / len(named),
        "auroc_right_vs_swapped": auroc(conf(right), conf(wrong)),
        "confidence_right_mean": float(conf(right).mean()),
        "confidence_swapped_mean": float(conf(wrong).mean()),
    }
    own, good = torch.tensor([r.confidence for r in results]), torch.tensor(named)
    if 0 < int(good.sum()) < len(good):
        out["auroc_own_captions_right_vs_wrong"] = auroc(own[good], own[~good])
    return out


def hard_figures(cap: Captioner, seed: int, rounds: int) -> dict:
    """(a) on the harder draws (turned, shrunk), where the captioner errs: whether the
    confidence of its own greedy captions tells the right ones from the wrong ones, and how
    many wrong ones abstaining (``confident`` false) withholds."""
    images, pairs = [], []
    for how in ("turned", "shrunk"):
        drawn, p = draw(how, rounds, seed)
        images, pairs = images + drawn, pairs + p
    results = cap.caption(images)
    ok = torch.tensor(exact(results, pairs))
    conf = torch.tensor([r.confidence for r in results])
    confident = torch.tensor([is_confident(r.confidence) for r in results])  # the default
    out = {
        "images": len(pairs),
        "exact_caption_accuracy": float(ok.double().mean()),
        "wrong_withheld": float((~confident[~ok]).double().mean()) if (~ok).any() else None,
        "right_withheld": float((~confident[ok]).double().mean()),
    }
    if 0 < int(ok.sum()) < len(ok):
        out["auroc_own_captions_right_vs_wrong"] = auroc(conf[ok], conf[~ok])
    return out


def alt_figures(cap: Captioner, images, pairs) -> dict:
    """(b): the alt check on right alts and on swapped ones (another colour and shape)."""
    right_alts = [shape_caption(c, s, v).capitalize() for v in (0, 1) for c, s in pairs]
    right_alts += [f"{c} {s}" for c, s in pairs]  # the bare name: "red circle"
    swapped = [
        (i, shape_caption(c2, s2).capitalize())
        for i, (c, s) in enumerate(pairs)
        for c2 in COLOURS
        for s2 in SHAPES
        if c2 != c and s2 != s
    ]
    right = cap.caption(images * 3, alts=right_alts)
    wrong = cap.caption([images[i] for i, _ in swapped], alts=[a for _, a in swapped])
    flagged = [r.alt_check["verdict"] == "suspect" for r in wrong]
    false_flags = [r.alt_check["verdict"] == "suspect" for r in right]
    n = len(pairs)  # right alts: the canonical captions, the short ones, the bare names
    return {
        "right_canonical_flagged_suspect": sum(false_flags[:n]) / n,
        "right_short_flagged_suspect": sum(false_flags[n : 2 * n]) / n,
        "right_bare_flagged_suspect": sum(false_flags[2 * n :]) / n,
        "swapped_alts": len(wrong),
        "swapped_flagged_suspect": sum(flagged) / len(flagged),
        "right_alts": len(right),
        "right_flagged_suspect": sum(false_flags) / len(false_flags),
        "score_right_mean": sum(r.alt_check["score"] for r in right) / len(right),
        "score_swapped_mean": sum(r.alt_check["score"] for r in wrong) / len(wrong),
    }


def rerank_figures(cap: Captioner, images, pairs) -> dict:
    """(c): beam search (beam_size 5) against its 5 best beams reranked, per clip_weight."""
    pixels = cap.preprocess(images)
    beam = exact(cap.caption_pixels(pixels, DecodingSettings(method="beam", beam_size=5)), pairs)
    out: dict = {"images": len(pairs), "beam5_accuracy": sum(beam) / len(beam), "rerank": {}}
    for w in CLIP_WEIGHTS:
        s = DecodingSettings(method="beam", beam_size=5, candidates=CANDIDATES, clip_weight=w)
        results = cap.caption_pixels(pixels, s)
        ok = exact(results, pairs)
        listed = [
            any(c["caption"] == shape_caption(*p).capitalize() for c in r.candidates)
            for r, p in zip(results, pairs, strict=True)
        ]
        out["rerank"][str(w)] = {
            "accuracy": sum(ok) / len(ok),
            "beam_wrong": len(beam) - sum(beam),
            "fixed": sum(o and not b for o, b in zip(ok, beam, strict=True)),
            "broken": sum(b and not o for o, b in zip(ok, beam, strict=True)),
            "right_caption_among_candidates": sum(listed) / len(listed),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a model directory (default: train one)")
    p.add_argument("--rounds", type=int, default=5, help="held-out images per colour/shape")
    p.add_argument("--seed", type=int, default=1, help="held-out drawing seed (training: 0)")
    p.add_argument("--select-seed", type=int, default=2, help="draws the clip_weight was chosen on")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    result: dict = {"seed": args.seed, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            t = time.perf_counter()
            model_dir = train_tiny(Path(tmp) / "demo")
            result["train_s"] = round(time.perf_counter() - t, 1)
        cap = Captioner.from_pretrained(str(model_dir), device="cpu", dtype="float32")
        result["calibration"] = {
            "center": cap.config.confidence_center,
            "slope": cap.config.confidence_slope,
        }
        images, pairs = draw("plain", args.rounds, args.seed)
        result["confidence"] = confidence_figures(cap, images, pairs)
        result["confidence_hard_draws"] = hard_figures(cap, args.seed, args.rounds)
        result["alt_check"] = alt_figures(cap, images, pairs)
        result["rerank"] = {h: rerank_figures(cap, *draw(h, args.rounds, args.seed)) for h in DRAWS}
        result["rerank_selection"] = {
            h: rerank_figures(cap, *draw(h, args.rounds, args.select_seed)) for h in DRAWS
        }
    print(json.dumps(result, indent=2))
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def table(result: dict) -> str:
    """The figures as a plain-text table."""
    conf, alt, hard = result["confidence"], result["alt_check"], result["confidence_hard_draws"]
    lines = [
        f"(a) confidence, {result['rounds'] * 24} held-out images (seed {result['seed']})",
        f"    exact-caption accuracy (greedy)        {conf['exact_caption_accuracy']:.3f}",
        f"    AUROC right vs swapped captions        {conf['auroc_right_vs_swapped']:.3f}",
        f"    AUROC own captions, right vs wrong     "
        f"{conf.get('auroc_own_captions_right_vs_wrong', float('nan')):.3f}",
        f"    on turned + shrunk draws ({hard['images']}): greedy accuracy "
        f"{hard['exact_caption_accuracy']:.3f}, AUROC own right vs wrong "
        f"{hard.get('auroc_own_captions_right_vs_wrong', float('nan')):.3f}",
        f"      not confident: {_share(hard['wrong_withheld'])} of wrong captions, "
        f"{hard['right_withheld']:.3f} of right ones",
        "(b) alt check",
        f"    swapped alts flagged suspect           {alt['swapped_flagged_suspect']:.3f}"
        f"  ({alt['swapped_alts']} alts)",
        f"    right alts flagged suspect             {alt['right_flagged_suspect']:.3f}"
        f"  ({alt['right_alts']} alts)",
        f'      of them canonical / short ("A red circle.") / bare ("red circle")  '
        f"{alt['right_canonical_flagged_suspect']:.3f} / {alt['right_short_flagged_suspect']:.3f}"
        f" / {alt.get('right_bare_flagged_suspect', float('nan')):.3f}",
        "(c) exact-caption accuracy: beam 5 | rerank 5 by clip_weight (fixed/broken of beam's)",
        "    draws    beam5  " + "  ".join(f"w={w:<11}" for w in CLIP_WEIGHTS),
    ]
    for part in ("rerank", "rerank_selection"):
        for how, r in result[part].items():
            cells = "  ".join(
                f"{v['accuracy']:.3f} +{v['fixed']}/-{v['broken']:<3}" for v in r["rerank"].values()
            )
            name = how + ("*" if part == "rerank_selection" else "")
            lines.append(f"    {name:<8} {r['beam5_accuracy']:.3f}  {cells}")
    lines.append("    (* the --select-seed draws, where the default clip_weight was chosen)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
