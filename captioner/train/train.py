"""``python -m captioner train EMBEDDINGS OUT_DIR``: fit a ClipCap prefix model on embeddings.

Both regimes of the ClipCap paper: an MLP mapper with GPT-2 fine-tuned (the default), and a
transformer mapper with GPT-2 frozen. The image encoder never runs here: ``embed`` already
turned every image into a CLIP vector, and its fingerprint must match the vision tower that
goes into the output model, so a served model sees the embeddings it was trained on.

One plain loop, in order: step, log, checkpoint; at each epoch's end the validation loss, a
few sample captions and a checkpoint. A checkpoint is a model directory (servable as it is)
plus ``trainer_state.pt`` (optimizer, scheduler, grad scaler, RNG states of every rank) and
``trainer.json`` (the position: step, epoch, batches done, and the options that must not
change). The data order is a function of (seed, epoch), so ``--resume`` continues exactly: the
final weights equal those of an uninterrupted run. Under ``torchrun`` the same script trains
with DistributedDataParallel; only rank 0 logs and writes.

Output layout::

    OUT_DIR/final/                 the trained model directory (Captioner.from_pretrained)
    OUT_DIR/checkpoints/step-N/    the last --keep checkpoints, each a model directory too
    OUT_DIR/log.jsonl              training loss every --log-every steps, one line per epoch
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from .. import cpu_kernel
from ..checkpoints import load_pretrained
from ..config import DecodingSettings, is_language_tag
from ..decoding import StopRule, generate
from ..errors import InvalidSettings
from ..lm import CachedGPT2
from ..model import ClipCapModel
from .checkpoint import (
    CHECKPOINTS,
    CKPT_FORMAT,
    FINAL,
    OutputExists,
    ResumeMismatch,
    TrainingError,
    checkpoint_dirs,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    save_final,
    set_rng_state,
)
from .dataset import IGNORE, Collate, ResumableSampler, caption_set, split_by_image
from .distributed import init_distributed
from .parts import build_model, set_trainable, train_mode
from .store import EmbeddingStore

log = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainOptions:
    """Everything a run depends on; ``None`` means "the init model's value, else the paper's"."""

    embeddings: str  # embedding store written by `embed`
    out_dir: str
    # where the parts come from
    init: str | None = None  # AltCap model dir / name / Hub id: its vision tower, GPT-2, tokenizer
    keep_mapper: bool = False  # start from the init model's mapper (options must match)
    image_encoder: str | None = None  # HF CLIP id or dir (default: what made the embeddings)
    language_model: str | None = None  # HF GPT-2 id or dir (default: gpt2)
    # model
    mapping: str | None = None  # "mlp" (default) or "transformer"
    prefix_length: int | None = None  # default 10
    clip_length: int | None = None  # default 10 (transformer mapper)
    num_layers: int | None = None  # default 8 (transformer mapper)
    normalize_prefix: bool | None = None  # default False
    language: str | None = None  # the captions' language tag (default: en)
    finetune_lm: bool | None = None  # default: yes with the MLP mapper, no with the transformer
    # optimisation (defaults: the paper's COCO run)
    epochs: int = 10
    batch_size: int = 40  # per process
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_steps: int = 5000
    max_steps: int | None = None  # stop after this many optimizer steps (the schedule ends here)
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    precision: str = "auto"
    max_length: int = 40  # caption tokens, end-of-text included
    seed: int = 0
    val_fraction: float = 0.01  # images held out for the validation loss
    # running (free to change on --resume)
    device: str | None = None
    workers: int = 2
    save_every: int = 1000  # steps; 0: only at epoch ends
    keep: int = 3
    log_every: int = 50
    samples: int = 3  # sample captions logged each epoch
    resume: bool = False

    def validate(self) -> TrainOptions:
        checks = [
            (self.epochs >= 1, "--epochs must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.lr > 0, "--lr must be > 0"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.warmup_steps >= 0, "--warmup-steps must be >= 0"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1"),
            (self.grad_clip >= 0, "--grad-clip must be >= 0 (0: off)"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.max_length >= 2, "--max-length must be >= 2"),
            (0.0 <= self.val_fraction < 1.0, "--val-fraction must be in [0, 1)"),
            (self.workers >= 0, "--workers must be >= 0"),
            (self.save_every >= 0, "--save-every must be >= 0"),
            (self.keep >= 1, "--keep must be >= 1"),
            (self.log_every >= 1, "--log-every must be >= 1"),
            (self.samples >= 0, "--samples must be >= 0"),
            (self.mapping in (None, "mlp", "transformer"), "--mapping must be mlp or transformer"),
            (
                self.language is None or is_language_tag(self.language),
                "--language must be a language tag such as en or pt-BR",
            ),
            (
                not (self.init and (self.image_encoder or self.language_model)),
                "--init takes the image encoder and language model from a model directory: "
                "give either --init or --image-encoder/--language-model",
            ),
            (not self.keep_mapper or self.init, "--keep-mapper needs --init MODEL_DIR"),
        ]
        for name in ("prefix_length", "clip_length", "num_layers"):
            v = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            checks.append((v is None or v >= 1, f"{flag} must be >= 1"))
        for ok, message in checks:
            if not ok:
                raise InvalidSettings(message)
        return self


# --- optimisation ----------------------------------------------------------------------


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on a GPU that has it (fp16 + loss scaling on older ones); on the CPU bf16
    where it has bfloat16 instructions (AVX512-BF16: 1.4-1.6x faster there), else fp32 (an
    emulated bf16 is slower than fp32)."""
    cuda = device.type == "cuda"
    if precision == "auto":
        if not cuda:
            return "bf16" if cpu_kernel.cpu_supported() else "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise InvalidSettings("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise InvalidSettings("this GPU has no bfloat16; use --precision fp16")
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def make_optimizer(
    params: Sequence[nn.Parameter], lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    # fused AdamW: one kernel for every parameter on CUDA (same maths)
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    params: Sequence[nn.Parameter],
    *,
    device: torch.device,
    precision: str,
    grad_clip: float,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One optimizer step on a batch already on ``device``; returns the loss (not synced,
    so a GPU is never made to wait for a number nobody reads yet)."""
    with autocast(device, precision):
        # no attention mask: with right padding and causal attention it changes nothing for
        # the scored positions, and without it attention takes the fast causal kernels
        out = model(batch["embeds"], batch["input_ids"], labels=batch["labels"])
    loss = out.loss
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@torch.no_grad()
def validation_loss(
    model: ClipCapModel, loader: DataLoader, device: torch.device, precision: str, dist_on: bool
) -> float:
    """Mean loss per caption token over the validation set (all ranks together)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (loss sum, tokens)
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, precision):
            out = model(batch["embeds"], batch["input_ids"], labels=batch["labels"])
        n = (batch["labels"] != IGNORE).sum()
        total += torch.stack((out.loss.double() * n, n.double()))
    if dist_on:
        dist.all_reduce(total)
    model.train(was_training)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


@torch.no_grad()
def sample_captions(
    model: ClipCapModel, tokenizer: PreTrainedTokenizerBase, embeds: torch.Tensor
) -> list[str]:
    """Greedy captions of some CLIP embeddings, through the same decoder the service uses."""
    was_training = model.training
    model.eval()
    try:
        lm = CachedGPT2(model.lm, pack=False)
        prefix = model.prefix(embeds.to(lm.device, torch.float32))
        room = lm.max_positions - prefix.shape[1]
        settings = DecodingSettings(max_tokens=max(1, min(40, room)))
        stop_ids = tokenizer.encode(settings.stop_token or "")
        stop = StopRule(stop_ids[0] if stop_ids else None, tokenizer.eos_token_id)
        rows = generate(lm, prefix.to(lm.dtype), settings, stop)
        return [tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows]
    finally:
        model.train(was_training)


# Options that define the run: a resumed run must have the same ones to continue exactly.
_IDENTITY = (
    "init",
    "keep_mapper",
    "image_encoder",
    "language_model",
    "mapping",
    "prefix_length",
    "clip_length",
    "num_layers",
    "normalize_prefix",
    "finetune_lm",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "max_steps",
    "grad_clip",
    "max_length",
    "seed",
    "val_fraction",
)


# --- the run ---------------------------------------------------------------------------


class Trainer:
    """Holds one run's state; ``fit()`` is the loop."""

    def __init__(self, opts: TrainOptions) -> None:
        self.opts = opts.validate()
        self.out = Path(opts.out_dir)
        self.dist, self.device = init_distributed(opts.device)
        self.precision = resolve_precision(opts.precision, self.device)
        self.store = EmbeddingStore.open(opts.embeddings)
        self._check_output()

    # setup ------------------------------------------------------------------------------

    def _check_output(self) -> None:
        if self.opts.resume:
            return
        if checkpoint_dirs(self.out) or (self.out / FINAL).exists():
            raise OutputExists(
                f"{self.out} already holds a training run: pass --resume to continue it, "
                "or choose another OUT_DIR"
            )

    def _identity(self) -> dict[str, Any]:
        ident = {k: getattr(self.opts, k) for k in _IDENTITY}
        ident["precision"] = self.precision
        ident["world_size"] = self.dist.world
        ident["embeddings"] = {
            "rows": self.store.index.rows,
            "vision_sha": self.store.encoder.vision_sha,
            "dataset": self.store.index.dataset,
        }
        return ident

    def setup(self) -> None:
        """Load the data and the model (fresh or from the newest checkpoint); ``fit`` calls it."""
        opts, dev = self.opts, self.device
        found = checkpoint_dirs(self.out) if opts.resume else []
        resume_from = found[-1] if found else None
        if opts.resume and resume_from is None and self.dist.main:
            print(f"no checkpoint in {self.out / CHECKPOINTS}: starting afresh", file=sys.stderr)
        self._seed(opts.seed)
        if resume_from is not None:
            self.meta, state = read_checkpoint(resume_from)
            self._check_identity(self.meta["identity"], resume_from)
            model, self.tokenizer = load_pretrained(resume_from)
            self.origin = self.meta["origin"]
        else:
            self.meta, state = None, None
            model, self.tokenizer, self.origin = build_model(opts, self.store.encoder)
        self.finetune_lm = (
            opts.finetune_lm if opts.finetune_lm is not None else model.config.mapping_type == "mlp"
        )
        set_trainable(model, self.finetune_lm)
        # GPT2LMHeadModel's class name maps to no loss type: name the one it falls back to
        model.lm.loss_type = "ForCausalLM"
        self.model = model.to(dev)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ddp = self.model
        if self.dist.on:
            ids = [dev.index] if dev.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, broadcast_buffers=False
            )
        self._data()
        self.optimizer = make_optimizer(self.params, opts.lr, opts.weight_decay, dev)
        self.total_steps = self.batches_per_epoch * opts.epochs
        if opts.max_steps is not None:
            self.total_steps = min(self.total_steps, opts.max_steps)
        if opts.warmup_steps >= self.total_steps and self.dist.main:
            print(
                f"note: --warmup-steps {opts.warmup_steps} >= the run's {self.total_steps} "
                "steps: the learning rate never reaches --lr",
                file=sys.stderr,
            )
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, opts.warmup_steps, self.total_steps
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.step, self.epoch, self.batch = 0, 0, 0
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"][self.dist.rank], dev)
            self.step, self.epoch, self.batch = (
                self.meta["step"],
                self.meta["epoch"],
                self.meta["batch"],
            )
            if self.dist.main:
                print(
                    f"resumed from {resume_from} (step {self.step}, epoch {self.epoch + 1}, "
                    f"batch {self.batch})",
                    file=sys.stderr,
                )
        else:
            # each rank its own dropout noise; the model above was built the same on every rank
            self._seed(opts.seed + self.dist.rank)
        if self.dist.main:  # what an interrupted run logged after its last checkpoint goes
            self._truncate_log(self.step)

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _check_identity(self, saved: dict[str, Any], path: Path) -> None:
        now = json.loads(json.dumps(self._identity()))  # the same JSON round trip as saved
        diff = [
            f"{k}: {saved.get(k)!r} in the checkpoint, {now[k]!r} now"
            for k in now
            if saved.get(k) != now[k]
        ]
        if diff:
            raise ResumeMismatch(
                f"{path} was made with other settings; resume with the same ones ("
                + "; ".join(diff)
                + ")"
            )

    def _data(self) -> None:
        opts = self.opts
        embeds, records = self.store.load()
        if not records:
            raise TrainingError(f"{opts.embeddings} holds no embeddings")
        train_rows, val_rows = split_by_image(records, opts.val_fraction, opts.seed)
        self.train_set = caption_set(embeds, records, train_rows, self.tokenizer, opts.max_length)
        self.val_set = caption_set(embeds, records, val_rows, self.tokenizer, opts.max_length)
        if len(self.train_set) == 0:
            raise TrainingError(f"{opts.embeddings} holds no captions to train on")
        pad = self.tokenizer.eos_token_id
        inner = DistributedSampler(
            self.train_set,
            num_replicas=self.dist.world,
            rank=self.dist.rank,
            shuffle=True,
            seed=opts.seed,
            drop_last=False,
        )
        self.sampler = ResumableSampler(inner)
        self.loader = self._loader(self.train_set, self.sampler, pad)
        self.batches_per_epoch = math.ceil(len(inner) / opts.batch_size)
        self.val_loader = None
        if len(self.val_set):
            val_sampler = DistributedSampler(
                self.val_set, num_replicas=self.dist.world, rank=self.dist.rank, shuffle=False
            )
            self.val_loader = self._loader(self.val_set, val_sampler, pad)
        # sample captions: the first images of the held-out set (else of the training set)
        rows = val_rows or train_rows
        seen: dict[str, int] = {}
        for r in rows:
            if len(seen) >= opts.samples:
                break
            seen.setdefault(str(records[r]["image"]), r)
        self.sample_rows = list(seen.values())
        self.sample_embeds = embeds[self.sample_rows] if self.sample_rows else None
        self.records = records
        self.counts = {
            "images": len({str(r["image"]) for r in records}),
            "train_captions": len(self.train_set),
            "val_captions": len(self.val_set),
        }

    def _loader(self, dataset: Dataset, sampler: Sampler, pad: int) -> DataLoader:
        workers = self.opts.workers
        return DataLoader(
            dataset,
            batch_size=self.opts.batch_size,
            sampler=sampler,
            collate_fn=Collate(pad),
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.device.type == "cuda",
            # its own generator: creating an iterator must not draw from the global RNG,
            # or a resumed run's dropout noise would differ from the uninterrupted run's
            generator=torch.Generator().manual_seed(self.opts.seed),
        )

    # logging ----------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / LOG_NAME).open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Drop what the interrupted run logged after the checkpoint it resumes from."""
        path = self.out / LOG_NAME
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    # the loop ---------------------------------------------------------------------------

    def fit(self) -> Path:
        if not hasattr(self, "model"):
            self.setup()
        opts, main = self.opts, self.dist.main
        if main:
            c = self.counts
            print(
                f"training on {c['train_captions']} captions ({c['images']} images, "
                f"{c['val_captions']} validation captions): {self.model.config.mapping_type} "
                f"mapper, GPT-2 {'fine-tuned' if self.finetune_lm else 'frozen'}, "
                f"{self.total_steps} steps, {self.precision} on {self.device}"
                + (f" x {self.dist.world} processes" if self.dist.on else ""),
                file=sys.stderr,
            )
        train_mode(self.model, self.finetune_lm)
        # loss sums stay on the device: reading one makes a GPU wait, so only log lines do
        running, epoch_loss = self._zero(), self._zero()
        n_running = n_epoch = 0
        while self.epoch < opts.epochs and self.step < self.total_steps:
            self.sampler.set_epoch(self.epoch, skip=self.batch * opts.batch_size)
            bar = tqdm(
                total=self.batches_per_epoch,
                initial=self.batch,
                desc=f"epoch {self.epoch + 1}/{opts.epochs}",
                unit="batch",
                disable=not main,
                dynamic_ncols=True,
            )
            for batch in self.loader:
                loss = train_step(
                    self.ddp,
                    to_device(batch, self.device),
                    self.optimizer,
                    self.scheduler,
                    self.params,
                    device=self.device,
                    precision=self.precision,
                    grad_clip=opts.grad_clip,
                    scaler=self.scaler,
                )
                self.step += 1
                self.batch += 1
                running += loss
                epoch_loss += loss
                n_running, n_epoch = n_running + 1, n_epoch + 1
                bar.update()
                if self.step % opts.log_every == 0:
                    mean = running.item() / n_running
                    running.zero_()
                    n_running = 0
                    lr = self.scheduler.get_last_lr()[0]
                    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                    self._log({"step": self.step, "epoch": self.epoch + 1, "loss": mean, "lr": lr})
                last_batch = self.batch >= self.batches_per_epoch
                if opts.save_every and self.step % opts.save_every == 0 and not last_batch:
                    self._checkpoint()
                if self.step >= self.total_steps:
                    break
            bar.close()
            finished_epoch = self.batch >= self.batches_per_epoch
            self._end_of_epoch(epoch_loss.item() / n_epoch if n_epoch else None, finished_epoch)
            train_mode(self.model, self.finetune_lm)  # validation left everything in eval
            epoch_loss.zero_()
            n_epoch = 0
            if finished_epoch:
                self.epoch, self.batch = self.epoch + 1, 0
            self._checkpoint()
        final = self.out / FINAL
        if main:
            self.model.config.source = self._source()
            final = save_final(self.out, self.model, self.tokenizer)
            self._log({"step": self.step, "done": True, "final": str(final)})
            print(f"saved the trained model to {final}", file=sys.stderr)
        self._barrier()
        return final

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float64, device=self.device)

    def _end_of_epoch(self, train_loss: float | None, finished: bool) -> None:
        """Validation loss and sample captions, logged (rank 0)."""
        val = (
            validation_loss(self.model, self.val_loader, self.device, self.precision, self.dist.on)
            if self.val_loader is not None
            else None
        )
        if not self.dist.main:
            return
        samples = []
        if self.sample_embeds is not None:
            texts = sample_captions(self.model, self.tokenizer, self.sample_embeds)
            for r, text in zip(self.sample_rows, texts, strict=True):
                rec = self.records[r]
                ref = rec["captions"][0] if rec.get("captions") else ""
                samples.append({"image": str(rec["image"]), "caption": text, "reference": ref})
        self._log(
            {
                "step": self.step,
                "epoch": self.epoch + 1,
                "epoch_done": finished,
                "train_loss": train_loss,
                "val_loss": val,
                "samples": samples,
            }
        )
        parts = [f"epoch {self.epoch + 1}/{self.opts.epochs} (step {self.step})"]
        if train_loss is not None:
            parts.append(f"train loss {train_loss:.4f}")
        if val is not None:
            parts.append(f"validation loss {val:.4f}")
        tqdm.write(", ".join(parts), file=sys.stderr)
        for s in samples:
            tqdm.write(
                f"  {Path(s['image']).name}: {s['caption']!r}  (ref: {s['reference']!r})",
                file=sys.stderr,
            )

    def _checkpoint(self) -> None:
        """All ranks hand in their RNG states; rank 0 writes."""
        rng = rng_state(self.device)
        if self.dist.on:
            gathered: list[Any] = [None] * self.dist.world
            dist.all_gather_object(gathered, rng)
            rng = gathered
        else:
            rng = [rng]
        if self.dist.main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "rng": rng,
            }
            meta = {
                "format": CKPT_FORMAT,
                "version": 1,
                "step": self.step,
                "epoch": self.epoch,  # the epoch to continue in (0-based)
                "batch": self.batch,  # batches of that epoch already done (this rank)
                "total_steps": self.total_steps,
                "origin": self.origin,
                "identity": self._identity(),
                "options": asdict(self.opts),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            self.model.config.source = self._source()
            save_checkpoint(self.out, self.model, self.tokenizer, state, meta, self.opts.keep)
        self._barrier()

    def _barrier(self) -> None:
        if self.dist.on:
            dist.barrier()

    def _source(self) -> str:
        c = self.counts
        lm = "fine-tuned" if self.finetune_lm else "frozen"
        return (
            f"trained with `python -m captioner train` on {self.opts.embeddings} "
            f"({c['images']} images, {c['train_captions']} training captions): "
            f"{self.model.config.mapping_type} mapper, GPT-2 {lm}, {self.step}/"
            f"{self.total_steps} steps, batch {self.opts.batch_size} x {self.dist.world}, "
            f"lr {self.opts.lr}; {self.origin}"
        )


def train(opts: TrainOptions) -> Path:
    """Run (or resume) training; returns the final model directory."""
    try:
        return Trainer(opts).fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# --- CLI -------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
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
    p.add_argument("embeddings", metavar="EMBEDDINGS", help="embedding store (from `embed`)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output: final/, checkpoints/, log.jsonl")
    g = p.add_argument_group("where the model's parts come from")
    g.add_argument(
        "--init",
        metavar="MODEL",
        help="AltCap model directory, name or Hub id: its image encoder, GPT-2 and tokenizer "
        "are used (its image encoder must be the one that made the embeddings)",
    )
    g.add_argument(
        "--keep-mapper",
        action="store_true",
        help="start from --init's mapper too (the mapping options must match it)",
    )
    g.add_argument(
        "--image-encoder",
        metavar="ID|DIR",
        help="CLIP vision model, Hub id or directory (default: the one that made the embeddings)",
    )
    g.add_argument(
        "--language-model",
        metavar="ID|DIR",
        help="GPT-2 weights + tokenizer, Hub id or directory (default: gpt2)",
    )
    m = p.add_argument_group("model (defaults: --init's, else the paper's)")
    m.add_argument(
        "--mapping",
        choices=["mlp", "transformer"],
        help="mlp: the paper's MLP with GPT-2 fine-tuned; transformer: its transformer "
        "mapper with GPT-2 frozen (default: mlp)",
    )
    m.add_argument("--prefix-length", type=int, help="GPT-2 embeddings per image (default: 10)")
    m.add_argument("--clip-length", type=int, help="transformer mapper: CLIP tokens (default: 10)")
    m.add_argument("--num-layers", type=int, help="transformer mapper: layers (default: 8)")
    m.add_argument(
        "--normalize-prefix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise the CLIP embedding before the mapper (default: off)",
    )
    m.add_argument(
        "--language",
        metavar="TAG",
        help="the language of the training captions, as a BCP 47 tag (en, de, pt-BR): "
        "services mark the captions with it (HTML lang) (default: --init's, else en)",
    )
    m.add_argument(
        "--finetune-lm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train GPT-2's weights too (default: yes with mlp, no with transformer)",
    )
    o = p.add_argument_group("optimisation (defaults: the paper's COCO run)")
    o.add_argument("--epochs", type=int, default=10, help="(default: %(default)s)")
    o.add_argument(
        "--batch-size", type=int, default=40, help="captions per step per process (default: 40)"
    )
    o.add_argument("--lr", type=float, default=2e-5, help="AdamW peak learning rate (2e-5)")
    o.add_argument("--weight-decay", type=float, default=0.0, help="AdamW (default: 0)")
    o.add_argument(
        "--warmup-steps",
        type=int,
        default=5000,
        help="linear warm-up over N steps, then linear decay to 0 (default: 5000)",
    )
    o.add_argument(
        "--max-steps", type=int, default=None, help="stop (and end the schedule) after N steps"
    )
    o.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm; 0: off (1.0)")
    o.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 on a GPU that has it (else fp16 with loss scaling), fp32 on the CPU",
    )
    o.add_argument(
        "--max-length", type=int, default=40, help="caption tokens, end-of-text included (40)"
    )
    o.add_argument("--seed", type=int, default=0, help="init, data order, dropout (default: 0)")
    o.add_argument(
        "--val-fraction",
        type=float,
        default=0.01,
        help="images held out with all their captions for the validation loss (0.01)",
    )
    r = p.add_argument_group("running (may change on --resume)")
    r.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    r.add_argument("--workers", type=int, default=2, help="data loader processes (default: 2)")
    r.add_argument(
        "--save-every",
        type=int,
        default=1000,
        help="checkpoint every N steps (1000); 0: epochs only",
    )
    r.add_argument("--keep", type=int, default=3, help="checkpoints kept, newest (default: 3)")
    r.add_argument("--log-every", type=int, default=50, help="steps per loss line (50)")
    r.add_argument("--samples", type=int, default=3, help="sample captions per epoch (3)")
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from OUT_DIR's newest checkpoint (same options required)",
    )
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    names = TrainOptions.__dataclass_fields__
    return TrainOptions(**{k: getattr(args, k) for k in names if hasattr(args, k)})


def run(args: argparse.Namespace) -> int:
    final = train(options_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:
        print(final)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from ..cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
