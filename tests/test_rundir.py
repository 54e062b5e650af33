"""RUN_DIR: what tt-train writes, reopened as tt-predict reads it."""
from __future__ import annotations

import json

import pytest
import torch

from twinturbo.common.errors import TwinTurboError
from twinturbo.predict import predict_split
from twinturbo.train.run.rundir import load_run, train_from_store


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_nan_in_the_features_stops_the_run_at_step_1(tmp_path, quick_config, write_synthetic_store):
    path = write_synthetic_store(tmp_path / "huge", scale=1e30)  # fp16 overflows to inf: the first forward is NaN
    with pytest.raises(TwinTurboError, match=r"not finite at step 1 "):
        train_from_store(path, quick_config(), torch.device("cpu"), tmp_path / "run", progress=False)


def test_run_directory_reopens(synthetic_store, tmp_path, quick_config):
    result, run_dir = train_from_store(synthetic_store, quick_config(epochs=1), torch.device("cpu"), tmp_path / "run",
                                       progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] == result.metrics["test_accuracy"]
    assert metrics["store"]["dataset"] == "synthetic" and len(metrics["store"]["fingerprint"]) == 16
    assert json.loads((run_dir / "config.json").read_text()) == quick_config(epochs=1).to_dict()
    run = load_run(run_dir)  # what tt-predict reads: the same head, evaluated as training evaluated it
    assert predict_split(run, synthetic_store, "test", torch.device("cpu")).accuracy() == metrics["test_accuracy"]



def test_a_directory_without_a_head_or_with_a_damaged_one_is_one_line(tmp_path):
    with pytest.raises(TwinTurboError, match=r"no head.pt, not a trained run directory"):
        load_run(tmp_path)
    (tmp_path / "head.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TwinTurboError, match=r"head.pt: not a twinturbo head"):
        load_run(tmp_path)
