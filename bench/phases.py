"""Where the time goes in one batch: CLIP, mapper, prefill, decoding steps (GPU or CPU)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.decode import FORCED, IdTokenizer, full_size_model, pixels
from captioner.pipeline import Captioner
from captioner.runtime.decoding import generate
from captioner.runtime.stopping import StopRule


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--profile", action="store_true", help="CUDA kernel profile of decoding")
    p.add_argument("--compile", action="store_true", help="torch.compile the CLIP tower")
    a = p.parse_args()
    if a.profile:
        profile_decode(a.batch)
        return
    cap = Captioner(
        full_size_model(), IdTokenizer(), device=a.device, dtype=a.dtype, compile=a.compile
    )
    px = pixels(a.batch, cap.device, cap.dtype)
    sync = torch.cuda.synchronize if cap.device.type == "cuda" else (lambda: None)
    rule = StopRule(None, None, FORCED.min_tokens)

    def phase(name, fn, n=3):
        fn()
        sync()
        t = time.perf_counter()
        for _ in range(n):
            out = fn()
        sync()
        print(f"{name:>10}: {(time.perf_counter() - t) / n * 1e3:8.1f} ms", flush=True)
        return out

    with torch.inference_mode():
        emb = phase("clip", lambda: cap.embed(px))
        prefix = phase("mapper", lambda: cap.model.prefix(emb.to(cap.dtype)))
        phase("prefill", lambda: cap.lm.forward(prefix, cap.lm.new_cache(a.batch, 30)))
        phase("decode", lambda: generate(cap.lm, prefix, FORCED, rule, cap.graphed))
        phase("total", lambda: cap.caption_pixels(px, FORCED))


def profile_decode(batch: int = 2048) -> None:
    """Top CUDA kernels of one forced-length greedy decode (``--profile``)."""
    from torch.profiler import ProfilerActivity, profile

    cap = Captioner(full_size_model(), IdTokenizer(), device="cuda", dtype="bfloat16")
    with torch.inference_mode():
        prefix = cap.model.prefix(cap.model.encode_images(pixels(batch, cap.device, cap.dtype)))
        rule = StopRule(None, None, FORCED.min_tokens)
        generate(cap.lm, prefix, FORCED, rule, cap.graphed)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            generate(cap.lm, prefix, FORCED, rule, cap.graphed)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
