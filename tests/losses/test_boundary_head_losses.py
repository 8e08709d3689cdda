"""boundary_aware, inverseform and conditional_boundary: hand-computed values, scipy/scikit-image references, heads handed in."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.segmentation import find_boundaries

from autoseg.losses import build_loss
from autoseg.losses.boundary._morphology import bins_from_survival, label_boundary, survival
from autoseg.losses.boundary.boundary_aware import boundary_aware_loss
from autoseg.losses.boundary.conditional_boundary import conditional_boundary_loss
from autoseg.losses.boundary.inverseform import InverseFormLoss, boundary_tiles, inverseform_distance, inverseform_loss

HEADS = {"boundary_aware": ("head_distance_bins", 5), "inverseform": ("head_boundary", 1),
         "conditional_boundary": ("head_embedding", 32)}


def _labels(dim: int, seed: int = 0, classes: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (2, 24, 20) if dim == 2 else (2, 12, 10, 9)
    small = torch.randint(0, classes, (shape[0], *[max(1, s // 4) for s in shape[1:]]), generator=g)
    return F.interpolate(small[:, None].float(), size=shape[1:], mode="nearest")[:, 0].long()


def _onehot(t: torch.Tensor, c: int) -> torch.Tensor:
    return F.one_hot(t, c).movedim(-1, 1).float()


@pytest.mark.parametrize("dim", [2, 3])
def test_label_boundary_equals_scikit_image_thick_boundaries(dim):
    t = _labels(dim)
    ours = label_boundary(_onehot(t, 3), None).bool().numpy()
    for b in range(t.shape[0]):
        ref = find_boundaries(t[b].numpy(), connectivity=dim, mode="thick")
        np.testing.assert_array_equal(ours[b], ref)


@pytest.mark.parametrize("dim", [2, 3])
def test_distance_bins_equal_scipy_chessboard_distance(dim):
    t = _labels(dim, seed=1)
    k = 4
    onehot = _onehot(t, 3)
    bins = bins_from_survival(survival(onehot, None, k - 1), torch.ones_like(t, dtype=torch.float))
    assert torch.equal(bins.sum(1), torch.ones_like(bins[:, 0]))
    ours = bins.argmax(1).numpy()
    for b in range(t.shape[0]):
        lab = t[b].numpy()
        # distance of each voxel to the nearest voxel of another label (chessboard); the outside of the
        # patch is no other label, as for the erosions (pad with each voxel's own class)
        dist = np.zeros(lab.shape)
        for c in range(3):
            d = ndimage.distance_transform_cdt(np.pad(lab == c, 1, mode="edge"), metric="chessboard")
            dist[lab == c] = d[tuple(slice(1, -1) for _ in range(dim))][lab == c]
        np.testing.assert_array_equal(ours[b], np.minimum(dist, k) - 1)


def test_boundary_aware_hand_computed_with_a_zero_head():
    # Logits 0: CE = log C. Head scores 0: every one of the K binary maps scores BCE = log 2.
    t = _labels(2)
    logits = torch.zeros(2, 3, *t.shape[1:])
    head = torch.zeros(2, 5, *t.shape[1:])
    value = boundary_aware_loss(logits, t, head, num_bins=5, weight=0.7)
    assert float(value) == pytest.approx(math.log(3) + 0.7 * math.log(2), rel=1e-6)


@pytest.mark.parametrize("dim", [2, 3])
def test_boundary_aware_head_perfect_is_minimum_and_gets_gradient(dim):
    t = _labels(dim, seed=2)
    logits = 20 * _onehot(t, 3)
    gt = bins_from_survival(survival(_onehot(t, 3), None, 4), torch.ones_like(t, dtype=torch.float))
    perfect = boundary_aware_loss(logits, t, 20 * (2 * gt - 1))
    shifted = boundary_aware_loss(logits, t, 20 * (2 * gt.roll(1, 1) - 1))
    assert float(perfect) < 1e-6 < float(shifted)
    head = torch.zeros_like(gt, requires_grad=True)
    boundary_aware_loss(logits, t, head).backward()
    assert head.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("dim", [2, 3])
def test_heads_handed_in_ignore_and_finite(name, dim):
    key, channels = HEADS[name]
    t = _labels(dim, seed=3)
    t[:, :2] = 255
    logits = torch.randn(2, 3, *t.shape[1:], requires_grad=True)
    head = torch.randn(2, channels, *t.shape[1:], requires_grad=True)
    loss = build_loss(name, ignore_index=255)
    value = loss(logits, t, **{key: head})
    value.backward()
    assert torch.isfinite(value)
    assert head.grad.abs().sum() > 0
    ignored = (t == 255).unsqueeze(1)
    assert not head.grad.masked_select(ignored.expand_as(head.grad)).any(), "ignored voxels got a head gradient"
    assert not logits.grad.masked_select(ignored.expand_as(logits.grad)).any()
    with pytest.raises(ValueError, match="must have shape"):
        loss(logits, t, **{key: head[:, :, 1:]})
    with pytest.raises(TypeError, match="unexpected extras"):
        loss(logits, t, other=head)


def test_inverseform_reduced_form_boundary_is_exact_for_one_hot():
    t = _labels(2, seed=4)
    gt = label_boundary(_onehot(t, 3), None)
    probs = torch.softmax(40 * _onehot(t, 3), 1)
    soft = 1 - survival(probs, None, 1)[0]
    torch.testing.assert_close(soft, gt, atol=1e-6, rtol=0)


def test_boundary_tiles_cover_every_voxel_once():
    x = torch.arange(2 * 40 * 33, dtype=torch.float).reshape(2, 40, 33) + 1
    tiles = boundary_tiles(x)
    assert tiles.shape == (2, 4, 32, 32)  # 40x33 padded to 64x64
    assert float(tiles.sum()) == float(x.sum())
    v = torch.rand(2, 5, 6, 7)
    t3 = boundary_tiles(v)
    assert t3.shape == (2, 7, 32, 32)  # one tile per slice along the last axis
    torch.testing.assert_close(t3[1, 3, :5, :6], v[1, :, :, 3])


def _disk(shift: int, size: int = 64, r: int = 14) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - 32) ** 2 + (xx - 32 - shift) ** 2) <= r * r).long()


def test_inverseform_distance_rises_with_the_shift_of_a_disk():
    gt = label_boundary(_onehot(_disk(0)[None], 2), None)
    d = [float(inverseform_distance(label_boundary(_onehot(_disk(k)[None], 2), None), gt)) for k in (0, 1, 2, 4)]
    assert d == sorted(d) and d[0] < 0.5 * d[-1], d


def test_inverseform_full_loss_ranks_shifted_predictions():
    t = _disk(0)[None]
    values = [float(inverseform_loss(20 * (2 * _onehot(_disk(k)[None], 2) - 1), t)) for k in (0, 2, 5)]
    assert values == sorted(values), values


def test_conditional_boundary_hand_computed():
    # 1x4 image [0, 0, 1, 1], all correctly classified. Anchors: voxels 1 and 2 (the boundary).
    # Voxel 1 (class 0): positive {0}, negative {2}; voxel 2 (class 1): positive {3}, negative {1}.
    a, tau = 0.6, 0.5
    t = torch.tensor([[[0, 0, 1, 1]]])
    logits = torch.tensor([[[[5.0, 5.0, -5.0, -5.0]], [[-5.0, -5.0, 5.0, 5.0]]]])
    z = torch.tensor([[1.0, math.cos(a), 0.0, 0.0], [0.0, math.sin(a), 1.0, 1.0]]).reshape(1, 2, 1, 4)
    value = conditional_boundary_loss(logits, t, z, weight_a2c=0.3, weight_a2pn=0.7, temperature=tau)
    ce = F.cross_entropy(logits, t)
    a2c = ((2 - 2 * math.cos(a)) + 0) / 2
    a2pn = (math.log1p(math.exp((math.sin(a) - math.cos(a)) / tau)) + math.log1p(math.exp((math.sin(a) - 1) / tau))) / 2
    assert float(value) == pytest.approx(float(ce) + 0.3 * a2c + 0.7 * a2pn, rel=1e-5)


def test_conditional_boundary_ignores_wrongly_classified_neighbours():
    # Voxel 0 misclassified: anchor 1 loses its only positive; anchor 2 keeps {3} and its negative {1}.
    a, tau = 0.6, 0.5
    t = torch.tensor([[[0, 0, 1, 1]]])
    logits = torch.tensor([[[[-5.0, 5.0, -5.0, -5.0]], [[5.0, -5.0, 5.0, 5.0]]]])
    z = torch.tensor([[1.0, math.cos(a), 0.0, 0.0], [0.0, math.sin(a), 1.0, 1.0]]).reshape(1, 2, 1, 4)
    value = conditional_boundary_loss(logits, t, z, temperature=tau)
    ce = F.cross_entropy(logits, t)
    a2pn = math.log1p(math.exp((math.sin(a) - 1) / tau))
    assert float(value) == pytest.approx(float(ce) + 0.0 + a2pn, rel=1e-5)


def test_conditional_boundary_bounded_sampling():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 3, (1, 24, 24, 24), generator=g)  # nearly every voxel is a boundary voxel
    z = torch.randn(1, 8, 24, 24, 24, generator=g)
    logits = 10 * _onehot(t, 3)
    small = conditional_boundary_loss(logits, t, z, max_samples=64)
    again = conditional_boundary_loss(logits, t, z, max_samples=64)
    other_seed = conditional_boundary_loss(logits, t, z, max_samples=64, seed=1)
    assert torch.equal(small, again) and not torch.equal(small, other_seed)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_standalone_form_is_documented_reduced_form(name):
    # build_loss(name)(logits, target) works with nothing else, and differs from the head form
    t = _labels(2, seed=5)
    logits = torch.randn(2, 3, *t.shape[1:])
    key, channels = HEADS[name]
    loss = build_loss(name)
    assert torch.isfinite(loss(logits, t))
    assert not torch.isclose(loss(logits, t), loss(logits, t, **{key: torch.randn(2, channels, *t.shape[1:])}))


def _head_for(name: str, t: torch.Tensor, sign: float) -> torch.Tensor:
    """A confident head output that is right (sign = +1) or exactly wrong (sign = -1) for target t."""
    onehot = _onehot(t, 3)
    if name == "boundary_aware":
        gt = bins_from_survival(survival(onehot, None, 4), torch.ones_like(t, dtype=torch.float))
        return sign * 20 * (2 * gt - 1)
    if name == "inverseform":
        return sign * 20 * (2 * label_boundary(onehot, None).unsqueeze(1) - 1)
    return onehot if sign > 0 else _onehot((t + 1) % 3, 3)


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("dim", [2, 3])
def test_with_heads_perfect_below_random_below_inverted(name, dim):
    t = _labels(dim, seed=6)
    key, channels = HEADS[name]
    g = torch.Generator().manual_seed(0)
    loss = build_loss(name)
    perfect = loss(20 * _onehot(t, 3), t, **{key: _head_for(name, t, 1)})
    random = loss(torch.randn(2, 3, *t.shape[1:], generator=g), t,
                  **{key: torch.randn(2, channels if name != "conditional_boundary" else 3, *t.shape[1:], generator=g)})
    inverted = loss(20 * _onehot((t + 1) % 3, 3), t, **{key: _head_for(name, t, -1)})
    assert perfect < random < inverted, (float(perfect), float(random), float(inverted))
    assert float(perfect) < 1e-3


def test_inverseform_network_in_bfloat16_stays_close_to_float32_and_ranks_alike():
    # The trainer runs the frozen network in bfloat16 when it trains in bfloat16: the term must keep its
    # meaning (same ranking of shifted predictions, within a few per cent) and its gradient.
    t = _disk(0)[None]
    for k in (1, 3):
        logits = (20 * (2 * _onehot(_disk(k)[None], 2) - 1)).requires_grad_(True)
        full = float(InverseFormLoss()(logits, t))
        half = InverseFormLoss(network_dtype="bfloat16")(logits, t)
        assert half.dtype == torch.float32
        assert float(half) == pytest.approx(full, rel=0.03)
        half.backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    values = [float(InverseFormLoss(network_dtype="bfloat16")(20 * (2 * _onehot(_disk(k)[None], 2) - 1), t))
              for k in (0, 2, 5)]
    assert values == sorted(values), values


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("with_head", [True, False])
def test_conditional_boundary_each_case_as_if_alone(dim, with_head):
    # The batch's anchors are handled together; each case's value (and the fixed-seed subset of a case
    # with more boundary voxels than max_samples) must be what that case gives on its own.
    shape = (20, 24) if dim == 2 else (8, 10, 12)
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 3, (4, *shape), generator=g)  # case 3: far more boundary voxels than max_samples
    t[0] = 0  # no boundary at all
    t[1] = (torch.arange(shape[-1]) >= shape[-1] // 2).long().expand(shape)  # one straight boundary
    t[2, ..., : shape[-1] // 3] = 1
    logits = torch.randn(4, 3, *shape, generator=g)
    z = torch.randn(4, 5, *shape, generator=g) if with_head else None
    batch = conditional_boundary_loss(logits, t, z, max_samples=40, reduction="none")
    alone = torch.cat([conditional_boundary_loss(logits[b:b + 1], t[b:b + 1], None if z is None else z[b:b + 1],
                                                 max_samples=40, reduction="none") for b in range(4)])
    assert batch.shape == (4,)
    assert torch.allclose(batch, alone, rtol=1e-5), (batch, alone)
    # the subset matters: case 3 with every boundary voxel differs from case 3 with 40 of them
    full = conditional_boundary_loss(logits[3:], t[3:], None if z is None else z[3:], reduction="none")
    assert not torch.isclose(full[0], batch[3])
