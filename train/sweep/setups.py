"""Setups: the bars of the paper's Figures 2-4, as data. A setup is a task loss (train/terms/: cat_cross, cat_twin,
bin_cross, ...), a rescaling (Eq. 8 or 9) and the additive terms of Eq. 22 it switches on, whose weights a sweep
sweeps over their grids (the sweep's, or the setup's own).

The paper's seven are the default table, left to right as in Figures 2-4 (section 4.4): starting from cat_cross with
softmax, add the critic, switch to cat_twin, switch to sigmoid, add the latent term, switch to bin_cross with softmax,
then with sigmoid. A grid file adds setups to the table or replaces it (`[[setup]]` tables, `replace_setups`).
"""
from __future__ import annotations

from dataclasses import dataclass

from twinturbo.common.errors import TwinTurboError
from twinturbo.train.config import RESCALES
from twinturbo.train.heads import HEADS
from twinturbo.train.terms import DISPLAY_ORDER, TASK_LOSSES, TERMS, term_axes


@dataclass(frozen=True)
class Setup:
    """One setup: `key` names it (a number for the paper's, any short name for others), `terms` are the additive
    terms it switches on (in DISPLAY_ORDER), `grids` its own grids ((axis, values) pairs: a term's weight or one of
    its grid options, e.g. fixmatch_threshold) where it has them, `head` its own head where it has one."""

    key: int | str
    loss: str
    rescale: str
    terms: tuple[str, ...] = ()
    grids: tuple[tuple[str, tuple[float, ...]], ...] = ()
    head: str | None = None  # its own head (train/heads/); None: each of the sweep's --heads

    @property
    def name(self) -> str:
        """'cat_twin/sigmoid + critic + latent'."""
        return f"{self.loss}/{self.rescale}" + "".join(f" + {term}" for term in self.terms)

    def to_dict(self) -> dict:
        return {"key": self.key, "loss": self.loss, "rescale": self.rescale, "terms": list(self.terms),
                "grids": {term: list(values) for term, values in self.grids},
                **({"head": self.head} if self.head is not None else {})}

    @classmethod
    def from_dict(cls, data: dict, source: str) -> "Setup":
        """A setup of a grid file's `[[setup]]` table; each mistake is one line naming the key and what is valid."""
        unknown = sorted(set(data) - {"key", "loss", "rescale", "terms", "grids", "head"})
        if unknown:
            raise TwinTurboError(f"{source}: setup key '{unknown[0]}' (expected key, loss, rescale, terms, grids, "
                                 "head)")
        if "key" not in data or "loss" not in data:
            raise TwinTurboError(f"{source}: a setup needs at least a key and a loss, got {data}")
        key = data["key"]
        where = f"{source}: setup {key}"
        if data["loss"] not in TASK_LOSSES:
            raise TwinTurboError(f"{where}: loss {data['loss']!r}, expected one of {', '.join(TASK_LOSSES)}")
        rescale = data.get("rescale", "softmax")
        if rescale not in RESCALES:
            raise TwinTurboError(f"{where}: rescale {rescale!r}, expected one of {', '.join(RESCALES)}")
        terms = list(data.get("terms", []))
        for term in terms:
            if term not in TERMS:
                raise TwinTurboError(f"{where}: term {term!r}, expected some of {', '.join(TERMS)} (a term of a "
                                     "plugin? pass --plugins FILE.py)")
        head = data.get("head")
        if head is not None and head not in HEADS:
            raise TwinTurboError(f"{where}: head {head!r}, expected one of {', '.join(HEADS)} (a head of a plugin? "
                                 "pass --plugins FILE.py)")
        grids = dict(data.get("grids", {}))
        order = [t.name for t in DISPLAY_ORDER]
        terms = sorted(terms, key=order.index)
        axes = term_axes(terms)
        for axis, values in grids.items():
            if axis not in axes:
                raise TwinTurboError(f"{where}: a grid for {axis!r}, which is no weight or grid option of the terms "
                                     f"the setup switches on ({', '.join(axes) or 'none'})")
            if not values or any(float(v) <= 0 for v in values):
                raise TwinTurboError(f"{where}: grid of {axis}: expected a non-empty list of values > 0")
        return cls(key, data["loss"], rescale, tuple(terms),
                   tuple((a, tuple(float(v) for v in grids[a])) for a in sorted(grids, key=axes.index)), head)


PAPER_SETUPS: dict[int, Setup] = {
    1: Setup(1, "cat_cross", "softmax"),
    2: Setup(2, "cat_cross", "softmax", ("critic",)),
    3: Setup(3, "cat_twin", "softmax", ("critic",)),
    4: Setup(4, "cat_twin", "sigmoid", ("critic",)),
    5: Setup(5, "cat_twin", "sigmoid", ("critic", "latent")),
    6: Setup(6, "bin_cross", "softmax", ("critic", "latent")),
    7: Setup(7, "bin_cross", "sigmoid", ("critic", "latent")),
}


def setup_key(text: str) -> int | str:
    """'3' -> 3 (the paper's are numbers), 'u2' -> 'u2'."""
    return int(text) if str(text).strip().lstrip("-").isdigit() else str(text).strip()
