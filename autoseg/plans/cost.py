"""Cost model of one training iteration: operations counted on a meta-device network, priced by a micro-benchmark of this machine."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

CONV_OPS = {torch.ops.aten.convolution, torch.ops.aten.convolution_backward}
MATMUL_OPS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm}
SOFTMAX_OPS = {torch.ops.aten._softmax, torch.ops.aten._softmax_backward_data, torch.ops.aten._log_softmax,
               torch.ops.aten._log_softmax_backward_data}
#: channel widths the convolution benchmark is run at; other widths are interpolated in log2
BENCH_WIDTHS = (4, 8, 16, 32, 64, 128)
#: narrowest matrix dimension the matmul benchmark is run at (attention heads are 4 to 32 wide)
MATMUL_WIDTHS = (4, 8, 16, 32, 64, 256)
COST_MODEL_VERSION = 4  # 4: measured in the training precision (autoseg/precision.py)


@dataclass
class OpCounts:
    """What one forward and backward pass of a network does, by kind of work."""

    conv_flops: dict[str, dict[int, float]] = field(default_factory=lambda: {"2": {}, "3": {}})  # dims -> width -> flops
    matmul_flops: dict[int, float] = field(default_factory=dict)  # narrowest dimension -> flops
    softmax_elements: float = 0.0  # softmax is several passes (max, exp, sum, divide) over its input
    elements: float = 0.0  # elements written by every other operation (norms, activations, copies)
    forward_elements: float = 0.0  # elements written in the forward pass: the activations kept for backward
    operations: int = 0  # every aten call: each costs dispatcher and Python time however small
    parameters: int = 0


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts = OpCounts()
        self.forward = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.counts.operations += 1
        packet = func._overloadpacket
        if packet in CONV_OPS:
            weight = args[1] if packet is torch.ops.aten.convolution else args[2]
            dims = str(weight.dim() - 2)
            width = int(min(weight.shape[0], weight.shape[1]))
            flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
            table = self.counts.conv_flops[dims]
            table[width] = table.get(width, 0.0) + flops
        elif packet in MATMUL_OPS or packet in flop_registry:
            flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
            if packet in MATMUL_OPS:
                a, b = (args[1], args[2]) if packet in (torch.ops.aten.addmm, torch.ops.aten.baddbmm) else args[:2]
                width = int(min(a.shape[-2], a.shape[-1], b.shape[-1]))
            else:  # fused attention and the like
                width = 64
            self.counts.matmul_flops[width] = self.counts.matmul_flops.get(width, 0.0) + flops
        elif packet in SOFTMAX_OPS:
            self.counts.softmax_elements += sum(t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        elif not getattr(func, "is_view", False):  # a view writes nothing
            n = sum(t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
            self.counts.elements += n
            if self.forward:
                self.counts.forward_elements += n
        return out


def count_network(network: torch.nn.Module, input_shape: tuple[int, ...]) -> OpCounts:
    """Count one training step's work (forward, backward) of ``network`` on a batch of ``input_shape``.

    Runs on PyTorch's meta device: shapes only, no arithmetic, so it takes well under a second
    even for networks that would need minutes on this CPU.
    """
    net = network.to("meta")
    counter = _Counter()
    x = torch.empty(input_shape, device="meta")
    with counter:
        out = net(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        loss = sum(o.float().mean() for o in outs)
        counter.forward = False
        loss.backward()
    counter.counts.parameters = sum(p.numel() for p in net.parameters())
    return counter.counts


def _interp(rates: dict[str, float], width: int) -> float:
    """Rate at ``width``, interpolated in log2 between the benchmarked widths (the ends held)."""
    table = {int(k): v for k, v in rates.items()}
    ws = sorted(table)
    return float(np.interp(math.log2(max(width, 1)), [math.log2(w) for w in ws], [table[w] for w in ws]))


@dataclass
class MachineCosts:
    """Seconds per unit of work on one device, measured by :func:`benchmark_machine`."""

    device: str
    threads: int
    conv_s_per_flop: dict[str, dict[str, float]]  # dims -> width -> s/FLOP (forward + backward)
    matmul_s_per_flop: dict[str, float]  # narrowest dimension -> s/FLOP (forward + backward)
    s_per_softmax_element: float
    s_per_element: float
    s_per_operation: float
    data_s_per_voxel: dict[str, float]  # dims -> seconds of nnU-Net's augmentation per patch voxel
    fixed_s: float  # per iteration: optimizer bookkeeping, loader, Python
    seconds_spent: float
    machine: str
    torch_version: str
    version: int = COST_MODEL_VERSION
    precision: str = "fp32"  # the training precision the arithmetic was measured in

    def conv_rate(self, dims: str, width: int) -> float:
        return _interp(self.conv_s_per_flop[dims], width)

    def matmul_rate(self, width: int) -> float:
        return _interp(self.matmul_s_per_flop, width)


    def seconds(self, counts: OpCounts, data_voxels: int, dims: int, optimizer: bool = True) -> dict[str, float]:
        """Estimated seconds of one training iteration, by component."""
        conv = sum(flops * self.conv_rate(d, w) for d, table in counts.conv_flops.items() for w, flops in table.items())
        parts = {
            "convolutions": conv,
            "matmuls": sum(f * self.matmul_rate(w) for w, f in counts.matmul_flops.items()),
            "softmax": counts.softmax_elements * self.s_per_softmax_element,
            # SGD with Nesterov momentum touches each parameter about 6 times per step
            "elementwise": (counts.elements + (6 * counts.parameters if optimizer else 0)) * self.s_per_element,
            "augmentation": data_voxels * self.data_s_per_voxel[str(dims)],
            "per_operation": counts.operations * self.s_per_operation,
            "fixed": self.fixed_s,
        }
        parts["total"] = sum(parts.values())
        return parts


def _time(fn, repeats: int = 3, mean: bool = False) -> float:
    """Best of ``repeats`` (kernels), or with ``mean`` the average (random augmentations)."""
    fn()  # warm up (allocations, oneDNN kernel choice)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.mean(times)) if mean else min(times)


def _conv_rate(dims: int, width: int, device: torch.device) -> float:
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(width, width, 3, padding=1).to(device)
    # Speed depends on the tensor's size as much as on the width: measure each width at the size
    # it has in a U-Net, where each halving of the resolution doubles the width (a 3D stage of
    # width 16 sees about 2 x 40x56x40 voxels, of width 32 an eighth of that).
    if dims == 3:
        voxels = min(160_000, 160_000 * (16 / width) ** 3)
    else:
        voxels = min(256_000, 72_000 * (32 / width) ** 2)
    side = max(4, round((voxels / 2) ** (1 / dims)))
    x = torch.randn((2, width) + (side,) * dims, device=device, requires_grad=True)

    def step():
        conv.zero_grad(set_to_none=True)
        conv(x).sum().backward()
        _sync(device)

    seconds = _time(step)
    counts = count_network(_Wrap(torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d, width), tuple(x.shape))
    flops = sum(counts.conv_flops[str(dims)].values())
    return seconds / flops


class _Wrap(torch.nn.Module):
    def __init__(self, conv, width):
        super().__init__()
        self.conv = conv(width, width, 3, padding=1)

    def forward(self, x):
        return self.conv(x.requires_grad_())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _data_rate(dims: int) -> float:
    """Seconds per voxel of nnU-Net's own training augmentation (run in the training process on a CPU)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    patch = (32, 48, 32) if dims == 3 else (128, 128)
    ds_scales = [[1.0] * dims] + [[0.5 ** i] * dims for i in range(1, 4)]
    rotation = (-np.pi, np.pi) if dims == 2 else (-30 / 360 * 2 * np.pi, 30 / 360 * 2 * np.pi)
    transforms = nnUNetTrainer.get_training_transforms(patch, rotation, ds_scales, tuple(range(dims)), False,
                                                       use_mask_for_norm=[False], foreground_labels=[1, 2])
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(size=(1, *[int(p * 1.3) for p in patch])).astype(np.float32))
    seg = torch.from_numpy(rng.integers(0, 3, size=(1, *[int(p * 1.3) for p in patch])).astype(np.int16))

    def step():
        # nnU-Net's loader crops a patch first; the transforms then work on the patch
        sl = (slice(None),) + tuple(slice(0, p) for p in patch)
        transforms(**{"image": image[sl].clone(), "segmentation": seg[sl].clone()})

    return _time(step, repeats=8, mean=True) / float(np.prod(patch))


def benchmark_machine(device: str = "cpu", architecture: str = "cnn") -> MachineCosts:
    """Measure convolution, matmul, element-wise and augmentation speed of ``device`` (a few seconds), in the
    precision ``architecture`` trains in there."""
    from autoseg.precision import autocast, training_precision

    t0 = time.perf_counter()
    dev = torch.device(device)
    torch.manual_seed(0)
    precision = training_precision(dev.type, architecture)
    # the network's arithmetic is measured in the precision its training step runs in
    with autocast(precision):
        conv = {str(d): {str(w): _conv_rate(d, w, dev) for w in BENCH_WIDTHS} for d in (2, 3)}
        mm = {str(w): _matmul_rate(w, dev) for w in MATMUL_WIDTHS}
        # 7x7x7 windows of Swin attention; as large as in training (tens of millions of scores), past the caches
        att = torch.randn(96, 343, 343, device=dev, requires_grad=True)
        grad = torch.randn_like(att)
        sm_s = _time(lambda: (torch.softmax(att, -1).backward(grad), _sync(dev)))
        sm_elements = 2 * att.numel()  # forward and backward each write one tensor of that size
        norm = torch.nn.Sequential(torch.nn.InstanceNorm3d(16, affine=True), torch.nn.LeakyReLU(inplace=True)).to(dev)
        x = torch.randn(2, 16, 48, 64, 48, device=dev, requires_grad=True)  # activations of a U-Net's first stage
        ew_s = _time(lambda: (norm(x * 1.0).sum().backward(), _sync(dev)))
    ew_counts = count_network(_ElementwiseProbe(), tuple(x.shape))
    data = {str(d): _data_rate(d) for d in (2, 3)}
    op_probe = _OperationProbe()
    small = torch.randn(2, 8, device=dev)
    op_s = _time(lambda: (op_probe(small).sum().backward(), _sync(dev)), repeats=5)
    op_counts = count_network(_OperationProbe(), tuple(small.shape))
    return MachineCosts(
        device=device, threads=torch.get_num_threads(), conv_s_per_flop=conv, matmul_s_per_flop=mm,
        s_per_softmax_element=sm_s / sm_elements,
        s_per_element=ew_s / max(ew_counts.elements, 1.0), s_per_operation=op_s / op_counts.operations,
        data_s_per_voxel=data,
        fixed_s=0.01 if device == "cpu" else 0.005, seconds_spent=round(time.perf_counter() - t0, 2),
        machine=platform.node(), torch_version=torch.__version__, precision=precision,
    )


def _matmul_rate(width: int, device: torch.device) -> float:
    """s/FLOP of batched (343 x w) @ (w x 343) products, forward and backward: window attention's shape."""
    n = max(1, int(0.1e9 / (2 * 343 * 343 * width)))
    a = torch.randn(n, 343, width, device=device, requires_grad=True)
    b = torch.randn(n, width, 343, device=device, requires_grad=True)
    seconds = _time(lambda: (torch.bmm(a, b).sum().backward(), _sync(device)))
    return seconds / (3 * 2 * n * 343 * 343 * width)


class _OperationProbe(torch.nn.Module):
    """Hundreds of operations on a few numbers: what each call costs beyond its arithmetic."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(8))

    def forward(self, x):
        for _ in range(100):
            x = torch.nn.functional.gelu(x * self.w + 1.0).transpose(0, 1).contiguous().transpose(0, 1)
        return x


class _ElementwiseProbe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.InstanceNorm3d(16, affine=True), torch.nn.LeakyReLU(inplace=True))

    def forward(self, x):
        return self.body(x.requires_grad_() * 1.0)


def machine_costs(device: str = "cpu", cache_dir: str | os.PathLike | None = None, refresh: bool = False,
                  log=None, architecture: str = "cnn") -> MachineCosts:
    """The micro-benchmark of this machine, cached in ``cache_dir`` per host, device, threads and torch."""
    from autoseg.precision import training_precision

    threads = torch.get_num_threads()
    precision = training_precision(torch.device(device).type, architecture)
    key = f"autoseg_machine_{platform.node()}_{device}_{threads}t_{precision}_v{COST_MODEL_VERSION}.json"
    path = Path(cache_dir) / key if cache_dir is not None else None
    if path is not None and path.is_file() and not refresh:
        data = json.loads(path.read_text())
        if data.get("torch_version") == torch.__version__:
            return MachineCosts(**data)
    if log:
        log(f"measuring this machine ({device}, {threads} threads): convolution, matmul and augmentation speed")
    costs = benchmark_machine(device, architecture)
    if path is not None:
        from autoseg.io import atomic_write_json

        atomic_write_json(path, asdict(costs))
    return costs


def time_training_step(network: torch.nn.Module, batch_size: int, patch_size: Sequence[int], in_channels: int,
                       num_classes: int, device: str = "cpu", precision: str = "fp32", steps: int = 3) -> float:
    """Seconds of one real training step of ``network`` on random data: forward in ``precision``, cross-entropy at
    every output (nnU-Net's deep supervision: one per scale), backward, SGD with Nesterov momentum.

    The mean of ``steps`` after one warm-up step (the first allocates and picks kernels). What the cost model cannot
    price from operation counts (SwinUNETR's window attention: broadcast additions of masks and position
    biases, strided copies) is in the clock. The network's own weights are changed; build a fresh one to train.
    """
    from autoseg.precision import autocast

    dev = torch.device(device)
    net = network.to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, in_channels, *patch_size, generator=g).to(dev)
    targets: dict[tuple[int, ...], torch.Tensor] = {}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(precision):
            out = net(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        loss = 0.0
        for o in outs:
            shape = (o.shape[0], *o.shape[2:])
            if shape not in targets:
                targets[shape] = torch.randint(0, o.shape[1], shape, generator=g).to(dev)
            loss = loss + torch.nn.functional.cross_entropy(o.float(), targets[shape])
        loss.backward()
        opt.step()
        _sync(dev)

    return _time(step, repeats=steps, mean=True)


def estimate(costs: MachineCosts, network: torch.nn.Module, batch_size: int, patch_size: list[int],
             in_channels: int = 1) -> dict[str, Any]:
    """Estimated seconds per training iteration and memory of ``network`` at ``batch_size`` x ``patch_size``."""
    counts = count_network(network, (batch_size, in_channels, *patch_size))
    dims = len(patch_size)
    voxels = int(batch_size * np.prod(patch_size))
    parts = costs.seconds(counts, voxels * in_channels, dims)
    # float32: saved activations (about the forward outputs) plus weights, gradients, momentum
    memory = 4 * (counts.forward_elements + 3 * counts.parameters)
    return {"seconds_per_iteration": parts["total"], "seconds_by_part": parts, "memory_bytes": memory,
            "parameters": counts.parameters, "conv_gflops": sum(sum(t.values()) for t in counts.conv_flops.values()) / 1e9,
            "matmul_gflops": sum(counts.matmul_flops.values()) / 1e9}
