"""``autoseg plan`` on real data: the bundled Hippocampus sample and converted CamVid images, readable and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA, autoseg_cli

pytestmark = pytest.mark.slow


def _invariants(plan: dict, arch: str) -> None:
    divisors = [1] * len(plan["patch_size"])
    for s in plan["strides"]:
        divisors = [d * x for d, x in zip(divisors, s)]
    assert all(p % d == 0 for p, d in zip(plan["patch_size"], divisors)), plan
    if arch == "transformer":
        assert all(p % 32 == 0 for p in plan["patch_size"])
    assert plan["batch_size"] >= 2
    for key in ("patch_size", "batch_size", "estimated_seconds_per_iteration", "iterations", "epochs",
                "iterations_per_epoch", "reasons"):
        assert key in plan, key


def test_plan_hippocampus_json_text_and_plans_file(smoke_run):
    env = smoke_run["env"]
    work = str(smoke_run["work"])
    proc = autoseg_cli("plan", "--work-dir", work, "--limit-cases", "10", "--config", "3d_fullres,2d",
                       "--time-budget", "2h", "--runs", "4", "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    # one name per plan, whichever command made it: <base>_<arch>_plan_<digest of what was chosen>
    names = {n.rsplit("_", 1)[0]: n for n in summary["configurations"]}
    assert set(names) == {"3d_fullres_cnn_plan", "2d_cnn_plan"}
    for plan in summary["configurations"].values():
        _invariants(plan, "cnn")
        # the budget (2 h for 4 runs) is honoured by the cost model
        assert plan["estimated_seconds_per_iteration"] * plan["iterations"] <= 1800
    plans_file = smoke_run["work"] / "nnUNet_preprocessed" / summary["dataset"] / "nnUNetPlans.json"
    entry = json.loads(plans_file.read_text())["configurations"][names["3d_fullres_cnn_plan"]]
    assert entry["inherits_from"] == "3d_fullres"
    assert entry["autoseg"]["budget"]["iterations_per_epoch"] == summary["configurations"][
        names["3d_fullres_cnn_plan"]]["iterations_per_epoch"]
    assert "conv_s_per_flop" in entry["autoseg"]["cost_model"]

    text = autoseg_cli("plan", "--work-dir", work, "--limit-cases", "10", "--arch", "transformer",
                       "--features", "12", "--batch-size", "2", "--dry-run", env=env)
    assert text.returncode == 0, text.stderr[-3000:]
    for words in ("patch size", "batch size", "stages", "parameters", "time per iteration", "time per run", "why:",
                  "overrides", "median shape", "target spacing"):
        assert words in text.stdout, words


@pytest.mark.parametrize("args, message", [
    (["--patch-size", "41x56x40"], "must be divisible by 8"),
    (["--time-budget", "5s"], "nothing fits the budget"),
    (["--time-budget", "soon"], "cannot read the duration"),
    (["--arch", "transformer", "--features", "16"], "multiple of 12"),
])
def test_plan_cli_errors(args, message, smoke_run):
    proc = autoseg_cli("plan", "--work-dir", str(smoke_run["work"]), "--limit-cases", "10", "--dry-run", *args,
                       env=smoke_run["env"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def camvid_plans(tmp_path_factory):
    """`autoseg plan` of 8 converted CamVid images (RGB PNG, 2D): its JSON and nnU-Net's plans file."""
    import os

    work = tmp_path_factory.mktemp("camvid_plan")
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    conv = autoseg_cli("convert", "camvid", "--source", str(SHARED_DATA / "camvid"), "--limit", "4",
                       "--out", str(work / "raw"), "--quiet", env=env)
    assert conv.returncode == 0, conv.stderr[-3000:]
    proc = autoseg_cli("plan", "--dataset", str(next((work / "raw").glob("Dataset603_*"))), "--config", "2d",
                       "--work-dir", str(work / "w"), "--time-budget", "1h", "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    return summary, json.loads(Path(summary["plans_file"]).read_text())


@pytest.mark.skipif(not (SHARED_DATA / "camvid").is_dir(), reason="CamVid is not in ../shared/data")
@pytest.mark.parametrize("arch", ["cnn", "cnn_resenc", "transformer"])
def test_plan_camvid_2d(arch, camvid_plans):
    from test_planner import fake_costs

    from autoseg.plans.planner import PlanRequest, plan_configuration

    summary, camvid_plans = camvid_plans
    # the CLI's own plan, on this machine
    _invariants(next(c for n, c in summary["configurations"].items() if n.startswith("2d_cnn_plan_")), "cnn")
    plan = plan_configuration(camvid_plans, "2d", PlanRequest(arch=arch, time_budget_s=3600), fake_costs(), 8, 3, 12)
    d = plan.as_dict()
    _invariants(d, arch)
    assert len(plan.patch_size) == 2
    assert plan.estimated_seconds_per_iteration * plan.iterations <= 3600 * 0.8
    if arch != "transformer":
        assert all(p <= q for p, q in zip(plan.patch_size, camvid_plans["configurations"]["2d"]["patch_size"]))


def test_plan_and_train_with_a_time_budget_records_the_plan(smoke_run):
    """`plan_and_train --time-budget` trains the planner's configuration and records overrides with the result."""
    proc = autoseg_cli("plan_and_train", "--work-dir", str(smoke_run["work"]), "--limit-cases", "10",
                       "--time-budget", "20s", "--min-iterations", "5", "--features", "8", "--patch-size", "32x48x32",
                       "--json", env=smoke_run["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["configuration"].startswith("3d_fullres_cnn_plan_")
    assert result["plan"]["overrides"] == {"patch_size": [32, 48, 32], "features": [8]}
    meta = json.loads((Path(result["fold_dirs"]["0"]) / "autoseg.json").read_text())
    assert meta["plan"]["patch_size"] == [32, 48, 32] and meta["plan"]["features_per_stage"] == [8, 16, 32, 64]
    # the schedule fills 80 % of the budget by the cost model's estimate
    per_it = meta["plan"]["estimate"]["seconds_per_iteration"]
    n = meta["budget"]["epochs"] * meta["budget"]["iterations_per_epoch"]
    assert n >= 5 and per_it * n <= 20 * 0.8
    mixed = autoseg_cli("plan_and_train", "--work-dir", str(smoke_run["work"]), "--budget", "quick",
                        "--time-budget", "1h", env=smoke_run["env"])
    assert mixed.returncode == 2 and "give one or the other" in mixed.stderr
