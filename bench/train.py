"""Training benchmark: captions/s of a ClipCap training step at full size, both regimes.

ViT-B/32 (clip_dim 512) + GPT-2 124M with random weights built from their configs (the cost
does not depend on the values), random CLIP embeddings, captions of 20 tokens, prefix 10.
The step is the trainer's own (``captioner.train.train.train_step``: autocast, AdamW, grad
clipping, the linear schedule), so the figure is what ``python -m captioner train`` gets
per process, the data loader aside (it only stacks pre-tokenised rows). Regimes:

- mlp: MLP mapper + GPT-2 fine-tuned (the paper's main model; every weight gets a gradient);
- transformer: 8-layer transformer mapper + GPT-2 frozen (gradients flow through GPT-2's
  activations to the prefix, none are kept for its weights).

Prints a Markdown table with the time a COCO epoch (566,747 captions) would take.

    python bench/train.py                                   # CPU, batch 40, few steps
    python bench/train.py --device cuda --batch-size 256    # GPU (bf16 by default)
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import CLIPVisionConfig, GPT2Config, get_linear_schedule_with_warmup

from captioner.config import ClipCapConfig
from captioner.model.modeling import ClipCapModel
from captioner.train.dataset import IGNORE
from captioner.train.parts import set_trainable, train_mode
from captioner.train.train import make_optimizer, resolve_precision, train_step

COCO_CAPTIONS = 566_747  # COCO 2014 train + val captions, as ClipCap trains on them
REGIMES = {"mlp": ("mlp", True), "transformer": ("transformer", False)}


def full_size_model(mapping: str, seed: int = 0) -> ClipCapModel:
    torch.manual_seed(seed)
    cfg = ClipCapConfig(
        mapping_type=mapping,
        prefix_length=10,
        clip_length=10,
        num_layers=8,
        vision_config=CLIPVisionConfig(projection_dim=512).to_dict(),  # ViT-B/32
        text_config=GPT2Config().to_dict(),  # GPT-2 124M
    )
    model = ClipCapModel.from_config(cfg)
    model.lm.loss_type = "ForCausalLM"
    return model


def batch(size: int, length: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50257, (size, length), generator=g)
    ids[:, -1] = 50256  # end-of-text
    labels = ids.clone()
    labels[size // 2 :, -3:] = IGNORE  # half the rows padded: like a real batch
    b = {"embeds": torch.randn(size, 512, generator=g), "input_ids": ids, "labels": labels}
    return {k: v.to(device) for k, v in b.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    regime: str,
    device: torch.device,
    precision: str,
    batch_size: int,
    length: int,
    warmup: int,
    steps: int,
) -> dict:
    mapping, finetune = REGIMES[regime]
    model = full_size_model(mapping)
    set_trainable(model, finetune)
    model.to(device)
    train_mode(model, finetune)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, 2e-5, 0.0, device)
    sched = get_linear_schedule_with_warmup(opt, 5000, 10**6)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    data = batch(batch_size, length, device)

    def step() -> torch.Tensor:
        return train_step(
            model,
            data,
            opt,
            sched,
            params,
            device=device,
            precision=precision,
            grad_clip=1.0,
            scaler=scaler,
        )

    for _ in range(warmup):  # allocator, kernels, optimizer state
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    elapsed = time.perf_counter() - t
    assert torch.isfinite(loss), "the loss is not finite"
    per_s = batch_size * steps / elapsed
    row = {
        "regime": regime,
        "mapper": mapping,
        "gpt2": "fine-tuned" if finetune else "frozen",
        "trainable_params_m": round(sum(p.numel() for p in params) / 1e6, 1),
        "precision": precision,
        "batch": batch_size,
        "tokens": 10 + length,
        "steps": steps,
        "step_ms": round(elapsed / steps * 1e3, 1),
        "captions_s": round(per_s, 1),
        "coco_epoch_min": round(COCO_CAPTIONS / per_s / 60, 1),
    }
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
        torch.cuda.reset_peak_memory_stats(device)
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU x{torch.get_num_threads()} ({platform.machine()})"


def table(rows: list[dict], info: dict) -> str:
    lines = [
        f"Training throughput on {info['device']} (torch {info['torch']}), full-size ClipCap "
        f"(ViT-B/32 + GPT-2 124M), prefix 10 + {info['caption_tokens']} caption tokens:",
        "",
        "| regime | trainable | precision | batch | step | captions/s | COCO epoch (566,747) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        epoch = r["coco_epoch_min"]
        epoch_s = f"{epoch:.1f} min" if epoch < 120 else f"{epoch / 60:.1f} h"
        lines.append(
            f"| {r['mapper']} mapper + GPT-2 {r['gpt2']} | {r['trainable_params_m']}M | "
            f"{r['precision']} | {r['batch']} | {r['step_ms']:.0f} ms | {r['captions_s']:.1f} | "
            f"{epoch_s} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="default: 40 CPU, 256 GPU")
    p.add_argument("--regimes", default="mlp,transformer", help="comma list: mlp, transformer")
    p.add_argument("--caption-tokens", type=int, default=20)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (2 CPU, 10 GPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (4 CPU, 50 GPU)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("error: --device cuda but no CUDA GPU is available", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gpu = device.type == "cuda"
    precision = resolve_precision(args.precision, device)
    batch_size = args.batch_size or (256 if gpu else 40)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    steps = args.steps or (50 if gpu else 4)
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown or not regimes:
        print(f"error: unknown regime(s) {unknown}; use mlp, transformer", file=sys.stderr)
        return 2
    info = {
        "device": device_name(device),
        "torch": torch.__version__,
        "caption_tokens": args.caption_tokens,
        "coco_captions": COCO_CAPTIONS,
    }
    rows = []
    for regime in regimes:
        rows.append(
            measure(regime, device, precision, batch_size, args.caption_tokens, warmup, steps)
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(table(rows, info))
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
