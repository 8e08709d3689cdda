"""Without a budget option, data other than the bundled sample is planned for a time budget on a CPU, and says so."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import autoseg_cli


@pytest.mark.slow
def test_non_bundled_cpu_dataset_gets_a_plan_that_fits_the_default_budget(smoke_run, tmp_path):
    from autoseg.cli.plan_and_train import DEFAULT_CPU_TIME_BUDGET
    from autoseg.plans.planner import parse_duration

    raw = next((smoke_run["work"] / "nnUNet_raw").glob("Dataset*"))  # a raw folder: not the bundled sample
    proc = autoseg_cli("benchmark", "--dataset", str(raw), "--loss", "dice_ce", "--folds", "0", "--device", "cpu",
                       "--work-dir", str(tmp_path / "w"), "--dry-run", "--json", env=smoke_run["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"no budget option: on a CPU, data other than the bundled sample is planned for {DEFAULT_CPU_TIME_BUDGET} "
            "per run") in proc.stderr
    grid = json.loads(proc.stdout)
    (run,) = grid["runs"]
    assert "_plan_" in run["configuration"]
    assert 0 < grid["estimated_seconds"] <= parse_duration(DEFAULT_CPU_TIME_BUDGET)


def test_explicit_choices_keep_their_meaning():
    """--budget, --epochs and --time-budget stay explicit choices; bundled data keeps the quick preset."""
    from autoseg.cli.main import build_parser
    from autoseg.cli.plan_and_train import resolve_budget

    def resolve(*argv, dataset="/data/Dataset501_MR"):
        args = build_parser().parse_args(["plan_and_train", "--device", "cpu", *argv])
        return resolve_budget(args, [dataset])

    assert resolve("--budget", "quick") == ("quick", None)
    assert resolve("--epochs", "3") == ("quick", None)
    budget, plan = resolve("--time-budget", "10m")
    assert plan.time_budget_s == 600
    assert resolve(dataset=None) == ("quick", None)
    budget, plan = resolve()
    assert plan.time_budget_s == 1800


def test_corrected_estimate_after_the_first_epochs():
    from autoseg.trainers.base import nnUNetTrainerAutoseg

    trainer = SimpleNamespace(
        _epoch_seconds=[30.0, 10.0, 12.0], num_epochs=50, num_iterations_per_epoch=10,
        configuration_manager=SimpleNamespace(configuration={"autoseg": {"estimate": {"seconds_per_iteration": 0.5}}}))
    text = nnUNetTrainerAutoseg.corrected_estimate(trainer)
    # the first epoch (start-up) is left out: (10 + 12) / 2 = 11 s per epoch, 550 s = 9m10s for 50 epochs
    assert "11.0 s per epoch, training ~9m10s in all" in text
    assert "the plan estimated 5.0 s per epoch" in text and "measured/estimated 2.20" in text
    preset = SimpleNamespace(_epoch_seconds=[5.0, 4.0, 6.0], num_epochs=10, num_iterations_per_epoch=2,
                             configuration_manager=SimpleNamespace(configuration={}))
    assert nnUNetTrainerAutoseg.corrected_estimate(preset).endswith("5.0 s per epoch, training ~50s in all")
