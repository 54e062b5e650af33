"""The backbone and dataset registries (extract/backbones/registry.py, extract/datasets/registry.py) take an installed
package's own family and source through entry points: a distribution the test writes (its module and a dist-info
declaring `[twinturbo.backbones]` and `[twinturbo.datasets]`, on PYTHONPATH, outside the repository) makes a store with
tt-extract that --verify passes and that holds what a forward written here computes; the unknown-spec messages name
them; a clash with a built-in, a broken module and a module without the object are one line each."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from twinturbo.common.store import open_store

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
WIDTH, SIDE, PATCH = 8, 16, 4

# The installed package's module: a conv net of random weights (one 4x4 stride-4 conv: its cells are the patches, their
# mean the cls) and a dataset of random images, each from a recipe this test repeats on its own.
EXTRAS = textwrap.dedent('''
    import numpy as np
    import torch
    from torch import nn

    from twinturbo.extract.backbones import Backbone, BackboneFamily
    from twinturbo.extract.datasets import DatasetSource, DatasetSplit


    def weights(width):
        rng = np.random.default_rng(width)
        return (rng.standard_normal((width, 3, 4, 4)).astype(np.float32) * 0.1,
                rng.standard_normal(width).astype(np.float32) * 0.1)


    class TinyConv(Backbone):
        def __init__(self, width, options):
            super().__init__()
            self.resolution = int(options.resolution or 16)
            self.conv = nn.Conv2d(3, width, 4, stride=4)
            weight, bias = weights(width)
            with torch.no_grad():
                self.conv.weight.copy_(torch.from_numpy(weight))
                self.conv.bias.copy_(torch.from_numpy(bias))
            self.name, self.weights_id = f"mybb:{width}", f"seed-{width}"
            self._freeze_and_probe()

        def forward(self, images):
            cells = self.conv(images).flatten(2).transpose(1, 2)
            return cells.mean(dim=1), cells


    BACKBONE = BackboneFamily("mybb", "mybb:<width> (a test's conv net of random weights)",
                              lambda argument, options: TinyConv(int(argument or 8), options))


    def images(split, n):
        return np.random.default_rng(0 if split == "train" else 1).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


    def read(request):
        n = int(request.argument) * (2 if request.split == "train" else 1)
        return DatasetSplit(request.dataset, request.split, np.arange(n, dtype=np.int64) % 3, ["a", "b", "c"],
                            {"generated": "seed " + request.split}, images(request.split, n))


    DATASET = DatasetSource("myds", read, argument="N")
''')


def install(site: Path, module: str, source: str, backbones: str = "", datasets: str = "") -> Path:
    """A distribution on `site`: `module`.py and its dist-info declaring the entry points (`name = module` lines)."""
    info = site / f"{module}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    groups = [f"[twinturbo.{group}]\n{lines}\n" for group, lines in (("backbones", backbones), ("datasets", datasets))
              if lines]
    (info / "entry_points.txt").write_text("\n".join(groups))
    return site


def tt_extract(*args: str, site: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", **({"PYTHONPATH": str(site)} if site else {}))
    return subprocess.run([str(BIN / "tt-extract"), *map(str, args)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=ROOT)


def one_line(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") \
        and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    return result.stderr


@pytest.fixture(scope="module")
def extras(tmp_path_factory) -> Path:
    return install(tmp_path_factory.mktemp("site"), "tiny_extras", EXTRAS, backbones="mybb = tiny_extras",
                   datasets="myds = tiny_extras")


def expected_tokens(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """cls [n, WIDTH] and patches [n, 16, WIDTH] of the installed module's net, computed here with numpy: RGB / 255 (the
    images are already SIDE px, nothing resized), each 4x4 cell times the weights, cells in row-major order."""
    pixels = np.random.default_rng(0 if split == "train" else 1).integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)
    rng = np.random.default_rng(WIDTH)
    weight = rng.standard_normal((WIDTH, 3, PATCH, PATCH)).astype(np.float32) * 0.1
    bias = rng.standard_normal(WIDTH).astype(np.float32) * 0.1
    grid = SIDE // PATCH
    cells = (pixels.astype(np.float32) / 255).reshape(n, grid, PATCH, grid, PATCH, 3)  # n, y, p, x, q, c
    patches = np.einsum("nypxqc,wcpq->nyxw", cells, weight).reshape(n, grid * grid, WIDTH) + bias
    return patches.mean(axis=1), patches


def test_an_installed_backbone_family_and_dataset_source_make_a_store_that_verifies(extras, tmp_path):
    out = tmp_path / "features"
    result = tt_extract("--dataset", "myds:6", "--backbone", f"mybb:{WIDTH}", "--resolution", SIDE, "--out", out,
                        "--device", "cpu", "--batch-size", 4, "--chunk-size", 4, "--no-progress", site=extras)
    assert result.returncode == 0, result.stderr
    store_dir = out / "myds-6"  # a source without its own store_name: "<name>-<argument>"
    verified = tt_extract("--verify", store_dir, site=extras)
    assert verified.returncode == 0 and "damaged" not in verified.stderr, verified.stderr
    with open_store(store_dir) as store:
        assert store.attrs["dataset"] == "myds:6" and store.attrs["backbone"] == f"mybb:{WIDTH}"
        assert store.attrs["weights_id"] == f"seed-{WIDTH}" and store.class_names == ["a", "b", "c"]
        for split, n in (("train", 12), ("test", 6)):
            reader = store.split(split)
            cls, patches = reader.read(0, reader.n)
            want_cls, want_patches = expected_tokens(split, n)
            assert reader.labels().tolist() == [i % 3 for i in range(n)]
            # Stored as float16 (11-bit mantissa: 1 ulp is ~5e-4 at these magnitudes, below 1), from a float32 forward
            # whose summation order is torch's, not numpy's: equal within one float16 step.
            np.testing.assert_allclose(patches.astype(np.float32), want_patches, rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(cls.astype(np.float32), want_cls, rtol=1e-3, atol=1e-3)
            assert np.abs(want_patches).max() > 0.1  # the comparison is not between near-zero tokens


def test_the_unknown_spec_messages_name_the_installed_ones(extras, tmp_path):
    common = ("--out", tmp_path / "never", "--device", "cpu", "--no-progress")
    one_line(tt_extract("--dataset", "myds:2", "--backbone", "nope:1", *common, site=extras), "unknown backbone",
             "mybb:<width> (a test's conv net of random weights)", "effnet-lite0")
    one_line(tt_extract("--dataset", "nope", "--backbone", "mybb:4", *common, site=extras), "unknown dataset",
             "hf:NAME_OR_DIR[:CONFIG] or myds:N")
    one_line(tt_extract("--dataset", "myds", "--backbone", "mybb:4", *common, site=extras), "unknown dataset 'myds'")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("group, line, words", [
    ("backbones", "timm = tiny_extras", ["entry point tiny_extras (group twinturbo.backbones)",
                                         "backbone prefix 'timm' is already taken (built-in)"]),
    ("datasets", "mnist = tiny_extras", ["entry point tiny_extras (group twinturbo.datasets)",
                                         "dataset 'mnist' is already taken (built-in)"]),
    ("backbones", "other = tiny_extras", ["its BACKBONE is backbone prefix 'mybb', its entry point 'other'"]),
    ("datasets", "nothing = no_dataset_here", ["entry point no_dataset_here (group twinturbo.datasets): defines no "
                                               "DATASET (a DatasetSource)"]),
    ("backbones", "broken = broken_extras", ["entry point broken = broken_extras (group twinturbo.backbones): cannot "
                                             "load it: ModuleNotFoundError"]),
])
def test_a_clashing_misnamed_empty_or_broken_entry_point_is_one_line(tmp_path, group, line, words):
    site = tmp_path / "site"
    install(site, "tiny_extras", EXTRAS)
    install(site, "no_dataset_here", "X = 1\n")
    install(site, "broken_extras", "import no_such_module_anywhere\n")
    install(site, "the_package", "", **{group: line})
    args = ("--dataset", "digits" if group == "backbones" else "myds:2", "--limit", 8, "--out", tmp_path / "never",
            "--device", "cpu", "--no-progress")
    one_line(tt_extract(*args, "--backbone", "effnet-lite0:320", "--resolution", 32, site=site), *words)
    assert not (tmp_path / "never").exists()
    # The registries read entry points when a spec is looked up: a broken package costs --help nothing.
    assert tt_extract("--help", site=site).returncode == 0
