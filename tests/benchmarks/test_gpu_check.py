"""The GPU recipe (benchmarks/gpu_check.py) runs end to end in its CPU dry mode, so it is ready for a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_check_dry_run_end_to_end(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    assert list(report["steps"]) == ["torch", "cuda_tests", "losses", "standard", "boundary", "transformer"]
    assert all(step["ok"] for step in report["steps"].values())
    # without a GPU the CUDA tests are collected and every one skips itself
    assert "skipped" in report["steps"]["cuda_tests"]["summary"]
    assert "passed" not in report["steps"]["cuda_tests"]["summary"]
    for name, config in (("standard", "3d_fullres_smoke"), ("boundary", "3d_fullres_smoke"),
                         ("transformer", "3d_fullres_smoke_transformer")):
        step = report["steps"][name]
        assert step["configuration"] == config
        assert step["device"] == "cpu" and step["mixed_precision"] is False
        # the smoke budget trains 2 epochs: both epoch times were read from nnU-Net's own log
        assert step["epochs"] == 2 and all(s > 0 for s in step["epoch_s"])
        assert 0.0 <= step["mean_dice"] <= 1.0
        assert len(step["train_loss"]) == 2  # nnU-Net's logged training loss of each epoch
    assert report["steps"]["boundary"]["loss"] == "hausdorff_dt"
    assert "dice_ce" in report["steps"]["losses"]["table"]
    md = (out / "gpu_check.md").read_text()
    assert "DRY RUN on the CPU" in md and "| standard | yes |" in md and "| boundary | yes |" in md and "| transformer | yes |" in md


def test_gpu_check_without_gpu_stops_and_says_so(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the no-GPU refusal cannot be shown here")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(report["steps"]) == ["torch"]
    assert "no CUDA GPU" in report["steps"]["torch"]["note"]
