"""A researcher's own term without forking (twinturbo/plugins.py): a plugin file with --plugins and an entry point of
an installed distribution each train, sweep with their own grid and appear in tt-report's tables; a clash, a missing
plugin and a run met without its plugin are one line each; examples/own_term.py runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
TERM_SOURCE = '''
import torch
from twinturbo.train.terms import StepView, Term, Weight


def loss(view: StepView) -> torch.Tensor:
    return view.logits["labelled"].float().pow(2).mean()


TERM = Term("{name}", "mean square of the labelled logits (a test's plugin)", frozenset({{"labelled"}}), loss,
            weight=Weight("--{name}", "λ_S", "Weight of the logit shrinkage.", (0.1, 1.0)))
'''
TINY = ["--batch-size", "16", "--proj-dim", "16", "--pred-dim", "8", "--disc-dim", "4", "--device", "cpu",
        "--precision", "fp32"]


def tt(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TWINTURBO_PLUGINS"}
    environment.update(env or {}, OMP_NUM_THREADS="1")
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                          env=environment, cwd=ROOT)


def one_line(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, \
        result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    return result.stderr


@pytest.fixture
def plugin(tmp_path) -> Path:
    path = tmp_path / "elsewhere" / "shrink_term.py"  # outside the repository
    path.parent.mkdir()
    path.write_text(TERM_SOURCE.format(name="shrink"))
    return path


def test_a_plugin_term_trains_sweeps_with_its_grid_and_is_reported(plugin, write_tiny_store, tmp_path):
    store = write_tiny_store(tmp_path / "store")
    run = tt("tt-train", "--plugins", str(plugin), "--features", str(store), "--labels", "8", "--epochs", "2",
             "--shrink", "0.5", "--out", str(tmp_path / "run"), "--quiet", *TINY)
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["shrink_weight"] == 0.5 and config["plugins"] == {"shrink": f"plugin {plugin}"}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "shrink" in metrics["epochs"][0]["mean_losses"] and "grad_shrink" in json.dumps(metrics)

    grid = tmp_path / "grid.toml"
    grid.write_text('setups = ["1", "s"]\n[[setup]]\nkey = "s"\nloss = "cat_cross"\nterms = ["shrink"]\n')
    sweep = tmp_path / "sweep"
    result = tt("tt-sweep", "--plugins", str(plugin), "--features", str(store), "--out", str(sweep), "--grid",
                str(grid), "--shrink-grid", "0.1,0.3", "--labels", "8", "--seeds", "1,2", "--epochs", "2",
                "--workers", "2", *TINY)  # workers: spawned processes that must load the plugin too
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert sorted((str(r["setup"]), r["config"]["shrink_weight"]) for r in rows) == [
        ("1", 0.0), ("1", 0.0), ("s", 0.1), ("s", 0.1), ("s", 0.3), ("s", 0.3)]
    assert all(r["plugins"] == {"shrink": f"plugin {plugin}"} for r in rows if r["setup"] == "s")

    unread = tt("tt-sweep", "--plugins", str(plugin), "--features", str(store), "--out", str(tmp_path / "unread"),
                "--setups", "1", "--shrink-grid", "0.5", "--labels", "8", "--seeds", "1", "--dry-run", *TINY)
    assert unread.returncode == 0 and "warning: --shrink-grid 0.5: read by no chosen setup (1)" in unread.stderr

    report = tt("tt-report", "--plugins", str(plugin), str(sweep), "--no-baseline")
    assert report.returncode == 0, report.stderr
    summary = (sweep / "summary.md").read_text()
    assert "| s: cat_cross/softmax + shrink | 8 | λ_S=" in summary
    one_line(tt("tt-report", str(sweep), "--no-baseline"), "it was trained with 'shrink' from plugin",
             f"pass --plugins {plugin}")
    one_line(tt("tt-predict", str(tmp_path / "run"), "--features", str(store)), f"pass --plugins {plugin}")
    predicted = tt("tt-predict", "--plugins", str(plugin), str(tmp_path / "run"), "--features", str(store))
    assert predicted.returncode == 0, predicted.stderr


def test_an_entry_point_term_of_an_installed_distribution_needs_no_option(write_tiny_store, tmp_path):
    site = tmp_path / "site"  # a distribution on sys.path: its module and its dist-info with the entry point
    (site / "grow_term-0.1.dist-info").mkdir(parents=True)
    (site / "grow_term.py").write_text(TERM_SOURCE.format(name="grow"))
    (site / "grow_term-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: grow-term\n"
                                                                "Version: 0.1\n")
    (site / "grow_term-0.1.dist-info" / "entry_points.txt").write_text("[twinturbo.terms]\ngrow = grow_term\n")
    store = write_tiny_store(tmp_path / "store")
    run = tt("tt-train", "--features", str(store), "--labels", "8", "--epochs", "1", "--grow", "0.5", "--out",
             str(tmp_path / "run"), "--quiet", *TINY, env={"PYTHONPATH": str(site)})
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["plugins"] == {"grow": "entry point grow_term"}
    help_text = tt("tt-sweep", "--help", env={"PYTHONPATH": str(site)}).stdout
    assert "--grow-grid" in help_text and "--grow-grid" not in tt("tt-sweep", "--help").stdout
    one_line(tt("tt-predict", str(tmp_path / "run"), "--features", str(store)),
             "install the package that provides entry point grow_term")


def test_a_clash_a_missing_file_and_a_broken_plugin_are_one_line_each(tmp_path):
    clash = tmp_path / "clash.py"
    clash.write_text(TERM_SOURCE.format(name="critic"))
    one_line(tt("tt-train", "--plugins", str(clash), "--help"), f"plugin {clash}: term 'critic' is already a term "
                                                                "(built-in)")
    one_line(tt("tt-train", "--plugins", str(tmp_path / "nowhere.py"), "--help"), "expected an existing Python file")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_anywhere\n")
    one_line(tt("tt-sweep", "--plugins", str(broken), "--help"), f"--plugins {broken}: cannot load it:",
             "ModuleNotFoundError")
    option = tmp_path / "option.py"  # a term whose weight flag takes an existing option's
    option.write_text(TERM_SOURCE.format(name="lr"))
    one_line(tt("tt-train", "--plugins", str(option), "--help"), f"plugin {option}: term 'lr': --lr is already taken "
                                                                 "by the training option lr; rename the term")


def test_the_example_defines_its_term_and_prints_the_paired_difference(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "own_term.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900,
                            env={k: v for k, v in os.environ.items() if k != "TWINTURBO_PLUGINS"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("marginal on top of setup 1: ") and "points (paired 95% t interval over 3 seeds;" \
        in lines[-1], result.stdout
    rows = [json.loads(line) for line in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r.get("plugins", {}).get("marginal", "").startswith("plugin ") for r in rows
                               if r["setup"] == "marginal"} == {True}
