"""Networks built by nnU-Net from a plans' architecture block: SwinUNETR (2D/3D, deep supervision) and ResEnc."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from autoseg.plans.architectures import (
    SwinUNETRSeg,
    architecture_of,
    check_architecture,
    resenc_architecture,
    swin_architecture,
)


def _build(block, deep_supervision, in_channels=1, classes=3):
    return get_network_from_plans(block["network_class_name"], block["arch_kwargs"], block["_kw_requires_import"],
                                  in_channels, classes, allow_init=True, deep_supervision=deep_supervision)


@pytest.mark.parametrize("shape", [(2, 1, 64, 32), (1, 2, 32, 64, 32)])
def test_swin_outputs_match_nnunet_deep_supervision_scales(shape):
    dims = len(shape) - 2
    block = swin_architecture(dims, feature_size=12)
    net = _build(block, deep_supervision=True, in_channels=shape[1])
    assert isinstance(net, SwinUNETRSeg)
    torch.manual_seed(0)
    out = net(torch.randn(shape))
    # nnU-Net down-samples the targets to these scales (nnUNetTrainer._get_deep_supervision_scales)
    scales = (1 / np.cumprod(np.vstack(block["arch_kwargs"]["strides"]), axis=0))[:-1]
    assert len(out) == len(scales) == 5
    for o, s in zip(out, scales):
        assert o.shape[:2] == (shape[0], 3)
        assert list(o.shape[2:]) == [int(round(n * f)) for n, f in zip(shape[2:], s)]
    # what nnUNetTrainer.set_deep_supervision_enabled(False) does: one full-resolution tensor
    net.decoder.deep_supervision = False
    single = net(torch.randn(shape))
    assert isinstance(single, torch.Tensor) and single.shape == (shape[0], 3, *shape[2:])


def test_swin_rejects_patch_not_divisible_by_32():
    net = _build(swin_architecture(2, feature_size=12), deep_supervision=False)
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.randn(1, 1, 64, 40))


@pytest.mark.parametrize("kwargs, match", [
    ({"feature_size": 16}, "multiple of 12"),
    ({"strides": [[1, 1], [2, 2], [2, 2]]}, "needs strides"),
])
def test_swin_bad_arguments(kwargs, match):
    kw = {**swin_architecture(2)["arch_kwargs"], **kwargs}
    with pytest.raises(ValueError, match=match):
        SwinUNETRSeg(input_channels=1, num_classes=2, **kw)


def test_resenc_block_builds_nnunet_residual_encoder():
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    plain = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
             "arch_kwargs": {"n_stages": 4, "features_per_stage": [8, 16, 32, 64],
                             "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3]] * 4,
                             "strides": [[1, 1]] + [[2, 2]] * 3, "n_conv_per_stage": [2] * 4,
                             "n_conv_per_stage_decoder": [2] * 3, "conv_bias": True,
                             "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                             "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                             "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                             "nonlin_kwargs": {"inplace": True}},
             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    block = resenc_architecture(plain)
    assert block["arch_kwargs"]["n_blocks_per_stage"] == [1, 3, 4, 6]
    assert architecture_of(block) == "cnn_resenc" and architecture_of(plain) == "cnn"
    net = _build(block, deep_supervision=True)
    assert isinstance(net, ResidualEncoderUNet)
    out = net(torch.randn(2, 1, 32, 32))
    assert [tuple(o.shape[2:]) for o in out] == [(32, 32), (16, 16), (8, 8)]


def test_unknown_architecture_suggests():
    with pytest.raises(ValueError, match="did you mean 'transformer'"):
        check_architecture("transfomer")
    assert architecture_of(swin_architecture(3)) == "transformer"
