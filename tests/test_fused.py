"""The fused sweep trainer equals separate `loop.train` runs with the same seed (tt-sweep's correctness claim)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from twinturbo.common.store import open_store
from twinturbo.train.config import TrainConfig
from twinturbo.train.run.data import load_split
from twinturbo.common.device import Acceleration
from twinturbo.train.run.fused import RunHeads
from twinturbo.train.run.loop import check_fusable, train, train_runs
from conftest import make_head

NUM_CLASSES = 4  # of the tiny store (conftest.py)


TINY = dict(epochs=2, batch_size=32, lr=3e-3, warmup_steps=2, proj_dim=16, pred_dim=12, disc_dim=8, labels=8,
            eval_batch_size=16, precision="fp32")
# One run of each of the paper's setups (train/sweep/setups.py) (lambdas off the default grid to exercise per-run weights).
SETUPS = [("cat_cross", "softmax", 0.0, 0.0), ("cat_cross", "softmax", 0.3, 0.0), ("cat_twin", "softmax", 0.1, 0.0),
          ("cat_twin", "sigmoid", 1.0, 0.0), ("cat_twin", "sigmoid", 0.5, 0.2), ("bin_cross", "softmax", 0.1, 1.0),
          ("bin_cross", "sigmoid", 1.0, 0.1)]


@pytest.fixture(scope="module")
def splits(tmp_path_factory, write_tiny_store):
    store = open_store(write_tiny_store(tmp_path_factory.mktemp("fused") / "store"))
    device = torch.device("cpu")
    return load_split(store, "train", device, progress=False), load_split(store, "test", device, progress=False)


@pytest.mark.parametrize("acceleration", [None, Acceleration(batched_runs=True, fused_adamw=True)],
                         ids=["cpu-defaults", "gpu-paths-on-cpu"])
def test_fused_equals_separate_runs(splits, acceleration):
    train_split, test_split = splits
    configs = [TrainConfig(loss=loss, rescale=rescale, critic_weight=c, latent_weight=l, seed=1337, **TINY)
               for loss, rescale, c, l in SETUPS]
    device = torch.device("cpu")
    fused_results = train_runs(configs, train_split, test_split, NUM_CLASSES, device, progress=False,
                               acceleration=acceleration)
    fused_metrics, fused_heads = [r.metrics for r in fused_results], [r.head for r in fused_results]
    for config, metrics, head in zip(configs, fused_metrics, fused_heads):
        alone = train(config, train_split, test_split, NUM_CLASSES, device, progress=False)
        assert metrics["steps"] == alone.metrics["steps"] == 6
        for fused_epoch, alone_epoch in zip(metrics["epochs"], alone.metrics["epochs"]):
            assert fused_epoch["test_accuracy"] == pytest.approx(alone_epoch["test_accuracy"], abs=1.5 / 40)
            assert fused_epoch["mean_losses"].keys() == alone_epoch["mean_losses"].keys()
            for name, value in alone_epoch["mean_losses"].items():
                assert fused_epoch["mean_losses"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (config, name)
        # The trained model parameters themselves (the discriminator too when it is trained).
        alone_state = alone.head.state_dict()
        for name, value in head.state_dict().items():
            expected = alone_state[name]
            if name.startswith("discriminator.") and config.critic_weight == 0:
                continue  # never read by a run without critic (loop.train does not even step it)
            if name == "mixer.qkv.bias":
                # The key bias has a true gradient of exactly 0 (softmax is invariant to q.b_k); AdamW turns its
                # rounding noise into full-size steps, so it differs in both runs alike and changes no output.
                dim = value.shape[0] // 3
                value, expected = torch.cat([value[:dim], value[2 * dim:]]), torch.cat([expected[:dim],
                                                                                        expected[2 * dim:]])
            torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5)
        assert metrics["nonfinite_step"] is None


def test_runs_that_see_different_batches_are_not_fused():
    with pytest.raises(ValueError, match="seed"):
        check_fusable([TrainConfig(seed=1), TrainConfig(seed=2)])
    with pytest.raises(ValueError, match="labels"):
        check_fusable([TrainConfig(labels=100), TrainConfig(labels=1000)])
    check_fusable([TrainConfig(loss="cat_cross"), TrainConfig(loss="bin_cross", rescale="sigmoid", critic_weight=1)])


@pytest.mark.parametrize("batched", [False, True])
def test_stacked_forward_equals_each_head(batched):
    """Both paths of the stacked heads (one run after another on CPU, one vmap over the run axis on GPU) give each
    head's own outputs and gradients."""
    heads = [make_head(12, 8, NUM_CLASSES, 16, 12, 8, init_seed=seed) for seed in (1, 2, 3)]
    stack = RunHeads(heads, batched=batched)
    generator = torch.Generator().manual_seed(0)
    cls, patches = torch.randn(5, 12, generator=generator), torch.randn(5, 3, 8, generator=generator)
    mask = (torch.rand(5, 16, generator=generator) > 0.3).float() / 0.7
    z, logits = stack.forward(cls, patches, mask)
    probs = torch.softmax(logits, dim=-1)
    (logits.square().sum() + sum(stack.discriminator(k, probs[k]).sum() for k in range(3))).backward()
    for k, head in enumerate(heads):
        z_k, logits_k = head(cls, patches, mask)
        torch.testing.assert_close(z[k], z_k, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits[k], logits_k, rtol=1e-5, atol=1e-6)
        (logits_k.square().sum() + head.discriminator(torch.softmax(logits_k, dim=-1)).sum()).backward()
        for name, parameter in head.named_parameters():
            torch.testing.assert_close(stack.params[name].grad[k], parameter.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batched", [False, True], ids=["one-after-another", "vmap"])
def test_bf16_path_trains_on_the_cpu(splits, batched):
    """--precision bf16 (autocast, fused AdamW; with vmap as on a GPU) on the CPU, whether or not it has native bf16:
    it learns the separable tokens like fp32, computes something else than fp32, and records its precision."""
    train_split, test_split = splits
    fp32_config = TrainConfig(critic_weight=0.1, seed=1, **dict(TINY, epochs=8))  # fp32 reaches 0.875 here
    plain, = train_runs([fp32_config], train_split, test_split, NUM_CLASSES, torch.device("cpu"), progress=False)
    bf16, = train_runs([replace(fp32_config, precision="bf16")], train_split, test_split, NUM_CLASSES,
                       torch.device("cpu"), progress=False,
                       acceleration=Acceleration(batched_runs=batched, fused_adamw=True))
    assert (plain.metrics["precision"], bf16.metrics["precision"]) == ("fp32", "bf16")
    assert bf16.metrics["nonfinite_step"] is None and bf16.metrics["test_accuracy"] > 0.6
    assert abs(bf16.metrics["test_accuracy"] - plain.metrics["test_accuracy"]) <= 0.1
    assert bf16.metrics["epochs"][0]["mean_losses"] != plain.metrics["epochs"][0]["mean_losses"]
