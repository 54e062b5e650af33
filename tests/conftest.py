"""Shared fixtures. The dataset fixtures write tiny datasets in each dataset's REAL official file format.

Each `<name>_raw` fixture returns a `RawDataset`: the directory to pass as `data_root` (or, for the image folder,
the folder to pass as `folder:PATH`) and the exact arrays a reader must return for each split. Each `<name>_root`
fixture returns just that directory. Sizes: 40 train / 20 test images (image folder: 9 train / 4 test).

    mnist_raw, mnist_root                 data_root/mnist/*-idx?-ubyte.gz              28x28x1, labels 0..9
    fashion_mnist_raw                     data_root/fashion-mnist/ (same files)        28x28x1, 10 clothing names
    cifar10_raw, cifar10_root             data_root/cifar10/cifar-10-batches-py/...    32x32x3, 10 CIFAR names
    cifar10_tar_raw, cifar10_tar_root     data_root/cifar10/cifar-10-python.tar.gz     same layout, archive only
    svhn_raw, svhn_root                   data_root/svhn/{train,test}_32x32.mat        32x32x3, file labels 1..10
    image_folder_raw, image_folder        PATH/{train,test}/<class>/*.png|bmp          5x6x3 (H x W), 3 classes
    hf_dataset_raw                        a DatasetDict by save_to_disk (12 / 6 rows)  5x6x3 PNG bytes, ClassLabel

and, for the user's own backbones: hf_vit_dir, hf_remote_code_dir (save_pretrained directories), hub_dir (hubconf.py).
"""
from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from twinturbo.common.store import SplitLayout, create_store
from twinturbo.train.config import TrainConfig

def default_sigint() -> None:
    """preexec_fn of a child that a test sends SIGINT: Ctrl-C's default action, whatever the suite inherited (a
    background job of a non-interactive shell, nohup and many CI runners start with SIGINT ignored, and a child
    inherits that)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_tt_extract(args: list, capsys) -> tuple[int, str, str]:
    """tt-extract's main in this process: (exit code, stdout, stderr)."""
    from twinturbo.extract.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class RawDataset:
    """What a dataset fixture wrote: where, and the arrays a reader must give back per split."""

    root: Path
    images: dict[str, np.ndarray]  # split -> uint8 [N, H, W, C], exactly as `DatasetSplit.read` returns them
    labels: dict[str, np.ndarray]  # split -> int64 [N], after any relabelling (SVHN 10 -> 0)
    class_names: list[str]


# ---- writers of the official formats -----------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (LeCun's MNIST format), gzipped when the name ends in .gz."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


class Py2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2's cPickle wrote the CIFAR batches: protocol 2, str as 8-bit strings
    (SHORT_BINSTRING/BINSTRING), numpy globals under `numpy.core.multiarray`."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_py2_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str
    dispatch[type] = save_py2_global
    dispatch[type(len)] = save_py2_global


def py2_pickle(obj, path: Path) -> None:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def write_cifar10_batches(folder: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
    """cifar-10-batches-py/: data_batch_1..5 (train split in 5 equal parts), test_batch, batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)

    def batch(x: np.ndarray, y: np.ndarray, label: str) -> dict:
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)  # HWC -> the file's CHW rows
        return {"batch_label": label, "labels": [int(v) for v in y], "data": rows,
                "filenames": [f"img_{i}.png" for i in range(len(x))]}

    parts = np.array_split(np.arange(len(labels["train"])), 5)
    for i, part in enumerate(parts, start=1):
        py2_pickle(batch(images["train"][part], labels["train"][part], f"training batch {i} of 5"),
                   folder / f"data_batch_{i}")
    py2_pickle(batch(images["test"], labels["test"], "testing batch 1 of 1"), folder / "test_batch")
    py2_pickle({"num_cases_per_batch": len(parts[0]), "label_names": CIFAR10_CLASSES, "num_vis": 3072},
               folder / "batches.meta")


def _random_split(rng: np.random.Generator, n: int, shape: tuple[int, ...], classes: int = 10):
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % classes  # every class present
    rng.shuffle(labels)
    return images, labels


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]  # typed from zalandoresearch/fashion-mnist's README, not imported from the reader


def make_mnist(root: Path, n_train: int = 40, n_test: int = 20, folder: str = "mnist") -> RawDataset:
    """MNIST's four IDX files under root/<folder>/ (Fashion-MNIST uses the same names and format)."""
    rng = np.random.default_rng(0 if folder == "mnist" else 7)
    images, labels = {}, {}
    (root / folder).mkdir(parents=True, exist_ok=True)
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images[split], labels[split] = _random_split(rng, n, (28, 28, 1))
        write_idx(root / folder / f"{prefix}-images-idx3-ubyte.gz", images[split][..., 0])
        write_idx(root / folder / f"{prefix}-labels-idx1-ubyte.gz", labels[split].astype(np.uint8))
    classes = [str(d) for d in range(10)] if folder == "mnist" else FASHION_CLASSES
    return RawDataset(root, images, labels, classes)


def make_cifar10(root: Path, archive: bool = False) -> RawDataset:
    rng = np.random.default_rng(1)
    images, labels = {}, {}
    for split, n in (("train", 40), ("test", 20)):
        images[split], labels[split] = _random_split(rng, n, (32, 32, 3))
    folder = root / "cifar10" / "cifar-10-batches-py"
    write_cifar10_batches(folder, images, labels)
    if archive:
        with tarfile.open(root / "cifar10" / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return RawDataset(root, images, labels, list(CIFAR10_CLASSES))


def make_svhn(root: Path) -> RawDataset:
    """SVHN layout: X uint8 [32, 32, 3, N], y uint8 [N, 1] with the digit 0 written as 10."""
    import scipy.io

    rng = np.random.default_rng(2)
    images, labels = {}, {}
    (root / "svhn").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 40), ("test", 20)):
        images[split], labels[split] = _random_split(rng, n, (32, 32, 3))
        file_labels = np.where(labels[split] == 0, 10, labels[split]).astype(np.uint8)[:, None]
        scipy.io.savemat(root / "svhn" / f"{split}_32x32.mat",
                         {"X": np.ascontiguousarray(images[split].transpose(1, 2, 3, 0)), "y": file_labels})
    return RawDataset(root, images, labels, [str(d) for d in range(10)])


def make_image_folder(path: Path) -> RawDataset:
    """3 classes (written unsorted), RGB and grey PNGs and a BMP, 6 wide x 5 high; test lacks class 'bird'.

    A stray text file in a class folder must be ignored.
    """
    from PIL import Image

    rng = np.random.default_rng(3)
    layout = {"train": {"dog": 3, "cat": 4, "bird": 2}, "test": {"dog": 2, "cat": 2}}
    class_names = sorted(layout["train"])
    images, labels = {}, {}
    for split, counts in layout.items():
        split_images, split_labels = [], []
        for name in class_names:
            if name not in counts:
                continue
            (path / split / name).mkdir(parents=True)
            for i in range(counts[name]):
                pixels = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
                file = path / split / name / f"{name}_{i:02d}.png"
                if i == 1:  # a greyscale image: the reader must return it as RGB
                    grey = pixels[..., 0]
                    Image.fromarray(grey).save(file)  # 2-d uint8 -> mode "L"
                    pixels = np.repeat(grey[..., None], 3, axis=-1)
                elif i == 2:
                    file = file.with_suffix(".bmp")
                    Image.fromarray(pixels).save(file)
                else:
                    Image.fromarray(pixels).save(file)
                split_images.append(pixels)
                split_labels.append(class_names.index(name))
            (path / split / name / "notes.txt").write_text("not an image")
        images[split] = np.stack(split_images)
        labels[split] = np.asarray(split_labels, dtype=np.int64)
    return RawDataset(path, images, labels, class_names)


# ---- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture
def mnist_raw(tmp_path_factory) -> RawDataset:
    return make_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture
def mnist_root(mnist_raw) -> Path:
    return mnist_raw.root


@pytest.fixture
def fashion_mnist_raw(tmp_path_factory) -> RawDataset:
    return make_mnist(tmp_path_factory.mktemp("data"), folder="fashion-mnist")


@pytest.fixture
def cifar10_raw(tmp_path_factory) -> RawDataset:
    return make_cifar10(tmp_path_factory.mktemp("data"))


@pytest.fixture
def cifar10_root(cifar10_raw) -> Path:
    return cifar10_raw.root


@pytest.fixture
def cifar10_tar_raw(tmp_path_factory) -> RawDataset:
    return make_cifar10(tmp_path_factory.mktemp("data"), archive=True)


@pytest.fixture
def cifar10_tar_root(cifar10_tar_raw) -> Path:
    return cifar10_tar_raw.root


@pytest.fixture
def svhn_raw(tmp_path_factory) -> RawDataset:
    return make_svhn(tmp_path_factory.mktemp("data"))


@pytest.fixture
def svhn_root(svhn_raw) -> Path:
    return svhn_raw.root


@pytest.fixture
def image_folder_raw(tmp_path_factory) -> RawDataset:
    return make_image_folder(tmp_path_factory.mktemp("folders") / "pets")


@pytest.fixture
def image_folder(image_folder_raw) -> Path:
    """The folder to pass as `folder:PATH`; its store name is "pets"."""
    return image_folder_raw.root


# ---- feature stores --------------------------------------------------------------------------------------------------
# Writers of small complete (or deliberately incomplete) feature stores in the real format, as fixtures returning the
# writer; `synthetic_store` / `synthetic_splits` are one shared 10-class store and its splits loaded for training.

SYNTHETIC_CLASSES = 10
TINY_CLASSES = 4


def make_head(cls_dim: int, patch_dim: int, num_classes: int, proj_dim: int = 8000, pred_dim: int = 1024,
              disc_dim: int = 500, init_seed: int = 0, head: str = "twinturbo", num_patches: int = 4, **options):
    """train.heads.build_head for these widths (the positional order of the paper's head before heads were a
    choice: Dc, Dp, C, P, H, D_alpha)."""
    from twinturbo.train.heads import TokenShape, build_head

    config = TrainConfig(head=head, proj_dim=proj_dim, pred_dim=pred_dim, disc_dim=disc_dim, **options)
    return build_head(TokenShape(cls_dim, patch_dim, num_patches, num_classes), config, init_seed)


def _write_synthetic_store(path: Path, n_train: int = 400, n_test: int = 200, scale: float = 1.0, chunk: int = 64,
                         complete: bool = True, cls_dim: int = 24, num_patches: int = 4, patch_dim: int = 16,
                         seed: int = 0) -> Path:
    """A real-format store whose tokens are class means plus noise: a head must separate them easily."""
    rng = np.random.default_rng(seed)
    cls_means = rng.normal(size=(SYNTHETIC_CLASSES, cls_dim)) * 1.5
    patch_means = rng.normal(size=(SYNTHETIC_CLASSES, patch_dim)) * 1.5
    layouts = {s: SplitLayout(n, cls_dim, num_patches, patch_dim) for s, n in (("train", n_train), ("test", n_test))}
    attrs = {"dataset": "synthetic", "backbone": "none", "weights_id": "none", "resolution": 0,
             "class_names": [f"class{c}" for c in range(SYNTHETIC_CLASSES)]}
    with create_store(path, attrs, layouts, chunk_size=chunk) as store:
        for split, n in (("train", n_train), ("test", n_test)):
            labels = np.arange(n) % SYNTHETIC_CLASSES
            rng.shuffle(labels)
            cls = (cls_means[labels] + rng.normal(size=(n, cls_dim))) * scale
            patches = (patch_means[labels][:, None, :] + rng.normal(size=(n, num_patches, patch_dim))) * scale
            chunks = range(-(-n // chunk))
            for k in chunks if complete or split == "test" else list(chunks)[:-1]:
                sl = slice(k * chunk, (k + 1) * chunk)
                store.write_chunk(split, k, cls[sl], patches[sl], labels[sl])
    return path


def _write_tiny_store(path, n_train=96, n_test=40, cls_dim=12, patches=3, patch_dim=8, chunk=16, seed=0,
               dataset="synthetic"):
    """A tiny complete store whose tokens carry their class (a class centroid plus noise)."""
    rng = np.random.default_rng(seed)
    centroids_cls = rng.normal(size=(TINY_CLASSES, cls_dim)) * 2
    centroids_patch = rng.normal(size=(TINY_CLASSES, patch_dim)) * 2
    layouts = {"train": SplitLayout(n_train, cls_dim, patches, patch_dim),
               "test": SplitLayout(n_test, cls_dim, patches, patch_dim)}
    attrs = {"dataset": dataset, "backbone": "synthetic", "weights_id": "none", "resolution": 8,
             "class_names": [f"c{i}" for i in range(TINY_CLASSES)], "created": "2026-01-01T00:00:00"}
    store = create_store(path, attrs, layouts, chunk_size=chunk)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % TINY_CLASSES
        rng.shuffle(labels)
        cls = centroids_cls[labels] + rng.normal(size=(n, cls_dim))
        tokens = centroids_patch[labels][:, None, :] + rng.normal(size=(n, patches, patch_dim))
        for c in range(-(-n // chunk)):
            a, b = c * chunk, min((c + 1) * chunk, n)
            store.write_chunk(split, c, cls[a:b], tokens[a:b], labels[a:b])
    store.close()
    return path


def _quick_config(**overrides) -> TrainConfig:
    # fp32: the same arithmetic on every machine (--precision auto is bf16 only where the CPU has it); the bf16 path
    # has its own tests.
    values = dict(labels=50, epochs=4, batch_size=64, lr=2e-3, warmup=5, proj_dim=64, pred_dim=32, disc_dim=16,
                  precision="fp32")
    values.update(overrides)
    values["warmup_steps"] = values.pop("warmup")
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def write_synthetic_store():
    """Write a 10-class store whose tokens are class means plus noise: `write_synthetic_store(path, **options)`."""
    return _write_synthetic_store


@pytest.fixture(scope="session")
def write_tiny_store():
    """Write a 4-class store of a few dozen samples (the sweep and fused-training tests)."""
    return _write_tiny_store


@pytest.fixture(scope="session")
def quick_config():
    """A TrainConfig for the synthetic store that trains in seconds: `quick_config(**overrides)`."""
    return _quick_config


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory) -> Path:
    return _write_synthetic_store(tmp_path_factory.mktemp("store") / "synthetic")


@pytest.fixture(scope="session")
def synthetic_splits(synthetic_store):
    import torch

    from twinturbo.common.store import open_store
    from twinturbo.train.run.data import load_split

    with open_store(synthetic_store) as store:
        return load_split(store, "train", torch.device("cpu")), load_split(store, "test", torch.device("cpu"))


def _head_terms(head, batch, mask, config: TrainConfig):
    """Eq. 22's terms of one head on one step, as train_step computes them (forward_rows, step_views, run_terms)."""
    from twinturbo.train.run.step import forward_rows, run_terms, step_views

    def forward(cls, patches, dropout_mask, rows):
        return tuple(t.unsqueeze(0) for t in head(cls, patches, dropout_mask, rows=rows))

    z, logits, where = forward_rows(forward, batch, mask)
    (view,) = step_views([config], batch, z, logits, where, lambda run, probs: head.discriminator(probs))
    return run_terms(view), view


@pytest.fixture(scope="session")
def head_terms():
    """`head_terms(head, batch, mask, config) -> (values, view)`: Eq. 22's terms of one head on one step."""
    return _head_terms


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store read with plain zarr or h5py, by 'split/name'."""
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as f:
            return {f"{s}/{n}": d[...] for s in f for n, d in f[s].items()}
    import h5py
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return {f"{s}/{n}": a[...] for s, group in root.groups() for n, a in group.arrays()}


def _same_stores(a: Path, b: Path) -> None:
    left, right = arrays_of(a), arrays_of(b)
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name].dtype == right[name].dtype and np.array_equal(left[name], right[name]), name



@pytest.fixture(scope="session")
def same_stores():
    """`same_stores(a, b)`: two stores hold the same arrays, byte for byte (plain zarr or h5py reads)."""
    return _same_stores


# ---- the researcher's own backbone and dataset (issue 29): hf:, hub:, py: -------------------------------------------
# Real formats written offline: a transformers model directory (save_pretrained), one with its own code (auto_map, as
# nvidia/RADIO-B), a torch.hub directory (hubconf.py), a DatasetDict written with save_to_disk.

HF_VIT_MEAN, HF_VIT_STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)  # not ImageNet's: the processor's values must be used


def write_hf_vit(path: Path) -> Path:
    """A tiny randomly initialised transformers ViT (32 px, patch 8: 16 patches + the class token, width 32) and its
    ViTImageProcessor, saved with save_pretrained."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64))
    model.save_pretrained(path)
    ViTImageProcessor(image_mean=list(HF_VIT_MEAN), image_std=list(HF_VIT_STD)).save_pretrained(path)
    return path


TINY_RADIO_CODE = '''
"""A stand-in for nvidia/RADIO-B's remote code (radio/hf_model.py of github.com/NVlabs/RADIO): a PreTrainedModel whose
forward takes [0, 1] RGB, normalises it itself and returns RadioOutput(summary, features)."""
from collections import namedtuple

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

RadioOutput = namedtuple("RadioOutput", ["summary", "features"])


class TinyRadioConfig(PretrainedConfig):
    model_type = "tiny_radio"

    def __init__(self, patch_size=8, dim=12, preferred_resolution=(32, 32), **kwargs):
        self.patch_size, self.dim, self.preferred_resolution = patch_size, dim, list(preferred_resolution)
        super().__init__(**kwargs)


class TinyRadioModel(PreTrainedModel):
    config_class = TinyRadioConfig

    def __init__(self, config):
        super().__init__(config)
        self.patch_generator = nn.Conv2d(3, config.dim, config.patch_size, config.patch_size)
        self.summary_heads = nn.Linear(config.dim, 3 * config.dim)
        self.post_init()

    @property
    def min_resolution_step(self):
        return self.config.patch_size

    def forward(self, x):
        x = (x - 0.5) / 0.25  # RADIO's input conditioner
        features = self.patch_generator(x).flatten(2).transpose(1, 2)
        return RadioOutput(self.summary_heads(features.mean(dim=1)), features)
'''


def write_hf_remote_code_model(path: Path, code_dir: Path) -> Path:
    """A model directory that needs its own code, as nvidia/RADIO-B: config.json with auto_map, the module file beside
    the weights, and RADIO's processor config (CLIPImageProcessor, do_normalize false)."""
    import importlib.util
    import json
    import sys

    import torch

    code_dir.mkdir(parents=True, exist_ok=True)
    source = code_dir / "modeling_tiny_radio.py"
    source.write_text(TINY_RADIO_CODE)
    spec = importlib.util.spec_from_file_location("modeling_tiny_radio", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.TinyRadioConfig.register_for_auto_class()
    module.TinyRadioModel.register_for_auto_class("AutoModel")
    sys.modules[spec.name] = module  # save_pretrained copies the module's file beside the weights, found by name
    try:
        with torch.random.fork_rng():
            torch.manual_seed(1)
            module.TinyRadioModel(module.TinyRadioConfig()).save_pretrained(path)
    finally:
        del sys.modules[spec.name]
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_normalize": False, "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return path


TINY_HUBCONF = '''
"""A stand-in for github.com/facebookresearch/dinov2's hubconf.py: entry points building a model whose
forward_features returns DINOv2's dict (class token, 2 register tokens, patch tokens), and one returning RADIO's
(summary, features) from its forward."""
dependencies = ["torch"]

from collections import namedtuple

import torch
from torch import nn

RadioOutput = namedtuple("RadioOutput", ["summary", "features"])


class TinyDinoV2(nn.Module):
    def __init__(self, patch_size=8, dim=16, registers=2, img_size=32):
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = nn.Conv2d(3, dim, patch_size, patch_size)
        self.patch_embed.img_size = (img_size, img_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.register_tokens = nn.Parameter(torch.randn(1, registers, dim))
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward_features(self, x):
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        prefix = torch.cat([self.cls_token, self.register_tokens], dim=1).expand(len(x), -1, -1)
        tokens = torch.cat([prefix, patches], dim=1)
        tokens = self.norm(tokens + self.mlp(tokens))
        r = prefix.shape[1]
        return {"x_norm_clstoken": tokens[:, 0], "x_norm_regtokens": tokens[:, 1:r],
                "x_norm_patchtokens": tokens[:, r:], "x_prenorm": tokens, "masks": None}

    def forward(self, x):
        return self.forward_features(x)["x_norm_clstoken"]


class TinySummaryModel(nn.Module):
    def __init__(self, patch_size=8, dim=12):
        super().__init__()
        self.patch_size = patch_size
        self.patch_generator = nn.Conv2d(3, dim, patch_size, patch_size)
        self.summary_heads = nn.Linear(dim, 2 * dim)

    def forward(self, x):
        features = self.patch_generator((x - 0.5) / 0.25)  # NCHW, as RADIO with feature_fmt='NCHW'
        return RadioOutput(self.summary_heads(features.mean(dim=(2, 3))), features)


def _seeded(build, seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval()


def tiny_dinov2(pretrained=True, **kwargs):
    return _seeded(TinyDinoV2, 0)


def tiny_dinov2_retrained(pretrained=True, **kwargs):
    return _seeded(TinyDinoV2, 1)


def tiny_summary(pretrained=True, **kwargs):
    return _seeded(TinySummaryModel, 2)
'''


def write_hub_dir(path: Path) -> Path:
    """A local torch.hub directory: hubconf.py with the entry points tiny_dinov2, tiny_dinov2_retrained (the same
    model, other weights) and tiny_summary."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "hubconf.py").write_text(TINY_HUBCONF)
    return path


def _png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


HF_DATASET_CLASSES = ["cat", "dog", "bird"]  # the ClassLabel's order, deliberately not sorted


def write_hf_dataset(path: Path, splits=(("train", 12), ("test", 6)), corrupt: dict | None = None,
                     seed: int = 4) -> RawDataset:
    """A DatasetDict saved with save_to_disk: an Image column of PNG bytes (6 wide x 5 high RGB, row 1 grey) and a
    ClassLabel column, plus a string column. `corrupt` maps a split to a row whose bytes are no image."""
    import datasets as hf

    rng = np.random.default_rng(seed)
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=HF_DATASET_CLASSES),
                            "caption": hf.Value("string")})
    tables, images, labels = {}, {}, {}
    for split, n in splits:
        pixels = rng.integers(0, 256, size=(n, 5, 6, 3), dtype=np.uint8)
        pixels[1] = pixels[1, ..., :1]  # a grey image, stored as mode "L"
        encoded = [_png(pixels[i, ..., 0] if i == 1 else pixels[i]) for i in range(n)]
        if corrupt and split in corrupt:
            encoded[corrupt[split]] = b"\x89PNG but not really"
        labels[split] = (np.arange(n) % len(HF_DATASET_CLASSES)).astype(np.int64)
        rng.shuffle(labels[split])
        images[split] = pixels
        tables[split] = hf.Dataset.from_dict(
            {"image": [{"bytes": b, "path": None} for b in encoded], "label": labels[split].tolist(),
             "caption": [f"image {i}" for i in range(n)]}, features=features)
    hf.disable_progress_bars()  # a test's stderr holds only what the code under test writes
    try:
        hf.DatasetDict(tables).save_to_disk(str(path))
    finally:
        hf.enable_progress_bars()
    return RawDataset(path, images, labels, list(HF_DATASET_CLASSES))


@pytest.fixture
def hf_dataset_raw(tmp_path_factory) -> RawDataset:
    """A DatasetDict (train 12, test 6 rows) saved with save_to_disk; pass `hf:<root>`; its store name is "shapes"."""
    return write_hf_dataset(tmp_path_factory.mktemp("hf") / "shapes")


@pytest.fixture(scope="session")
def write_hf_dataset_dict():
    """Write a DatasetDict with save_to_disk: `write_hf_dataset_dict(path, splits=..., corrupt={split: row})`."""
    return write_hf_dataset


@pytest.fixture
def hf_vit_dir(tmp_path_factory) -> Path:
    """A tiny transformers ViT and its ViTImageProcessor (HF_VIT_MEAN/STD), written by save_pretrained."""
    return write_hf_vit(tmp_path_factory.mktemp("hf-vit") / "tiny-vit")


@pytest.fixture
def hf_remote_code_dir(tmp_path_factory) -> Path:
    """A RADIO-like transformers model that needs its own code (auto_map), written by save_pretrained."""
    root = tmp_path_factory.mktemp("hf-radio")
    return write_hf_remote_code_model(root / "tiny-radio", root / "code")


@pytest.fixture
def hub_dir(tmp_path_factory) -> Path:
    """A local torch.hub directory with the entry points tiny_dinov2, tiny_dinov2_retrained and tiny_summary."""
    return write_hub_dir(tmp_path_factory.mktemp("hub") / "tiny-dinov2")
