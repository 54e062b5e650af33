"""`tt.train(...)` and `tt.extract(...)` while `twinturbo.train` and `twinturbo.extract` are also subpackages.

Importing a subpackage binds it as an attribute of its parent, over the API function of the same name that
twinturbo/__init__.py bound there; so the subpackage itself is made callable, and calling it calls the function
(twinturbo/api.py). Either way `import twinturbo as tt; tt.train(...)` is the API's train.
"""
from __future__ import annotations

import importlib
import sys
import types


def make_callable(module_name: str, function: str) -> None:
    """Let the module `module_name`, called, call twinturbo.api's `function` with the same arguments."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module("twinturbo.api"), function)(*args, **kwargs)

    CallableModule.__doc__ = f"{module_name}, callable as twinturbo.api.{function}"
    sys.modules[module_name].__class__ = CallableModule
