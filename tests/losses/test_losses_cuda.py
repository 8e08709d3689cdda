"""Every registered loss on a CUDA GPU: the same value and gradient as on the CPU, finite under nnU-Net's
float16 autocast, and the GPU distance maps of predictions (Hausdorff DT) equal to scipy's exact transform.

The CPU suite cannot reach these paths (``distance_to_boundary_torch`` uses the ``edt`` package on the
CPU and its brute-force separable transform on CUDA), so this file is skipped where torch sees no GPU and
is part of the GPU recipe (``benchmarks/gpu_check.py`` runs it first).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import ndimage
from test_losses_contract import value_and_grad

from autoseg.losses import build_loss, get_loss_info, list_losses
from autoseg.losses.maps import MAP_KINDS, compute_maps_torch, distance_to_boundary_torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

C = 3
IGNORE = 255
# a little larger than the CPU contract's shapes, so reductions split across GPU blocks
SHAPES = {2: (2, C, 40, 36), 3: (2, C, 16, 20, 18)}
LOSSES = list_losses()


def inputs(dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = SHAPES[dim]
    logits = 2 * torch.randn(shape, generator=g)
    # smooth regions (a blurred argmax), so boundary and distance terms see shapes, not noise
    noise = torch.nn.functional.avg_pool3d if dim == 3 else torch.nn.functional.avg_pool2d
    field = noise(torch.randn(shape, generator=g), 5, stride=1, padding=2)
    target = field.argmax(1)
    target[torch.rand(target.shape, generator=g) < 0.05] = IGNORE
    return logits, target


def build(name: str):
    return build_loss(name, context={"ignore_index": IGNORE, "batch": True})


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", LOSSES)
def test_cuda_equals_cpu(name, dim):
    logits, target = inputs(dim)
    loss = build(name)
    v_cpu, g_cpu = value_and_grad(loss, logits, target)
    v_gpu, g_gpu = value_and_grad(copy.deepcopy(loss).cuda(), logits.cuda(), target.cuda())
    assert torch.isfinite(v_gpu) and torch.isfinite(g_gpu).all()
    # float32 sums in another order: agreement to float32 rounding, not bit for bit
    torch.testing.assert_close(v_gpu.cpu(), v_cpu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in LOSSES if set(get_loss_info(n).extra_inputs) & set(MAP_KINDS)])
def test_cuda_maps_handed_in_equal_standalone(name):
    # inside nnU-Net the workers' maps reach the GPU with the batch; they must give the standalone value
    logits, target = inputs(3, seed=1)
    loss = build(name).cuda()
    kinds = [k for k in get_loss_info(name).extra_inputs if k in MAP_KINDS]
    maps = {k: v.cuda() for k, v in compute_maps_torch(target, C, kinds, ignore_index=IGNORE).items()}
    v_maps, g_maps = value_and_grad(loss, logits.cuda(), target.cuda(), **maps)
    v_alone, g_alone = value_and_grad(loss, logits.cuda(), target.cuda())
    torch.testing.assert_close(v_maps, v_alone, rtol=0, atol=0)
    torch.testing.assert_close(g_maps, g_alone, rtol=0, atol=0)


@pytest.mark.parametrize("name", LOSSES)
def test_cuda_float16_autocast_is_finite_and_float32(name):
    # nnU-Net trains on a GPU under float16 autocast with the loss inside it; logits arrive in float16
    logits, target = inputs(3, seed=2)
    loss = build(name).cuda()
    half = logits.cuda().half()
    expected = loss(half.float(), target.cuda())
    x = half.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.float16):
        value = loss(x, target.cuda())
    value.backward()
    assert value.dtype == torch.float32
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spacing", [None, (1.5, 0.5, 2.0)])
def test_gpu_distance_maps_equal_scipy(spacing):
    g = np.random.default_rng(0)
    fields = ndimage.gaussian_filter(g.normal(size=(4, 30, 26, 34)), sigma=(0, 3, 3, 3))
    masks = fields > 0
    masks[3] = False  # an empty mask: 0 everywhere, as on the CPU
    d = distance_to_boundary_torch(torch.from_numpy(masks).cuda(), spacing).cpu().numpy()
    sampling = spacing or (1, 1, 1)
    for m, dm in zip(masks, d):
        if not m.any():
            np.testing.assert_array_equal(dm, 0)
            continue
        expected = np.where(m, ndimage.distance_transform_edt(m, sampling=sampling),
                            ndimage.distance_transform_edt(~m, sampling=sampling))
        np.testing.assert_allclose(dm, expected, rtol=1e-5, atol=1e-5)
    cpu = distance_to_boundary_torch(torch.from_numpy(masks), spacing).numpy()
    np.testing.assert_allclose(d, cpu, rtol=1e-5, atol=1e-5)
