"""Collection: run discovery, identity from autoseg.json or folder names, per-case cache, the tidy CSV."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from eval_synthetic_tree import DATASET, SHAPE, SPACING, build_tree, reference, write_seg

from autoseg.evaluation.collect import (
    TABLE_COLUMNS,
    evaluate,
    find_runs,
    method_name,
    parse_run,
    read_table,
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("eval_collect"))


@pytest.fixture(scope="module")
def evaluation(tree):
    return evaluate(tree["results"], preprocessed=tree["preprocessed"], raw=tree["raw"], tolerances=1.0,
                    progress=None)


def test_every_run_is_found_and_listed(evaluation):
    states = {(r.method, r.fold): (r.status, r.state) for r in evaluation.runs}
    assert states[("twin_b", "1")] == ("missing", "fold folder missing")
    assert states[("broken", "0")][0] == "failed" and "not evaluated" in states[("broken", "0")][1]
    assert states[("good", "0")] == ("done", "evaluated")
    assert len(evaluation.runs) == 10  # 5 methods x 2 folds, the missing one included
    listed = read_table(evaluation.runs_path)
    assert {(r["method"], r["fold"], r["status"]) for r in listed} >= {("twin_b", "1", "missing"),
                                                                       ("broken", "1", "failed")}


def test_one_row_per_case_class_and_run(evaluation):
    rows = evaluation.rows
    # good, twin_a, bad: 14 cases; twin_b 10 (fold 1 missing); 2 classes each
    assert len(rows) == (3 * 14 + 10) * 2
    keys = {(r["method"], r["fold"], r["case"], r["label"]) for r in rows}
    assert len(keys) == len(rows)
    on_disk = read_table(evaluation.table_path)
    assert len(on_disk) == len(rows) and list(on_disk[0]) == TABLE_COLUMNS
    assert not [p for p in evaluation.table_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_known_values_in_the_table(evaluation):
    rows = {(r["method"], r["case"], r["class_name"]): r for r in evaluation.rows}
    exact = rows[("good", "toy_003", "organ")]
    assert (exact["dice"], exact["hd95"], exact["nsd"]) == (1.0, 0.0, 1.0)
    assert exact["spacing"] == "2x1x1" and exact["nsd_tolerance_mm"] == 1.0
    both_empty = rows[("good", "toy_000", "tumour")]
    assert both_empty["ref_empty"] and both_empty["pred_empty"] and both_empty["dice"] == 1.0
    false_positive = rows[("bad", "toy_000", "tumour")]
    diagonal = math.sqrt((SHAPE[0] * SPACING[0]) ** 2 + SHAPE[1] ** 2 + SHAPE[2] ** 2)
    assert false_positive["ref_empty"] and not false_positive["pred_empty"]
    assert (false_positive["dice"], false_positive["nsd"]) == (0.0, 0.0)
    assert false_positive["hd95"] == pytest.approx(diagonal)
    # tumour 2x2 columns shifted by one: TP 2*2*1, FP = FN = 2*2*1 -> Dice 0.5 in every tumour case
    shifted = rows[("twin_a", "toy_005", "tumour")]
    assert (shifted["tp"], shifted["fp"], shifted["fn"]) == (4, 4, 4) and shifted["dice"] == 0.5
    twin = rows[("twin_b", "toy_005", "organ")]
    assert twin["dice"] == pytest.approx(rows[("twin_a", "toy_005", "organ")]["dice"])
    assert twin["fold"] == "0" and twin["budget"] == "quick" and twin["architecture"] == "cnn"


def test_rerun_uses_the_cache_and_recomputes_only_what_changed(tree, evaluation):
    again = evaluate(tree["results"], preprocessed=tree["preprocessed"], tolerances=1.0, progress=None)
    assert sum(r.n_computed for r in again.runs) == 0
    assert [r["dice"] for r in again.rows] == [r["dice"] for r in evaluation.rows]
    # a new prediction for one case of one run
    path = tree["results"] / DATASET / "nnUNetTrainer_autoseg_bad__nnUNetPlans__3d_fullres" / "fold_1"
    write_seg(path / "validation" / "toy_011.nii.gz", reference(11))
    lines = []
    third = evaluate(tree["results"], preprocessed=tree["preprocessed"], tolerances=1.0, progress=lines.append)
    computed = {(r.method, r.fold): r.n_computed for r in third.runs if r.n_computed}
    assert computed == {("bad", "1"): 1}
    assert any("bad fold 1: evaluated (4 cases, 1 computed)" in line for line in lines)
    fixed = [r for r in third.rows if r["method"] == "bad" and r["case"] == "toy_011" and r["class_name"] == "organ"]
    assert fixed[0]["dice"] == 1.0
    # a changed tolerance invalidates every case
    fourth = evaluate(tree["results"], preprocessed=tree["preprocessed"], tolerances=3.0, progress=None)
    assert sum(r.n_computed for r in fourth.runs) == 3 * 14 + 10


def test_identity_from_folder_names_without_autoseg_json(tmp_path):
    plain = tmp_path / "Dataset001_X" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_3"
    hashed = (tmp_path / "Dataset001_X" / "nnUNetTrainer_autoseg_focal_tversky_1a2b3c4d__nnUNetPlans__3d_lowres"
              / "fold_0")
    for d in (plain, hashed):
        d.mkdir(parents=True)
    (plain / "checkpoint_final.pth").write_bytes(b"")
    p = parse_run(plain)
    assert (p.dataset, p.trainer, p.plans, p.configuration, p.fold, p.loss, p.status) == (
        "Dataset001_X", "nnUNetTrainer", "nnUNetPlans", "2d", "3", "nnUNetTrainer", "done")
    h = parse_run(hashed)
    assert (h.loss, h.method, h.configuration, h.status) == ("focal_tversky", "focal_tversky[1a2b3c4d]",
                                                             "3d_lowres", "unknown")
    assert sorted((r.configuration, r.fold) for r in find_runs(tmp_path)) == [("2d", "3"), ("3d_lowres", "0")]
    assert parse_run(tmp_path / "Dataset001_X") is None


def test_a_folder_of_links_to_stores_finds_each_run_once(tmp_path):
    """Two studies' stores reported together through a folder of links (autoseg report LINKS --out ...); a link
    back up and a second link to the same store add nothing and do not loop."""
    for name, config in (("a", "2d"), ("b", "3d_fullres")):
        (tmp_path / "stores" / name / "Dataset001_X" / f"nnUNetTrainer__nnUNetPlans__{config}" / "fold_0").mkdir(
            parents=True)
    both = tmp_path / "both"
    both.mkdir()
    (both / "a").symlink_to(tmp_path / "stores" / "a")
    (both / "b").symlink_to(tmp_path / "stores" / "b")
    (both / "b_again").symlink_to(tmp_path / "stores" / "b")
    (tmp_path / "stores" / "a" / "loop").symlink_to(both)
    assert sorted(r.configuration for r in find_runs(both)) == ["2d", "3d_fullres"]


def test_autoseg_json_wins_over_folder_names(tmp_path):
    d = tmp_path / "Dataset002_Y" / "nnUNetTrainer_autoseg_combo_deadbeef__nnUNetPlans__3d_fullres_quick" / "fold_1"
    d.mkdir(parents=True)
    (d / "autoseg.json").write_text(json.dumps({
        "loss": "combo", "loss_args": {"alpha": 0.3}, "trainer": "nnUNetTrainer_autoseg_combo_deadbeef",
        "plans": "nnUNetPlans", "configuration": "3d_fullres_quick", "architecture": "transformer",
        "budget": {"name": "quick", "epochs": 5}, "dataset": "Dataset002_Y", "fold": 1, "seed": 4,
        "status": "running"}))
    r = parse_run(d)
    assert (r.method, r.architecture, r.budget, r.seed, r.status) == ("combo[alpha=0.3]", "transformer", "quick",
                                                                      "4", "running")
    assert method_name("dice_ce", {}, None) == "dice_ce"


def test_natural_image_evaluates_label_zero_and_skips_distances(tmp_path):
    tree = build_tree(tmp_path, cases_per_fold=(2,), methods=("good",), missing=(), failed=(), progress_png=False,
                      natural=True)
    ev = evaluate(tree["results"], preprocessed=tree["preprocessed"], progress=None)
    # label 0 is "background" in dataset.json (nnU-Net insists) but sky in the autoseg block: a class, by its name
    assert sorted({(r["label"], r["class_name"]) for r in ev.rows}) == [(0, "sky"), (1, "organ"), (2, "tumour")]
    assert all(np.isnan(r["hd95"]) for r in ev.rows)
    sky = [r for r in ev.rows if r["label"] == 0]
    assert all(r["iou"] == 1.0 and r["tp"] > 0 for r in sky)  # "good" predicts the reference: sky scored, perfect
    assert ev.datasets[DATASET].excluded_labels() == {}


def test_missing_results_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        evaluate(tmp_path / "nope", progress=None)


def test_shape_mismatch_is_reported_not_fatal(tmp_path):
    tree = build_tree(tmp_path, cases_per_fold=(1,), methods=("good",), missing=(), failed=(), progress_png=False)
    pred = tree["results"] / DATASET / "nnUNetTrainer_autoseg_good__nnUNetPlans__3d_fullres" / "fold_0"
    write_seg(pred / "validation" / "toy_000.nii.gz", np.zeros((2, 2, 2), np.uint8))
    ev = evaluate(tree["results"], preprocessed=tree["preprocessed"], progress=None)
    assert ev.runs[0].state.startswith("error:") and "shape" in ev.runs[0].state
    assert os.path.exists(ev.runs_path)


def test_natural_image_label_zero_is_a_real_class_whatever_its_name(tmp_path):
    from autoseg.evaluation.collect import DatasetInfo, dataset_info_from_json

    street = DatasetInfo("D", {"road": 0, "sidewalk": 1, "ignore": 255}, ".png", 255, True, tmp_path)
    assert street.evaluated_labels() == [0, 1]
    named_background = DatasetInfo("D", {"background": 0, "car": 1}, ".png", None, True, tmp_path)
    assert named_background.evaluated_labels() == [0, 1]
    medical = DatasetInfo("D", {"background": 0, "liver": 1}, ".nii.gz", None, False, tmp_path)
    assert medical.evaluated_labels() == [1] and medical.excluded_labels() == {0: "background"}
    # what the CamVid converter writes: label 0 "background" for nnU-Net, its real name and the flag in "autoseg";
    # no top-level natural_image key (a plain nnU-Net run has no autoseg.json to say it either)
    camvid = {"labels": {"background": 0, "building": 1, "ignore": 2}, "file_ending": ".png",
              "autoseg": {"natural_image": True, "class_names": {"0": "sky", "1": "building"},
                          "evaluated_classes": [0, 1]}}
    info = dataset_info_from_json(camvid, "Dataset001_CamVid", tmp_path / "dataset.json")
    assert info.natural_image and info.evaluated_labels() == [0, 1]
    assert [info.class_name(v) for v in info.evaluated_labels()] == ["sky", "building"]
    # a medical conversion: evaluated_classes leaves 0 out, and the report is told so
    msd = {"labels": {"background": 0, "anterior": 1}, "autoseg": {"natural_image": False, "evaluated_classes": [1],
                                                                  "class_names": {"0": "background", "1": "anterior"}}}
    info = dataset_info_from_json(msd, "Dataset004_Hippocampus", tmp_path / "dataset.json")
    assert info.evaluated_labels() == [1] and info.excluded_labels() == {0: "background"}


def test_references_from_summary_json_when_no_preprocessed_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    tree = build_tree(tmp_path, cases_per_fold=(2,), methods=("good",), missing=(), failed=(), progress_png=False)
    val = tree["results"] / DATASET / "nnUNetTrainer_autoseg_good__nnUNetPlans__3d_fullres" / "fold_0" / "validation"
    gt = tree["preprocessed"] / DATASET / "gt_segmentations"
    without = evaluate(tree["results"], progress=None)
    assert without.rows == [] and without.runs[0].state.startswith("no reference")
    (val / "summary.json").write_text(json.dumps({"metric_per_case": [
        {"prediction_file": str(val / f"{c}.nii.gz"), "reference_file": str(gt / f"{c}.nii.gz")}
        for c in ("toy_000", "toy_001")]}))
    with_summary = evaluate(tree["results"], progress=None)
    assert len(with_summary.rows) == 4 and all(r["dice"] == 1.0 for r in with_summary.rows)


def test_training_log_parsed_by_hand(tmp_path):
    from autoseg.evaluation.collect import parse_training_log

    first = tmp_path / "training_log_2026_01_01_00_00_00.txt"
    first.write_text(
        "2026-01-01 00:00:00.1: Epoch 0 \n"
        "2026-01-01 00:00:00.2: Current learning rate: 0.01 \n"
        "2026-01-01 00:00:01.3: train_loss 0.9497 \n"
        "2026-01-01 00:00:01.4: val_loss 0.9496 \n"
        "2026-01-01 00:00:01.5: Pseudo dice [np.float32(0.02), np.float32(0.04)] \n"
        "2026-01-01 00:00:02.1: Epoch 1 \n"
        "2026-01-01 00:00:03.1: train_loss 0.5 \n")
    resumed = tmp_path / "training_log_2026_01_02_00_00_00.txt"  # a resumed run logs epoch 1 again
    resumed.write_text(
        "2026-01-02 00:00:00.1: Epoch 1 \n"
        "2026-01-02 00:00:01.3: train_loss -0.25 \n"
        "2026-01-02 00:00:01.4: val_loss -0.2 \n"
        "2026-01-02 00:00:01.5: Pseudo dice [0.5, 0.7, nan] \n")
    c = parse_training_log([resumed, first])
    assert c["epoch"] == [0.0, 1.0]
    assert c["train_loss"] == [0.9497, -0.25] and c["val_loss"] == [0.9496, -0.2]
    assert c["pseudo_dice"] == pytest.approx([0.03, 0.6])
    assert parse_training_log([tmp_path / "absent.txt"])["epoch"] == []


@pytest.mark.slow  # starting worker processes imports torch and MONAI in each: ~25 s on two shared cores
def test_worker_processes_give_the_same_table(tmp_path):
    tree = build_tree(tmp_path, cases_per_fold=(3,), methods=("good", "bad"), missing=(), failed=(), progress_png=False)
    parallel = evaluate(tree["results"], tmp_path / "p.csv", tree["preprocessed"], progress=None, workers=2)
    for path in tree["results"].rglob("autoseg_metrics_cache.json"):
        path.unlink()
    serial = evaluate(tree["results"], tmp_path / "s.csv", tree["preprocessed"], progress=None)
    assert sum(r.n_computed for r in parallel.runs) == sum(r.n_computed for r in serial.runs) == 6
    assert (tmp_path / "p.csv").read_text() == (tmp_path / "s.csv").read_text()


def test_cases_computed_before_a_failure_are_cached(tmp_path):
    tree = build_tree(tmp_path, cases_per_fold=(3,), methods=("good",), missing=(), failed=(), progress_png=False)
    val = tree["results"] / DATASET / "nnUNetTrainer_autoseg_good__nnUNetPlans__3d_fullres" / "fold_0" / "validation"
    write_seg(val / "toy_002.nii.gz", np.zeros((2, 2, 2), np.uint8))  # the last case fails
    failed = evaluate(tree["results"], preprocessed=tree["preprocessed"], progress=None)
    assert failed.runs[0].state.startswith("error:")
    write_seg(val / "toy_002.nii.gz", reference(2))
    fixed = evaluate(tree["results"], preprocessed=tree["preprocessed"], progress=None)
    assert fixed.runs[0].n_computed == 1 and fixed.runs[0].n_cases == 3
