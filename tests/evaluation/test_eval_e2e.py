"""End to end: ``autoseg evaluate`` and ``autoseg report`` on a real nnU-Net results tree (the shared smoke run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_evaluate_and_report_a_real_nnunet_run(smoke_run, tmp_path):
    from conftest import autoseg_cli

    from autoseg.evaluation.collect import read_table

    work = Path(smoke_run["work"])
    results = work / "nnUNet_results"
    table = tmp_path / "evaluation.csv"
    proc = autoseg_cli("evaluate", str(results), "--preprocessed", str(work / "nnUNet_preprocessed"),
                       "--out", str(table), env=smoke_run["env"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_table(table)
    combo = [r for r in rows if r["method"] == "combo" and r["fold"] == "0"]
    fold = Path(smoke_run["result"]["fold_dirs"]["0"])
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(combo) == 2 * len(summary["metric_per_case"])  # two classes per validation case
    assert {r["budget"] for r in combo} == {"smoke"} and {r["class_name"] for r in combo} == {"anterior", "posterior"}
    # nnU-Net's own Dice and IoU of the same predictions (it leaves a structure empty in both as NaN)
    ours = {(r["case"], r["label"]): r for r in combo}
    for entry in summary["metric_per_case"]:
        case = Path(entry["prediction_file"]).name.removesuffix(".nii.gz")
        for label, m in entry["metrics"].items():
            r = ours[(case, int(label))]
            if m["n_ref"] + m["n_pred"] == 0:
                assert math.isnan(m["Dice"]) and r["dice"] == 1.0
            else:
                assert r["dice"] == pytest.approx(m["Dice"], abs=1e-9)
                assert r["iou"] == pytest.approx(m["IoU"], abs=1e-9)
            assert (r["tp"], r["fp"], r["fn"]) == (m["TP"], m["FP"], m["FN"])
            assert r["hd95"] >= 0 and 0 <= r["nsd"] <= 1
    out = tmp_path / "report"
    proc = autoseg_cli("report", str(results), "--preprocessed", str(work / "nnUNet_preprocessed"),
                       "--raw", str(work / "nnUNet_raw"), "--out", str(out), "--bootstrap", "100",
                       env=smoke_run["env"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "report.md").read_text()
    assert "combo" in md and "smoke" in md and (out / "report.html").stat().st_size > 10_000
    assert any(p.name.startswith("progress_") for p in (out / "figures").iterdir())
    assert any(p.name.startswith("qualitative_") for p in (out / "figures").iterdir())
