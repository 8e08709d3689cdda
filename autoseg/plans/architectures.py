"""Networks that nnU-Net builds by dotted name from a plans file: the transformer (MONAI SwinUNETR) and the CNN presets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

ARCHITECTURES = ("cnn", "cnn_resenc", "transformer")
PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
SWIN_UNETR = "autoseg.plans.architectures.SwinUNETRSeg"
#: SwinUNETR embeds 2-voxel patches and merges 4 times: every axis of a patch must divide by 2^5.
SWIN_DIVISOR = 32
SWIN_STAGES = 6  # full resolution + 5 halvings (embedding, 4 patch mergings)


class _DeepSupervisionHeads(nn.Module):
    """The ``decoder`` attribute nnU-Net's trainer toggles (``network.decoder.deep_supervision``).

    Holds one 1x1 convolution per decoder tap below full resolution, so the extra outputs are
    real predictions of the decoder at 1/2, 1/4, 1/8 and 1/16 resolution, as in nnU-Net's U-Net.
    """

    def __init__(self, conv: type[nn.Module], channels: Sequence[int], num_classes: int, deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        self.heads = nn.ModuleList(conv(c, num_classes, kernel_size=1) for c in channels)


class SwinUNETRSeg(nn.Module):
    """MONAI's SwinUNETR (Hatamizadeh et al. 2022, arXiv:2201.01266) as an nnU-Net network, 2D or 3D.

    nnU-Net calls ``SwinUNETRSeg(input_channels=..., num_classes=..., deep_supervision=..., **arch_kwargs)``
    from the plans' ``architecture`` block. ``strides`` only tells nnU-Net's data pipeline at which
    scales to down-sample the targets for deep supervision; it must be ``[1]*d`` followed by five
    ``[2]*d`` (the network's fixed halvings). With deep supervision on, ``forward`` returns
    ``[full, 1/2, 1/4, 1/8, 1/16]`` logits: the SwinUNETR output and 1x1-convolution heads on the
    four decoder stages below it; otherwise the full-resolution logits only.

    Every spatial size of the input must be divisible by 32 (:data:`SWIN_DIVISOR`).
    """

    def __init__(self, input_channels: int, num_classes: int, strides: Sequence[Sequence[int]],
                 feature_size: int = 24, depths: Sequence[int] = (2, 2, 2, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7,
                 deep_supervision: bool = False, **unused: Any):
        super().__init__()
        from monai.networks.nets import SwinUNETR

        dims = len(strides[0])
        expected = [[1] * dims] + [[2] * dims] * (SWIN_STAGES - 1)
        if [list(s) for s in strides] != expected:
            raise ValueError(f"SwinUNETRSeg needs strides {expected} (its fixed down-sampling), got {strides}")
        if dims not in (2, 3):
            raise ValueError(f"SwinUNETRSeg is 2D or 3D, got strides of {dims} axes")
        if feature_size % 12:
            raise ValueError(f"feature_size must be a multiple of 12 (SwinUNETR), got {feature_size}")
        self.spatial_dims = dims
        self.net = SwinUNETR(in_channels=input_channels, out_channels=num_classes, feature_size=feature_size,
                             depths=tuple(depths), num_heads=tuple(num_heads), window_size=window_size,
                             spatial_dims=dims, norm_name="instance")
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        f = feature_size
        self.decoder = _DeepSupervisionHeads(conv, [f, 2 * f, 4 * f, 8 * f], num_classes, deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        bad = [s for s in x.shape[2:] if s % SWIN_DIVISOR]
        if bad:
            raise ValueError(f"SwinUNETRSeg needs every spatial size divisible by {SWIN_DIVISOR}, got {tuple(x.shape[2:])}")
        n = self.net
        hidden = n.swinViT(x, n.normalize)
        enc0 = n.encoder1(x)
        enc1 = n.encoder2(hidden[0])
        enc2 = n.encoder3(hidden[1])
        enc3 = n.encoder4(hidden[2])
        dec4 = n.encoder10(hidden[4])
        dec3 = n.decoder5(dec4, hidden[3])  # 1/16
        dec2 = n.decoder4(dec3, enc3)  # 1/8
        dec1 = n.decoder3(dec2, enc2)  # 1/4
        dec0 = n.decoder2(dec1, enc1)  # 1/2
        logits = n.out(n.decoder1(dec0, enc0))
        if not self.decoder.deep_supervision:
            return logits
        heads = self.decoder.heads
        return [logits] + [h(t) for h, t in zip(heads, (dec0, dec1, dec2, dec3))]


def swin_architecture(dims: int, feature_size: int = 24, depths: Sequence[int] = (2, 2, 2, 2),
                      num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7) -> dict[str, Any]:
    """The plans' ``architecture`` block for :class:`SwinUNETRSeg`."""
    return {
        "network_class_name": SWIN_UNETR,
        "arch_kwargs": {
            "n_stages": SWIN_STAGES,
            "strides": [[1] * dims] + [[2] * dims] * (SWIN_STAGES - 1),
            "feature_size": int(feature_size), "depths": list(depths), "num_heads": list(num_heads),
            "window_size": int(window_size),
        },
        "_kw_requires_import": [],
    }


def resenc_architecture(plain: dict[str, Any]) -> dict[str, Any]:
    """nnU-Net's residual-encoder U-Net (the ResEnc presets' block counts) on a plain U-Net's stages."""
    kw = dict(plain["arch_kwargs"])
    n = kw["n_stages"]
    # nnU-Net's ResEnc presets: 1, 3, 4, 6, 6, ... residual blocks per encoder stage
    kw["n_blocks_per_stage"] = [[1, 3, 4][i] if i < 3 else 6 for i in range(n)]
    kw.pop("n_conv_per_stage", None)
    kw["n_conv_per_stage_decoder"] = [1] * (n - 1)
    return {"network_class_name": RESENC_UNET, "arch_kwargs": kw,
            "_kw_requires_import": list(plain["_kw_requires_import"])}


def architecture_of(arch_block: dict[str, Any]) -> str:
    """``cnn``, ``cnn_resenc`` or ``transformer`` for a plans ``architecture`` block."""
    name = arch_block["network_class_name"]
    if name == SWIN_UNETR:
        return "transformer"
    if name.endswith("ResidualEncoderUNet"):
        return "cnn_resenc"
    return "cnn"


def check_architecture(arch: str) -> str:
    if arch not in ARCHITECTURES:
        import difflib

        close = difflib.get_close_matches(arch, ARCHITECTURES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}{hint}")
    return arch
