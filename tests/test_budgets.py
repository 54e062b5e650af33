"""tt-report across label budgets (train/report/budgets.py): the curve, the per-budget table and finding, and λ chosen on
as many validation labels as training labels (or on --val-size), checked against a choice and a paired difference
recomputed here from the rows, and the validation labels themselves against the labelled subset."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from twinturbo.train.cli import report_main, sweep_main
from twinturbo.train.report.figures import setup_label, setup_line
from twinturbo.train.sweep.results import append_row, read_rows
from twinturbo.train.run.sampling import validation_subset

BUDGETS = (8, 16)
T_975 = {1: 12.7062047}  # t_{0.975} with 1 degree of freedom (two seeds), from a printed table


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, write_tiny_store):
    """Setups 1 and 2 (λ_C 0.1 or 1) at 8 and 16 labels, 2 seeds, 40 validation labels each, heads kept."""
    root = tmp_path_factory.mktemp("budgets")
    store, out = write_tiny_store(root / "store"), root / "sweep"
    result = CliRunner().invoke(sweep_main, [
        "--features", str(store), "--out", str(out), "--setups", "1,2", "--critic-grid", "0.1,1", "--labels",
        ",".join(map(str, BUDGETS)), "--seeds", "1,2", "--val-labels", "40", "--epochs", "3", "--batch-size", "32",
        "--lr", "3e-3", "--warmup", "1", "--proj-dim", "16", "--pred-dim", "8", "--disc-dim", "4", "--device", "cpu",
        "--save-heads"])
    assert result.exit_code == 0, result.output
    return store, out


def report(out: Path, where: Path, *extra: str) -> str:
    result = CliRunner().invoke(report_main, [str(out), "--out", str(where), "--no-baseline", *extra])
    assert result.exit_code == 0, result.output
    return (where / "summary.md").read_text()


def test_two_budgets_give_the_curve_the_table_and_the_finding(sweep, tmp_path):
    store, out = sweep
    rows = read_rows(out / "results.jsonl")
    summary = report(out, tmp_path / "report")
    assert (tmp_path / "report" / "budgets_synthetic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ("on as many validation labels as training labels at each budget: 8, 16 (class-balanced prefixes of the "
            "validation split every run was scored on, disjoint from its labelled subset)") in summary
    table = summary.split("Each setup against setup 1 at every budget")[1].split("\n\n")[1].splitlines()
    assert table[0] == "| setup | 8 labels | 16 labels |"
    cells = []  # setup 1's own accuracy per budget, recomputed here
    for budget in BUDGETS:
        test = [100 * r["test_accuracy"] for r in rows if r["setup"] == 1 and r["config"]["labels"] == budget]
        cells.append(f"{statistics.fmean(test):.2f} ± {T_975[1] * statistics.stdev(test) / math.sqrt(2):.2f} %")
    assert table[2] == f"| 1: cat_cross/softmax | {' | '.join(cells)} |"
    assert table[3].startswith("| 2: cat_cross/softmax + critic | ") and "Across budgets: the best is at 8 labels" \
        in summary


def _row(setup: int, budget: int, seed: int, critic: float, test: float, val_bits: list[int]) -> dict:
    """A results.jsonl row as tt-sweep writes it, its 40 validation labels' hits given bit by bit."""
    packed = bytes(sum(bit << i for i, bit in enumerate(val_bits[k:k + 8])) for k in range(0, len(val_bits), 8))
    config = {"loss": "cat_cross", "rescale": "softmax", "critic_weight": critic, "latent_weight": 0.0,
              "labels": budget, "seed": seed, "val_labels": len(val_bits), "epochs": 1, "batch_size": 32,
              "proj_dim": 8, "pred_dim": 8, "disc_dim": 4}
    return {"run_id": f"s{setup}-c{critic}-n{budget}-seed{seed}", "setup": setup,
            "setup_name": "cat_cross/softmax" + (" + critic" if setup == 2 else ""), "config": config,
            "test_accuracy": test, "epoch_accuracies": [test], "epoch_val_accuracies": [sum(val_bits) / 40],
            "epoch_val_correct": [packed.hex()], "val_samples": 40, "num_classes": 4, "test_samples": 400,
            "store": {"dataset": "synthetic", "backbone": "synthetic", "fingerprint": "f"}, "device": "cpu"}


# Validation hits of setup 2 by λ_C: on the first 8 labels λ_C 1 wins (6 vs 4), on the first 16 λ_C 0.1 (12 vs 8),
# on all 40 λ_C 1 again (32 vs 12): each rule picks a λ the others do not.
HITS = {0.1: [1] * 4 + [0] * 4 + [1] * 8 + [0] * 24, 1.0: [1] * 6 + [0] * 2 + [1] * 2 + [0] * 6 + [1] * 24}


@pytest.mark.parametrize("extra, chosen", [((), {8: 1.0, 16: 0.1}), (("--val-size", "16"), {8: 0.1, 16: 0.1}),
                                           (("--val-size", "40"), {8: 1.0, 16: 1.0})])
def test_lambda_is_chosen_on_as_many_validation_labels_as_the_budget_or_on_val_size(tmp_path, extra, chosen):

    for budget in BUDGETS:
        for seed in (1, 2):
            append_row(tmp_path / "results.jsonl", _row(1, budget, seed, 0.0, 0.60, [1] * 40))
            for critic, hits in HITS.items():
                append_row(tmp_path / "results.jsonl", _row(2, budget, seed, critic, 0.70 if critic == 1 else 0.65,
                                                             hits))
    summary = report(tmp_path, tmp_path / "report", *extra)
    for budget, critic in chosen.items():
        assert f"| 2: cat_cross/softmax + critic | {budget} | λ_C={critic:g} |" in summary, summary
    rule = ("as many validation labels as training labels at each budget: 8, 16" if not extra
            else f"the first {extra[1]} validation labels at every budget")
    assert rule in summary


def test_the_first_line_says_at_which_budgets_each_terms_own_gain_excludes_0(tmp_path):
    """Setup 2 (+ critic) against setup 1 on 3 seeds: at 8 labels +10, +12, +11 points (interval above 0), at 16
    +5, -4, +1 (it includes 0). The summary's first line after the protocol names the first only; the table of each
    term's gain has both, recomputed here."""
    t_975 = 4.30265273  # t_{0.975} with 2 degrees of freedom, from a printed table
    gains = {8: (10, 12, 11), 16: (5, -4, 1)}
    for budget, deltas in gains.items():
        for seed, delta in zip((1, 2, 3), deltas):
            append_row(tmp_path / "results.jsonl", _row(1, budget, seed, 0.0, 0.50, [1] * 40))
            append_row(tmp_path / "results.jsonl", _row(2, budget, seed, 1.0, 0.50 + delta / 100, [1] * 40))
    summary = report(tmp_path, tmp_path / "report")
    cells = [(f"{statistics.fmean(d):+.2f} ± {t_975 * statistics.stdev(d) / math.sqrt(3):.2f}",
              f"({sum(x > 0 for x in d)}/3)") for d in gains.values()]
    first = summary.split("\n\n")[3]
    assert first.startswith("Across budgets: the best is at 8 labels setup 2"), first
    assert first.endswith(f"A term's own gain whose 95% interval excludes 0: critic on top of setup 1 at 8 labels "
                          f"({cells[0][0]}) (each term at every budget: the table below)."), first
    assert (f"| critic (setup 2) | setup 1 | {' '.join(cells[0])} | {' '.join(cells[1])} |\n") in summary
    assert "- critic on top of setup 1" not in summary  # the table, not a line per budget


def test_the_validation_labels_are_class_balanced_prefixes_outside_the_labelled_subset(sweep):
    store, out = sweep
    from twinturbo.common.store import open_store

    with open_store(store) as opened:
        labels = torch.from_numpy(opened.split("train").labels())
    for run in sorted((out / "runs").iterdir()):
        metrics = json.loads((run / "metrics.json").read_text())
        config = json.loads((run / "config.json").read_text())
        labelled = torch.tensor(metrics["labelled_indices"])
        assert len(labelled) == config["labels"] and metrics["val_samples"] == 40
        drawn = validation_subset(labels, 40, 4, labelled, config["seed"])
        for size in (*BUDGETS, 40):
            prefix = drawn[:size]
            assert torch.bincount(labels[prefix], minlength=4).tolist() == [size // 4] * 4  # class-balanced
            assert not set(prefix.tolist()) & set(labelled.tolist())  # disjoint from the training labels


def test_grid_keeps_only_that_grids_runs(sweep, tmp_path):
    store, out = sweep
    grid = tmp_path / "grid.toml"
    grid.write_text('setups = [1, 2]\nlabels = [16]\nseeds = [1, 2]\ncritic_grid = [1]\n')
    summary = report(out, tmp_path / "report", "--grid", str(grid))
    assert "4 runs: setups 1, 2 at 16 labels" in summary and "| 2: cat_cross/softmax + critic | 16 | λ_C=1 |" in summary
    assert not (tmp_path / "report" / "budgets_synthetic.png").exists()  # one budget: no curve
    grid.write_text('setups = [1]\nlabels = [32]\nseeds = [1]\n')
    result = CliRunner().invoke(report_main, [str(out), "--out", str(tmp_path / "none"), "--no-baseline", "--grid",
                                              str(grid)])
    assert result.exit_code == 2 and f"--grid {grid}: none of the sweeps' runs is in this grid" in result.output
    # --labels: the grid's other budgets (another sweep's budget of the same grid)
    grid.write_text('setups = [1, 2]\nlabels = [16]\nseeds = [1, 2]\ncritic_grid = [1]\n')
    summary = report(out, tmp_path / "both", "--grid", str(grid), "--labels", "8,16")
    assert "8 runs: setups 1, 2 at 8, 16 labels" in summary
    alone = CliRunner().invoke(report_main, [str(out), "--out", str(tmp_path / "x"), "--labels", "8"])
    assert alone.exit_code == 2 and "error: --labels chooses the label budgets of a --grid file: give --grid too" \
        in alone.output


def test_a_setups_name_stays_whole_in_the_curves_legend_and_breaks_on_lines_under_a_bar():
    """The legend gives a setup's name as it is ('cat_cross/softmax', not the axis label's broken 'cat_cross/ softmax');
    under a bar a long key goes on a line of its own, and a loss name is broken at its '/' only when it is long."""
    name = "cat_cross/softmax + critic + fixmatch"
    assert setup_line("fixcritic", name) == f"fixcritic: {name}" and setup_line(1, "cat_cross/softmax") == \
        "1: cat_cross/softmax alone"
    assert setup_label("fixcritic", name) == "fixcritic:\ncat_cross/softmax\n+ critic + fixmatch"
    assert setup_label(2, "cat_cross/softmax + critic") == "2: cat_cross/softmax\n+ critic"
    assert setup_label(4, "cat_twin_unlabelled/softmax") == "4:\ncat_twin_unlabelled/\nsoftmax\nalone"


def test_the_curves_legend_gives_each_axis_once_and_a_varying_one_by_budget():
    """fixcritic's chosen λ at 4 budgets: λ_C and τ_Fix the same at each (said once), λ_Fix not (said in budget
    order); a setup without terms says nothing."""
    from types import SimpleNamespace

    from twinturbo.train.report.budgets import chosen_by_budget

    def combo(labels: int, fixmatch: float):
        weights = {"critic_weight": 3.0, "fixmatch_weight": fixmatch, "fixmatch_threshold": 0.95}
        return SimpleNamespace(labels=labels, weight=lambda name: weights.get(name, 0.0))

    assert chosen_by_budget([combo(n, v) for n, v in ((40, 0.3), (100, 0.3), (250, 1.0), (1000, 0.3))]) == \
        "λ_C=3 τ_Fix=0.95; λ_Fix 0.3 at 40, 0.3 at 100, 1 at 250, 0.3 at 1000"
    assert chosen_by_budget([SimpleNamespace(labels=8, weight=lambda name: 0.0)] * 2) == ""

