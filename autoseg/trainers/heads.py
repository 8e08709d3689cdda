"""Training-only auxiliary heads on the last decoder stage of an nnU-Net network, for losses that ask for them.

A loss declares what it needs from the network on the instance (its hyper-parameters can change it):

- ``auxiliary_heads: dict[str, int]``: head name -> output channels. The trainer attaches one small
  head per entry (3x3 convolution, instance norm, leaky ReLU, 1x1 convolution) on the features of the
  last (full-resolution) decoder stage and hands its raw output to the loss as ``head_<name>``.
- ``auxiliary_head_kernels: dict[str, int]`` (optional): head name -> size of the head's first
  convolution, 3 when not given. 1 makes the head a per-voxel projection (two 1x1 convolutions), which
  at full resolution costs a small fraction of a 3x3 one.
- ``extra_inputs`` (the loss base's declaration of keyword inputs) names ``head_<name>`` for each
  of them, and ``decoder_features`` when the loss wants the last decoder stage's features themselves.
  Only the map kinds of ``autoseg.losses.maps`` among ``extra_inputs`` are computed by the workers;
  these names come from the network. The trainer's ``compute_loss`` adds the captured outputs to the
  full-resolution scale's extras.

The heads are reached through a forward hook on that stage, are never registered as submodules of
the network, and only capture while the trainer computes a training or validation loss. So the
network's ``state_dict`` is that of a stock nnU-Net network (``nnUNetv2_predict`` and exported
checkpoints stay plain nnU-Net) and inference pays nothing. The trainer stores the heads' weights in
the checkpoint under :data:`CHECKPOINT_KEY` so that training resumes with them.

Where the last decoder stage is, per architecture (one table, :data:`LAST_STAGE_FINDERS`):
nnU-Net's ``PlainConvUNet`` and ``ResidualEncoderUNet`` (dynamic_network_architectures): the output of
``decoder.stages[-1]``, the input of the full-resolution segmentation layer; autoseg's
``SwinUNETRSeg``: the output of MONAI's ``decoder1``, the input of its ``out`` block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

CHECKPOINT_KEY = "autoseg_heads_state"
HEAD_PREFIX = "head_"
FEATURES_KEY = "decoder_features"


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain network under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    for _ in range(3):
        if hasattr(network, "_orig_mod"):
            network = network._orig_mod
        elif isinstance(network, nn.parallel.DistributedDataParallel):
            network = network.module
    return network


def _unet_last_stage(net: nn.Module) -> tuple[nn.Module, int] | None:
    decoder = getattr(net, "decoder", None)
    stages, seg_layers = getattr(decoder, "stages", None), getattr(decoder, "seg_layers", None)
    if stages is None or seg_layers is None or not len(stages):
        return None
    return stages[-1], int(seg_layers[-1].in_channels)


def _swin_last_stage(net: nn.Module) -> tuple[nn.Module, int] | None:
    from autoseg.plans.architectures import SwinUNETRSeg

    if not isinstance(net, SwinUNETRSeg):
        return None
    out_conv = net.net.out.conv
    conv = out_conv.conv if hasattr(out_conv, "conv") else out_conv
    return net.net.decoder1, int(conv.in_channels)


#: Tried in order; each returns ``(module whose output is the last decoder stage, its channels)`` or None.
LAST_STAGE_FINDERS: list[Callable[[nn.Module], tuple[nn.Module, int] | None]] = [_swin_last_stage, _unet_last_stage]


def last_decoder_stage(network: nn.Module) -> tuple[nn.Module, int]:
    """The module that outputs the last (full-resolution) decoder features, and their channel count."""
    net = unwrap_network(network)
    for finder in LAST_STAGE_FINDERS:
        found = finder(net)
        if found is not None:
            return found
    raise ValueError(
        f"cannot find the last decoder stage of a {type(net).__name__}: auxiliary heads support nnU-Net's "
        "PlainConvUNet/ResidualEncoderUNet (decoder.stages) and autoseg's SwinUNETRSeg; add a finder to "
        "autoseg.trainers.heads.LAST_STAGE_FINDERS for another architecture"
    )


def head_requests(loss: nn.Module) -> tuple[dict[str, int], bool]:
    """The heads (name -> channels) and whether decoder features are wanted, over a loss and its components."""
    heads: dict[str, int] = {}
    features = False
    for module in loss.modules():
        declared = set(getattr(module, "extra_inputs", ()) or ())
        own = getattr(module, "auxiliary_heads", None) or {}
        missing = {n[len(HEAD_PREFIX):] for n in declared if n.startswith(HEAD_PREFIX)} - set(own)
        if missing and not hasattr(module, "components"):
            raise ValueError(f"{type(module).__name__} declares {sorted(HEAD_PREFIX + m for m in missing)} in "
                             "extra_inputs but no such entry in auxiliary_heads (name -> channels)")
        features = features or FEATURES_KEY in declared
        for name, channels in own.items():
            channels = int(channels)
            if not name.isidentifier() or channels < 1:
                raise ValueError(f"{type(module).__name__} asks for head {name!r} with {channels} channels: "
                                 "names are identifiers, channels >= 1")
            if heads.get(name, channels) != channels:
                raise ValueError(f"two components ask for head {name!r} with {heads[name]} and {channels} channels")
            heads[name] = channels
    return heads, features


def head_kernels(loss: nn.Module) -> dict[str, int]:
    """The first-convolution size of every head a loss (or a component) asks for: 3 unless it says otherwise."""
    kernels: dict[str, int] = {}
    for module in loss.modules():
        own = getattr(module, "auxiliary_head_kernels", None) or {}
        for name in getattr(module, "auxiliary_heads", None) or {}:
            k = int(own.get(name, 3))
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{type(module).__name__} asks for head {name!r} with kernel {k}: odd sizes >= 1")
            if kernels.get(name, k) != k:
                raise ValueError(f"two components ask for head {name!r} with kernels {kernels[name]} and {k}")
            kernels[name] = k
    return kernels


def _head(conv: type[nn.Module], norm: type[nn.Module], in_channels: int, out_channels: int,
          kernel: int = 3) -> nn.Module:
    hidden = max(8, min(in_channels, 64))
    return nn.Sequential(
        conv(in_channels, hidden, kernel_size=kernel, padding=kernel // 2, bias=False),
        norm(hidden, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        conv(hidden, out_channels, kernel_size=1),
    )


class AuxiliaryHeads(nn.Module):
    """Small heads fed by a forward hook on the last decoder stage; outputs collected with :meth:`pop_outputs`.

    Capture is off by default; :meth:`capturing` turns it on around the forward passes whose outputs a
    loss consumes, so sliding-window inference through the same network object computes no head.
    """

    def __init__(self, spatial_dims: int, in_channels: int, heads: dict[str, int], keep_features: bool = False,
                 kernels: dict[str, int] | None = None):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        self.spatial_dims = spatial_dims
        self.in_channels = int(in_channels)
        self.spec = {k: int(v) for k, v in heads.items()}
        self.keep_features = bool(keep_features)
        self.kernels = {k: int((kernels or {}).get(k, 3)) for k in self.spec}
        self.heads = nn.ModuleDict({k: _head(conv, norm, self.in_channels, v, self.kernels[k])
                                    for k, v in self.spec.items()})
        self._handle: Any = None
        self._capture = False
        self._outputs: dict[str, torch.Tensor] = {}

    @classmethod
    def for_loss(cls, network: nn.Module, loss: nn.Module, spatial_dims: int) -> AuxiliaryHeads | None:
        """Heads for what ``loss`` asks, attached to ``network``; ``None`` when it asks for nothing."""
        heads, features = head_requests(loss)
        if not heads and not features:
            return None
        _, channels = last_decoder_stage(network)
        aux = cls(spatial_dims, channels, heads, keep_features=features, kernels=head_kernels(loss))
        aux.attach(network)
        return aux

    def attach(self, network: nn.Module) -> None:
        stage, channels = last_decoder_stage(network)
        if channels != self.in_channels:
            raise ValueError(f"the last decoder stage has {channels} channels, the heads were built for {self.in_channels}")
        self.detach()
        self._handle = stage.register_forward_hook(self._hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if not self._capture:
            return
        # The hook fires once per forward; a second forward before the loss consumed the first would
        # silently pair heads with the wrong logits, so the newest one wins and the old ones are dropped.
        self._outputs = {HEAD_PREFIX + k: h(output) for k, h in self.heads.items()}
        if self.keep_features:
            self._outputs[FEATURES_KEY] = output

    @contextmanager
    def capturing(self, enabled: bool = True) -> Iterator[None]:
        old, self._capture = self._capture, enabled
        try:
            yield
        finally:
            self._capture = old
            if not enabled:
                self._outputs = {}

    def set_capture(self, enabled: bool) -> None:
        self._capture = bool(enabled)
        if not enabled:
            self._outputs = {}

    def pop_outputs(self) -> dict[str, torch.Tensor]:
        out, self._outputs = self._outputs, {}
        return out

    def checkpoint_state(self) -> dict[str, Any]:
        return {"spec": dict(self.spec), "in_channels": self.in_channels, "spatial_dims": self.spatial_dims,
                "keep_features": self.keep_features, "kernels": dict(self.kernels), "state_dict": self.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        if state.get("spec") != self.spec or state.get("in_channels") != self.in_channels:
            raise ValueError(f"checkpoint heads {state.get('spec')} on {state.get('in_channels')} channels do not match "
                             f"this loss's heads {self.spec} on {self.in_channels} channels")
        # checkpoints written before kernels were recorded used 3 everywhere
        saved = state.get("kernels", {k: 3 for k in self.spec})
        if saved != self.kernels:
            raise ValueError(f"checkpoint heads have first-convolution sizes {saved}, this loss's heads {self.kernels}")
        self.load_state_dict(state["state_dict"])
