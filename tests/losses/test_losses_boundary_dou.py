"""boundary_dou: alpha of squares with known boundary and area, hand values, the official formula as reference."""

from __future__ import annotations

import pytest
import torch

from autoseg.losses import build_loss
from autoseg.losses.boundary.boundary_dou import BoundaryDoULoss, boundary_dou_alpha, boundary_dou_loss

S = 1e-5  # the official smoothing, autoseg's default


def square_onehot(size: int, side: int, offset: int, dim: int = 2) -> torch.Tensor:
    """One-hot ``[1, 2, size, ...]`` of a square (cube) of ``side`` voxels starting at ``offset`` on each axis."""
    fg = torch.zeros((size,) * dim)
    fg[(slice(offset, offset + side),) * dim] = 1
    return torch.stack([1 - fg, fg])[None]


@pytest.mark.parametrize("size, side, offset, boundary", [
    (16, 10, 3, 10 * 10 - 8 * 8),     # interior square: C = S - (side - 2)^2 = 36
    (24, 20, 2, 20 * 20 - 18 * 18),   # C = 76
    (16, 8, 0, 8 * 8 - 6 * 6),        # touching the image corner: the border counts as outside (zero padding)
    (16, 1, 5, 1),                    # a single voxel is all boundary
    (16, 2, 5, 4),
])
def test_alpha_of_a_square_is_one_minus_twice_boundary_over_area(size, side, offset, boundary):
    area = side * side
    alpha = boundary_dou_alpha(square_onehot(size, side, offset))[0, 1]
    assert float(alpha) == pytest.approx(1 - 2 * (boundary + S) / (area + S), abs=1e-6)


def test_alpha_is_capped_at_0_8():
    # 40 x 40: C = 1600 - 38^2 = 156, 1 - 2 C / S = 0.805 > 0.8
    assert float(boundary_dou_alpha(square_onehot(44, 40, 2))[0, 1]) == pytest.approx(0.8)
    assert float(boundary_dou_alpha(square_onehot(44, 40, 2), alpha_max=0.9)[0, 1]) == pytest.approx(
        1 - 2 * (156 + S) / (1600 + S), abs=1e-6)


def test_alpha_of_a_cube_uses_the_6_neighbour_cross():
    # 6^3 cube: S = 216, interior 4^3 = 64, C = 152
    alpha = boundary_dou_alpha(square_onehot(10, 6, 2, dim=3))[0, 1]
    assert float(alpha) == pytest.approx(1 - 2 * (152 + S) / (216 + S), abs=1e-6)


def test_alpha_with_batch_counts_over_the_batch():
    both = torch.cat([square_onehot(16, 10, 3), square_onehot(16, 4, 3)])  # C: 36 + 12, S: 100 + 16
    assert float(boundary_dou_alpha(both, batch=True)[0, 1]) == pytest.approx(1 - 2 * (48 + S) / (116 + S), abs=1e-6)


def _official_alpha_2d(target: torch.Tensor) -> float:
    """The official ``_adaptive_size`` count: conv2d with the cross, zero padding, voxels whose sum is not 5."""
    kernel = torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=target.dtype)[None, None]
    y = torch.conv2d(target[:, None], kernel, padding=1)[:, 0] * target
    y[y == 5] = 0
    c, s = torch.count_nonzero(y), torch.count_nonzero(target)
    return float(2 * (1 - (c + S) / (s + S)) - 1)


def test_alpha_equals_the_official_count_on_random_shapes():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        labels = (torch.rand(1, 20, 20, generator=g) < 0.6).long()
        onehot = torch.nn.functional.one_hot(labels, 2).movedim(-1, 1).float()
        ours = float(boundary_dou_alpha(onehot, alpha_max=1.0)[0, 1])
        assert ours == pytest.approx(_official_alpha_2d(labels[:, :, :].float()), abs=1e-6)


def test_hand_value_shifted_square():
    # 4 x 4 square in 6 x 6 (S = 16, C = 12, alpha = -0.5), predicted one column off: |P ∩ G| = 12,
    # sum p^2 = sum t^2 = 16 -> (32 - 24) / (32 - 0.5 * 12) = 8 / 26.
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    target[0, 1:5, 1:5] = 1
    pred = torch.zeros_like(target)
    pred[0, 1:5, 2:6] = 1
    logits = 40.0 * torch.nn.functional.one_hot(pred, 2).movedim(-1, 1).double()
    assert float(boundary_dou_loss(logits, target)) == pytest.approx(8 / 26, rel=1e-6)
    # background (S = 20, C = 20 since every background voxel touches the border or the square: alpha = -1):
    # |P ∩ G| = 16 of 20 -> (40 - 32) / (40 - 0) = 0.2; mean with the foreground's 8/26
    both = boundary_dou_loss(logits, target, include_background=True)
    assert float(both) == pytest.approx((8 / 26 + 0.2) / 2, rel=1e-6)


def _official_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Transcription of the official ``BoundaryDoULoss.forward`` (2D, whole batch, every class)."""
    n_classes = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    onehot = torch.nn.functional.one_hot(target, n_classes).movedim(-1, 1).to(probs.dtype)
    loss = 0.0
    for i in range(n_classes):
        score, t = probs[:, i], onehot[:, i]
        alpha = min(_official_alpha_2d(t), 0.8)
        intersect, y_sum, z_sum = (score * t).sum(), (t * t).sum(), (score * score).sum()
        loss = loss + (z_sum + y_sum - 2 * intersect + S) / (z_sum + y_sum - (1 + alpha) * intersect + S)
    return loss / n_classes


def test_equals_the_official_code_with_batch_and_background():
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(2, 3, 24, 24, generator=g, dtype=torch.float64)
    target = torch.zeros(2, 24, 24, dtype=torch.long)
    target[0, 4:20, 5:15] = 1
    target[0, 10:14, 16:22] = 2
    target[1, 2:9, 2:22] = 2
    ours = boundary_dou_loss(logits, target, batch=True, include_background=True)
    torch.testing.assert_close(ours, _official_loss(logits, target), rtol=1e-6, atol=1e-9)


def test_absent_class_scores_one_whatever_is_predicted():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    for logits in (torch.randn(1, 2, 8, 8), 30 * torch.stack([torch.zeros(8, 8), torch.ones(8, 8)])[None]):
        assert float(boundary_dou_loss(logits, target)) == pytest.approx(1.0)


def test_ignored_voxels_count_as_outside_the_class_for_alpha():
    onehot = square_onehot(16, 10, 3)
    onehot[0, :, 3, 3:13] = 0  # the square's top row ignored: a 9 x 10 rectangle whose new top row is boundary
    alpha = boundary_dou_alpha(onehot)[0, 1]
    assert float(alpha) == pytest.approx(1 - 2 * (90 - 7 * 8 + S) / (90 + S), abs=1e-6)


def test_module_equals_function_and_registry():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 9, 9, generator=g)
    target = torch.randint(0, 3, (2, 9, 9), generator=g)
    kwargs = dict(alpha_max=0.5, include_background=True, batch=True, smooth=1e-3)
    torch.testing.assert_close(BoundaryDoULoss(**kwargs)(logits, target), boundary_dou_loss(logits, target, **kwargs))
    assert isinstance(build_loss("boundary_dou"), BoundaryDoULoss)


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1])
def test_bad_alpha_max(value):
    with pytest.raises(ValueError, match="alpha_max"):
        BoundaryDoULoss(alpha_max=value)
