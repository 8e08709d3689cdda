"""Values of every loss against hand computations and numpy transcriptions of the papers' formulas, and the
identities between losses listed in LOSSES.md."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.special import gammaln

from autoseg.losses import build_loss

IGNORE = 255

# ---------------------------------------------------------------------------------------------------------------
# A tiny case worked by hand: two classes, three voxels, p(class 1) = 3/4, 1/2, 1/4, reference 1, 1, 0.
#   class 1: TP = 1.25, sum p = 1.5, sum t = 2, FP = 0.25, FN = 0.75
#   class 0: TP = 0.75, sum p = 1.5, sum t = 1, FP = 0.75, FN = 0.25
# ---------------------------------------------------------------------------------------------------------------
HAND_LOGITS = torch.tensor([[[[0.0, 0.0, math.log(3)]], [[math.log(3), 0.0, 0.0]]]])  # [1, 2, 1, 3]
HAND_TARGET = torch.tensor([[[1, 1, 0]]])
L34, L12 = -math.log(0.75), -math.log(0.5)  # -log p of the reference class at the voxels

HAND = [
    ("ce", {}, (L34 + L12 + L34) / 3),
    ("focal", {"gamma": 2.0}, (0.25 ** 2 * L34 + 0.5 ** 2 * L12 + 0.25 ** 2 * L34) / 3),
    ("focal", {"gamma": 2.0, "alpha": [0.2, 0.8]}, (0.8 * 0.25 ** 2 * L34 + 0.8 * 0.5 ** 2 * L12
                                                     + 0.2 * 0.25 ** 2 * L34) / 3),
    ("focal", {"gamma": 2.0, "alpha": 0.8}, (0.8 * 0.25 ** 2 * L34 + 0.8 * 0.5 ** 2 * L12
                                              + 0.2 * 0.25 ** 2 * L34) / 3),
    ("topk", {"k": 34}, L12),  # int(3 * 0.34) = 1 voxel: the hardest
    ("topk", {"k": 67}, (L12 + L34) / 2),  # int(3 * 0.67) = 2 voxels
    ("dice", {"smooth": 0}, 1 - 2 * 1.25 / (1.5 + 2)),
    ("dice", {"smooth": 0, "include_background": True}, 1 - (2 * 1.25 / 3.5 + 2 * 0.75 / 2.5) / 2),
    ("iou", {"smooth": 0}, 1 - 1.25 / (1.25 + 0.25 + 0.75)),
    ("iou", {"smooth": 0, "include_background": True}, 1 - (1.25 / 2.25 + 0.75 / 1.75) / 2),
    ("tversky", {"smooth": 0}, 1 - 1.25 / (1.25 + 0.7 * 0.75 + 0.3 * 0.25)),
    ("tversky", {"smooth": 0, "alpha": 0.2, "beta": 0.8}, 1 - 1.25 / (1.25 + 0.2 * 0.75 + 0.8 * 0.25)),
    ("focal_tversky", {"smooth": 0}, (1 - 1.25 / (1.25 + 0.7 * 0.75 + 0.3 * 0.25)) ** 0.75),
    ("log_cosh_dice", {"smooth": 0}, math.log(math.cosh(1 - 2 * 1.25 / 3.5))),
    ("sens_spec", {"smooth": 0}, 0.05 * (0.25 ** 2 + 0.5 ** 2) / 2 + 0.95 * 0.25 ** 2 / 1),
    ("sens_spec", {"smooth": 0, "r": 0.5}, 0.5 * (0.25 ** 2 + 0.5 ** 2) / 2 + 0.5 * 0.25 ** 2 / 1),
    # M = 1 - I: W_n = 1 - p_n(g_n) = 0.25, 0.5, 0.25; TP = (1 - 0.25) + (1 - 0.5) over foreground voxels.
    ("gwdl", {"smooth": 0}, 1 - 2 * 1.25 / (2 * 1.25 + 1.0)),
    # Lovász, worked in the test below: 0.375 for each class.
    ("lovasz", {}, 0.375),
    ("lovasz", {"include_background": False}, 0.375),
    ("combo", {"smooth": 0, "alpha": 0.5, "beta": 1.0}, 0.5 * (L34 + L12 + L34) / 3 + 0.5 * (1 - 2.5 / 3.5)),
    # Wong et al. average the Dice term over all labels, background included (s = 1: class 0 2.5 / 3.5).
    ("exp_log", {}, 0.8 * ((-math.log(2.5 / 3.5)) ** 0.3 + (-math.log(3.5 / 4.5)) ** 0.3) / 2
     + 0.2 * (2 * L34 ** 0.3 + L12 ** 0.3) / 3),
    ("exp_log", {"include_background": False},
     0.8 * (-math.log(3.5 / 4.5)) ** 0.3 + 0.2 * (2 * L34 ** 0.3 + L12 ** 0.3) / 3),
    ("unified_focal", {"smooth": 0},
     0.5 * (0.6 * L34 + 0.6 * L12 + 0.4 * 0.25 ** 0.5 * L34) / 3
     + 0.5 * ((1 - 0.75 / (0.75 + 0.6 * 0.25 + 0.4 * 0.75))
              + (1 - 1.25 / (1.25 + 0.6 * 0.75 + 0.4 * 0.25)) ** 0.5) / 2),
    ("dice_ce", {"smooth": 0}, 1 - 2.5 / 3.5 + (L34 + L12 + L34) / 3),
    ("dice_topk", {"smooth": 0, "k": 34}, 1 - 2.5 / 3.5 + L12),
    ("dice_focal", {"smooth": 0}, 1 - 2.5 / 3.5 + (0.25 ** 2 * L34 + 0.5 ** 2 * L12 + 0.25 ** 2 * L34) / 3),
]


@pytest.mark.parametrize("name, kwargs, expected", HAND, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(HAND)])
def test_hand_computed_value(name, kwargs, expected):
    value = build_loss(name, **kwargs)(HAND_LOGITS, HAND_TARGET)
    assert float(value) == pytest.approx(expected, abs=1e-6)


def test_lovasz_by_hand_worked():
    # Class 1: errors |t - p| = .25, .5, .25 with t = 1, 1, 0; sorted: .5 (t=1), .25 (t=1), .25 (t=0).
    # Jaccard losses of the growing prefixes: 1 - |G \ S| / |G u S| = .5, 1, 1 -> increments .5, .5, 0.
    # L_1 = .5 * .5 + .25 * .5 + .25 * 0 = .375. Class 0 (t = 0, 0, 1) gives .375 as well.
    assert float(build_loss("lovasz", classes="all")(HAND_LOGITS, HAND_TARGET)) == pytest.approx(0.375, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# numpy transcriptions of the papers' formulas, compared over a grid of settings on random inputs
# ---------------------------------------------------------------------------------------------------------------

def np_softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_case(dim, seed, ignore, num_classes=3, batch=2):
    rng = np.random.default_rng(seed)
    spatial = (6, 5) if dim == 2 else (4, 3, 5)
    logits = rng.normal(size=(batch, num_classes, *spatial)) * 2
    target = rng.integers(0, num_classes, size=(batch, *spatial))
    if ignore:
        target[rng.random(target.shape) < 0.25] = IGNORE
    return logits, target


def np_parts(logits, target):
    """Probabilities, one-hot (zero at ignored voxels) and the counted-voxel mask, all float64."""
    p = np_softmax(logits)
    mask = target != IGNORE
    c = logits.shape[1]
    t = np.stack([(target == k) & mask for k in range(c)], 1).astype(float)
    return p * mask[:, None], t, mask


def np_counts(logits, target, batch):
    p, t, _ = np_parts(logits, target)
    axes = tuple(range(2, p.ndim))
    tp, sp, st = (p * t).sum(axes), p.sum(axes), t.sum(axes)
    tp, fp, fn = tp, sp - tp, st - tp
    if batch:
        tp, fp, fn = (x.sum(0, keepdims=True) for x in (tp, fp, fn))
    return tp, fp, fn


def np_region(kind, logits, target, include_background, batch, smooth, alpha=0.7, beta=0.3, gamma=4 / 3, r=0.05):
    tp, fp, fn = np_counts(logits, target, batch)
    if kind in ("dice", "log_cosh_dice"):
        score = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
    elif kind == "iou":
        score = (tp + smooth) / (tp + fp + fn + smooth)
    elif kind in ("tversky", "focal_tversky"):
        score = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
    elif kind == "sens_spec":
        p, t, mask = np_parts(logits, target)
        axes = tuple(range(2, p.ndim))
        sq = (t - p) ** 2
        bg = (1 - t) * mask[:, None]
        parts = [(sq * t).sum(axes), t.sum(axes), (sq * bg).sum(axes), bg.sum(axes)]
        if batch:
            parts = [x.sum(0, keepdims=True) for x in parts]
        per_class = r * parts[0] / (parts[1] + smooth) + (1 - r) * parts[2] / (parts[3] + smooth)
        return (per_class if include_background else per_class[:, 1:]).mean(1)
    if not include_background:
        score = score[:, 1:]
    if kind == "focal_tversky":
        return ((1 - score) ** (1 / gamma)).mean(1)
    loss = 1 - score.mean(1)
    return np.log(np.cosh(loss)) if kind == "log_cosh_dice" else loss


REGION_GRID = list(itertools.product(["dice", "iou", "tversky", "focal_tversky", "sens_spec", "log_cosh_dice"],
                                     [2, 3], [False, True], [False, True], [1e-5, 1.0]))


@pytest.mark.parametrize("name, dim, include_background, batch, smooth", REGION_GRID)
def test_region_losses_match_numpy(name, dim, include_background, batch, smooth):
    logits, target = np_case(dim, seed=sum(map(ord, name)) + dim, ignore=True)
    expected = np_region(name, logits, target, include_background, batch, smooth)
    loss = build_loss(name, include_background=include_background, batch=batch, smooth=smooth,
                      ignore_index=IGNORE, reduction="none")
    value = loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(target))
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-6)


def np_pixel(name, logits, target, gamma=2.0, k=10.0, alpha=None):
    p, t, mask = np_parts(logits, target)
    pt = np.where(t.sum(1) > 0, (np_softmax(logits) * t).sum(1), 1.0)
    nll = -np.log(pt)
    if name == "focal":
        a = np.ones(logits.shape[1]) if alpha is None else np.asarray(alpha)
        per = a[np.where(mask, target, 0)] * (1 - pt) ** gamma * nll
        return per[mask].mean()
    values = np.sort(nll[mask])[::-1]
    n = max(1, int(values.size * k / 100))
    return values[:n].mean()


PIXEL_GRID = ([("focal", {"gamma": g, "alpha": a}) for g in (0.5, 2.0, 3.0) for a in (None, [0.1, 0.3, 0.6])]
              + [("topk", {"k": k}) for k in (1, 10, 33.3, 100)])


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name, kwargs", PIXEL_GRID)
def test_pixel_losses_match_numpy(name, kwargs, dim):
    logits, target = np_case(dim, seed=7, ignore=True)
    expected = np_pixel(name, logits, target, **kwargs)
    value = build_loss(name, ignore_index=IGNORE, **kwargs)(torch.tensor(logits, dtype=torch.float32),
                                                            torch.tensor(target))
    assert float(value) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def np_gwdl(logits, m, target, smooth):
    p, t, mask = np_parts(logits, target)
    g = np.where(mask, target, 0)
    losses = []
    for b in range(p.shape[0]):
        pb = p[b].reshape(p.shape[1], -1)
        gb, mb = g[b].ravel(), mask[b].ravel()
        w = np.array([m[gb[n]] @ pb[:, n] for n in range(gb.size)]) * mb  # Wasserstein cost per voxel
        alpha = m[:, 0]
        tp = sum(alpha[gb[n]] * (alpha[gb[n]] - w[n]) for n in range(gb.size) if mb[n])
        losses.append(1 - (2 * tp + smooth) / (2 * tp + w.sum() + smooth))
    return np.array(losses)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("matrix", ["identity", "brats"])
def test_gwdl_matches_numpy(matrix, dim):
    logits, target = np_case(dim, seed=8, ignore=True, num_classes=4)
    if matrix == "identity":
        m = 1 - np.eye(4)
    else:  # Fidon's BraTS matrix: background, necrotic core, oedema, enhancing tumour
        m = np.array([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.6, 0.2], [1.0, 0.6, 0.0, 0.5], [1.0, 0.2, 0.5, 0.0]])
    loss = build_loss("gwdl", distance_matrix=None if matrix == "identity" else m.tolist(), ignore_index=IGNORE,
                      reduction="none")
    value = loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(target))
    np.testing.assert_allclose(value.numpy(), np_gwdl(logits, m, target, 1e-5), rtol=1e-5, atol=1e-6)


def test_gwdl_identity_matrix_is_generalised_soft_dice():
    # Fidon: with M = 1 - I, W_n = 1 - p_n(g_n) and the score is 2 sum_fg p(g) / (2 sum_fg p(g) + sum_n (1 - p(g))).
    logits = torch.tensor([[[[2.0, 0.0, 1.0, -1.0]], [[0.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 2.0, 1.0]]]])
    target = torch.tensor([[[0, 1, 2, 2]]])
    p = torch.softmax(logits, 1)[0, :, 0]
    pg = [float(p[g, n]) for n, g in enumerate([0, 1, 2, 2])]
    tp = pg[1] + pg[2] + pg[3]
    expected = 1 - 2 * tp / (2 * tp + sum(1 - x for x in pg))
    assert float(build_loss("gwdl", smooth=0)(logits, target)) == pytest.approx(expected, abs=1e-6)


def np_lovasz(logits, target, classes, include_background, batch):
    """Berman et al.'s reference lovasz_softmax_flat, transcribed to numpy (one loop per class)."""
    p, t, mask = np_parts(logits, target)
    c = p.shape[1]
    groups = [range(p.shape[0])] if batch else [[b] for b in range(p.shape[0])]
    out = []
    for group in groups:
        probs = np.concatenate([np.moveaxis(p[b], 0, -1).reshape(-1, c)[mask[b].ravel()] for b in group])
        labels = np.concatenate([target[b].ravel()[mask[b].ravel()] for b in group])
        losses = []
        for k in range(0 if include_background else 1, c):
            fg = (labels == k).astype(float)
            if classes == "present" and fg.sum() == 0:
                continue
            errors = np.abs(fg - probs[:, k])
            order = np.argsort(-errors, kind="stable")
            gt_sorted = fg[order]
            gts = gt_sorted.sum()
            inter = gts - gt_sorted.cumsum()
            union = gts + (1 - gt_sorted).cumsum()
            jac = 1 - inter / union
            jac[1:] = jac[1:] - jac[:-1]
            losses.append(errors[order] @ jac)
        out.append(np.mean(losses) if losses else 0.0)
    return np.array(out)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("classes, include_background, batch",
                         list(itertools.product(["present", "all"], [True, False], [True, False])))
def test_lovasz_matches_numpy(classes, include_background, batch, dim):
    logits, target = np_case(dim, seed=9, ignore=True, num_classes=4)
    target[1][target[1] == 2] = 0  # a class absent from one case
    loss = build_loss("lovasz", classes=classes, include_background=include_background, batch=batch,
                      ignore_index=IGNORE, reduction="none")
    value = loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(target))
    np.testing.assert_allclose(value.numpy(), np_lovasz(logits, target, classes, include_background, batch),
                               rtol=1e-5, atol=1e-6)


def np_rmi(logits, target, radius, pool, ce_weight, include_background=True):
    """Zhao et al.'s RMI as their reference code (scatter matrices, classes summed as its _IS_SUM = 1).

    Pooling as the code's avg_pool2d(kernel=stride=pool, padding=pool // 2), the padding treated as ignored
    voxels (window sums of value and of counted voxels are divided); the sizes must leave ``radius`` cells.
    """
    p, t, mask = np_parts(logits, target)
    c = p.shape[1]
    spatial = p.shape[2:]
    pad = pool // 2
    n_cells = [(s + 2 * pad - pool) // pool + 1 for s in spatial]
    out = []
    for b in range(p.shape[0]):
        per_class = []
        for k in range(0 if include_background else 1, c):
            def pooled(x):
                padded = np.pad(x, pad)[tuple(slice(0, n * pool) for n in n_cells)]
                blocks = padded.reshape(*itertools.chain(*[(n, pool) for n in n_cells]))
                return blocks.sum(axis=tuple(range(1, 2 * len(n_cells), 2)))
            w = pooled(mask[b].astype(float))
            pc, tc = pooled(p[b, k]) / np.maximum(w, 1e-300), pooled(t[b, k]) / np.maximum(w, 1e-300)
            cells = pc.shape
            out_shape = [s - radius + 1 for s in cells]
            vec_p, vec_t, vec_ok = [], [], []
            for pos in itertools.product(*[range(s) for s in out_shape]):
                window = tuple(slice(i, i + radius) for i in pos)
                vec_p.append(pc[window].ravel())
                vec_t.append(tc[window].ravel())
                vec_ok.append(bool((w[window] > 0).all()))
            vp, vt = np.array(vec_p)[vec_ok].T, np.array(vec_t)[vec_ok].T  # [d, M]
            d, n = vp.shape
            vp = vp - vp.mean(1, keepdims=True)
            vt = vt - vt.mean(1, keepdims=True)
            # The reference code's scatter matrices with 5e-4 I, divided by n (minus its 0.5 log n offset).
            scatter_t, scatter_p, scatter_tp = vt @ vt.T, vp @ vp.T, vt @ vp.T
            cond = scatter_t - scatter_tp @ np.linalg.inv(scatter_p + 5e-4 * np.eye(d)) @ scatter_tp.T
            per_class.append(0.5 * np.linalg.slogdet(cond + 5e-4 * np.eye(d))[1] / d - 0.5 * np.log(n))
        nll = -np.log((np_softmax(logits)[b] * t[b]).sum(0)[mask[b]])
        out.append(ce_weight * nll.mean() + (1 - ce_weight) * np.sum(per_class))
    return np.array(out)


@pytest.mark.parametrize("dim, spatial, pool, radius, ce_weight, ignore", [
    (2, (16, 12), 4, 3, 0.5, False),
    (2, (16, 12), 2, 3, 0.0, True),
    (2, (9, 9), 1, 2, 0.3, True),
    (3, (8, 8, 12), 2, 3, 0.5, False),
    (3, (6, 6, 6), 2, 2, 0.0, True),
])
def test_rmi_matches_numpy(dim, spatial, pool, radius, ce_weight, ignore):
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(2, 3, *spatial)) * 2
    target = rng.integers(0, 3, size=(2, *spatial))
    if ignore:
        target[(rng.random(target.shape) < 0.3)] = IGNORE
        target[0, :pool] = IGNORE  # whole pooled cells ignored: their neighbourhoods leave the covariances
    loss = build_loss("rmi", pool=pool, radius=radius, ce_weight=ce_weight, ignore_index=IGNORE, reduction="none")
    value = loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(target))
    np.testing.assert_allclose(value.numpy(), np_rmi(logits, target, radius, pool, ce_weight), rtol=1e-4, atol=1e-5)


def test_rmi_alone_cannot_tell_inverted_from_perfect_so_ce_is_added():
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[:, 4:12, 2:9] = 1
    onehot = torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
    pure = build_loss("rmi", ce_weight=0.0)
    assert float(pure(10 * onehot, target)) == pytest.approx(float(pure(10 * (1 - onehot), target)), abs=1e-4)
    assert float(pure(10 * onehot, target)) < float(pure(torch.zeros_like(onehot), target))
    mixed = build_loss("rmi")
    assert float(mixed(10 * onehot, target)) < float(mixed(10 * (1 - onehot), target))


def test_rmi_shrinks_pooling_and_neighbourhood_on_small_inputs():
    # 2 voxels on one axis: fewer than radius cells, so the neighbourhood is 1 x 3 there; still finite.
    logits, target = torch.randn(2, 3, 2, 20), torch.randint(0, 3, (2, 2, 20))
    assert torch.isfinite(build_loss("rmi")(logits, target))


def np_robust_t(logits, target, nu, eps=1e-8):
    p, t, mask = np_parts(logits, target)
    out = []
    for b in range(p.shape[0]):
        d = mask[b].sum() * p.shape[1]
        delta2 = ((t[b] - p[b]) ** 2).sum()
        v = nu + eps
        nll = (-gammaln((v + d) / 2) + gammaln(v / 2) + d / 2 * np.log(np.pi * v)
               + (v + d) / 2 * np.log(1 + delta2 / v))
        out.append(nll / d)
    return np.array(out)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("nu", [0.5, 1.0, 7.0])
def test_robust_t_matches_numpy(nu, dim):
    logits, target = np_case(dim, seed=11, ignore=True)
    loss = build_loss("robust_t", nu=nu, ignore_index=IGNORE, reduction="none")
    value = loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(target))
    np.testing.assert_allclose(value.detach().numpy(), np_robust_t(logits, target, nu), rtol=1e-5, atol=1e-6)


def test_robust_t_learns_its_degrees_of_freedom():
    loss = build_loss("robust_t")
    assert [n for n, _ in loss.named_parameters()] == ["log_nu"]
    assert "log_nu" in loss.state_dict()
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    before = float(loss.nu)
    loss(logits, target).backward()
    assert loss.log_nu.grad is not None and loss.log_nu.grad != 0
    opt.step()
    assert float(loss.nu) != before
    restored = build_loss("robust_t")
    restored.load_state_dict(loss.state_dict())
    assert float(restored.nu) == pytest.approx(float(loss.nu))


def np_exp_log(logits, target, w_dice=0.8, w_ce=0.2, g_d=0.3, g_c=0.3, smooth=1.0, weight=None,
               include_background=True):
    tp, fp, fn = np_counts(logits, target, False)
    dice = ((2 * tp + smooth) / (2 * tp + fp + fn + smooth))[:, 0 if include_background else 1:]
    _, t, mask = np_parts(logits, target)
    pt = np.where(mask, (np_softmax(logits) * t).sum(1), 1.0)
    w = np.ones(logits.shape[1]) if weight is None else np.asarray(weight)
    ce = (w[np.where(mask, target, 0)] * (-np.log(pt)) ** g_c)[mask].mean()
    return w_dice * ((-np.log(dice)) ** g_d).mean(1).mean() + w_ce * ce


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("kwargs", [{}, {"gamma_dice": 1.0, "gamma_ce": 2.0, "smooth": 1e-5},
                                    {"w_dice": 0.5, "w_ce": 0.5, "weight": [0.2, 1.0, 2.0]},
                                    {"include_background": False}])
def test_exp_log_matches_numpy(kwargs, dim):
    logits, target = np_case(dim, seed=12, ignore=True)
    np_kwargs = {{"gamma_dice": "g_d", "gamma_ce": "g_c"}.get(k, k): v for k, v in kwargs.items()}
    value = build_loss("exp_log", ignore_index=IGNORE, **kwargs)(torch.tensor(logits, dtype=torch.float32),
                                                                 torch.tensor(target))
    assert float(value) == pytest.approx(np_exp_log(logits, target, **np_kwargs), rel=1e-5)


def np_unified_focal(logits, target, lam=0.5, delta=0.6, gamma=0.5, smooth=1e-5, batch=False):
    _, t, mask = np_parts(logits, target)
    pt = np.where(mask, (np_softmax(logits) * t).sum(1), 1.0)
    bg = np.where(mask, target, 0) == 0
    focal_voxel = np.where(bg, (1 - delta) * (1 - pt) ** gamma, delta) * -np.log(pt)
    focal = focal_voxel[mask].mean()
    tp, fp, fn = np_counts(logits, target, batch)
    mti = (tp + smooth) / (tp + delta * fn + (1 - delta) * fp + smooth)
    ft = np.concatenate([1 - mti[:, :1], (1 - mti[:, 1:]) ** (1 - gamma)], 1).mean(1).mean()
    return lam * focal + (1 - lam) * ft


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("kwargs", [{}, {"focal_weight": 0.2, "delta": 0.7, "gamma": 0.2, "batch": True}])
def test_unified_focal_matches_numpy(kwargs, dim):
    logits, target = np_case(dim, seed=13, ignore=True, num_classes=4)
    np_kwargs = {{"focal_weight": "lam"}.get(k, k): v for k, v in kwargs.items()}
    value = build_loss("unified_focal", ignore_index=IGNORE, **kwargs)(torch.tensor(logits, dtype=torch.float32),
                                                                       torch.tensor(target))
    assert float(value) == pytest.approx(np_unified_focal(logits, target, **np_kwargs), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Identities of LOSSES.md
# ---------------------------------------------------------------------------------------------------------------

def _random(dim, seed=14, ignore=True):
    logits, target = np_case(dim, seed, ignore)
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(target)


CTX = {"ignore_index": IGNORE}
IDENTITIES = [
    (("focal", {"gamma": 0.0}), ("ce", {})),
    (("topk", {"k": 100}), ("ce", {})),
    (("tversky", {"alpha": 0.5, "beta": 0.5}), ("dice", {})),
    (("tversky", {"alpha": 1.0, "beta": 1.0}), ("iou", {})),
    (("tversky", {"alpha": 0.5, "beta": 0.5, "include_background": True, "batch": True}),
     ("dice", {"include_background": True, "batch": True})),
    (("focal_tversky", {"gamma": 1.0}), ("tversky", {})),
    (("focal_tversky", {"gamma": 1.0, "alpha": 0.3, "beta": 0.9}), ("tversky", {"alpha": 0.3, "beta": 0.9})),
    (("combo", {"alpha": 0.0}), ("dice", {})),
    (("combo", {"alpha": 1.0, "beta": 1.0}), ("ce", {})),
    (("dice_topk", {"k": 100}), ("dice_ce", {})),
    (("dice_focal", {"gamma": 0.0}), ("dice_ce", {})),
    (("rmi", {"ce_weight": 1.0}), ("ce", {})),
    (("exp_log", {"w_dice": 0.0, "w_ce": 1.0, "gamma_ce": 1.0}), ("ce", {})),
]


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("left, right", IDENTITIES, ids=[f"{a[0]}{a[1]}={b[0]}" for a, b in IDENTITIES])
def test_identity(left, right, dim):
    logits, target = _random(dim)
    for reduction in ("mean", "none"):
        a = build_loss(left[0], context=CTX, reduction=reduction, **left[1])(logits, target)
        b = build_loss(right[0], context=CTX, reduction=reduction, **right[1])(logits, target)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dim", [2, 3])
def test_log_cosh_dice_below_dice(dim):
    logits, target = _random(dim)
    for scale in (0.1, 1.0, 5.0, -5.0):
        d = build_loss("dice", reduction="none")(scale * logits, target.clamp_max(2))
        lc = build_loss("log_cosh_dice", reduction="none")(scale * logits, target.clamp_max(2))
        assert ((d > 0) & (d <= 1)).all()
        assert (lc < d).all()
        torch.testing.assert_close(lc, torch.log(torch.cosh(d)))


def test_focal_down_weights_easy_voxels():
    # gamma > 0 lowers every voxel's loss, the confident right ones most.
    logits, target = _random(2, ignore=False)
    ce = build_loss("ce", reduction="none")(logits, target)
    focal = build_loss("focal", reduction="none")(logits, target)
    assert (focal < ce).all()


def test_tversky_alpha_weighs_false_negatives():
    # A prediction that misses foreground (false negatives only) is punished more with a larger alpha.
    target = torch.tensor([[[1, 1, 1, 0]]])
    logits = torch.tensor([[[[0.0, 4.0, 4.0, 4.0]], [[4.0, 0.0, 0.0, -4.0]]]])  # voxels 2, 3 missed
    fn_heavy = build_loss("tversky", alpha=0.9, beta=0.1)(logits, target)
    fp_heavy = build_loss("tversky", alpha=0.1, beta=0.9)(logits, target)
    assert fn_heavy > fp_heavy


@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_all_ignored_is_zero(classes):
    # Ignored voxels sort last with error 0; with nothing counted no class may score below 0.
    logits, target = torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), IGNORE)
    assert float(build_loss("lovasz", classes=classes, ignore_index=IGNORE)(logits, target)) == 0.0


def test_compound_strings_are_weighted_sums_of_registered_losses():
    logits, target = _random(3)
    compound = build_loss("tversky+0.5*topk+0.25*lovasz", context={"ignore_index": IGNORE, "batch": False},
                          **{"topk.k": 20, "tversky.alpha": 0.6})
    expected = (build_loss("tversky", alpha=0.6, ignore_index=IGNORE)(logits, target)
                + 0.5 * build_loss("topk", k=20, ignore_index=IGNORE)(logits, target)
                + 0.25 * build_loss("lovasz", batch=False, ignore_index=IGNORE)(logits, target))
    torch.testing.assert_close(compound(logits, target), expected)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_rmi_sums_its_term_over_classes(num_classes):
    # With every voxel ignored each class's conditional covariance is the regulariser eps I, so each class
    # adds 0.5 log(eps) (per dimension, and the value is divided by d): summed, as the reference code's
    # _IS_SUM = 1, the term is C times that, not its class mean.
    logits = torch.randn(1, num_classes, 16, 16)
    target = torch.full((1, 16, 16), IGNORE)
    value = build_loss("rmi", ce_weight=0.0, ignore_index=IGNORE)(logits, target)
    assert float(value) == pytest.approx(num_classes * 0.5 * math.log(5e-4), rel=1e-6)
    without_background = build_loss("rmi", ce_weight=0.0, ignore_index=IGNORE, include_background=False)
    assert float(without_background(logits, target)) == pytest.approx((num_classes - 1) * 0.5 * math.log(5e-4),
                                                                      rel=1e-6)


@pytest.mark.parametrize("spatial", [(18, 18), (21, 19), (14, 13, 15)])
def test_rmi_pools_over_the_reference_windows(spatial):
    # The reference code pools with avg_pool2d(kernel=stride=4, padding=2): the voxels its windows reach get
    # a gradient, the others (a trailing remainder on some sizes, e.g. the last column of 19) none. Pooling
    # without padding would drop the last columns of 18 (16 and 17) as well.
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, *spatial, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (1, *spatial), generator=g)
    build_loss("rmi", ce_weight=0.0)(logits, target).backward()
    probe = torch.ones(1, 1, *spatial, requires_grad=True)
    pool = torch.nn.functional.avg_pool2d if len(spatial) == 2 else torch.nn.functional.avg_pool3d
    pool(probe, kernel_size=4, stride=4, padding=2).sum().backward()
    reached = probe.grad[0, 0] > 0
    assert torch.equal(logits.grad.abs().sum(1)[0] > 0, reached)
    if spatial == (18, 18):
        assert reached.all()


@pytest.mark.parametrize("exponent, documented", [(0.3, 6.6e-3), (1 / 3, 3.8e-3), (0.5, 2.5e-4), (0.75, 3.3e-6)])
def test_linear_continuation_of_small_powers_changes_values_by_the_documented_amount(exponent, documented):
    # docs/losses.md and safe_pow's docstring give these maxima; above 1e-6 the power is exact.
    from autoseg.losses._functional import safe_pow

    x = torch.logspace(-12, 0, 200001, dtype=torch.float64)
    err = (safe_pow(x, exponent) - x ** exponent).abs()
    assert float(err.max()) == pytest.approx(documented, rel=0.02)
    assert float(err[x > 1e-6].max()) == 0


def test_focal_with_small_gamma_is_exact_to_1e_9_in_float64():
    # In the focal loss the continued power multiplies -log p < 1e-6, so the deviation is negligible there.
    g = torch.Generator().manual_seed(4)
    for scale in (1.0, 10.0, 16.0):
        logits = scale * torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
        target = torch.randint(0, 3, (2, 16, 16), generator=g)
        logp = np.log(np_softmax(logits.numpy()))
        pt = np.take_along_axis(logp, target.numpy()[:, None], 1)[:, 0]
        exact = (-pt * (-np.expm1(pt)) ** 0.3).mean()
        assert float(build_loss("focal", gamma=0.3)(logits, target)) == pytest.approx(exact, abs=1e-9)
