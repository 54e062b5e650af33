"""A researcher's own terms of Eq. 22 without forking: plugin files and entry points.

A term is a module that defines `TERM` (train/terms/__init__.py says what a `Term` is). Besides the package's own
modules, the term registry takes:

- every entry point of the group `twinturbo.terms` (an installed package declares e.g.
  `[project.entry-points."twinturbo.terms"] myterm = "mypackage.myterm"`, a module defining TERM);
- every file named by `--plugins FILE.py[,FILE.py]` on tt-train, tt-sweep, tt-report and tt-predict, or by
  `twinturbo.use_plugins(...)` in Python.

The registry is built once, when the training code is first imported (every option, grid and table is made from it),
so plugin files are named before that: the commands read `--plugins` from their argument list before importing the
rest, and `use_plugins` refuses once the registry exists. The files travel to tt-sweep's worker processes and SLURM
jobs in the environment variable TWINTURBO_PLUGINS (absolute paths). A run records which plugin each of its terms
came from, so that a command meeting it without the plugin says which one to load.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from twinturbo.common.errors import TwinTurboError, one_line

PLUGINS_ENV = "TWINTURBO_PLUGINS"
ENTRY_POINT_GROUP = "twinturbo.terms"
REGISTRY_MODULE = "twinturbo.train.terms"
PLUGINS_OPTION = "--plugins"


def plugin_files() -> list[Path]:
    """The plugin files in force (TWINTURBO_PLUGINS), in the order given."""
    return [Path(p) for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p]


def use_plugins(*paths: str | os.PathLike) -> None:
    """Load the terms of these plugin files along with the package's own: call before anything of the training code
    is imported (`twinturbo.train`, or tt.train / tt.sweep / tt.report / tt.predict). A file already in force is not
    added twice."""
    files = [Path(p).expanduser().resolve() for p in paths]
    for path in files:
        if path.suffix != ".py" or not path.is_file():
            raise TwinTurboError(f"{PLUGINS_OPTION} {path}: expected an existing Python file (FILE.py) defining TERM")
    current = plugin_files()
    new = [p for p in files if p not in current]
    if not new:
        return
    if REGISTRY_MODULE in sys.modules:
        raise TwinTurboError(f"{PLUGINS_OPTION} {', '.join(map(str, new))}: the terms are already registered (the "
                             "training code was imported first); name plugins before anything else, e.g. "
                             "twinturbo.use_plugins(...) right after `import twinturbo`")
    os.environ[PLUGINS_ENV] = os.pathsep.join(map(str, current + new))


def plugins_in_argv(argv: list[str]) -> list[str]:
    """The files of every `--plugins A.py,B.py` (or `--plugins=...`) in a command line."""
    found = []
    for i, arg in enumerate(argv):
        if arg == PLUGINS_OPTION and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith(PLUGINS_OPTION + "="):
            found.append(arg.split("=", 1)[1])
    return [part for value in found for part in value.split(",") if part.strip()]


def load_file(path: Path) -> ModuleType:
    """Import a plugin file as a module of its own (named after its path, so two files of one name do not meet)."""
    name = "twinturbo_plugin_" + path.stem + "_" + hashlib.sha256(str(path).encode()).hexdigest()[:8]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TwinTurboError(f"{PLUGINS_OPTION} {path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except TwinTurboError:
        raise
    except Exception as err:  # the plugin's own mistake: which file, and what it raised
        del sys.modules[name]
        raise TwinTurboError(f"{PLUGINS_OPTION} {path}: cannot load it: {type(err).__name__}: {one_line(err)}") \
            from None
    return module


def plugin_modules() -> list[tuple[str, ModuleType]]:
    """(source, module) of every entry point of ENTRY_POINT_GROUP, then of every plugin file; the source is what a
    run records and an error names ('entry point mypackage.myterm', 'plugin /path/to/file.py')."""
    from importlib.metadata import entry_points

    found = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        try:
            loaded = point.load()
        except Exception as err:
            raise TwinTurboError(f"entry point {point.name} = {point.value} (group {ENTRY_POINT_GROUP}): cannot load "
                                 f"it: {type(err).__name__}: {one_line(err)}") from None
        module = loaded if isinstance(loaded, ModuleType) else importlib.import_module(point.module)
        found.append((f"entry point {point.value}", module))
    found += [(f"plugin {path}", load_file(path)) for path in plugin_files()]
    return found


def how_to_load(source: str) -> str:
    """What a user does to have the term of `source` again: the --plugins option, or the package's install."""
    if source.startswith("plugin "):
        return f"pass {PLUGINS_OPTION} {source.removeprefix('plugin ')}"
    if source.startswith("entry point "):
        return f"install the package that provides {source}"
    return "it is not a term of this twinturbo"
