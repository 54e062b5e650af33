"""Heads as a choice (train/heads/): each head's forward against an independent computation, K fused runs equal to
separate runs for every head, the attentive head with the critic and FixMatch trained by tt-train and reproduced by
tt-predict, a sweep over heads recorded and reported per head, a head from a plugin file with its checks, and the
latent term refused in one line on a head without a trained latent."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import make_head
from twinturbo.common.store import open_store
from twinturbo.extract.cli import main as extract_main
from twinturbo.train.config import TrainConfig
from twinturbo.train.heads import HEADS
from twinturbo.train.run.data import load_split
from twinturbo.train.run.fused import RunHeads
from twinturbo.train.run.loop import train, train_runs

BIN = Path(sys.executable).parent
NUM_CLASSES = 4  # of the tiny store (conftest.py: 12-d CLS, 3 patch tokens of 8)
SMALL = dict(proj_dim=16, pred_dim=12, disc_dim=8, attentive_width=8, attentive_heads=2, attentive_queries=2)
TINY = dict(epochs=2, batch_size=32, lr=3e-3, warmup_steps=2, labels=8, eval_batch_size=16, precision="fp32", **SMALL)
# digits at 64 px through effnet-lite0:320 (2x2 patch tokens of 320), with one weak and two strong views per image
EXTRACT = ["--dataset", "digits", "--backbone", "effnet-lite0:320", "--resolution", "64", "--limit", "160",
           "--batch-size", "32", "--chunk-size", "32", "--device", "cpu", "--no-progress", "--views", "weak:1,strong:2"]
TRAIN = ["--labels", "30", "--epochs", "3", "--batch-size", "32", "--proj-dim", "32", "--pred-dim", "16",
         "--disc-dim", "8", "--lr", "3e-3", "--warmup", "2", "--device", "cpu"]


def tt(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=600,
                          env=env)


@pytest.fixture(scope="module")
def splits(tmp_path_factory, write_tiny_store):
    store = open_store(write_tiny_store(tmp_path_factory.mktemp("heads") / "store"))
    device = torch.device("cpu")
    return load_split(store, "train", device, progress=False), load_split(store, "test", device, progress=False)


@pytest.fixture(scope="module")
def views_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("heads-views")
    extract_main([str(a) for a in EXTRACT + ["--out", out]])
    return out / "digits"


# ---- each head against an independent computation -------------------------------------------------------------

def test_every_package_head_is_registered_and_the_default_is_the_papers():
    assert {"twinturbo", "mlp", "cls", "linear", "attentive"} <= set(HEADS)
    assert TrainConfig().head == "twinturbo" and next(iter(HEADS)) == "twinturbo"


def test_linear_head_is_one_linear_layer_on_cls_and_mean_patch_and_its_z_is_its_input():
    head = make_head(12, 8, NUM_CLASSES, **SMALL, head="linear")
    cls, patches = torch.randn(5, 12), torch.randn(5, 3, 8)
    features = torch.cat([cls, patches.mean(dim=1)], dim=1)
    z, logits = head(cls, patches, torch.zeros(5, 16))  # no dropout: the mask is not applied
    torch.testing.assert_close(z, features)
    torch.testing.assert_close(logits, features @ head.linear.weight.T + head.linear.bias)
    rows = torch.tensor([4, 0, 0, 2])
    z_rows, logits_rows = head(cls, patches, None, rows=rows)
    torch.testing.assert_close(logits_rows, logits[rows])
    assert sum(p.numel() for name, p in head.named_parameters() if not name.startswith("discriminator.")) \
        == (12 + 8) * NUM_CLASSES + NUM_CLASSES


def test_cls_head_reads_no_patch_token_and_mlp_head_has_no_mixer():
    cls, patches = torch.randn(5, 12), torch.randn(5, 3, 8)
    only_cls = make_head(12, 8, NUM_CLASSES, **SMALL, head="cls")
    torch.testing.assert_close(only_cls(cls, patches)[1], only_cls(cls, torch.randn(5, 3, 8))[1])
    mlp = make_head(12, 8, NUM_CLASSES, **SMALL, head="mlp")
    fc = mlp.projector.fc
    z = F.leaky_relu(torch.cat([cls, patches.mean(1)], 1) @ fc.weight.T + fc.bias, 0.01)
    torch.testing.assert_close(mlp(cls, patches)[0], z)
    assert not any(name.startswith("mixer.") for name, _ in mlp.named_parameters())


def test_attentive_pooler_is_multi_head_cross_attention_of_learned_queries_then_an_mlp():
    """Against explicit softmax attention, head by head."""
    head = make_head(12, 8, NUM_CLASSES, **SMALL, head="attentive")
    pooler = head.pooler
    patches = torch.randn(3, 5, 8)
    x = F.layer_norm(patches, (8,), pooler.norm.weight, pooler.norm.bias)
    k, v = (x @ pooler.kv.weight.T + pooler.kv.bias).split(8, dim=-1)  # width 8, 2 heads of 4
    q = pooler.queries @ pooler.q.weight.T + pooler.q.bias  # [2 queries, 8]
    outputs = []
    for h in range(2):
        part = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[:, part] @ k[..., part].transpose(1, 2) / 4 ** 0.5, dim=-1)  # [3, 2, 5]
        outputs.append(weights @ v[..., part])
    attended = torch.cat(outputs, dim=-1) @ pooler.attn_out.weight.T + pooler.attn_out.bias
    y = pooler.queries + attended
    h2 = F.layer_norm(y, (8,), pooler.norm2.weight, pooler.norm2.bias)
    y = y + F.gelu(h2 @ pooler.fc1.weight.T + pooler.fc1.bias) @ pooler.fc2.weight.T + pooler.fc2.bias
    torch.testing.assert_close(pooler(patches), y.mean(dim=1), rtol=1e-5, atol=1e-5)
    # a patch token changes the pooled output: the queries do attend to it
    changed = patches.clone()
    changed[0, 3] += torch.randn(8)
    assert not torch.allclose(pooler(patches)[0], pooler(changed)[0])


# ---- fused runs ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batched", [False, True], ids=["one-after-another", "vmap"])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_stacked_forward_equals_each_head(name, batched):
    heads = [make_head(12, 8, NUM_CLASSES, **SMALL, head=name, init_seed=seed) for seed in (1, 2)]
    stack = RunHeads(heads, batched=batched, shared=HEADS[name].shared)
    generator = torch.Generator().manual_seed(0)
    cls, patches = torch.randn(5, 12, generator=generator), torch.randn(5, 3, 8, generator=generator)
    rows = torch.tensor([0, 1, 1, 4, 3, 2])
    mask = (torch.rand(6, 16, generator=generator) > 0.3).float() / 0.7
    z, logits = stack.forward(cls, patches, mask, rows=rows)
    logits.square().sum().backward()
    for k, head in enumerate(heads):
        z_k, logits_k = head(cls, patches, mask, rows=rows)
        torch.testing.assert_close(z[k], z_k, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits[k], logits_k, rtol=1e-5, atol=1e-6)
        logits_k.square().sum().backward()
        for parameter_name, parameter in head.named_parameters():
            if parameter.grad is not None:
                torch.testing.assert_close(stack.params[parameter_name].grad[k], parameter.grad, rtol=1e-4,
                                           atol=1e-5)
    assert stack.shared_weight().shape[0] == 2


# The key biases (the part of a bias that only adds q.b_k to every score of a query, which softmax ignores): their
# true gradient is 0, and AdamW turns its rounding noise into full-size steps alike in both runs, changing no output.
KEY_BIASES = {"mixer.qkv.bias": lambda n: torch.cat([torch.arange(n // 3), torch.arange(2 * n // 3, n)]),
              "pooler.kv.bias": lambda n: torch.arange(n // 2, n)}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_fused_runs_equal_separate_runs_on_every_head(splits, name):
    """K = 3 runs of one head (setup 1, setup 2, and setup 2 with the latent term where the head has a trained latent)
    in one pass give what each gives alone."""
    train_split, test_split = splits
    latent = 0.2 if HEADS[name].latent else 0.0
    configs = [TrainConfig(head=name, seed=7, **TINY), TrainConfig(head=name, seed=7, critic_weight=1.0, **TINY),
               TrainConfig(head=name, seed=7, critic_weight=0.3, latent_weight=latent, **TINY)]
    device = torch.device("cpu")
    fused = train_runs(configs, train_split, test_split, NUM_CLASSES, device, progress=False)
    for config, result in zip(configs, fused):
        alone = train(config, train_split, test_split, NUM_CLASSES, device, progress=False)
        for fused_epoch, alone_epoch in zip(result.metrics["epochs"], alone.metrics["epochs"]):
            for loss, value in alone_epoch["mean_losses"].items():
                assert fused_epoch["mean_losses"][loss] == pytest.approx(value, rel=1e-4, abs=1e-5), (name, loss)
        alone_state = alone.head.state_dict()
        for parameter_name, value in result.head.state_dict().items():
            if parameter_name.startswith("discriminator.") and config.critic_weight == 0:
                continue
            expected = alone_state[parameter_name]
            if parameter_name in KEY_BIASES:  # a true gradient of 0 (tests/test_fused.py): compared without it
                keep = KEY_BIASES[parameter_name](len(value))
                value, expected = value[keep], expected[keep]
            torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5, msg=parameter_name)


# ---- the commands ----------------------------------------------------------------------------------------------

def test_attentive_head_with_critic_and_fixmatch_trains_and_tt_predict_reproduces_it(views_store, tmp_path):
    run = tmp_path / "run"
    result = tt("tt-train", "--features", views_store, "--head", "attentive", "--critic", "1", "--fixmatch", "1",
                "--attentive-width", "64", "--attentive-heads", "4", *TRAIN, "--quiet", "--out", run)
    assert result.returncode == 0, result.stderr
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["head"] == "attentive" and config["attentive_width"] == 64
    assert set(metrics["epochs"][-1]["mean_losses"]) == {"task", "critic", "fixmatch", "total", "disc"}
    predicted = tt("tt-predict", run, "--features", views_store, "--out", tmp_path / "predicted",
                   "--device", "cpu")
    assert predicted.returncode == 0, predicted.stderr
    accuracy = json.loads((tmp_path / "predicted" / "accuracy.json").read_text())
    assert accuracy["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-12)


def test_the_latent_term_on_a_head_without_a_trained_latent_is_one_line_before_anything_is_written(views_store,
                                                                                                  tmp_path):
    result = tt("tt-train", "--features", views_store, "--head", "linear", "--latent", "0.1", *TRAIN, "--quiet",
                "--out", tmp_path / "run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --latent 0.1: the latent term reads z, the head's trained latent, and "
                                    "--head linear has none"), result.stderr
    assert not (tmp_path / "run").exists()
    typo = tt("tt-train", "--features", views_store, "--head", "attentve", *TRAIN, "--quiet", "--out", tmp_path / "run")
    assert typo.returncode == 2 and typo.stderr == ("error: --head attentve: expected one of twinturbo, mlp, cls, "
                                                    "linear, attentive (a plugin's? pass --plugins FILE.py)\n")
    bad = tt("tt-train", "--features", views_store, "--head", "attentive", "--attentive-heads", "3", *TRAIN,
             "--quiet", "--out", tmp_path / "run")
    assert bad.returncode == 2 and bad.stderr == "error: --attentive-heads 3: expected a divisor of " \
                                                 "--attentive-width 256\n"


def test_a_sweep_over_heads_records_each_and_reports_each(views_store, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["--features", views_store, "--setups", "1,2", "--critic-grid", "1", "--labels", "30", "--seeds", "1,2",
            "--epochs", "2", "--batch-size", "32", "--proj-dim", "32", "--pred-dim", "16", "--disc-dim", "8",
            "--attentive-width", "32", "--device", "cpu"]
    result = tt("tt-sweep", *args, "--heads", "twinturbo,linear,attentive", "--out", sweep)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert sorted({row["config"]["head"] for row in rows}) == ["attentive", "linear", "twinturbo"]
    assert len(rows) == len({row["run_id"] for row in rows}) == 12
    assert all(("-linear-" in row["run_id"]) == (row["config"]["head"] == "linear") for row in rows)
    # the paper's head keeps the run ids a sweep without --heads gives
    plain = tt("tt-sweep", *args, "--out", tmp_path / "plain", "--dry-run")
    twinturbo_ids = {row["run_id"] for row in rows if row["config"]["head"] == "twinturbo"}
    assert all(run_id in plain.stdout for run_id in twinturbo_ids), plain.stdout
    assert " head " not in plain.stdout.splitlines()[0]  # a head column only where a run trains another head
    dry = tt("tt-sweep", *args, "--heads", "twinturbo,linear,attentive", "--out", sweep, "--dry-run").stdout
    lines = {line.split()[-1]: line for line in dry.splitlines()[2:-1]}
    assert " head " in dry.splitlines()[0] and all(f" {row['config']['head']} " in lines[row["run_id"]] for row in rows)
    report = tt("tt-report", sweep, "--no-baseline")
    assert report.returncode == 0, report.stderr
    summary = (sweep / "summary.md").read_text()
    assert summary.startswith("### digits (effnet-lite0:320): heads\n\nHeads: at 30 labels the best is setup ")
    assert "| setup | labels | twinturbo | linear | attentive |" in summary
    with open(sweep / "results.csv") as handle:  # the backbone and the head, each in its own column
        assert {(r["backbone"], r["head"]) for r in csv.DictReader(handle)} == {
            ("effnet-lite0:320", head) for head in ("twinturbo", "linear", "attentive")}
    for section in ("### digits (effnet-lite0:320)\n", "### digits (effnet-lite0:320, head linear)\n",
                    "### digits (effnet-lite0:320, head attentive)\n"):
        assert section in summary
    for name in ("heads_digits.png", "figure_digits.png", "figure_digits_linear.png", "figure_digits_attentive.png"):
        assert (sweep / name).stat().st_size > 10_000
    # the Python API's sweep takes the same axis and finds the runs done
    import twinturbo

    frame = twinturbo.sweep(views_store, sweep, setups="1", heads=["linear"], labels=[30], seeds=[1, 2], epochs=2,
                            batch_size=32, proj_dim=32, pred_dim=16, disc_dim=8, attentive_width=32, device="cpu",
                            extend=True)
    linear = {row["run_id"] for row in rows if row["config"]["head"] == "linear" and row["setup"] == 1}
    assert linear <= set(frame["run_id"]) and len((sweep / "results.jsonl").read_text().splitlines()) == 12


HEAD_PLUGIN = textwrap.dedent('''
    import torch
    from torch import nn

    from twinturbo.train.heads import Head
    from twinturbo.train.heads.blocks import Predictor, Projector
    from twinturbo.train.terms import Option


    class MaxPoolHead(nn.Module):
        """[CLS ; max over the patch tokens], projector, predictor."""

        def __init__(self, shape, config):
            super().__init__()
            self.projector = Projector(shape.cls_dim + shape.patch_dim, config.proj_dim)
            self.predictor = Predictor(config.proj_dim, config.pred_dim, shape.num_classes)
            self.scale = config.maxpool_scale

        def forward(self, cls, patches, dropout_mask, rows):  # the contract, no defaults: tt-predict passes all four
            z = self.projector(torch.cat([cls, self.scale * patches.amax(dim=1)], dim=-1), dropout_mask, rows)
            return z, self.predictor(z)


    HEAD = Head("maxpool", "a test's head: max-pooled patch tokens", MaxPoolHead,
                options=(Option("maxpool_scale", "--maxpool-scale", 1.0, "Scale of the pooled tokens."),))
''')


@pytest.mark.parametrize("change, fragment", [
    (("return z, self.predictor(z)", "return z, self.predictor(z)[:, :-1]"),
     "returned (3, 32), (3, 9); expected (z [3, D], logits [3, 10])"),
    (("patches.amax(dim=1)", "patches.amax(dim=2)"), "failed: RuntimeError: "),
    (("dropout_mask, rows):", "dropout_mask, idx):"), "failed: TypeError: "),  # the step passes rows= by name
    (("return z, self.predictor(z)", "return z, self.predictor(z * dropout_mask[:, :1])"),
     "forward(cls [2, 1280], patches [2, 4, 320], dropout_mask None, rows=None) (the evaluation's call) failed: "
     "TypeError: ")])
def test_a_plugin_head_that_breaks_the_contract_is_one_line(views_store, tmp_path, change, fragment):
    """Outputs of the wrong shape, or a forward that fails on the store's shape: one line naming the head's file and
    the call, before anything is written (not a traceback from inside the first step)."""
    plugin = tmp_path / "maxpool.py"
    plugin.write_text(HEAD_PLUGIN.replace(*change))
    result = tt("tt-train", "--plugins", plugin, "--features", views_store, "--head", "maxpool", *TRAIN, "--out",
                tmp_path / "run", "--quiet")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: plugin {plugin}: head 'maxpool': forward(cls [2, 1280], patches [2, 4, "
                                    "320], ") and fragment in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_a_head_from_a_plugin_file_trains_is_recorded_and_is_named_when_missing(views_store, tmp_path):
    plugin = tmp_path / "maxpool.py"
    plugin.write_text(HEAD_PLUGIN)
    run = tmp_path / "run"
    result = tt("tt-train", "--plugins", plugin, "--features", views_store, "--head", "maxpool", "--maxpool-scale",
                "0.5", "--critic", "1", *TRAIN, "--quiet", "--out", run)
    assert result.returncode == 0, result.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["head"] == "maxpool" and config["maxpool_scale"] == 0.5
    assert config["plugins"] == {"maxpool": f"plugin {plugin}"}
    missing = tt("tt-predict", run, "--features", views_store, "--out", tmp_path / "p", "--device", "cpu")
    assert missing.returncode == 2 and missing.stderr == (f"error: {run}: it was trained with head 'maxpool' from "
                                                          f"plugin {plugin}: pass --plugins {plugin}\n")
    found = tt("tt-predict", "--plugins", plugin, run, "--features", views_store, "--out", tmp_path / "p",
               "--device", "cpu")
    assert found.returncode == 0, found.stderr
    predicted = json.loads((tmp_path / "p" / "accuracy.json").read_text())["accuracy"]
    assert predicted == pytest.approx(json.loads((run / "metrics.json").read_text())["test_accuracy"], abs=1e-12)
    sweep = tmp_path / "sweep"  # a sweep over it beside the paper's head, and the report's table
    swept = tt("tt-sweep", "--plugins", plugin, "--features", views_store, "--heads", "twinturbo,maxpool", "--setups",
               "1", "--labels", "30", "--seeds", "1,2", "--epochs", "1", "--batch-size", "32", "--proj-dim", "32",
               "--pred-dim", "16", "--disc-dim", "8", "--device", "cpu", "--out", sweep)
    assert swept.returncode == 0, swept.stderr
    status = tt("tt-sweep", "--out", sweep, "--status")  # without the sweep's --plugins: which one to pass
    assert status.returncode == 2 and status.stderr == (f"error: {sweep / 'sweep.json'}: the sweep trains head "
                                                        f"'maxpool', from plugin {plugin}: pass --plugins {plugin}\n")
    assert "4 runs: 4 done" in tt("tt-sweep", "--plugins", plugin, "--out", sweep, "--status").stdout
    reported = tt("tt-report", "--plugins", plugin, sweep, "--no-baseline")
    assert reported.returncode == 0, reported.stderr
    assert "| setup | labels | twinturbo | maxpool |" in (sweep / "summary.md").read_text()
    clash = tmp_path / "linear.py"
    clash.write_text(HEAD_PLUGIN.replace('Head("maxpool"', 'Head("linear"'))
    refused = tt("tt-train", "--plugins", clash, "--features", views_store, *TRAIN, "--out", tmp_path / "r")
    assert refused.returncode == 2 and refused.stderr == (f"error: plugin {clash}: head 'linear' is already a head "
                                                          "(built-in); give it another name\n")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    nothing = tt("tt-train", "--plugins", empty, "--features", views_store, *TRAIN, "--out", tmp_path / "r")
    assert nothing.returncode == 2 and "defines none of TERM, HEAD" in nothing.stderr
    assert not (tmp_path / "r").exists()


def test_a_head_of_an_installed_distribution_needs_no_option(views_store, tmp_path):
    """The same head as an entry point of the group twinturbo.heads (a dist-info written here, on PYTHONPATH): tt-train
    takes `--head maxpool` and its option without --plugins, and the run records where the head came from."""
    site = tmp_path / "site"
    info = site / "maxpool_head-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "maxpool_head.py").write_text(HEAD_PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: maxpool-head\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[twinturbo.heads]\nmaxpool = maxpool_head\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    result = tt("tt-train", "--features", views_store, "--head", "maxpool", "--maxpool-scale", "2", *TRAIN, "--quiet",
                "--out", tmp_path / "run", env=env)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["head"] == "maxpool" and config["plugins"] == {"maxpool": "entry point maxpool_head"}
    assert "maxpool (a test's head" in tt("tt-train", "--help", env=env).stdout


def test_the_heads_finding_says_on_which_heads_each_terms_own_gain_holds():
    """Known seed accuracies: on head A the critic adds +3 on every seed (its interval excludes 0) and FixMatch then
    adds nothing; on head B the critic's gain changes sign; FixMatch on top of the critic is judged on top of setup 2,
    not of setup 1, and critic + FixMatch together over setup 1 is said once, as its own comparison."""
    from functools import partial

    from twinturbo.train.report.heads import head_finding
    from twinturbo.train.report.selection import Combination, RunFigures
    from twinturbo.train.report.sentences import verdict

    seeds = (1, 2, 3, 4, 5)
    noise = (0.1, -0.2, 0.3, 0.0, -0.1)

    def combo(setup, name, accuracies):
        return Combination(setup, name, 100, (), {s: RunFigures((a,)) for s, a in zip(seeds, accuracies)})

    def head(setup1, critic, fixcritic):
        return {(1, 100): combo(1, "cat_cross/softmax", setup1),
                (2, 100): combo(2, "cat_cross/softmax + critic", critic),
                ("fixcritic", 100): combo("fixcritic", "cat_cross/softmax + critic + fixmatch", fixcritic)}

    def plus(values, deltas):
        return [v + d for v, d in zip(values, deltas)]

    base = [60 + n for n in noise]
    critic_a, critic_b = plus(base, [3 + n for n in noise]), plus(base, (1.0, -1.0, 0.5, -0.5, 0.2))
    a = head(base, critic_a, plus(critic_a, (0.3, -0.2, 0.4, -0.1, 0.1)))  # FixMatch: +0.1 on average, spread 0.6
    b = head(base, critic_b, plus(critic_b, (0.5, -0.4, 0.6, -0.3, 0.1)))
    text = head_finding({"twinturbo": a, "linear": b}, "last", partial(verdict, resolution=0.01))
    assert text.startswith("Heads: at 100 labels the best is setup fixcritic (cat_cross/softmax + critic + fixmatch) "
                           "on the twinturbo head with ")
    assert "; critic on top of setup 1 excludes 0 on 1 of 2 heads (twinturbo); " in text
    assert "; fixmatch on top of setup 2 excludes 0 on 0 of 2 heads; " in text
    assert text.endswith("; setup fixcritic over setup 1 excludes 0 on 1 of 2 heads (twinturbo).")
    assert "setup 2 over setup 1" not in text  # the critic's own gain, said once
