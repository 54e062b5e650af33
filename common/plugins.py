"""The researcher's own code without forking: plugin files and entry points, for every registry of the package.

A registry (the terms of train/terms/, the backbone families of extract/backbones/, the dataset sources of
extract/datasets/) has the package's own modules, then the modules of

- every entry point of its group (an installed package declares e.g. `[project.entry-points."twinturbo.terms"]
  myterm = "mypackage.myterm"`): `entry_point_modules(group)`;
- every file named by `--plugins FILE.py[,FILE.py]` or `twinturbo.use_plugins(...)` (terms and heads):
  `plugin_modules(group, ...)` gives the entry points, then these files.

`built_ins` and `with_entry_points` build such a registry of objects (a backbone family, a dataset source): each module
defines one under a name the registry chooses (BACKBONE, DATASET), keyed by one of its fields, with a field `origin`
saying where it came from.

Plugin files are put in force before a registry that reads them is built: the commands read `--plugins` from their
argument list first, and `use_plugins` refuses once such a registry has read them. The files travel to worker
processes and SLURM jobs in the environment variable TWINTURBO_PLUGINS (absolute paths). Each module comes with its
source ('entry point mypackage.myterm', 'plugin /path/to/file.py'): what a run records and an error names. Every
failure is one line (a TwinTurboError).

This is the ground of the package (common/): it imports no registry; each registry passes its own group.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from .errors import TwinTurboError, one_line

PLUGINS_ENV = "TWINTURBO_PLUGINS"
PLUGINS_OPTION = "--plugins"
BUILT_IN = "built-in"  # the origin of a registry's own objects
PLUGIN_ATTRIBUTES = ("TERM", "HEAD")  # what a plugin file may define: a term (train/terms/), a head (train/heads/)
# Registries that have read the plugin files, by entry point group: (what they register, the code that built them).
_READ_BY: dict[str, tuple[str, str]] = {}


def plugin_files() -> list[Path]:
    """The plugin files in force (TWINTURBO_PLUGINS), in the order given."""
    return [Path(p) for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p]


def use_plugins(*paths: str | os.PathLike, defining: str = " or ".join(PLUGIN_ATTRIBUTES)) -> None:
    """Put these plugin files in force, before any registry that reads them is built. A file already in force is not
    added twice. `defining`: what a file is expected to define (said when a path is no Python file)."""
    files = [Path(p).expanduser().resolve() for p in paths]
    for path in files:
        if path.suffix != ".py" or not path.is_file():
            raise TwinTurboError(f"{PLUGINS_OPTION} {path}: expected an existing Python file (FILE.py) defining "
                                 f"{defining}")
    current = plugin_files()
    new = [p for p in files if p not in current]
    if not new:
        return
    if _READ_BY:
        what, code = next(iter(_READ_BY.values()))
        raise TwinTurboError(f"{PLUGINS_OPTION} {', '.join(map(str, new))}: the {what} are already registered ({code} "
                             "was imported first); name plugins before anything else, e.g. twinturbo.use_plugins(...) "
                             "right after `import twinturbo`")
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


def entry_point_modules(group: str) -> list[tuple[str, str, ModuleType]]:
    """(entry point name, source, module) of every entry point of `group`, by name; the source is
    'entry point <module>'. A module that cannot be imported is one line naming the entry point."""
    found = []
    for point in sorted(entry_points(group=group), key=lambda p: p.name):
        try:
            loaded = point.load()
        except Exception as err:  # the installed package's own mistake: which entry point, and what it raised
            raise TwinTurboError(f"entry point {point.name} = {point.value} (group {group}): cannot load it: "
                                 f"{type(err).__name__}: {one_line(err)}") from None
        module = loaded if isinstance(loaded, ModuleType) else importlib.import_module(point.module)
        found.append((point.name, f"entry point {point.value}", module))
    return found


def plugin_modules(group: str, what: str, code: str, attribute: str) -> list[tuple[str, ModuleType]]:
    """(source, module) of every entry point of `group`, then of every plugin file in force that defines `attribute`
    (a file may define a term, a head or both: PLUGIN_ATTRIBUTES; one defining none of them is one line). `what` the
    registry registers and `code` the code that builds it name them once plugin files can no longer be added
    (use_plugins)."""
    found = [(source, module) for _, source, module in entry_point_modules(group)]
    for path in plugin_files():
        module = load_file(path)
        if not any(hasattr(module, name) for name in PLUGIN_ATTRIBUTES):
            raise TwinTurboError(f"{PLUGINS_OPTION} {path}: defines none of {', '.join(PLUGIN_ATTRIBUTES)} (a term: "
                                 "twinturbo.train.terms.Term; a head: twinturbo.train.heads.Head)")
        if hasattr(module, attribute):
            found.append((f"plugin {path}", module))
    _READ_BY.setdefault(group, (what, code))
    return found


def how_to_load(source: str, kind: str) -> str:
    """What a user does to have the `kind` (e.g. 'term') of `source` again: the --plugins option, or the package's
    install."""
    if source.startswith("plugin "):
        return f"pass {PLUGINS_OPTION} {source.removeprefix('plugin ')}"
    if source.startswith("entry point "):
        return f"install the package that provides {source}"
    return f"it is not a {kind} of this twinturbo"


def built_ins(package: str, folder: str | os.PathLike, attribute: str, key: str) -> dict:
    """{object's `key`: object} of the `attribute` of every module of `package` (its folder `folder`) that defines one,
    in the objects' `order`, then by name: a registry's own objects. Two of one name are a bug of the package."""
    found: dict = {}
    for info in pkgutil.iter_modules([str(folder)]):
        item = getattr(importlib.import_module(f"{package}.{info.name}"), attribute, None)
        if item is not None:
            if getattr(item, key) in found:
                raise RuntimeError(f"two {attribute} named {getattr(item, key)!r} in {package}")
            found[getattr(item, key)] = item
    return dict(sorted(found.items(), key=lambda pair: (pair[1].order, pair[0])))


def with_entry_points(registry: dict, group: str, attribute: str, kind: type, key: str, noun: str) -> dict:
    """`registry`, then the `attribute` of the module of every entry point of `group`: a `kind` whose `key` is the
    entry point's name, given the origin 'entry point <module>'. A module without one, one named otherwise and a name
    already taken (a built-in's, another entry point's) are one line each."""
    found = dict(registry)
    for name, source, module in entry_point_modules(group):
        item = getattr(module, attribute, None)
        where = f"{source} (group {group})"
        if not isinstance(item, kind):
            raise TwinTurboError(f"{where}: defines no {attribute} (a {kind.__name__})")
        if name in found:
            raise TwinTurboError(f"{where}: {noun} {name!r} is already taken ({found[name].origin}); give it another "
                                 "name")
        if getattr(item, key) != name:
            raise TwinTurboError(f"{where}: its {attribute} is {noun} {getattr(item, key)!r}, its entry point {name!r}; "
                                 "name them alike")
        found[name] = dataclasses.replace(item, origin=source)
    return found
