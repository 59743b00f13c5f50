# AltCap: `make run` (the main job) and `make test` (the whole suite), each from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch goes in first: the CPU wheel on this kind of machine (pip finds it locally); set
# TORCH_SPEC (and PIP_EXTRA_INDEX_URL) for another build, e.g. a CUDA one.
TORCH_SPEC ?= torch==2.13.0
# Debian packages the test suite drives for real.
APT_TEST_PACKAGES ?= redis-server chromium firefox-esr prometheus fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf
# Tesseract's language models for reading text in images (ALTCAP_OCR_LANGS adds others:
# tesseract-ocr-deu, ...); `make run` installs them too.
OCR_PACKAGES ?= tesseract-ocr-eng
# METEOR (pycocoevalcap) runs Java: any installed JRE will do, else Debian's default one.
JAVA_PACKAGE ?= default-jre-headless
# The bfloat16 CPU kernel (captioner/runtime/kernels/) is compiled on first use: any C compiler.
CC_PACKAGE ?= gcc
HOST ?= 127.0.0.1
PORT ?= 8000
TINY_MODEL ?= .cache/tiny-demo
GUNICORN := $(VENV)/bin/gunicorn -c gunicorn.conf.py --bind $(HOST):$(PORT) "app:create_app()"

.PHONY: run run-tiny deps-run test test-wheel lint docs docs-check bench bench-serve venv deps-test clean

$(VENV)/.stamp: pyproject.toml requirements.txt requirements-dev.txt requirements-train.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[train,dev]"  # altcap itself (editable) with the requirements files' lists
	touch $@

venv: $(VENV)/.stamp

# The service on 127.0.0.1:8000 (HOST=, PORT= to change), serving $$ALTCAP_MODEL (default
# clipcap-coco, downloaded on first use).
run: venv deps-run
	$(GUNICORN)

# The same with the tiny demo model, trained on synthetic shapes on first use and whenever
# the code that makes it changed (about 1.5 minutes, offline): real captions and confidences
# of drawn shapes ("A red circle on a white background."), nonsense on anything else.
run-tiny: venv deps-run
	$(PY) -m captioner make-tiny --trained --keep-current $(TINY_MODEL)
	ALTCAP_MODEL=$(TINY_MODEL) $(GUNICORN)

deps-run:
	@missing=""; for p in $(OCR_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

deps-test:
	@missing=""; for p in $(APT_TEST_PACKAGES) $(OCR_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v java >/dev/null || missing="$$missing $(JAVA_PACKAGE)"; \
	command -v $${CC:-cc} >/dev/null || missing="$$missing $(CC_PACKAGE)"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

test: venv deps-test lint docs-check test-wheel
	node --test extension/tests/*.test.mjs
	$(PY) -m pytest -q

# The wheel, installed into a fresh virtualenv outside the checkout, running `altcap make-tiny`
# and `altcap caption` there (a couple of minutes; pip's cache keeps later runs short).
test-wheel: deps-test
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" bash tests/packaging/check_wheel.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports  # the layers and contracts in pyproject.toml

# The documentation site (docs/, mkdocs.yml) into site/, its generated blocks (tables from
# Settings and TrainOptions, the HTTP operations from /openapi.json) rewritten first.
docs: venv
	$(PY) docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# As CI builds it: a broken link, anchor or reference, or a stale generated block, fails.
docs-check: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: venv
	$(PY) bench/decode.py

bench-serve: venv
	$(PY) bench/serve.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache site
