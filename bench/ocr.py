"""OCR benchmark: how well and how fast each engine reads web images of text.

A labelled set from ``bench/textimages.py`` (buttons, banners, headings, light on dark, two
lines, small UI text, text over photo-like backgrounds, and pictures without text) is read
by each engine compared:

- ``altcap``: Tesseract 5 through AltCap's reader (``captioner.read``: polarity, upscaling,
  margins, fragment filters, second passes on photos) — what AltCap ships;
- ``tesseract``: the same Tesseract and language data, the image given as it is;
- ``rapidocr``: RapidOCR (PP-OCR models on onnxruntime), when ``rapidocr-onnxruntime`` is
  installed (``pip install rapidocr-onnxruntime``; not a dependency of AltCap).

For each: word recall and word precision on the text images (words case-folded, outer
punctuation stripped, counted as multisets), the pictures without text given any text,
and latency per image (p50/p90, one thread). ``--via-cli`` also scores AltCap through
``python -m captioner caption --json`` (the bar of issue 22), and ``--batch N`` runs
``bench/batch.py`` with OCR off and on (images/s of one job; ``--text-share`` of its images
are images of text). Prints Markdown; ``--json`` writes the numbers.

    python bench/ocr.py                          # 350 images, seed 2026
    python bench/ocr.py --via-cli --batch 200    # + the CLI path, + batch throughput
    python bench/ocr.py --serve 100              # + p50 added per image in the service
    python bench/ocr.py --via-cli --batch 200 --json bench/results/ocr-cpu.json \
        --markdown bench/results/ocr-cpu.md        # the figures in docs/ocr.md
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.textimages import Sample, make_set, words_of  # noqa: E402

Engine = Callable[[object], str]


def engines(names: list[str]) -> dict[str, Engine]:
    out: dict[str, Engine] = {}
    if "altcap" in names or "tesseract" in names:
        from captioner.read import open_reader

        reader = open_reader()
        out["altcap"] = lambda im: reader.read(im).text
        import tesserocr  # the same engine and language data, with none of AltCap's steps

        raw = tesserocr.PyTessBaseAPI(path=reader.tessdata + "/", lang="+".join(reader.codes))

        def tesseract(im) -> str:
            raw.SetImage(im)
            return raw.GetUTF8Text()

        out["tesseract"] = tesseract
    if "rapidocr" in names:
        try:
            import numpy as np
            from rapidocr_onnxruntime import RapidOCR
        except ImportError:
            print("# rapidocr: not installed (pip install rapidocr-onnxruntime)", file=sys.stderr)
        else:
            engine = RapidOCR()

            def rapid(im) -> str:
                result, _ = engine(np.asarray(im.convert("RGB"))[:, :, ::-1].copy())
                return "\n".join(r[1] for r in result or [])

            out["rapidocr"] = rapid
    return {k: v for k, v in out.items() if k in names}


def score(samples: list[Sample], texts: list[str], latencies_ms: list[float]) -> dict:
    """Word recall/precision on text images, pictures given text, latency percentiles."""
    hit = wanted = got = 0
    invented = pictures = 0
    by_kind: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for sample, text in zip(samples, texts, strict=True):
        have, want = collections.Counter(words_of(text)), collections.Counter(sample.words)
        common = sum((have & want).values())
        if sample.text:
            hit, wanted, got = hit + common, wanted + sum(want.values()), got + sum(have.values())
            k = by_kind[sample.kind]
            k[0], k[1], k[2] = k[0] + common, k[1] + sum(want.values()), k[2] + sum(have.values())
        else:
            pictures += 1
            invented += bool(words_of(text))
    lat = sorted(latencies_ms)
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: None)
    return {
        "word_recall": hit / wanted if wanted else None,
        "word_precision": hit / got if got else None,
        "pictures": pictures,
        "pictures_given_text": invented,
        "latency_ms_p50": pick(0.5),
        "latency_ms_p90": pick(0.9),
        "by_kind": {
            k: {"recall": v[0] / v[1] if v[1] else None, "precision": v[0] / v[2] if v[2] else None}
            for k, v in sorted(by_kind.items())
        },
    }


def run_engine(read: Engine, samples: list[Sample]) -> dict:
    texts, lat = [], []
    for s in samples:
        t0 = time.perf_counter()
        texts.append(read(s.image))
        lat.append((time.perf_counter() - t0) * 1e3)
    return score(samples, texts, lat)


def run_cli(samples: list[Sample], model: str) -> dict:
    """AltCap end to end: ``python -m captioner caption --json`` over the set's files."""
    with tempfile.TemporaryDirectory(prefix="altcap-ocr-") as tmp:
        paths = []
        for i, s in enumerate(samples):
            path = Path(tmp) / f"{i:04d}.png"
            s.image.save(path)
            paths.append(str(path))
        cmd = [sys.executable, "-m", "captioner", "caption", "--json", "--model", model, *paths]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"caption --json failed:\n{out.stderr[-3000:]}")
        by_path = {}
        for line in out.stdout.splitlines():
            row = json.loads(line)
            by_path[row.get("image") or row.get("path")] = row.get("text") or ""
        texts = [by_path.get(p, "") for p in paths]
    result = score(samples, texts, [])
    result["seconds"] = seconds
    return result


def run_batch(images: int, text_share: float, tiny: bool) -> dict:
    out = {}
    for ocr in ("off", "on"):
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, str(ROOT / "bench" / "batch.py"), "--images", str(images)]
            cmd += ["--configs", "1x1", "--ocr", ocr, "--text-share", str(text_share)]
            cmd += ["--json", f.name] + (["--tiny"] if tiny else [])
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            out[ocr] = json.loads(Path(f.name).read_text())["runs"][0]["images_per_s"]
    out["slowdown"] = 1 - out["on"] / out["off"]
    return out


def run_serve(samples: list[Sample], rounds: int) -> dict:
    """Added latency in the service: one client, one image per request, full-size model,
    the same images with ``read_text`` false and true in turn (caches off), p50 of each."""
    import base64
    import io

    from bench.serve import FORCED, full_model_dir
    from captioner.web.app import create_app

    app = create_app(
        {
            "MODEL": str(full_model_dir()),
            "DEVICE": "cpu",
            "DTYPE": "bfloat16",
            "CACHE_URL": "off",
            "DATA_DIR": tempfile.mkdtemp(prefix="altcap-ocr-serve-"),
            "JOB_WORKERS": 0,
            "TESTING": True,
        }
    )
    st = app.extensions["altcap"]
    st.engine.wait_ready(600)
    client = app.test_client()
    bodies = []
    for s in samples[:rounds]:
        buf = io.BytesIO()
        s.image.save(buf, "PNG")
        bodies.append(base64.b64encode(buf.getvalue()).decode())
    times: dict[bool, list[float]] = {False: [], True: []}
    for i, data in enumerate([bodies[0], *bodies]):  # the first request warms up, unmeasured
        for read in (False, True):
            body = {"images": [{"data": data}], "decoding": FORCED, "read_text": read}
            t0 = time.perf_counter()
            r = client.post("/v1/captions", json=body)
            elapsed = (time.perf_counter() - t0) * 1e3
            assert r.status_code == 200, r.get_data(as_text=True)
            if i:
                times[read].append(elapsed)
    st.close()
    p50 = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {
        "requests": len(bodies),
        "p50_ms_off": p50[False],
        "p50_ms_on": p50[True],
        "added_p50_ms": p50[True] - p50[False],
    }


def markdown(result: dict) -> str:
    lines = [
        "| engine | word recall | word precision | pictures given text | p50 ms | p90 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def f(x, fmt):
        return "—" if x is None else format(x, fmt)

    for name, r in result["engines"].items():
        lines.append(
            f"| {name} | {f(r['word_recall'], '.3f')} | {f(r['word_precision'], '.3f')} | "
            f"{r['pictures_given_text']} / {r['pictures']} | {f(r['latency_ms_p50'], '.0f')} | "
            f"{f(r['latency_ms_p90'], '.0f')} |"
        )
    if "cli" in result:
        r = result["cli"]
        lines.append(
            f"| altcap via `caption --json` | {f(r['word_recall'], '.3f')} | "
            f"{f(r['word_precision'], '.3f')} | {r['pictures_given_text']} / {r['pictures']} "
            "| | |"
        )
    if "serve" in result:
        v = result["serve"]
        lines.append("")
        lines.append(
            f"Service, one image per request (full-size model, bfloat16, 20 tokens): p50 "
            f"{v['p50_ms_off']:.0f} ms without reading, {v['p50_ms_on']:.0f} ms with: "
            f"{v['added_p50_ms']:+.0f} ms."
        )
    if "batch" in result:
        b = result["batch"]
        lines.append("")
        lines.append(
            f"Batch job (bench/batch.py, 1 consumer): {b['off']:.2f} images/s with OCR off, "
            f"{b['on']:.2f} with OCR on: {100 * b['slowdown']:.1f}% slower."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=350, help="images in the set (default 350)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--engines", default="altcap,tesseract,rapidocr")
    p.add_argument("--via-cli", action="store_true", help="also score `caption --json`")
    p.add_argument("--model", default="", help="model for --via-cli (default: a tiny one)")
    p.add_argument("--batch", type=int, default=0, help="images for the batch on/off runs")
    p.add_argument("--serve", type=int, default=0, help="requests for the service latency")
    p.add_argument("--text-share", type=float, default=0.3, help="images of text in --batch")
    p.add_argument("--batch-tiny", action="store_true", help="the tiny model in --batch")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--markdown", help="write the table here (docs/ocr.md includes it)")
    args = p.parse_args(argv)

    samples = make_set(args.images, seed=args.seed)
    result: dict = {
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "images": len(samples),
        "seed": args.seed,
        "engines": {},
    }
    for name, read in engines(args.engines.split(",")).items():
        result["engines"][name] = run_engine(read, samples)
        print(f"# {name}: {json.dumps(result['engines'][name])}", file=sys.stderr, flush=True)
    if args.via_cli:
        model = args.model
        tmp = None
        if not model:
            from bench.serve import tiny_model_dir

            tmp = tempfile.mkdtemp(prefix="altcap-ocr-model-")
            model = str(tiny_model_dir(Path(tmp) / "tiny"))
        result["cli"] = run_cli(samples, model)
    if args.serve:
        result["serve"] = run_serve(samples, args.serve)
    if args.batch:
        result["batch"] = run_batch(args.batch, args.text_share, args.batch_tiny)
    table = markdown(result)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
