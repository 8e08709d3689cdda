"""Run records (``autoseg.json``) and the evaluation's rows: a record becomes a :class:`Run`, and its stored
metric rows become table rows, so a result store without predictions reports like the results folder it came from."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from autoseg.evaluation.metrics import METRICS_VERSION
from autoseg.evaluation.runs import Run, method_name
from autoseg.io import read_json
from autoseg.records import FoldRecord
from autoseg.trainers.names import parse_trainer_name

#: the settings a record's metric rows were computed with (the report's defaults)
DEFAULT_TOLERANCE_MM = 2.0
DEFAULT_DISTANCES = "auto"


def run_from_record(record: FoldRecord, fold_dir: Path, meta: dict[str, Any] | None = None) -> Run:
    """The evaluation's :class:`Run` for a record found in ``fold_dir`` (a results or a store folder); ``meta`` is
    the record file as read (default: the record's own fields)."""
    parsed = parse_trainer_name(record.trainer)
    budget = dict(record.budget or {})
    return Run(path=fold_dir, dataset=record.dataset, trainer=record.trainer, plans=record.plans,
               configuration=record.configuration, fold=str(record.fold), loss=record.loss,
               loss_args=dict(record.loss_args), method=method_name(record.loss, record.loss_args,
                                                                     parsed.hash if parsed else None),
               architecture=record.architecture or "unknown", budget=str(budget.get("name", "unknown")),
               budget_detail=budget, seed=str(record.seed), status=record.status, natural_image=record.natural_image,
               meta=meta if meta is not None else record.to_dict())


def read_nnunet_summary(fold_dir: Path) -> list[dict[str, Any]]:
    """nnU-Net's per-case Dice of a fold (``validation/summary.json``): ``[{"case": ..., "dice": {label: v}}]``."""
    summary = read_json(fold_dir / "validation" / "summary.json")
    if summary is None:
        raise FileNotFoundError(f"{fold_dir / 'validation' / 'summary.json'} is missing or not JSON")
    rows = []
    for item in summary["metric_per_case"]:
        dice = {str(k): (None if v.get("Dice") is None or not math.isfinite(v["Dice"]) else float(v["Dice"]))
                for k, v in item["metrics"].items()}
        rows.append({"case": Path(item["reference_file"]).name, "dice": dice})
    return rows


_IDENTITY_KEYS = ("dataset", "configuration", "architecture", "plans", "budget", "seed", "method", "loss",
                  "loss_args", "trainer", "fold", "natural_image")


def evaluation_block(record: FoldRecord, fold_dir: Path, preprocessed: Path | None, raw: Path | None,
                     tolerance_mm: float = DEFAULT_TOLERANCE_MM, distances: str = DEFAULT_DISTANCES) -> dict[str, Any]:
    """autoseg's metric rows of the run's validation predictions, as kept in its record (without the identity
    columns, which the record holds once)."""
    from autoseg.evaluation.scoring import evaluate_run

    run = run_from_record(record, fold_dir)
    run.status = "done"
    rows = evaluate_run(run, preprocessed, raw, tolerance_mm, distances)
    return {"metrics_version": METRICS_VERSION, "tolerance_mm": tolerance_mm, "distances": distances,
            "state": run.state, "rows": [{k: _plain(v) for k, v in r.items() if k not in _IDENTITY_KEYS} for r in rows]}


def test_block(record: FoldRecord, fold_dir: Path, prediction_folder: Path, preprocessed: Path | None,
               raw: Path | None, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
               distances: str = DEFAULT_DISTANCES) -> dict[str, Any]:
    """autoseg's metric rows of the run's own test-set predictions (``test_predictions/fold_<N>``), as kept in its
    record's ``test`` field: the shape of :func:`evaluation_block`, rows with ``split`` "test"."""
    import dataclasses

    from autoseg.evaluation.heldout_scoring import evaluate_test_run

    run = run_from_record(record, fold_dir)
    run.status = "done"
    test = dataclasses.replace(run, path=prediction_folder, state="", n_cases=0, n_computed=0)
    rows = evaluate_test_run(test, run, preprocessed, raw, tolerance_mm, distances)
    return {"metrics_version": METRICS_VERSION, "tolerance_mm": tolerance_mm, "distances": distances,
            "state": test.state, "predictor": prediction_folder.name, "checkpoint": "final",
            "rows": [{k: _plain(v) for k, v in r.items() if k not in _IDENTITY_KEYS} for r in rows]}


def _plain(v: Any) -> Any:
    # NaN is not JSON: the record keeps None, and rows_from_record turns it back
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return v


_FLOAT_KEYS = {"dice", "iou", "hd95", "nsd", "nsd_tolerance_mm"}


def settings_mismatch(block: dict[str, Any], tolerance_mm: float, distances: str) -> str:
    """Why a record's stored rows cannot stand for rows computed now (metrics version, NSD tolerance, distances),
    or "" when they can."""
    stored = (block.get("metrics_version"), block.get("tolerance_mm"), block.get("distances"))
    if block.get("metrics_version") == METRICS_VERSION and block.get("distances") == distances \
            and float(block.get("tolerance_mm", -1)) == float(tolerance_mm):
        return ""
    return (f"recorded with metrics version {stored[0]}, tolerance {stored[1]} mm, distances {stored[2]}; asked: "
            f"{METRICS_VERSION}, {tolerance_mm} mm, {distances}")


def _stored_rows(block: dict[str, Any], run: Run) -> list[dict]:
    identity = run.identity()
    out = []
    for r in block.get("rows", []):
        row = {**identity, **r}
        for k in _FLOAT_KEYS:
            if row.get(k) is None:
                row[k] = float("nan")
        out.append(row)
    run.n_cases = len({r["case"] for r in out})
    run.n_computed = 0
    return out


def rows_from_record(record: FoldRecord, run: Run, tolerance_mm: float, distances: str) -> list[dict] | None:
    """The table rows of ``run`` from its record's stored metric rows; ``None`` when the record has none or they
    were computed with other settings (metrics version, NSD tolerance, distances) than asked now."""
    block = record.evaluation
    if not block or settings_mismatch(block, tolerance_mm, distances):
        return None
    out = _stored_rows(block, run)
    run.state = "evaluated (from the run's record)"
    return out


def test_failed(block: dict[str, Any] | None) -> bool:
    """Whether a record's ``test`` block says its test prediction failed (``autoseg.grid.worker.score_test_set``)."""
    return str((block or {}).get("state", "")).startswith("failed")


def test_rows_from_record(record: FoldRecord, test: Run, tolerance_mm: float, distances: str) -> list[dict]:
    """The held-out test rows (``split`` "test", ``fold`` the run's fold: it predicted them) of ``test``, a copy of
    the run's :class:`Run`, from its record's ``test`` field; sets ``test.state`` (why there are none, where so)."""
    block = record.test or {}
    if test_failed(block):
        test.state = f"not evaluated: test set {block['state']} (from the run's record)"
        return []
    mismatch = settings_mismatch(block, tolerance_mm, distances)
    if mismatch:
        test.state = f"not evaluated: the record's test rows were {mismatch}"
        return []
    out = _stored_rows(block, test)
    test.state = f"{block.get('state') or 'evaluated (test set)'} (from the run's record)"
    return out


__all__ = ["evaluation_block", "read_nnunet_summary", "rows_from_record", "run_from_record", "settings_mismatch",
           "test_block", "test_failed", "test_rows_from_record"]
