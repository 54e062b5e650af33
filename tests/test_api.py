"""The Python API (`import twinturbo as tt`): the commands as functions over the same code, raising the commands'
messages as TwinTurboError instead of exiting."""
from __future__ import annotations

import json

import numpy as np
import pytest

import twinturbo as tt
from twinturbo.common.errors import TwinTurboError

TINY = dict(batch_size=16, proj_dim=16, pred_dim=8, disc_dim=4, precision="fp32", epochs=2)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    return tt.extract("digits", out / "features", backbone="effnet-lite0:320", resolution=64, limit=96,
                      batch_size=32, chunk_size=16, device="cpu", progress=False)


def test_extract_train_and_predict_equal_the_commands_files(digits, tmp_path):
    assert digits.name == "digits" and (digits / "zarr.json").exists()
    run = tt.train(digits, out=tmp_path / "run", labels=20, critic_weight=0.5, device="cpu", progress=False,
                   log=["tensorboard"], **TINY)
    assert any((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))  # log= is tt-train's --log
    assert isinstance(run, tt.Run) and run.path == tmp_path / "run"
    assert run.metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    predictions = run.predict(device="cpu")  # its own store's test split: the run's test accuracy, exactly
    assert predictions.accuracy() == run.test_accuracy
    assert predictions.probabilities.shape == (96, 10) and np.allclose(predictions.probabilities.sum(axis=1), 1)


def test_sweep_returns_its_rows_and_report_writes_the_files(digits, tmp_path):
    rows = tt.sweep(digits, tmp_path / "sweep", setups="1,2", labels=[20], seeds=[1, 2], grids={"critic": [0.5]},
                    device="cpu", val_labels=20, **TINY)
    assert len(rows) == 4 and sorted(rows["setup"].tolist()) == [1, 1, 2, 2]
    assert set(rows["critic_weight"]) == {0.0, 0.5} and rows["test_accuracy"].between(0, 1).all()
    again = tt.load_results(tmp_path / "sweep")
    assert again["run_id"].tolist() == rows["run_id"].tolist()
    written = tt.report(tmp_path / "sweep", baselines=["LogisticRegression"])
    assert {p.name for p in written} >= {"summary.md", "results.csv", "figure_digits.png"}
    assert "| LogisticRegression | 20 |" in (tmp_path / "sweep" / "summary.md").read_text()


def test_mistakes_raise_the_commands_messages(digits, tmp_path):
    with pytest.raises(TwinTurboError, match=r"^--labels 0: expected a positive integer$"):
        tt.train(digits, labels=0, device="cpu")
    with pytest.raises(TwinTurboError, match="train: unknown option 'critic'"):
        tt.train(digits, critic=1.0)
    with pytest.raises(TwinTurboError, match="--fixmatch reads the strong and weak views"):
        tt.train(digits, fixmatch_weight=1.0, out=tmp_path / "never", device="cpu")
    assert not (tmp_path / "never").exists()
    with pytest.raises(TwinTurboError, match=r"^--attentive-queries 4: an option of --head attentive, and this run's "
                                             r"head is linear"):
        tt.train(digits, head="linear", attentive_queries=4, out=tmp_path / "never", device="cpu")
    with pytest.raises(TwinTurboError, match="sweep: unknown grid axis 'critc'"):
        tt.sweep(digits, tmp_path / "s", grids={"critc": [1]})
    with pytest.raises(TwinTurboError, match="does not exist: is .* a tt-sweep --out directory"):
        tt.load_results(tmp_path / "nothing")
    with pytest.raises(TwinTurboError, match="the terms are already registered"):
        tt.use_plugins(__file__)  # too late: this process has imported the training code
