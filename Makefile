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
APT_TEST_PACKAGES ?= redis-server
DEMO_MODEL ?= .cache/tiny-model

.PHONY: run test lint bench venv deps-test clean

$(VENV)/.stamp: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.stamp

# Until the HTTP service lands, `make run` captions a demo image with a tiny offline model.
run: venv
	test -f $(DEMO_MODEL)/config.json || $(PY) -m captioner make-tiny $(DEMO_MODEL)
	$(PY) -c "from PIL import Image; Image.new('RGB', (320, 240), (200, 30, 30)).save('.cache/demo.png')"
	$(PY) -m captioner caption .cache/demo.png --model $(DEMO_MODEL) --json

deps-test:
	@missing=""; for p in $(APT_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

test: venv deps-test lint
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: venv
	$(PY) bench/decode.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
