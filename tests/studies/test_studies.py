"""The committed loss studies (docs/studies/<study>) regenerate from their committed result stores.

Each report was written by ``autoseg report`` over the whole store; here a slice of that store (the
baseline and up to two other losses, on the folds or seeds the report compares) is reported again from
the records alone, on whatever machine runs the tests, and every number the report gives for those
losses must come out the same. A loss's mean, interval and per-class values depend only on its own cases
and the bootstrap's seed and size, not on which other losses are in the report, so a slice must
reproduce them.

- hippocampus (medical): 5-fold cross-validation, paired by fold; tables ``dsc`` and ``folds``.
- camvid (natural): SegNet's split (fold 5) with seeds for folds, scored on the test set; tables ``iou``
  (SegNet's val images), ``iou_test`` (the 117 test images) and ``folds``.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUDIES = {"hippocampus": ("dsc", "folds", "precision_recall"), "camvid": ("iou", "iou_test", "folds", "precision_recall")}
RANK_COLUMNS = {"rank", "rank 95% interval"}  # ranks depend on which losses are compared


def _committed(study: str) -> tuple[Path, Path]:
    store, report = REPO / "docs" / "studies" / study / "store", REPO / "docs" / "studies" / study / "report"
    if not (report / "tables" / "runs.csv").is_file():
        pytest.skip(f"the {study} study has no committed report yet")
    return store, report


def _table(report: Path, prefix: str) -> dict[str, dict[str, str]]:
    paths = sorted(p for p in (report / "tables").glob(f"{prefix}_*.csv")
                   if prefix != "iou" or not p.name.startswith("iou_test_"))
    assert len(paths) == 1, f"expected one {prefix} table in {report}, found {[p.name for p in paths]}"
    with paths[0].open(newline="") as f:
        return {row["loss"]: row for row in csv.DictReader(f)}


def _done_runs(store: Path) -> dict[str, dict[tuple[int, int], Path]]:
    """loss -> {(fold, seed): run folder} of the store's finished runs."""
    runs: dict[str, dict[tuple[int, int], Path]] = {}
    for path in store.rglob("autoseg.json"):
        record = json.loads(path.read_text())
        if record["status"] == "done":
            runs.setdefault(record["loss"], {})[(int(record["fold"]), int(record.get("seed") or 0))] = path.parent
    return runs


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_the_committed_report_covers_the_committed_store(study):
    """The report was regenerated when the store was committed: it evaluated exactly the store's finished runs."""
    store, report = _committed(study)
    with (report / "tables" / "runs.csv").open(newline="") as f:
        evaluated = {(row["loss"], int(row["fold"]), int(row["seed"] or 0)) for row in csv.DictReader(f)
                     if row["status"] == "done"}
    assert evaluated == {(loss, fold, seed) for loss, runs in _done_runs(store).items() for fold, seed in runs}


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_the_committed_report_regenerates_from_a_slice_of_the_committed_store(study, tmp_path):
    store, report = _committed(study)
    prefixes = STUDIES[study]
    committed = {prefix: _table(report, prefix) for prefix in prefixes}
    runs = _done_runs(store)
    losses_in_report = set(committed[prefixes[0]])
    assert "dice_ce" in losses_in_report and losses_in_report <= set(runs)
    # The report compares every loss on the folds (seeds) that all of them have; a slice of losses whose own
    # runs are exactly those (the grid runs fold by fold or seed by seed, so the losses that are behind)
    # has the same paired cases.
    common = set.intersection(*(set(runs[loss]) for loss in losses_in_report))
    assert common
    behind = [loss for loss in sorted(losses_in_report) if loss != "dice_ce" and set(runs[loss]) == common]
    assert behind, "no loss has exactly the folds or seeds the report compares"
    losses = ["dice_ce"] + behind[:2]
    piece = tmp_path / "store"
    for loss in losses:
        for src in runs[loss].values():  # all of its runs: the per-fold table lists each loss's own folds
            dst = piece / src.relative_to(store)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*"))
            if (src.parent / "dataset.json").is_file():
                shutil.copy2(src.parent / "dataset.json", dst.parent / "dataset.json")
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "autoseg", "report", str(piece), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for prefix in prefixes:
        regenerated = _table(out, prefix)
        assert set(regenerated) == set(losses), prefix
        for loss in losses:
            for column, value in committed[prefix][loss].items():
                if column in RANK_COLUMNS:
                    continue
                if column not in regenerated[loss]:
                    # a column of a fold (seed) that only losses outside the slice have reached yet (the grid
                    # is part-way through it): the slice's losses have no value there
                    assert value == "-", (prefix, loss, column, value)
                    continue
                assert regenerated[loss][column] == value, (prefix, loss, column)
