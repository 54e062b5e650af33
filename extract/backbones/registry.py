"""The backbone registry: spec prefix -> family, the package's own families first, then those of installed packages.

A family is one module of this package that defines `BACKBONE`, a `BackboneFamily`: its spec prefix (`timm` for
`timm:<name>`), a summary for the help and the errors, and `build(argument, options) -> Backbone`, where the argument
is what follows the first ':' of the spec (None without one). Adding a family is adding a module (timm_vit.py is
one to copy). An installed package adds one through an entry point of the group `twinturbo.backbones` named after
its prefix (`[project.entry-points."twinturbo.backbones"] mybb = "mypackage.mybb"`, a module defining BACKBONE).

The package's families are found when this module is imported, entry points when a backbone is first built: a broken
installed package costs `tt-extract --help` nothing, and is one `error:` line when a backbone is built. A prefix that
is already a family's is refused in one line, as a term's name is (train/terms/__init__.py). The machinery is
common/plugins.py's, shared with the dataset sources.
"""
from __future__ import annotations

import functools
from pathlib import Path

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.plugins import built_ins, with_entry_points

from .base import Backbone, BackboneFamily, BackboneOptions

ENTRY_POINT_GROUP = "twinturbo.backbones"
DEFAULT_BACKBONE = "radio"
PACKAGE = __name__.rpartition(".")[0]
BUILT_IN_FAMILIES: dict[str, BackboneFamily] = built_ins(PACKAGE, Path(__file__).parent, "BACKBONE", "prefix")
# The --backbone help: what the package's families accept (an installed package's: ExtractConfig's help says how).
BACKBONE_SPECS = ", ".join(family.summary for family in BUILT_IN_FAMILIES.values())


@functools.cache
def families() -> dict[str, BackboneFamily]:
    """Every family by prefix: the package's, then those of the entry points of ENTRY_POINT_GROUP."""
    return with_entry_points(BUILT_IN_FAMILIES, ENTRY_POINT_GROUP, "BACKBONE", BackboneFamily, "prefix",
                             "backbone prefix")


def backbone_specs() -> str:
    """What --backbone accepts: every family's summary, the package's, then the installed packages'."""
    return ", ".join(family.summary for family in families().values())


def build_backbone(spec: str, options: BackboneOptions | None = None) -> Backbone:
    """The backbone named by `spec` (see BACKBONE_SPECS), frozen, in eval mode, on CPU."""
    options = options or BackboneOptions()
    spec = (spec or DEFAULT_BACKBONE).strip()
    prefix, colon, argument = spec.partition(":")
    family = families().get(prefix)
    if family is None or not family.accepts(argument if colon else None):
        raise TwinTurboError(f"--backbone {spec!r}: unknown backbone; valid: {backbone_specs()}")
    backbone = family.build(argument if colon else None, options)
    if not isinstance(backbone, Backbone):
        raise TwinTurboError(f"--backbone {spec}: the family of {family.origin} builds a {type(backbone).__name__}, "
                             "not a twinturbo.extract.backbones.Backbone")
    return backbone.eval()
