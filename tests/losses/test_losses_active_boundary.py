"""active_boundary: hand value on a row, the official boundary detection as reference, distance maps, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from autoseg.losses import build_loss, get_loss_info
from autoseg.losses.boundary.active_boundary import (
    ActiveBoundaryLoss,
    _offsets,
    active_boundary_loss,
    active_boundary_term,
    boundary_distance,
    predicted_boundary,
)
from autoseg.losses.maps import compute_maps, compute_maps_torch


def _brute_force_label_distance(labels: np.ndarray) -> np.ndarray:
    """Distance of each voxel to the nearest voxel of another label, by comparing every pair."""
    coords = np.indices(labels.shape).reshape(labels.ndim, -1).T.astype(float)
    flat = labels.ravel()
    out = np.full(flat.shape, np.inf)
    for i, (x, lab) in enumerate(zip(coords, flat)):
        other = coords[flat != lab]
        if len(other):
            out[i] = np.sqrt(((other - x) ** 2).sum(1)).min()
    return out.reshape(labels.shape)


def _per_class_distance(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The per-class ``distance`` map kind with scipy: inside, to the nearest voxel not in c; outside, to c."""
    out = np.zeros((labels.shape[0], num_classes, *labels.shape[1:]), np.float32)
    for b, lab in enumerate(labels):
        for c in range(num_classes):
            m = lab == c
            if m.any() and not m.all():
                out[b, c] = np.where(m, ndimage.distance_transform_edt(m), ndimage.distance_transform_edt(~m))
    return out


@pytest.mark.parametrize("shape", [(2, 9, 11), (2, 5, 6, 7)])
def test_boundary_distance_of_the_maps_equals_brute_force(shape):
    rng = np.random.default_rng(len(shape))
    labels = (rng.random(shape) < 0.2).astype(np.int64) + (rng.random(shape) < 0.1)  # labels 0, 1, 2
    labels[0, 0] = 255  # the ignore label is a label of its own
    labels[1] = 1  # a case with one label only: no boundary
    for maps in (compute_maps(labels, 3, ("distance",), ignore_index=255)["distance"],
                 _per_class_distance(labels, 3)):
        ours = boundary_distance(torch.from_numpy(maps)).numpy()
        counted = labels[0] != 255
        np.testing.assert_allclose(ours[0][counted], _brute_force_label_distance(labels[0])[counted], rtol=1e-6)
        assert np.isinf(ours[1]).all()


def test_maps_handed_in_give_the_standalone_value():
    g = torch.Generator().manual_seed(1)
    target = torch.zeros(2, 20, 20, dtype=torch.long)
    target[0, 4:15, 5:12] = 1
    target[1, 2:9, 3:18] = 2
    logits = 3 * torch.randn(2, 3, 20, 20, generator=g)
    loss = ActiveBoundaryLoss()
    # the workers' maps (same function as the standalone path): identical; scipy's per-class maps: equal
    maps = compute_maps_torch(target, 3, ("distance",))["distance"]
    torch.testing.assert_close(loss(logits, target, distance=maps), loss(logits, target), rtol=0, atol=0)
    scipy_maps = torch.from_numpy(_per_class_distance(target.numpy(), 3))
    torch.testing.assert_close(loss(logits, target, distance=scipy_maps), loss(logits, target))
    # a map handed in is used, not recomputed
    assert float(loss(logits, target, distance=maps)) != float(loss(logits, target, distance=maps + 3))


def _official_boundary(logit: torch.Tensor, max_n_ratio: float) -> torch.Tensor:
    """Transcription of the official ``ABL.logits2boundary`` (2D, one image)."""
    def kl_div(a, b):
        return F.softmax(b, dim=1) * (F.log_softmax(b, dim=1) - F.log_softmax(a, dim=1))

    eps = 1e-5
    _, _, h, w = logit.shape
    max_n = (h * w) * max_n_ratio
    kl_ud = kl_div(logit[:, :, 1:, :], logit[:, :, :-1, :]).sum(1, keepdim=True)
    kl_lr = kl_div(logit[:, :, :, 1:], logit[:, :, :, :-1]).sum(1, keepdim=True)
    kl_ud = F.pad(kl_ud, [0, 0, 0, 1, 0, 0, 0, 0], mode="constant", value=0)
    kl_lr = F.pad(kl_lr, [0, 1, 0, 0, 0, 0, 0, 0], mode="constant", value=0)
    kl_combine = kl_lr + kl_ud
    while True:
        kl_combine_bin = (kl_combine > eps).to(torch.float)
        if kl_combine_bin.sum() > max_n:
            eps *= 1.2
        else:
            break
    edge = F.conv2d(kl_combine_bin, torch.ones((1, 1, 3, 3)), stride=1, padding=1)
    return edge[:, 0] > 0


@pytest.mark.parametrize("ratio", [0.01, 0.05, 0.3])
def test_predicted_boundary_equals_the_official_detection_per_case(ratio):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 4, 30, 40, generator=g)
    logits[1] = logits[1].mean((1, 2), keepdim=True)  # a uniform prediction: no boundary at all
    ours = predicted_boundary(torch.log_softmax(logits, 1), None, ratio)
    for b in range(3):
        assert torch.equal(ours[b], _official_boundary(logits[b:b + 1], ratio)[0]), f"case {b}"
    assert ours[0].any() and not ours[1].any()


def test_hand_value_on_a_row():
    # One row of 12 voxels: reference class 1 from column 6, prediction (p = 0.9) from column 3.
    # KL only between columns 2 and 3, so the predicted boundary is column 2, dilated to columns 1-3.
    # Distance to the other reference label D = 5, 4, 3 there, weights (D - 2)/20 = .15, .10, .05.
    # Only left/right neighbours exist, the target is right (towards column 6) for all three; the scores are
    # KL(p_neighbour || p_centre): 0 between equal predictions, z = 0.8 ln 9 across the predicted edge.
    target = torch.zeros(1, 1, 12, dtype=torch.long)
    target[..., 6:] = 1
    pred = torch.zeros_like(target)
    pred[..., 3:] = 1
    logits = math.log(9) * torch.nn.functional.one_hot(pred, 2).movedim(-1, 1).double()
    z = 0.8 * math.log(9)
    big_l = math.log(1 + math.exp(z))
    pos, neg = 0.8, 0.2 / 8  # label smoothing 0.2 over the 8 directions of 2D
    ce1 = (pos + neg) * math.log(2)                 # scores (0, 0)
    ce2 = -pos * (z - big_l) - neg * (0 - big_l)    # left 0, right z (target)
    ce3 = -pos * (0 - big_l) - neg * (z - big_l)    # left z, right 0 (target)
    expected = (0.15 * ce1 + 0.10 * ce2 + 0.05 * ce3) / 3
    value = active_boundary_loss(logits, target, weight_ce=0, max_n_ratio=0.25)
    # distance maps are float32 (as the workers hand them over), so the weights are float32: rel 1e-6
    assert float(value) == pytest.approx(expected, rel=1e-6)
    ce = float(build_loss("ce")(logits, target))
    assert float(active_boundary_loss(logits, target, max_n_ratio=0.25)) == pytest.approx(ce + expected, rel=1e-6)
    assert float(active_boundary_loss(logits, target, weight_ce=0.5, weight_abl=2, max_n_ratio=0.25)) == \
        pytest.approx(0.5 * ce + 2 * expected, rel=1e-6)


def test_neighbourhoods_8_in_2d_and_26_in_3d_face_neighbours_first():
    assert len(_offsets(2)) == 8 and len(_offsets(3)) == 26
    assert [sum(map(abs, o)) for o in _offsets(3)] == sorted(sum(map(abs, o)) for o in _offsets(3))
    assert set(_offsets(2)[:4]) == {(0, 1), (0, -1), (1, 0), (-1, 0)}


def _naive_term(logits, distance, mask, selected, max_clip_dist=20.0, label_smoothing=0.2):
    """The ABL term voxel by voxel and direction by direction, with explicit bounds checks (the reference)."""
    logp = torch.log_softmax(logits.float(), 1)
    b, spatial = logits.shape[0], tuple(logits.shape[2:])
    offsets = _offsets(len(spatial))
    sums, counts = [logp.new_zeros(()) for _ in range(b)], [0] * b
    for case, *x in selected.nonzero().tolist():
        d_i = float(distance[(case, *x)])
        if not math.isfinite(d_i):
            continue
        ok, d_nb, kl = [], [], []
        for o in offsets:
            y = tuple(a + s for a, s in zip(x, o))
            inside = all(0 <= a < n for a, n in zip(y, spatial))
            valid = inside and (mask is None or bool(mask[(case, *y)]))
            ok.append(valid)
            d_nb.append(float(distance[(case, *y)]) if valid else math.inf)
            q = logp[(case, slice(None), *y)].detach() if inside else logp.new_zeros(logp.shape[1])
            kl.append((q.exp() * (q - logp[(case, slice(None), *x)])).sum() if valid else None)
        best = int(np.argmin(d_nb))
        if not d_nb[best] < d_i:
            continue
        scores = torch.stack([k for k in kl if k is not None])
        log_dir = torch.log_softmax(scores, 0)
        target = [label_smoothing / len(offsets)] * len(offsets)
        target[best] = 1 - label_smoothing  # the official smoothing (CoinCheung's LabelSmoothSoftmaxCEV1) replaces
        valid_targets = torch.tensor([t for t, v in zip(target, ok) if v])
        ce = -(valid_targets * log_dir).sum()
        sums[case] = sums[case] + ce * min(max(d_i - 2, 0.0), max_clip_dist) / max_clip_dist
        counts[case] += 1
    return torch.stack(sums), torch.tensor(counts, dtype=torch.float32)


@pytest.mark.parametrize("shape, ignore", [((2, 3, 9, 11), False), ((2, 3, 6, 7, 5), True), ((1, 2, 5, 6, 7), False)])
def test_term_equals_a_voxel_by_voxel_reference(shape, ignore):
    # The loss gathers neighbours through flat indices into the padded volume; the reference loops over
    # voxels and directions with explicit bounds and ignore checks, image borders and ignored voxels included.
    g = torch.Generator().manual_seed(sum(shape))
    b, c, *spatial = shape
    coarse = torch.randint(0, c, (b, *[max(1, s // 3) for s in spatial]), generator=g)
    labels = F.interpolate(coarse[:, None].float(), size=spatial, mode="nearest")[:, 0].long()
    mask = None
    if ignore:
        labels[:, :2, 1:3] = c
        mask = labels != c
    distance = boundary_distance(compute_maps_torch(labels, c, ("distance",), ignore_index=c if ignore else None)["distance"])
    logits = (3 * torch.randn(b, c, *spatial, generator=g)).requires_grad_(True)
    ref_logits = logits.detach().clone().requires_grad_(True)
    sums, counts = active_boundary_term(logits, distance, mask, max_n_ratio=0.05)
    with torch.no_grad():
        selected = predicted_boundary(torch.log_softmax(logits, 1), mask, 0.05) & torch.isfinite(distance)
    ref_sums, ref_counts = _naive_term(ref_logits, distance, mask, selected)
    assert counts.sum() > 5  # the case exercises the term
    torch.testing.assert_close(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-6)
    sums.sum().backward()
    ref_sums.sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-4, atol=1e-6)


def test_3d_direction_target_is_a_diagonal_when_that_is_closest():
    # A cube corner: the voxel diagonally outside a corner is closest to the cube along the 3D diagonal.
    # A prediction one voxel too big on every side must be pulled back: the loss falls as the prediction
    # approaches the reference.
    target = torch.zeros(1, 12, 12, 12, dtype=torch.long)
    target[0, 4:8, 4:8, 4:8] = 1
    values = []
    for grow in (3, 2, 1, 0):
        pred = torch.zeros_like(target)
        pred[0, 4 - grow:8 + grow, 4 - grow:8 + grow, 4 - grow:8 + grow] = 1
        logits = 20 * torch.nn.functional.one_hot(pred, 2).movedim(-1, 1).float()
        values.append(float(active_boundary_loss(logits, target, weight_ce=0, max_n_ratio=0.2)))
    assert values[0] > values[1] > values[2] > values[3] >= 0, values


def test_no_predicted_boundary_gives_the_ce_alone_with_a_gradient():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, :, 4:] = 1
    logits = torch.zeros(2, 2, 8, 8, requires_grad=True)  # uniform: no KL anywhere
    value = active_boundary_loss(logits, target)
    value.backward()
    assert float(value.detach()) == pytest.approx(math.log(2), rel=1e-6)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_registry_declares_the_distance_map():
    info = get_loss_info("active_boundary")
    assert info.extra_inputs == ("distance",)
    assert info.category == "boundary"


def test_module_equals_function():
    g = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(2, 3, 16, 16, generator=g)
    target = torch.randint(0, 3, (2, 16, 16), generator=g)
    kwargs = dict(weight_ce=0.5, weight_abl=2.0, max_clip_dist=10.0, max_n_ratio=0.05, label_smoothing=0.1,
                  reduction="none")
    torch.testing.assert_close(ActiveBoundaryLoss(**kwargs)(logits, target), active_boundary_loss(logits, target,
                                                                                                  **kwargs))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_clip_dist": 0}, "max_clip_dist"), ({"max_n_ratio": 0}, "max_n_ratio"),
    ({"label_smoothing": 1.0}, "label_smoothing"), ({"weight_abl": -1}, "weight_abl"),
])
def test_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ActiveBoundaryLoss(**kwargs)


def test_distance_map_of_the_wrong_scale_is_refused():
    logits = torch.randn(1, 2, 8, 8)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="distance"):
        ActiveBoundaryLoss()(logits, target, distance=torch.zeros(1, 2, 4, 4))
