#!/usr/bin/env bash
# AltCap as a user installs it: build the wheel from a clean copy of this checkout, install it
# into a fresh virtualenv outside the checkout, and run `altcap` and the service (gunicorn with
# the packaged config) from there (`make test-wheel`, part of `make test`). Fails on the first
# check that does not hold.
#
#   PYTHON       the interpreter for the new virtualenv (default python3)
#   TORCH_SPEC   installed first, as in the Makefile (default torch==2.13.0, the local CPU wheel;
#                without it pip would take torch>=2.4 from the index: a multi-GB CUDA build)
#   KEEP=1       keep the work folder (printed) to look into
#
# pip's cache serves the dependencies after the first run: about a minute on two cores.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
work=$(mktemp -d "${TMPDIR:-/tmp}/altcap-wheel.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then echo "work folder: $work"; else trap 'rm -rf "$work"' EXIT; fi
step() { echo "check_wheel: $*"; }

step "build the wheel from the files git would commit"
# A copy, not the checkout: setuptools' build/ folder keeps modules deleted since, and ships them.
mkdir "$work/src"
(
    cd "$root"
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf -
) | tar -xf - -C "$work/src"
"$python" -m pip wheel -q --no-deps "$work/src" -w "$work/dist"
wheel=$(echo "$work"/dist/altcap-*-py3-none-any.whl)

step "every file git tracks under captioner/ is in the wheel (package data included)"
(cd "$root" && git ls-files captioner) |
    "$python" -c '
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = [p for p in sys.stdin.read().split() if p not in names]
if missing:
    sys.exit("not in the wheel (name them in [tool.setuptools.package-data]): " + " ".join(missing))
' "$wheel"

step "install it into a fresh virtualenv: $torch_spec first, then the wheel"
"$python" -m venv "$work/venv"
vpy=$work/venv/bin/python
pip_install() {  # its log only where it fails (pip warns at length about this machine's indexes)
    "$vpy" -m pip install -q --disable-pip-version-check "$@" >"$work/pip.log" 2>&1 ||
        { cat "$work/pip.log" >&2 && return 1; }
}
pip_install "$torch_spec"
pip_install "$wheel"
"$vpy" -m pip check >/dev/null

# From here on: outside the checkout, offline, with nothing of the checkout on the path.
cd "$work"
unset PYTHONPATH ALTCAP_CACHE
export HF_HOME=$work/hf HF_HUB_OFFLINE=1
site=$("$vpy" -c 'import captioner, pathlib; print(pathlib.Path(captioner.__file__).parent)')
case $site in
    "$work"/venv/*) ;;
    *) echo "captioner imported from $site, not the new virtualenv" >&2 && exit 1 ;;
esac
find "$site" -type f | sort >"$work/site-before"

step "altcap --help lists the subcommands of python -m captioner"
diff <("$work/venv/bin/altcap" --help) <("$vpy" -m captioner --help)

step "altcap make-tiny, altcap caption"
"$work/venv/bin/altcap" make-tiny "$work/tiny" >/dev/null
"$vpy" -c 'from PIL import Image; Image.new("RGB", (64, 48), (200, 30, 30)).save("red.png")'
"$work/venv/bin/altcap" caption --model "$work/tiny" red.png --json >caption.json
"$vpy" -c '
import json
line = json.loads(open("caption.json").read())
assert line["image"] == "red.png" and line["caption"] and "error" not in line, line
'
# bfloat16: the C kernels compile (on a CPU with AVX512-BF16) from the installed sources
"$work/venv/bin/altcap" caption --model "$work/tiny" red.png --dtype bfloat16 >/dev/null

step "the C kernels compile from site-packages into the cache, never into site-packages"
"$vpy" -c '
import os
from pathlib import Path
from captioner.runtime import cpu_kernel
kernels = Path(os.environ["HF_HOME"]) / "altcap" / "kernels"  # $ALTCAP_CACHE unset: the default
if cpu_kernel.cpu_supported():  # the bfloat16 caption above has built and loaded them
    assert list(kernels.glob("altcap-kernels-*.so")), f"the caption built no kernels in {kernels}"
    assert cpu_kernel.library() is not None
lib = cpu_kernel.build()  # compiles here on any x86-64 gcc, whatever this CPU
assert lib.parent == kernels, lib
print(f"check_wheel: kernels {lib}")
'
step "gunicorn -c python:captioner.web.gunicorn_conf serves the tiny model, stops on SIGTERM"
ALTCAP_MODEL=$work/tiny ALTCAP_DATA_DIR=$work/data ALTCAP_THREADS=4 "$vpy" -c '
import json, re, signal, subprocess, sys, time, urllib.request
cmd = [sys.executable, "-m", "gunicorn", "-c", "python:captioner.web.gunicorn_conf",
       "--bind", "127.0.0.1:0", "captioner.web.app:create_app()"]
with open("gunicorn.log", "wb") as log:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
def log():
    return open("gunicorn.log", errors="replace").read()
try:
    deadline, port, ready = time.monotonic() + 120, None, False
    while not ready and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        port = port or (m := re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log())) and m[1]
        ready = bool(port and re.search(r"\[INFO\] model .* loaded", log()))
    assert ready, "gunicorn did not load the model:\n" + log()
    for path, want in (("/healthz", {"status": "ok"}), ("/readyz", None)):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            assert r.status == 200 and (want is None or json.load(r) == want), path
finally:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
assert code == 0 and "Traceback" not in log(), log()
'

find "$site" -type f | sort | diff "$work/site-before" - ||
    { echo "running altcap wrote into site-packages (above)" >&2 && exit 1; }

step "ok: $(basename "$wheel")"
