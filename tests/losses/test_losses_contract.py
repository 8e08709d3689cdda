"""The contract every registered loss keeps, parametrised over ``list_losses()`` so new entries are tested at once."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest
import torch

from autoseg.losses import CATEGORIES, build_loss, get_loss_info, list_losses
from autoseg.losses.maps import MAP_KINDS, compute_maps_torch

C = 3
IGNORE = 255
SHAPES = {2: (2, C, 16, 16), 3: (2, C, 8, 8, 8)}
LOSSES = list_losses()


def accepted(name: str) -> set[str]:
    return set(inspect.signature(get_loss_info(name).cls.__init__).parameters) - {"self"}


def make(name: str, **kwargs):
    """The loss with ``kwargs`` it accepts (others dropped), as a trainer would build it."""
    ok = accepted(name)
    return build_loss(name, **{k: v for k, v in kwargs.items() if k in ok})


def inputs(dim: int, seed: int = 0, ignore: bool = False):
    g = torch.Generator().manual_seed(seed)
    shape = SHAPES[dim]
    logits = torch.randn(shape, generator=g)
    target = torch.randint(0, C, (shape[0], *shape[2:]), generator=g)
    if ignore:
        target[torch.rand(target.shape, generator=g) < 0.3] = IGNORE
    return logits, target


def value_and_grad(loss, logits, target, **extras):
    x = logits.clone().requires_grad_(True)
    value = loss(x, target, **extras)
    value.sum().backward()
    return value.detach(), x.grad


def test_registry_holds_the_issue_losses():
    expected = {"ce", "topk", "focal", "dice", "log_cosh_dice", "gwdl", "iou", "lovasz", "tversky", "focal_tversky",
                "sens_spec", "rmi", "robust_t", "combo", "exp_log", "unified_focal", "dice_ce", "dice_topk",
                "dice_focal"}
    assert expected <= set(LOSSES)


@pytest.mark.parametrize("name", LOSSES)
def test_metadata(name):
    info = get_loss_info(name)
    assert info.category in CATEGORIES
    assert info.citation and info.summary
    assert info.function is not None and info.function.__module__ == info.cls.__module__
    params = inspect.signature(info.cls.__init__).parameters
    for key, default in info.hyper_parameters.items():
        assert params[key].default == default
    # Constructible from defaults plus the context a trainer passes.
    loss = build_loss(name, context={"ignore_index": IGNORE, "batch": True})
    assert bool(list(loss.parameters())) == info.learnable
    assert "ignore_index" in params and "reduction" in params


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", LOSSES)
def test_target_shapes_agree(name, dim):
    logits, target = inputs(dim, ignore=True)
    loss = make(name, ignore_index=IGNORE)
    torch.testing.assert_close(loss(logits, target), loss(logits, target.unsqueeze(1)), rtol=0, atol=0)
    torch.testing.assert_close(loss(logits, target), loss(logits, target.to(torch.int16).unsqueeze(1)), rtol=0,
                               atol=0)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", LOSSES)
def test_reduction_shapes(name, dim):
    logits, target = inputs(dim)
    b = logits.shape[0]
    values = {r: make(name, reduction=r, batch=False)(logits, target) for r in ("mean", "sum", "none")}
    assert values["mean"].shape == () and values["sum"].shape == ()
    assert values["none"].shape == (b,)
    if "batch" in accepted(name):
        batch_none = make(name, reduction="none", batch=True)(logits, target)
        assert batch_none.shape in {(1,), (b,)}
        assert torch.isfinite(batch_none).all()
    # Per-case values are the losses of each case on its own.
    single = make(name, reduction="none", batch=False)(logits[:1], target[:1])
    torch.testing.assert_close(values["none"][:1], single, rtol=1e-5, atol=1e-6)


def _edge_case(case: str, dim: int):
    logits, target = inputs(dim, seed=1)
    if case == "empty_foreground":
        target = torch.zeros_like(target)
    elif case == "all_ignore":
        target = torch.full_like(target, IGNORE)
    elif case == "extreme_1e4":
        logits = 1e4 * torch.sign(logits)
    elif case == "extreme_1e30":
        logits = 1e30 * torch.sign(logits)
    elif case == "confident_wrong":
        logits = 1e4 * torch.nn.functional.one_hot((target + 1) % C, C).movedim(-1, 1).float()
    elif case == "confident_right":
        logits = 1e4 * torch.nn.functional.one_hot(target, C).movedim(-1, 1).float()
    return logits, target


@pytest.mark.parametrize("case", ["empty_foreground", "all_ignore", "extreme_1e4", "extreme_1e30",
                                  "confident_wrong", "confident_right"])
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", LOSSES)
def test_finite_value_and_gradient(name, dim, case):
    logits, target = _edge_case(case, dim)
    for batch in (False, True):
        value, grad = value_and_grad(make(name, ignore_index=IGNORE, batch=batch), logits, target)
        assert torch.isfinite(value).all(), f"{name} {case} batch={batch}: value {value}"
        assert torch.isfinite(grad).all(), f"{name} {case} batch={batch}: gradient not finite"
        if case == "all_ignore":
            assert not grad.any(), "every voxel is ignored, so no logit may get a gradient"


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", LOSSES)
def test_perfect_below_random_below_inverted(name, dim):
    logits, target = inputs(dim, seed=2)
    onehot = torch.nn.functional.one_hot(target, C).movedim(-1, 1).float()
    inverted = torch.nn.functional.one_hot((target + 1) % C, C).movedim(-1, 1).float()
    loss = make(name)
    perfect, random, worst = loss(20 * onehot, target), loss(logits, target), loss(20 * inverted, target)
    assert perfect < random < worst, f"{name}: perfect {perfect}, random {random}, inverted {worst}"


@pytest.mark.parametrize("ignore_index", [IGNORE, C])
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", LOSSES)
def test_ignored_voxels_change_nothing(name, dim, ignore_index):
    logits, target = inputs(dim, seed=3, ignore=True)
    target[target == IGNORE] = ignore_index
    ignored = (target == ignore_index).unsqueeze(1).expand_as(logits)
    assert ignored.any() and not ignored.all()
    other = torch.where(ignored, 10 * torch.randn_like(logits), logits)
    for batch in (False, True):
        loss = make(name, ignore_index=ignore_index, batch=batch, reduction="none")
        v1, g1 = value_and_grad(loss, logits, target)
        v2, g2 = value_and_grad(loss, other, target)
        torch.testing.assert_close(v1, v2, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-8)
        assert not g1[ignored].any(), f"{name}: ignored voxels received a gradient"
        assert g1[~ignored].abs().sum() > 0


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", LOSSES)
def test_function_equals_module(name, dim):
    info = get_loss_info(name)
    logits, target = inputs(dim, seed=4, ignore=True)
    settings = [{"ignore_index": IGNORE},
                {"ignore_index": IGNORE, "reduction": "none", "batch": True, "include_background": True},
                {"ignore_index": IGNORE, "reduction": "sum", "smooth": 1e-3}]
    for kwargs in settings:
        kwargs = {k: v for k, v in kwargs.items() if k in accepted(name)}
        torch.testing.assert_close(info.function(logits, target, **kwargs), info.cls(**kwargs)(logits, target),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck_float64(name):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, C, 5, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, C, (2, 5, 5), generator=g)
    target[0, 0, :2] = IGNORE
    loss = make(name, ignore_index=IGNORE, reduction="none").double()
    assert loss(logits, target).dtype == torch.float64
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, target), (x,), eps=1e-6, atol=1e-6, rtol=1e-4,
                                     fast_mode=True)


@pytest.mark.parametrize("name", LOSSES)
def test_low_precision_logits_are_computed_in_float32(name):
    logits, target = inputs(2, seed=6)
    half = logits.to(torch.bfloat16)
    loss = make(name)
    value = loss(half, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(half.float(), target), rtol=0, atol=0)


def test_docstring_examples_run():
    modules = sorted({get_loss_info(n).cls.__module__ for n in LOSSES})
    tested = 0
    for module_name in modules:
        result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, f"doctest failed in {module_name}"
        tested += result.attempted
    assert tested >= len(LOSSES) - 3  # every loss function carries an example (compounds share dice_ce's)


@pytest.mark.parametrize("name", LOSSES)
def test_autocast_does_not_lower_precision(name):
    # nnU-Net computes its loss inside autocast; no loss may let it move a sum or product to half precision.
    logits, target = inputs(3, seed=7)
    loss = make(name)
    expected = loss(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(logits, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_tiny_deep_supervision_outputs(name):
    # nnU-Net's coarsest deep-supervision outputs can be a few voxels wide; no loss may fail on them.
    loss = make(name, ignore_index=IGNORE, batch=True)
    for spatial in [(2, 2, 2), (1, 3, 4), (1, 1), (2, 5)]:
        logits = torch.randn(2, C, *spatial, requires_grad=True)
        target = torch.randint(0, C, (2, 1, *spatial))
        value = loss(logits, target)
        value.sum().backward()
        assert torch.isfinite(value).all() and torch.isfinite(logits.grad).all(), f"{name} failed at {spatial}"


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_descent_on_the_logits_lowers_the_loss(name):
    # The gradient points downhill: a few Adam steps on free logits reduce the loss and raise the accuracy.
    g = torch.Generator().manual_seed(8)
    target = torch.randint(0, C, (2, 8, 8), generator=g)
    target[:, :2] = IGNORE
    logits = torch.randn(2, C, 8, 8, generator=g).requires_grad_(True)
    loss = make(name, ignore_index=IGNORE)
    opt = torch.optim.Adam([logits], lr=0.2)
    with torch.no_grad():
        first = float(loss(logits, target))
    for _ in range(20):
        opt.zero_grad()
        loss(logits, target).backward()
        opt.step()
    counted = target != IGNORE
    accuracy = (logits.argmax(1) == target)[counted].float().mean()
    with torch.no_grad():
        assert float(loss(logits, target)) < first - 1e-3
    assert accuracy > 0.9, f"{name}: accuracy {accuracy:.2f} after descent"


# ------------------------------------------------------------------ losses that declare extra inputs
EXTRA_LOSSES = [n for n in LOSSES if get_loss_info(n).extra_inputs]


@pytest.mark.parametrize("name", LOSSES)
def test_declared_extra_inputs_are_keywords_of_forward(name):
    # The trainer hands maps in as keywords named as in extra_inputs; forward must take them (or **extras).
    info = get_loss_info(name)
    params = inspect.signature(info.cls.forward).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for extra in info.extra_inputs:
        assert takes_any or extra in params, f"{name} declares {extra!r} but forward() does not take it"


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", EXTRA_LOSSES)
def test_loss_with_extra_inputs_works_standalone(name, dim):
    # build_loss(name)(logits, target) with nothing else: the loss computes what it needs from the target.
    logits, target = inputs(dim, seed=9, ignore=True)
    loss = make(name, ignore_index=IGNORE)
    value, grad = value_and_grad(loss, logits, target)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    clean = target.clone()
    clean[clean == IGNORE] = 0
    onehot = torch.nn.functional.one_hot(clean, C).movedim(-1, 1).float()
    inverted = torch.nn.functional.one_hot((clean + 1) % C, C).movedim(-1, 1).float()
    plain = make(name)
    assert plain(20 * onehot, clean) < plain(logits, clean) < plain(20 * inverted, clean)


MAP_LOSSES = [n for n in EXTRA_LOSSES if set(get_loss_info(n).extra_inputs) <= set(MAP_KINDS)]


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", MAP_LOSSES)
def test_maps_handed_in_equal_standalone(name, dim, batch):
    # The trainer hands in maps the workers computed with autoseg.losses.maps; value and gradient must
    # be those of the standalone call, which computes the same maps from the target.
    logits, target = inputs(dim, seed=11, ignore=True)
    loss = make(name, ignore_index=IGNORE, batch=batch, reduction="none")
    maps = compute_maps_torch(target, C, get_loss_info(name).extra_inputs, ignore_index=IGNORE)
    v1, g1 = value_and_grad(loss, logits, target)
    x = logits.clone().requires_grad_(True)
    v2 = loss(x, target, **maps)
    v2.sum().backward()
    torch.testing.assert_close(v2.detach(), v1, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, g1, rtol=0, atol=0)
    # and inside a compound, which passes each component only its own maps
    compound = build_loss(f"dice+{name}", ignore_index=IGNORE)
    torch.testing.assert_close(compound(logits, target, **maps), compound(logits, target), rtol=0, atol=0)


def _probe_loss(logits, target, weight_map=None, ignore_index=None, reduction="mean"):
    """Cross-entropy weighted per voxel by ``weight_map`` of the reference class (1 when none is handed in)."""
    from autoseg.losses._functional import gathered_log_probabilities, masked_voxel_mean, valid_mask
    from autoseg.losses._validation import check_logits_target

    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    logp, safe = gathered_log_probabilities(logits, target, mask)
    w = None if weight_map is None else weight_map.float().gather(1, safe.unsqueeze(1)).squeeze(1)
    return masked_voxel_mean(-logp, mask, reduction, w)


def test_contract_runs_on_a_loss_that_takes_extras(monkeypatch):
    """Every per-loss contract test above accepts a loss whose forward takes ``**extras`` and which declares one."""
    from autoseg.losses import SegmentationLoss, register_loss
    from autoseg.losses import registry as registry_module

    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    @register_loss("contract_probe_maps", category="pixel", citation="test probe", function=_probe_loss)
    class ProbeMapsLoss(SegmentationLoss):
        """Cross-entropy weighted by a per-class map handed in by the trainer (all ones standalone)."""

        extra_inputs = ("weight_map",)

        def forward(self, logits, target, **extras):
            self.check_inputs(logits, target, extras)
            return _probe_loss(logits, target, extras.get("weight_map"), self.ignore_index, self.reduction)

    name = "contract_probe_maps"
    monkeypatch.setattr(ProbeMapsLoss, "__module__", __name__)  # the function lives here too
    test_metadata(name)
    test_declared_extra_inputs_are_keywords_of_forward(name)
    test_gradcheck_float64(name)
    test_low_precision_logits_are_computed_in_float32(name)
    test_autocast_does_not_lower_precision(name)
    test_tiny_deep_supervision_outputs(name)
    test_gradient_descent_on_the_logits_lowers_the_loss(name)
    for dim in (2, 3):
        test_target_shapes_agree(name, dim)
        test_reduction_shapes(name, dim)
        test_perfect_below_random_below_inverted(name, dim)
        test_ignored_voxels_change_nothing(name, dim, IGNORE)
        test_function_equals_module(name, dim)
        test_loss_with_extra_inputs_works_standalone(name, dim)
        for case in ("all_ignore", "extreme_1e30", "confident_wrong"):
            test_finite_value_and_gradient(name, dim, case)
    # A map handed in is used: doubling the weight of class 1 changes the value.
    logits, target = inputs(2, seed=10)
    loss = build_loss(name)
    ones = torch.ones_like(logits)
    heavier = ones.clone()
    heavier[:, 1] = 2
    assert torch.equal(loss(logits, target), loss(logits, target, weight_map=ones))
    assert not torch.equal(loss(logits, target), loss(logits, target, weight_map=heavier))
