"""``autoseg plan`` on real data: the bundled Hippocampus sample and converted CamVid images, readable and JSON."""

from __future__ import annotations

import json

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
    assert set(summary["configurations"]) == {"3d_fullres_cnn_plan", "2d_cnn_plan"}
    for plan in summary["configurations"].values():
        _invariants(plan, "cnn")
        # the budget (2 h for 4 runs) is honoured by the cost model
        assert plan["estimated_seconds_per_iteration"] * plan["iterations"] <= 1800
    plans_file = smoke_run["work"] / "nnUNet_preprocessed" / summary["dataset"] / "nnUNetPlans.json"
    entry = json.loads(plans_file.read_text())["configurations"]["3d_fullres_cnn_plan"]
    assert entry["inherits_from"] == "3d_fullres"
    assert entry["autoseg"]["budget"]["iterations_per_epoch"] == summary["configurations"]["3d_fullres_cnn_plan"][
        "iterations_per_epoch"]
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


@pytest.mark.skipif(not (SHARED_DATA / "camvid").is_dir(), reason="CamVid is not in ../shared/data")
@pytest.mark.parametrize("arch", ["cnn", "transformer"])
def test_plan_camvid_2d(arch, tmp_path_factory, smoke_run):
    work = tmp_path_factory.getbasetemp() / "camvid_plan_work"
    env = smoke_run["env"]
    if not (work / "nnUNet_raw").is_dir():
        conv = autoseg_cli("convert", "camvid", "--source", str(SHARED_DATA / "camvid"), "--limit", "6",
                           "--out", str(work / "nnUNet_raw"), "--quiet", env=env)
        assert conv.returncode == 0, conv.stderr[-3000:]
    proc = autoseg_cli("plan", "--work-dir", str(work), "--dataset", str(next((work / "nnUNet_raw").iterdir())),
                       "--config", "2d", "--arch", arch, "--time-budget", "1h", "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = next(iter(json.loads(proc.stdout)["configurations"].values()))
    _invariants(plan, arch)
    assert len(plan["patch_size"]) == 2
