"""py:<module:factory>: the user's callable returning an nn.Module whose forward gives (cls, patches), or a Backbone,
from a module on sys.path or in the current directory."""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path

import torch
from torch import nn

from twinturbo.common.errors import TwinTurboError, one_line

from .adapt import as_tokens, own_resolution, probe, square_side
from .base import Backbone, BackboneFamily, BackboneOptions, state_dict_sha256


def _import_user_module(name: str, spec: str):
    """The user's module, importable from sys.path or the current directory (appended, so it shadows nothing)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):
            raise TwinTurboError(f"--backbone {spec}: no module {name!r} on sys.path or in the current directory "
                                 f"{cwd}") from None
        raise TwinTurboError(f"--backbone {spec}: module {name} needs the package '{err.name}', which is not "
                             "installed") from None
    except Exception as err:  # the user's module may raise anything while it is imported
        raise TwinTurboError(f"--backbone {spec}: importing {name} failed: {type(err).__name__}: "
                             f"{one_line(err)[:200]}") from None


def _module_source(module) -> bytes:
    path = getattr(module, "__file__", None)
    return Path(path).read_bytes() if path and Path(path).is_file() else b""


class PyModel(Backbone):
    """The user's own model (`py:MODULE:FACTORY`): FACTORY() returns an nn.Module whose forward takes float32 RGB in
    [0, 1] at the resolution and returns (cls [B, Dc], patches [B, T, Dp]) — a `Backbone` is one. It normalises its
    input itself. The resolution is --resolution or the module's `resolution` attribute; the weights id is the
    sha256 of the module's source file and the model's state dict."""

    def __init__(self, module_name: str, factory_name: str, options: BackboneOptions):
        super().__init__()
        spec = f"py:{module_name}:{factory_name}"
        module = _import_user_module(module_name, spec)
        factory = getattr(module, factory_name, None)
        if not callable(factory):
            raise TwinTurboError(f"--backbone {spec}: module {module_name} ({getattr(module, '__file__', '?')}) has "
                                 f"no callable {factory_name!r}")
        try:
            model = factory()
        except Exception as err:  # the user's factory may raise anything
            raise TwinTurboError(f"--backbone {spec}: {factory_name}() failed: {type(err).__name__}: "
                                 f"{one_line(err)[:200]}") from None
        if not isinstance(model, nn.Module):
            raise TwinTurboError(f"--backbone {spec}: {factory_name}() returns {type(model).__name__}; expected an "
                                 "nn.Module whose forward returns (cls, patches), or a Backbone")
        own = square_side(getattr(model, "resolution", None))
        if isinstance(model, Backbone) and options.resolution is not None and own != int(options.resolution):
            raise TwinTurboError(f"--resolution {options.resolution}: the Backbone that {spec} returns has resolution "
                                 f"{own}")
        self.model = model.eval()
        self.resolution = own_resolution(options, own, None, spec)
        self.weights_id = state_dict_sha256(model, hashlib.sha256(_module_source(module))).hexdigest()[:16]
        self.name = spec
        probe(self, spec)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(images)
        if not isinstance(output, tuple) or len(output) != 2:
            raise TwinTurboError(f"--backbone {self.name}: its forward gives {type(output).__name__}; expected a "
                                 "tuple (cls [B, Dc], patches [B, T, Dp])")
        return as_tokens(*output, self.name)


def _build(argument: str | None, options: BackboneOptions) -> PyModel:
    module, _, factory = (argument or "").partition(":")
    if not module or not factory:
        spec = "py" if argument is None else f"py:{argument}"
        raise TwinTurboError(f"--backbone {spec}: expected py:MODULE:FACTORY, e.g. py:my_models:build")
    return PyModel(module, factory, options)


BACKBONE = BackboneFamily(
    "py", "py:<module:factory> (your callable returning an nn.Module giving (cls, patches), or a Backbone)", _build,
    order=60)
