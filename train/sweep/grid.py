"""The ablation grid of section 4.4: setups x lambda grids x heads x label budgets x seeds, expanded into runs.

What this module owns (reading a grid file is gridfile.py's, SWEEP_DIR sweepdir.py's, running a sweep launch.py's,
its rows results.py's):

- the expansion of the setups (train/sweep/setups.py: the paper's seven by default) into `RunSpec`s: each setup sweeps
  the weights of the terms of Eq. 22 it switches on over their grids (setup 1 has none, 2-4 sweep lambda_C, 5-7
  lambda_C x lambda_L), from options or a `--grid FILE` (TOML or YAML) that may also add or replace setups;
- stable run ids, so a rerun of the same command knows which runs are finished.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.hashing import canonical_json
from twinturbo.train.config import TrainConfig
from twinturbo.train.heads import DEFAULT_HEAD, HEADS
from twinturbo.train.sweep.setups import PAPER_SETUPS, Setup, setup_key
from twinturbo.train.terms import DISPLAY_ORDER, GRID_OPTIONS, GRID_OPTION_FIELDS, TERMS, term_axes


# The TrainConfig fields a sweep's grid sets per run: the setup's loss and rescaling, the head, the weights (and the
# options swept like them, terms.GRID_OPTIONS), the label budget and the seed. Every other field is a training flag the
# sweep's runs share (unset: tt-train's default).
GRID_FIELDS = ("loss", "rescale", "head", *(term.weight_field for term in DISPLAY_ORDER), *GRID_OPTION_FIELDS,
               "labels", "seed")
# A sweep's axes besides label budgets and seeds, by name: each term (its weight) and each grid option (its field),
# with the values it takes where neither the command nor the setup says.
AXIS_DEFAULTS: dict[str, tuple[float, ...]] = {
    **{term.name: term.weight.grid for term in DISPLAY_ORDER},
    **{option.name: (float(option.default),) for _, option in GRID_OPTIONS}}

TRAINING_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in GRID_FIELDS)
# Grid files may also spell a training field as its tt-train flag (warmup for warmup_steps, ...).
TRAINING_ALIASES = {f.metadata["flag"].lstrip("-").replace("-", "_"): f.name for f in fields(TrainConfig)
                    if f.metadata["flag"].lstrip("-").replace("-", "_") != f.name}

DEFAULT_SETUPS = tuple(PAPER_SETUPS)
DEFAULT_LABELS = (100, 1000)
DEFAULT_SEEDS = (42, 1337, 3435)


def grid_key(axis: str) -> str:
    """The key of an axis' grid in grid files and sweep.json, and its option without dashes: critic -> critic_grid,
    fixmatch_threshold -> fixmatch_threshold_grid."""
    return f"{axis}_grid"


def grid_option(axis: str) -> str:
    """The tt-sweep option of an axis' grid: critic -> --critic-grid."""
    return "--" + grid_key(axis).replace("_", "-")


def format_list(values: Iterable) -> str:
    """(100, 1000) -> '100,1000': how the list options show their defaults."""
    return ",".join(format_weight(v) if isinstance(v, float) else str(v) for v in values)


def format_weight(value: float) -> str:
    """0.1 -> '0.1', 1.0 -> '1', 1e-05 -> '1e-05': the shortest faithful text, for ids and labels."""
    return f"{float(value):g}" if float(value) == float(f"{float(value):g}") else repr(float(value))


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep: a setup with its weights ((term, lambda) for each term it switches on), a label budget,
    a seed, the shared training flags and the head (train/heads/)."""

    setup: Setup
    weights: tuple[tuple[str, float], ...]
    labels: int
    seed: int
    training: tuple[tuple[str, Any], ...] = ()
    store_fingerprint: str = ""
    head: str = DEFAULT_HEAD

    def weight(self, term: str) -> float:
        return dict(self.weights).get(term, 0.0)

    def train_config(self) -> TrainConfig:
        """This run's complete tt-train configuration (training flags left unset keep tt-train's defaults)."""
        weights = {TERMS[name].weight_field if name in TERMS else name: value for name, value in self.weights}
        return TrainConfig(loss=self.setup.loss, rescale=self.setup.rescale, head=self.head, labels=self.labels,
                           seed=self.seed, **weights, **dict(self.training)).validate()

    def config(self) -> dict:
        return self.train_config().to_dict()

    @property
    def run_id(self) -> str:
        """Readable and unique: the options a person scans for, then a hash of everything that defines the run
        (the training flags and the features store too, so an `--extend` onto another store never collides). The
        paper's terms always appear (c<lambda_C>-l<lambda_L>), other terms when they are on, the head unless it is the
        paper's."""
        identity = self.train_config().identity()
        digest = hashlib.sha256(canonical_json([identity, self.store_fingerprint]).encode()).hexdigest()[:8]
        weights = "".join(f"-{term.weight.id_letter or term.name}{format_weight(self.weight(term.name))}"
                          for term in DISPLAY_ORDER if term.weight.id_letter or self.weight(term.name))
        weights += "".join(f"-{name}{format_weight(value)}" for name, value in self.weights
                           if name in GRID_OPTION_FIELDS)
        head = "" if self.head == DEFAULT_HEAD else f"-{self.head}"
        return (f"s{self.setup.key}{head}-{self.setup.loss}-{self.setup.rescale}{weights}-n{self.labels}"
                f"-seed{self.seed}-{digest}")

    @property
    def fusion_key(self) -> tuple:
        """Runs with equal keys see the same data batches and dropout masks and train the same head (one module
        definition, stacked), so they can train in one fused pass."""
        return (self.labels, self.seed, self.training, self.head)


@dataclass
class SweepGrid:
    """The grid of a sweep: which setups (keys of `table`, the paper's seven unless a grid file adds or replaces
    some), heads (each setup without a head of its own trains each), label budgets, seeds, each term's weight grid (`grids`: term -> values, the term's default where unset),
    per-setup grids (`setup_grids`: key -> term grid key -> values; grid files only) and the shared training flags."""

    setups: tuple[int | str, ...] = DEFAULT_SETUPS
    heads: tuple[str, ...] = (DEFAULT_HEAD,)
    labels: tuple[int, ...] = DEFAULT_LABELS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    grids: dict[str, tuple[float, ...]] = field(default_factory=dict)
    setup_grids: dict[int | str, dict[str, tuple[float, ...]]] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    table: dict[int | str, Setup] = field(default_factory=lambda: dict(PAPER_SETUPS))
    ignored: tuple[str, ...] = field(default=(), compare=False)  # grids given that no chosen setup reads (build_grid)
    unread_options: tuple[str, ...] = field(default=(), compare=False)  # head options no run reads (build_grid)

    def __post_init__(self) -> None:
        self.setups = tuple(setup_key(s) for s in self.setups)
        self.heads = tuple(str(h) for h in self.heads)
        self.labels = tuple(int(n) for n in self.labels)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.grids = {name: tuple(float(x) for x in self.grids.get(name, default))
                      for name, default in AXIS_DEFAULTS.items() if name in self.grids or default}
        self.setup_grids = {setup_key(k): {name: tuple(float(x) for x in values) for name, values in v.items()}
                            for k, v in self.setup_grids.items()}
        self.training = {TRAINING_ALIASES.get(k, k): v for k, v in self.training.items() if v is not None}
        self.validate()

    def validate(self) -> None:
        unknown = [s for s in list(self.setups) + list(self.setup_grids) if s not in self.table]
        if unknown:
            raise TwinTurboError(f"--setups: unknown setup {unknown[0]} (expected one of "
                                 f"{', '.join(map(str, self.table))}: the paper's 1-7, listed in the README, and any "
                                 "a grid file defines)")
        unknown_heads = [h for h in self.heads if h not in HEADS]
        if unknown_heads:
            raise TwinTurboError(f"--heads: unknown head {unknown_heads[0]!r} (expected some of {', '.join(HEADS)}; a "
                                 "plugin's? pass --plugins FILE.py)")
        for name, values in (("--setups", self.setups), ("--heads", self.heads), ("--labels", self.labels),
                             ("--seeds", self.seeds),
                             *((grid_option(term), values) for term, values in self.grids.items())):
            if not values:
                raise TwinTurboError(f"{name}: the list is empty (give at least one value)")
            if len(set(values)) != len(values):
                raise TwinTurboError(f"{name}: {', '.join(map(str, values))} lists a value twice")
        if any(n <= 0 for n in self.labels):
            raise TwinTurboError(f"--labels: {self.labels} must be positive label budgets")
        for term, values in self.grids.items():
            if any(x <= 0 for x in values):
                raise TwinTurboError(f"{grid_option(term)}: values must be > 0 (a setup without the term is the run "
                                     f"without it), got {values}")
        for key in self.setups:
            for term in self.table[key].terms:
                if not self.grids.get(term) and term not in dict(self.table[key].grids):
                    raise TwinTurboError(f"setup {key} switches on {term}, which has no default grid: give "
                                         f"--{term}-grid")
        for key, grids in self.setup_grids.items():
            for name, values in grids.items():
                if name not in {grid_key(axis) for axis in AXIS_DEFAULTS}:
                    raise TwinTurboError(f"setup_grids.{key}.{name}: expected one of "
                                         f"{', '.join(grid_key(axis) for axis in AXIS_DEFAULTS)}")
                if not values or any(x <= 0 for x in values):
                    raise TwinTurboError(f"setup_grids.{key}.{name}: expected a non-empty list of weights > 0")
        for name in self.grids:  # every run is validated whole; a grid option's bounds are checked here, early
            if name in GRID_OPTION_FIELDS:
                for value in self.grids[name]:
                    TrainConfig(**{name: value}).validate()
        unknown_flags = sorted(set(self.training) - set(TRAINING_KEYS))
        if unknown_flags:
            raise TwinTurboError(
                f"training flag '{unknown_flags[0]}' is not a tt-train flag a sweep can share "
                f"(expected one of {', '.join(TRAINING_KEYS)})")
        try:
            TrainConfig(**self.training).validate()
        except TypeError as err:
            raise TwinTurboError(f"training flags: {err}") from None

    def weight_grid(self, key: int | str, axis: str) -> tuple[float, ...]:
        """The values of an axis (a term's weight, or a grid option) for setup `key`: setup_grids, else the setup's
        own, else the sweep's."""
        own = self.setup_grids.get(key, {}).get(grid_key(axis)) or dict(self.table[key].grids).get(axis)
        return own or self.grids[axis]

    def unused_grids(self, given: Iterable[str]) -> list[str]:
        """Of the grid keys a user gave (`critic_grid`, `setup_grids.7`, ... as a grid file spells them), those no
        chosen setup reads: a sweep-wide grid whose axis no chosen setup has (or every one that has it sets its own),
        a setup_grids entry of a setup not chosen or of an axis the setup does not have."""
        read = {axis for key in self.setups for axis in term_axes(self.table[key].terms)
                if not (self.setup_grids.get(key, {}).get(grid_key(axis)) or dict(self.table[key].grids).get(axis))}
        unused = []
        for name in given:
            key, _, entry = name.partition(".") if name.startswith("setup_grids.") else ("", "", name)
            if not key:
                if name.removesuffix("_grid") not in read:
                    unused.append(name)
                continue
            setup = setup_key(entry)
            if setup not in self.setups:
                unused.append(name)
                continue
            axes = {grid_key(axis) for axis in term_axes(self.table[setup].terms)}
            unused += [f"{name}.{g}" for g in self.setup_grids.get(setup, {}) if g not in axes]
        return unused

    def combinations(self, key: int | str) -> list[tuple[tuple[str, float], ...]]:
        """Every combination of setup `key`'s axes: the product of its terms' weight grids and their grid options'
        (one empty one without terms)."""
        combos: list[tuple[tuple[str, float], ...]] = [()]
        for axis in term_axes(self.table[key].terms):
            combos = [combo + ((axis, value),) for combo in combos for value in self.weight_grid(key, axis)]
        return combos

    def expand(self, store_fingerprint: str = "") -> list[RunSpec]:
        """Every run, grouped so that runs which can be fused are adjacent (label budget, seed, then setups)."""
        training = tuple(sorted(self.training.items()))
        return [RunSpec(self.table[key], weights, labels, seed, training, store_fingerprint, head)
                for labels in self.labels for seed in self.seeds for key in self.setups
                for head in self.heads_of(key) for weights in self.combinations(key)]

    def heads_of(self, key: int | str) -> tuple[str, ...]:
        """The heads setup `key` trains: its own, else each of the sweep's."""
        own = self.table[key].head
        return (own,) if own is not None else self.heads

    def trained_heads(self) -> list[str]:
        """Every head some chosen setup trains, sorted."""
        return sorted({head for key in self.setups for head in self.heads_of(key)})

    def to_dict(self) -> dict:
        """sweep.json's record of the grid. The paper's terms' grids are always written; another term's only when a
        chosen setup uses it, the heads and the setup table only where they are not the paper's, so that a sweep
        recorded before a term, a setup or heads were added still compares equal."""
        used = {axis for key in self.setups for axis in term_axes(self.table[key].terms)}
        data = {"setups": list(self.setups), "labels": list(self.labels), "seeds": list(self.seeds),
                **({"heads": list(self.heads)} if self.heads != (DEFAULT_HEAD,) else {})}
        for name in AXIS_DEFAULTS:
            if (name in TERMS and TERMS[name].paper) or name in used:
                data[grid_key(name)] = list(self.grids.get(name, ()))
        data["setup_grids"] = {str(k): {n: list(v) for n, v in g.items()}
                               for k, g in sorted(self.setup_grids.items(), key=lambda item: str(item[0]))}
        data["training"] = dict(sorted(self.training.items()))
        custom = [s.to_dict() for k, s in self.table.items() if PAPER_SETUPS.get(k) != s]
        if custom or set(self.table) != set(PAPER_SETUPS):
            data["setup_table"] = [s.to_dict() for s in self.table.values()]
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "grid") -> "SweepGrid":
        """A grid from a grid file's mapping (or sweep.json's record): the keys of to_dict, plus `setup` (a list of
        setup tables that extend the paper's seven, or replace them with `replace_setups = true`)."""
        grid_keys = {grid_key(axis) for axis in AXIS_DEFAULTS}
        known = {"setups", "heads", "labels", "seeds", "setup_grids", "training", "setup", "setup_table",
                 "replace_setups"} | grid_keys
        unknown = sorted(set(data) - known)
        if unknown:
            raise TwinTurboError(f"{source}: unknown key '{unknown[0]}' (expected some of {', '.join(sorted(known))})")
        kwargs: dict[str, Any] = {"grids": {}}
        try:
            for key in ("setups", "heads", "labels", "seeds"):
                if key in data:
                    value = data[key]
                    kwargs[key] = parse_list(value, int if key in ("labels", "seeds") else str, key) \
                        if isinstance(value, str) else tuple(value)
            for axis in AXIS_DEFAULTS:
                if grid_key(axis) in data:
                    value = data[grid_key(axis)]
                    kwargs["grids"][axis] = parse_list(value, float, grid_key(axis)) if isinstance(value, str) \
                        else tuple(value)
            if "setup_grids" in data:
                kwargs["setup_grids"] = {k: dict(v) for k, v in dict(data["setup_grids"]).items()}
            if "training" in data:
                kwargs["training"] = dict(data["training"])
            defined = [Setup.from_dict(dict(entry), source) for entry in data.get("setup_table", data.get("setup", []))]
            if defined:
                replace = bool(data.get("replace_setups")) or "setup_table" in data
                table = {} if replace else dict(PAPER_SETUPS)
                table.update({s.key: s for s in defined})
                kwargs["table"] = table
                if "setups" not in kwargs:
                    kwargs["setups"] = tuple(table)
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise TwinTurboError(f"{source}: {err}".splitlines()[0]) from None


def parse_list(text: str, kind: type, option: str) -> tuple:
    """'42,1337' -> (42, 1337); for int and setup lists also ranges: '1-4,7' -> (1, 2, 3, 4, 7); setup names pass
    as they are ('1-7,u2')."""
    values: list = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if kind is str and not part.replace("-", "").isdigit():
                values.append(part)
            elif kind in (int, str) and "-" in part[1:]:
                low, high = part.split("-", 1)
                values.extend(range(int(low), int(high) + 1))
            else:
                values.append(int(part) if kind is str else kind(part))
        except ValueError:
            raise TwinTurboError(f"{option}: cannot read '{part}' as {kind.__name__} (expected e.g. "
                                 f"{'0.01,0.1,1' if kind is float else '1-7 or 1,2,5'})") from None
    return tuple(values)
