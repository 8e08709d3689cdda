"""Training-only auxiliary heads: where they attach, what they capture, that the network stays plain nnU-Net."""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from autoseg.losses import build_loss
from autoseg.plans.architectures import SwinUNETRSeg
from autoseg.trainers.deep_supervision import DeepSupervisionLoss
from autoseg.trainers.heads import AuxiliaryHeads, head_requests, last_decoder_stage


def _unet(cls, dims: int, deep_supervision: bool = True) -> nn.Module:
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d
    kw = dict(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=conv, kernel_sizes=3,
              strides=[1, 2, 2], num_classes=3, n_conv_per_stage_decoder=1, conv_bias=True, norm_op=norm,
              norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, deep_supervision=deep_supervision)
    if cls is PlainConvUNet:
        kw["n_conv_per_stage"] = 1
    else:
        kw["n_blocks_per_stage"] = [1, 1, 1]
    torch.manual_seed(0)
    return cls(**kw)


NETWORKS = {
    "plain2d": lambda: (_unet(PlainConvUNet, 2), (2, 1, 16, 16), 4),
    "plain3d": lambda: (_unet(PlainConvUNet, 3), (2, 1, 8, 16, 8), 4),
    "resenc2d": lambda: (_unet(ResidualEncoderUNet, 2), (2, 1, 16, 16), 4),
    "swin2d": lambda: (SwinUNETRSeg(1, 3, [[1, 1]] + [[2, 2]] * 5, feature_size=12, deep_supervision=True),
                       (1, 1, 64, 64), 12),
}


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_heads_capture_the_full_resolution_decoder_features(kind):
    net, shape, channels = NETWORKS[kind]()
    stage, found = last_decoder_stage(net)
    assert found == channels
    keys_before = set(net.state_dict())
    heads = AuxiliaryHeads(len(shape) - 2, channels, {"a": 2, "b": 5}, keep_features=True)
    heads.attach(net)
    x = torch.randn(shape)
    net(x)
    assert heads.pop_outputs() == {}, "capture is off by default: inference computes no head"
    with heads.capturing():
        out = net(x)
    full = out[0] if isinstance(out, (list, tuple)) else out
    got = heads.pop_outputs()
    assert got["head_a"].shape == (shape[0], 2, *shape[2:])
    assert got["head_b"].shape == (shape[0], 5, *shape[2:])
    assert got["decoder_features"].shape == (shape[0], channels, *shape[2:])
    assert full.shape[2:] == got["head_a"].shape[2:]
    # The heads are not part of the network: its state_dict is the plain architecture's.
    assert set(net.state_dict()) == keys_before
    heads.detach()
    with heads.capturing():
        net(x)
    assert heads.pop_outputs() == {}


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="Sequential.*LAST_STAGE_FINDERS"):
        last_decoder_stage(nn.Sequential(nn.Conv2d(1, 2, 1)))


def test_head_requests_merge_compounds_and_reject_conflicts():
    assert head_requests(build_loss("dice_ce")) == ({}, False)
    assert head_requests(build_loss("inverseform+dice")) == ({"boundary": 1}, False)
    assert head_requests(build_loss("boundary_aware", num_bins=4)) == ({"distance_bins": 4}, False)
    assert head_requests(build_loss("conditional_boundary+boundary_aware")) == (
        {"embedding": 16, "distance_bins": 5}, False)
    a, b = build_loss("boundary_aware", num_bins=3), build_loss("boundary_aware", num_bins=4)
    with pytest.raises(ValueError, match="distance_bins.*3 and 4"):
        head_requests(nn.ModuleList([a, b]))


def test_a_declared_head_without_channels_is_an_error():
    class Bad(nn.Module):
        extra_inputs = ("head_edges",)

    with pytest.raises(ValueError, match="head_edges.*auxiliary_heads"):
        head_requests(Bad())

    class WantsFeatures(nn.Module):
        extra_inputs = ("decoder_features",)

    assert head_requests(WantsFeatures()) == ({}, True)


def test_heads_train_with_the_loss_and_the_network():
    net, shape, channels = NETWORKS["plain2d"]()
    loss_fn = build_loss("boundary_aware")
    heads = AuxiliaryHeads.for_loss(net, loss_fn, 2)
    loss = DeepSupervisionLoss(loss_fn, [0.7, 0.3])
    x = torch.randn(shape)
    target = torch.zeros(shape[0], 1, *shape[2:], dtype=torch.long)
    target[..., 4:12, 4:12] = 1
    targets = [target, target[..., ::2, ::2]]
    with heads.capturing():
        out = net(x)
    # what the trainer's compute_loss does: the heads join the full-resolution scale's extras
    value = loss(out, targets, [heads.pop_outputs(), {}])
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters() if p.requires_grad)
    assert net.decoder.stages[-1].convs[0].conv.weight.grad.abs().sum() > 0
    # The same loss without heads (standalone) is a different, reduced form: the head really enters.
    with torch.no_grad():
        with heads.capturing():
            out = net(x)
        with_head = loss(out, targets, [heads.pop_outputs(), {}])
        without = loss(out, targets)
    assert not torch.isclose(with_head, without)


def test_checkpoint_state_round_trip_and_mismatch():
    net, shape, channels = NETWORKS["plain2d"]()
    a = AuxiliaryHeads(2, channels, {"boundary": 1})
    b = AuxiliaryHeads(2, channels, {"boundary": 1})
    b.load_checkpoint_state(a.checkpoint_state())
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(ValueError, match="do not match"):
        AuxiliaryHeads(2, channels, {"boundary": 2}).load_checkpoint_state(a.checkpoint_state())


def test_head_kernels_per_loss_default_three_and_conflicts():
    from autoseg.trainers.heads import head_kernels

    net, shape, channels = NETWORKS["plain3d"]()
    dims = len(shape) - 2
    # conditional_boundary asks for a per-voxel projection head, the others keep the 3x3 (3^d) head
    loss = build_loss("conditional_boundary+boundary_aware")
    assert head_kernels(loss) == {"embedding": 1, "distance_bins": 3}
    heads = AuxiliaryHeads.for_loss(net, loss, dims)
    assert heads.heads["embedding"][0].kernel_size == (1,) * dims
    assert heads.heads["distance_bins"][0].kernel_size == (3,) * dims
    with heads.capturing():
        net(torch.randn(shape))
    assert heads.pop_outputs()["head_embedding"].shape == (shape[0], 16, *shape[2:])
    assert head_kernels(build_loss("conditional_boundary", head_kernel=3)) == {"embedding": 3}
    assert head_kernels(build_loss("inverseform")) == {"boundary": 3}
    assert head_kernels(build_loss("inverseform", head_kernel=1)) == {"boundary": 1}
    with pytest.raises(ValueError, match="head_kernel"):
        build_loss("conditional_boundary", head_kernel=2)
    a, b = build_loss("conditional_boundary"), build_loss("conditional_boundary", head_kernel=3)
    with pytest.raises(ValueError, match="embedding.*kernels 1 and 3"):
        head_kernels(nn.ModuleList([a, b]))
    # a checkpoint's heads must have the same first-convolution sizes (and old checkpoints meant 3)
    one = AuxiliaryHeads(dims, channels, {"embedding": 16}, kernels={"embedding": 1})
    state = one.checkpoint_state()
    with pytest.raises(ValueError, match="first-convolution sizes"):
        AuxiliaryHeads(dims, channels, {"embedding": 16}).load_checkpoint_state(state)
    old = AuxiliaryHeads(dims, channels, {"embedding": 16}).checkpoint_state()
    del old["kernels"]
    AuxiliaryHeads(dims, channels, {"embedding": 16}).load_checkpoint_state(old)
    with pytest.raises(ValueError, match="first-convolution sizes"):
        one.load_checkpoint_state(old)


def test_compound_components_get_only_their_own_head():
    # dice ignores heads, inverseform takes head_boundary, conditional_boundary head_embedding: each component
    # of the compound equals the same loss called alone with its own head.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 16, 16, generator=g)
    target = torch.randint(0, 3, (2, 1, 16, 16), generator=g)
    heads = {"head_boundary": torch.randn(2, 1, 16, 16, generator=g),
             "head_embedding": torch.randn(2, 32, 16, 16, generator=g)}
    compound = build_loss("dice+0.5*inverseform+conditional_boundary")
    expected = (build_loss("dice")(logits, target)
                + 0.5 * build_loss("inverseform")(logits, target, head_boundary=heads["head_boundary"])
                + build_loss("conditional_boundary")(logits, target, head_embedding=heads["head_embedding"]))
    torch.testing.assert_close(compound(logits, target, **heads), expected)
    loss = DeepSupervisionLoss(compound, [0.7, 0.3])
    low = (logits[..., ::2, ::2], target[..., ::2, ::2])
    # Under deep supervision inverseform's cross-entropy is taken at every scale, its boundary terms
    # (BCE + the InverseForm distance) at full resolution only, with the whole weight 0.7 + 0.3.
    ce = build_loss("ce")
    boundary_terms = build_loss("inverseform")(logits, target, head_boundary=heads["head_boundary"]) - ce(logits, target)
    at_low = build_loss("dice")(*low) + 0.5 * ce(*low) + build_loss("conditional_boundary")(*low)
    at_full = expected - 0.5 * boundary_terms
    torch.testing.assert_close(loss([logits, low[0]], [target, low[1]], [heads, {}]),
                               0.7 * at_full + 0.3 * at_low + 0.5 * boundary_terms)


def test_inverseform_under_deep_supervision_takes_its_boundary_terms_at_full_resolution_only():
    # The paper has one output and one boundary head: under deep supervision the cross-entropy is taken at
    # every scale with nnU-Net's weights, the boundary BCE and the InverseForm distance at scale 0 only,
    # carrying the whole weight, so their balance against CE is the one without deep supervision.
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 32, 32, generator=g)
    target = torch.randint(0, 3, (2, 1, 32, 32), generator=g)
    head = {"head_boundary": torch.randn(2, 1, 32, 32, generator=g)}
    scales = [(logits, target), (logits[..., ::2, ::2], target[..., ::2, ::2]),
              (logits[..., ::4, ::4], target[..., ::4, ::4])]
    weights = [4 / 7, 3 / 7, 0.0]
    loss = build_loss("inverseform")
    ce = build_loss("ce")
    boundary_terms = loss(logits, target, **head) - ce(logits, target)
    assert float(boundary_terms) > 0.05  # the terms are there to be placed
    value = DeepSupervisionLoss(loss, weights)([s[0] for s in scales], [s[1] for s in scales], [head, {}, {}])
    expected = weights[0] * ce(*scales[0]) + weights[1] * ce(*scales[1]) + boundary_terms
    torch.testing.assert_close(value, expected)
    # The old definition (the whole loss, reduced form, at the lower scale) is a different number.
    assert abs(float(value) - float(weights[0] * loss(*scales[0], **head) + weights[1] * loss(*scales[1]))) > 1e-3
