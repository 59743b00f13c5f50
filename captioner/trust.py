"""When AltCap trusts a description, and when it doubts an author's alt: the rules alone.

CLIP's text tower scores any text against an image (``Captioner.score``: a cosine). Two
decisions are made from those scores, here, without torch, so that the service, the jobs,
the CLI and the docs share one statement of each:

**Abstaining.** A caption whose ``confidence`` (``captioner.model.scoring``: the cosine's
calibrated mapping to [0, 1]) is below ``min_confidence`` (``ALTCAP_MIN_CONFIDENCE``) is
not confident: the result says ``"confident": false``, and whatever its ``alt`` owes to the
caption is withheld (the extension writes nothing; reports mark it ``low_confidence``; patched
pages leave it out). An alt made of the image's own text alone (``alt_from == "text"``) does
not rest on the caption and is kept.

**Checking an author's alt.** One absolute threshold on a cosine does not work: cosines
depend on the model, on the image (a busy photo scores every text lower) and on the text's
length. So the author's alt is placed on the scale that the model itself sets for *this*
image, between a generic text that describes nothing ("an image.") and AltCap's own caption::

    score = (cos(alt) - cos(generic)) / max(cos(caption) - cos(generic), MIN_SPREAD)

0 is "no better than saying *an image*", 1 is "as good as what AltCap would write", above 1
better still. ``cos(generic)`` is the best of ``GENERIC_TEXTS``. The verdict is ``matches``
at ``score >= match_score`` (``ALTCAP_ALT_MATCH_SCORE``, default 0.5: at least half way
from saying nothing to AltCap's own description), and also whenever CLIP scores the alt at
least as high as AltCap's own caption (on an image where the model finds "an image." as
apt as its caption the scale has no room, and an alt it likes as much as its own words is
no reason to doubt the author); else ``suspect``. A suspect alt is flagged
for a person to look at — with AltCap's caption as a suggestion — never replaced: a score is
blind to context (Kreiss et al. 2022), and the author may know what the image is for.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ALT_VERDICTS",
    "GENERIC_TEXTS",
    "MATCH_SCORE",
    "MIN_CONFIDENCE",
    "MIN_SPREAD",
    "alt_check",
    "is_confident",
    "withholds",
]

ALT_VERDICTS = ("matches", "suspect")
# Texts that describe no image in particular: the bottom of the alt check's scale. Several,
# so that one quirk of the text tower does not set it; the best-scoring one counts.
GENERIC_TEXTS = ("an image.", "a picture.", "a photo.", "a photo of something.", "something.")
MATCH_SCORE = 0.5  # default ALTCAP_ALT_MATCH_SCORE: half way from "an image." to the caption
MIN_SPREAD = 0.02  # cosine: when AltCap's caption is barely better than "an image." itself
MIN_CONFIDENCE = 0.5  # default ALTCAP_MIN_CONFIDENCE: the logistic's centre (docs/confidence.md)


def alt_check(
    alt_similarity: float,
    caption_similarity: float,
    generic_similarity: float,
    match_score: float = MATCH_SCORE,
) -> dict[str, Any]:
    """``{"score", "verdict"}`` for an author's alt (see the module docstring)."""
    spread = max(caption_similarity - generic_similarity, MIN_SPREAD)
    score = (alt_similarity - generic_similarity) / spread
    matches = score >= match_score or alt_similarity >= caption_similarity
    verdict = ALT_VERDICTS[0] if matches else ALT_VERDICTS[1]
    return {"score": round(score, 3), "verdict": verdict}


def is_confident(confidence: float | None, min_confidence: float = MIN_CONFIDENCE) -> bool | None:
    """Whether a caption is confident enough to be said; None when it has no confidence."""
    return None if confidence is None else confidence >= min_confidence


def withholds(confident: bool | None, alt_from: str) -> bool:
    """Whether a result's alt is withheld: the caption is not confident and the alt rests on
    it (``alt_from`` "caption" or "caption_and_text"; an alt of the image's text is kept)."""
    return confident is False and alt_from != "text"
