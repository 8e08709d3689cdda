"""Agreement with independent implementations (MONAI, kornia, nnU-Net) where the definitions match, within 1e-5.

Where a reference differs on purpose, the test says how and checks the difference is exactly that.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from autoseg.losses import build_loss

monai_losses = pytest.importorskip("monai.losses")
monai_ufl = pytest.importorskip("monai.losses.unified_focal_loss")
kornia_losses = pytest.importorskip("kornia.losses")
nnunet_loss = pytest.importorskip("nnunetv2.training.loss.compound_losses")

pytestmark = pytest.mark.filterwarnings("ignore:size_average and reduce args will be deprecated")

C = 4
IGNORE = C  # nnU-Net's convention: the ignore label is the label after the last class


def case(dim, seed=0, ignore=False, all_present=False, batch=2):
    g = torch.Generator().manual_seed(seed)
    spatial = (7, 6) if dim == 2 else (5, 4, 6)
    logits = torch.randn(batch, C, *spatial, generator=g) * 2
    target = torch.randint(0, C, (batch, *spatial), generator=g)
    if all_present:
        target.view(batch, -1)[:, :C] = torch.arange(C)
    if ignore:
        target[torch.rand(target.shape, generator=g) < 0.25] = IGNORE
    return logits, target


def close(a, b):
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# MONAI
# ---------------------------------------------------------------------------------------------------------------

GRID = list(itertools.product([2, 3], [False, True], [False, True], [1e-5, 1.0]))


@pytest.mark.parametrize("dim, include_background, batch, smooth", GRID)
def test_dice_matches_monai(dim, include_background, batch, smooth):
    logits, target = case(dim, seed=1)
    ref = monai_losses.DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True, batch=batch,
                                smooth_nr=smooth, smooth_dr=smooth, reduction="mean")
    ours = build_loss("dice", include_background=include_background, batch=batch, smooth=smooth)
    close(ours(logits, target), ref(logits, target.unsqueeze(1)))


@pytest.mark.parametrize("alpha, beta", [(0.7, 0.3), (0.5, 0.5), (0.2, 0.9)])
@pytest.mark.parametrize("dim, include_background, batch, smooth", GRID[::3])
def test_tversky_matches_monai(dim, include_background, batch, smooth, alpha, beta):
    # MONAI names the false-positive weight alpha and the false-negative weight beta: the letters swap.
    logits, target = case(dim, seed=2)
    ref = monai_losses.TverskyLoss(include_background=include_background, to_onehot_y=True, softmax=True,
                                   alpha=beta, beta=alpha, batch=batch, smooth_nr=smooth, smooth_dr=smooth)
    ours = build_loss("tversky", alpha=alpha, beta=beta, include_background=include_background, batch=batch,
                      smooth=smooth)
    close(ours(logits, target), ref(logits, target.unsqueeze(1)))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("gamma, alpha", [(0.0, None), (2.0, None), (0.5, [0.1, 0.2, 0.3, 0.4]), (3.0, 0.25)])
def test_focal_matches_monai(gamma, alpha, dim):
    # MONAI's mean runs over classes too (only the reference class is non-zero): sum over C, mean over voxels.
    logits, target = case(dim, seed=3)
    ref = monai_losses.FocalLoss(include_background=True, to_onehot_y=True, gamma=gamma, alpha=alpha,
                                 use_softmax=True, reduction="none")
    expected = ref(logits, target.unsqueeze(1)).sum(1).mean()
    close(build_loss("focal", gamma=gamma, alpha=alpha)(logits, target), expected)


BRATS = [[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.6, 0.2], [1.0, 0.6, 0.0, 0.5], [1.0, 0.2, 0.5, 0.0]]


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("matrix", [None, BRATS])
def test_gwdl_matches_monai(matrix, dim):
    # MONAI's "default" weighting uses alpha = (0, 1, ..., 1); Fidon's alpha_l = M[l, 0] equals it when the
    # background row of M is 1, as Fidon requires of M (both matrices here).
    logits, target = case(dim, seed=4)
    m = torch.tensor(matrix) if matrix is not None else 1 - torch.eye(C)
    ref = monai_losses.GeneralizedWassersteinDiceLoss(dist_matrix=m, weighting_mode="default", reduction="none")
    ours = build_loss("gwdl", distance_matrix=matrix, reduction="none")
    close(ours(logits, target), ref(logits, target.unsqueeze(1)).flatten())


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("delta, gamma", [(0.6, 0.5), (0.7, 0.2)])
def test_unified_focal_parts_match_monai_binary(delta, gamma, dim):
    # MONAI's asymmetric losses are binary and take probabilities (clipped to [1e-7, 1 - 1e-7]); its focal part
    # averages over the 2 class channels as well (only the reference one is non-zero), hence the factor 2.
    g = torch.Generator().manual_seed(13)
    spatial = (7, 6) if dim == 2 else (5, 4, 6)
    logits = torch.randn(2, 2, *spatial, generator=g) * 2
    target = torch.randint(0, 2, (2, *spatial), generator=g)
    probs, y = torch.softmax(logits, 1), target.unsqueeze(1)
    focal_ref = 2 * monai_ufl.AsymmetricFocalLoss(to_onehot_y=True, delta=delta, gamma=gamma)(probs, y)
    ft_ref = monai_ufl.AsymmetricFocalTverskyLoss(to_onehot_y=True, delta=delta, gamma=gamma)(probs, y)
    kwargs = {"delta": delta, "gamma": gamma, "smooth": 1e-7}
    close(build_loss("unified_focal", focal_weight=1.0, **kwargs)(logits, target), focal_ref)
    close(build_loss("unified_focal", focal_weight=0.0, **kwargs)(logits, target), ft_ref)
    close(build_loss("unified_focal", focal_weight=0.5, **kwargs)(logits, target), 0.5 * focal_ref + 0.5 * ft_ref)


# ---------------------------------------------------------------------------------------------------------------
# kornia
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("gamma, alpha, ignore", [(2.0, None, False), (2.0, 0.25, True), (0.5, 0.75, True),
                                                  (0.0, None, True)])
def test_focal_matches_kornia(gamma, alpha, ignore, dim):
    logits, target = case(dim, seed=5, ignore=ignore)
    ref = kornia_losses.focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none",
                                   ignore_index=IGNORE if ignore else -100)
    mask = target != IGNORE
    expected = ref.sum(1)[mask].mean()
    ours = build_loss("focal", gamma=gamma, alpha=alpha, ignore_index=IGNORE if ignore else None)
    close(ours(logits, target), expected)


@pytest.mark.parametrize("alpha, beta", [(0.7, 0.3), (0.5, 0.5), (1.0, 1.0)])
def test_tversky_matches_kornia_when_every_class_is_present(alpha, beta):
    # kornia: 2D only, background included, per image, alpha on false positives, no smoothing, and classes
    # absent from an image left out of its mean. With every class present and smooth=0 the definitions agree.
    logits, target = case(2, seed=6, all_present=True)
    ref = kornia_losses.tversky_loss(logits, target, alpha=beta, beta=alpha, eps=0.0)
    ours = build_loss("tversky", alpha=alpha, beta=beta, include_background=True, smooth=0.0)
    close(ours(logits, target), ref)


def test_tversky_differs_from_kornia_on_absent_classes_on_purpose():
    # An absent class that is not predicted scores 1 here (the smoothing term, as Dice/nnU-Net), while kornia
    # drops it from the mean; a class absent but predicted scores near 0 here and is ignored by kornia.
    logits, target = case(2, seed=7)
    target[target == 3] = 0
    ref = kornia_losses.tversky_loss(logits, target, alpha=0.3, beta=0.7, eps=0.0)
    ours = build_loss("tversky", include_background=True, smooth=1e-5)(logits, target)
    assert not torch.allclose(ours, ref, atol=1e-3)
    # kornia's value is ours restricted to the classes present (0, 1, 2) in every image.
    from autoseg.losses.region.tversky import tversky_index
    ti = tversky_index(logits, target, 0.7, 0.3, None, True, False, 0.0)
    close(1 - ti[:, :3].mean(1).mean(), ref)


@pytest.mark.parametrize("dim", [2, 3])
def test_lovasz_matches_kornia(dim):
    # kornia: per image, every class (present or not), background included, no ignore label, 2D only (a 3D
    # volume is given to it as a 2D image: the loss depends on the set of voxels, not on their layout).
    logits, target = case(dim, seed=8)
    b = logits.shape[0]
    ref = kornia_losses.lovasz_softmax_loss(logits.reshape(b, C, -1, logits.shape[-1]),
                                            target.reshape(b, -1, target.shape[-1]))
    ours = build_loss("lovasz", classes="all", include_background=True, batch=False)
    close(ours(logits, target), ref)


# ---------------------------------------------------------------------------------------------------------------
# nnU-Net
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("k", [10, 33, 100])
def test_topk_matches_nnunet(k, dim):
    from nnunetv2.training.loss.robust_ce_loss import TopKLoss

    logits, target = case(dim, seed=9)
    close(build_loss("topk", k=k)(logits, target), TopKLoss(k=k)(logits, target.unsqueeze(1)))


def test_topk_with_ignore_differs_from_nnunet_on_purpose():
    # nnU-Net keeps ignored voxels (loss 0) in N and selects int(N k / 100) of all voxels, so with many ignored
    # voxels it averages over more voxels than k % of the counted ones. autoseg counts only the counted voxels:
    # its value is nnU-Net's applied to the counted voxels alone.
    from nnunetv2.training.loss.robust_ce_loss import TopKLoss

    logits, target = case(2, seed=10, ignore=True, batch=1)
    mask = target != IGNORE
    ours = build_loss("topk", k=20, ignore_index=IGNORE)(logits, target)
    ref_all = TopKLoss(k=20, ignore_index=IGNORE)(logits, target.unsqueeze(1))
    counted_logits = logits.movedim(1, -1)[mask].T.reshape(1, C, -1, 1)
    counted_target = target[mask].reshape(1, 1, -1, 1)
    ref_counted = TopKLoss(k=20)(counted_logits, counted_target)
    close(ours, ref_counted)
    assert not torch.allclose(ours, ref_all, atol=1e-4)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("batch, ignore", list(itertools.product([False, True], [False, True])))
def test_dice_and_dice_ce_match_nnunet(batch, ignore, dim):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.helpers import softmax_helper_dim1

    logits, target = case(dim, seed=11, ignore=ignore)
    ctx = {"ignore_index": IGNORE if ignore else None, "batch": batch}
    ref = DC_and_CE_loss({"batch_dice": batch, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                         weight_dice=1, ignore_label=IGNORE if ignore else None,
                         dice_class=MemoryEfficientSoftDiceLoss)
    # nnU-Net returns -Dice + CE; autoseg's Dice loss is 1 - Dice.
    close(build_loss("dice_ce", context=ctx)(logits, target), ref(logits, target.unsqueeze(1)) + 1)
    mask = (target != IGNORE).unsqueeze(1).float() if ignore else None
    dice_ref = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, batch_dice=batch, do_bg=False,
                                           smooth=1e-5, ddp=False)
    close(build_loss("dice", context=ctx)(logits, target),
          dice_ref(logits, torch.where(target == IGNORE, 0, target).unsqueeze(1), loss_mask=mask) + 1)


@pytest.mark.parametrize("dim", [2, 3])
def test_dice_topk_matches_nnunet(dim):
    from nnunetv2.training.loss.compound_losses import DC_and_topk_loss

    logits, target = case(dim, seed=12)
    ref = DC_and_topk_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {"k": 10})
    close(build_loss("dice_topk", batch=True)(logits, target), ref(logits, target.unsqueeze(1)) + 1)
