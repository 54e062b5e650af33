"""The terms of Eq. 22, one module each, found here by name: adding a term is adding a module to this package.

    L = L_task + sum over the additive terms t of lambda_t * L_t          (Eq. 22: task + lambda_C critic + lambda_L latent)

A module defines `TERM`, a `Term`: its name, the rows of the step it reads, its function of a `StepView`, and either
a weight (an additive term: `--<name>` sets lambda, 0 switches it off; `--<name>-grid` sweeps it) or none (a task
loss, chosen by `--loss`). The training loop, the diagnostics, the sweep's grid and fusion, and the report iterate
`TASK_LOSSES` and `TERMS`; none of them names a term. TrainConfig (train/config.py) takes each term's weight and
options as its fields.

Row groups of a step (loop.StepBatch): `labelled` (the labelled batch, with labels), `star` (x*, another labelled
sample of the same class, for each labelled row) and `unlabelled` (the unlabelled batch).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from twinturbo.train.losses import log_rescale

ROW_GROUPS = ("labelled", "star", "unlabelled")


@dataclass(frozen=True)
class Option:
    """A TrainConfig field a term reads besides its weight (e.g. the latent term's temperature). `shared`: the option
    changes the data stream (the critic's prior changes the real draws), so runs fused together must agree on it."""

    name: str
    flag: str
    default: Any
    help: str
    choices: tuple = ()
    shared: bool = False


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
    options: tuple[Option, ...] = ()
    order: int = 100
    paper: bool = False  # a term of the paper (Eqs. 17-21), as opposed to one of ours

    @property
    def weight_field(self) -> str:
        return f"{self.name}_weight"


@dataclass
class StepView:
    """One run's outputs on one step, by row group, as a term's function reads them."""

    config: Any  # TrainConfig
    labels: torch.Tensor
    z: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor]
    real: torch.Tensor | None = None
    discriminator: Callable[[torch.Tensor], torch.Tensor] | None = None
    _probabilities: dict = field(default_factory=dict)

    def probabilities(self, group: str) -> torch.Tensor:
        """sigma(f) of a row group (Eq. 8 or 9, the run's rescaling), computed once per step and shared: the critic's
        fake samples, which the discriminator's step reads detached."""
        if group not in self._probabilities:
            self._probabilities[group] = log_rescale(self.logits[group], self.config.rescale).exp()
        return self._probabilities[group]


def _discover() -> dict[str, Term]:
    found = {}
    for module in pkgutil.iter_modules(__path__):
        term = getattr(importlib.import_module(f"{__name__}.{module.name}"), "TERM", None)
        if term is not None:
            if term.name in found:
                raise RuntimeError(f"two terms named {term.name!r} in {__name__}")
            found[term.name] = term
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


def active_terms(config) -> list[Term]:
    """The additive terms a run computes: weight > 0, in summation order."""
    return [term for term in TERMS.values() if getattr(config, term.weight_field) > 0]


def rows_needed(config) -> frozenset[str]:
    """The row groups a run's task loss and active terms read."""
    rows = set(TASK_LOSSES[config.loss].rows)
    for term in active_terms(config):
        rows |= term.rows
    return frozenset(rows)


def needs_discriminator(config) -> bool:
    return any(term.discriminator for term in active_terms(config))


def weights_of(config) -> dict[str, float]:
    """{term name: weight} of every additive term (0 = off)."""
    return {name: float(getattr(config, term.weight_field)) for name, term in TERMS.items()}
