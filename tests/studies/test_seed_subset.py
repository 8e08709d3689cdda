"""scripts/seed_subset.py: which CamVid losses get seeds 2 and 3 (dice_ce and the five best after seed 1)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

from autoseg.losses import list_losses

REPO = Path(__file__).resolve().parents[2]
seed_subset = load_script("seed_subset")


def write_report(root: Path, status: dict[str, str], delta: dict[str, float]) -> Path:
    tables = root / "tables"
    tables.mkdir(parents=True)
    with open(tables / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "configuration", "architecture", "budget", "loss", "loss args", "fold", "seed", "status",
                    "cases", "newly computed"])
        for name, state in status.items():
            w.writerow(["D", "2d", "cnn", "quick", name, "{}", 5, 1, state, 51, 0])
            w.writerow(["D", "2d", "cnn", "quick", name, "{}", 5, 2, "missing", 0, 0])  # other seeds are ignored
    with open(tables / "vs_baseline_test_D_2d_5.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["loss", "Δ mIoU vs dice_ce (points)", "95% CI", "permutation p (Holm)"])
        for name, d in delta.items():
            w.writerow([name, f"{d:+.2f}", "[0, 0]", "1"])
    return root


def test_the_five_furthest_above_the_baseline_with_it(tmp_path):
    losses = ["dice_ce", "a", "b", "c", "d", "e", "f", "g"]
    status = dict.fromkeys(losses, "done") | {"g": "failed"}
    delta = {"a": -1.0, "b": 4.1, "c": 0.5, "d": 2.0, "e": 0.5, "f": 3.0}  # the failed run has no row
    report = write_report(tmp_path, status, delta)
    # ties are broken by name, so every machine writes the same list
    assert seed_subset.choose(report, losses) == ["dice_ce", "b", "f", "d", "c", "e"]
    assert seed_subset.choose(report, losses, n_best=2) == ["dice_ce", "b", "f"]


def test_after_more_seeds_the_seed_1_column_decides(tmp_path):
    """Once seeds 2 and 3 are in, the comparison table averages them; the choice after seed 1 is read from the seed-1
    column of the seeds table (b - dice_ce = 3.0 > a - dice_ce = 1.0), not from the averaged differences (a first)."""
    losses = ["dice_ce", "a", "b"]
    report = write_report(tmp_path, dict.fromkeys(losses, "done"), {"a": 2.0, "b": 0.5})
    with open(report / "tables" / "seeds_test_D_2d_5.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["loss", "seeds", "seed 1 mIoU (%)", "seed 2 mIoU (%)", "mean over seeds (%)"])
        w.writerows([["a", 2, "21.00", "24.00", "22.50"], ["b", 1, "23.00", "-", "23.00"],
                     ["dice_ce", 2, "20.00", "20.00", "20.00"]])
    assert seed_subset.choose(report, losses, n_best=2) == ["dice_ce", "b", "a"]


def test_refuses_while_seed_1_is_incomplete(tmp_path):
    losses = ["dice_ce", "a", "b", "c"]
    report = write_report(tmp_path, {"dice_ce": "done", "a": "done", "b": "running"}, {"a": 1.0})
    with pytest.raises(ValueError, match="seed 1 is not complete: no ended run for b, c"):
        seed_subset.choose(report, losses)


def test_the_committed_camvid_report_is_refused_until_seed_1_is_in(tmp_path):
    # the real report over the committed store; once seed 1 is complete the list is written and committed
    committed = REPO / "docs" / "studies" / "camvid" / "seed_losses.txt"
    out = tmp_path / "seeds.txt"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "seed_subset.py"),
                           str(REPO / "docs" / "studies" / "camvid" / "report"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    if committed.exists():
        assert proc.returncode == 0, proc.stderr
        assert out.read_text() == committed.read_text()
        chosen = out.read_text().strip().split(",")
        assert chosen[0] == "dice_ce" and len(chosen) == 6 and set(chosen) <= set(list_losses())
    else:
        assert proc.returncode == 1 and "seed 1 is not complete" in proc.stderr
        assert not out.exists()
