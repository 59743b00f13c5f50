"""The Captioner facade: ``from_pretrained(name_or_path)`` and ``caption(images)``."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from captioner.alttext import clean_caption
from captioner.config import DecodingSettings
from captioner.errors import InvalidSettings, ModelError
from captioner.images import DEFAULT_MAX_PIXELS, ImageInput, load_image
from captioner.model.checkpoints import load_pretrained
from captioner.model.modeling import ClipCapModel
from captioner.model.pretrained import DEFAULT_MODEL, resolve
from captioner.model.processing import preprocess
from captioner.model.scoring import clip_token_ids, cosine, rerank_scores
from captioner.model.scoring import confidence as confidence_of
from captioner.runtime import cpu_kernel, int8
from captioner.runtime.decoding import Candidate, generate, generate_candidates
from captioner.runtime.device import pick_device, pick_dtype
from captioner.runtime.graphs import GraphedGreedy
from captioner.runtime.lm import CachedGPT2
from captioner.runtime.packed import can_pack, pack_linears
from captioner.runtime.stopping import StopRule
from captioner.runtime.text import PROBE_TEXTS, LeanText
from captioner.runtime.vision import LeanVision
from captioner.trust import GENERIC_TEXTS, MATCH_SCORE, alt_check

log = logging.getLogger(__name__)


@dataclass
class CaptionResult:
    """One image's caption. ``timings`` are those of the batch the image was decoded in."""

    text: str  # cleaned: capitalised, one final period
    raw: str  # as the model wrote it
    tokens: int  # new tokens generated (the stop token included)
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds
    batch_size: int = 1
    # CLIP's view of the caption (None for a model without a text tower): ``similarity`` is
    # the cosine of the image and caption embeddings, ``confidence`` its calibrated mapping
    # to [0, 1] (scoring.confidence, docs/confidence.md)
    confidence: float | None = None
    similarity: float | None = None
    # An author's alt checked against the image (``caption_pixels(..., alts=)``): the
    # cosines of the alt and of the best generic text, and trust.alt_check's verdict
    alt_similarity: float | None = None
    generic_similarity: float | None = None
    alt_check: dict[str, Any] | None = None
    # With ``candidates`` > 1: every distinct caption decoded for the image, best first by
    # the reranking score; each {"caption", "score", "logprob", "similarity", "confidence"}
    # (the last two only with a text tower). The first is this result's caption.
    candidates: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "caption": self.text,
            "raw": self.raw,
            "tokens": self.tokens,
            "timings_ms": self.timings,
            "batch_size": self.batch_size,
        }
        if self.confidence is not None:  # absent, not null, without a text tower
            d["confidence"] = self.confidence
        if self.alt_check is not None:
            d["alt_check"] = dict(self.alt_check)
        if self.candidates is not None:
            d["candidates"] = [dict(c) for c in self.candidates]
        return d


class Captioner:
    """Turns images into captions with a ClipCap model."""

    def __init__(
        self,
        model: ClipCapModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        model_id: str = "",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        compile: bool = False,
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        # inference-only from here: linear layers are packed for the CPU where possible
        self.packed = can_pack(self.device, self.dtype)
        self.kernel = cpu_kernel.available(self.device, self.dtype)
        self._encode = self.model.encode_images
        if self.packed:  # CLIP on the CPU: a leaner forward (vision.py), oneDNN's kernels
            try:
                self._encode = LeanVision(self.model.vision, kernel=self.kernel)
            except ValueError as exc:  # a CLIP variant it does not cover: the module's own
                log.info("CLIP runs its own forward: %s", exc)
            pack_linears(self.model.vision)
        if self.kernel:  # a few rows per image: the batch-invariant kernel (cpu_kernel.py)
            pack_linears(self.model.mapper, kernel=True)
        self.tokenizer = tokenizer
        self.text_precision = "" if self.model.clip_text is None else str(self.dtype)[6:]
        self._encode_text = self.model.encode_texts
        if self.packed and self.model.clip_text is not None:  # CPU: a leaner forward (text.py)
            self._encode_text = self._lean_text()
        self.lm = CachedGPT2(self.model.lm, pack=self.packed, kernel=self.kernel)
        cuda = self.device.type == "cuda"
        self.graphed = GraphedGreedy(self.lm) if cuda else None
        if compile:  # fuses CLIP's element-wise work: ~20% faster at batch 2048 on an H100
            self._encode = torch.compile(self.model.encode_images)
        self.model_id = model_id
        self.max_pixels = max_pixels
        self.default_settings = DecodingSettings()
        self.alt_match_score = MATCH_SCORE  # ALTCAP_ALT_MATCH_SCORE (trust.alt_check)

    def _lean_text(self):
        """CLIP's text tower on the CPU: LeanText, with int8 linear layers where they run
        (runtime/int8.py) and agree with the exact ones on ``PROBE_TEXTS``, else packed."""
        text = self.model.clip_text
        try:
            lean = LeanText(text)
        except ValueError as exc:  # a CLIP variant it does not cover: the module's own
            log.info("CLIP's text tower runs its own forward: %s", exc)
            pack_linears(text)
            return self.model.encode_texts
        if int8.available(self.device):
            max_length = int(text.config.max_position_embeddings)
            ids, _ = clip_token_ids(self.model.clip_tokenizer, PROBE_TEXTS, max_length)
            quantized = copy.deepcopy(text).float()  # float32 around the int8 products
            int8.quantize_linears(quantized)
            quantized_lean = LeanText(quantized)
            agreement = int8.agreement(lean(ids), quantized_lean(ids))
            if agreement >= int8.MIN_AGREEMENT:
                self.model.clip_text, self.text_precision = quantized, "int8"
                return quantized_lean
            log.warning(
                "CLIP's text tower stays in %s: with int8 layers its embeddings of probe "
                "texts move to a cosine of %.4f (below %s)",
                self.text_precision,
                agreement,
                int8.MIN_AGREEMENT,
            )
        pack_linears(text)
        return lean

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> Captioner:
        """Load a named model, a model directory or a Hub repo id (see ``pretrained.resolve``)."""
        device_ = pick_device(device)  # fail on a bad device before any download
        dtype_ = pick_dtype(dtype, device_)
        model, tokenizer = load_pretrained(resolve(name_or_path))
        return cls(model, tokenizer, device=device_, dtype=dtype_, model_id=name_or_path, **kwargs)

    @property
    def config(self):
        return self.model.config

    @property
    def language(self) -> str:
        """The language tag of the captions this model writes (``en`` for ClipCap's)."""
        return self.model.config.language

    def settings(
        self, settings: DecodingSettings | None = None, **overrides: Any
    ) -> DecodingSettings:
        s = settings or self.default_settings
        s = (replace(s, **overrides) if overrides else s).validate()
        room = self.lm.max_positions - self.config.prefix_length
        if s.max_tokens > room:
            raise InvalidSettings(f"max_tokens must be at most {room} for this model")
        return s

    def stop_rule(self, settings: DecodingSettings) -> StopRule:
        stop_id = None
        if settings.stop_token:
            ids = self.tokenizer.encode(settings.stop_token)
            stop_id = ids[0] if ids else None  # as the reference: the first token of the text
        eos = self.tokenizer.eos_token_id if settings.stop_at_eos else None
        return StopRule(stop_id, eos, settings.min_tokens)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        cfg = self.config
        return preprocess(images, image_size=cfg.image_size, mean=cfg.image_mean, std=cfg.image_std)

    @torch.inference_mode()
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels -> (B, clip_dim) CLIP embeddings, float32."""
        pixels = pixel_values.to(self.device, self.dtype)
        return self._encode(pixels).float()

    @property
    def can_score(self) -> bool:
        """Whether the model has CLIP's text tower (scores, confidence)."""
        return self.model.has_text_tower

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (T, clip_dim) CLIP text embeddings, float32, in one text-tower pass."""
        if not self.can_score:
            raise ModelError(
                f"the model {self.model_id or ''} has no CLIP text tower, so it cannot score "
                "texts; convert or make it again to include one (docs/confidence.md)"
            )
        if not texts:
            return torch.empty(0, self.config.clip_dim)
        max_length = int(self.model.clip_text.config.max_position_embeddings)
        ids, mask = clip_token_ids(self.model.clip_tokenizer, texts, max_length)
        return self._encode_text(ids.to(self.device), mask.to(self.device)).float()

    @torch.inference_mode()
    def score(
        self,
        images: torch.Tensor | ImageInput | Sequence[ImageInput],
        texts: Sequence[str] | Sequence[Sequence[str]],
    ) -> torch.Tensor:
        """Cosine similarities of images and texts in CLIP's space, float32 on the CPU.

        ``images``: (N, clip_dim) image embeddings (from ``embed``, as ``caption_pixels``
        computes them), (N, 3, S, S) preprocessed pixels, or N images (bytes, paths, PIL).
        ``texts``: N strings, one per image -> (N,); or N lists of k strings each (candidates,
        say) -> (N, k). All texts go through the text tower in one pass.
        Map a cosine to a confidence with ``confidence``.
        """
        embeds = self._image_embeds(images)
        nested = bool(texts) and not isinstance(texts[0], str)
        rows = [list(t) for t in texts] if nested else [[t] for t in texts]
        k = len(rows[0]) if rows else 0
        if len(rows) != len(embeds) or any(len(r) != k for r in rows):
            raise InvalidSettings(
                f"score needs one text (or the same number of texts) per image: "
                f"{len(embeds)} images, {[len(r) for r in rows]} texts"
            )
        text_embeds = self.embed_texts([t for r in rows for t in r]).view(len(rows), k, -1)
        cos = cosine(embeds.unsqueeze(1), text_embeds)  # (N, k)
        return cos.cpu() if nested else cos[:, 0].cpu()

    def confidence(self, similarity: torch.Tensor) -> torch.Tensor:
        """Cosine similarities -> confidences in (0, 1), by this model's calibrated rule."""
        return confidence_of(similarity, self.config)

    def _image_embeds(self, images: torch.Tensor | ImageInput | Sequence[ImageInput]):
        if isinstance(images, torch.Tensor) and images.dim() == 2:
            return images.to(self.device).float()  # (N, clip_dim): already embedded
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            return self.embed(images)
        if isinstance(images, (bytes, bytearray, str, Image.Image)) or not isinstance(
            images, Sequence
        ):
            images = [images]
        return self.embed(
            self.preprocess([load_image(im, max_pixels=self.max_pixels) for im in images])
        )

    def caption(
        self,
        images: ImageInput | Sequence[ImageInput],
        settings: DecodingSettings | None = None,
        *,
        batch_size: int = 32,
        alts: Sequence[str | None] | None = None,
        **overrides: Any,
    ) -> list[CaptionResult]:
        """Caption images (bytes, paths or PIL images): one result per image, in order.

        ``alts``: an author's alt per image (None: none) to check against it (``alt_check``;
        needs a text tower). A bad image raises its typed ``ImageError``; decode first with
        ``images.load_image`` to handle failures image by image.
        """
        if isinstance(images, (bytes, bytearray, str, Image.Image)) or not isinstance(
            images, Sequence
        ):
            images = [images]
        settings = self.settings(settings, **overrides)
        results: list[CaptionResult] = []
        for start in range(0, len(images), max(1, batch_size)):
            t0 = time.perf_counter()
            chunk = [
                load_image(im, max_pixels=self.max_pixels)
                for im in images[start : start + batch_size]
            ]
            pixels = self.preprocess(chunk)
            pre_ms = (time.perf_counter() - t0) * 1e3
            some = None if alts is None else list(alts[start : start + batch_size])
            for r in self.caption_pixels(pixels, settings, alts=some):
                r.timings["preprocess_ms"] = round(pre_ms, 3)
                r.timings["total_ms"] = round(r.timings["total_ms"] + pre_ms, 3)
                results.append(r)
        return results

    @torch.inference_mode()
    def caption_pixels(
        self,
        pixel_values: torch.Tensor,
        settings: DecodingSettings | None = None,
        alts: Sequence[str | None] | None = None,
    ) -> list[CaptionResult]:
        """Caption a preprocessed batch (B, 3, S, S) in one pass.

        With a text tower, every caption gets its ``confidence``, and every image with an
        author's alt in ``alts`` (one per image, None for none) its ``alt_check``, from one
        text-tower pass over the captions, the alts and ``trust.GENERIC_TEXTS``.

        With ``settings.candidates`` k > 1, each image gets up to k distinct captions (beam's
        best or nucleus samples; the same text twice counts once), all scored in that same
        pass, and the result is the best by ``scoring.rerank_scores`` (without a text tower:
        by log-probability); ``CaptionResult.candidates`` lists them all, best first.
        """
        if alts is not None and len(alts) != len(pixel_values):
            raise InvalidSettings(f"{len(alts)} alts for {len(pixel_values)} images")
        settings = self.settings(settings)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        embeds = self.embed(pixel_values)  # (B, clip_dim): the prefix's, and the scores'
        prefix = self.model.prefix(embeds.to(self.dtype))
        sync()
        t1 = time.perf_counter()
        stop = self.stop_rule(settings)
        if settings.candidates == 1:  # one caption, decoded as ever (no log-probabilities)
            ids = generate(self.lm, prefix, settings, stop, self.graphed)
            found = [[Candidate(row, 0.0)] for row in ids]
        else:
            found = generate_candidates(self.lm, prefix, settings, stop)
        t2 = time.perf_counter()
        raws = [
            [self.tokenizer.decode(c.ids, skip_special_tokens=True) for c in cs] for cs in found
        ]
        texts = [[clean_caption(raw) for raw in rs] for rs in raws]
        if settings.candidates > 1:  # the same text twice is one candidate: its likelier one
            keep = [_first_of_each(ts) for ts in texts]
            found, raws, texts = (
                [[x[j] for j in js] for x, js in zip(xs, keep, strict=True)]
                for xs in (found, raws, texts)
            )
        timings = {"encode_ms": (t1 - t0) * 1e3, "decode_ms": (t2 - t1) * 1e3}
        sims: list[torch.Tensor | None] = [None] * len(found)
        alt_cos: dict[int, dict[str, float]] = {}
        if self.can_score:  # what CLIP makes of each caption (and alt): one text-tower pass
            t3 = time.perf_counter()
            sims, alt_cos = self._scores(embeds, texts, alts)
            sync()
            timings["confidence_ms"] = (time.perf_counter() - t3) * 1e3
        timings["total_ms"] = (time.perf_counter() - t0) * 1e3
        timings = {k: round(v, 3) for k, v in timings.items()}
        out = []
        for i, (cands, rs, ts) in enumerate(zip(found, raws, texts, strict=True)):
            sim = sims[i]
            conf = None if sim is None else self.confidence(sim)
            order, score = [0], None
            if settings.candidates > 1:
                logprobs = torch.tensor([c.logprob for c in cands])
                score = rerank_scores(logprobs, sim, self.config, settings.clip_weight)
                order = sorted(range(len(cands)), key=lambda j: -float(score[j]))  # stable
            best = order[0]
            r = CaptionResult(ts[best], rs[best], len(cands[best].ids), dict(timings), len(found))
            if sim is not None:
                r.similarity = round(float(sim[best]), 4)
                r.confidence = round(float(conf[best]), 4)
            if score is not None:
                r.candidates = [
                    _candidate(ts[j], score[j], cands[j].logprob, sim, conf, j) for j in order
                ]
            if i in alt_cos:
                r.alt_similarity = round(alt_cos[i]["alt"], 4)
                r.generic_similarity = round(alt_cos[i]["generic"], 4)
                r.alt_check = alt_check(
                    alt_cos[i]["alt"],
                    float(sim[best]),
                    alt_cos[i]["generic"],
                    self.alt_match_score,
                )
            out.append(r)
        return out

    def _scores(
        self,
        embeds: torch.Tensor,
        captions: list[list[str]],
        alts: Sequence[str | None] | None,
    ) -> tuple[list[torch.Tensor], dict[int, dict[str, float]]]:
        """The cosines of each image's captions (a (k_i,) tensor per image), and {image index:
        cosines of its alt and of the best generic text} for the images with an alt; all texts
        in one text-tower pass."""
        asked = [(i, a) for i, a in enumerate(alts or []) if isinstance(a, str) and a.strip()]
        generic = list(GENERIC_TEXTS) if asked else []
        flat = [t for ts in captions for t in ts]
        texts = flat + [a for _, a in asked] + generic
        text_embeds = self.embed_texts(texts)  # (C + A + G, D)
        c, a = len(flat), len(asked)
        owner = torch.tensor([i for i, ts in enumerate(captions) for _ in ts], dtype=torch.long)
        caption_cos = cosine(embeds[owner.to(embeds.device)], text_embeds[:c]).cpu()  # (C,)
        per_image = list(caption_cos.split([len(ts) for ts in captions]))
        checks = {}
        for j, (i, _) in enumerate(asked):
            image = embeds[i : i + 1]  # (1, D)
            alt_cos = float(cosine(image, text_embeds[c + j : c + j + 1])[0])
            generic_cos = float(cosine(image, text_embeds[c + a :]).max())
            checks[i] = {"alt": alt_cos, "generic": generic_cos}
        return per_image, checks


def _first_of_each(texts: list[str]) -> list[int]:
    """The index of each distinct text's first occurrence, in order."""
    first: dict[str, int] = {}
    for j, t in enumerate(texts):
        first.setdefault(t, j)
    return list(first.values())


def _candidate(
    text: str,
    score: torch.Tensor,
    logprob: float,
    sim: torch.Tensor | None,
    conf: torch.Tensor | None,
    j: int,
) -> dict[str, Any]:
    """One entry of ``CaptionResult.candidates`` (similarity and confidence: with a text tower)."""
    d: dict[str, Any] = {"caption": text, "score": round(float(score), 4)}
    d["logprob"] = round(logprob, 4)
    if sim is not None and conf is not None:
        d["similarity"] = round(float(sim[j]), 4)
        d["confidence"] = round(float(conf[j]), 4)
    return d
