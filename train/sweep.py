"""The ablation grid of section 4.4: setups x lambda grids x label budgets x seeds, the run table, and its results file.

What this module owns, and nothing else (training is `loop.py`, scheduling `launch.py`, figures `report.py`):

- the seven setups of Figures 2-4 and their expansion into `RunSpec`s (setup 1 has no lambda, 2-4 sweep lambda_C,
  5-7 sweep lambda_C x lambda_L, Eq. 22), from options or a `--grid FILE` (TOML or YAML);
- stable run ids, so a rerun of the same command knows which runs are finished;
- `SWEEP_DIR/sweep.json` (the grid and the features store's identity, to refuse a changed grid on resume);
- `SWEEP_DIR/results.jsonl`, one JSON row per finished run, appended atomically.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

from twinturbo.common.errors import TwinTurboError
from twinturbo.train.config import TrainConfig

RESULTS_FILE = "results.jsonl"
SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = 1


@dataclass(frozen=True)
class Setup:
    """One bar position of Figures 2-4: a task loss (Eqs. 17-19), its rescaling (Eq. 8/9), and which terms of Eq. 22
    are switched on."""

    number: int
    loss: str
    rescale: str
    critic: bool
    latent: bool

    @property
    def name(self) -> str:
        terms = " + critic" * self.critic + " + latent" * self.latent
        return f"{self.loss}/{self.rescale}{terms}"

    @property
    def short_label(self) -> str:
        """Three short lines for a figure's x axis."""
        terms = "+critic" * self.critic + "+latent" * self.latent
        return f"{self.number}: {self.loss.replace('_', '-')}\n{self.rescale}\n{terms or 'alone'}"


# Left to right in Figures 2-4 (DESIGN.md, "The ablation").
SETUPS: dict[int, Setup] = {
    1: Setup(1, "cat_cross", "softmax", critic=False, latent=False),
    2: Setup(2, "cat_cross", "softmax", critic=True, latent=False),
    3: Setup(3, "cat_twin", "softmax", critic=True, latent=False),
    4: Setup(4, "cat_twin", "sigmoid", critic=True, latent=False),
    5: Setup(5, "cat_twin", "sigmoid", critic=True, latent=True),
    6: Setup(6, "bin_cross", "softmax", critic=True, latent=True),
    7: Setup(7, "bin_cross", "sigmoid", critic=True, latent=True),
}

# TrainConfig fields a sweep shares across all its runs (the per-run ones are the setup's loss/rescale, the lambdas,
# the label budget and the seed). Values left unset keep tt-train's defaults (the paper's schedule and widths).
PER_RUN_FIELDS = ("loss", "rescale", "critic_weight", "latent_weight", "labels", "seed")
TRAINING_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in PER_RUN_FIELDS)
# Grid files may also spell a training field as its tt-train flag (warmup for warmup_steps, ...).
TRAINING_ALIASES = {f.metadata["flag"].lstrip("-").replace("-", "_"): f.name for f in fields(TrainConfig)
                    if f.metadata["flag"].lstrip("-").replace("-", "_") != f.name}

DEFAULT_SETUPS = tuple(SETUPS)
DEFAULT_LABELS = (100, 1000)
DEFAULT_SEEDS = (42, 1337, 3435)
DEFAULT_CRITIC_GRID = (0.01, 0.1, 1.0)
DEFAULT_LATENT_GRID = (0.01, 0.1, 1.0)


def format_list(values: Iterable) -> str:
    """(100, 1000) -> '100,1000': how the list options show their defaults."""
    return ",".join(format_weight(v) if isinstance(v, float) else str(v) for v in values)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def format_weight(value: float) -> str:
    """0.1 -> '0.1', 1.0 -> '1', 1e-05 -> '1e-05': the shortest faithful text, for ids and labels."""
    return f"{float(value):g}" if float(value) == float(f"{float(value):g}") else repr(float(value))


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep: a setup with its lambdas, a label budget, a seed, and the shared training flags."""

    setup: int
    critic: float
    latent: float
    labels: int
    seed: int
    training: tuple[tuple[str, Any], ...] = ()
    store_fingerprint: str = ""

    @property
    def loss(self) -> str:
        return SETUPS[self.setup].loss

    @property
    def rescale(self) -> str:
        return SETUPS[self.setup].rescale

    def train_config(self) -> TrainConfig:
        """This run's complete tt-train configuration (training flags left unset keep tt-train's defaults)."""
        return TrainConfig(loss=self.loss, rescale=self.rescale, critic_weight=self.critic, latent_weight=self.latent,
                           labels=self.labels, seed=self.seed, **dict(self.training)).validate()

    def config(self) -> dict:
        return self.train_config().to_dict()

    @property
    def run_id(self) -> str:
        """Readable and unique: the options a person scans for, then a hash of everything that defines the run
        (the training flags and the features store too, so an `--extend` onto another store never collides)."""
        identity = self.train_config().identity()
        digest = hashlib.sha256(_canonical([identity, self.store_fingerprint]).encode()).hexdigest()[:8]
        return (f"s{self.setup}-{self.loss}-{self.rescale}-c{format_weight(self.critic)}-l{format_weight(self.latent)}"
                f"-n{self.labels}-seed{self.seed}-{digest}")

    @property
    def fusion_key(self) -> tuple:
        """Runs with equal keys see the same data batches and dropout masks, so they can train in one fused pass."""
        return (self.labels, self.seed, self.training)


@dataclass
class SweepGrid:
    """The grid of a sweep. `setup_grids` optionally gives one setup its own lambda lists (grid files only)."""

    setups: tuple[int, ...] = DEFAULT_SETUPS
    labels: tuple[int, ...] = DEFAULT_LABELS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    critic_grid: tuple[float, ...] = DEFAULT_CRITIC_GRID
    latent_grid: tuple[float, ...] = DEFAULT_LATENT_GRID
    setup_grids: dict[int, dict[str, tuple[float, ...]]] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.setups = tuple(int(s) for s in self.setups)
        self.labels = tuple(int(n) for n in self.labels)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.critic_grid = tuple(float(x) for x in self.critic_grid)
        self.latent_grid = tuple(float(x) for x in self.latent_grid)
        self.setup_grids = {int(k): {name: tuple(float(x) for x in values) for name, values in v.items()}
                            for k, v in self.setup_grids.items()}
        self.training = {TRAINING_ALIASES.get(k, k): v for k, v in self.training.items() if v is not None}
        self.validate()

    def validate(self) -> None:
        unknown = [s for s in list(self.setups) + list(self.setup_grids) if s not in SETUPS]
        if unknown:
            raise TwinTurboError(f"--setups: unknown setup {unknown[0]} (expected numbers 1-7: the bars of Figures 2-4, listed in the README)")
        for name, values in (("--setups", self.setups), ("--labels", self.labels), ("--seeds", self.seeds),
                             ("--critic-grid", self.critic_grid), ("--latent-grid", self.latent_grid)):
            if not values:
                raise TwinTurboError(f"{name}: the list is empty (give at least one value)")
            if len(set(values)) != len(values):
                raise TwinTurboError(f"{name}: {', '.join(map(str, values))} lists a value twice")
        if any(n <= 0 for n in self.labels):
            raise TwinTurboError(f"--labels: {self.labels} must be positive label budgets")
        for name, values in (("--critic-grid", self.critic_grid), ("--latent-grid", self.latent_grid)):
            if any(x <= 0 for x in values):
                raise TwinTurboError(f"{name}: weights must be > 0 (setup 1 is the run without them), got {values}")
        for number, grids in self.setup_grids.items():
            for key, values in grids.items():
                if key not in ("critic_grid", "latent_grid"):
                    raise TwinTurboError(f"setup_grids.{number}.{key}: expected critic_grid or latent_grid")
                if not values or any(x <= 0 for x in values):
                    raise TwinTurboError(f"setup_grids.{number}.{key}: expected a non-empty list of weights > 0")
        unknown_flags = sorted(set(self.training) - set(TRAINING_KEYS))
        if unknown_flags:
            raise TwinTurboError(
                f"training flag '{unknown_flags[0]}' is not a tt-train flag a sweep can share "
                f"(expected one of {', '.join(TRAINING_KEYS)})")
        try:
            TrainConfig(**self.training).validate()
        except TypeError as err:
            raise TwinTurboError(f"training flags: {err}") from None

    def lambdas(self, setup: int) -> list[tuple[float, float]]:
        """(lambda_C, lambda_L) pairs of one setup: its switched-off terms have weight 0 (Eq. 22)."""
        spec = SETUPS[setup]
        own = self.setup_grids.get(setup, {})
        critic = own.get("critic_grid", self.critic_grid) if spec.critic else (0.0,)
        latent = own.get("latent_grid", self.latent_grid) if spec.latent else (0.0,)
        return [(c, l) for c in critic for l in latent]

    def expand(self, store_fingerprint: str = "") -> list[RunSpec]:
        """Every run, grouped so that runs which can be fused are adjacent (label budget, seed, then setups)."""
        training = tuple(sorted(self.training.items()))
        return [
            RunSpec(setup, critic, latent, labels, seed, training, store_fingerprint)
            for labels in self.labels for seed in self.seeds
            for setup in self.setups for critic, latent in self.lambdas(setup)
        ]

    def to_dict(self) -> dict:
        return {
            "setups": list(self.setups), "labels": list(self.labels), "seeds": list(self.seeds),
            "critic_grid": list(self.critic_grid), "latent_grid": list(self.latent_grid),
            "setup_grids": {str(k): {n: list(v) for n, v in g.items()} for k, g in sorted(self.setup_grids.items())},
            "training": dict(sorted(self.training.items())),
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "grid") -> "SweepGrid":
        known = {"setups", "labels", "seeds", "critic_grid", "latent_grid", "setup_grids", "training"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TwinTurboError(f"{source}: unknown key '{unknown[0]}' (expected some of {', '.join(sorted(known))})")
        kwargs = {}
        try:
            for key in ("setups", "labels", "seeds", "critic_grid", "latent_grid"):
                if key in data:
                    value = data[key]
                    kwargs[key] = parse_list(value, float if "grid" in key else int, key) \
                        if isinstance(value, str) else tuple(value)
            if "setup_grids" in data:
                kwargs["setup_grids"] = {int(k): dict(v) for k, v in dict(data["setup_grids"]).items()}
            if "training" in data:
                kwargs["training"] = dict(data["training"])
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise TwinTurboError(f"{source}: {err}".splitlines()[0]) from None


def parse_list(text: str, kind: type, option: str) -> tuple:
    """'42,1337' -> (42, 1337); for setups also ranges: '1-4,7' -> (1, 2, 3, 4, 7)."""
    values: list = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if kind is int and "-" in part[1:]:
                low, high = part.split("-", 1)
                values.extend(range(int(low), int(high) + 1))
            else:
                values.append(kind(part))
        except ValueError:
            raise TwinTurboError(f"{option}: cannot read '{part}' as {kind.__name__} (expected e.g. "
                                 f"{'1-7 or 1,2,5' if kind is int else '0.01,0.1,1'})") from None
    return tuple(values)


def load_grid_file(path: str | os.PathLike) -> dict:
    """A grid file's raw mapping: TOML by `.toml`, YAML by `.yaml`/`.yml`."""
    path = Path(path)
    if not path.is_file():
        raise TwinTurboError(f"--grid {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        elif suffix in (".yaml", ".yml"):
            import yaml

            with open(path) as handle:
                data = yaml.safe_load(handle) or {}
        else:
            raise TwinTurboError(f"--grid {path}: expected a .toml, .yaml or .yml file")
    except TwinTurboError:
        raise
    except Exception as err:  # tomllib/yaml parse errors carry the line number in their text
        raise TwinTurboError(f"--grid {path}: cannot parse: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise TwinTurboError(f"--grid {path}: expected a mapping of keys (setups, labels, ...) at the top level")
    return data


# ---------------------------------------------------------------------------------------------------------------------
# The sweep directory: sweep.json (what the sweep is) and results.jsonl (what is finished)
# ---------------------------------------------------------------------------------------------------------------------

def append_row(results_path: str | os.PathLike, row: dict) -> None:
    """Append one finished run as one line, atomically and durably.

    One `os.write` of the whole line on an O_APPEND descriptor (under a POSIX lock, which also holds on NFS for the
    submitit launcher's concurrent jobs), then fsync. A previous writer killed mid-line leaves a line without its
    newline; we start ours on a fresh line so that only the broken one is lost, and readers skip it.
    """
    line = (json.dumps(row, sort_keys=True, allow_nan=True) + "\n").encode()
    fd = os.open(results_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {results_path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)  # closing drops the lock


def read_rows(results_path: str | os.PathLike) -> list[dict]:
    """All complete rows, first occurrence per run id; a trailing partial line (a kill mid-write) is ignored."""
    path = Path(results_path)
    if not path.exists():
        return []
    rows, seen = [], set()
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break  # the partial last line of a writer that was killed
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                continue  # a partial line a later writer already moved past
            if isinstance(row, dict) and row.get("run_id") not in seen:
                seen.add(row.get("run_id"))
                rows.append(row)
    return rows


def finished_run_ids(sweep_dir: str | os.PathLike) -> set[str]:
    return {row["run_id"] for row in read_rows(Path(sweep_dir) / RESULTS_FILE)}


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _grid_difference(old: dict, new: dict) -> str:
    return "; ".join(f"{key}: {_canonical(old.get(key))} -> {_canonical(new.get(key))}"
                     for key in sorted(set(old) | set(new)) if _canonical(old.get(key)) != _canonical(new.get(key)))


def prepare_sweep_dir(sweep_dir: str | os.PathLike, grid: SweepGrid, store_identity: dict, extend: bool) -> dict:
    """Create SWEEP_DIR or check that it holds this same sweep.

    A different grid or features store is refused unless `extend`, which records the new grid (the old ones stay in
    `history`) and keeps every finished row: only runs not yet in results.jsonl will train.
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / SWEEP_FILE
    current = {"grid": grid.to_dict(), "store": store_identity}
    if path.exists():
        try:
            existing = json.loads(path.read_text())
            old_grid, old_store = existing["grid"], existing["store"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise TwinTurboError(f"{path} is not a tt-sweep file (unreadable); choose another --out") from None
        old_precision = old_grid.get("training", {}).get("precision", "fp32")  # sweeps before --precision: fp32
        new_precision = current["grid"]["training"].get("precision", "fp32")
        if old_precision != new_precision:  # not even with --extend: one sweep, one precision
            raise TwinTurboError(f"{sweep_dir} was trained in {old_precision} and this command asks for {new_precision}: "
                                 f"pass --precision {old_precision} to resume it, or choose another --out")
        changes = []
        if _canonical(old_grid) != _canonical(current["grid"]):
            changes.append(f"the grid changed ({_grid_difference(old_grid, current['grid'])})")
        if old_store.get("fingerprint") != store_identity.get("fingerprint"):
            changes.append(f"the features store changed ({old_store.get('path')} [{old_store.get('fingerprint')}] "
                           f"-> {store_identity.get('path')} [{store_identity.get('fingerprint')}])")
        if not changes:
            return existing
        if not extend:
            raise TwinTurboError(f"{sweep_dir} holds another sweep: {'; '.join(changes)}; pass --extend to add this "
                                 "grid's runs to it, or choose another --out")
        history = existing.get("history", []) + [{"grid": old_grid, "store": old_store}]
        current["history"] = history
    current["format"] = SWEEP_FORMAT
    _write_json_atomic(path, current)
    return current


def pending_runs(runs: Iterable[RunSpec], finished: set[str]) -> list[RunSpec]:
    return [run for run in runs if run.run_id not in finished]


def fusion_groups(runs: Iterable[RunSpec], fuse: int) -> Iterator[list[RunSpec]]:
    """Groups of at most `fuse` runs with one fusion key each (same data batches, same masks).

    Within a key, runs that switch on the same terms of Eq. 22 go together: a fused pass forwards the x* rows when any
    of its runs has the latent term and the unlabelled rows when any has the critic, so a setup-1 run fused with a
    setup-7 run would pay for rows it never uses.
    """
    if fuse < 1:
        raise TwinTurboError(f"--fuse {fuse}: expected a number of runs >= 1")
    by_key: dict[tuple, list[RunSpec]] = {}
    for run in runs:
        by_key.setdefault(run.fusion_key + (run.critic > 0, run.latent > 0), []).append(run)
    for members in by_key.values():
        for start in range(0, len(members), fuse):
            yield members[start:start + fuse]


def run_table(runs: list[RunSpec], finished: set[str] = frozenset()) -> str:
    """The --dry-run table: one line per run, then the count."""
    header = f"{'#':>4}  {'setup':<30} {'lambda_C':>8} {'lambda_L':>8} {'labels':>6} {'seed':>6}  {'status':<8} run id"
    lines = [header, "-" * len(header)]
    for index, run in enumerate(runs, 1):
        status = "done" if run.run_id in finished else "pending"
        lines.append(f"{index:>4}  {SETUPS[run.setup].name:<30} {format_weight(run.critic):>8} {format_weight(run.latent):>8} "
                     f"{run.labels:>6} {run.seed:>6}  {status:<8} {run.run_id}")
    done = sum(run.run_id in finished for run in runs)
    lines.append(f"{len(runs)} runs ({done} done, {len(runs) - done} to train)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# The engine behind tt-sweep
# ---------------------------------------------------------------------------------------------------------------------

LIST_KINDS = {"setups": int, "labels": int, "seeds": int, "critic_grid": float, "latent_grid": float}


def build_grid(grid_file: str | None, lists: dict[str, str | None], training: dict[str, Any]) -> SweepGrid:
    """The grid of a sweep: a --grid file when given, then the command line's list options and training flags over
    it (`None` = not given); what neither sets keeps the defaults of this module and of TrainConfig."""
    data = load_grid_file(grid_file) if grid_file else {}
    shared = dict(data.pop("training", {}) or {})
    for key, text in lists.items():
        if text is not None:
            data[key] = parse_list(text, LIST_KINDS[key], "--" + key.replace("_", "-"))
    shared.update({name: value for name, value in training.items() if value is not None})
    data["training"] = shared
    return SweepGrid.from_dict(data, source=f"--grid {grid_file}" if grid_file else "options")


def sweep_precision(precision: str, device: str, launcher: str, slurm) -> str:
    """The sweep's precision, resolved once where the command runs and recorded in sweep.json and every run's config:
    `auto` is bf16 where the runs' device computes it natively. Jobs sent to GPUs (`--launcher submitit` with
    `--slurm-gpus-per-node` >= 1 and --device auto or cuda) count as CUDA, whatever the submitting machine has."""
    from twinturbo.common.device import resolve_device, resolve_precision

    import torch

    if launcher == "submitit" and device in ("auto", "cuda") and slurm is not None and slurm.gpus_per_node > 0:
        target = torch.device("cuda")  # the jobs' device, which this machine may lack
        return "bf16" if precision == "auto" else resolve_precision(precision, target)
    return resolve_precision(precision, resolve_device(device))


def run_sweep(features: str, sweep_dir: str, grid: SweepGrid, device: str, fuse: int | None, workers: int,
              dry_run: bool, extend: bool, launcher: str, slurm, echo=print, memory_limit: int | None = None,
              save_heads: bool = False) -> None:
    """What tt-sweep does: check the store and SWEEP_DIR, skip finished runs, train the rest in fused groups on the
    chosen launcher (rows are appended to results.jsonl as runs finish); `memory_limit` as in data.load_splits."""
    from twinturbo.common.device import resolve_device
    from twinturbo.common.store import open_store
    from twinturbo.train import launch

    if fuse is None:
        fuse = launch.DEFAULT_FUSE.get(resolve_device(device).type, 1)
    if fuse < 1:
        raise TwinTurboError(f"--fuse {fuse}: expected a number of runs >= 1")
    with open_store(features) as store:
        store.require_complete()
        identity = store.identity()
    grid.training["precision"] = sweep_precision(grid.training.get("precision", "auto"), device, launcher, slurm)
    runs = grid.expand(identity["fingerprint"])
    if dry_run:
        finished = finished_run_ids(sweep_dir) if (Path(sweep_dir) / RESULTS_FILE).exists() else set()
        echo(run_table(runs, finished))
        return
    prepare_sweep_dir(sweep_dir, grid, identity, extend)
    todo = pending_runs(runs, finished_run_ids(sweep_dir))
    echo(f"tt-sweep: {len(runs)} runs in the grid, {len(runs) - len(todo)} already done, {len(todo)} to train "
         f"(fused by up to {fuse})")
    groups = list(fusion_groups(todo, fuse))
    work = launch.SweepWork(features, sweep_dir, device, memory_limit, save_heads)
    if launcher == "local":
        launch.launch_local(work, groups, workers)
    else:
        launch.launch_submitit(work, groups, slurm)
    echo(f"tt-sweep: results in {Path(sweep_dir) / RESULTS_FILE}; figures: tt-report {sweep_dir}")
