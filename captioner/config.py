"""Configuration dataclasses: what a model is made of, and how to decode with it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from captioner.errors import InvalidSettings
from captioner.lang import is_language_tag

MappingType = Literal["mlp", "transformer"]
DecodingMethod = Literal["greedy", "beam", "nucleus"]
DECODING_METHODS: tuple[str, ...] = get_args(DecodingMethod)

# The limits of DecodingSettings, declared once: validate() checks them, and the OpenAPI
# schema (captioner.serve.openapi) is built from them.
MAX_BEAM_SIZE = 32  # beams per image: the batch grows by this factor
MAX_TEMPERATURE = 10  # above this, sampling is noise
MAX_NEW_TOKENS = 256  # new tokens per caption (max_tokens, and min_tokens under it)
MAX_CANDIDATES = 8  # captions per image to rerank: each is decoded and goes through CLIP
MAX_CLIP_WEIGHT = 100  # reranking: past this CLIP alone decides, the LM only breaks ties


@dataclass
class ClipCapConfig:
    """Every hyper-parameter of a ClipCap model, saved as the model directory's config.json.

    The vision and text configs are stored in full, so a model directory alone rebuilds its
    model without any download; ``image_encoder`` / ``language_model`` only record provenance.
    """

    mapping_type: MappingType = "mlp"  # "mlp" (paper: + fine-tuned GPT-2) or "transformer"
    prefix_length: int = 10  # number of GPT-2 input embeddings the image becomes
    clip_length: int = 10  # transformer mapper: tokens the CLIP vector is projected to
    num_layers: int = 8  # transformer mapper: depth
    num_heads: int = 8  # transformer mapper: attention heads
    mlp_ratio: float = 2.0  # transformer mapper: hidden size / model size in its MLP
    normalize_prefix: bool = False  # L2-normalise the CLIP embedding before mapping
    image_encoder: str = "openai/clip-vit-base-patch32"  # where the vision tower came from
    language_model: str = "gpt2"  # where GPT-2 (config, tokenizer) came from
    image_size: int = 224  # CLIP input resolution
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    vision_config: dict[str, Any] = field(default_factory=dict)  # CLIPVisionConfig.to_dict()
    text_config: dict[str, Any] = field(default_factory=dict)  # GPT2Config.to_dict()
    source: str = ""  # free text: how this directory was made (conversion, training run)
    language: str = "en"  # BCP 47 tag of the captions it writes (HTML lang); ClipCap's: English
    # CLIP's text tower (optional): it scores how well a text matches the image embedding.
    clip_text_config: dict[str, Any] = field(default_factory=dict)  # CLIPTextConfig; {}: none
    text_encoder: str = ""  # where the text tower and its tokenizer came from ("" = none)
    clip_logit_scale: float = 100.0  # CLIP's learned exp(logit_scale): logits = this * cosine
    # confidence = sigmoid(confidence_slope * (cosine - confidence_center)), see
    # docs/confidence.md. Defaults: the logistic tangent to CLIPScore (2.5 * cosine, Hessel
    # et al. 2021) at its midpoint 0.5; a calibration run fits both to a model's own data.
    confidence_center: float = 0.2  # cosine that gets confidence 0.5
    confidence_slope: float = 10.0  # confidence per unit of cosine at the centre, times 4

    @property
    def clip_dim(self) -> int:
        return int(self.vision_config.get("projection_dim", 512))

    @property
    def has_text_tower(self) -> bool:
        return bool(self.clip_text_config)

    @property
    def gpt_dim(self) -> int:
        return int(self.text_config.get("n_embd", 768))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        return {"model_type": "clipcap", **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClipCapConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        for k in ("image_mean", "image_std"):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k])
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.mapping_type not in ("mlp", "transformer"):
            raise InvalidSettings(
                f"mapping_type must be 'mlp' or 'transformer', not {self.mapping_type!r}"
            )
        for name in ("prefix_length", "clip_length", "num_layers", "num_heads", "image_size"):
            if int(getattr(self, name)) < 1:
                raise InvalidSettings(f"{name} must be >= 1")
        if self.has_text_tower:
            text_dim = int(self.clip_text_config.get("projection_dim", 512))
            if text_dim != self.clip_dim:
                raise InvalidSettings(
                    f"the CLIP text tower projects to {text_dim} dimensions, the image tower "
                    f"to {self.clip_dim}: they must be the two towers of one CLIP model"
                )
        if not self.confidence_slope > 0:
            raise InvalidSettings("confidence_slope must be > 0 (a higher cosine: more confident)")
        if not is_language_tag(self.language):
            raise InvalidSettings(
                f"language must be a language tag such as 'en' or 'pt-BR', not {self.language!r}"
            )


@dataclass(frozen=True)
class DecodingSettings:
    """How captions are generated. Defaults follow the reference ClipCap notebook."""

    method: DecodingMethod = "greedy"
    beam_size: int = 5  # beam search width (reference: 5)
    top_p: float = 0.8  # nucleus sampling: keep the smallest token set with this much mass
    temperature: float = 1.0  # nucleus sampling (and beam scores, as the reference does)
    seed: int | None = None  # nucleus sampling: same seed, same image -> same caption
    max_tokens: int = 67  # stop after this many new tokens (reference: 67)
    min_tokens: int = 0  # never stop before this many new tokens (benchmarks force a length)
    stop_token: str | None = "."  # stop once this text is generated; None: never
    stop_at_eos: bool = True  # stop at the tokenizer's end-of-text token
    # Reranking (docs/confidence.md): decode ``candidates`` captions per image (beam search's
    # best, or nucleus samples; greedy writes one) and keep the best by
    # ``logprob + clip_weight * log(confidence)``: the language model's mean log-probability
    # per token plus CLIP's calibrated log-probability that the caption is right, both nats.
    candidates: int = 1  # captions per image; 1: no reranking (beam: at most beam_size)
    # CLIP's weight in the reranking score (0: the LM alone); 0.3: the largest weight of a
    # sweep that broke no caption on the demo model's selection draws (bench/confidence.py,
    # docs/confidence.md); measure your own model with ``evaluate --candidates``
    clip_weight: float = 0.3

    def validate(self) -> DecodingSettings:
        if self.method not in DECODING_METHODS:
            raise InvalidSettings(
                f"decoding method must be greedy, beam or nucleus, not {self.method!r}"
            )
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise InvalidSettings(f"beam_size must be between 1 and {MAX_BEAM_SIZE}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidSettings("top_p must be in (0, 1]")
        if not 0.0 < self.temperature <= MAX_TEMPERATURE:
            raise InvalidSettings(f"temperature must be in (0, {MAX_TEMPERATURE}]")
        if not 1 <= self.max_tokens <= MAX_NEW_TOKENS:
            raise InvalidSettings(f"max_tokens must be between 1 and {MAX_NEW_TOKENS}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidSettings("min_tokens must be between 0 and max_tokens")
        if not 1 <= self.candidates <= MAX_CANDIDATES:
            raise InvalidSettings(f"candidates must be between 1 and {MAX_CANDIDATES}")
        if self.candidates > 1 and self.method == "greedy":
            raise InvalidSettings(
                "greedy decoding writes one caption per image: for candidates > 1 use "
                "method beam (its best beams) or nucleus (samples)"
            )
        if self.method == "beam" and self.candidates > self.beam_size:
            raise InvalidSettings(
                f"beam search keeps beam_size ({self.beam_size}) captions per image: "
                f"candidates ({self.candidates}) must be at most beam_size"
            )
        if not 0.0 <= self.clip_weight <= MAX_CLIP_WEIGHT:
            raise InvalidSettings(f"clip_weight must be between 0 and {MAX_CLIP_WEIGHT}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings that change the output (used in cache keys and API responses)."""
        # every field is a scalar: a plain read, not asdict's recursive deep copy (this runs
        # several times per request, cache hits included)
        d = {f.name: getattr(self, f.name) for f in _DECODING_FIELDS}
        if self.method != "beam":
            d.pop("beam_size")
        if self.method != "nucleus":
            for k in ("top_p", "seed"):
                d.pop(k)
        if self.method == "greedy":
            d.pop("temperature")
        if self.candidates == 1:  # no reranking: the keys of the settings that existed before
            for k in ("candidates", "clip_weight"):
                d.pop(k)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecodingSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidSettings(f"unknown decoding setting(s): {', '.join(sorted(unknown))}")
        try:
            return cls(**d).validate()
        except TypeError as e:  # pragma: no cover - dataclass signature errors
            raise InvalidSettings(str(e)) from None


_DECODING_FIELDS = dataclasses.fields(DecodingSettings)
