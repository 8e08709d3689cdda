"""Training precision: nnU-Net's float16 AMP on CUDA; bfloat16 autocast on CPUs that compute bfloat16 natively.

On this project's 2-core AMD EPYC (AVX512-BF16), one forward and backward pass of the quick
Hippocampus network takes 0.25 s under bfloat16 autocast against 0.43 s in float32
(``benchmarks/quick_budget.py`` measures the whole run). A CPU without native bfloat16 would
emulate it and be slower, so the default (``auto``) takes float32 there.

What runs in bfloat16: the network's convolutions and matrix products (autocast's list); the weights,
the optimiser and the loss stay float32 (the network's outputs are cast back before the loss, as the
losses sum over hundreds of thousands of voxels). Inference (nnU-Net's sliding-window validation and
``nnUNetv2_predict``) stays float32.

``auto`` keeps SwinUNETR (``--arch transformer``) in float32 (see ``CPU_FP32_ARCHITECTURES``).
``AUTOSEG_CPU_PRECISION`` (``auto``, ``bf16``, ``fp32``; the CLI's ``--cpu-precision``) chooses; the
trainer, the planner's cost model and the run's record all read it through :func:`training_precision`,
so the estimate is measured in the precision the run trains in and the record says which it was.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

ENV = "AUTOSEG_CPU_PRECISION"
CHOICES = ("auto", "bf16", "fp32")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), where oneDNN's bf16 kernels pay."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name)()) for name in checks if hasattr(cpu, name))


def cpu_precision_choice() -> str:
    """The requested CPU precision (``AUTOSEG_CPU_PRECISION``), checked."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r} is not a CPU precision; choose one of: {', '.join(CHOICES)}")
    return value


#: architectures ``auto`` keeps in float32 on a CPU: a SwinUNETR test run under bfloat16 autocast gave NaN
#: logits within three steps (2026-11-30, not reproduced in isolation, not investigated further)
CPU_FP32_ARCHITECTURES = ("transformer",)


def training_precision(device_type: str, architecture: str = "cnn") -> str:
    """``"fp16-amp"`` (CUDA, nnU-Net's own), ``"bf16"`` or ``"fp32"``: what a training step of ``architecture``
    (autoseg's name: cnn, cnn_resenc, transformer) on ``device_type`` uses."""
    if device_type == "cuda":
        return "fp16-amp"
    if device_type != "cpu":
        return "fp32"  # nnU-Net trains other devices (mps) without autocast
    choice = cpu_precision_choice()
    if choice == "auto":
        return "bf16" if cpu_has_native_bf16() and architecture not in CPU_FP32_ARCHITECTURES else "fp32"
    return choice


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a training step's forward pass in ``precision``."""
    if precision == "fp16-amp":
        return torch.autocast("cuda", enabled=True)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_float32(x: Any) -> Any:
    """``x`` (a tensor, or lists, tuples and dicts of them) with its reduced-precision floats cast to float32."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() and x.dtype != torch.float32 and x.dtype != torch.float64 else x
    if isinstance(x, (list, tuple)):
        return type(x)(to_float32(v) for v in x)
    if isinstance(x, dict):
        return {k: to_float32(v) for k, v in x.items()}
    return x
