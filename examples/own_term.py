"""Your own term of Eq. 22, defined in this file, against setup 1 on scikit-learn's digits, three seeds.

The term: the entropy of the batch's mean prediction, maximised (L_M = -H(mean_j p_j) over the unlabelled batch),
so that the predictions on unlabelled images use every class. With entropy minimisation it makes the "information
maximisation" of Krause et al. (2010); here it is added alone, to show the extension point, not as a claim.

    .venv/bin/python examples/own_term.py [--out DIR]     # about a minute on 2 CPU cores

The file is its own plugin: `tt.use_plugins(__file__)` comes before anything of the training code is imported, and
the registry then imports this file as a plugin module and takes its TERM (twinturbo/plugins.py). The same TERM in
a file of its own works with `tt-train --plugins FILE.py --marginal 0.3`, or from an installed package's entry point.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import twinturbo as tt

if __name__ == "__main__":
    tt.use_plugins(__file__)

import torch  # noqa: E402  (after use_plugins: the registry is built on the next import)

from twinturbo.train.losses import normalised_log_rescale  # noqa: E402
from twinturbo.train.terms import StepView, Term, Weight  # noqa: E402


def loss(view: StepView) -> torch.Tensor:
    """-H(mean p): p the normalised sigma(f) of the unlabelled batch; lowest when the mean prediction is uniform."""
    mean = normalised_log_rescale(view.logits["unlabelled"], view.config.rescale).exp().mean(dim=0)
    return (mean * mean.clamp_min(1e-12).log()).sum()


TERM = Term("marginal", "negative entropy of the unlabelled batch's mean prediction (example plugin)",
            frozenset({"unlabelled"}), loss,
            weight=Weight("--marginal", "λ_M", "Weight of the mean-prediction entropy term (0 = off).", (0.1, 1.0)))

# Setup 1 against setup 1 + marginal, small enough for a minute of CPU (the digits store: 1257 train images).
GRID = {
    "setup": [{"key": "marginal", "loss": "cat_cross", "rescale": "softmax", "terms": ["marginal"],
               "grids": {"marginal": [0.3]}}],
    "setups": ["1", "marginal"], "labels": [50], "seeds": [42, 1337, 3435],
    "training": {"epochs": 4, "batch_size": 64, "lr": 1e-4, "warmup": 10, "proj_dim": 256, "pred_dim": 64,
                 "disc_dim": 32, "precision": "fp32"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where the store and the sweep go [a temporary directory]")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="own-term-"))
    store = tt.extract("digits", out / "features", backbone="effnet-lite0:320", resolution=64, progress=False)
    rows = tt.sweep(store, out / "sweep", grid=GRID, device="cpu")

    from twinturbo.train.report.stats import paired_difference

    accuracy = {setup: dict(zip(part["seed"], 100 * part["test_accuracy"])) for setup, part in rows.groupby("setup")}
    gain = paired_difference(accuracy["marginal"], accuracy[1])
    print(f"setup 1: {', '.join(f'{a:.2f}' for a in accuracy[1].values())}; + marginal (λ_M 0.3): "
          f"{', '.join(f'{a:.2f}' for a in accuracy['marginal'].values())} (test %, seeds 42, 1337, 3435)")
    print(f"marginal on top of setup 1: {gain.difference.text(signed=True)} points (paired 95% t interval over "
          f"{len(gain.seeds)} seeds; above on {gain.positive})")


if __name__ == "__main__":
    main()
