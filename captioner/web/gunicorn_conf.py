"""gunicorn settings for AltCap, in the package so that an installed AltCap has them too.

Installed (``pip install`` of a checkout or its wheel), from any directory::

    gunicorn -c python:captioner.web.gunicorn_conf "captioner.web.app:create_app()"

In a checkout, ``gunicorn -c gunicorn.conf.py "app:create_app()"`` (the Procfile, ``make run``)
reads the same settings: the root ``gunicorn.conf.py`` only imports this module.

Each worker process builds its own app, and with it its own engine thread, which loads its
own copy of the model. That shapes most of what follows: few workers, many threads, no
``preload_app``, and a generous heartbeat timeout.

Anything here can be overridden on the command line (``--bind``, ``--timeout 300``) or with
``GUNICORN_CMD_ARGS``; both win over this file. AltCap's own settings stay ``ALTCAP_*``
environment variables, read by each worker (see docs/configuration.md).

gunicorn imports this module in the master, which must never load torch, Flask or the app:
it imports the standard library and ``captioner.cpus`` (stdlib only), nothing else of AltCap.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile

from captioner import cpus  # stdlib only: no torch in the master or the worker yet


def _positive_int(name: str, default: int) -> int:
    """An ``ALTCAP_*`` count, checked here so a typo stops gunicorn with a clear message."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={raw!r} is not valid: expected a positive integer")
    return value


# --- sockets ---------------------------------------------------------------------------

# Platforms with a Procfile (Heroku, Dokku, ...) set $PORT and expect 0.0.0.0:$PORT; without
# it, listen on loopback only, so a bare `gunicorn -c ...` with this config is not exposed
# to the network by accident. The Procfile and `make run` pass --bind explicitly anyway.
bind = [f"0.0.0.0:{os.environ['PORT']}" if os.environ.get("PORT") else "127.0.0.1:8000"]

# --- workers ---------------------------------------------------------------------------

# Processes. Each holds a model copy (ViT-B/32 + GPT-2: ~1 GB in float32, half that in
# bfloat16, plus a CUDA context per process on a GPU) and its own engine, so batches never
# span workers.
# One worker per container or GPU is the default; scale with more containers, or raise this
# when requests are cheap to answer without the model (cache hits) and the CPU has cores.
workers = _positive_int("ALTCAP_WORKERS", 1)

# gthread: a thread per in-flight request. A captioning request spends nearly all its time
# waiting on the engine's futures (or on a download), not holding the GIL, so threads are
# what lets concurrent requests meet in one batch: with one-image requests, a batch is never
# larger than the captioning requests a worker takes on, its threads less an eighth (see
# post_fork), so the default of 36 takes 32, ALTCAP_MAX_BATCH_SIZE, and keeps 4 for the rest.
worker_class = "gthread"
threads = _positive_int("ALTCAP_THREADS", 36)

# Seconds a worker may go without a heartbeat before the master kills it. The heartbeat
# comes from the worker's main loop, not from request threads: the model loads and computes
# in the engine thread, so a slow batch or a slow first load does not stop it. 120 s covers
# importing torch and transformers at boot on a slow disk; a worker stuck longer is broken.
timeout = 120

# On SIGTERM (or a reload), seconds a worker gets to finish the requests it has before it
# is killed. A request may take up to ALTCAP_REQUEST_TIMEOUT_S (30 s by default) in all.
graceful_timeout = 30

# Seconds an idle keep-alive connection stays open. The extension and batch clients send
# bursts of requests; reusing connections spares a TCP handshake each. Behind a load
# balancer, set this above the balancer's idle timeout (e.g. 75 for AWS ALB's 60).
keepalive = 5

# Longest request line (method, path, query). GET /v1/captions?url=... carries an image URL
# of up to 2,048 characters, which percent-encoding can make three times longer; gunicorn's
# default (4094) would refuse those with a plain-text 400 before AltCap sees them. 8190 is
# gunicorn's maximum.
limit_request_line = 8190

# Never recycle workers after N requests: each restart reloads the model (seconds to
# minutes), and the service does not leak per request.
max_requests = 0

# Must stay False. With preload, create_app() would run in the master: its engine thread
# would not survive the fork and CUDA would initialise in the master, which forked children
# cannot use. on_starting() below refuses to start if it is turned on.
preload_app = False

# The heartbeat is a file touched by every worker; in containers, /tmp may be a slow
# overlay filesystem that stalls it, so use memory when there is some.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# gunicorn >= 25 opens a control socket at one fixed path per user ($XDG_RUNTIME_DIR or
# ~/.gunicorn/gunicorn.ctl): two instances on one host (tests, benchmarks, blue/green)
# would take it from each other. AltCap does not use gunicornc; keep it off.
control_socket_disable = True

# --- logs ------------------------------------------------------------------------------

# Both to the standard streams, where container platforms collect them.
accesslog = "-"
errorlog = "-"
loglevel = "info"

# Client, time, "METHOD PATH PROTOCOL", status, bytes, milliseconds, user agent. The path is
# logged without its query string on purpose: GET /v1/captions?url=... carries the address
# of an image a screen-reader user is looking at, which has no place in an access log.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%(a)s"'


# --- hooks -----------------------------------------------------------------------------


METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # = serve.metrics.MULTIPROC_ENV; no app import here
_made: list[str] = []  # the metrics directory on_starting created, for on_exit


def on_starting(server) -> None:
    """In the master, before anything is forked: refuse ``--preload`` (see preload_app), and
    give the workers one directory for their metrics.

    ``/metrics`` must report the whole server, not whichever worker took the scrape, so the
    workers run prometheus-client's multiprocess mode (``captioner/serve/metrics.py``): each writes
    its values to files in ``PROMETHEUS_MULTIPROC_DIR``, which must be set before they import
    prometheus-client and must start empty. A fresh temporary directory, removed on exit,
    unless the variable is set already: then that directory, its old files deleted.
    """
    if server.cfg.preload_app:
        raise SystemExit(
            "AltCap must not run with preload_app/--preload: the model has to load in each "
            "worker after the fork (CUDA cannot be initialised in the gunicorn master)"
        )
    given = os.environ.get(METRICS_ENV, "").strip()
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
    else:
        os.environ[METRICS_ENV] = tempfile.mkdtemp(prefix="altcap-metrics-")
        _made.append(os.environ[METRICS_ENV])
    server.log.info("workers' metrics in %s", os.environ[METRICS_ENV])


def post_fork(server, worker) -> None:
    """In a new worker, before the app is imported: its logs, and its share of the CPU.

    The ``captioner`` package logs through :mod:`logging` and configures no handler (it is
    a library); without this its INFO lines ("model ... loaded") would be lost and its
    errors ("the model could not be loaded") printed unformatted. They go to gunicorn's
    error log instead, with gunicorn's format and level.

    torch sizes its thread pool by the host's cores when it is imported (in the worker:
    nothing imports it in the master), not by the CPUs this process may use: a container's
    CPU quota, an affinity mask, or the other workers. Its OpenMP threads wait for each other
    at the end of every operation, so one thread without a core stalls them all (a caption
    of 0.3 s took seconds). ``OMP_NUM_THREADS`` is set to this worker's share of the usable
    CPUs (``captioner/cpus.py``) unless ``ALTCAP_TORCH_THREADS`` or ``OMP_NUM_THREADS`` says,
    and ``OMP_WAIT_POLICY`` to passive unless set: a thread that waits for the others sleeps
    instead of spinning on a core that another process (or this one's request threads) needs.

    ``ALTCAP_MAX_IN_FLIGHT``, unless set: the captioning requests a worker takes on at once,
    an eighth of its threads fewer (at least 2 kept), so that a request beyond them is
    answered ``503 overloaded`` at once instead of waiting unseen in gunicorn's queue for a
    thread, and ``/healthz`` always finds a thread free.
    """
    app_log = logging.getLogger("captioner")
    app_log.setLevel(server.log.error_log.level)
    for handler in server.log.error_log.handlers:
        app_log.addHandler(handler)
    app_log.propagate = False

    os.environ["OMP_NUM_THREADS"] = str(cpus.torch_threads(server.cfg.workers))
    os.environ.setdefault("OMP_WAIT_POLICY", cpus.OMP_WAIT_POLICY)
    threads = server.cfg.threads
    os.environ.setdefault("ALTCAP_MAX_IN_FLIGHT", str(max(1, threads - max(2, threads // 8))))


def post_worker_init(worker) -> None:
    """In a worker, its app built: every stop signal (SIGTERM, SIGQUIT, SIGINT) only clears
    ``alive``, and the worker's loop (a 1 s poll) then shuts down gracefully.

    gthread's own handlers take locks inside the signal handler: its quit handler shuts the
    thread pool down, and when the signal lands while the worker's main thread is handing a
    request to that pool, it holds the pool's lock and the handler waits for that same lock:
    the worker hangs for good, deaf to its master (python/cpython#121649). The service
    benchmark's quick stop under load (SIGINT to the master, which sends SIGQUIT to its
    workers) left such a worker using a core after its master had gone. Its SIGTERM handler
    puts a wake-up on a queue whose lock the main thread holds while draining it: the same
    hang, in a narrower window. The graceful exit stops accepting, lets ``worker_exit``
    close the engine (queued images fail with ``model_unavailable``, the batch in flight
    finishes) and leaves; the master kills a worker still there after ``graceful_timeout``.
    """

    def stop(sig: int, frame: object) -> None:
        worker.alive = False  # no lock to wait for in a signal handler

    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
        signal.signal(sig, stop)

    if getattr(worker, "altcap_replacement", False):
        _wait_for_the_model(worker)


# Workers forked so far by this master (pre_fork counts them): the first `workers` of them
# start the server; any later one replaces a worker that died, or comes with a reload.
_forked = [0]


def pre_fork(server, worker) -> None:
    """In the master, before a worker is forked: is it one of the first, or a replacement?"""
    _forked[0] += 1
    worker.altcap_replacement = _forked[0] > server.cfg.workers


def _wait_for_the_model(worker) -> None:
    """A replacement worker accepts connections only once its model is loaded (or failed).

    All workers accept from one listening socket, so a worker that took connections while
    loading would answer them ``503 model_unavailable`` (``/readyz`` too) for the seconds a
    load takes, while the other workers are ready: a load balancer would see the server
    flap. Not accepting yet leaves the connections to the ready workers (with one worker,
    they wait in the socket's backlog and are served once it is ready). The first workers
    do not wait: no other worker could answer, and ``/healthz`` must answer during a first
    start that downloads the model. The heartbeat is kept up while waiting.
    """
    engine = worker.wsgi.extensions["altcap"].engine
    while worker.alive and not engine.wait_ready(1.0) and engine.load_error is None:
        worker.notify()
    state = "loaded" if engine.ready else "not loaded"
    worker.log.info("worker %s: replacing another, its model %s: accepting", worker.pid, state)


def child_exit(server, worker) -> None:
    """In the master, after a worker exited: drop it from the live gauges (queue depth, model
    ready); its counters and histograms stay in the totals."""
    # Not at the top: prometheus-client picks its multiprocess mode from METRICS_ENV when it
    # is first imported, and workers inherit the master's modules: not before on_starting.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """The master is stopping: remove the metrics directory it made."""
    for path in _made:
        shutil.rmtree(path, ignore_errors=True)


def worker_exit(server, worker) -> None:
    """A worker is exiting (after its graceful shutdown): stop its engine, close its cache.

    Queued images fail with ``model_unavailable`` instead of being dropped silently, the
    batch being computed finishes, and the SQLite/Redis cache connections are closed.
    Also called in the master for a worker that vanished: it has no app there, so no-op.
    """
    app = getattr(worker, "wsgi", None)
    service = getattr(app, "extensions", {}).get("altcap")
    if service is not None:
        service.close()
