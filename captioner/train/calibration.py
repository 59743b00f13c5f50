"""Calibration: what a model's CLIP scores say on a labelled set, and the thresholds to use.

``evaluate`` runs this when the model has CLIP's text tower. Each captioned image is scored
with three texts:

- its **reference** caption (the set's first one): a right description;
- the **generated** caption: what AltCap would say;
- a **shuffled** reference, another image's first caption (never one of this image's own):
  a wrong description, as a mismatched alt or a hallucinating caption would be.

From the cosines (``Captioner.score``; the references and the generic texts go through
``caption_pixels(alts=)``, the path the service checks author alts on) come:

- summaries (mean, std, 5/25/50/75/95th percentiles) of the similarity and the confidence of
  each kind of text;
- the similarity cut that best tells references from shuffled ones (Youden's J: the most
  references kept minus the most shuffled ones let through), its error rates and the AUROC;
- the logistic fitted to the two (``scoring.fit_confidence``): the model's
  ``confidence_center`` and ``confidence_slope``; ``--calibrate`` writes them into its
  config.json (``write_calibration``);
- the ``ALTCAP_MIN_CONFIDENCE`` that makes the same cut on the fitted confidence;
- the alt check (``trust.alt_check``) of references (should match) and of shuffled references
  (should be suspect), and the ``ALTCAP_ALT_MATCH_SCORE`` that best separates them.

Error rates count a right text as positive: the false-positive rate is the share of
shuffled references accepted, the false-negative rate the share of references rejected.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from captioner.config import ClipCapConfig, DecodingSettings
from captioner.model.checkpoints import CONFIG_NAME, atomic_write, load_config
from captioner.model.scoring import fit_confidence
from captioner.trust import MATCH_SCORE, MIN_CONFIDENCE, alt_check

KINDS = ("reference", "generated", "shuffled")  # the texts each image is scored with
QUANTILES = (5, 25, 50, 75, 95)  # percentiles in each summary
FEW_IMAGES = 100  # calibrating on fewer: a warning (the thresholds move with every image)
SHUFFLE_SEED = 0  # which other image's reference each image gets: the same on every run


def shuffled_references(references: Sequence[Sequence[str]], seed: int = SHUFFLE_SEED):
    """Another item's first caption for each item, never one of its own (None if none).

    Items are put on one shuffled cycle and each takes the next one's caption; where that
    caption is also one of its own (two photos of the same thing), the one after."""
    n = len(references)
    cycle = list(range(n))
    random.Random(seed).shuffle(cycle)
    out: list[str | None] = [None] * n
    for k, i in enumerate(cycle):
        own = {c.strip().lower() for c in references[i]}
        for step in range(1, n):
            other = references[cycle[(k + step) % n]]
            if other and other[0].strip().lower() not in own:
                out[i] = other[0]
                break
    return out


@dataclass
class Scores:
    """The cosines gathered while captioning, one entry per image scored."""

    shuffled_for: dict[str, str | None]  # image path -> its shuffled reference
    reference: list[float] = field(default_factory=list)
    generated: list[float] = field(default_factory=list)
    generic: list[float] = field(default_factory=list)  # the best of trust.GENERIC_TEXTS
    shuffled: list[float] = field(default_factory=list)  # nan: this image had none

    @classmethod
    def for_items(cls, items: Sequence[Any]) -> Scores:
        """Scores to gather for ``items`` (``train.data.Item``: ``image``, ``captions``)."""
        mismatched = shuffled_references([it.captions for it in items])
        return cls(dict(zip((it.image for it in items), mismatched, strict=True)))

    def caption_batch(self, captioner, pixels: torch.Tensor, settings: DecodingSettings, items):
        """Caption a preprocessed batch (as ``caption_pixels``) and score its texts."""
        references = [it.captions[0] if it.captions else None for it in items]
        results = captioner.caption_pixels(pixels, settings, alts=references)
        shuffled = [self.shuffled_for.get(it.image) for it in items]
        have = [i for i, s in enumerate(shuffled) if s is not None]
        cos = captioner.score(pixels[have], [shuffled[i] for i in have]) if have else []
        shuffled_cos = dict(zip(have, map(float, cos), strict=True))
        for i, r in enumerate(results):
            if r.alt_similarity is None:  # an empty reference: nothing to compare
                continue
            self.reference.append(r.alt_similarity)
            self.generated.append(r.similarity)
            self.generic.append(r.generic_similarity)
            self.shuffled.append(shuffled_cos.get(i, math.nan))
        return results


# --- statistics ------------------------------------------------------------------------


def summary(values: torch.Tensor) -> dict[str, float]:
    """``{"n", "mean", "std", "q05", ..., "q95"}`` of a 1-d tensor, rounded to 4 places."""
    x = values.double()
    out = {"n": len(x), "mean": x.mean(), "std": x.std(correction=0)}
    qs = torch.quantile(x, torch.tensor([q / 100 for q in QUANTILES], dtype=x.dtype))
    out |= {f"q{q:02d}": v for q, v in zip(QUANTILES, qs, strict=True)}
    return {k: v if k == "n" else round(float(v), 4) for k, v in out.items()}


def auroc(right: torch.Tensor, wrong: torch.Tensor) -> float:
    """The chance that a right value beats a wrong one (ties count half)."""
    w = wrong.double().sort().values
    r = right.double()
    below = torch.searchsorted(w, r, right=False).double()  # wrong values < each right one
    tied = torch.searchsorted(w, r, right=True).double() - below
    return float((below + tied / 2).sum() / (len(r) * len(w)))


def rates(right: torch.Tensor, wrong: torch.Tensor, cut: float) -> dict[str, float]:
    """Error rates of accepting a value ``>= cut``."""
    return {
        "false_positive_rate": round(float((wrong >= cut).double().mean()), 4),
        "false_negative_rate": round(float((right < cut).double().mean()), 4),
    }


def best_cut(right: torch.Tensor, wrong: torch.Tensor) -> float:
    """The cut (accept ``>= cut``) with the highest Youden's J, TPR - FPR (the highest
    balanced accuracy): half way between the two values it falls between. Of equally good
    cuts, the lowest (the one that rejects fewer right values)."""
    x = torch.cat((right, wrong)).double()
    is_right = torch.cat((torch.ones(len(right)), torch.zeros(len(wrong)))).double()
    order = x.argsort()
    xs, ys = x[order], is_right[order]
    # a cut before position i (1..n-1) rejects xs[:i]
    right_below = ys.cumsum(0)[:-1]  # (n-1,)
    wrong_below = (1 - ys).cumsum(0)[:-1]
    j = wrong_below / len(wrong) - right_below / len(right)  # (1 - FPR) - FNR = TPR - FPR
    j[xs[1:] == xs[:-1]] = -math.inf  # a cut cannot fall between equal values
    if len(j) == 0 or not torch.isfinite(j).any():  # every value equal
        return float(xs[0])
    i = int(j.argmax()) + 1
    return float((xs[i - 1] + xs[i]) / 2)


def separation(right: torch.Tensor, wrong: torch.Tensor, digits: int) -> dict[str, Any]:
    """The best cut (rounded to ``digits``), its error rates and balanced accuracy, the AUROC."""
    cut = round(best_cut(right, wrong), digits)
    errors = rates(right, wrong, cut)
    balanced = 1 - (errors["false_positive_rate"] + errors["false_negative_rate"]) / 2
    auc = round(auroc(right, wrong), 4)
    return {"cut": cut, **errors, "balanced_accuracy": round(balanced, 4), "auroc": auc}


# --- the report ------------------------------------------------------------------------


def logistic(similarity: torch.Tensor, center: float, slope: float) -> torch.Tensor:
    """``scoring.confidence`` with explicit numbers (the fitted ones, before they are saved)."""
    return torch.sigmoid(slope * (similarity.double() - center))


def report(scores: Scores, config: ClipCapConfig) -> dict[str, Any] | None:
    """The calibration section of ``evaluate``'s report (module docstring); None when fewer
    than two images have both a reference and a shuffled one."""
    sims = {k: torch.tensor(getattr(scores, k), dtype=torch.float64) for k in KINDS}
    has = ~sims["shuffled"].isnan()  # the images that got a shuffled reference
    if int(has.sum()) < 2:
        return None
    right, wrong = sims["reference"][has], sims["shuffled"][has]
    now = {
        "confidence_center": config.confidence_center,
        "confidence_slope": config.confidence_slope,
    }
    center, slope = fit_confidence(right, wrong)
    fitted = {"confidence_center": round(center, 4), "confidence_slope": round(slope, 3)}

    def confidences(rule: dict[str, float], kind: str) -> torch.Tensor:
        sim = sims[kind][has] if kind == "shuffled" else sims[kind]
        return logistic(sim, rule["confidence_center"], rule["confidence_slope"])

    def abstaining(rule: dict[str, float], min_confidence: float) -> dict[str, float]:
        """What a rule and an ALTCAP_MIN_CONFIDENCE do: errors, generated captions withheld."""
        generated = confidences(rule, "generated")
        withheld = round(float((generated < min_confidence).double().mean()), 4)
        return {
            **rates(
                confidences(rule, "reference")[has], confidences(rule, "shuffled"), min_confidence
            ),
            "generated_withheld": withheld,
        }

    def distribution(kind: str) -> dict[str, Any]:
        return {
            "similarity": summary(sims[kind][has] if kind == "shuffled" else sims[kind]),
            "confidence": summary(confidences(now, kind)),  # the model's rule now
            "calibrated_confidence": summary(confidences(fitted, kind)),
        }

    cut = separation(right, wrong, digits=4)
    # the same cut on the fitted confidence (a logistic keeps the order)
    fit_c, fit_s = fitted["confidence_center"], fitted["confidence_slope"]
    min_confidence = round(float(logistic(torch.tensor(cut["cut"]), fit_c, fit_s)), 3)

    # the alt check: references and shuffled references as an author's alt, each against
    # this image's generated caption and its best generic text
    caption = sims["generated"][has].tolist()
    floor = torch.tensor(scores.generic, dtype=torch.float64)[has].tolist()

    def checked(alts: torch.Tensor) -> torch.Tensor:
        both = zip(alts.tolist(), caption, floor, strict=True)
        return torch.tensor([alt_check(a, c, g)["score"] for a, c, g in both], dtype=torch.float64)

    ref_alt, bad_alt = checked(right), checked(wrong)
    alt_cut = separation(ref_alt, bad_alt, digits=3)
    section = {
        "images": len(sims["reference"]),
        "shuffled_pairs": int(has.sum()),
        "distributions": {k: distribution(k) for k in KINDS},
        "similarity_cut": cut,
        "confidence_rule": {"now": now, "fitted": fitted},
        "min_confidence": {
            "suggested": min_confidence,
            **abstaining(fitted, min_confidence),
            "now": {"min_confidence": MIN_CONFIDENCE, **abstaining(now, MIN_CONFIDENCE)},
        },
        "alt_check": {
            "reference": summary(ref_alt),
            "shuffled": summary(bad_alt),
            "suggested_match_score": alt_cut["cut"],
            **{k: v for k, v in alt_cut.items() if k != "cut"},
            "now": {"match_score": MATCH_SCORE, **rates(ref_alt, bad_alt, MATCH_SCORE)},
        },
        "written": None,  # config.json, once --calibrate wrote it
    }
    section["warnings"] = warnings(section)
    return section


def warnings(section: dict[str, Any]) -> list[str]:
    """What an operator should know before trusting the numbers."""
    out = []
    if section["shuffled_pairs"] < FEW_IMAGES:
        out.append(
            f"warning: calibration from {section['shuffled_pairs']} images: the thresholds "
            f"are rough; use a few hundred labelled images or more"
        )
    if section["similarity_cut"]["auroc"] <= 0.5:
        out.append(
            f"warning: references score no higher than shuffled ones (AUROC "
            f"{section['similarity_cut']['auroc']}): the text tower does not tell right "
            "captions from wrong ones on this set; its confidence means nothing here"
        )
    return out


def write_calibration(model_dir: str | Path, center: float, slope: float) -> Path:
    """Set ``confidence_center`` and ``confidence_slope`` in a model directory's config.json,
    atomically (temp file + rename); every other field stays as it was. Returns its path."""
    path = Path(model_dir) / CONFIG_NAME
    data = json.loads(path.read_text())
    data.update(confidence_center=center, confidence_slope=slope)
    ClipCapConfig.from_dict(data)  # validates (a slope must be > 0)
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"  # as save_pretrained writes it
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    load_config(model_dir)  # reads back
    return path


def lines(section: dict[str, Any]) -> list[str]:
    """The printed summary of a calibration section."""
    out = [
        f"calibration ({section['shuffled_pairs']} images; similarity: CLIP cosine, "
        "confidence: the model's rule now)",
        f"{'':10s} {'similarity':^30s}   {'confidence':^22s}",
        f"{'':10s} {'mean':>6s} {'q05':>7s} {'q50':>7s} {'q95':>7s}   "
        f"{'mean':>6s} {'q05':>7s} {'q50':>7s}",
    ]
    for kind in KINDS:
        s = section["distributions"][kind]["similarity"]
        c = section["distributions"][kind]["confidence"]
        out.append(
            f"{kind:10s} {s['mean']:6.3f} {s['q05']:7.3f} {s['q50']:7.3f} {s['q95']:7.3f}   "
            f"{c['mean']:6.3f} {c['q05']:7.3f} {c['q50']:7.3f}"
        )
    cut, rule = section["similarity_cut"], section["confidence_rule"]
    out.append(
        f"best similarity cut {cut['cut']:.4f}: {_pct(cut['false_positive_rate'])} of shuffled "
        f"references accepted, {_pct(cut['false_negative_rate'])} of references rejected "
        f"(AUROC {cut['auroc']:.3f})"
    )
    fit, now = rule["fitted"], rule["now"]
    out.append(
        f"fitted confidence_center {fit['confidence_center']} confidence_slope "
        f"{fit['confidence_slope']} (config.json now: {now['confidence_center']:.4f}, "
        f"{now['confidence_slope']:.3f})"
    )
    mc = section["min_confidence"]
    out.append(
        f"suggested ALTCAP_MIN_CONFIDENCE={mc['suggested']} (with the fitted rule: "
        f"{_pct(mc['false_positive_rate'])} of shuffled accepted, "
        f"{_pct(mc['false_negative_rate'])} of references and "
        f"{_pct(mc['generated_withheld'])} of generated captions withheld)"
    )
    alt = section["alt_check"]
    out.append(
        f"suggested ALTCAP_ALT_MATCH_SCORE={alt['suggested_match_score']} (alt check score, "
        f"median: references {alt['reference']['q50']:.3f}, shuffled "
        f"{alt['shuffled']['q50']:.3f}; "
        f"{_pct(alt['false_positive_rate'])} of shuffled match, "
        f"{_pct(alt['false_negative_rate'])} of references suspect)"
    )
    if section["written"]:
        out.append(f"wrote confidence_center and confidence_slope to {section['written']}")
    else:
        out.append("(--calibrate writes the fitted confidence rule into the model's config.json)")
    return out


def _pct(rate: float) -> str:
    return f"{100 * rate:.1f}%"
