"""Bad input gives clear errors: unknown names, out-of-range hyper-parameters, wrong shapes and dtypes, NaN logits."""

from __future__ import annotations

import inspect

import pytest
import torch

from autoseg.losses import UnknownLossError, build_loss, get_loss_info, list_losses, parse_loss_spec

LOSSES = list_losses()


@pytest.mark.parametrize("typo, suggestion", [("dcie", "dice"), ("tverskey", "tversky"),
                                              ("focal_tversy", "focal_tversky"), ("lovaz", "lovasz"),
                                              ("top_k", "topk")])
def test_unknown_name_suggests_close_names(typo, suggestion):
    with pytest.raises(UnknownLossError, match=f"unknown loss '{typo}'.*'{suggestion}'"):
        build_loss(typo)
    with pytest.raises(UnknownLossError):
        parse_loss_spec(f"dice+0.5*{typo}")


def test_unknown_hyper_parameter_names_the_accepted_ones():
    with pytest.raises(ValueError, match="has no hyper-parameter 'gama'.*gamma"):
        build_loss("focal", gama=2)


BAD_VALUES = [
    ("topk", {"k": 0}, "k"), ("topk", {"k": 101}, "k"), ("topk", {"k": -5}, "k"),
    ("focal", {"gamma": -1}, "gamma"), ("focal", {"alpha": 1.5}, "alpha"), ("focal", {"alpha": [0.5, -1]}, "alpha"),
    ("focal", {"gamma": float("nan")}, "gamma"),
    ("dice", {"smooth": -1}, "smooth"), ("iou", {"smooth": -1e-5}, "smooth"),
    ("tversky", {"alpha": -0.1}, "alpha"), ("tversky", {"beta": -1}, "beta"),
    ("tversky", {"alpha": 0, "beta": 0}, "alpha and beta"),
    ("focal_tversky", {"gamma": 0}, "gamma"), ("focal_tversky", {"alpha": -1}, "alpha"),
    ("focal_tversky", {"beta": -1}, "beta"),
    ("sens_spec", {"r": 1.5}, "r"), ("sens_spec", {"r": -0.1}, "r"),
    ("gwdl", {"distance_matrix": [[0, 1, 1], [1, 0, 1]]}, "distance_matrix"),
    ("gwdl", {"distance_matrix": [[1, 1], [1, 0]]}, "distance_matrix"),
    ("gwdl", {"distance_matrix": [[0, -1], [1, 0]]}, "distance_matrix"),
    ("lovasz", {"classes": "some"}, "classes"),
    ("rmi", {"radius": 0}, "radius"), ("rmi", {"pool": 2.5}, "pool"), ("rmi", {"ce_weight": 2}, "ce_weight"),
    ("robust_t", {"nu": 0}, "nu"), ("robust_t", {"epsilon": -1}, "epsilon"),
    ("combo", {"alpha": 2}, "alpha"), ("combo", {"beta": -1}, "beta"),
    ("exp_log", {"gamma_dice": 0}, "gamma_dice"), ("exp_log", {"gamma_ce": -1}, "gamma_ce"),
    ("exp_log", {"w_dice": -0.1}, "w_dice"), ("exp_log", {"w_ce": -1}, "w_ce"),
    ("exp_log", {"w_dice": 0, "w_ce": 0}, "w_dice and w_ce"), ("exp_log", {"weight": [1, -1, 1]}, "weight"),
    ("unified_focal", {"delta": 1.2}, "delta"), ("unified_focal", {"focal_weight": -0.5}, "focal_weight"),
    ("unified_focal", {"gamma": 2}, "gamma"),
    ("dice_topk", {"k": 0}, "k"), ("dice_focal", {"gamma": -2}, "gamma"),
    ("dice_ce", {"weight_dice": -1}, "weight"), ("dice_ce", {"weight_ce": -1}, "weight"),
    ("dice_topk", {"weight_dice": -1}, "weight"), ("dice_topk", {"weight_topk": -1}, "weight"),
    ("dice_focal", {"weight_dice": -1}, "weight"), ("dice_focal", {"weight_focal": -1}, "weight"),
    ("dice_focal", {"weight_dice": 0, "weight_focal": 0}, "weight"),
    ("boundary", {"alpha_start": -0.01}, "alpha_start"), ("boundary", {"alpha_step": -1}, "alpha_step"),
    ("boundary", {"alpha_max": -1}, "alpha_max"), ("boundary", {"spacing": (1.0, 0.0)}, "spacing"),
    ("hausdorff_dt", {"alpha": 0}, "alpha"), ("hausdorff_dt", {"spacing": (1.0, -2.0)}, "spacing"),
    ("dmce", {"spacing": (float("nan"), 1.0)}, "spacing"), ("region_wise", {"spacing": (0, 1)}, "spacing"),
    ("skeleton_recall", {"weight": -1}, "weight"), ("skeleton_recall", {"smooth_recall": 0}, "smooth_recall"),
    ("boundary_aware", {"num_bins": 1}, "num_bins"), ("boundary_aware", {"num_bins": 2.5}, "num_bins"),
    ("boundary_aware", {"weight": -1}, "weight"),
    ("inverseform", {"beta": -1}, "beta"), ("inverseform", {"gamma": float("nan")}, "gamma"),
    ("inverseform", {"network": "/nonexistent/net.pt"}, "network"),
    ("inverseform", {"head_kernel": 5}, "head_kernel"), ("inverseform", {"network_dtype": "half"}, "network_dtype"),
    ("conditional_boundary", {"weight_a2c": -1}, "weight_a2c"), ("conditional_boundary", {"weight_a2pn": -1}, "weight_a2pn"),
    ("conditional_boundary", {"temperature": 0}, "temperature"), ("conditional_boundary", {"radius": 0}, "radius"),
    ("conditional_boundary", {"max_samples": 0}, "max_samples"),
    ("conditional_boundary", {"embedding_dim": 0}, "embedding_dim"), ("conditional_boundary", {"seed": -1}, "seed"),
    ("conditional_boundary", {"head_kernel": 2}, "head_kernel"),
    ("hausdorff_er", {"erosions": 0}, "erosions"), ("hausdorff_er", {"alpha": -1}, "alpha"),
    ("hausdorff_er", {"weight_dice": -1}, "weight_dice"), ("boundary_dou", {"alpha_max": 1.0}, "alpha_max"),
    ("cldice", {"alpha": 1.5}, "alpha"), ("cldice", {"iterations": -1}, "iterations"),
    ("active_boundary", {"weight_ce": -1}, "weight_ce"), ("active_boundary", {"weight_abl": -1}, "weight_abl"),
    ("active_boundary", {"max_clip_dist": 0}, "max_clip_dist"), ("active_boundary", {"max_n_ratio": 0}, "max_n_ratio"),
    ("active_boundary", {"label_smoothing": 1}, "label_smoothing"),
]


@pytest.mark.parametrize("name, kwargs, param", BAD_VALUES, ids=[f"{n}-{list(k)[0]}" for n, k, _ in BAD_VALUES])
def test_bad_hyper_parameter_value_fails_at_construction(name, kwargs, param):
    with pytest.raises(ValueError, match=param):
        build_loss(name, **kwargs)


@pytest.mark.parametrize("name", LOSSES)
def test_bad_reduction(name):
    with pytest.raises(ValueError, match="reduction"):
        build_loss(name, reduction="average")


def test_every_bounded_hyper_parameter_is_checked():
    # Each loss's numeric hyper-parameters appear in the table above, so none is left unvalidated silently
    # (smooth is shared by the region losses and tested on two of them).
    checked = {(n, k) for n, kw, _ in BAD_VALUES for k in kw}
    for name in LOSSES:
        info = get_loss_info(name)
        numeric = [k for k, v in info.hyper_parameters.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "smooth"]
        missing = [k for k in numeric if (name, k) not in checked]
        assert not missing, f"{name}: no bad-value test for {missing}"


def _inputs(dim=2):
    shape = (2, 3, 6, 6) if dim == 2 else (2, 3, 4, 4, 4)
    return torch.randn(shape), torch.randint(0, 3, (shape[0], *shape[2:]))


@pytest.mark.parametrize("name", LOSSES)
def test_wrong_inputs_raise_clear_errors(name):
    loss = build_loss(name)
    logits, target = _inputs()
    with pytest.raises(ValueError, match="target shape"):
        loss(logits, target[:, :4])
    with pytest.raises(ValueError, match="target shape"):
        loss(logits, target[:1])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        loss(logits[0], target[0])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        loss(logits[:, :, :, :, None, None], target[:, :, :, None, None])
    with pytest.raises(TypeError, match="integer tensor"):
        loss(logits, target.float())
    with pytest.raises(TypeError, match="floating point"):
        loss(logits.long(), target)
    with pytest.raises(TypeError, match="torch.Tensor"):
        loss(logits.numpy(), target)
    with pytest.raises(ValueError, match="outside"):
        loss(logits, target + 3)
    with pytest.raises(ValueError, match="at least 2 channels"):
        loss(logits[:, :1], torch.zeros_like(target))
    nan = logits.clone()
    nan[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        loss(nan, target)
    inf = logits.clone()
    inf[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        loss(inf, target)


@pytest.mark.parametrize("name", LOSSES)
def test_ignore_label_only_valid_when_declared(name):
    logits, target = _inputs(3)
    target[0, 0, 0, 0] = 255
    with pytest.raises(ValueError, match="ignore_index"):
        build_loss(name)(logits, target)
    assert torch.isfinite(build_loss(name, ignore_index=255)(logits, target))


def test_class_count_mismatches():
    logits, target = _inputs()
    with pytest.raises(ValueError, match="distance_matrix"):
        build_loss("gwdl", distance_matrix=[[0, 1], [1, 0]])(logits, target)
    with pytest.raises(ValueError, match="alpha"):
        build_loss("focal", alpha=[0.2, 0.8])(logits, target)
    with pytest.raises(ValueError, match="weight"):
        build_loss("exp_log", weight=[1.0, 2.0])(logits, target)


@pytest.mark.parametrize("name", LOSSES)
def test_functions_validate_like_modules(name):
    fn = get_loss_info(name).function
    logits, target = _inputs()
    if "reduction" in inspect.signature(fn).parameters:
        with pytest.raises(ValueError, match="reduction"):
            fn(logits, target, reduction="average")
