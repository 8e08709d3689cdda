"""benchmarks/boundary_epoch.py: which loss settings a --losses value times (the timing itself needs a quiet machine)."""

from __future__ import annotations

import pytest
from conftest import load_benchmark

from autoseg.grid.spec import GridError


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("boundary_epoch")


def test_losses_with_settings_and_the_baseline_first(bench):
    settings = bench.loss_settings("inverseform,active_boundary;inverseform:head_kernel=1,3")
    assert list(settings) == ["dice_ce", "inverseform", "active_boundary", "inverseform head_kernel=1",
                              "inverseform head_kernel=3"]
    assert settings["inverseform head_kernel=1"] == ("inverseform", {"head_kernel": 1})
    assert list(bench.loss_settings("dice_ce,boundary")) == ["dice_ce", "boundary"]  # no second baseline


def test_all_times_every_registered_loss(bench):
    from autoseg.losses import list_losses

    assert set(bench.loss_settings("all")) == set(list_losses())


def test_a_malformed_setting_is_refused_with_the_grid_message(bench):
    with pytest.raises(GridError, match="loss:key=v1,v2"):
        bench.loss_settings("inverseform:head_kernel")
