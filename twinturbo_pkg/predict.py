"""`tt-predict`: a trained head applied to a feature store's split, or to new images through the store's backbone.

A run directory (tt-train's RUN_DIR, or a sweep's SWEEP_DIR/runs/<run id> with `--save-heads`) holds head.pt and
config.json. On a store the head is evaluated exactly as training evaluated it (same precision and evaluation batch
size), so on the run's own test split it gives the run's test accuracy. On images, the store's recorded backbone runs
first, with the weights, resolution and preprocessing tt-extract used (extract/extract.py), then the head.

Writes predictions.csv (index or path, label, predicted class, one probability per class: the rescaling of the run,
softmax, or sigmoid normalised to sum 1), and with labels accuracy.json (accuracy, per-class accuracy),
confusion.csv and confusion.png.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import click

from twinturbo.common.atomic import atomic_open, save_figure, write_text_atomic
from twinturbo.common.command import Command, plugins_option
from twinturbo.common.device import resolve_device
from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import FeatureStore, open_store
from twinturbo.extract.backbones import BackboneOptions, build_backbone
from twinturbo.extract.cli import backbone_options
from twinturbo.extract.datasets import IMAGE_SUFFIXES, ImageFiles, image_size
from twinturbo.extract.extract import forward_features, prepare_images
from twinturbo.train.config import TrainConfig
from twinturbo.train.run.data import SplitTensors, load_split, num_classes_of
from twinturbo.train.run.loop import autocast
from twinturbo.train.run.rundir import RunDir, load_run


@dataclass
class Predictions:
    """What a head says about N samples: their labels (-1 = none), its classes and probabilities [N, C]."""

    labels: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    names: list[str]  # per sample: its index in the split, or its image path

    def accuracy(self) -> float | None:
        known = self.labels >= 0
        return float((self.predicted[known] == self.labels[known]).mean()) if known.any() else None


@torch.inference_mode()
def predict_tokens(head: nn.Module, config: TrainConfig, cls: torch.Tensor, patches: torch.Tensor,
                   device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class [N], probabilities [N, C]) of float tokens, in the run's precision and evaluation batches."""
    head = head.to(device).eval()
    predicted, probabilities = [], []
    for start in range(0, len(cls), config.eval_batch_size):
        batch_cls = cls[start:start + config.eval_batch_size].to(device).float()
        batch_patches = patches[start:start + config.eval_batch_size].to(device).float()
        with autocast(device, config.precision == "bf16"):
            _, logits = head(batch_cls, batch_patches, None, rows=None)  # the heads' contract (train/heads/)
        logits = logits.float()
        predicted.append(logits.argmax(dim=1).cpu())
        scores = logits.softmax(dim=1) if config.rescale == "softmax" else torch.sigmoid(logits)
        probabilities.append((scores / scores.sum(dim=1, keepdim=True)).cpu())
    return torch.cat(predicted).numpy(), torch.cat(probabilities).double().numpy()


def check_store(store: FeatureStore, run: RunDir) -> None:
    """The store must hold tokens of the run's backbone and shapes, and its classes; one line naming what differs."""
    recorded = run.metrics.get("store") or {}
    backbone = store.attrs.get("backbone")
    if recorded.get("backbone") and backbone != recorded["backbone"]:
        raise TwinTurboError(f"{store.path} holds {backbone} tokens; the run in {run.path} was trained on "
                             f"{recorded['backbone']} tokens (its store: {recorded.get('path')})")
    reader = store.split(store.splits[0])
    shapes = (reader.cls_dim, reader.num_patches, reader.patch_dim)
    wanted = (run.dims["cls_dim"], run.dims.get("num_patches", reader.num_patches), run.dims["patch_dim"])
    if shapes != wanted:
        raise TwinTurboError(f"{store.path}: tokens of shape CLS {shapes[0]}, patches {shapes[1]} x {shapes[2]}; the "
                             f"run in {run.path} expects CLS {wanted[0]}, patches {wanted[1]} x {wanted[2]}")
    classes = len(store.class_names) or None
    if classes is not None and classes != run.dims["num_classes"]:
        raise TwinTurboError(f"{store.path} has {classes} classes; the run in {run.path} predicts "
                             f"{run.dims['num_classes']}")


def predict_split(run: RunDir, features: str | Path, split: str, device: torch.device) -> Predictions:
    """The run's head on every sample of `split` of the store `features`."""
    with open_store(features) as store:
        store.require_complete()
        if split not in store.splits:
            raise TwinTurboError(f"--split {split}: {store.path} has the splits {', '.join(store.splits)}")
        check_store(store, run)
        data: SplitTensors = load_split(store, split, device, progress=False)
        if not store.class_names and num_classes_of(store, data.labels) > run.dims["num_classes"]:
            raise TwinTurboError(f"{store.path}: labels up to {int(data.labels.max())}; the run in {run.path} predicts "
                                 f"{run.dims['num_classes']} classes")
    cls, patches, labels = data.batch(torch.arange(len(data)), device)
    predicted, probabilities = predict_tokens(run.head, run.config, cls, patches, device)
    return Predictions(labels.cpu().numpy(), predicted, probabilities, [str(i) for i in range(len(labels))])


def run_store(run: RunDir, features: str | Path | None) -> str | Path:
    """`features`, or else the store the run recorded (metrics.json); one line when it recorded none."""
    store_path = features or (run.metrics.get("store") or {}).get("path")
    if not store_path:
        raise TwinTurboError(f"{run.path}: the run records no store; pass --features STORE (a store of its backbone)")
    return store_path


def predict_images(run: RunDir, images: Path, features: str | Path | None, device: torch.device,
                   options: BackboneOptions | None = None) -> Predictions:
    """The run's head on the image files under `images` (recursively, sorted), through the backbone of the store
    `features` (default: the store the run recorded): same weights, resolution and preprocessing as tt-extract."""
    store_path = run_store(run, features)
    with open_store(store_path) as store:
        check_store(store, run)
        spec, resolution = store.attrs.get("backbone"), store.attrs.get("resolution")
        weights_id = store.attrs.get("weights_id")
        class_names = store.class_names
    if not images.is_dir():
        raise TwinTurboError(f"--images {images}: not a directory")
    paths = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise TwinTurboError(f"--images {images}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    options = options or BackboneOptions()
    backbone = build_backbone(spec, BackboneOptions(resolution=resolution, weights=options.weights,
                                                    radio_checkpoint=options.radio_checkpoint,
                                                    hub_dir=options.hub_dir,
                                                    trust_remote_code=options.trust_remote_code)).to(device)
    if weights_id and backbone.weights_id != weights_id:
        raise TwinTurboError(f"the backbone built for {spec} has weights {backbone.weights_id}; the store {store_path} "
                             f"was extracted with {weights_id} (pass the same --weights/--radio-checkpoint)")
    files = ImageFiles(paths, image_size(paths[0]))
    cls_parts, patch_parts = [], []
    for start in range(0, len(files), 256):
        batch = prepare_images(files[start:start + 256], backbone.resolution, device)
        cls, patches = forward_features(backbone, batch)
        cls_parts.append(cls.cpu())
        patch_parts.append(patches.cpu())
    predicted, probabilities = predict_tokens(run.head, run.config, torch.cat(cls_parts).float(),
                                              torch.cat(patch_parts).float(), device)
    labels = np.full(len(paths), -1, dtype=np.int64)
    names = [str(p.relative_to(images)) for p in paths]
    if class_names:  # images under <class>/ folders of the store's classes carry their label
        index = {name: i for i, name in enumerate(class_names)}
        labels = np.array([index.get(Path(n).parts[0], -1) if len(Path(n).parts) > 1 else -1 for n in names])
    return Predictions(labels, predicted, probabilities, names)


def write_predictions(predictions: Predictions, out: Path, class_names: list[str]) -> list[Path]:
    """predictions.csv; with labels also accuracy.json, confusion.csv and confusion.png. Returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    num_classes = predictions.probabilities.shape[1]
    names = class_names if len(class_names) == num_classes else [str(c) for c in range(num_classes)]
    written = [out / "predictions.csv"]
    with atomic_open(written[0], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample", "label", "predicted"] + [f"p_{name}" for name in names])
        for name, label, predicted, probabilities in zip(predictions.names, predictions.labels, predictions.predicted,
                                                         predictions.probabilities):
            writer.writerow([name, int(label), int(predicted)] + [f"{p:.6g}" for p in probabilities])
    known = predictions.labels >= 0
    if not known.any():
        return written
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (predictions.labels[known], predictions.predicted[known]), 1)
    per_class = {names[c]: (float(confusion[c, c] / confusion[c].sum()) if confusion[c].sum() else None)
                 for c in range(num_classes)}
    write_text_atomic(out / "accuracy.json", json.dumps({"accuracy": predictions.accuracy(), "samples": int(known.sum()),
                                                   "per_class_accuracy": per_class}, indent=2) + "\n")
    with atomic_open(out / "confusion.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label \\ predicted"] + names)
        for c in range(num_classes):
            writer.writerow([names[c]] + confusion[c].tolist())
    plot_confusion(confusion, names, out / "confusion.png", predictions.accuracy())
    return written + [out / "accuracy.json", out / "confusion.csv", out / "confusion.png"]


def plot_confusion(confusion: np.ndarray, names: list[str], path: Path, accuracy: float) -> None:
    """Rows = true class, columns = predicted; each row normalised, counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(5.0, 0.6 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                color="white" if rates[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (accuracy {100 * accuracy:.2f}%; colour = share of the true class)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)



@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@plugins_option
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--features", type=click.Path(),
              help="A store of the run's backbone: predict its --split [default: the store the run recorded].")
@click.option("--split", default="test", show_default=True, help="The store's split to predict.")
@click.option("--images", type=click.Path(path_type=Path),
              help="A folder of images (searched recursively; under <class>/ folders of the store's classes they "
                   "count as labelled): run the store's backbone on them, then the head.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write predictions.csv (and accuracy.json, confusion.csv/.png) "
                   "[RUN_DIR/predict-<split> or RUN_DIR/predict-images].")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@backbone_options
def main(run_dir: Path, features: str | None, split: str, images: Path | None, out_dir: Path | None, device: str,
         weights: Path | None, radio_checkpoint: Path | None, hub_dir: Path | None, trust_remote_code: bool) -> None:
    """tt-predict: apply a trained run (tt-train's RUN_DIR, or SWEEP_DIR/runs/<run id> of tt-sweep --save-heads) to a
    feature store's split or to new images; print the accuracy when the samples have labels."""
    run = load_run(run_dir)
    torch_device = resolve_device(device)
    if images is not None:
        predictions = predict_images(run, images, features, torch_device,
                                     BackboneOptions(weights=weights, radio_checkpoint=radio_checkpoint,
                                                     hub_dir=hub_dir, trust_remote_code=trust_remote_code))
        out = out_dir or run_dir / "predict-images"
        store_for_names = run_store(run, features)
    else:
        store_path = run_store(run, features)
        predictions = predict_split(run, store_path, split, torch_device)
        out, store_for_names = out_dir or run_dir / f"predict-{split}", store_path
    with open_store(store_for_names) as store:
        class_names = store.class_names
    written = write_predictions(predictions, out, class_names)
    accuracy = predictions.accuracy()
    click.echo(f"{len(predictions.names)} samples" + (f", accuracy {accuracy:.4f}" if accuracy is not None else
                                                       " (no labels)"))
    for path in written:
        click.echo(f"wrote {path}")
