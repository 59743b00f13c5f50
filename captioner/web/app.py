"""AltCap's web service: the application factory, and a development server.

gunicorn builds one application per worker with ``gunicorn "app:create_app()"`` (``app.py``
at the repository root is a shim that re-exports this module's ``create_app``); there is
deliberately no module-level ``app``, because importing this file must not start a model.
The model loads in the engine's worker thread, started by ``create_app``, so under gunicorn
it loads after the fork, in each worker (do not set ``preload_app``: a thread started in the
master does not survive the fork).

``python app.py`` (or ``python -m captioner.web.app``) serves on http://127.0.0.1:5000 with
Flask's threaded development server.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flask import Flask

from captioner import cpus
from captioner.jobs.backends import EngineBackend
from captioner.jobs.consumer import start_consumer
from captioner.jobs.queue import JobQueue
from captioner.model.identity import ModelChanged, ModelIdentity, model_identity
from captioner.serve.cache import open_cache
from captioner.serve.engine import Engine
from captioner.serve.settings import Settings
from captioner.web import api, jobs_api


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the service: settings, cache, engine (model loading in its thread), blueprints,
    and the batch-job consumer threads (``ALTCAP_JOB_WORKERS``, fed through the engine).

    Settings come from ``ALTCAP_*`` environment variables; ``test_config`` overrides them
    by name without the prefix (``{"MODEL": path, "API_KEYS": ["k"]}``) and may also carry
    Flask settings (``TESTING``) and parts to inject instead of building them:

    - ``LOADER``: a callable returning a ``Captioner``, run by the engine's worker thread;
    - ``ENGINE``: a whole engine (used as given: start it yourself).
    """
    config = dict(test_config or {})
    settings = Settings.load(os.environ, config)
    app = Flask(__name__, static_folder=None)  # the page blueprint serves /static
    app.config.from_mapping(config)

    cache = open_cache(settings.cache_url, settings.data_dir)
    # Once, before the model loads: the public name and the cache identity of ALTCAP_MODEL
    # (a local path is neither; see captioner/model/identity.py). Views and job consumers share it.
    model = model_identity(settings.model)
    engine = config.get("ENGINE")
    own_engine = engine is None
    if own_engine:
        engine = Engine(
            config.get("LOADER") or default_loader(settings, model),
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
        )
    st = api.init_app(app, settings, engine, cache, model)
    queue = JobQueue(settings)  # batch jobs: SQLite in DATA_DIR, or ALTCAP_QUEUE_URL's Redis
    jobs_api.init_app(app, queue)
    if own_engine:
        engine.start()  # last: nothing above can fail and leave a loading thread behind
    if settings.job_workers:  # job consumer threads, after the fork too (like the engine's)
        backend = EngineBackend(engine, settings.max_image_pixels)
        start_consumer(  # the service's reader pool reads the jobs' images too
            queue,
            backend,
            workers=settings.job_workers,
            cache=cache,
            model=model,
            text_pool=st.reader,
        )
    return app


def default_loader(settings: Settings, model: ModelIdentity | None = None) -> Callable[[], Any]:
    """Load the configured model; called in the engine's thread, never at import.

    ``model`` is the identity the app computed at start-up. If the model directory changed
    since (a training run saving into it), the weights just loaded are not the ones that
    identity names, and caching their captions under it would serve them as the other
    model's: refuse (``/readyz`` says why) rather than serve them. A restart picks them up.
    """

    def load() -> Any:
        import torch  # heavy: only in the engine's thread, after gunicorn's fork

        from captioner.pipeline import Captioner

        # Here, in the thread that runs the model: OpenMP's thread count is per thread.
        torch.set_num_threads(settings.torch_threads or cpus.torch_threads())
        captioner = Captioner.from_pretrained(
            settings.model,
            device=settings.device,
            dtype=settings.dtype,
            max_pixels=settings.max_image_pixels,
        )
        captioner.alt_match_score = settings.alt_match_score  # trust.alt_check's threshold
        now = model_identity(settings.model) if model is not None else None
        if now is not None and now != model:
            raise ModelChanged(
                f"the model directory changed while the service started ({model.name} is now "
                f"{now.name}); restart the service to serve it"
            )
        return captioner

    return load


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="AltCap development server (not for production)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    create_app().run(host=args.host, port=args.port, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
