"""One caption for every image: a model that does not look at the image (yet).

A mapper that has not learnt gives GPT-2 a prefix that barely depends on the image, and GPT-2
writes the captions' likeliest sentence for all of them. The loss falls all the while (GPT-2
learns the captions' language first), so nothing in the numbers says so. At the paper's
``--lr 2e-5`` a new mapper on a small set stays there for thousands of steps; ``train`` (at
each epoch's end, on held-out images) and ``evaluate`` say so, and name the remedy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

PROBE_IMAGES = 16  # held-out images `train` captions at each epoch's end to look for it
MIN_IMAGES = 4  # fewer images giving one caption may be chance
SHARE = 0.9  # "every image": the commonest caption covers this share of them or more...
FEW = 2  # ...or the images got this many captions at most, where their references name
FEW_REFERENCES = 4  # at least this many different things
RECIPE_LR = "3e-3"  # the --lr the docs' from-scratch recipe learns at (tiny model, shapes)


@dataclass(frozen=True)
class Collapse:
    """Images that got (nearly) one caption."""

    caption: str  # the commonest
    count: int  # images that got it
    distinct: int  # different captions in all
    images: int

    def describe(self, what: str) -> str:
        """``one caption for all 16 held-out images ('...')``, or with a few captions
        ``2 captions for 96 images (65 of them: '...')``."""
        if self.distinct == 1:
            return f"one caption for all {self.images} {what} ({self.caption!r})"
        return (
            f"{self.distinct} captions for {self.images} {what} ({self.count} of them: "
            f"{self.caption!r})"
        )


def one_caption_for_all(captions: Sequence[str], references: Sequence[str]) -> Collapse | None:
    """A Collapse when (nearly) every image got one caption, else None.

    At least MIN_IMAGES images, whose references differ, and either SHARE of them with the
    commonest caption or FEW captions in all where the references name FEW_REFERENCES
    things or more. ``references``: one per image, in order."""
    if len(captions) < MIN_IMAGES:
        return None
    counts = Counter(captions)
    caption, count = counts.most_common(1)[0]
    refs = len({r.strip().lower() for r in references})
    if refs < 2:
        return None  # the images' references are all the same: so may their captions be
    if count >= SHARE * len(captions) or (len(counts) <= FEW and refs >= FEW_REFERENCES):
        return Collapse(caption, count, len(counts), len(captions))
    return None


def train_warning(collapse: Collapse, lr: float) -> str:
    return (
        f"warning: {collapse.describe('held-out images')}: the model does not use the image "
        f"yet. If this lasts, raise --lr ({lr:g} now; the paper's 2e-5 is for COCO's 566k "
        f"captions; the docs' small-set recipe from scratch learns at {RECIPE_LR})"
    )


def evaluate_warning(collapse: Collapse) -> str:
    return (
        f"warning: {collapse.describe('images')}: the model does not use the image. It was "
        "trained too briefly or with too low a --lr (train's default 2e-5 is the paper's, for "
        "COCO's 566k captions; the docs' small-set recipe from scratch learns at "
        f"{RECIPE_LR})"
    )
