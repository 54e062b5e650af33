"""`tt.train(...)` and `tt.extract(...)` while `twinturbo.train` and `twinturbo.extract` are also subpackages.

Importing a subpackage binds it as an attribute of its parent, over the API function of the same name that
twinturbo/__init__.py bound there; so the subpackage itself is made callable, and calling it calls the function
of the same name in the API module (twinturbo/api.py). Either way `import twinturbo as tt; tt.train(...)` is the API's
train.

The API module hands itself over with `serve_calls` when it is imported (twinturbo/__init__.py imports it before any
subpackage can be), so this module, the ground of the package, names nothing above it.
"""
from __future__ import annotations

import sys
import types

_API: list[types.ModuleType] = []  # the module whose functions a callable subpackage calls (serve_calls)


def serve_calls(api: types.ModuleType) -> None:
    """Make `api` the module whose function a callable subpackage calls (twinturbo/api.py calls it with itself)."""
    _API[:] = [api]


def make_callable(module_name: str, function: str) -> None:
    """Let the module `module_name`, called, call the API's `function` with the same arguments."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(_API[0], function)(*args, **kwargs)

    CallableModule.__doc__ = f"{module_name}, callable as twinturbo.api.{function}"
    sys.modules[module_name].__class__ = CallableModule
