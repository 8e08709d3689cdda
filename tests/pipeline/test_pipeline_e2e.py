"""End to end: ``autoseg plan_and_train`` on a few bundled cases, then nnU-Net's own commands on its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import N_CASES

pytestmark = pytest.mark.slow


def test_json_result_and_files(smoke_run):
    r = smoke_run["result"]
    assert r["loss"] == "combo" and r["folds"] == [0] and r["budget"] == "smoke"
    assert r["configuration"] == "3d_fullres_smoke"
    assert r["trainer"] == "nnUNetTrainer_autoseg_combo"
    assert set(r["per_class_dice"]) == {"anterior", "posterior"}
    assert 0.0 <= r["mean_dice"] <= 1.0
    assert r["n_validation_cases"] == N_CASES // 5
    fold = Path(r["fold_dirs"]["0"])
    assert fold == Path(r["output_dir"]) / "fold_0"
    for name in ("checkpoint_final.pth", "validation/summary.json", "progress.png", "autoseg.json"):
        assert (fold / name).is_file(), name
    meta = json.loads((fold / "autoseg.json").read_text())
    assert meta["status"] == "done" and meta["loss"] == "combo" and meta["budget"]["epochs"] == 2
    # mean_dice is the mean over classes of the case-averaged Dice nnU-Net wrote
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    for label, name in ((1, "anterior"), (2, "posterior")):
        values = [c["metrics"][str(label)]["Dice"] for c in summary["metric_per_case"]]
        assert r["per_class_dice"][name] == pytest.approx(sum(values) / len(values), abs=1e-9)
    # one validation prediction per validation case, same geometry as the reference
    preds = sorted((fold / "validation").glob("*.nii.gz"))
    assert len(preds) == r["n_validation_cases"]
    ref = Path(smoke_run["work"]) / "nnUNet_preprocessed" / r["dataset"] / "gt_segmentations" / preds[0].name
    assert sitk.ReadImage(str(preds[0])).GetSize() == sitk.ReadImage(str(ref)).GetSize()
    assert "epoch    1/2" in smoke_run["stderr"] and "left ~" in smoke_run["stderr"]


def test_console_is_quiet_and_states_the_cost_first(smoke_run):
    """autoseg's own lines on the console, the cost before training; nnU-Net's output in the log file named."""
    err = smoke_run["stderr"]
    cost = "cost of each fold: 2 epochs x 2 training iterations (+ 1 validation iterations per epoch)"
    assert cost in err and "per fold on this cpu by the planner's cost model" in err
    assert err.index(cost) < err.index("epoch    1/2")
    line = next(x for x in err.splitlines() if x.startswith("nnU-Net's own output goes to "))
    log = Path(line[len("nnU-Net's own output goes to "):].split(" (--verbose")[0])
    assert log.is_file() and log.parent == Path(smoke_run["work"]) / "logs"
    text = log.read_text()
    # nnU-Net's plan dictionaries and progress bars went to the log, not to the console
    for noise in ("3D fullres U-Net configuration", "Extracting dataset fingerprint", "Using device"):
        assert noise in text and noise not in err, noise
    assert "epoch    1/2" not in text


def test_rerun_reuses_finished_fold(smoke_run):
    from conftest import autoseg_cli

    fold = Path(smoke_run["result"]["fold_dirs"]["0"])
    before = (fold / "checkpoint_final.pth").stat().st_mtime_ns
    proc = autoseg_cli("plan_and_train", "--loss", "combo", "--budget", "smoke", "--limit-cases", str(N_CASES),
                       "--work-dir", str(smoke_run["work"]), "--json", env=smoke_run["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout)
    assert again["reused_folds"] == [0]
    assert again["mean_dice"] == pytest.approx(smoke_run["result"]["mean_dice"])
    assert (fold / "checkpoint_final.pth").stat().st_mtime_ns == before
    assert "reusing it, not retraining" in proc.stderr


def test_nnunet_commands_find_and_use_generated_trainer(smoke_run, tmp_path):
    """`nnUNetv2_train -tr nnUNetTrainer_autoseg_dice_ce` and `nnUNetv2_predict` through nnUNet_extTrainer."""
    r = smoke_run["result"]
    env = dict(smoke_run["env"])
    out = subprocess.run([sys.executable, "-m", "autoseg", "nnunet-env", "--work-dir",
                          str(smoke_run["work"])], capture_output=True, text=True, env=env, check=True).stdout
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    env["nnUNet_n_proc_DA"] = "0"
    bindir = Path(sys.executable).parent
    train = subprocess.run([str(bindir / "nnUNetv2_train"), r["dataset"], r["configuration"], "1", "-tr",
                            "nnUNetTrainer_autoseg_dice_ce", "-device", "cpu"],
                           capture_output=True, text=True, env=env, timeout=900)
    assert train.returncode == 0, (train.stdout[-3000:], train.stderr[-3000:])
    fold1 = Path(env["nnUNet_results"]) / r["dataset"] / f"nnUNetTrainer_autoseg_dice_ce__nnUNetPlans__{r['configuration']}" / "fold_1"
    assert (fold1 / "checkpoint_final.pth").is_file()
    assert (fold1 / "validation" / "summary.json").is_file()
    # the smoke budget from the plans file was applied: 2 epochs
    log = next(fold1.glob("training_log_*.txt")).read_text()
    assert "Epoch 1" in log and "Epoch 2" not in log

    images = Path(env["nnUNet_raw"]) / r["dataset"] / "imagesTr"
    inp = tmp_path / "in"
    inp.mkdir()
    case = sorted(images.glob("*_0000.nii.gz"))[0]
    os.symlink(case, inp / case.name)
    pred = subprocess.run([str(bindir / "nnUNetv2_predict"), "-i", str(inp), "-o", str(tmp_path / "out"), "-d",
                           r["dataset"], "-c", r["configuration"], "-tr", r["trainer"], "-f", "0", "-device", "cpu",
                           "--disable_tta", "-npp", "1", "-nps", "1"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert pred.returncode == 0, (pred.stdout[-3000:], pred.stderr[-3000:])
    out_file = tmp_path / "out" / case.name.replace("_0000", "")
    assert out_file.is_file()
    assert sitk.ReadImage(str(out_file)).GetSize() == sitk.ReadImage(str(case)).GetSize()
