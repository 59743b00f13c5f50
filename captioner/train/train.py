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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from captioner.config import DecodingSettings
from captioner.errors import InvalidSettings
from captioner.model.checkpoints import load_pretrained
from captioner.model.modeling import ClipCapModel
from captioner.runtime import cpu_kernel
from captioner.runtime.decoding import generate
from captioner.runtime.lm import CachedGPT2
from captioner.runtime.stopping import StopRule
from captioner.train.checkpoint import (
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
from captioner.train.collapse import PROBE_IMAGES, one_caption_for_all, train_warning
from captioner.train.dataset import IGNORE, Collate, ResumableSampler, caption_set, split_by_image
from captioner.train.distributed import init_distributed
from captioner.train.options import TrainOptions, options_from_args
from captioner.train.parts import (
    build_model,
    detach_text_tower,
    set_trainable,
    train_mode,
    with_text_tower,
)
from captioner.train.store import EmbeddingStore

log = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"


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


class RunningLoss:
    """The progress bar's loss: a running average over the last ~20 steps, updated every
    step without ever making the GPU wait.

    The exact means (over --log-every steps) are read back only at log lines: reading a loss
    on the host waits for its step to finish, which would stall a GPU every step. Here the
    average is kept on the device and copied to pinned host memory asynchronously; each step
    shows the newest copy that has arrived (on a GPU, about a step old) and starts the next
    copy once it has. On the CPU the loss is already there: it is read at once."""

    BETA = 0.95  # weight of the past: an average over about 1 / (1 - BETA) = 20 steps

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.ema = torch.zeros((), dtype=torch.float32, device=device)
        self.host = torch.zeros((), dtype=torch.float32, pin_memory=self.cuda)
        self.event = torch.cuda.Event() if self.cuda else None
        self.steps = 0
        self.copied_at = 0  # the step of the copy in flight (0: none)
        self.value: float | None = None

    def update(self, loss: torch.Tensor) -> float | None:
        """Fold in this step's loss; returns the newest average on the host (None at first
        on a GPU)."""
        self.steps += 1
        self.ema.mul_(self.BETA).add_(loss.detach().float(), alpha=1 - self.BETA)
        if not self.cuda:
            return self.ema.item() / (1 - self.BETA**self.steps)  # bias-corrected, as Adam
        if self.copied_at and self.event.query():  # the copy arrived: no wait
            self.value = self.host.item() / (1 - self.BETA**self.copied_at)
            self.copied_at = 0
        if not self.copied_at:
            self.host.copy_(self.ema, non_blocking=True)
            self.event.record()
            self.copied_at = self.steps
        return self.value


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
            model, self.tokenizer, self.origin = build_model(
                opts, self.store.encoder, main=self.dist.main
            )
        # CLIP's text tower has no part in the loss: it waits on the CPU to be saved along
        self.text_tower = detach_text_tower(model)
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
        # captioned at each epoch's end: the first images of the held-out set (else of the
        # training set); the first --samples are shown, all are checked for one caption
        rows = val_rows or train_rows
        seen: dict[str, int] = {}
        for r in rows:
            if len(seen) >= max(opts.samples, PROBE_IMAGES):
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
        bar_loss = RunningLoss(self.device)  # the bar's loss: every step, never a wait
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
                lr = self.scheduler.get_last_lr()[0]
                shown = bar_loss.update(loss)
                if shown is not None:  # drawn at tqdm's pace, not per call
                    bar.set_postfix(loss=f"{shown:.4f}", lr=f"{lr:.2e}", refresh=False)
                bar.update()
                if self.step % opts.log_every == 0:
                    mean = running.item() / n_running
                    running.zero_()
                    n_running = 0
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
            final = save_final(self.out, self._to_save(), self.tokenizer)
            self._log({"step": self.step, "done": True, "final": str(final)})
            print(f"saved the trained model to {final}", file=sys.stderr)
        self._barrier()
        return final

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float64, device=self.device)

    def _end_of_epoch(self, train_loss: float | None, finished: bool) -> None:
        """Validation loss and sample captions, logged (rank 0); a warning when every
        held-out image gets one caption."""
        val = (
            validation_loss(self.model, self.val_loader, self.device, self.precision, self.dist.on)
            if self.val_loader is not None
            else None
        )
        if not self.dist.main:
            return
        probed = []
        if self.sample_embeds is not None:
            texts = sample_captions(self.model, self.tokenizer, self.sample_embeds)
            for r, text in zip(self.sample_rows, texts, strict=True):
                rec = self.records[r]
                ref = rec["captions"][0] if rec.get("captions") else ""
                probed.append({"image": str(rec["image"]), "caption": text, "reference": ref})
        samples = probed[: self.opts.samples]
        captions = [p["caption"] for p in probed]
        self._log(
            {
                "step": self.step,
                "epoch": self.epoch + 1,
                "epoch_done": finished,
                "train_loss": train_loss,
                "val_loss": val,
                "samples": samples,
                "distinct_captions": len(set(captions)),  # of the probed held-out images
                "probed_images": len(captions),
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
        collapse = one_caption_for_all(captions, [p["reference"] for p in probed])
        if collapse is not None:
            tqdm.write(train_warning(collapse, self.opts.lr), file=sys.stderr)

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
            save_checkpoint(self.out, self._to_save(), self.tokenizer, state, meta, self.opts.keep)
        self._barrier()

    def _to_save(self) -> ClipCapModel:
        """The model as saved: the trained one with CLIP's text tower back, if it has one."""
        return with_text_tower(self.model, self.text_tower)

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


def run(args: argparse.Namespace) -> int:
    final = train(options_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:
        print(final)
    return 0
