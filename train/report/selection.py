"""Which λ combination a setup is credited with, by which protocol, and how far each protocol can be trusted.

A sweep's rows (results.jsonl) become `Combination`s: one setup, label budget and set of weights, over its seeds.
Three protocols pick one combination per setup and label budget:

- `val` (tt-report's default where the rows have a validation split, `--val-labels`): the highest seed-mean
  validation accuracy; the figure then quoted is that combination's seed-mean TEST accuracy. Nothing about the test
  set enters the choice.
- `test`: the highest seed-mean test accuracy (λ chosen on the test set, seeds averaged).
- `paper`: the highest best-seed test accuracy, then the highest mean; the quoted figure is the best seed (Figures 2-4
  of the paper: "The best seed is selected").

Ties go to the smaller weights. `validation_size_study` asks how the choice depends on the number of validation
labels, by drawing class-balanced subsets of the validation samples every run was scored on (a run records which of
them it classified correctly, `epoch_val_correct`; every run of a seed has the same validation samples).
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

from twinturbo.train.heads import DEFAULT_HEAD
from twinturbo.train.terms import DISPLAY_ORDER, GRID_OPTION_FIELDS, GRID_OPTIONS, WEIGHT_FIELDS

PROTOCOLS = ("val", "test", "paper")
EPOCH_RULES = ("last", "best-val")
# The config fields a combination is told apart by: every term's weight, then every option swept like one.
AXIS_FIELDS = WEIGHT_FIELDS + GRID_OPTION_FIELDS
# How an axis field is named in tables and figures, and the tt-sweep option of its grid.
WEIGHT_NAMES = {**{term.weight_field: (term.weight.symbol, f"--{term.name}-grid") for term in DISPLAY_ORDER},
                **{option.name: (option.symbol, "--" + option.name.replace("_", "-") + "-grid")
                   for _, option in GRID_OPTIONS}}
AXIS_DEFAULT = {**{name: 0.0 for name in WEIGHT_FIELDS},
                **{option.name: float(option.default) for _, option in GRID_OPTIONS}}
OPTION_WEIGHT = {option.name: term.weight_field for term, option in GRID_OPTIONS}  # a grid option -> its term's weight


def weight_symbol(name: str) -> str:
    return WEIGHT_NAMES.get(name, (name.removesuffix("_weight"),))[0]


@dataclass(frozen=True)
class RunFigures:
    """One run's per-epoch accuracies in %, and its validation record (empty without a validation split)."""

    test: tuple[float, ...]
    val: tuple[float, ...] = ()
    val_correct: tuple[str, ...] = ()  # per epoch, hex bits: sample i of the validation split classified right
    num_classes: int | None = None
    val_count: int = 0  # validation samples scored (the row's val_samples; 0: rows without it)

    @classmethod
    def of_row(cls, row: dict) -> "RunFigures":
        test = tuple(100 * a for a in row.get("epoch_accuracies") or [row["test_accuracy"]])
        return cls(test, tuple(100 * a for a in row.get("epoch_val_accuracies") or ()),
                   tuple(row.get("epoch_val_correct") or ()), row.get("num_classes"), row.get("val_samples") or 0)

    def epoch(self, rule: str) -> int:
        """The epoch a figure is read at: the last (the paper's), or the one of best validation accuracy."""
        if rule == "best-val" and self.val:
            return max(range(len(self.val)), key=lambda e: (self.val[e], -e))
        return len(self.test) - 1

    def test_at(self, rule: str) -> float:
        return self.test[self.epoch(rule)]

    def val_at(self, rule: str, size: int | None = None) -> float:
        """Validation accuracy at the rule's epoch, on the first `size` validation samples (all when None)."""
        epoch = self.epoch(rule)
        if size is None:
            return self.val[epoch]
        bits = correct_bits(self.val_correct[epoch])
        return 100 * sum(bits[:size]) / size

    @property
    def val_samples(self) -> int:
        """How many validation samples the run scored: the row's count, else the recorded bits (whole bytes: a count
        that is not a multiple of 8 would include padding bits, read as samples classified wrong)."""
        if not self.val_correct:
            return 0
        return self.val_count or len(correct_bits(self.val_correct[-1]))


def correct_bits(hex_bits: str) -> list[int]:
    """Decode loop.correct_bits (bit i of byte i // 8, least significant first); trailing padding bits are 0 and
    are cut by the caller's sample count where it matters."""
    return [(byte >> bit) & 1 for byte in bytes.fromhex(hex_bits) for bit in range(8)]


@dataclass
class Combination:
    """One λ combination of one setup and label budget, over its seeds."""

    setup: int | str
    setup_name: str
    labels: int
    weights: tuple[tuple[str, float], ...]  # (config field, value) of every axis, in AXIS_FIELDS order
    runs: dict[int, RunFigures] = field(default_factory=dict)  # seed -> figures
    val_samples: int = 0  # validation samples every run of it was scored on (0 = no validation split)

    def test(self, rule: str = "last") -> dict[int, float]:
        return {seed: run.test_at(rule) for seed, run in self.runs.items()}

    def val(self, rule: str = "last", size: int | None = None) -> dict[int, float]:
        return {seed: run.val_at(rule, size) for seed, run in self.runs.items()}

    @property
    def has_validation(self) -> bool:
        return all(run.val for run in self.runs.values())

    def weight(self, name: str) -> float:
        return dict(self.weights).get(name, AXIS_DEFAULT.get(name, 0.0))

    @property
    def has_terms(self) -> bool:
        """Whether some additive term of Eq. 22 is on (a weight > 0)."""
        return any(self.weight(name) > 0 for name in WEIGHT_FIELDS)

    def matches(self, config: dict) -> bool:
        """Whether a run's config is of this combination (its axes' values; absent ones at their defaults)."""
        return _weights_of(config) == self.weights

    def lambda_text(self, active: tuple[str, ...], separator: str = " ") -> str:
        """'λ_C=1 λ_L=0.01' for the weights the setup sweeps (`active`)."""
        return separator.join(f"{weight_symbol(n)}={self.weight(n):g}" for n in active)


def _weights_of(config: dict) -> tuple[tuple[str, float], ...]:
    return tuple((name, float(config.get(name, AXIS_DEFAULT[name]))) for name in AXIS_FIELDS)


HEAD_LABEL = ", head "  # how a report section names a head other than the paper's, after the backbone


def row_group(row: dict) -> tuple[str, str]:
    """(dataset, backbone) of a row: one report section, one set of figures. A run of another head than the paper's
    is a section of its own, its backbone named 'effnet-lite0:320, head linear' (split_head reads it back)."""
    store = row.get("store") or {}
    backbone = str(store.get("backbone") or "unknown")
    head = (row.get("config") or {}).get("head", DEFAULT_HEAD)
    return str(store.get("dataset") or "unknown"), backbone if head == DEFAULT_HEAD else f"{backbone}{HEAD_LABEL}{head}"


def split_head(label: str) -> tuple[str, str]:
    """(backbone, head) of a section's backbone label (row_group)."""
    backbone, _, head = label.partition(HEAD_LABEL)
    return backbone, head or DEFAULT_HEAD


def grid_point(setup: int | str, config: dict) -> tuple:
    """Where a run sits in a sweep's grid, whatever else differs (precision, store path, host): its setup, head, label
    budget, seed and the values of every axis."""
    return (str(setup), config.get("head", DEFAULT_HEAD), int(config["labels"]), int(config["seed"]),
            _weights_of(config))


def rows_in_grid(rows: list[dict], points: set[tuple]) -> list[dict]:
    """The rows whose grid_point is one of `points` (tt-report --grid: one grid's runs out of larger sweeps)."""
    return [row for row in rows if grid_point(row["setup"], row["config"]) in points]


def combinations(rows: list[dict]) -> dict[tuple[str, str], list[Combination]]:
    """(dataset, backbone) -> every combination, sorted by setup, label budget and weights."""
    grouped: dict[tuple, Combination] = {}
    for row in rows:
        config = row["config"]
        key = row_group(row) + (row["setup"], int(config["labels"]), _weights_of(config))
        combo = grouped.get(key)
        if combo is None:
            combo = grouped[key] = Combination(row["setup"], row.get("setup_name") or str(row["setup"]),
                                               int(config["labels"]), key[-1])
        combo.runs[int(config["seed"])] = figures = RunFigures.of_row(row)
        combo.val_samples = figures.val_samples if len(combo.runs) == 1 else min(combo.val_samples,
                                                                                figures.val_samples)
    out: dict[tuple[str, str], list[Combination]] = defaultdict(list)
    for key in sorted(grouped, key=lambda k: (k[0], k[1], setup_order(k[2]), k[3], k[4])):
        out[key[:2]].append(grouped[key])
    return dict(out)


def setup_order(setup: int | str) -> tuple:
    """Numbered setups first, in number order, then named ones by name."""
    return (0, setup, "") if isinstance(setup, int) else (1, 0, str(setup))


def swept_weights(combos: list[Combination]) -> tuple[str, ...]:
    """The axes of these combinations (one setup and budget): the weights that are not 0 in some, and the grid options
    of those weights' terms."""
    active = {name for name in WEIGHT_FIELDS if any(c.weight(name) for c in combos)}
    return tuple(name for name in AXIS_FIELDS if name in active or OPTION_WEIGHT.get(name) in active)


def by_setup(combos: list[Combination]) -> dict[tuple, list[Combination]]:
    """(setup, labels) -> its combinations, in setup order."""
    out: dict[tuple, list[Combination]] = defaultdict(list)
    for combo in combos:
        out[(combo.setup, combo.labels)].append(combo)
    return dict(sorted(out.items(), key=lambda item: (setup_order(item[0][0]), item[0][1])))


def _mean(values: dict[int, float]) -> float:
    return sum(values.values()) / len(values)


def choose(candidates: list[Combination], protocol: str, epoch_rule: str = "last",
           val_size: int | None = None) -> Combination:
    """The combination `protocol` credits a setup with (see the module docstring); ties go to the smaller weights."""
    def weights_key(c: Combination) -> tuple:
        return tuple(value for _, value in c.weights)

    if protocol == "val":
        return min(candidates, key=lambda c: (-_mean(c.val(epoch_rule, val_size)), weights_key(c)))
    if protocol == "test":
        return min(candidates, key=lambda c: (-_mean(c.test(epoch_rule)), weights_key(c)))
    if protocol == "paper":
        return min(candidates, key=lambda c: (-max(c.test(epoch_rule).values()), -_mean(c.test(epoch_rule)),
                                              weights_key(c)))
    raise ValueError(f"unknown protocol {protocol!r}")


def grid_edges(chosen: Combination, candidates: list[Combination]) -> list[str]:
    """A line per weight of `chosen` that sits on the edge of its setup's grid, e.g. 'λ_C = 1 is the top of the grid:
    widen --critic-grid'; nothing when every chosen weight is inside its grid (or the grid has one value)."""
    notes = []
    for name in swept_weights(candidates):
        values = sorted({c.weight(name) for c in candidates})
        if len(values) < 2:
            continue
        value, option = chosen.weight(name), WEIGHT_NAMES.get(name, (name, "its grid option"))[1]
        if value == values[-1]:
            notes.append(f"{weight_symbol(name)} = {value:g} is the top of the grid: widen {option}")
        elif value == values[0]:
            notes.append(f"{weight_symbol(name)} = {value:g} is the bottom of the grid: widen {option}")
    return notes


@dataclass(frozen=True)
class SizeFinding:
    """How validation-selected λ fares with `size` validation labels, for one setup and label budget."""

    setup: int | str
    labels: int
    size: int
    picks_test_best: float  # share of drawn validation splits whose choice is the test-best combination
    mean_gap: float  # mean over draws of (test-best seed-mean test accuracy - the chosen one's), points
    prefix_gap: float  # the same for the recorded split's first `size` samples (what --val-labels size gives)


def validation_size_study(combos: list[Combination], sizes: list[int], draws: int = 200,
                          seed: int = 0) -> list[SizeFinding]:
    """For each setup and label budget with >= 2 combinations, and each size up to what every run recorded: draw
    `draws` class-balanced subsets of `size` of the validation samples (the same subset for every combination of a
    seed), choose by seed-mean validation accuracy on it, and compare with the test-best combination. Each setup and
    budget draws from its own generator, so its figures do not change when other rows join the report."""
    findings = []
    for (setup, labels), candidates in by_setup(combos).items():
        rng = random.Random(f"{seed}/{setup}/{labels}")
        if len(candidates) < 2 or not all(c.has_validation and c.val_samples for c in candidates):
            continue
        recorded = min(c.val_samples for c in candidates)
        num_classes = next(iter(candidates[0].runs.values())).num_classes
        if not num_classes:
            continue
        best = choose(candidates, "test")
        best_mean = _mean(best.test())
        seeds = sorted(set.intersection(*(set(c.runs) for c in candidates)))
        bits = {(id(c), s): correct_bits(c.runs[s].val_correct[-1])[:recorded] for c in candidates for s in seeds}
        # sample i of a validation split is of class i % C (sampling.validation_subset deals classes round robin)
        positions = [list(range(c, recorded, num_classes)) for c in range(num_classes)]
        for size in sizes:
            if size > recorded:
                continue
            quotas = [size // num_classes + (c < size % num_classes) for c in range(num_classes)]
            hits, gaps = 0, []
            for _ in range(draws):
                subset = {s: [i for c, q in enumerate(quotas) for i in rng.sample(positions[c], q)] for s in seeds}
                picked = max(candidates, key=lambda c: (sum(sum(bits[(id(c), s)][i] for i in subset[s])
                                                            for s in seeds), [-v for _, v in c.weights]))
                hits += picked is best
                gaps.append(best_mean - _mean(picked.test()))
            prefix = choose(candidates, "val", val_size=size)
            findings.append(SizeFinding(setup, labels, size, hits / draws, sum(gaps) / draws,
                                        best_mean - _mean(prefix.test())))
    return findings
