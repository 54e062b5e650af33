"""`tt-train` end to end through click: outputs, defaults, and one-line errors for bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from twinturbo.train.cli import train_main

QUICK = ["--epochs", "2", "--batch-size", "64", "--lr", "2e-3", "--warmup", "5", "--proj-dim", "64",
         "--pred-dim", "32", "--disc-dim", "16", "--labels", "50", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, write_synthetic_store) -> Path:
    return write_synthetic_store(tmp_path_factory.mktemp("cli") / "synthetic")


def invoke(args: list[str]):
    return CliRunner().invoke(train_main, args)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_train_writes_the_run_directory(store_path, tmp_path):
    out = tmp_path / "run"
    result = invoke(["--features", str(store_path), "--loss", "cat_twin", "--rescale", "sigmoid", "--critic", "0.1",
                     "--latent", "0.1", "--out", str(out), *QUICK])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in result.output
    assert metrics["steps"] == 2 * 7 and len(metrics["epochs"]) == 2 and metrics["wall_time_s"] > 0
    config = json.loads((out / "config.json").read_text())
    assert (config["loss"], config["rescale"], config["critic_weight"], config["latent_weight"]) == \
        ("cat_twin", "sigmoid", 0.1, 0.1)
    assert (out / "head.pt").stat().st_size > 0


def test_default_run_directory_name(store_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(["--features", str(store_path), *QUICK])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs/synthetic/cat_cross_softmax_c0_l0_n50_s42/metrics.json").exists()


def test_incomplete_store_is_refused(tmp_path, write_synthetic_store):
    path = write_synthetic_store(tmp_path / "partial", complete=False)
    assert_one_line_error(invoke(["--features", str(path), *QUICK]), "split 'train' is incomplete", "6/7 chunks")


def test_missing_store_is_one_line(tmp_path):
    assert_one_line_error(invoke(["--features", str(tmp_path / "nope"), *QUICK]), "does not exist")


def test_other_format_version_is_refused(tmp_path, write_synthetic_store):
    import zarr

    path = write_synthetic_store(tmp_path / "old")
    zarr.open_group(str(path), mode="r+").attrs["format_version"] = 99
    assert_one_line_error(invoke(["--features", str(path), *QUICK]), "format version 99")


@pytest.mark.parametrize("flag, value, valid", [("--loss", "cross", "cat_cross, cat_twin, bin_cross"),
                                                ("--rescale", "tanh", "softmax, sigmoid"),
                                                ("--prior", "zipf", "uniform, labelled")])
def test_unknown_choice_lists_the_valid_ones(store_path, flag, value, valid):
    assert_one_line_error(invoke(["--features", str(store_path), flag, value, *QUICK]), f"{flag} {value}", valid)


@pytest.mark.parametrize("args, fragments", [
    (["--head", "linear", "--attentive-queries", "4"], ("--attentive-queries 4: an option of --head attentive",
                                                        "this run's head is linear")),
    (["--fixmatch-threshold", "0.9"], ("--fixmatch-threshold 0.9: an option of the fixmatch term", "--fixmatch 0")),
    (["--critic", "0", "--prior", "labelled"], ("--prior labelled: an option of the critic term", "--critic 0"))])
def test_an_option_the_run_would_not_read_is_refused(store_path, tmp_path, args, fragments):
    """An option of another head, or of a term that is off, would be recorded in config.json and change nothing: one
    line, and no run directory."""
    out = tmp_path / "run"
    assert_one_line_error(invoke(["--features", str(store_path), *QUICK, *args, "--out", str(out)]), *fragments)
    assert not out.exists()


@pytest.mark.parametrize("labels, fragment", [("5", "--labels 5: need at least one label per class"),
                                              ("401", "--labels 401: the train split has only 400")])
def test_label_budget_errors(store_path, labels, fragment):
    args = ["--features", str(store_path), *QUICK, "--labels", labels]
    assert_one_line_error(invoke(args), fragment)


def test_nan_loss_is_one_line_with_the_step(store_path, monkeypatch):
    import twinturbo.train.run.step as step

    monkeypatch.setattr(step, "lr_factor", lambda step, config: 1e30)  # the first update blows the weights up
    result = invoke(["--features", str(store_path), *QUICK])
    assert_one_line_error(result, "loss is not finite at step 2 ", "--lr")


def test_train_and_sweep_share_each_training_option_from_one_place():
    """Every option both commands have shows the same help and default, taken from TrainConfig (or the one shared
    --device); the only exceptions are what differs by design: --out (a run dir vs a sweep dir), --labels (one budget
    vs a list of budgets) and --features (tt-sweep --status needs none)."""
    from dataclasses import fields

    from twinturbo.train.cli import sweep_main
    from twinturbo.train.config import TrainConfig

    train_options = {p.opts[0]: p for p in train_main.params if p.opts[0].startswith("--")}
    sweep_options = {p.opts[0]: p for p in sweep_main.params if p.opts[0].startswith("--")}
    shared = sorted(set(train_options) & set(sweep_options) - {"--out", "--labels", "--features", "--help"})
    training = {f.metadata["flag"]: f for f in fields(TrainConfig) if not f.metadata["per_run"]}
    assert set(training) <= set(shared) and "--device" in shared
    for flag in shared:
        assert train_options[flag].help == sweep_options[flag].help, flag
    for flag, spec in training.items():
        assert train_options[flag].default == spec.default and f"[default: {spec.metadata['shown']}]" in train_options[flag].help
        assert sweep_options[flag].default is None  # unset in a sweep = TrainConfig's default
