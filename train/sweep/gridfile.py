"""A sweep's grid from a `--grid FILE` (TOML or YAML) and the command line's list options over it, and the lines
naming what a user gave that no chosen setup (grids) or no trained head (head options) reads."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twinturbo.common.errors import TwinTurboError
from twinturbo.train.config import TrainConfig
from twinturbo.train.heads import HEAD_OPTIONS
from twinturbo.train.terms import OPTION_TERMS
from twinturbo.train.sweep.grid import AXIS_DEFAULTS, SweepGrid, format_list, grid_key, grid_option, parse_list


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


LIST_KINDS = {"setups": str, "heads": str, "labels": int, "seeds": int,
              **{grid_key(axis): float for axis in AXIS_DEFAULTS}}


def build_grid(grid_file: str | dict | None, lists: dict[str, str | None], training: dict[str, Any]) -> SweepGrid:
    """The grid of a sweep: a --grid file (or, from Python, the mapping such a file holds) when given, then the
    command line's list options and training flags over it (`None` = not given); what neither sets keeps the
    defaults of this module and of TrainConfig."""
    if isinstance(grid_file, dict):
        data, grid_file = dict(grid_file), "(mapping)"
    else:
        data = load_grid_file(grid_file) if grid_file else {}
    shared = dict(data.pop("training", {}) or {})
    for key, text in lists.items():
        if text is not None:
            data[key] = parse_list(text, LIST_KINDS[key], "--" + key.replace("_", "-"))
    shared.update({name: value for name, value in training.items() if value is not None})
    data["training"] = shared
    grid = SweepGrid.from_dict(data, source=f"--grid {grid_file}" if grid_file else "options")
    given = [key for key in data if key.endswith("_grid")] + [f"setup_grids.{k}" for k in data.get("setup_grids", {})]
    grid.ignored = tuple(f"{grid_option(name[:-len('_grid')])} {format_list(data[name])}"
                         if name in lists and lists[name] is not None else f"{name} of --grid {grid_file}"
                         for name in grid.unused_grids(given))
    grid.unread_options = unread_options(grid, {name for name, value in training.items() if value is not None})
    return grid


def unread_options(grid: SweepGrid, given: set[str]) -> tuple[str, ...]:
    """The training options given on the command line (`given`: field names) that no run of the grid reads: a head's
    options where no run trains that head, a term's where no chosen setup switches the term on; each as '--<flag>
    <value> (--head <head>)' or '(the <term> term)'. A warning, not a refusal (tt-train refuses): a sweep's shared
    flags serve whichever of its runs read them."""
    heads = grid.trained_heads()
    terms = {term for key in grid.setups for term in grid.table[key].terms}
    unread = []
    for name in sorted(given):
        owner = OPTION_TERMS.get(name)
        if name in HEAD_OPTIONS and HEAD_OPTIONS[name].name not in heads:
            unread.append(f"{TrainConfig.flag(name)} {grid.training[name]} (--head {HEAD_OPTIONS[name].name})")
        elif owner is not None and owner.name not in terms:
            unread.append(f"{TrainConfig.flag(name)} {grid.training[name]} (the {owner.name} term)")
    return tuple(unread)


def unread_options_warning(grid: SweepGrid) -> str | None:
    """tt-sweep's one line on the training options no run of the sweep reads."""
    if not grid.unread_options:
        return None
    heads = grid.trained_heads()
    return (f"warning: {'; '.join(grid.unread_options)}: read by no run of this sweep (setups "
            f"{', '.join(map(str, grid.setups))}; heads {', '.join(heads)}), so no run changes")


def ignored_grids_warning(grid: SweepGrid) -> str | None:
    """tt-sweep's one line on the grids a user gave that no chosen setup reads (ours: a warning, not a refusal: a
    grid file shared by several sweeps may hold grids for setups a command does not choose)."""
    if not grid.ignored:
        return None
    return (f"warning: {'; '.join(grid.ignored)}: read by no chosen setup ({', '.join(map(str, grid.setups))}), so "
            "no run changes (a setup reads a term's grid only when it switches the term on and sets none of its own)")
