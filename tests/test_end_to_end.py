"""Each command run the way the README shows it, through its installed console script, on real data (digits),
without --limit, in both store formats: a default path can no longer break unseen."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
# The README's small-CPU training flags (what `make demo-digits` passes).
SMALL = ["--proj-dim", "256", "--pred-dim", "128", "--disc-dim", "64", "--epochs", "1", "--batch-size", "256",
         "--device", "cpu"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.parametrize("store_format, store_name", [("zarr", "digits"), ("hdf5", "digits.h5")])
def test_readme_commands_on_digits(tmp_path, store_format, store_name):
    """Extract, verify and train in both formats; the sweep and the report (its five baselines) on zarr only: they read
    the store through the same reader as training (common/store/), and the report's baselines took ~2 minutes."""
    run("tt-extract", "--dataset", "digits", "--backbone", "effnet-lite0", "--resolution", "64", "--format",
        store_format, "--out", "features", "--no-progress", cwd=tmp_path)
    store = f"features/{store_name}"
    verified = run("tt-extract", "--verify", store, "--no-progress", cwd=tmp_path).stdout
    assert "train: N=1257" in verified and "test: N=540" in verified

    trained = run("tt-train", "--features", store, "--out", "runs/one", "--quiet", *SMALL, cwd=tmp_path).stdout
    metrics = json.loads((tmp_path / "runs/one/metrics.json").read_text())
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in trained and metrics["steps"] == 5
    if store_format != "zarr":
        return

    run("tt-sweep", "--features", store, "--out", "sweeps/digits", "--setups", "1,2", "--labels", "100", "--seeds",
        "42", "--critic-grid", "0.1", *SMALL, cwd=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "sweeps/digits/results.jsonl").read_text().splitlines()]
    assert sorted(row["setup"] for row in rows) == [1, 2]
    # the sweep's setup-1 run is the tt-train run above (tt-train's defaults, seed 42): another process, same result
    setup1 = next(row for row in rows if row["setup"] == 1)
    assert setup1["test_accuracy"] == metrics["test_accuracy"]
    assert setup1["epoch_losses"] == [epoch["mean_losses"] for epoch in metrics["epochs"]]

    reported = run("tt-report", "sweeps/digits", cwd=tmp_path).stdout
    assert "LogisticRegression" in reported and "LabelSpreading" in reported
    assert (tmp_path / "sweeps/digits/figure_digits.png").stat().st_size > 10_000


def test_the_prepared_gpu_check_runs_at_smoke_size(tmp_path):
    """bench/gpu_check.py is run once on a GPU machine when one is lent; its --smoke size keeps it from rotting."""
    script = Path(__file__).parents[1] / "bench" / "gpu_check.py"
    result = subprocess.run([sys.executable, str(script), "--smoke", "--json", str(tmp_path / "gpu.json")],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((tmp_path / "gpu.json").read_text())
    assert figures["smoke"] is True and "skipped" in figures["cuda_tests"]
    assert figures["extract_overhead"] > 0 and figures["fused_speedup"] > 0 and figures["full_run_s"] > 0
    assert figures["mfu_setup2"] > 0 and {"mfu_fused", "mfu_fused_vmap", "svhn_ablation_min"} <= set(figures)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(figures) - 1 and lines[-1].startswith("wrote ")  # one line per figure, then the JSON
