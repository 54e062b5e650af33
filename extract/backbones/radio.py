"""radio[:<version>]: RADIOv2.5 through torch.hub, the paper's backbone (section 4.1, Table 1: RADIOv2.5-B at 224 px);
offline with a local hub copy (--hub-dir) and checkpoint (--radio-checkpoint)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from twinturbo.common.errors import TwinTurboError, one_line

from .base import (DEFAULT_RADIO_VERSION, DEFAULT_RESOLUTION, Backbone, BackboneFamily, BackboneOptions,
                   checked_resolution, file_sha256_prefix, require_file)

RADIO_HUB_REPO = "NVlabs/RADIO"
RADIO_PATCH = 16  # the resolution step of hub models that do not say theirs (min_resolution_step)

_RADIO_OFFLINE_HINT = (
    "for offline use pass --hub-dir <local clone of github.com/NVlabs/RADIO> and "
    "--radio-checkpoint <radio-v2.5-b_half.pth.tar>"
)


class Radio(Backbone):
    """RADIOv2.5 (`torch.hub.load('NVlabs/RADIO', 'radio_model', version=...)`): it returns a RadioOutput
    (summary, features); summary [B, 2304] -> cls, features [B, T, 768] (NLC) -> patches. Input RGB in [0, 1], the
    model normalises itself (its input conditioner); H and W must be multiples of the model's
    `min_resolution_step` (16 for v2.5-B/L, 14 for v2.5-g, times the window size for ViTDet variants).
    """

    def __init__(self, version: str, options: BackboneOptions):
        super().__init__()
        requested = DEFAULT_RESOLUTION if options.resolution is None else int(options.resolution)
        if requested <= 0:
            raise TwinTurboError(f"--resolution {requested}: radio needs a positive multiple of its patch size")
        if options.radio_checkpoint is not None:
            checkpoint = require_file(options.radio_checkpoint, "--radio-checkpoint", "a RADIO checkpoint such as radio-v2.5-b_half.pth.tar")
            _check_radio_checkpoint(checkpoint)
            hub_version, self.weights_id = str(checkpoint), file_sha256_prefix(checkpoint)
        else:
            hub_version, self.weights_id = version, f"pretrained:{version}"
        self.model = _load_radio(hub_version, options.hub_dir)
        step = int(getattr(self.model, "min_resolution_step", RADIO_PATCH))
        self.resolution = checked_resolution(options, DEFAULT_RESOLUTION, step, "radio")
        self.name = f"radio:{version}"
        self._freeze_and_probe()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        summary, spatial = self.model(images)[:2]
        if spatial.ndim == 4:  # a hub built with feature_fmt='NCHW'
            spatial = spatial.flatten(2).transpose(1, 2)
        return summary, spatial


def _check_radio_checkpoint(path: Path) -> None:
    """Refuse, in one line, a file RADIO's hub code would fail on with a traceback: not a torch file (cut short,
    another format) or a torch file without RADIO's layout {'args': Namespace, 'state_dict': {...}} (e.g. a plain
    state dict)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on a broken file
        raise TwinTurboError(
            f"--radio-checkpoint {path}: not a readable torch checkpoint ({one_line(err)[:120]}); expected a RADIO "
            "checkpoint such as radio-v2.5-b_half.pth.tar (a download cut short?)") from None
    if not (isinstance(checkpoint, dict) and "args" in checkpoint
            and ("state_dict" in checkpoint or "state_dict_ema" in checkpoint)):
        found = ", ".join(map(str, list(checkpoint)[:3])) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise TwinTurboError(
            f"--radio-checkpoint {path}: a torch file but not a RADIO checkpoint (expected the keys 'args' and "
            f"'state_dict', found {found or 'nothing'}...; a plain state dict cannot be loaded by RADIO's hub code)")


def _load_radio(version: str, hub_dir: Path | None) -> nn.Module:
    if hub_dir is not None:
        hub_dir = Path(hub_dir).expanduser()
        if not (hub_dir / "hubconf.py").is_file():
            raise TwinTurboError(f"--hub-dir {hub_dir}: no hubconf.py there (expected a local clone of github.com/NVlabs/RADIO)")
        where, source = str(hub_dir), {"source": "local"}
    else:
        # trust_repo=True: torch's default ("check") would stop at an interactive prompt in the middle of a CLI run.
        where, source = RADIO_HUB_REPO, {"source": "github", "trust_repo": True, "skip_validation": True}
    try:
        model = torch.hub.load(where, "radio_model", version=version, progress=True, **source)
    except ImportError as err:  # the hub code imports its dependencies at import time, before torch.hub checks them
        raise TwinTurboError(
            f"radio: RADIO's hub code at {where} needs the package '{err.name}', which is not installed "
            f"(pip install {err.name}; twinturbo installs the ones RADIO declares: torch, timm, einops)") from None
    except OSError as err:  # URLError, HTTPError, timeouts, connection resets
        raise TwinTurboError(f"radio: could not download RADIO ({type(err).__name__}: {str(err)[:120]}); {_RADIO_OFFLINE_HINT}") from err
    except RuntimeError as err:
        message = str(err)
        if "Missing dependencies" in message:  # hubconf.py's `dependencies` list
            raise TwinTurboError(f"radio: the RADIO hub code needs more packages: {message.splitlines()[0]} (pip install them)") from err
        if "Cannot find callable" in message:
            raise TwinTurboError(f"--hub-dir {where}: its hubconf.py has no entry point radio_model (expected a clone "
                                 "of github.com/NVlabs/RADIO)") from None
        if "internet" in message:
            raise TwinTurboError(f"radio: {message.splitlines()[0]}; {_RADIO_OFFLINE_HINT}") from err
        raise
    except KeyError as err:  # hubconf's table of versions
        raise TwinTurboError(f"radio: unknown RADIO version {version!r} ({err}); e.g. {DEFAULT_RADIO_VERSION}") from err
    return model.eval()



BACKBONE = BackboneFamily(
    "radio", "radio (default: RADIOv2.5-B via torch.hub, radio:<version> for another; offline with --hub-dir and "
    "--radio-checkpoint)", lambda argument, options: Radio(argument or options.radio_version, options), order=10)
