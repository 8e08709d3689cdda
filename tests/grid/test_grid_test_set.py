"""``autoseg benchmark --test-set`` on real CamVid images: each run predicts the held-out test set with its own model,
its record keeps the test rows, and a report from the result store alone shows the same test tables as one from
the results folder.

Eight training and three test images (160 x 120, every class present), the smoke budget of 2 epochs x 2 iterations:
the numbers mean nothing, what is checked is what is scored. Expected values are recomputed here with numpy from the
PNG files, not with autoseg's metric code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, autoseg_cli, camvid_subset
from PIL import Image

from autoseg.records import read_record

CAMVID = next((p for p in (SHARED_DATA / "camvid", Path("/work/shared/data/camvid")) if (p / "CamVid").is_dir()),
              SHARED_DATA / "camvid")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CAMVID / "CamVid").is_dir(), reason="CamVid is not in ../shared/data")]

VOID = 11
DATASET = "Dataset603_CamVid"
BUDGET = ["--dataset", "603", "--config", "2d", "--budget", "smoke", "--epochs", "2", "--iterations", "2",
          "--device", "cpu", "--no-verify", "-np", "1", "--folds", "0"]


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def _counts_by_hand(pred_path: Path, ref_path: Path) -> dict[int, tuple[int, int, int]]:
    """(tp, fp, fn) of every class 0..10 in one image, void pixels of the reference left out."""
    pred, ref = _png(pred_path), _png(ref_path)
    assert pred.shape == ref.shape
    keep = ref != VOID
    p, r = pred[keep], ref[keep]
    return {c: (int(np.sum((p == c) & (r == c))), int(np.sum((p == c) & (r != c))), int(np.sum((p != c) & (r == c))))
            for c in range(11)}


def _cli(*args, env):
    proc = autoseg_cli(*args, env=env)
    assert proc.returncode in (0, 1), proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    work = tmp_path_factory.mktemp("grid_test_set")
    camvid_subset(CAMVID / "CamVid", work / "src" / "CamVid", VOID)
    env = {"nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "1", "AUTOSEG_HOME": str(work)}
    conv = autoseg_cli("convert", "camvid", "--source", str(work / "src"), "--out", str(work / "nnUNet_raw"),
                       "--size", "160x120", "--quiet", env=env)
    assert conv.returncode == 0, conv.stderr[-3000:]
    common = [*BUDGET, "--work-dir", str(work), "--json"]
    # dice_ce without the test set, then the same grid with it: the done run gets its test scores, not retrained
    off = _cli("benchmark", "--loss", "dice_ce", *common, "--test-set", "off", env=env)
    off_records = {r.run_id: r for r in map(read_record, (work / "autoseg_store").rglob("autoseg.json"))}
    on = _cli("benchmark", "--loss", "dice_ce", *common, "--test-set", "on", env=env)
    # ce with one test image corrupted: its test prediction fails, its training and validation stand
    raw = work / "nnUNet_raw" / DATASET
    broken = sorted((raw / "imagesTs").glob("*.png"))[1]
    saved = broken.read_bytes()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    try:
        failed = _cli("benchmark", "--loss", "ce", *common, "--test-set", "on", env=env)
    finally:
        broken.write_bytes(saved)
    return {"work": work, "env": env, "raw": raw, "off": off, "off_records": off_records, "on": on,
            "failed": failed, "broken": broken.name}


def _record(work: Path, loss: str):
    (path,) = [p for p in (work / "autoseg_store").rglob("autoseg.json") if f"_autoseg_{loss}__" in str(p)]
    return read_record(path)


def test_test_set_off_gives_no_test_block_and_a_done_run_gets_it_without_training(grid):
    assert grid["off"].returncode == 0, grid["off"].stderr[-3000:]
    (before,) = grid["off_records"].values()
    assert before.done and before.test is None and before.evaluation["rows"]
    assert grid["on"].returncode == 0, grid["on"].stderr[-3000:]
    assert "predicts it with its own model" in grid["on"].stderr
    after = _record(grid["work"], "dice_ce")
    assert after.done and after.test is not None
    # not trained again: same attempt, same finish, one training log
    assert after.attempts == before.attempts == 1 and after.finished == before.finished
    fold_dir = grid["work"] / "nnUNet_results" / after.run_id
    assert len(list(fold_dir.glob("training_log_*.txt"))) == 1
    assert after.evaluation == before.evaluation


def test_record_test_rows_match_an_independent_scoring_of_the_fold_predictions(grid):
    rec = _record(grid["work"], "dice_ce")
    folder = grid["work"] / "nnUNet_results" / rec.dataset / rec.run_dir_name / "test_predictions" / "fold_0"
    meta = json.loads((folder / "autoseg_test.json").read_text())
    assert meta["folds"] == [0] and meta["checkpoint"] == "checkpoint_final.pth" and meta["status"] == "done"
    # the run's own fold only: no ensemble folder written by a grid run
    assert not (folder.parent / "ensemble").exists()
    t = rec.test
    assert t["predictor"] == "fold_0" and t["checkpoint"] == "final" and t["state"] == "evaluated (test set)"
    assert t["tolerance_mm"] == 2.0 and t["distances"] == "auto" and t["metrics_version"]
    labels = sorted((grid["raw"] / "labelsTs").glob("*.png"))
    assert len(labels) == 3 and len(t["rows"]) == 3 * 11
    rows = {(r["case"], r["label"]): r for r in t["rows"]}
    assert {r["split"] for r in t["rows"]} == {"test"} and "fold" not in t["rows"][0]
    for ref in labels:
        for c, (tp, fp, fn) in _counts_by_hand(folder / ref.name, ref).items():
            r = rows[(ref.name[:-4], c)]
            assert (r["tp"], r["fp"], r["fn"]) == (tp, fp, fn), (ref.name, c)
            if tp + fp + fn:
                assert r["iou"] == pytest.approx(tp / (tp + fp + fn), abs=1e-12)


def test_failed_test_prediction_is_recorded_and_the_run_keeps_its_validation(grid):
    proc = grid["failed"]
    assert proc.returncode == 0, proc.stderr[-3000:]  # the run is done: the command does not fail
    (run,) = json.loads(proc.stdout)["runs"]
    assert run["state"] == "done"
    rec = _record(grid["work"], "ce")
    assert rec.done and rec.error is None and rec.evaluation["rows"] and rec.per_case
    assert rec.test["state"].startswith("failed: ") and rec.test["rows"] == []
    fold_dir = grid["work"] / "nnUNet_results" / rec.run_id
    assert (fold_dir / "autoseg_test_error.txt").is_file()


def test_store_report_shows_the_same_test_tables_as_the_results_folder(grid, tmp_path):
    import csv

    work, env = grid["work"], grid["env"]
    copy = tmp_path / "store_copy"
    shutil.copytree(work / "autoseg_store", copy, ignore=shutil.ignore_patterns(".*"))
    assert not list(copy.rglob("*.png")) and not list(copy.rglob("test_predictions"))
    tables, runs = {}, {}
    for name, folder in (("results", work / "nnUNet_results"), ("store", copy)):
        out = tmp_path / f"report_{name}"
        extra = (["--preprocessed", str(work / "nnUNet_preprocessed"), "--raw", str(work / "nnUNet_raw")]
                 if name == "results" else [])
        proc = autoseg_cli("report", str(folder), "--out", str(out), "--bootstrap", "20", *extra, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        tables[name] = {f.name: sorted(line.rsplit(",", 1)[0] if f.name.startswith("cost_") else line
                                       for line in f.read_text().splitlines())
                        for f in (out / "tables").glob("*.csv") if f.name != "metrics_runs.csv"}
        with open(out / "tables" / "metrics_runs.csv") as f:
            runs[name] = list(csv.DictReader(f))
    test_tables = [n for n in tables["store"] if n.startswith("iou_test_")]
    assert test_tables and all(n.endswith("_0.csv") for n in test_tables)  # predicted by fold 0
    with open(tmp_path / "report_store" / "tables" / "metrics.csv") as f:
        test_rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    assert len(test_rows) == 3 * 11 and {(r["method"], r["fold"]) for r in test_rows} == {("dice_ce", "0")}
    assert tables["store"] == tables["results"]
    assert "predicted by fold 0" in (tmp_path / "report_store" / "report.md").read_text()
    # the failed test prediction is listed, with its error, in the store's run list
    assert any("failed" in r["state"] and r["method"] == "ce" for r in runs["store"])
    # the store reads the test rows from the records; the results folder scores the predictions
    assert any("from the run's record" in r["state"] and r["method"] == "dice_ce" and r["fold"] == "0"
               for r in runs["store"] if "test set" in r["state"])
