"""``python -m captioner worker``: a batch-job consumer with its own model and no HTTP.

The web service consumes jobs in its own threads (``ALTCAP_JOB_WORKERS``). To scale out,
point the service and any number of workers, on any machines, at one Redis
(``ALTCAP_QUEUE_URL=redis://...``) and start this on each machine (the Procfile's
``worker:`` line). With the default SQLite queue, workers share the machine (and its
``ALTCAP_DATA_DIR``) with the service.

Settings are the service's ``ALTCAP_*`` variables (model, device, queue, cache, fetch
limits, chunk size, lease). SIGTERM stops gracefully (the chunks in flight finish, up to
``--shutdown-timeout``); SIGINT stops at once and gives its chunks back; ``kill -9`` loses
nothing either: another consumer re-runs the chunk once its lease expires (about a lease after
the kill: ``jobs.recovery_bounds_s``).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from captioner import cpus
from captioner.errors import InvalidSettings
from captioner.model.identity import ModelChanged, model_identity
from captioner.serve.cache import open_cache
from captioner.serve.settings import Settings

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add ``worker`` to ``python -m captioner``."""
    p = subparsers.add_parser(
        "worker",
        help="consume batch jobs (huey) with a model of its own",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="consumer threads: one captions while another downloads (default 2)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds SIGTERM waits for chunks in flight (default 30)",
    )
    p.add_argument("--verbose", action="store_true", help="log every task")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch  # the model's: imported here, so `--help` does not load it

    # the jobs engine and the model import torch: here, so that `--help` does not load it
    from captioner.jobs.backends import CaptionerBackend
    from captioner.jobs.consumer import start_consumer
    from captioner.jobs.queue import JobQueue
    from captioner.pipeline import Captioner

    if args.threads < 1:
        raise InvalidSettings("--threads must be >= 1")
    if args.shutdown_timeout < 0:
        raise InvalidSettings("--shutdown-timeout must not be negative")
    logging.getLogger().setLevel(logging.INFO)  # cli.main configured the handler
    logging.getLogger("huey").setLevel(logging.INFO if args.verbose else logging.WARNING)

    settings = Settings.load(os.environ)
    # The identity before the weights: if the directory changes while loading, the weights
    # are not the ones the identity names (see app.default_loader).
    model = model_identity(settings.model)
    # Threads as the service's workers get them: the CPUs this process may use (cpus.py).
    torch.set_num_threads(settings.torch_threads or cpus.torch_threads())
    # The model first: a worker that cannot caption must fail now, not per chunk.
    captioner = Captioner.from_pretrained(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        max_pixels=settings.max_image_pixels,
    )
    captioner.alt_match_score = settings.alt_match_score  # ALTCAP_ALT_MATCH_SCORE
    if model_identity(settings.model) != model:
        raise ModelChanged("the model directory changed while it was loading; start again")
    log.info("model %r loaded; consuming jobs with %d threads", settings.model, args.threads)
    cache = open_cache(settings.cache_url, settings.data_dir)
    queue = JobQueue(settings)
    consumer = start_consumer(
        queue,
        CaptionerBackend(captioner),
        workers=args.threads,
        cache=cache,
        embedded=False,
        model=model,
    )
    consumer.huey_consumer.shutdown_timeout = args.shutdown_timeout
    try:
        consumer.run()
    finally:
        queue.close(timeout=0)
        cache.close()
    log.info("worker stopped")
    return 0
