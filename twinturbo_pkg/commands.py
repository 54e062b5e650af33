"""The console entry points of the commands whose options come from the term registry (tt-train, tt-sweep, tt-report,
tt-predict): each reads `--plugins` from its argument list and puts the files in force (twinturbo/plugins.py) before
the training code, and with it every option built from the registry, is imported."""
from __future__ import annotations

import importlib
import sys

from twinturbo.common.errors import TwinTurboError, one_line
from twinturbo.plugins import plugins_in_argv, use_plugins


def _run(module: str, command: str) -> None:
    try:
        use_plugins(*plugins_in_argv(sys.argv[1:]))
        main = getattr(importlib.import_module(module), command)
    except TwinTurboError as err:  # a plugin that is missing, broken, or clashes with a built-in term
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    main()


def tt_train() -> None:
    _run("twinturbo.train.cli", "train_main")


def tt_sweep() -> None:
    _run("twinturbo.train.cli", "sweep_main")


def tt_report() -> None:
    _run("twinturbo.train.cli", "report_main")


def tt_predict() -> None:
    _run("twinturbo.predict", "main")
