"""The evaluation's extension points and the cost of a run: a ranking method, a report section and an output format
are each one entry in one table; a run's cost is read from its record or, without one, nnU-Net's training log."""

from __future__ import annotations

import json

import pytest
from eval_synthetic_tree import build_tree

from autoseg.evaluation import analysis, document, sections
from autoseg.evaluation.report import build_report
from autoseg.evaluation.runs import parse_run
from autoseg.evaluation.training_log import run_cost


def test_a_ranking_method_a_section_and_a_format_are_one_entry_each(tmp_path, monkeypatch):
    tree = build_tree(tmp_path, cases_per_fold=(4,), methods=("good", "bad"), missing=(), failed=(),
                      progress_png=False)
    # a new ranking: one entry in RANKING_METHODS (it sees the methods in sorted order, bad before good)
    monkeypatch.setitem(analysis.RANKING_METHODS, "median", (lambda g: "median (per case)",
                                                             lambda g: analysis.rk.aggregate_then_rank(
                                                                 g.primary, aggregate="median")))

    def note(doc, g, ctx, tag):
        doc.p(f"extra section for {len(g.methods)} losses")

    monkeypatch.setattr(sections, "GROUP_SECTIONS", sections.GROUP_SECTIONS + [("note", note)])
    monkeypatch.setitem(document.RENDERERS, "text", lambda doc, out, title: _text(doc, out))
    res = build_report(tree["results"], tmp_path / "r", tree["preprocessed"], None, n_boot=10, progress=None)
    (g,) = res.groups
    assert dict(zip(g.methods, g.rankings["median (per case)"].tolist())) == {"good": 1.0, "bad": 2.0}
    md = (tmp_path / "r" / "report.md").read_text()
    ranking_header = next(line for line in md.splitlines() if line.startswith("| loss | headline (DSC)"))
    assert "| median (per case) |" in ranking_header
    assert "extra section for 2 losses" in md
    assert "extra section for 2 losses" in (tmp_path / "r" / "report.txt").read_text()


def _text(doc, out):
    path = out / "report.txt"
    path.write_text("\n".join(b[1] for b in doc.blocks if b[0] == "p"))
    return path


def test_cost_from_a_typed_run_record(tmp_path):
    fold = tmp_path / "Dataset001_X" / "nnUNetTrainer_autoseg_dice_ce__nnUNetPlans__2d" / "fold_0"
    fold.mkdir(parents=True)
    # the record of the benchmark grid (autoseg.records, version 2): wall_seconds and epochs_completed
    (fold / "autoseg.json").write_text(json.dumps({
        "version": 2, "dataset": "Dataset001_X", "configuration": "2d", "trainer": "nnUNetTrainer_autoseg_dice_ce",
        "fold": 0, "loss": "dice_ce", "budget": {"name": "quick", "epochs": 60}, "status": "done",
        "device": "cuda:0", "wall_seconds": 600.0, "epochs_completed": 60}))
    c = run_cost(parse_run(fold))
    assert (c.wall_seconds, c.epochs_completed, c.epochs_planned, c.device) == (600.0, 60, 60, "cuda:0")
    assert c.seconds_per_epoch == pytest.approx(10.0) and c.budget_limited and c.source == "autoseg.json"


def test_cost_of_a_plain_nnunet_run_from_its_training_log(tmp_path):
    fold = tmp_path / "Dataset001_X" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_1"
    fold.mkdir(parents=True)
    (fold / "training_log_2026_1_1_10_00_00.txt").write_text(
        "2026-01-01 10:00:00.000000: Epoch 0 \n"
        "2026-01-01 10:00:30.000000: train_loss 0.5 \n"
        "2026-01-01 10:00:30.100000: Epoch time: 30.0 s \n"
        "2026-01-01 10:00:30.200000: Epoch 1 \n"
        "2026-01-01 10:01:20.000000: train_loss 0.4 \n"
        "2026-01-01 10:01:20.100000: Epoch time: 50.0 s \n"
        "2026-01-01 10:01:30.000000: Epoch 2 \n")  # killed during epoch 2: not completed
    c = run_cost(parse_run(fold))
    assert c.wall_seconds == pytest.approx(90.0) and c.epochs_completed == 2 and c.epochs_planned is None
    assert c.seconds_per_epoch == pytest.approx(40.0) and c.device is None and c.budget_limited
    assert c.source == "training log"
    nothing = tmp_path / "Dataset001_X" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_2"
    nothing.mkdir()
    empty = run_cost(parse_run(nothing))
    assert (empty.wall_seconds, empty.epochs_completed, empty.source) == (None, None, "nothing found")
    assert not empty.budget_limited


def test_a_report_written_again_drops_the_tables_and_figures_it_no_longer_has(tmp_path):
    # A study's committed report is rebuilt into the same folder as its store fills: a table or figure of
    # the earlier report (a group or loss that is gone) must not stay behind looking current.
    out = tmp_path / "report"
    for rel in ("tables/old_group.csv", "figures/old_curves.png", "tables/metrics.csv", "tables/metrics_runs.csv",
                "tables/notes.txt"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("earlier")
    doc = document.Doc()
    doc.table("headline", ["loss", "value"], [["dice_ce", "1.0"]])
    doc.img("curves_now", b"\x89PNG\r\n\x1a\n", "curves")
    document.render(doc, out, "again")
    assert sorted(p.name for p in (out / "tables").iterdir()) == ["headline.csv", "metrics.csv", "metrics_runs.csv",
                                                                 "notes.txt"]
    assert [p.name for p in (out / "figures").iterdir()] == ["curves_now.png"]
