"""Known answers for the map-based losses: shifted disks and spheres, hand values, the ramp, maps handed in."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autoseg.losses import build_loss
from autoseg.losses.boundary.boundary import boundary_term
from autoseg.losses.boundary.hausdorff_dt import hausdorff_dt_loss
from autoseg.losses.boundary.skeleton_recall import skeleton_recall_term
from autoseg.losses.maps import compute_maps_torch
from autoseg.losses.region.dice import dice_loss

MAP_LOSSES = ["boundary", "dmce", "hausdorff_dt", "region_wise", "skeleton_recall"]


def ball(shape, centre, radius):
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius ** 2


def confident(label, num_classes=2, scale=30.0):
    return scale * torch.nn.functional.one_hot(label, num_classes).movedim(-1, 1).float()


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", ["boundary_term", "boundary", "hausdorff_dt", "region_wise"])
def test_shifted_object_loss_rises_with_the_shift(name, dim):
    shape = (40, 40) if dim == 2 else (24, 24, 24)
    radius = 9 if dim == 2 else 6
    centre = [s // 2 for s in shape]
    target = torch.from_numpy(ball(shape, centre, radius)).long()[None]
    if name == "boundary_term":
        def loss(x, t):
            return boundary_term(x, t)
    else:
        loss = build_loss(name, **({"alpha_start": 1.0} if name == "boundary" else {}))
    values = []
    for k in range(5):
        moved = [centre[0] + k] + centre[1:]
        pred = torch.from_numpy(ball(shape, moved, radius)).long()[None]
        values.append(float(loss(confident(pred), target)))
    assert all(a < b for a, b in zip(values, values[1:])), values
    # the perfect prediction is the minimum over anything else, e.g. random logits
    rnd = torch.randn(1, 2, *shape, generator=torch.Generator().manual_seed(0))
    assert values[0] < float(loss(rnd, target))


def test_boundary_term_hand_value_with_anisotropic_spacing():
    target = torch.tensor([[[0, 0, 0, 1]]])  # class 1 signed distances along the row: 3, 2, 1, -1
    logits = torch.zeros(1, 2, 1, 4)  # p = 1/2
    assert float(boundary_term(logits, target)) == pytest.approx(0.5 * (3 + 2 + 1 - 1) / 4)
    # spacing 2 along the row doubles every distance
    assert float(boundary_term(logits, target, spacing=(1.0, 2.0))) == pytest.approx(0.5 * (6 + 4 + 2 - 2) / 4)
    # with the background included the class-0 map (-3, -2, -1, 1) joins the mean over classes
    both = boundary_term(logits, target, include_background=True)
    assert float(both) == pytest.approx(0.5 * ((3 + 2 + 1 - 1) + (-3 - 2 - 1 + 1)) / 8)


def test_hausdorff_dt_hand_value():
    target = torch.tensor([[[0, 0, 0, 1]]])
    logits = torch.zeros(1, 2, 1, 4)  # p = 1/2; arg-max ties go to class 0: the predicted class 1 is empty
    # d_t of class 1 = (3, 2, 1, 1), d_p = 0, (p - t)^2 = 1/4: mean of (9 + 4 + 1 + 1) / 4
    assert float(hausdorff_dt_loss(logits, target)) == pytest.approx(0.25 * 15 / 4)
    assert float(hausdorff_dt_loss(logits, target, alpha=1.0)) == pytest.approx(0.25 * 7 / 4)
    # a prediction of class 1 at voxel 2 instead of 3: d_p = (2, 1, 1, 1) adds its squares
    logits = torch.tensor([[[[1.0, 1.0, -1.0, 1.0]], [[-1.0, -1.0, 1.0, -1.0]]]])
    p1 = torch.sigmoid(torch.tensor([-2.0, -2.0, 2.0, -2.0]))
    t1 = torch.tensor([0.0, 0.0, 0.0, 1.0])
    d = torch.tensor([9.0, 4.0, 1.0, 1.0]) + torch.tensor([4.0, 1.0, 1.0, 1.0])
    assert float(hausdorff_dt_loss(logits, target)) == pytest.approx(float(((p1 - t1) ** 2 * d).mean()), rel=1e-6)


def test_skeleton_recall_term_hand_value():
    target = torch.zeros(1, 7, 7, dtype=torch.long)
    target[0, 3, 1:6] = 1  # a 5-voxel line is its own skeleton and tube
    logits = torch.zeros(1, 2, 7, 7)
    logits[0, 1, 3, 1:3] = 30.0  # two of the five skeleton voxels recalled (p = 1), three at p ~ 0.5
    p_half = 0.5
    expected = 1 - (2 * 1.0 + 3 * p_half + 1.0) / (5 + 1.0)
    assert float(skeleton_recall_term(logits, target)) == pytest.approx(expected, rel=1e-6)


def test_boundary_ramp_follows_the_epoch_hook():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 12, 12, generator=g)
    target = torch.randint(0, 3, (2, 12, 12), generator=g)
    loss = build_loss("boundary")
    assert loss.alpha == pytest.approx(0.01)
    loss.on_epoch_start(49, 100)
    assert loss.alpha == pytest.approx(0.5)
    expected = dice_loss(logits, target) + 0.5 * boundary_term(logits, target)
    torch.testing.assert_close(loss(logits, target), expected)
    capped = build_loss("boundary", alpha_max=0.2)
    capped.on_epoch_start(49, 100)
    assert capped.alpha == pytest.approx(0.2)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", MAP_LOSSES)
def test_maps_handed_in_are_used(name, dim):
    g = torch.Generator().manual_seed(2)
    shape = (2, 3, 12, 14) if dim == 2 else (2, 3, 6, 7, 8)
    logits = torch.randn(shape, generator=g)
    target = torch.randint(0, 3, (shape[0], *shape[2:]), generator=g)
    loss = build_loss(name)
    (kind,) = loss.extra_inputs
    maps = compute_maps_torch(target, 3, (kind,))
    torch.testing.assert_close(loss(logits, target, **maps), loss(logits, target), rtol=0, atol=0)
    other = {kind: maps[kind].flip(-1)}  # a different map must change the value: it is not recomputed
    assert not math.isclose(float(loss(logits, target, **other)), float(loss(logits, target)), rel_tol=1e-6)


def test_a_wrong_map_is_rejected_with_its_name():
    logits = torch.randn(1, 2, 6, 6)
    target = torch.randint(0, 2, (1, 6, 6))
    with pytest.raises(ValueError, match="signed_distance"):
        build_loss("boundary")(logits, target, signed_distance=torch.zeros(1, 3, 6, 6))
    with pytest.raises(TypeError, match="got extra inputs"):
        build_loss("boundary")(logits, target, distance=torch.zeros(1, 2, 6, 6))
