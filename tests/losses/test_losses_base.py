"""The public loss base: shared keyword-only arguments, extra inputs, the epoch hook, discovery of loss modules."""

from __future__ import annotations

import inspect
import sys
import textwrap

import pytest
import torch

from autoseg.losses import RegionLoss, SegmentationLoss, build_loss, get_loss_info, list_losses, register_loss
from autoseg.losses import registry as registry_module
from autoseg.losses.compound import CompoundLoss

LOSSES = list_losses()
SHARED = ("ignore_index", "reduction", "include_background", "batch", "smooth")
C = 3


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, C, 32, 32, generator=g)  # RMI pools by 4: 8 x 8 cells
    target = torch.randint(0, C, (2, 32, 32), generator=g)
    target[1, :16] = 0  # the two cases differ in class balance, so batch and per-case ratios differ
    return logits, target


@pytest.fixture
def scratch_registry():
    """Registrations made by a test are removed afterwards, so they never leak into other tests."""
    before = dict(registry_module._REGISTRY)
    yield
    registry_module._REGISTRY.clear()
    registry_module._REGISTRY.update(before)


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_is_a_segmentation_loss_with_keyword_only_shared_arguments(name):
    cls = get_loss_info(name).cls
    assert issubclass(cls, SegmentationLoss)
    params = inspect.signature(cls.__init__).parameters
    for arg in SHARED:
        if arg in params:
            assert params[arg].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {arg} must be keyword-only"


# Two values of each shared argument that must give different results on _inputs(); an argument a loss
# accepts but ignores would fail here.
VARIANTS = {
    "ignore_index": (None, 1),
    "reduction": ("mean", "sum"),
    "include_background": (False, True),
    "batch": (False, True),
    "smooth": (1e-5, 10.0),
}


def _accepted(name: str) -> set[str]:
    return set(inspect.signature(get_loss_info(name).cls.__init__).parameters) - {"self"}


SHARED_PAIRS = [(n, a) for n in LOSSES for a in SHARED if a in _accepted(n)]


@pytest.mark.parametrize("name, arg", SHARED_PAIRS)
def test_no_shared_argument_is_accepted_and_ignored(name, arg):
    logits, target = _inputs()
    a, b = VARIANTS[arg]
    # Per-case values, so that mean and sum differ for batch losses (lovasz is batch by default) too.
    base = {"batch": False} if "batch" in _accepted(name) and arg != "batch" else {}
    va, vb = (build_loss(name, **base, **{arg: v})(logits, target) for v in (a, b))
    assert not torch.allclose(va, vb, rtol=1e-6, atol=1e-7), f"{name}: {arg}={a} and {arg}={b} give the same value"


def test_region_loss_stores_and_checks_the_shared_arguments():
    loss = build_loss("dice", include_background=True, batch=True, smooth=0.5, ignore_index=4, reduction="sum")
    assert isinstance(loss, RegionLoss)
    assert loss.region_kwargs() == dict(ignore_index=4, include_background=True, batch=True, smooth=0.5,
                                        reduction="sum")
    assert "ignore_index=4" in repr(loss) and "batch=True" in repr(loss)
    with pytest.raises(TypeError, match="include_background must be True or False"):
        build_loss("dice", include_background="False")
    with pytest.raises(TypeError, match="ignore_index must be an integer label or None"):
        build_loss("ce", ignore_index="255")
    with pytest.raises(TypeError, match="ignore_index"):
        build_loss("ce", ignore_index=True)
    import numpy as np

    assert build_loss("ce", ignore_index=np.int64(255)).ignore_index == 255  # plans files give numpy ints
    assert build_loss("dice", batch=np.bool_(True)).batch is True


def test_base_forward_must_be_implemented_and_epoch_hook_defaults_to_nothing():
    class NoForward(SegmentationLoss):
        pass

    loss = NoForward()
    assert loss.on_epoch_start(3, 10) is None
    with pytest.raises(NotImplementedError, match="NoForward must implement forward"):
        loss(*_inputs())


class _Recorder(SegmentationLoss):
    """A test loss that records what it was handed; its value is the mean of its extras (or 0)."""

    def __init__(self, extra_inputs: tuple[str, ...] = (), *, ignore_index=None, reduction="mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.extra_inputs = extra_inputs
        self.seen: list[tuple[str, ...]] = []
        self.epochs: list[tuple[int, int]] = []

    def forward(self, logits, target, **extras):
        self.check_inputs(logits, target, extras)
        self.seen.append(tuple(sorted(extras)))
        return sum((v.mean() for v in extras.values()), logits.sum() * 0)

    def on_epoch_start(self, epoch, num_epochs):
        self.epochs.append((epoch, num_epochs))


def test_compound_unions_extra_inputs_and_hands_each_component_only_its_own():
    a, b, c = _Recorder(("signed_distance",)), _Recorder(("skeleton", "signed_distance")), _Recorder()
    compound = CompoundLoss([("a", a), ("b", b), ("c", c)], [1.0, 2.0, 1.0])
    assert compound.extra_inputs == ("signed_distance", "skeleton")
    logits, target = _inputs()
    sd, sk = torch.ones_like(logits), 3 * torch.ones_like(logits)
    value = compound(logits, target, signed_distance=sd, skeleton=sk)
    assert a.seen == [("signed_distance",)] and b.seen == [("signed_distance", "skeleton")] and c.seen == [()]
    assert float(value) == pytest.approx(1 * 1 + 2 * (1 + 3) + 0)
    compound(logits, target)  # standalone: nothing handed in, nothing passed on
    assert a.seen[-1] == () and b.seen[-1] == ()
    compound.on_epoch_start(4, 50)
    assert a.epochs == b.epochs == c.epochs == [(4, 50)]


def test_undeclared_or_misshaped_extra_inputs_are_refused():
    logits, target = _inputs()
    compound = CompoundLoss([("a", _Recorder(("signed_distance",)))], [1.0])
    with pytest.raises(TypeError, match=r"declares \['signed_distance'\], got extra inputs \['skeleton'\]"):
        compound(logits, target, skeleton=torch.zeros_like(logits))
    with pytest.raises(ValueError, match="extra input 'signed_distance'.*logits' scale"):
        compound(logits, target, signed_distance=torch.zeros(2, C, 16, 16))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        compound(logits, target, signed_distance=[1.0])
    plain = _Recorder()
    with pytest.raises(TypeError, match="takes no extra inputs"):
        plain(logits, target, skeleton=torch.zeros_like(logits))


def test_compound_of_registered_losses_is_a_segmentation_loss_that_forwards_the_hook():
    loss = build_loss("dice+0.5*topk", ignore_index=4)
    assert isinstance(loss, SegmentationLoss) and loss.extra_inputs == () and loss.learnable is False
    assert build_loss("robust_t+dice").learnable is True
    with pytest.raises(TypeError, match="must be a SegmentationLoss"):
        CompoundLoss([("x", torch.nn.MSELoss())], [1.0])


def test_registry_reads_extra_inputs_and_learnable_from_the_class(scratch_registry):
    @register_loss("h9a_test_maps", category="boundary", citation="test")
    class MapsLoss(SegmentationLoss):
        """A loss that declares a map."""

        extra_inputs = ("signed_distance",)
        learnable = True

        def forward(self, logits, target, **extras):
            return logits.sum() * 0

    info = get_loss_info("h9a_test_maps")
    assert info.extra_inputs == ("signed_distance",) and info.learnable is True
    assert info.as_dict()["extra_inputs"] == ["signed_distance"]
    assert info.hyper_parameters == {}  # ignore_index and reduction are plumbing, listed apart


def test_registry_keeps_the_old_decorator_arguments(scratch_registry):
    @register_loss("h9a_test_legacy", category="boundary", citation="test", extra_inputs=("skeleton",),
                   learnable=False)
    class LegacyLoss(SegmentationLoss):
        """Declared the old way."""

    assert LegacyLoss.extra_inputs == ("skeleton",)
    assert get_loss_info("h9a_test_legacy").extra_inputs == ("skeleton",)
    with pytest.raises(ValueError, match="extra_inputs"):
        @register_loss("h9a_test_conflict", category="boundary", citation="test", extra_inputs=("skeleton",))
        class Conflicting(SegmentationLoss):
            """Says two different things."""

            extra_inputs = ("signed_distance",)


def test_registry_refuses_classes_that_are_not_segmentation_losses(scratch_registry):
    with pytest.raises(TypeError, match="must subclass autoseg.losses.base.SegmentationLoss"):
        @register_loss("h9a_test_plain", category="pixel", citation="test")
        class Plain(torch.nn.Module):
            """Not a SegmentationLoss."""
    with pytest.raises(TypeError, match="extra_inputs must be a tuple"):
        @register_loss("h9a_test_list", category="pixel", citation="test")
        class Listed(SegmentationLoss):
            """A list instead of a tuple."""

            extra_inputs = ["skeleton"]  # type: ignore[assignment]


def test_every_loss_module_registers_a_loss():
    # The discovery imports every public module under autoseg/losses/<category>/; each must define a loss.
    modules = registry_module.loss_modules()
    assert "autoseg.losses.region.dice" in modules and "autoseg.losses.compound" in modules
    assert not any(m.rsplit(".", 1)[-1].startswith("_") for m in modules)
    assert registry_module.modules_without_losses() == []
    assert {get_loss_info(n).cls.__module__ for n in LOSSES} <= set(modules)


def test_a_new_loss_file_is_discovered_and_an_empty_one_is_reported(tmp_path, monkeypatch, scratch_registry):
    # A throw-away category package on sys.path stands in for autoseg/losses/<category>/: dropping a file
    # in registers its loss with no other edit, and a file that registers nothing is reported.
    pkg = tmp_path / "h9a_fake_category"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""fake category"""\n')
    (pkg / "newloss.py").write_text(textwrap.dedent('''
        from autoseg.losses import SegmentationLoss, register_loss

        def new_loss(logits, target, ignore_index=None, reduction="mean"):
            return logits.sum() * 0

        @register_loss("h9a_test_new", category="pixel", citation="test", function=new_loss)
        class NewLoss(SegmentationLoss):
            """A loss in its own file."""

            def forward(self, logits, target):
                return new_loss(logits, target)
    '''))
    (pkg / "forgotten.py").write_text('"""defines a loss class but forgot @register_loss"""\n')
    (pkg / "_helpers.py").write_text('"""private: not a loss module"""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "LOSS_PACKAGES", registry_module.LOSS_PACKAGES + ("h9a_fake_category",))
    monkeypatch.setattr(registry_module, "_LOADED", False)
    try:
        assert "h9a_test_new" in list_losses()
        assert registry_module.modules_without_losses() == ["h9a_fake_category.forgotten"]
    finally:
        for mod in [m for m in sys.modules if m.startswith("h9a_fake_category")]:
            del sys.modules[mod]
