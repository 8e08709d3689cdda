"""End to end on real CamVid images: ``autoseg convert``, ``plan_and_train`` with two losses and the held-out test set,
a plain ``nnUNetv2_train`` run, then ``autoseg evaluate`` and ``autoseg report``.

Eight training and three test images in which all eleven classes occur, downsized to 160 x 120, the smoke budget:
numbers are meaningless, what is checked is what is scored and how. Expected values are recomputed here with plain
numpy (one confusion matrix per class over the images), not with autoseg's metric code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, autoseg_cli, camvid_subset
from PIL import Image

# ../shared/data beside the checkout, else the shared folder of the development machine (as tests/data does)
CAMVID = next((p for p in (SHARED_DATA / "camvid", Path("/work/shared/data/camvid")) if (p / "CamVid").is_dir()),
              SHARED_DATA / "camvid")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CAMVID / "CamVid").is_dir(), reason="CamVid is not in ../shared/data")]

CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
           "bicyclist"]
VOID = 11
DATASET = "Dataset603_CamVid"
CONFIG = "2d_smoke"
LOSSES = ("dice_ce", "ce")


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _iou_by_hand(pairs: list[tuple[Path, Path]]) -> np.ndarray:
    """IoU per class 0..10 from one confusion matrix summed over the images, void pixels of the reference left out."""
    cm = np.zeros((VOID, VOID), np.int64)
    for pred_path, ref_path in pairs:
        pred, ref = _png(pred_path).astype(np.int64), _png(ref_path).astype(np.int64)
        assert pred.shape == ref.shape
        keep = ref != VOID
        cm += np.bincount(ref[keep] * VOID + pred[keep], minlength=VOID * VOID).reshape(VOID, VOID)
    tp = np.diag(cm)
    return tp / (cm.sum(0) + cm.sum(1) - tp)


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    work = tmp_path_factory.mktemp("camvid_e2e")
    camvid_subset(CAMVID / "CamVid", work / "src" / "CamVid", VOID)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_def_n_proc="1", OMP_NUM_THREADS="1")
    conv = autoseg_cli("convert", "camvid", "--source", str(work / "src"), "--out", str(work / "nnUNet_raw"),
                       "--size", "160x120", "--quiet", env=env)
    assert conv.returncode == 0, conv.stderr[-3000:]
    runs = {}
    for loss in LOSSES:
        proc = autoseg_cli("plan_and_train", "--loss", loss, "--dataset", "603", "--config", "2d", "--budget", "smoke",
                           "--device", "cpu", "--no-verify", "-np", "1", "--work-dir", str(work), "--json", env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[loss] = json.loads(proc.stdout)
    return {"work": work, "env": env, "runs": runs, "raw": work / "nnUNet_raw" / DATASET}


def test_plan_and_train_reports_iou_of_all_classes_sky_included(camvid):
    pre = camvid["work"] / "nnUNet_preprocessed" / DATASET / "gt_segmentations"
    for r in camvid["runs"].values():
        assert r["natural_image"] is True
        assert r["headline"]["metric"] == "mIoU" and r["headline"]["aggregation"] == "dataset_confusion_matrix"
        assert list(r["per_class_iou"]) == CLASSES  # sky under its real name, nothing left out
        assert "mean_dice" not in r and "per_class_dice" not in r  # no foreground Dice posing as the result
        fold = Path(r["fold_dirs"]["0"])
        preds = sorted((fold / "validation").glob("*.png"))
        assert len(preds) == r["n_validation_cases"] == 2
        expected = _iou_by_hand([(p, pre / p.name) for p in preds])
        got = np.array([r["per_class_iou"][c] for c in CLASSES], dtype=float)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        assert r["validation"]["absent"] == [] and "over 11 classes" in r["validation"]["headline"]
        assert r["miou"] == pytest.approx(float(np.mean(expected)), abs=1e-12)


def test_test_set_predicted_with_the_final_checkpoint_and_scored(camvid):
    labels = camvid["raw"] / "labelsTs"
    assert len(list(labels.glob("*.png"))) == 3
    for r in camvid["runs"].values():
        t = r["test_set"]
        assert t["mode"] == "auto" and t["predicted"] and "cheap enough on a CPU" in t["reason"]
        (ens,) = t["predictions"]
        assert ens["name"] == "ensemble" and ens["folds"] == [0] and ens["n_cases"] == 3
        folder = Path(ens["folder"])
        assert folder == Path(r["output_dir"]) / "test_predictions" / "ensemble"
        meta = json.loads((folder / "autoseg_test.json").read_text())
        assert meta["checkpoint"] == "checkpoint_final.pth" and meta["status"] == "done"
        final = Path(r["fold_dirs"]["0"]) / "checkpoint_final.pth"
        assert meta["checkpoints"]["0"] == f"{final.stat().st_size}:{final.stat().st_mtime_ns}"
        pairs = [(folder / p.name, p) for p in sorted(labels.glob("*.png"))]
        for pred, ref in pairs:  # full-size label maps of the test images, every value a class
            assert _png(pred).shape == _png(ref).shape and _png(pred).max() < VOID
        expected = _iou_by_hand(pairs)
        s = ens["scores"]
        assert s["metric"] == "iou" and list(s["per_class"]) == CLASSES
        np.testing.assert_allclose([s["per_class"][c] for c in CLASSES], expected, rtol=0, atol=1e-12)
        assert s["mean"] == pytest.approx(float(np.mean(expected)), abs=1e-12)


def test_predict_test_redoes_only_what_a_new_checkpoint_changed(camvid):
    results = camvid["work"] / "nnUNet_results" / DATASET
    r = camvid["runs"]["dice_ce"]
    final = Path(r["fold_dirs"]["0"]) / "checkpoint_final.pth"
    os.utime(final, ns=(final.stat().st_atime_ns, final.stat().st_mtime_ns + 10**9))  # as if fold 0 was retrained
    proc = autoseg_cli("predict-test", str(results), "--device", "cpu", "--json", env=camvid["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_run = {Path(e["run_dir"]).name.split("__")[0]: e for e in json.loads(proc.stdout)}
    assert by_run["nnUNetTrainer_autoseg_dice_ce"]["predictions"][0]["n_predicted"] == 3
    assert by_run["nnUNetTrainer_autoseg_ce"]["predictions"][0]["n_predicted"] == 0
    again = by_run["nnUNetTrainer_autoseg_ce"]["predictions"][0]["scores"]
    assert again["per_class"] == camvid["runs"]["ce"]["test_set"]["predictions"][0]["scores"]["per_class"]


def test_plain_nnunet_run_is_scored_as_natural_image(camvid, tmp_path):
    """`nnUNetv2_train` without autoseg.json: the evaluation reads natural_image and sky from the autoseg block."""
    work, env = camvid["work"], dict(camvid["env"])
    out = subprocess.run([sys.executable, "-m", "autoseg", "nnunet-env", "--work-dir", str(work)],
                         capture_output=True, text=True, env=env, check=True).stdout
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    plain = tmp_path / "plain_results"
    env.update(nnUNet_results=str(plain), nnUNet_n_proc_DA="0")
    bindir = Path(sys.executable).parent
    train = subprocess.run([str(bindir / "nnUNetv2_train"), DATASET, CONFIG, "0", "-tr", "nnUNetTrainer_autoseg_dice_ce",
                            "-device", "cpu"], capture_output=True, text=True, env=env, timeout=900)
    assert train.returncode == 0, (train.stdout[-3000:], train.stderr[-3000:])
    fold = plain / DATASET / f"nnUNetTrainer_autoseg_dice_ce__nnUNetPlans__{CONFIG}" / "fold_0"
    assert not (fold / "autoseg.json").exists()
    table = tmp_path / "evaluation.csv"
    proc = autoseg_cli("evaluate", str(plain), "--preprocessed", str(work / "nnUNet_preprocessed"),
                       "--raw", str(work / "nnUNet_raw"), "--out", str(table), env=camvid["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    from autoseg.evaluation.collect import read_table

    rows = [r for r in read_table(table) if r.get("split", "cv") == "cv"]
    assert rows and all(r["natural_image"] for r in rows)
    assert sorted({(r["label"], r["class_name"]) for r in rows}) == list(enumerate(CLASSES))
    preds = sorted((fold / "validation").glob("*.png"))
    pre = work / "nnUNet_preprocessed" / DATASET / "gt_segmentations"
    for p in preds:
        tp = {r["label"]: r["tp"] for r in rows if r["case"] == p.stem}
        pred, ref = _png(p), _png(pre / p.name)
        assert [tp[c] for c in range(11)] == [int(np.sum((pred == c) & (ref == c))) for c in range(11)]


def test_report_shows_the_test_set_apart_from_cross_validation(camvid, tmp_path):
    import csv

    from autoseg.evaluation.collect import read_table

    work = camvid["work"]
    out = tmp_path / "report"
    proc = autoseg_cli("report", str(work / "nnUNet_results"), "--preprocessed", str(work / "nnUNet_preprocessed"),
                       "--raw", str(work / "nnUNet_raw"), "--out", str(out), "--bootstrap", "50", env=camvid["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_table(out / "tables" / "metrics.csv")
    test_rows = [r for r in rows if r["split"] == "test"]
    # both losses, their ensembles, 3 test images x 11 classes; the CV rows are the 2 validation images
    assert {(r["method"], r["fold"]) for r in test_rows} == {(loss, "ensemble") for loss in LOSSES}
    assert len(test_rows) == 2 * 3 * 11 and {r["class_name"] for r in test_rows} == set(CLASSES)
    assert {r["case"] for r in rows if r["split"] == "cv"}.isdisjoint({r["case"] for r in test_rows})
    labels = camvid["raw"] / "labelsTs"
    tables = {p.stem: list(csv.reader(p.open())) for p in (out / "tables").glob("iou_*.csv")}
    cv = [t for name, t in tables.items() if not name.startswith("iou_test_")]
    test = [t for name, t in tables.items() if name.startswith("iou_test_")]
    assert len(cv) == 1 and len(test) == 1
    for header, *body in cv + test:
        assert header[1] == "mIoU (%)" and [h for h in header if h.startswith("IoU ")] == [f"IoU {c} (%)" for c in CLASSES]
        assert sorted(r[0] for r in body) == sorted(LOSSES)
    header, *body = test[0]
    for row in body:
        folder = Path(camvid["runs"][row[0]]["output_dir"]) / "test_predictions" / "ensemble"
        expected = _iou_by_hand([(folder / p.name, p) for p in sorted(labels.glob("*.png"))])
        assert float(row[1]) == pytest.approx(100 * np.mean(expected), abs=0.006)
        assert float(row[header.index("IoU sky (%)")]) == pytest.approx(100 * expected[0], abs=0.006)
    md = (out / "report.md").read_text()
    cv_name = next(n for n in tables if not n.startswith("iou_test_"))
    test_name = next(n for n in tables if n.startswith("iou_test_"))
    test_at = md.index("# Held-out test set (separate from cross-validation)")
    assert md.index(f"tables/{cv_name}.csv") < test_at < md.index(f"tables/{test_name}.csv")
    assert "predicted by ensemble" in md[test_at:]
