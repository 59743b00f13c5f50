"""Service benchmark: AltCap under real gunicorn, over loopback HTTP, on the CPU.

The model is full size (ViT-B/32 + MLP prefix 10 + GPT-2 124M) with random weights, in
bfloat16, served from a model directory written once to ``.cache/bench-full-model``. Its
tokenizer is synthetic (GPT-2's is not downloadable here) but has GPT-2's 50,257 ids, so
any id the model picks decodes. Every request forces 20 new tokens, so each caption costs
the same whatever the random weights say. One run measures:

(a) micro-batching: N concurrent clients (threads, one distinct 224x224 noise PNG per
    request, so the caption cache never answers; encoded before the clock starts, as the
    clients share the server's cores) against one gunicorn worker with batching on
    (ALTCAP_MAX_BATCH_SIZE=32) and off (=1): images/s, p50/p99 latency, ratio;
(b) cached URLs: an image served by a local http.server is captioned once, then
    GET /v1/captions?url=... is repeated from keep-alive connections: requests/s;
(c) with ``--noisy-neighbour``, instead: the default server (one worker, default threads,
    queue and deadline) under 50 clients that wait as a 503's Retry-After says, once alone
    and once with a CPU burner process beside it: p50/p99, the share of 503s, and how fast
    /healthz answers all the while.

Everything stays on 127.0.0.1; every loop is bounded by time; the servers are stopped at
the end. Prints a Markdown table, and writes JSON with ``--json``.

    python bench/serve.py                   # full size: ~4 min on 2 CPU cores (+30 s once)
    python bench/serve.py --quick           # tiny model, short runs: a smoke check (< 1 min)
    python bench/serve.py --measure 120 --clients 64 --json bench/results/serve-cpu.json
    python bench/serve.py --noisy-neighbour --json bench/results/serve-neighbour-cpu.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import http.server
import io
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FULL_MODEL_DIR = ROOT / ".cache" / "bench-full-model"
FULL_MODEL_SOURCE = "bench/serve.py: full-size architecture, random weights, 50257-id vocabulary"
NEW_TOKENS = 20
# the request's "decoding": exactly NEW_TOKENS tokens, whatever the model writes
FORCED = {
    "max_tokens": NEW_TOKENS,
    "min_tokens": NEW_TOKENS,
    "stop_token": None,
    "stop_at_eos": False,
}
EOS = "<|endoftext|>"
LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
LOADED = re.compile(r"\[(\d+)\] \[INFO\] model .* loaded")


# --- the model directory -------------------------------------------------------------------


def synthetic_gpt2_tokenizer():
    """A tokenizer with GPT-2's 50,257 ids (``t0`` ... ``t50255`` and ``<|endoftext|>``).

    The model samples ids from GPT-2's whole vocabulary, and the service decodes them to
    text; a tokenizer trained on a few sentences has a few hundred ids and could not.
    Decoding a word-level vocabulary costs about what decoding GPT-2's BPE does.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(50256)}
    vocab[EOS] = 50256
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, model_max_length=1024
    )


def full_model_dir(out: Path = FULL_MODEL_DIR) -> Path:
    """The full-size model directory, written on first use (~1 GB, float32 weights)."""
    from captioner.model.checkpoints import is_model_dir

    config = out / "config.json"
    if is_model_dir(out) and json.loads(config.read_text()).get("source") == FULL_MODEL_SOURCE:
        return out
    print(f"# writing the full-size random-weight model to {out} (once)", flush=True)
    from bench.decode import full_size_model
    from captioner.model.checkpoints import save_pretrained

    model = full_size_model()
    model.config.source = FULL_MODEL_SOURCE
    return save_pretrained(model, synthetic_gpt2_tokenizer(), out)


def tiny_model_dir(out: Path) -> Path:
    from captioner.model.tiny import make_tiny

    return make_tiny(out, "mlp", seed=0)


# --- gunicorn --------------------------------------------------------------------------------


class Gunicorn:
    """A gunicorn master running ``gunicorn.conf.py`` on a free loopback port."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path, workers: int) -> None:
        self.name, self.workers = name, workers
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self._access = (workdir / f"{name}.access.log").open("wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ALTCAP_")}
        for key in ("PORT", "GUNICORN_CMD_ARGS"):
            full_env.pop(key, None)
        full_env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        full_env.update(ALTCAP_DATA_DIR=str(workdir / f"{name}-data"), ALTCAP_WORKERS=str(workers))
        full_env.update(env)
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")]
        cmd += ["--bind", "127.0.0.1:0", "app:create_app()"]
        self.proc = subprocess.Popen(  # a session of its own: stop() can kill every worker
            cmd, cwd=ROOT, env=full_env, stdout=self._access, stderr=self._log,
            start_new_session=True,
        )  # fmt: skip
        self.port = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float) -> float:
        """Until every worker has loaded its model; returns the seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn ({self.name}) exited:\n{self.log()[-4000:]}")
            log = self.log()
            if not self.port and (m := LISTENING.search(log)):
                self.port = int(m.group(1))
            if self.port and len(set(LOADED.findall(log))) >= self.workers:
                return time.monotonic() - t0
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gunicorn ({self.name}) not ready in {timeout_s} s:\n{self.log()}")

    def metrics(self) -> str:
        return request(self.port, "GET", "/metrics")[1].decode()

    def stop(self) -> int:
        """Quick shutdown (SIGINT): requests still in flight are of no interest any more.
        Whatever is left of the server after 40 s (graceful_timeout is 30), workers
        included, is killed: a stray worker would skew every later measurement."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(40)
        with contextlib.suppress(ProcessLookupError):  # the whole session: no orphan worker
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()
        self._access.close()
        return self.proc.returncode


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 600
) -> tuple[int, bytes]:
    status, _, raw = request_with_headers(port, method, path, body, timeout)
    return status, raw


def request_with_headers(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 600
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


# --- (a) concurrent captioning ----------------------------------------------------------------


def noise_png(seed: int | Sequence[int], size: int) -> bytes:
    """A distinct random image per seed (so distinct bytes: the cache never answers)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def body(batch: int, client: int, n: int, size: int) -> bytes:
    """A request for one distinct noise PNG (distinct across runs, clients and requests)."""
    png = noise_png((batch, client, n), size)
    doc = {"images": [{"data": base64.b64encode(png).decode()}], "decoding": FORCED}
    return json.dumps(doc).encode()


@dataclass
class Sample:
    start: float  # time.monotonic()
    end: float
    ok: bool
    cached: bool = False
    code: str = ""  # the error code of a failure


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


def closed_loop(
    clients: int, until: float, one_request: Callable[[int, int], tuple[bool, bool, str]]
) -> LoadResult:
    """``clients`` threads each send requests back to back until ``until`` (monotonic).

    ``one_request(client, n)`` returns (ok, cached, error code). Requests still in flight at
    ``until`` are abandoned (the caller stops the server); they are not counted.
    """
    result = LoadResult()
    lock = threading.Lock()

    def client(c: int) -> None:
        n = 0
        while time.monotonic() < until:
            t0 = time.monotonic()
            try:
                ok, cached, code = one_request(c, n)
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                ok, cached, code = False, False, type(e).__name__  # not JSON, cut off, ...
            t1 = time.monotonic()
            n += 1
            if t1 > until:
                return
            with lock:
                result.samples.append(Sample(t0, t1, ok, cached, code))
                if not ok:
                    result.errors[code] = result.errors.get(code, 0) + 1

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, until - time.monotonic()) + 1)
    return result


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(result: LoadResult, window: tuple[float, float], unit: str) -> dict:
    """Throughput and latency of the requests that finished inside the measured window."""
    lo, hi = window
    done = [s for s in result.samples if lo <= s.end <= hi]
    ok = [s for s in done if s.ok]
    ms = [(s.end - s.start) * 1e3 for s in ok]
    return {
        f"{unit}_per_s": len(ok) / (hi - lo),
        "completed": len(ok),
        "failed": len(done) - len(ok),
        "overloaded_share": sum(s.code == "overloaded" for s in done) / max(1, len(done)),
        "cached": sum(s.cached for s in ok),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "errors": dict(result.errors),  # codes of failures over the whole run
    }


def batch_stats(metrics: str) -> dict:
    """Mean images per batch over the whole run, from the worker's Prometheus histogram."""
    values = {}
    for name in (
        "altcap_batch_size_sum",
        "altcap_batch_size_count",
        "altcap_batch_duration_seconds_sum",
    ):
        m = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
        values[name] = float(m.group(1)) if m else 0.0
    count = values["altcap_batch_size_count"]
    return {
        "batches": int(count),
        "mean_batch": values["altcap_batch_size_sum"] / count if count else math.nan,
        "mean_batch_s": values["altcap_batch_duration_seconds_sum"] / count if count else math.nan,
    }


def bench_captioning(args, model: Path, workdir: Path, batch: int) -> dict:
    """One gunicorn worker, ``args.clients`` threads posting one distinct image each."""
    threads = max(args.clients + 8, 32)  # every client gets a thread, with room for /metrics
    env = {
        "ALTCAP_MODEL": str(model),
        "ALTCAP_DEVICE": "cpu",
        "ALTCAP_DTYPE": args.dtype,
        "ALTCAP_THREADS": str(threads),
        "ALTCAP_MAX_BATCH_SIZE": str(batch),
        "ALTCAP_MAX_WAIT_MS": str(args.max_wait_ms),
        "ALTCAP_MAX_QUEUE": str(max(256, 2 * args.clients)),
        "ALTCAP_REQUEST_TIMEOUT_S": "600",  # batching off queues N images behind each other
    }
    name = f"batch{batch}"
    server = Gunicorn(name, env, workdir, workers=1)
    try:
        load_s = server.wait_ready(args.ready_timeout)
        print(f"# {name}: ready in {load_s:.1f} s, port {server.port}", flush=True)

        # the load generator shares the server's two cores: its requests are encoded before
        # the clock starts (a noise PNG costs ~5 ms to encode), on the fly only past the pool
        per_client = args.bodies if batch > 1 else max(1, args.bodies // 4)
        pool = [[body(batch, c, n, args.image_size) for n in range(per_client)]
                for c in range(args.clients)]  # fmt: skip
        late = [0]

        def one(c: int, n: int) -> tuple[bool, bool, str]:
            if n < len(pool[c]):
                data = pool[c][n]
            else:
                data = body(batch, c, n, args.image_size)
                late[0] += 1
            status, raw = request(server.port, "POST", "/v1/captions", data)
            data = json.loads(raw)
            if status != 200:
                return False, False, data.get("error", {}).get("code", str(status))
            r = data["results"][0]
            if "error" in r:
                return False, False, r["error"]["code"]
            if r["tokens"] != NEW_TOKENS:  # the forced length did not hold
                return False, r["cached"], "wrong_length"
            return True, r["cached"], ""

        t0 = time.monotonic()
        window = (t0 + args.warmup, t0 + args.warmup + args.measure)
        result = closed_loop(args.clients, window[1], one)
        row = {"batching": "on" if batch > 1 else "off", "max_batch_size": batch}
        row.update(summarize(result, window, "images"))
        row.update(batch_stats(server.metrics()))
        row["bodies_encoded_while_running"] = late[0]
        row.update(
            {
                "workers": 1,
                "threads": threads,
                "clients": args.clients,
                "max_wait_ms": args.max_wait_ms,
                "load_s": load_s,
            }
        )
        print(json.dumps(row), flush=True)
        return row
    finally:
        server.stop()


# --- (c) a noisy neighbour ----------------------------------------------------------------------


def probe_healthz(port: int, window: tuple[float, float], out) -> None:
    """A prober process: GET /healthz every 0.5 s; milliseconds of those sent in ``window``
    (monotonic; inf for a failed probe)."""
    ms: list[float] = []
    while time.monotonic() < window[1]:
        t = time.monotonic()
        try:
            ok = request(port, "GET", "/healthz", timeout=60)[0] == 200
        except (OSError, http.client.HTTPException):
            ok = False
        if t >= window[0]:
            ms.append((time.monotonic() - t) * 1e3 if ok else math.inf)
        time.sleep(0.5)
    out.put(ms)


def bench_neighbour(args, model: Path, workdir: Path, burner: bool) -> dict:
    """The default server (one worker; default threads, queue and deadline) under
    ``args.neighbour_clients`` clients, with or without a CPU burner process beside it.

    Clients do as told: after a 503 they wait its Retry-After. A prober asks ``/healthz``
    every half second throughout, as a liveness probe would.
    """
    env = {"ALTCAP_MODEL": str(model), "ALTCAP_DEVICE": "cpu", "ALTCAP_DTYPE": args.dtype}
    name = "neighbour-busy" if burner else "neighbour-idle"
    server = Gunicorn(name, env, workdir, workers=1)
    burn = None
    try:
        load_s = server.wait_ready(args.ready_timeout)
        clients = args.neighbour_clients
        pool = [
            [body(7, c, n, args.image_size) for n in range(args.bodies)] for c in range(clients)
        ]
        if burner:  # one core's worth of someone else's work, for the whole run
            burn = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        t0 = time.monotonic()
        window = (t0 + args.warmup, t0 + args.warmup + args.measure)

        def one(c: int, n: int) -> tuple[bool, bool, str]:
            data = pool[c][n] if n < len(pool[c]) else body(8, c, n, args.image_size)
            status, headers, raw = request_with_headers(server.port, "POST", "/v1/captions", data)
            if status == 200:
                return True, json.loads(raw)["results"][0]["cached"], ""
            code = json.loads(raw).get("error", {}).get("code", str(status))
            if status == 503:
                time.sleep(min(float(headers.get("Retry-After", 1)), window[1] - time.monotonic()))
            return False, False, code

        # in a process of its own: the clients' 50 threads would delay a prober among them
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        prober = ctx.Process(target=probe_healthz, args=(server.port, window, queue), daemon=True)
        prober.start()
        result = closed_loop(clients, window[1], one)
        health_ms = queue.get(timeout=120)
        prober.join(10)
        row = {"cpu_burner": burner, "clients": clients, "load_s": load_s}
        row.update(summarize(result, window, "images"))
        row.update(
            {
                "healthz_p50_ms": percentile(health_ms, 50),
                "healthz_p99_ms": percentile(health_ms, 99),
                "healthz_max_ms": max(health_ms, default=math.nan),
                "probes": len(health_ms),
            }
        )
        print(json.dumps(row), flush=True)
        return row
    finally:
        if burn is not None:
            burn.kill()
            burn.wait()
        server.stop()


# --- (b) cached URLs ----------------------------------------------------------------------------


def serve_image(png: bytes) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A loopback HTTP server with one image at /image.png; returns it and the URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/image.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args) -> None:  # quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, name="image-server", daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/image.png"


def hammer(port: int, path: str, threads: int, seconds: float, out) -> None:
    """A client process: ``threads`` keep-alive connections repeating GET ``path``."""
    until = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        local, ok, failed = [], 0, 0
        while time.monotonic() < until:
            t0 = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                good = response.status == 200 and b'"cached":true' in body
            except (OSError, http.client.HTTPException):
                conn.close()  # reconnects on the next request
                good = False
            local.append(time.perf_counter() - t0)
            ok, failed = ok + good, failed + (not good)
        conn.close()
        with lock:
            latencies.extend(local)
            counts["ok"] += ok
            counts["failed"] += failed

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(seconds + 35)
    out.put({"latencies": latencies, **counts})


def bench_cached_url(args, model: Path, workdir: Path) -> dict:
    png = noise_png(42, args.image_size)
    httpd, url = serve_image(png)
    env = {
        "ALTCAP_MODEL": str(model),
        "ALTCAP_DEVICE": "cpu",
        "ALTCAP_DTYPE": args.dtype,
        "ALTCAP_THREADS": str(args.url_threads),
        "ALTCAP_ALLOW_PRIVATE_NETWORKS": "true",  # the image is on 127.0.0.1
    }
    server = Gunicorn("cached-url", env, workdir, workers=args.url_workers)
    try:
        load_s = server.wait_ready(args.ready_timeout * args.url_workers)
        print(f"# cached-url: ready in {load_s:.1f} s, port {server.port}", flush=True)
        path = "/v1/captions?url=" + quote(url, safe="")
        first = json.loads(request(server.port, "GET", path)[1])
        second = json.loads(request(server.port, "GET", path)[1])
        if first["results"][0].get("cached") is not False or not second["results"][0]["cached"]:
            raise RuntimeError(f"the URL was not captioned then cached: {first} / {second}")
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
        queue = ctx.Queue()
        procs = [
            ctx.Process(
                target=hammer,
                args=(server.port, path, args.url_client_threads, args.url_seconds, queue),
                daemon=True,
            )
            for _ in range(args.url_procs)
        ]
        for p in procs:
            p.start()
        parts = [queue.get(timeout=args.url_seconds + 120) for _ in procs]
        for p in procs:
            p.join(10)
        latencies = [x * 1e3 for part in parts for x in part["latencies"]]
        ok = sum(part["ok"] for part in parts)
        row = {
            "requests_per_s": ok / args.url_seconds,
            "completed": ok,
            "failed": sum(part["failed"] for part in parts),
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "workers": args.url_workers,
            "threads": args.url_threads,
            "client_processes": args.url_procs,
            "connections": args.url_procs * args.url_client_threads,
            "seconds": args.url_seconds,
        }
        print(json.dumps(row), flush=True)
        return row
    finally:
        server.stop()
        httpd.shutdown()
        httpd.server_close()


# --- report ---------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    rows = {r["batching"]: r for r in result["captioning"]}
    lines = [
        "| measurement | config | throughput | p50 ms | p99 ms | failed | mean batch |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key in ("on", "off"):
        r = rows.get(key)
        if r is None:
            continue
        config = (
            f"1 worker × {r['threads']} threads, max batch {r['max_batch_size']}"
            + (f", wait {r['max_wait_ms']:g} ms" if r["max_batch_size"] > 1 else "")
            + f"; {r['clients']} clients"
        )
        lines.append(
            f"| (a) POST, batching {key} | {config} | {r['images_per_s']:.2f} images/s "
            f"| {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['failed']} | {r['mean_batch']:.1f} |"
        )
    if "on" in rows and "off" in rows and rows["off"]["images_per_s"] > 0:
        ratio = rows["on"]["images_per_s"] / rows["off"]["images_per_s"]
        lines.append(f"| (a) batching on / off | | **{ratio:.1f}×** | | | | |")
    for r in result.get("neighbour", []):
        lines.append(
            f"| (c) POST, {r['clients']} clients, "
            f"{'a CPU burner beside' if r['cpu_burner'] else 'nothing else running'} "
            f"| default server; 503 share {r['overloaded_share']:.0%}, /healthz p99 "
            f"{r['healthz_p99_ms']:.0f} ms (max {r['healthz_max_ms']:.0f}) "
            f"| {r['images_per_s']:.2f} images/s | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
            f"| {r['failed']} | – |"
        )
    u = result.get("cached_url")
    if u:
        config = (
            f"{u['workers']} worker(s) × {u['threads']} threads; {u['connections']} keep-alive "
            f"connections from {u['client_processes']} client processes"
        )
        lines.append(
            f"| (b) GET cached URL | {config} | **{u['requests_per_s']:.0f} requests/s** "
            f"| {u['p50_ms']:.1f} | {u['p99_ms']:.1f} | {u['failed']} | – |"
        )
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny model, short runs (smoke check)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients in (a)")
    p.add_argument("--warmup", type=float, default=None, help="seconds not measured (a)")
    p.add_argument("--measure", type=float, default=None, help="seconds measured (a)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="ALTCAP_MAX_WAIT_MS (a)")
    p.add_argument("--dtype", default="bfloat16", help="ALTCAP_DTYPE")
    p.add_argument("--image-size", type=int, default=224, help="side of the noise PNGs")
    p.add_argument(
        "--bodies", type=int, default=None, help="requests encoded ahead per client in (a)"
    )
    p.add_argument("--url-seconds", type=float, default=None, help="seconds of (b)")
    p.add_argument("--url-workers", type=int, default=2, help="gunicorn workers in (b)")
    p.add_argument("--url-threads", type=int, default=8, help="threads per worker in (b)")
    p.add_argument("--url-procs", type=int, default=2, help="client processes in (b)")
    p.add_argument("--url-client-threads", type=int, default=4, help="connections per process")
    p.add_argument("--skip", default="", help="comma list of parts to skip: on,off,url")
    p.add_argument(
        "--noisy-neighbour",
        action="store_true",
        help="instead: (c) the default server under --neighbour-clients, without and with a "
        "CPU burner beside it",
    )
    p.add_argument("--neighbour-clients", type=int, default=50, help="clients in (c)")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to load a model")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    quick = args.quick
    args.warmup = args.warmup if args.warmup is not None else (2.0 if quick else 20.0)
    args.measure = args.measure if args.measure is not None else (5.0 if quick else 60.0)
    args.url_seconds = args.url_seconds if args.url_seconds is not None else (3 if quick else 10)
    args.bodies = args.bodies if args.bodies is not None else (2 if quick else 64)
    skip = set(filter(None, args.skip.split(",")))

    import torch  # only here: the servers are separate processes

    workdir = Path(tempfile.mkdtemp(prefix="altcap-bench-serve-"))
    try:
        model = tiny_model_dir(workdir / "tiny-model") if quick else full_model_dir()
        info = {
            "model": "tiny (random)" if quick else "full size (random): ViT-B/32 + GPT-2 124M",
            "dtype": args.dtype,
            "new_tokens": NEW_TOKENS,
            "cpu": f"{cpu_name()} x{os.cpu_count()}",
            "loadavg_at_start": os.getloadavg()[0],  # other processes on the machine
            "torch": torch.__version__,
            "image": f"{args.image_size}x{args.image_size} noise PNG, one per request",
            "warmup_s": args.warmup,
            "measure_s": args.measure,
        }
        print(f"# {json.dumps(info)}", flush=True)
        result: dict = {"info": info, "captioning": []}
        if args.noisy_neighbour:
            skip |= {"on", "off", "url"}
            result["neighbour"] = [
                bench_neighbour(args, model, workdir, burner) for burner in (False, True)
            ]
        for batch, key in ((32, "on"), (1, "off")):
            if key not in skip:
                result["captioning"].append(bench_captioning(args, model, workdir, batch))
        if "url" not in skip:
            result["cached_url"] = bench_cached_url(args, model, workdir)
        info["loadavg_at_end"] = os.getloadavg()[0]
        print()
        print(markdown(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
