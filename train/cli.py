"""Command lines of stage 2: `tt-train`, `tt-sweep`, `tt-report`. Options are parsed here; the work is elsewhere."""
from __future__ import annotations

import click

from twinturbo.common.errors import TwinTurboError, exit_on_user_error

# ---- tt-train (owner: train loop) ------------------------------------------------------------------------------------

# ---- tt-sweep and tt-report (owner: sweep/report) --------------------------------------------------------------------
