"""Batch-job benchmark: images/s of one job, one consumer process versus two.

A job of N distinct 224x224 noise PNGs (default 1,000), served by a loopback HTTP server, is
submitted to the job queue (SQLite in a fresh data directory, or ``--queue-url redis://...``)
and consumed by ``python -m captioner worker`` processes: the real consumer, chunking,
downloads, leases and result writes. The model is the full-size architecture with random
weights (``bench/serve.py``'s directory: ViT-B/32 + MLP prefix + GPT-2 124M), every caption
forced to 20 new tokens. Each configuration is ``PROCESSESxTHREADS``:

- ``1x1``: one consumer process, one thread, torch using every core;
- ``2x1``: two consumer processes, one thread each, the cores split between them
  (``OMP_NUM_THREADS``) — what adding a ``worker:`` process on the same machine does.

The time is the job's own: from its creation to its ``finished`` timestamp, workers already
loaded and waiting. Prints a Markdown table; ``--json`` writes the numbers.

    python bench/batch.py                       # 1,000 images, full size: long on 2 CPU cores
    python bench/batch.py --images 40           # a quick check
    python bench/batch.py --tiny --images 200   # the tiny model: the queue's own overhead
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve import FORCED, NEW_TOKENS, full_model_dir, noise_png, tiny_model_dir  # noqa: E402

READY = re.compile(r"model .* loaded; consuming jobs")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="image-server", daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Workers:
    """``processes`` × ``python -m captioner worker --threads threads``, logs in ``workdir``."""

    def __init__(self, env: dict[str, str], workdir: Path, processes: int, threads: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        omp = str(max(1, cores() // processes))
        for i in range(processes):
            log = workdir / f"worker{i}.log"
            self.logs.append(log)
            with log.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "captioner", "worker", "--threads", str(threads)],
                        cwd=ROOT,
                        env={**env, "OMP_NUM_THREADS": omp},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logs)

    def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a worker exited:\n{self.log()}")
            if all(READY.search(p.read_text(errors="replace")) for p in self.logs):
                return time.monotonic() - t0
            time.sleep(0.2)
        raise RuntimeError(f"workers not ready in {timeout} s:\n{self.log()}")

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_config(args, model: Path, base: str, n: int, config: str, workdir: Path) -> dict:
    from captioner.jobs.queue import JobQueue
    from captioner.jobs.request import parse_job
    from captioner.serve.settings import Settings

    processes, threads = (int(x) for x in config.split("x"))
    data = workdir / f"data-{config}"
    overrides = {
        "MODEL": str(model),
        "DEVICE": "cpu",
        "DTYPE": args.dtype,
        "DATA_DIR": str(data),
        "CACHE_URL": "off",  # every image captioned: distinct images anyway
        "ALLOW_PRIVATE_NETWORKS": "true",
        "JOB_CHUNK_SIZE": str(args.chunk_size),
        "QUEUE_URL": args.queue_url,
        "OCR": args.ocr,  # reading the text in images (bench/ocr.py compares on and off)
    }
    if args.queue_url:
        import redis

        redis.Redis.from_url(args.queue_url).flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTCAP_")}
    env.update({f"ALTCAP_{k}": v for k, v in overrides.items()})
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    workers = Workers(env, workdir, processes, threads)
    queue = JobQueue(Settings.load({}, overrides))
    try:
        load_s = workers.wait_ready(args.ready_timeout)
        print(f"# {config}: {processes} worker(s) ready in {load_s:.1f} s", flush=True)
        body = {"images": [f"{base}/{i}.png" for i in range(n)], "decoding": FORCED}
        job, _ = queue.submit(parse_job(body, queue.settings))
        deadline = time.monotonic() + args.timeout
        while (status := queue.status(job["id"]))["state"] not in ("done", "failed", "cancelled"):
            if not workers.alive():
                raise RuntimeError(f"a worker died:\n{workers.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the job did not finish in {args.timeout} s: {status}")
            time.sleep(0.2)
        record = queue.store.get(job["id"])
        rows = queue.rows(job["id"])
        tokens_ok = sum(r["status"] == "done" for r in rows)
        seconds = record["finished"] - record["created"]
        row = {
            "config": config,
            "processes": processes,
            "threads": threads,
            "omp_threads": max(1, cores() // processes),
            "images": n,
            "done": status["counts"]["done"],
            "failed": status["counts"]["failed"],
            "seconds": seconds,
            "images_per_s": tokens_ok / seconds if seconds > 0 else float("nan"),
            "load_s": load_s,
        }
        print(json.dumps(row), flush=True)
        return row
    finally:
        workers.stop()
        queue.close()


def text_pngs(n: int) -> list[bytes]:
    """``n`` distinct web images of text (buttons, banners, text over photos...) as PNG."""
    import io

    from bench.textimages import TEXT_KINDS, make_text_image

    rng = random.Random(11)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        make_text_image(rng, TEXT_KINDS[i % len(TEXT_KINDS)]).image.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def markdown(result: dict) -> str:
    lines = [
        "| consumers | threads each | torch threads each | images | seconds | images/s | failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['processes']} process{'es' if r['processes'] > 1 else ''} | {r['threads']} "
            f"| {r['omp_threads']} | {r['images']} | {r['seconds']:.1f} | "
            f"{r['images_per_s']:.2f} | {r['failed']} |"
        )
    runs = {r["config"]: r for r in result["runs"]}
    if "1x1" in runs and "2x1" in runs and runs["1x1"]["images_per_s"] > 0:
        ratio = runs["2x1"]["images_per_s"] / runs["1x1"]["images_per_s"]
        lines.append(f"| 2 / 1 | | | | | **{ratio:.2f}×** | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000, help="images in the job (default 1000)")
    p.add_argument("--configs", default="1x1,2x1", help="PROCESSESxTHREADS, comma-separated")
    p.add_argument("--tiny", action="store_true", help="the tiny model instead of full size")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--queue-url", default="", help="redis://... (default: SQLite)")
    p.add_argument("--ready-timeout", type=float, default=300)
    p.add_argument("--timeout", type=float, default=7200, help="seconds a job may take")
    p.add_argument(
        "--text-share", type=float, default=0.0, help="share of images of text (bench/textimages)"
    )
    p.add_argument("--ocr", default="on", choices=["on", "off"], help="read text (ALTCAP_OCR)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error("--images must be >= 1")

    workdir = Path(tempfile.mkdtemp(prefix="altcap-bench-batch-"))
    httpd = None
    try:
        model = tiny_model_dir(workdir / "tiny") if args.tiny else full_model_dir()
        site = workdir / "images"
        site.mkdir()
        texts = text_pngs(round(args.images * args.text_share))
        for i in range(args.images):
            data = texts[i] if i < len(texts) else noise_png((7, i), args.image_size)
            (site / f"{i}.png").write_bytes(data)
        httpd, base = serve(site)
        print(
            f"# {args.images} images, {'tiny' if args.tiny else 'full-size'} model, "
            f"{NEW_TOKENS} new tokens forced, {cores()} cores, queue: "
            f"{'redis' if args.queue_url else 'sqlite'}",
            flush=True,
        )
        runs = [
            run_config(args, model, base, args.images, c.strip(), workdir)
            for c in args.configs.split(",")
        ]
        result = {
            "machine": {"cores": cores(), "platform": platform.platform()},
            "model": "tiny" if args.tiny else "full-size random weights",
            "new_tokens": NEW_TOKENS,
            "dtype": args.dtype,
            "chunk_size": args.chunk_size,
            "ocr": args.ocr,
            "text_share": args.text_share,
            "runs": runs,
        }
        print(markdown(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
