"""What only a GPU can check: the split resident on the device, pinned host memory, and a run that repeats itself
bit for bit under the deterministic settings. Marked `cuda`, skipped cleanly on machines without one (CI)."""
from __future__ import annotations

import pytest
import torch

from twinturbo.common.store import open_store
from twinturbo.train.run.data import load_split
from twinturbo.train.run.loop import train_runs

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_split_is_resident_on_the_gpu_and_batches_stay_there(synthetic_store):
    device = torch.device("cuda")
    with open_store(synthetic_store) as store:
        split = load_split(store, "train", device, progress=False)
    assert split.cls.device.type == "cuda" and split.patches.device.type == "cuda"
    cls, patches, labels = split.batch(torch.arange(8), device)
    assert cls.device.type == patches.device.type == labels.device.type == "cuda"


def test_gpu_run_repeats_bit_for_bit_and_matches_the_cpu_roughly(synthetic_store, quick_config):
    configs = [quick_config(epochs=2, critic_weight=0.3, latent_weight=0.3, loss="bin_cross", rescale="sigmoid"),
               quick_config(epochs=2, critic_weight=1.0)]
    with open_store(synthetic_store) as store:
        gpu = [load_split(store, name, torch.device("cuda"), progress=False) for name in ("train", "test")]
        cpu = [load_split(store, name, torch.device("cpu"), progress=False) for name in ("train", "test")]
    first = train_runs(configs, *gpu, 10, torch.device("cuda"), progress=False)  # fused, vmapped, bf16, fused AdamW
    again = train_runs(configs, *gpu, 10, torch.device("cuda"), progress=False)
    on_cpu = train_runs(configs, *cpu, 10, torch.device("cpu"), progress=False)
    for a, b, c in zip(first, again, on_cpu):
        assert a.metrics["epochs"] == b.metrics["epochs"]
        assert abs(a.metrics["test_accuracy"] - c.metrics["test_accuracy"]) < 0.1
