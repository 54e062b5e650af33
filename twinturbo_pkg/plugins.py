"""A researcher's own terms of Eq. 22 without forking: the term registry's plugin files and entry points.

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

The machinery itself is common/plugins.py, shared by every registry (terms, backbones, datasets); the term registry
(train/terms/__init__.py) reads its group, and this module gives the Python API (`twinturbo.use_plugins`) its names.
"""
from __future__ import annotations

from twinturbo.common.plugins import (PLUGINS_ENV, PLUGINS_OPTION, load_file, plugin_files, plugins_in_argv,
                                      use_plugins)

__all__ = ["PLUGINS_ENV", "PLUGINS_OPTION", "load_file", "plugin_files", "plugins_in_argv", "use_plugins"]
