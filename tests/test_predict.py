"""tt-predict: a trained run applied to its store's split (its test accuracy exactly) and to image files through the
store's backbone (what the store path predicts for the same images), with bad input as one line."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent
EXTRACT = ["--dataset", "digits", "--backbone", "effnet-lite0:320", "--resolution", "64", "--limit", "200",
           "--batch-size", "64", "--chunk-size", "32", "--device", "cpu", "--no-progress"]


def tt(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(the digits store, a tt-train run on it)."""
    root = tmp_path_factory.mktemp("predict")
    assert tt("tt-extract", *EXTRACT, "--out", root / "features").returncode == 0
    store, run = root / "features" / "digits", root / "run"
    result = tt("tt-train", "--features", store, "--labels", "50", "--epochs", "3", "--batch-size", "32",
                "--proj-dim", "64", "--pred-dim", "32", "--disc-dim", "16", "--critic", "0.1", "--device", "cpu",
                "--quiet", "--out", run)
    assert result.returncode == 0, result.stderr
    return store, run


def read_predictions(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_predicting_the_runs_own_test_split_gives_its_test_accuracy(trained, tmp_path):
    store, run = trained
    result = tt("tt-predict", run, "--features", store, "--out", tmp_path / "p")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    accuracy = json.loads((tmp_path / "p" / "accuracy.json").read_text())
    assert accuracy["accuracy"] == metrics["test_accuracy"] and accuracy["samples"] == 200
    rows = read_predictions(tmp_path / "p" / "predictions.csv")
    assert len(rows) == 200 and list(rows[0])[:3] == ["sample", "label", "predicted"]
    probabilities = np.array([[float(r[f"p_{c}"]) for c in range(10)] for r in rows])
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert [int(r["predicted"]) for r in rows] == probabilities.argmax(axis=1).tolist()
    confusion = list(csv.reader(open(tmp_path / "p" / "confusion.csv")))
    counts = np.array([[int(x) for x in row[1:]] for row in confusion[1:]])
    assert counts.sum() == 200 and np.trace(counts) / 200 == metrics["test_accuracy"]
    assert (tmp_path / "p" / "confusion.png").stat().st_size > 10_000
    per_class = accuracy["per_class_accuracy"]
    assert per_class["0"] == pytest.approx(counts[0, 0] / counts[0].sum())
    # without --features: the store the run recorded (README: "its own store's test split"), the same predictions
    result = tt("tt-predict", run, "--out", tmp_path / "own")
    assert result.returncode == 0, result.stderr
    assert read_predictions(tmp_path / "own" / "predictions.csv") == rows


def test_images_through_the_stores_backbone_predict_what_the_store_predicts(trained, tmp_path):
    from twinturbo.extract.datasets import read_dataset_split

    store, run = trained
    test = read_dataset_split("digits", "test")
    images = test.read(0, 40)
    folder = tmp_path / "images"
    for i, image in enumerate(images):
        (folder / str(test.labels[i])).mkdir(parents=True, exist_ok=True)  # under <class>/: labelled
        Image.fromarray(image[..., 0]).save(folder / str(test.labels[i]) / f"{i:03d}.png")
    assert tt("tt-predict", run, "--features", store, "--out", tmp_path / "s").returncode == 0
    from_store = read_predictions(tmp_path / "s" / "predictions.csv")
    result = tt("tt-predict", run, "--images", folder, "--out", tmp_path / "i")
    assert result.returncode == 0, result.stderr
    rows = read_predictions(tmp_path / "i" / "predictions.csv")
    assert len(rows) == 40
    for row in rows:
        index = int(Path(row["sample"]).stem)
        assert row["predicted"] == from_store[index]["predicted"], row["sample"]
        assert int(row["label"]) == int(test.labels[index])


def test_bad_input_is_one_line(trained, tmp_path):
    store, run = trained
    unrecorded = tmp_path / "unrecorded"  # a run directory whose metrics.json names no store
    unrecorded.mkdir()
    for name in ("config.json", "head.pt"):
        (unrecorded / name).write_bytes((run / name).read_bytes())
    metrics = json.loads((run / "metrics.json").read_text())
    (unrecorded / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "store"}))
    for args, words in (((tmp_path, "--features", store), "no head.pt"),
                        ((unrecorded,), "the run records no store; pass --features STORE"),
                        ((run, "--features", store, "--split", "valid"), "--split valid"),
                        ((run, "--images", tmp_path / "none"), "not a directory")):
        result = tt("tt-predict", *args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
    other = tmp_path / "other"
    assert tt("tt-extract", *EXTRACT, "--backbone", "effnet-lite0", "--out", other).returncode == 0
    result = tt("tt-predict", run, "--features", other / "digits")
    assert result.returncode == 2 and "holds effnet-lite0 tokens" in result.stderr


def test_probabilities_are_the_heads_in_the_runs_own_precision(trained, tmp_path):
    """Computed as training evaluated (bf16 autocast for a bf16 run), not in another arithmetic."""
    import torch

    from twinturbo.common.store import open_store
    from twinturbo.train.run.data import load_split
    from twinturbo.train.run.rundir import load_run

    store, run_dir = trained
    assert tt("tt-predict", run_dir, "--features", store, "--out", tmp_path / "p").returncode == 0
    rows = read_predictions(tmp_path / "p" / "predictions.csv")
    written = np.array([[float(r[f"p_{c}"]) for c in range(10)] for r in rows])
    run = load_run(run_dir)
    with open_store(store) as opened:
        cls, patches, _ = load_split(opened, "test", torch.device("cpu"), progress=False).batch(
            torch.arange(200), torch.device("cpu"))

    def probabilities(bf16: bool) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, logits = run.head(cls, patches)
        return logits.float().softmax(dim=1).double().numpy()

    expected, other = probabilities(run.config.precision == "bf16"), probabilities(run.config.precision != "bf16")
    assert np.allclose(written, expected, rtol=1e-5, atol=1e-6)
    if run.config.precision == "bf16":
        assert not np.allclose(written, other, rtol=1e-5, atol=1e-6)


def test_a_sweep_with_save_heads_keeps_a_run_dir_that_tt_predict_applies(trained, tmp_path):
    """What `make demo` relies on (--save-heads): each sweep run's RUN_DIR under SWEEP_DIR/runs/<run id>, and
    tt-predict on it reproduces the test accuracy its results row recorded."""
    store, _ = trained
    sweep = tmp_path / "sweep"
    result = tt("tt-sweep", "--features", store, "--out", sweep, "--setups", "1,2", "--critic-grid", "0.1",
                "--labels", "50", "--seeds", "42", "--epochs", "1", "--batch-size", "32", "--proj-dim", "64",
                "--pred-dim", "32", "--disc-dim", "16", "--device", "cpu", "--save-heads")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        run = sweep / "runs" / row["run_id"]
        assert (run / "head.pt").exists() and (run / "config.json").exists()
        predicted = tt("tt-predict", run, "--features", store, "--out", tmp_path / row["run_id"])
        assert predicted.returncode == 0, predicted.stderr
        accuracy = json.loads((tmp_path / row["run_id"] / "accuracy.json").read_text())
        assert accuracy["accuracy"] == row["test_accuracy"]
