"""tt-report: figures, summary.md and results.csv from a small hand-written results.jsonl."""
from __future__ import annotations

import csv
import itertools
import random

import matplotlib.image
import pytest
from click.testing import CliRunner

from twinturbo.train.cli import report_main
from twinturbo.train.sweep import SETUPS, append_row

STORE = {"dataset": "digits", "backbone": "effnet-lite0", "fingerprint": "abc", "path": "/x", "created": "t"}


def _row(setup, labels, critic, latent, seed, accuracy):
    config = {"loss": SETUPS[setup].loss, "rescale": SETUPS[setup].rescale, "critic_weight": critic,
              "latent_weight": latent, "labels": labels, "seed": seed, "epochs": 2, "proj_dim": 16}
    return {"run_id": f"s{setup}-c{critic}-l{latent}-n{labels}-seed{seed}", "setup": setup, "config": config,
            "test_accuracy": accuracy, "epoch_accuracies": [accuracy / 2, accuracy], "wall_time_s": 1.0,
            "fused_runs": 3, "device": "cpu", "store": STORE}


@pytest.fixture
def sweep_dir(tmp_path):
    rng = random.Random(0)
    rows = []
    for setup, labels, seed in itertools.product(SETUPS, (100, 1000), (42, 1337, 3435)):
        critics = (0.0,) if setup == 1 else (0.1, 1.0)
        latents = (0.01, 1.0) if SETUPS[setup].latent else (0.0,)
        for critic, latent in itertools.product(critics, latents):
            rows.append(_row(setup, labels, critic, latent, seed, round(rng.uniform(0.5, 0.99), 4)))
    for row in rows:
        append_row(tmp_path / "results.jsonl", row)
    with open(tmp_path / "results.jsonl", "ab") as handle:
        handle.write(b'{"run_id": "cut')  # a partial last line is not a row
    return tmp_path, rows


def test_report_files_and_summary_numbers(sweep_dir, tmp_path):
    directory, rows = sweep_dir
    out = tmp_path / "report"
    result = CliRunner().invoke(report_main, [str(directory), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("figure_digits.png", "all_digits.png"):
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 300 and image.shape[1] > 600

    # Independent: per setup and budget, the lambda pair with the highest best seed; its best/mean/min over seeds.
    expected = {}
    for setup, labels in itertools.product(SETUPS, (100, 1000)):
        combos = {}
        for row in rows:
            c = row["config"]
            if row["setup"] == setup and c["labels"] == labels:
                combos.setdefault((c["critic_weight"], c["latent_weight"]), []).append(100 * row["test_accuracy"])
        (critic, latent), accs = max(combos.items(), key=lambda item: max(item[1]))
        expected[(setup, labels)] = (critic, latent, max(accs), sum(accs) / len(accs), min(accs), len(accs))

    table = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ") and
             line[2].isdigit()]
    assert len(table) == 14
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        setup, labels = int(cells[0].split(":")[0]), int(cells[1])
        critic, latent, best, mean, worst, seeds = expected[(setup, labels)]
        assert (float(cells[2]), float(cells[3])) == (critic, latent)
        assert [float(x) for x in cells[4:7]] == pytest.approx([best, mean, worst], abs=0.006)
        assert int(cells[7]) == seeds == 3

    with open(out / "results.csv") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(csv_rows) == len(rows)
    assert {r["run_id"]: float(r["test_accuracy"]) for r in csv_rows} == {r["run_id"]: r["test_accuracy"] for r in rows}


def test_report_of_a_missing_or_empty_sweep_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(report_main, [str(tmp_path)])
    assert result.exit_code == 2 and "results.jsonl does not exist" in result.output
    (tmp_path / "results.jsonl").write_text("")
    result = CliRunner().invoke(report_main, [str(tmp_path)])
    assert result.exit_code == 2 and "holds no finished run" in result.output


def test_one_dataset_with_two_backbones_gets_two_figures(tmp_path):
    """Regression: the file-name rule was inverted, so both backbones' figures were written to one file."""
    directory = tmp_path / "sweep"
    directory.mkdir()
    for backbone in ("effnet-lite0", "effnet-lite0:320"):
        for seed in (1, 2):
            row = _row(1, 100, 0.0, 0.0, seed, 0.5 + 0.1 * seed)
            row["store"] = dict(STORE, backbone=backbone, fingerprint=backbone)
            row["run_id"] += backbone
            append_row(directory / "results.jsonl", row)
    result = CliRunner().invoke(report_main, [str(directory), "--no-baseline"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in directory.glob("figure_*.png")) == ["figure_digits_effnet-lite0.png",
                                                                      "figure_digits_effnet-lite0_320.png"]


def test_several_sweeps_make_one_report_and_need_out(sweep_dir, tmp_path):
    directory, rows = sweep_dir
    n100, n1000 = tmp_path / "n100", tmp_path / "n1000"
    for path, budget in ((n100, 100), (n1000, 1000)):
        path.mkdir()
        for row in rows:
            if row["config"]["labels"] == budget:
                append_row(path / "results.jsonl", row)
    result = CliRunner().invoke(report_main, [str(n100), str(n1000), "--no-baseline"])
    assert result.exit_code == 2 and "needs --out" in result.output
    joint, single = tmp_path / "joint", tmp_path / "single"
    assert CliRunner().invoke(report_main, [str(n100), str(n1000), "--no-baseline", "--out", str(joint)]).exit_code == 0
    assert CliRunner().invoke(report_main, [str(directory), "--no-baseline", "--out", str(single)]).exit_code == 0
    assert (joint / "summary.md").read_text() == (single / "summary.md").read_text()


def test_paired_table_against_a_hand_computation(tmp_path):
    directory = tmp_path / "sweep"
    directory.mkdir()
    accuracies = {(1, 42): 0.60, (1, 7): 0.70, (2, 42): 0.65, (2, 7): 0.69}
    for (setup, seed), accuracy in accuracies.items():
        append_row(directory / "results.jsonl", _row(setup, 100, 0.0 if setup == 1 else 0.1, 0.0, seed, accuracy))
    assert CliRunner().invoke(report_main, [str(directory), "--no-baseline"]).exit_code == 0
    summary = (directory / "summary.md").read_text()
    # setup 2 - setup 1 on the same seed: +5.00 (seed 42), -1.00 (seed 7): mean +2.00
    assert "| setup 2: cat_cross/softmax + critic | 100 | 0.1 | 0 | 67.00 | 65.00-69.00 | +2.00 (-1.00..+5.00) | 2 |" \
        in summary
    assert "| setup 1: cat_cross/softmax | 100 | 0 | 0 | 65.00 | 60.00-70.00 | +0.00 (+0.00..+0.00) | 2 |" in summary


def test_diagnostics_figure_only_when_rows_hold_diagnostics(sweep_dir, tmp_path):
    directory, rows = sweep_dir
    out = tmp_path / "plain"
    assert CliRunner().invoke(report_main, [str(directory), "--no-baseline", "--out", str(out)]).exit_code == 0
    assert not (out / "diagnostics_digits.png").exists()  # rows without epoch_diagnostics: nothing to draw

    with_diagnostics = tmp_path / "diag"
    with_diagnostics.mkdir()
    for row in rows:
        diagnostics = {"d_real_acc": 0.9, "d_fake_acc": 0.3, "unlabelled_entropy": 0.5, "marginal_tv": 0.1,
                       "grad_task": 0.02, "grad_critic": 0.01} if row["config"]["critic_weight"] else {}
        append_row(with_diagnostics / "results.jsonl", dict(row, epoch_diagnostics=[diagnostics, diagnostics]))
    result = CliRunner().invoke(report_main, [str(with_diagnostics), "--no-baseline"])
    assert result.exit_code == 0, result.output
    image = matplotlib.image.imread(with_diagnostics / "diagnostics_digits.png")
    assert image.shape[0] > 300 and image.shape[1] > 1000
