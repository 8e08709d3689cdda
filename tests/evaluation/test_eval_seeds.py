"""Several seeds of a loss in one group: repeated measurements of the same cases, averaged per case (medical) or as
the mean confusion counts per image (natural images), never dropped; the seeds table. Rows are built by hand and
every expected number is computed by hand here."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from autoseg.evaluation.analysis import _seed_and_case_boot, analyse_group, fold_table, headline_json
from autoseg.evaluation.document import Doc, render
from autoseg.evaluation.report import analyse
from autoseg.evaluation.runs import Run
from autoseg.evaluation.scoring import Evaluation
from autoseg.evaluation.sections import REPORT_SECTIONS, ReportContext

GROUP = {"dataset": "Dataset999_Toy", "configuration": "2d", "architecture": "cnn", "plans": "nnUNetPlans",
         "budget": "quick"}
NAMES = {0: "sky", 1: "organ", 2: "tumour"}


def _row(method, seed, fold, case, label, dice=float("nan"), hd95=float("nan"), tp=0, fp=0, fn=0, natural=False,
         split="cv"):
    iou = tp / (tp + fp + fn) if tp + fp + fn else float("nan")
    return {**GROUP, "seed": str(seed), "method": method, "loss": method, "loss_args": "{}", "trainer": method,
            "fold": str(fold), "natural_image": natural, "case": case, "label": label, "class_name": NAMES[label],
            "ref_empty": False, "pred_empty": False, "dice": dice, "iou": iou, "hd95": hd95, "nsd": float("nan"),
            "nsd_tolerance_mm": 1.0, "tp": tp, "fp": fp, "fn": fn, "tn": 0, "n_ref": tp + fn, "n_pred": tp + fp,
            "spacing": "1,1", "split": split}


# medical: Dice per (case, label). "a" has seeds 0 and 1, the baseline dice_ce one seed.
DICE_A = {0: {"c1": (0.8, 0.6), "c2": (0.9, 0.5), "c3": (0.7, 0.4)},
          1: {"c1": (0.6, 0.4), "c2": (0.7, 0.7), "c3": (0.9, 0.2)}}
DICE_BASE = {"c1": (0.5, 0.5), "c2": (0.6, 0.4), "c3": (0.7, 0.3)}


def _medical_rows():
    rows = []
    for seed, cases in DICE_A.items():
        for case, (d1, d2) in cases.items():
            # HD95: seed 1 has none for c1's tumour (NaN), so that case's value is seed 0's alone
            rows += [_row("a", seed, 0, case, 1, d1, hd95=2.0 + seed),
                     _row("a", seed, 0, case, 2, d2, hd95=float("nan") if (seed, case) == (1, "c1") else 4.0 * seed)]
    for case, (d1, d2) in DICE_BASE.items():
        rows += [_row("dice_ce", 0, 0, case, 1, d1, hd95=1.0), _row("dice_ce", 0, 0, case, 2, d2, hd95=1.0)]
    return rows


def test_two_seeds_are_averaged_per_case_not_overwritten():
    g = analyse_group(_medical_rows(), n_boot=50)
    assert g.cases == ["c1", "c2", "c3"] and g.seeds == {"a": ["0", "1"], "dice_ce": ["0"]}
    a = g.methods.index("a")
    # per case and class the mean of the two seeds: organ (0.8+0.6)/2=0.7, (0.9+0.7)/2=0.8, (0.7+0.9)/2=0.8;
    # tumour (0.6+0.4)/2=0.5, (0.5+0.7)/2=0.6, (0.4+0.2)/2=0.3
    assert g.values["dice"][:, a, 0] == pytest.approx([0.7, 0.8, 0.8])
    assert g.values["dice"][:, a, 1] == pytest.approx([0.5, 0.6, 0.3])
    # headline: per-case mean (0.6, 0.7, 0.55), their mean 0.61666...
    assert g.headline.values[a] == pytest.approx((0.6 + 0.7 + 0.55) / 3)
    # HD95 of c1's tumour: seed 1 has NaN, left out -> seed 0's 0.0; c2 and c3: (0 + 4) / 2 = 2
    assert g.values["hd95"][:, a, 1] == pytest.approx([0.0, 2.0, 2.0])
    assert g.values["hd95"][:, a, 0] == pytest.approx([2.5, 2.5, 2.5])
    # each seed alone: seed 0 per-case means 0.7, 0.7, 0.55; seed 1: 0.5, 0.7, 0.55
    assert g.per_seed["a"]["0"] == (pytest.approx((0.7 + 0.7 + 0.55) / 3), 3)
    assert g.per_seed["a"]["1"] == (pytest.approx((0.5 + 0.7 + 0.55) / 3), 3)
    assert g.per_seed["dice_ce"]["0"] == (pytest.approx((0.5 + 0.5 + 0.5) / 3), 3)
    # the per-fold table uses the same per-case means
    assert fold_table(g.rows, False)["a"]["0"] == pytest.approx((0.6 + 0.7 + 0.55) / 3)
    assert any("seeds per loss: a 2 (0, 1); dice_ce 1 (0)" in n for n in g.notes)
    # Wilcoxon pairs on three cases: a's per-case means against the baseline's, paired by case
    assert g.primary[:, a] == pytest.approx([0.6, 0.7, 0.55])


def _runs(rows, tmp_path: Path):
    seen = {}
    for r in rows:
        key = (r["method"], r["fold"], r["seed"])
        if key not in seen:
            seen[key] = Run(path=tmp_path / "none" / "_".join(key), dataset=r["dataset"], trainer=r["trainer"],
                            plans=r["plans"], configuration=r["configuration"], fold=r["fold"], loss=r["loss"],
                            method=r["method"], architecture=r["architecture"], budget=r["budget"], seed=r["seed"],
                            status="done", natural_image=r["natural_image"], state="evaluated", n_cases=3)
    return list(seen.values())


def _report(rows, tmp_path: Path, n_boot: int = 50):
    groups, test_groups = analyse(rows, n_boot=n_boot)
    ctx = ReportContext(Evaluation(rows, _runs(rows, tmp_path)), groups, test_groups)
    doc = Doc()
    for _, section in REPORT_SECTIONS:
        section(doc, ctx)
    render(doc, tmp_path / "r", "seeds")
    return groups, test_groups, tmp_path / "r"


def _csv(path):
    with open(path, newline="") as f:
        return {r["loss"]: r for r in csv.DictReader(f)}


def test_report_tables_and_seeds_table_by_hand(tmp_path):
    (g,), _, out = _report(_medical_rows(), tmp_path)
    tables = out / "tables"
    dsc = _csv(next(tables.glob("dsc_*.csv")))
    organ = np.array([0.7, 0.8, 0.8]) * 100
    assert dsc["a"]["DSC organ (%)"] == f"{organ.mean():.2f} ± {organ.std(ddof=1):.2f}"
    case_means = np.array([0.6, 0.7, 0.55]) * 100
    assert dsc["a"]["DSC avg (%)"] == f"{case_means.mean():.2f} ± {case_means.std(ddof=1):.2f}"
    seeds = _csv(next(tables.glob("seeds_*.csv")))
    s0, s1 = (0.7 + 0.7 + 0.55) / 3 * 100, (0.5 + 0.7 + 0.55) / 3 * 100
    assert seeds["a"]["seeds"] == "2" and seeds["a"]["paired cases per seed"] == "3, 3"
    assert seeds["a"]["seed 0 DSC (%)"] == f"{s0:.2f}" and seeds["a"]["seed 1 DSC (%)"] == f"{s1:.2f}"
    assert seeds["a"]["mean over seeds (%)"] == f"{(s0 + s1) / 2:.2f}"
    assert seeds["a"]["sd over seeds (%)"] == f"{abs(s0 - s1) / math.sqrt(2):.2f}"
    assert seeds["a"]["DSC of the seed means (%)"] == f"{case_means.mean():.2f}"
    assert seeds["dice_ce"]["seed 1 DSC (%)"] == "-" and seeds["dice_ce"]["sd over seeds (%)"] == "-"
    diff = case_means.mean() - 50.0
    assert seeds["a"]["Δ vs dice_ce (points, 95% CI over cases)"].startswith(f"{diff:+.2f} [")
    # the baseline has one seed: no interval over seeds
    assert seeds["a"]["95% CI over seeds and cases"] == "-" and np.isnan(g.differences[0].seed_low)
    assert "95% CI over seeds and cases" not in next(csv.reader(open(next(tables.glob("vs_baseline_*.csv")))))
    cost = list(csv.DictReader(open(next(tables.glob("cost_*.csv")))))
    assert [(r["loss"], r["seed"]) for r in cost] == [("a", "0"), ("a", "1"), ("dice_ce", "0")]
    md = (out / "report.md").read_text()
    assert "## Seeds" in md and "seeds per loss: a 2 (0, 1)" in md and "not fixed-budget" not in md
    assert list((out / "figures").glob("seeds_*.png"))
    assert "each seed's prediction of a case" in md
    verdict = {e["loss"]: e for e in headline_json(g)["ranking"]}
    assert verdict["a"]["seeds"] == ["0", "1"] and verdict["a"]["value"] == pytest.approx(case_means.mean() / 100)


def test_unequal_seed_counts_are_named(tmp_path):
    rows = _medical_rows()
    # a third case in fold 1, scored by a's seed 0 only (and the baseline)
    rows += [_row("a", 0, 1, "c4", 1, 1.0), _row("a", 0, 1, "c4", 2, 1.0),
             _row("dice_ce", 0, 1, "c4", 1, 0.5), _row("dice_ce", 0, 1, "c4", 2, 0.5)]
    g = analyse_group(rows, n_boot=20)
    assert g.seed_gaps == {"a": {"1": ["0"]}}
    assert any("a fold 1 has seed(s) 0" in n for n in g.notes)
    a = g.methods.index("a")
    assert g.primary[g.cases.index("c4"), a] == 1.0  # the one seed it has
    assert g.per_seed["a"]["0"][1] == 4 and g.per_seed["a"]["1"][1] == 3


# natural images: tp, fp, fn per image and class for two seeds of "a" and one of the baseline
COUNTS_A = {0: {"i1": {0: (8, 2, 0), 1: (4, 0, 2)}, "i2": {0: (6, 0, 2), 1: (2, 2, 0)}},
            1: {"i1": {0: (6, 0, 2), 1: (6, 2, 0)}, "i2": {0: (8, 4, 0), 1: (0, 0, 2)}}}
COUNTS_BASE = {"i1": {0: (5, 5, 3), 1: (3, 3, 3)}, "i2": {0: (4, 4, 4), 1: (1, 1, 1)}}


def _natural_rows(split="cv"):
    rows = []
    for seed, images in COUNTS_A.items():
        for case, by_label in images.items():
            rows += [_row("a", seed, 0, case, lab, tp=tp, fp=fp, fn=fn, natural=True, split=split)
                     for lab, (tp, fp, fn) in by_label.items()]
    for case, by_label in COUNTS_BASE.items():
        rows += [_row("dice_ce", 0, 0, case, lab, tp=tp, fp=fp, fn=fn, natural=True, split=split)
                 for lab, (tp, fp, fn) in by_label.items()]
    return rows


def test_natural_seeds_give_the_miou_of_the_mean_confusion_counts(tmp_path):
    # mean counts per image over the two seeds, then summed over the images:
    # class 0: i1 (7, 1, 1), i2 (7, 2, 1) -> tp 14, fp 3, fn 2 -> IoU 14/19
    # class 1: i1 (5, 1, 1), i2 (1, 1, 1) -> tp 6, fp 2, fn 2 -> IoU 6/10
    miou = (14 / 19 + 6 / 10) / 2
    # each seed alone: seed 0 class 0 tp 14 fp 2 fn 2 -> 14/18, class 1 tp 6 fp 2 fn 2 -> 6/10
    #                  seed 1 class 0 tp 14 fp 4 fn 2 -> 14/20, class 1 tp 6 fp 2 fn 2 -> 6/10
    seed0, seed1 = (14 / 18 + 6 / 10) / 2, (14 / 20 + 6 / 10) / 2
    g = analyse_group(_natural_rows(), n_boot=50)
    a = g.methods.index("a")
    assert g.headline.values[a] == pytest.approx(miou)
    assert g.pooled[a] == pytest.approx([14 / 19, 6 / 10])
    assert g.per_seed["a"]["0"][0] == pytest.approx(seed0) and g.per_seed["a"]["1"][0] == pytest.approx(seed1)
    assert fold_table(g.rows, True)["a"]["0"] == pytest.approx(miou)
    # paired by image: the permutation test sees two images, not four
    assert g.values["tp"].shape[:2] == (2, 2) and g.cases == ["i1", "i2"]


def test_natural_test_set_with_seeds_gets_its_seeds_table(tmp_path):
    """CamVid's layout: every seed trained on fold 0 and scored on the test split (rows split test, fold 0)."""
    groups, test_groups, out = _report(_natural_rows(split="test"), tmp_path)
    assert groups == [] and len(test_groups) == 1
    predictor, g = test_groups[0]
    assert predictor == "0" and g.seeds["a"] == ["0", "1"]
    seeds = _csv(next((out / "tables").glob("seeds_test_*.csv")))
    assert seeds["a"]["seed 0 mIoU (%)"] == f"{(14 / 18 + 6 / 10) / 2 * 100:.2f}"
    assert seeds["a"]["mIoU of the seed means (%)"] == f"{(14 / 19 + 6 / 10) / 2 * 100:.2f}"
    iou = _csv(next((out / "tables").glob("iou_test_*.csv")))
    assert iou["a"]["IoU sky (%)"] == f"{14 / 19 * 100:.2f}"


def test_a_group_without_seeds_has_no_seeds_table(tmp_path):
    rows = [r for r in _medical_rows() if not (r["method"] == "a" and r["seed"] == "1")]
    groups, _, out = _report(rows, tmp_path)
    assert not groups[0].several_seeds and not groups[0].per_seed
    assert not list((out / "tables").glob("seeds_*.csv"))
    assert "seed" not in next(csv.reader(open(next((out / "tables").glob("cost_*.csv")))))
    assert "seeds per loss" not in (out / "report.md").read_text()


def _dice(pred, ref, label):
    p, r = pred == label, ref == label
    tp, fp, fn = np.count_nonzero(p & r), np.count_nonzero(p & ~r), np.count_nonzero(~p & r)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)  # both empty: 1 (the empty-structure policy)


def test_seed_folders_of_a_results_tree_are_combined(tmp_path):
    """From disk: a second seed of twin_a (trainer ..._seed1, autoseg.json seed 1) predicting like 'bad' gives twin_a
    the mean of the two per case, and both seeds in the runs table."""
    import json
    import shutil

    from eval_synthetic_tree import DATASET, PREDICT, build_tree, reference, write_seg

    from autoseg.evaluation.report import build_report

    tree = build_tree(tmp_path, cases_per_fold=(4,), methods=("good", "twin_a"), missing=(), failed=(),
                      progress_png=False)
    src = tree["results"] / DATASET / "nnUNetTrainer_autoseg_twin_a__nnUNetPlans__3d_fullres"
    dst = tree["results"] / DATASET / "nnUNetTrainer_autoseg_twin_a_seed1__nnUNetPlans__3d_fullres"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "fold_0" / "autoseg.json").read_text())
    (dst / "fold_0" / "autoseg.json").write_text(json.dumps({**meta, "seed": 1,
                                                             "trainer": "nnUNetTrainer_autoseg_twin_a_seed1"}))
    for i in range(4):
        write_seg(dst / "fold_0" / "validation" / f"toy_{i:03d}.nii.gz", PREDICT["bad"](reference(i), i))
    res = build_report(tree["results"], tmp_path / "r", tree["preprocessed"], None, n_boot=20, progress=None)
    (g,) = res.groups
    assert g.seeds == {"good": ["0"], "twin_a": ["0", "1"]} and len(g.cases) == 4
    organ = np.array([(_dice(PREDICT["twin_a"](reference(i), i), reference(i), 1)
                       + _dice(PREDICT["bad"](reference(i), i), reference(i), 1)) / 2 for i in range(4)]) * 100
    dsc = _csv(next((tmp_path / "r" / "tables").glob("dsc_*.csv")))
    assert dsc["twin_a"]["DSC organ (%)"] == f"{organ.mean():.2f} ± {organ.std(ddof=1):.2f}"
    runs = list(csv.DictReader(open(tmp_path / "r" / "tables" / "runs.csv")))
    assert sorted((r["loss"], r["seed"]) for r in runs) == [("good", "0"), ("twin_a", "0"), ("twin_a", "1")]
    assert list((tmp_path / "r" / "tables").glob("seeds_*.csv"))


# --------------------------------------------------------------------- the interval over seeds and cases


def _flat_medical_rows(a_seeds, base_seeds, cases=("c1", "c2", "c3")):
    """Every case and class of a seed has the same Dice: the cases carry no noise, the seeds all of it."""
    rows = []
    for method, per_seed in (("a", a_seeds), ("dice_ce", base_seeds)):
        for seed, dice in enumerate(per_seed):
            rows += [_row(method, seed, 0, c, lab, dice) for c in cases for lab in (1, 2)]
    return rows


def test_seed_interval_by_hand_when_only_seeds_differ(tmp_path):
    # a: seeds 0.6 and 0.8; dice_ce: 0.5 and 0.5. Drawing a's two seeds with replacement gives a mean of 0.6 (1/4),
    # 0.7 (1/2) or 0.8 (1/4), so the difference is 0.1, 0.2 or 0.3: its 2.5th and 97.5th percentiles are 0.1 and 0.3
    # (each end has about 100 of the 400 resamples). Resampling cases alone cannot move it from 0.2.
    (g,), _, out = _report(_flat_medical_rows([0.6, 0.8], [0.5, 0.5]), tmp_path, 400)
    (d,) = g.differences
    assert d.diff == pytest.approx(0.2)
    assert (d.low, d.high) == (pytest.approx(0.2), pytest.approx(0.2))
    assert (d.seed_low, d.seed_high) == (pytest.approx(0.1), pytest.approx(0.3))
    seeds = _csv(next((out / "tables").glob("seeds_*.csv")))
    assert seeds["a"]["95% CI over seeds and cases"] == "[10.00, 30.00]"
    assert seeds["dice_ce"]["95% CI over seeds and cases"] == "-"
    md = (out / "report.md").read_text()
    assert "the interval against dice_ce excludes 0 for a +20.00 [10.00, 30.00]; it includes 0 for none." in md
    vs = _csv(next((out / "tables").glob("vs_baseline_*.csv")))
    assert vs["a"]["95% CI"] == "[20.00, 20.00]" and vs["a"]["95% CI over seeds and cases"] == "[10.00, 30.00]"


def test_seed_interval_includes_zero_when_seeds_straddle_the_baseline(tmp_path):
    # a: seeds 0.4 and 0.8 (mean 0.6); dice_ce 0.55 and 0.55: differences -0.15, +0.05, +0.25
    (g,), _, out = _report(_flat_medical_rows([0.4, 0.8], [0.55, 0.55]), tmp_path, 400)
    (d,) = g.differences
    assert (d.seed_low, d.seed_high) == (pytest.approx(-0.15), pytest.approx(0.25))
    assert "it includes 0 for a +5.00 [-15.00, 25.00]." in (out / "report.md").read_text()


@pytest.mark.parametrize("natural", [False, True])
def test_identical_seeds_give_the_interval_over_cases(natural):
    """Two copies of one seed carry no seed noise: the interval over seeds and cases is the one over cases, resample
    by resample (the same case indices as the headline)."""
    if natural:
        rows = []
        for seed in (0, 1):
            for case, by_label in COUNTS_A[0].items():
                rows += [_row("a", seed, 0, case, lab, tp=tp, fp=fp, fn=fn, natural=True)
                         for lab, (tp, fp, fn) in by_label.items()]
            for case, by_label in COUNTS_BASE.items():
                rows += [_row("dice_ce", seed, 0, case, lab, tp=tp, fp=fp, fn=fn, natural=True)
                         for lab, (tp, fp, fn) in by_label.items()]
    else:
        rows = [dict(r, seed="1") for r in _medical_rows() if r["seed"] == "0"] + \
            [r for r in _medical_rows() if r["seed"] == "0"]
    g = analyse_group(rows, n_boot=60)
    (d,) = g.differences
    assert np.isfinite(d.seed_low) and d.low < d.high  # the cases do vary
    assert (d.seed_low, d.seed_high) == (pytest.approx(d.low), pytest.approx(d.high))


def test_a_resample_draws_one_seed_for_every_metric():
    """tp, fp and fn of a resample come from the same drawn seeds: one image, one class; a's seed 0 is perfect
    (tp 10), its seed 1 all wrong (fp 10, fn 10). Their mean (tp 5, fp 5, fn 5) has IoU 1/3, so a's IoU in a
    resample is 1, 1/3 or 0, and against the baseline's 0.5 (tp 5, fn 5) the difference is 0.5, -1/6 or -0.5. Drawing
    tp, fp and fn separately would mix the seeds into other values (e.g. tp 10, fp 5: 2/3)."""
    rows = [_row("a", 0, 0, "i1", 0, tp=10, natural=True), _row("a", 1, 0, "i1", 0, fp=10, fn=10, natural=True),
            _row("dice_ce", 0, 0, "i1", 0, tp=5, fn=5, natural=True),
            _row("dice_ce", 1, 0, "i1", 0, tp=5, fn=5, natural=True)]
    g = analyse_group(rows, n_boot=10)
    boot = _seed_and_case_boot(g, "a", 300, 0)
    assert sorted(np.unique(np.round(boot, 9))) == pytest.approx([-0.5, -1 / 6, 0.5])
