"""The terms of Eq. 22, one module each, found here by name: adding a term is adding a module to this package.

    L = L_task + sum over the additive terms t of lambda_t * L_t          (Eq. 22: task + lambda_C critic + lambda_L latent)

A module defines `TERM`, a `Term`: its name, the rows of the step it reads, its function of a `StepView`, and either
a weight (an additive term: `--<name>` sets lambda, 0 switches it off; `--<name>-grid` sweeps it) or none (a task
loss, chosen by `--loss`). The training loop, the diagnostics, the sweep's grid and fusion, and the report iterate
`TASK_LOSSES` and `TERMS`; none of them names a term. TrainConfig (train/config.py) takes each term's weight and
options as its fields.

Row groups of a step (step.StepBatch) are data: a group is a source, optionally with a view. The sources are
`labelled` (the labelled batch, with labels), `star` (x*, another labelled sample of the same class, for each
labelled row) and `unlabelled` (the unlabelled batch); `<source>:<view>` names the same samples through one of the
augmented views a store with views holds (extract/views.py), e.g. `unlabelled:weak`, `unlabelled:strong` or
`labelled:weak`: each step draws one stored view of that kind per row from the run's own generator. A term lists the
groups it reads; the step gathers them, and a term that reads a view is refused on a store without that view.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.plugins import BUILT_IN, how_to_load, plugin_modules
from twinturbo.train.losses import log_rescale

ENTRY_POINT_GROUP = "twinturbo.terms"  # an installed package's terms (common/plugins.py)
ROW_SOURCES = ("labelled", "star", "unlabelled")  # a step's index lists, in the order its rows are laid out


@dataclass(frozen=True)
class RowGroup:
    """A row group: the samples of one of a step's index lists (`source`), clean (`view` None) or through a stored
    view of that kind."""

    source: str
    view: str | None = None

    @property
    def name(self) -> str:
        return self.source if self.view is None else f"{self.source}:{self.view}"

    @classmethod
    def parse(cls, name: str) -> "RowGroup":
        source, _, view = name.partition(":")
        if source not in ROW_SOURCES or (":" in name and not view):
            raise ValueError(f"row group {name!r}: expected one of {', '.join(ROW_SOURCES)}, optionally with "
                             ":<view> (e.g. unlabelled:weak)")
        return cls(source, view or None)


def group_order(names) -> list[str]:
    """Row group names in the order a step lays its rows out: the clean sources in ROW_SOURCES order, then the view
    groups by name (a run without views lays out its rows as before views existed)."""
    groups = [RowGroup.parse(name) for name in set(names)]
    return [g.name for g in sorted(groups, key=lambda g: (g.view is not None, ROW_SOURCES.index(g.source),
                                                          g.view or ""))]


@dataclass(frozen=True)
class Option:
    """A TrainConfig field a term reads besides its weight (e.g. the latent term's temperature). `shared`: the option
    changes the data stream (the critic's prior changes the real draws), so runs fused together must agree on it.
    `grid`: a sweep axis like the weights (FixMatch's threshold), chosen on validation labels with them; `symbol`
    names it in tables."""

    name: str
    flag: str
    default: Any
    help: str
    choices: tuple = ()
    shared: bool = False
    grid: bool = False
    symbol: str = ""
    bounds: tuple[float, float] | None = None  # a number option's valid range (low, high]


@dataclass(frozen=True)
class Weight:
    """An additive term's weight: the TrainConfig field `<term>_weight`, its flag, its symbol in tables (λ_C), the
    tt-sweep grid default, and the letter run ids keep for it (the paper's terms always appear in an id)."""

    flag: str
    symbol: str
    help: str
    grid: tuple[float, ...] = ()
    id_letter: str = ""


@dataclass(frozen=True)
class Term:
    """One term of Eq. 22 (see the package docstring). `order` is the position of an additive term in the sum; it
    fixes the float summation order, so results stay bit-identical as terms are added."""

    name: str
    summary: str
    rows: frozenset[str]
    loss: Callable[["StepView"], torch.Tensor]
    weight: Weight | None = None
    discriminator: bool = False
    latent: bool = False  # reads z, the head's trained latent (a head without one refuses it: train/heads/)
    options: tuple[Option, ...] = ()
    order: int = 100
    paper: bool = False  # a term of the paper (Eqs. 17-21), as opposed to one of ours
    source: str = BUILT_IN  # where the term came from: this package, an entry point or a plugin file (plugins.py)

    @property
    def weight_field(self) -> str:
        return f"{self.name}_weight"


@dataclass
class StepView:
    """One run's outputs on one step, by row group, as a term's function reads them. `indices[group]` are the train
    indices of the group's rows (which samples), `state` a dict the run keeps from step to step (a term that
    remembers, e.g. FlexMatch's per-sample pseudo-labels, keeps its own entry) and `num_samples` the size of the
    train split."""

    config: Any  # TrainConfig
    labels: torch.Tensor
    z: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor]
    real: torch.Tensor | None = None
    discriminator: Callable[[torch.Tensor], torch.Tensor] | None = None
    indices: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    num_samples: int = 0
    _probabilities: dict = field(default_factory=dict)

    def probabilities(self, group: str) -> torch.Tensor:
        """sigma(f) of a row group (Eq. 8 or 9, the run's rescaling), computed once per step and shared: the critic's
        fake samples, which the discriminator's step reads detached."""
        if group not in self._probabilities:
            self._probabilities[group] = log_rescale(self.logits[group], self.config.rescale).exp()
        return self._probabilities[group]


def _discover() -> dict[str, Term]:
    """The package's terms (one module each), then those of the entry points of ENTRY_POINT_GROUP and of the plugin
    files (common/plugins.py)."""
    found = {}
    for module in pkgutil.iter_modules(__path__):
        term = getattr(importlib.import_module(f"{__name__}.{module.name}"), "TERM", None)
        if term is not None:
            if term.name in found:
                raise RuntimeError(f"two terms named {term.name!r} in {__name__}")
            for name in term.rows:
                RowGroup.parse(name)
            found[term.name] = term
    for source, module in plugin_modules(ENTRY_POINT_GROUP, "terms", "the training code", "TERM"):
        term = getattr(module, "TERM", None)
        if not isinstance(term, Term):
            raise TwinTurboError(f"{source}: defines no TERM (a twinturbo.train.terms.Term)")
        if term.name in found:
            clash = found[term.name].source
            raise TwinTurboError(f"{source}: term {term.name!r} is already a term ({clash}); give it another name")
        try:
            for name in term.rows:
                RowGroup.parse(name)
        except ValueError as err:
            raise TwinTurboError(f"{source}: term {term.name!r}: {err}") from None
        found[term.name] = replace(term, source=source)
    return found


_ALL = _discover()
# Task losses (--loss), the paper's first, and the additive terms (weights) in the order they are summed.
TASK_LOSSES: dict[str, Term] = dict(sorted(((n, t) for n, t in _ALL.items() if t.weight is None),
                                           key=lambda item: (not item[1].paper, item[1].order, item[0])))
TERMS: dict[str, Term] = dict(sorted(((n, t) for n, t in _ALL.items() if t.weight is not None),
                                     key=lambda item: (item[1].order, item[0])))
# Tables, ids and options list the paper's terms first, then ours, each by name (critic, latent, entropy, ...).
DISPLAY_ORDER: tuple[Term, ...] = tuple(sorted(TERMS.values(), key=lambda t: (not t.paper, t.name)))
WEIGHT_FIELDS = tuple(term.weight_field for term in DISPLAY_ORDER)


# The options a sweep sweeps like weights, (term, option) in DISPLAY_ORDER; their TrainConfig fields.
GRID_OPTIONS: tuple[tuple[Term, Option], ...] = tuple((term, option) for term in DISPLAY_ORDER
                                                      for option in term.options if option.grid)
GRID_OPTION_FIELDS = tuple(option.name for _, option in GRID_OPTIONS)


def term_axes(terms) -> list[str]:
    """The sweep axes of a set of additive terms (names): each term's weight, then each of its grid options."""
    return [name for term in terms for name in (term, *(o.name for o in TERMS[term].options if o.grid))]


def axis_symbol(name: str) -> str:
    """How a sweep axis is named in tables: a term's weight symbol (critic -> λ_C) or a grid option's (τ_Fix)."""
    if name in TERMS:
        return TERMS[name].weight.symbol
    return next((option.symbol or option.name for _, option in GRID_OPTIONS if option.name == name), name)


# Every additive term's options, by field name: the term that reads each (an option is read only while its term is on).
OPTION_TERMS = {option.name: term for term in TERMS.values() for option in term.options}

# Options a run's identity leaves out while their term is off: those of terms that are not the paper's, so that a term
# added to the package (with its options) leaves every existing run id as it was.
OPTIONAL_OPTION_FIELDS = {name: term for name, term in OPTION_TERMS.items() if not term.paper}


def active_terms(config) -> list[Term]:
    """The additive terms a run computes: weight > 0, in summation order."""
    return [term for term in TERMS.values() if getattr(config, term.weight_field) > 0]


def rows_needed(config) -> frozenset[str]:
    """The row groups a run's task loss and active terms read."""
    rows = set(TASK_LOSSES[config.loss].rows)
    for term in active_terms(config):
        rows |= term.rows
    return frozenset(rows)


def views_needed(config) -> frozenset[str]:
    """The kinds of stored views (e.g. weak, strong) a run's row groups read: a store must hold them."""
    return frozenset(RowGroup.parse(name).view for name in rows_needed(config)) - {None}


def plugin_sources(config) -> dict[str, str]:
    """{term: where it came from} of a run's task loss and active terms that are not the package's own: what a run
    records so that a command meeting it without them can say which plugin to load."""
    terms = [TASK_LOSSES[config.loss], *active_terms(config)]
    return {term.name: term.source for term in terms if term.source != BUILT_IN}


def missing_terms(config: dict, plugins: dict | None, where: str) -> None:
    """Raise a one-line TwinTurboError when a recorded run's config names a term that is not registered here, saying
    which plugin it was trained with and how to load it."""
    unknown = [key.removesuffix("_weight") for key, value in config.items()
               if key.endswith("_weight") and key != "weight_decay" and key not in WEIGHT_FIELDS and value]
    if config.get("loss") is not None and config["loss"] not in TASK_LOSSES:
        unknown.append(config["loss"])
    if unknown:
        name = unknown[0]
        source = (plugins or {}).get(name)
        hint = (f"it was trained with {name!r} from {source}: {how_to_load(source, 'term')}" if source else
                f"term {name!r} is not registered here (a plugin's? pass --plugins FILE.py)")
        raise TwinTurboError(f"{where}: {hint}")


def needs_discriminator(config) -> bool:
    return any(term.discriminator for term in active_terms(config))


def weights_of(config) -> dict[str, float]:
    """{term name: weight} of every additive term (0 = off)."""
    return {name: float(getattr(config, term.weight_field)) for name, term in TERMS.items()}
