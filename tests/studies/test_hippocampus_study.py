"""The committed loss study (docs/studies/hippocampus) regenerates from its committed result store.

The report was written by ``autoseg report`` over the whole store; here a slice of that store (the
baseline and two other losses, on the folds the report compares) is reported again from the records
alone, on whatever machine runs the tests, and every number the report gives for those losses must
come out the same. A loss's mean, interval and per-class values depend only on its own cases and the
bootstrap's seed and size, not on which other losses are in the report, so a slice must reproduce them.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "docs" / "studies" / "hippocampus"
STORE = STUDY / "store"
REPORT = STUDY / "report"


def _table(report: Path, prefix: str) -> dict[str, dict[str, str]]:
    paths = sorted((report / "tables").glob(f"{prefix}_*.csv"))
    assert len(paths) == 1, f"expected one {prefix} table in {report}, found {[p.name for p in paths]}"
    with paths[0].open(newline="") as f:
        return {row["loss"]: row for row in csv.DictReader(f)}


def _done_runs(store: Path) -> dict[str, dict[int, Path]]:
    runs: dict[str, dict[int, Path]] = {}
    for path in store.rglob("autoseg.json"):
        record = json.loads(path.read_text())
        if record["status"] == "done":
            runs.setdefault(record["loss"], {})[int(record["fold"])] = path.parent
    return runs


def test_the_committed_report_covers_the_committed_store():
    """The report was regenerated when the store was committed: it evaluated exactly the store's finished runs."""
    with (REPORT / "tables" / "runs.csv").open(newline="") as f:
        evaluated = {(row["loss"], int(row["fold"])) for row in csv.DictReader(f) if row["status"] == "done"}
    assert evaluated == {(loss, fold) for loss, folds in _done_runs(STORE).items() for fold in folds}


def test_the_committed_report_regenerates_from_a_slice_of_the_committed_store(tmp_path):
    committed = _table(REPORT, "dsc")
    folds_table = _table(REPORT, "folds")
    runs = _done_runs(STORE)
    assert "dice_ce" in committed and set(committed) <= set(runs)
    # The report compares every loss on the folds that all of them have; a slice of losses whose own folds
    # are exactly those (the grid runs fold by fold, so the losses that are behind) has the same paired cases.
    common = set.intersection(*(set(runs[loss]) for loss in committed))
    assert common
    behind = [loss for loss in sorted(committed) if loss != "dice_ce" and set(runs[loss]) == common]
    assert behind, "no loss has exactly the folds the report compares"
    losses = ["dice_ce"] + behind[:2]
    piece = tmp_path / "store"
    for loss in losses:
        for src in runs[loss].values():  # all of its runs: the per-fold table lists each loss's own folds
            dst = piece / src.relative_to(STORE)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*"))
            if (src.parent / "dataset.json").is_file():
                shutil.copy2(src.parent / "dataset.json", dst.parent / "dataset.json")
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "autoseg", "report", str(piece), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    regenerated, regenerated_folds = _table(out, "dsc"), _table(out, "folds")
    assert set(regenerated) == set(losses)
    rank_columns = {"rank", "rank 95% interval"}  # ranks depend on which losses are compared
    for loss in losses:
        for column, value in committed[loss].items():
            if column not in rank_columns:
                assert regenerated[loss][column] == value, (loss, column)
        assert regenerated_folds[loss] == folds_table[loss], loss
