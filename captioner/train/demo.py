"""A trained tiny model: right captions of synthetic shapes, offline, in about 1.5 minutes.

``make-tiny --trained`` writes a model directory whose captions mean something, so that a
newcomer sees "A red circle on a white background." and tests of scores check real
behaviour. Three steps, on the built-in synthetic shapes (``synthetic.py``):

1. CLIP: the tiny vision and text towers learn together, contrastively (InfoNCE, CLIP's
   symmetric loss with a learned temperature), on image/caption pairs. Every batch holds each
   of the 24 colour/shape pairs once, so no other item in a batch is secretly a match. Half
   the drawings are upright and central, half turned or shrunk (``synthetic.turn``,
   ``synthetic.shrink``): as a real CLIP, which learnt from far more of the world than any
   caption set, it has seen more kinds of picture than the captioner will.
2. The prefix: the vision tower frozen, the mapping network and GPT-2 learn to write the
   canonical caption from the CLIP image embedding (ClipCap's MLP + fine-tuned GPT-2), on
   the upright, central drawings only (as ClipCap learns from COCO alone).
3. Calibration: the confidence rule's centre and slope (``scoring.fit_confidence``) are fitted
   to the cosines of right captions and of captions with another colour or shape.

Deterministic: seeded, one thread (a thread count changes float sums), deterministic
algorithms on: the same seed gives the same weights on any machine with the same torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from captioner.model.checkpoints import save_pretrained
from captioner.model.modeling import ClipCapModel
from captioner.model.processing import preprocess
from captioner.model.scoring import clip_token_ids, fit_confidence
from captioner.model.tiny import tiny_config, train_tokenizer
from captioner.train.synthetic import COLOURS, SHAPES, draw_shape, shape_caption, shrink, turn

log = logging.getLogger(__name__)

# The code that decides what the demo model is (paths from the package's parent): another
# version of these files makes another model (``code_key``, ``is_current``).
SOURCES = (
    "captioner/train/demo.py",
    "captioner/train/synthetic.py",
    "captioner/model/tiny.py",
    "captioner/model/scoring.py",
)
PAIRS = [(c, s) for c in COLOURS for s in SHAPES]  # 24 classes: one of each in every batch
DRAW_SIZE = 64  # synthetic images are drawn at this size, then preprocessed as any input
CLIP_STEPS = 9000  # contrastive steps of one batch of all 24 pairs
PREFIX_STEPS = 600  # caption steps of PREFIX_BATCH images
PREFIX_BATCH = 48
IMAGES_PER_PAIR = 32  # training images drawn per colour/shape pair (different jitter)
CAPTION_VARIANTS = 2  # templates the text tower sees: the canonical one and "a red circle."
# ... and the bare name, as people write short alts: "red circle"
BARE = "{c} {s}"


@contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seeded, ``threads`` threads, deterministic algorithms; the previous state after."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def draw_pairs(
    pairs: list[tuple[str, str]],
    image_size: int,
    rng: random.Random,
    vary: Callable[[Image.Image, random.Random], Image.Image] | None = None,
) -> torch.Tensor:
    """One preprocessed image per (colour, shape), each changed by ``vary`` if given:
    (len(pairs), 3, S, S)."""
    images = [draw_shape(c, s, image_size=DRAW_SIZE, rng=rng) for c, s in pairs]
    if vary is not None:
        images = [vary(image, rng) for image in images]
    return preprocess(images, image_size=image_size)


def demo_model(seed: int = 0) -> ClipCapModel:
    """The tiny architecture with a text tower, random weights, no dropout (tiny data)."""
    tokenizer = train_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(
        len(tokenizer), "mlp", eos_token_id=tokenizer.eos_token_id, text_tower=True
    )
    config.text_config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config.image_encoder = config.text_encoder = "tiny CLIP trained on synthetic shapes"
    config.language_model = "tiny GPT-2 trained on synthetic shapes"
    config.source = made_by(seed)
    model = ClipCapModel.from_config(config)
    model.clip_tokenizer = tokenizer
    return model


def code_key() -> str:
    """A short hash of ``SOURCES``: the same key, the same demo model for a seed."""
    root = Path(__file__).resolve().parents[2]
    return hashlib.sha256(b"".join((root / f).read_bytes() for f in SOURCES)).hexdigest()[:12]


def made_by(seed: int) -> str:
    """The ``source`` in config.json of the demo model this code makes with ``seed``."""
    return f"make-tiny --trained (synthetic shapes, seed {seed}, code {code_key()})"


def is_current(out_dir: str | os.PathLike, seed: int = 0) -> bool:
    """Whether ``out_dir`` holds the demo model that this code makes with ``seed`` (so
    ``make-tiny --trained --keep-current`` need not train it again)."""
    path = Path(out_dir)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    weights = (path / "model.safetensors").is_file()
    return weights and isinstance(config, dict) and config.get("source") == made_by(seed)


def train_tiny(out_dir: str | os.PathLike, *, seed: int = 0, threads: int = 1) -> Path:
    """Train the tiny model on synthetic shapes (CLIP, then the prefix, then calibration) and
    save it as a model directory; returns its path. About 1.5 minutes on one CPU thread."""
    t0 = time.perf_counter()
    with deterministic(seed, threads):
        model = demo_model(seed)
        tokenizer = model.clip_tokenizer
        rng = random.Random(seed)
        size = model.config.image_size
        images = torch.stack(  # (IMAGES_PER_PAIR, 24, 3, S, S): every pair, drawn again
            [draw_pairs(PAIRS, size, rng) for _ in range(IMAGES_PER_PAIR)]
        )
        varied = torch.stack(  # as many again, turned or shrunk: for CLIP only
            [
                draw_pairs(PAIRS, size, rng, vary=(turn, shrink)[i % 2])
                for i in range(IMAGES_PER_PAIR)
            ]
        )
        train_clip(model, torch.cat((images, varied)), seed)
        log.info("CLIP trained (%.0f s)", time.perf_counter() - t0)
        train_prefix(model, images, seed)
        log.info("prefix trained (%.0f s)", time.perf_counter() - t0)
        calibrate(model, images)
        model.eval().requires_grad_(False)
        out = save_pretrained(model, tokenizer, out_dir)
    log.info("saved %s (%.0f s)", out, time.perf_counter() - t0)
    return out


def train_clip(model: ClipCapModel, images: torch.Tensor, seed: int) -> None:
    """Stage 1: CLIP's two towers, InfoNCE on batches of all 24 pairs (one image each)."""
    tokenizer = model.clip_tokenizer
    max_length = int(model.clip_text.config.max_position_embeddings)
    phrasings = [[shape_caption(c, s, v) for c, s in PAIRS] for v in range(CAPTION_VARIANTS)]
    phrasings.append([BARE.format(c=c, s=s) for c, s in PAIRS])
    texts = [clip_token_ids(tokenizer, p, max_length) for p in phrasings]  # tokenised once
    towers = [model.vision, model.clip_text]
    for t in towers:
        t.train().requires_grad_(True)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(20.0)))  # CLIP: learned temperature
    params = [p for t in towers for p in t.parameters()] + [log_scale]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=CLIP_STEPS)
    g = torch.Generator().manual_seed(seed)
    target = torch.arange(len(PAIRS))
    for step in range(CLIP_STEPS):
        pick = torch.randint(0, images.shape[0], (len(PAIRS),), generator=g)
        pixels = images[pick, target]  # (24, 3, S, S): pair i from a random drawing
        ids, mask = texts[step % len(texts)]
        img = F.normalize(model.vision(pixel_values=pixels).image_embeds, dim=-1)  # (24, D)
        txt = F.normalize(model.clip_text(input_ids=ids, attention_mask=mask).text_embeds, dim=-1)
        logits = log_scale.exp().clamp(max=100.0) * img @ txt.T  # (24, 24)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == CLIP_STEPS - 1:
            log.info("clip step %d loss %.4f", step, loss.item())
    for t in towers:
        t.eval().requires_grad_(False)
    model.config.clip_logit_scale = float(log_scale.detach().exp().clamp(max=100.0))


def train_prefix(model: ClipCapModel, images: torch.Tensor, seed: int) -> None:
    """Stage 2: mapping network + GPT-2 write the canonical caption of each image."""
    tokenizer = model.clip_tokenizer  # the tiny models' two tokenizers are one
    with torch.no_grad():
        embeds = model.encode_images(images.flatten(0, 1))  # (N, D), N = images x 24
    pair = torch.arange(len(PAIRS)).repeat(images.shape[0])  # (N,): the pair of each image
    eos = tokenizer.eos_token_id
    rows = [[*tokenizer.encode(shape_caption(c, s)), eos] for c, s in PAIRS]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), eos, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # -100: not scored
    for i, r in enumerate(rows):
        ids[i, : len(r)] = labels[i, : len(r)] = torch.tensor(r)
    params = [*model.mapper.parameters(), *model.lm.parameters()]
    model.mapper.train().requires_grad_(True)
    model.lm.train().requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=PREFIX_STEPS)
    g = torch.Generator().manual_seed(seed + 1)
    for step in range(PREFIX_STEPS):
        pick = torch.randint(0, len(embeds), (PREFIX_BATCH,), generator=g)
        p = pair[pick]
        loss = model(embeds[pick], ids[p], labels=labels[p]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == PREFIX_STEPS - 1:
            log.info("prefix step %d loss %.4f", step, loss.item())
    model.mapper.eval().requires_grad_(False)
    model.lm.eval().requires_grad_(False)


@torch.no_grad()
def calibrate(model: ClipCapModel, images: torch.Tensor) -> None:
    """Stage 3: fit the confidence rule to right captions and captions with a swapped word."""
    right, wrong = swap_cosines(model, images[:4].flatten(0, 1), PAIRS * 4)
    center, slope = fit_confidence(right, wrong)
    model.config.confidence_center, model.config.confidence_slope = center, slope
    log.info("confidence: centre %.3f, slope %.1f", center, slope)


@torch.no_grad()
def swap_cosines(
    model: ClipCapModel, pixels: torch.Tensor, pairs: list[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines of each image with its right caption (N,) and with every wrong one (N * 23,)."""
    max_length = int(model.clip_text.config.max_position_embeddings)
    all_ids, all_mask = clip_token_ids(
        model.clip_tokenizer, [shape_caption(c, s) for c, s in PAIRS], max_length
    )
    text = F.normalize(model.encode_texts(all_ids, all_mask), dim=-1)  # (24, D)
    image = F.normalize(model.encode_images(pixels), dim=-1)  # (N, D)
    sims = image @ text.T  # (N, 24)
    index = torch.tensor([PAIRS.index(p) for p in pairs])
    is_right = F.one_hot(index, len(PAIRS)).bool()
    return sims[is_right], sims[~is_right]
