"""The heads trained on the cached tokens, one module each, found here by name: adding a head is adding a module.

TwinTURBO trains two things: the terms of Eq. 22 (train/terms/) and the module they train, "a small transformer and a
token aggregation technique" (section 4.2). This package makes that module a choice (`--head`, tt-sweep `--heads`), so
that the architecture questions can be run as ablations: does the mixer matter, do the patch tokens help at all.

A module defines `HEAD`, a `Head`: its name, a one-line summary, its own options (TrainConfig fields, flags
`--<head>-<option>` generated like a term's) and `build(shape, config) -> nn.Module`, whose forward is

    (cls [N, Dc], patches [N, T, Dp], dropout_mask [R, P] or None, rows [R] or None) -> (z [R, *], logits [R, C])

where `rows` (None: every sample once) picks the output rows from the N distinct samples before dropout, so that the
expensive part runs once per sample (step.forward_rows), and `dropout_mask` is the run's keep-mask of width
`--proj-dim` (P), drawn whichever head trains so that every head sees the same random streams. The discriminator of
the critic (Eq. 20, Table 5) reads class probabilities only: it is common to every head and attached by `build_head`
after the head's own blocks (its initialisation comes last, as in the paper's head). An installed package adds a head
through an entry point of the group `twinturbo.heads`, a file through `--plugins FILE.py` (common/plugins.py); a name
already taken is one line.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.plugins import BUILT_IN, built_ins, how_to_load, plugin_modules
from twinturbo.train.heads.blocks import Discriminator

ENTRY_POINT_GROUP = "twinturbo.heads"
DEFAULT_HEAD = "twinturbo"  # the paper's: its runs keep the run ids they had before heads were a choice
DISCRIMINATOR = "discriminator"  # the attribute build_head gives every head


@dataclass(frozen=True)
class TokenShape:
    """What a head is built for: the store's token widths, its number of patch tokens and the number of classes."""

    cls_dim: int  # Dc
    patch_dim: int  # Dp
    num_patches: int  # T
    num_classes: int  # C

    @classmethod
    def of(cls, dims: dict) -> "TokenShape":
        """From the widths a RUN_DIR's head.pt records (rundir.run_dims)."""
        return cls(dims["cls_dim"], dims["patch_dim"], dims["num_patches"], dims["num_classes"])


@dataclass(frozen=True)
class Head:
    """One head (see the package docstring). `latent`: its z is a trained latent (what the latent term of Eq. 21
    pulls together); a head whose z is its input (the linear probe) says so in `no_latent`, and a term that reads z is
    refused with it. `shared`: the name of the parameter every term's gradient reaches (the diagnostics' gradient
    norms). `check` raises for options that are wrong together; `order` places it in --help and tables."""

    name: str
    summary: str
    build: Callable[[TokenShape, Any], nn.Module]
    options: tuple[terms.Option, ...] = ()
    latent: bool = True
    no_latent: str = ""
    shared: str = "projector.fc.weight"
    check: Callable[[Any], None] | None = None  # its options checked together (one TwinTurboError), by validate
    order: int = 100
    source: str = BUILT_IN  # where it came from: this package, an entry point or a plugin file (common/plugins.py)


# Imported after Head: building the term registry loads the plugin files, and one that defines a head imports Head
# from here while that happens.
from twinturbo.train import terms  # noqa: E402


def __getattr__(name: str):
    """HEADS and HEAD_OPTIONS, built on first use (not on import): the plugin files are loaded by whichever registry
    is built first, and a file loaded for the term registry may import this module before it defines its HEAD."""
    if name in ("HEADS", "HEAD_OPTIONS"):
        return _registry()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _registry() -> dict[str, dict]:
    heads = _discover()
    return {"HEADS": heads, "HEAD_OPTIONS": {option.name: head for head in heads.values() for option in head.options}}


def _heads() -> dict[str, Head]:
    return _registry()["HEADS"]


def _discover() -> dict[str, Head]:
    """The package's heads (one module each), then those of the entry points of ENTRY_POINT_GROUP and of the plugin
    files that define HEAD."""
    found = built_ins(__name__, Path(__file__).parent, "HEAD", "name")
    for source, module in plugin_modules(ENTRY_POINT_GROUP, "heads", "the training code", "HEAD"):
        head = getattr(module, "HEAD", None)
        if not isinstance(head, Head):
            raise TwinTurboError(f"{source}: defines no HEAD (a twinturbo.train.heads.Head)")
        if head.name in found:
            raise TwinTurboError(f"{source}: head {head.name!r} is already a head ({found[head.name].source}); give it "
                                 "another name")
        found[head.name] = replace(head, source=source)
    return found


def head_help() -> str:
    return "Head on the cached tokens: " + ", ".join(f"{name} ({head.summary})" for name, head in _heads().items()) \
        + "."


def build_head(shape: TokenShape, config, init_seed: int = 0) -> nn.Module:
    """Run `config.head` with the common discriminator, initialised from `init_seed` alone, on the CPU, without
    touching the caller's global RNG state: built on the CPU and moved afterwards, the initial weights are the same
    whatever the training device. The head's blocks are made first, the discriminator last (the paper's head:
    mixer, projector, predictor, discriminator), so a twinturbo head is the one made before heads were a choice."""
    head = _heads()[config.head]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        module = head.build(shape, config)
        if hasattr(module, DISCRIMINATOR):
            raise TwinTurboError(f"{head.source}: head {head.name!r} has its own '{DISCRIMINATOR}'; the critic's "
                                 "discriminator is common to every head (leave it out)")
        setattr(module, DISCRIMINATOR, Discriminator(shape.num_classes, config.disc_dim))
        if any(True for _ in module.buffers()):
            raise TwinTurboError(f"{head.source}: head {head.name!r} holds buffers; K fused runs stack parameters "
                                 "only (make them parameters, or compute them in forward)")
        _check_contract(head, module, shape, config.proj_dim)
    return module


def _check_contract(head: Head, module: nn.Module, shape: TokenShape, proj_dim: int) -> None:
    """The head's forward on 2 samples of zeros as a training step calls it (a mask, 3 output rows, `rows` by keyword)
    and as the evaluation does (no mask, every sample once), against the package docstring's contract: a head whose
    outputs have other shapes, or whose forward fails on the store's shape, is one line naming it before a run starts
    (not a traceback from inside a step). Its RNG draws are undone by build_head's fork_rng."""
    cls, patches = torch.zeros(2, shape.cls_dim), torch.zeros(2, shape.num_patches, shape.patch_dim)
    tokens = f"cls [2, {shape.cls_dim}], patches [2, {shape.num_patches}, {shape.patch_dim}]"
    for call, args, kwargs, rows in (
            (f"forward({tokens}, dropout_mask [3, {proj_dim}], rows=[3])", (cls, patches, torch.ones(3, proj_dim)),
             {"rows": torch.tensor([0, 1, 1])}, 3),
            (f"forward({tokens}, dropout_mask None, rows=None) (the evaluation's call)", (cls, patches, None),
             {"rows": None}, 2)):
        try:
            with torch.no_grad():
                out = module(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 (any failure of a head's own code is reported as its own)
            raise TwinTurboError(f"{head.source}: head {head.name!r}: {call} failed: {type(err).__name__}: {err}") \
                from None
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                  for t in (out if isinstance(out, tuple) else (out,))]
        if not (len(shapes) == 2 and isinstance(shapes[0], tuple) and len(shapes[0]) == 2 and shapes[0][0] == rows
                and shapes[1] == (rows, shape.num_classes)):
            raise TwinTurboError(f"{head.source}: head {head.name!r}: {call} returned "
                                 f"{', '.join(map(str, shapes))}; expected (z [{rows}, D], logits [{rows}, "
                                 f"{shape.num_classes}])")


def check_head(config, active_terms) -> None:
    """A run's head and its terms agree: a term that reads z (Term.latent) needs a head whose z is a trained latent.
    One line, before anything is written."""
    head = _heads()[config.head]
    for term in active_terms:
        if term.latent and not head.latent:
            raise TwinTurboError(f"{term.weight.flag} {getattr(config, term.weight_field):g}: the {term.name} term "
                                 f"reads z, the head's trained latent, and --head {head.name} has none "
                                 f"({head.no_latent}); use a head with one: "
                                 + ", ".join(n for n, h in _heads().items() if h.latent))


def run_plugins(config) -> dict[str, str]:
    """{term or head: where it came from} of a run's task loss, active terms and head that are not the package's own:
    what a run records so that a command meeting it without them can say which plugin to load."""
    head = _heads()[config.head]
    return {**terms.plugin_sources(config), **({} if head.source == BUILT_IN else {head.name: head.source})}


def missing_plugins(config: dict, plugins: dict | None, where: str) -> None:
    """A recorded run (its config as a dict) whose terms or head are not registered here: one TwinTurboError saying
    which plugin it was trained with and how to load it."""
    terms.missing_terms(config, plugins, where)
    name = config.get("head", DEFAULT_HEAD)
    if name in _heads():
        return
    source = (plugins or {}).get(name)
    hint = (f"it was trained with head {name!r} from {source}: {how_to_load(source, 'head')}" if source else
            f"head {name!r} is not registered here (a plugin's? pass --plugins FILE.py)")
    raise TwinTurboError(f"{where}: {hint}")
