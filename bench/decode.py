"""Decoding benchmark: captions/s end to end from pixel tensors, full-size random weights.

ViT-B/32 + GPT-2 124M + MLP prefix 10 with random weights (cost does not depend on the
values); every caption is forced to 20 new tokens. One run measures, in the same process:

- naive: the reference ClipCap loop (batch 1, whole sequence re-run each step, no cache);
- transformers ``generate`` with a KV cache, dynamic and static (the off-the-shelf choice);
- AltCap (cached GPT-2, prepacked weights on CPU, CUDA graphs on GPU) at several batch sizes;

in float32 and bfloat16, plus single-image latency percentiles and how far bfloat16
captions drift from float32 ones. Prints a Markdown table (and JSON with --json).

With ``--confidence``, the same model with CLIP ViT-B/32's text tower scores every caption
(what the confidence costs); with ``--rerank``, beam search (beam_size 5) against its 5 best
beams reranked by CLIP (``candidates=5``), both with the text tower, at batch 32.

    python bench/decode.py                  # CPU
    python bench/decode.py --device cuda    # GPU: adds large batches
    python bench/decode.py --dtypes bfloat16 --batches 32 --skip-baselines --confidence --rerank
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import CLIPTextConfig, CLIPVisionConfig, GPT2Config

from captioner.config import ClipCapConfig, DecodingSettings
from captioner.model.modeling import ClipCapModel
from captioner.pipeline import Captioner
from captioner.runtime.reference import reference_greedy

NEW_TOKENS = 20
FORCED = DecodingSettings(
    max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, stop_token=None, stop_at_eos=False
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class IdTokenizer:
    """Stands in for GPT-2's tokenizer (not downloadable here): decoding is not measured."""

    eos_token_id = 50256

    def encode(self, text: str) -> list[int]:
        return [13]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


class ClipIdTokenizer:
    """Stands in for CLIP's tokenizer: one token a word, between start and end tokens, so a
    caption of the forced 20 new tokens costs the text tower what a 20-token caption does."""

    eos_token_id = 49407

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict:
        return {"input_ids": [[49406, *(320 for _ in t.split()), 49407] for t in texts]}


def full_size_model(seed: int = 0, text_tower: bool = False) -> ClipCapModel:
    """With ``text_tower``, also CLIP ViT-B/32's text tower (the other weights are the same)."""
    torch.manual_seed(seed)
    cfg = ClipCapConfig(
        vision_config=CLIPVisionConfig(projection_dim=512).to_dict(),  # ViT-B/32
        text_config=GPT2Config().to_dict(),  # GPT-2 124M
        prefix_length=10,
        clip_text_config=CLIPTextConfig(projection_dim=512).to_dict() if text_tower else {},
    )
    model = ClipCapModel.from_config(cfg).eval()
    model.clip_tokenizer = ClipIdTokenizer() if text_tower else None
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    fn()  # warm-up (oneDNN primitive creation, CUDA graph capture, allocator)
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def pixels(n: int, device: torch.device, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 224, 224, generator=g).to(device, dtype)


def bench_naive(model: ClipCapModel, device, dtype, n_images: int) -> float:
    """The reference loop, image by image: captions/s."""
    px = pixels(n_images, device, dtype)

    def run():
        with torch.inference_mode():
            for i in range(n_images):
                prefix = model.prefix(model.encode_images(px[i : i + 1]))
                reference_greedy(model.lm, prefix, None, NEW_TOKENS, min_tokens=NEW_TOKENS)

    return n_images / statistics.median(timed(run, device, 1))


def bench_generate(model: ClipCapModel, device, dtype, batch: int, cache: str) -> float:
    """transformers ``generate`` on the prefix embeddings (greedy, KV cache): captions/s."""
    px = pixels(batch, device, dtype)
    kwargs = dict(
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=50256,
    )
    if cache == "static":
        kwargs["cache_implementation"] = "static"

    def run():
        with torch.inference_mode():
            prefix = model.prefix(model.encode_images(px))
            mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=device)
            model.lm.generate(inputs_embeds=prefix, attention_mask=mask, **kwargs)

    return batch / statistics.median(timed(run, device, 2 if batch > 1 else 3))


def bench_altcap(cap: Captioner, batch: int, repeats: int) -> tuple[float, list[float]]:
    px = pixels(batch, cap.device, cap.dtype)
    times = timed(lambda: cap.caption_pixels(px, FORCED), cap.device, repeats)
    return batch / statistics.median(times), times


def bench_confidence(plain: Captioner, scored: Captioner, dtype: str, batch: int) -> dict:
    """Captioning with and without a confidence on every caption, interleaved (a shared
    machine drifts): captions/s with it and the time it adds, as a share of captioning."""
    px = pixels(batch, plain.device, plain.dtype)
    without, with_, text_ms = [], [], []
    plain.caption_pixels(px, FORCED), scored.caption_pixels(px, FORCED)  # warm-up
    for _ in range(5):
        without.append(timed_once(lambda: plain.caption_pixels(px, FORCED), plain.device))
        t = time.perf_counter()
        result = scored.caption_pixels(px, FORCED)
        sync(scored.device)
        with_.append(time.perf_counter() - t)
        text_ms.append(result[0].timings["confidence_ms"])
    base, scored_s = statistics.median(without), statistics.median(with_)
    return {
        "method": "AltCap + confidence",
        "dtype": dtype,
        "batch": batch,
        "captions_s": batch / scored_s,
        "confidence_ms": statistics.median(text_ms),
        "added_pct": 100 * statistics.median(text_ms) / 1e3 / base,
        "wall_added_pct": 100 * (scored_s - base) / base,
    }


RERANK_BATCH = 32  # images per batch for --rerank (the figure)
BEAM = DecodingSettings(
    method="beam",
    beam_size=5,
    max_tokens=NEW_TOKENS,
    min_tokens=NEW_TOKENS,
    stop_token=None,
    stop_at_eos=False,
)


def bench_rerank(scored: Captioner, dtype: str, batch: int) -> list[dict]:
    """Beam search (beam_size 5, its best beam scored) against its 5 best beams all scored
    by the text tower and reranked, interleaved: captions/s and the time reranking adds."""
    px = pixels(batch, scored.device, scored.dtype)
    rerank = replace(BEAM, candidates=5)
    runs: dict[str, list[float]] = {"beam": [], "rerank": []}
    text_ms: dict[str, list[float]] = {"beam": [], "rerank": []}
    candidates = []
    scored.caption_pixels(px, BEAM), scored.caption_pixels(px, rerank)  # warm-up
    for _ in range(5):
        for name, settings in (("beam", BEAM), ("rerank", rerank)):
            t = time.perf_counter()
            result = scored.caption_pixels(px, settings)
            sync(scored.device)
            runs[name].append(time.perf_counter() - t)
            text_ms[name].append(result[0].timings["confidence_ms"])
            if name == "rerank":
                candidates.append(sum(len(r.candidates) for r in result) / len(result))
    beam_s, rerank_s = statistics.median(runs["beam"]), statistics.median(runs["rerank"])
    return [
        {
            "method": "AltCap beam 5 + confidence",
            "dtype": dtype,
            "batch": batch,
            "captions_s": batch / beam_s,
            "confidence_ms": statistics.median(text_ms["beam"]),
        },
        {
            "method": "AltCap beam 5 + rerank 5",
            "dtype": dtype,
            "batch": batch,
            "captions_s": batch / rerank_s,
            "confidence_ms": statistics.median(text_ms["rerank"]),
            "candidates_per_image": statistics.mean(candidates),
            "wall_added_pct": 100 * (rerank_s - beam_s) / beam_s,  # against beam 5 + confidence
        },
    ]


def timed_once(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def machine_probe() -> dict[str, float]:
    """What this (shared) CPU gives right now: memory bandwidth and bfloat16 matrix product
    speed, so that a run can be read against the state of the machine it ran in."""
    src = torch.empty(64 * 2**20, dtype=torch.float32).fill_(1.0)  # 256 MB, past any cache
    dst = torch.empty_like(src)
    a = torch.randn(1600, 768).to(torch.bfloat16)
    b = torch.randn(768, 3072).to(torch.bfloat16)
    copy, matmul = [], []
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        copy.append(time.perf_counter() - t)
        t = time.perf_counter()
        a @ b
        matmul.append(time.perf_counter() - t)
    return {
        "copy_gb_s": 2 * src.numel() * 4 / min(copy) / 1e9,  # read + write
        "bf16_matmul_gflop_s": 2 * 1600 * 768 * 3072 / min(matmul) / 1e9,
    }


def drift(cap32: Captioner, cap16: Captioner, n: int) -> dict[str, float]:
    """How much bfloat16 changes the output of the same (random-weight) model."""
    px = pixels(n, cap32.device, torch.float32, seed=7)
    settings = DecodingSettings(max_tokens=NEW_TOKENS, stop_token=None, stop_at_eos=False)
    with torch.inference_mode():
        e32, e16 = cap32.embed(px), cap16.embed(px.to(cap16.dtype))
        cos = torch.nn.functional.cosine_similarity(e32, e16.float(), dim=-1)
    a = [r.raw.split() for r in cap32.caption_pixels(px, settings)]
    b = [r.raw.split() for r in cap16.caption_pixels(px.to(cap16.dtype), settings)]
    same = sum(x == y for x, y in zip(a, b, strict=True)) / n
    first = sum(x[0] == y[0] for x, y in zip(a, b, strict=True)) / n
    common = [
        next((i for i, (s, t) in enumerate(zip(x, y, strict=False)) if s != t), len(x))
        for x, y in zip(a, b, strict=True)
    ]
    return {
        "embedding_cosine_min": float(cos.min()),
        "identical_captions": same,
        "identical_first_token": first,
        "mean_common_prefix_tokens": sum(common) / n,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", default=None, help="comma list (default: 1,8,32 / GPU adds more)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--naive-images", type=int, default=2)
    p.add_argument("--latency-runs", type=int, default=15)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the CLIP tower (GPU)")
    p.add_argument(
        "--confidence",
        action="store_true",
        help="also time AltCap with CLIP's text tower scoring every caption (its added cost)",
    )
    p.add_argument(
        "--rerank",
        action="store_true",
        help=f"also time beam 5 against beam 5 + CLIP reranking of 5 (batch {RERANK_BATCH})",
    )
    args = p.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batches = [
        int(b)
        for b in (args.batches or ("1,8,32,256,1024,2048,4096" if gpu else "1,8,32")).split(",")
    ]
    rows: list[dict] = []
    info = {
        "device": torch.cuda.get_device_name(device) if gpu else f"CPU x{torch.get_num_threads()}",
        "torch": torch.__version__,
        "new_tokens": NEW_TOKENS,
    }
    print(f"# {info['device']}, torch {info['torch']}, {NEW_TOKENS} new tokens forced", flush=True)
    if not gpu:  # a shared machine: its state at the start and the end of the run
        info["probe_start"] = machine_probe()
        print(f"# machine now: {info['probe_start']}", flush=True)
    caps = {}
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        base = full_size_model().to(device, dtype)
        if not args.skip_baselines:
            naive = bench_naive(base, device, dtype, args.naive_images)
            rows.append(
                {"method": "naive (reference loop)", "dtype": name, "batch": 1, "captions_s": naive}
            )
            print(rows[-1], flush=True)
            for b in sorted({1, max(batches)} if gpu else {1, 32}):
                for cache in ("dynamic", "static"):
                    r = bench_generate(base, device, dtype, b, cache)
                    rows.append(
                        {
                            "method": f"transformers generate ({cache} cache)",
                            "dtype": name,
                            "batch": b,
                            "captions_s": r,
                        }
                    )
                    print(rows[-1], flush=True)
        del base
        cap = Captioner(
            full_size_model(), IdTokenizer(), device=device, dtype=dtype, compile=args.compile
        )
        caps[name] = cap
        for b in batches:
            rate, times = bench_altcap(cap, b, args.latency_runs if b == 1 else 5)
            row = {"method": "AltCap", "dtype": name, "batch": b, "captions_s": rate}
            if b == 1:
                ms = sorted(t * 1e3 for t in times)
                row["p50_ms"] = statistics.median(ms)
                row["p90_ms"] = ms[int(0.9 * (len(ms) - 1))]
            rows.append(row)
            print(row, flush=True)
        if args.confidence or args.rerank:  # the same model plus the text tower
            scored = Captioner(
                full_size_model(text_tower=True), IdTokenizer(), device=device, dtype=dtype
            )
            for b in batches if args.confidence else []:  # what confidence adds
                rows.append(bench_confidence(cap, scored, name, b))
                print(rows[-1], flush=True)
            for row in bench_rerank(scored, name, RERANK_BATCH) if args.rerank else []:
                rows.append(row)
                print(row, flush=True)
            del scored
    if not gpu:
        info["probe_end"] = machine_probe()
        print(f"# machine at the end: {info['probe_end']}", flush=True)
    result = {"info": info, "rows": rows}
    if "float32" in caps and "bfloat16" in caps:
        result["bf16_vs_fp32"] = drift(caps["float32"], caps["bfloat16"], 32)
        print("bf16 vs fp32:", result["bf16_vs_fp32"], flush=True)
    print()
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def markdown(rows: list[dict]) -> str:
    naive = {r["dtype"]: r["captions_s"] for r in rows if r["method"].startswith("naive")}
    gen: dict[tuple[str, int], float] = {}  # best generate (either cache) per dtype and batch
    for r in rows:
        if "generate" in r["method"]:
            key = (r["dtype"], r["batch"])
            gen[key] = max(gen.get(key, 0.0), r["captions_s"])
    lines = [
        "| method | dtype | batch | captions/s | × naive fp32 | × generate (same dtype, batch) "
        "| p50 / p90 ms (confidence: added) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        xn = f"{r['captions_s'] / naive['float32']:.1f}" if "float32" in naive else "–"
        key = (r["dtype"], r["batch"])
        xg = f"{r['captions_s'] / gen[key]:.2f}" if key in gen and r["method"] == "AltCap" else "–"
        lat = f"{r['p50_ms']:.0f} / {r['p90_ms']:.0f}" if "p50_ms" in r else ""
        if "added_pct" in r:  # the confidence / rerank rows: what scoring adds
            lat = f"+{r['confidence_ms']:.0f} ms (+{r['added_pct']:.1f}%)"
        elif "wall_added_pct" in r:  # rerank: its text-tower pass, its time against beam 5
            lat = f"text tower {r['confidence_ms']:.0f} ms; +{r['wall_added_pct']:.1f}% vs beam 5"
        elif "confidence_ms" in r:  # beam 5 with its text-tower pass
            lat = f"text tower {r['confidence_ms']:.0f} ms"
        lines.append(
            f"| {r['method']} | {r['dtype']} | {r['batch']} | {r['captions_s']:.2f} "
            f"| {xn} | {xg} | {lat} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
