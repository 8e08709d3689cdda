"""The evaluation's CSV files: column lists, atomic writing, reading back, and the long format challengeR reads."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from autoseg.io import atomic_write_text  # noqa: F401 (re-exported: the one atomic writer)

RUN_COLUMNS = ["dataset", "configuration", "architecture", "plans", "budget", "seed", "method", "loss",
               "loss_args", "trainer", "fold", "natural_image"]
CASE_COLUMNS = ["case", "label", "class_name", "ref_empty", "pred_empty", "dice", "iou", "hd95", "nsd",
                "nsd_tolerance_mm", "tp", "fp", "fn", "tn", "n_ref", "n_pred", "spacing"]
# ``split``: "cv" for a fold's validation cases (cross-validation), "test" for a held-out test set (imagesTs /
# labelsTs). Test rows use the same columns; their ``fold`` names what predicted them ("ensemble", or a fold).
SPLIT_CV, SPLIT_TEST = "cv", "test"
TABLE_COLUMNS = RUN_COLUMNS + CASE_COLUMNS + ["split"]
RUNS_TABLE_COLUMNS = RUN_COLUMNS + ["status", "state", "n_cases", "n_computed", "budget_detail", "path"]
LONG_COLUMNS = ["task", "case", "algorithm", "value"]

_INT_COLUMNS = {"label", "tp", "fp", "fn", "tn", "n_ref", "n_pred", "n_cases", "n_computed"}
_FLOAT_COLUMNS = {"dice", "iou", "hd95", "nsd", "nsd_tolerance_mm"}
_BOOL_COLUMNS = {"ref_empty", "pred_empty", "natural_image"}


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_table(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """CSV with the given columns, written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c, "")) for c in columns])
    atomic_write_text(Path(path), buf.getvalue())


def read_table(path: Path) -> list[dict]:
    """Rows of a CSV written by :func:`write_table`, with numbers and booleans parsed back."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k, v in r.items():
                if k in _INT_COLUMNS and v != "":
                    r[k] = int(v)
                elif k in _FLOAT_COLUMNS:
                    r[k] = float(v) if v != "" else float("nan")
                elif k in _BOOL_COLUMNS:
                    r[k] = v == "true"
            out.append(r)
    if out and "split" in out[0]:
        for r in out:
            r["split"] = r["split"] or SPLIT_CV
    return out


# metric column -> name in the long table's task
LONG_METRICS = {"dice": "DSC", "iou": "IoU", "hd95": "HD95", "nsd": "NSD"}


def long_rows(rows: Iterable[dict]) -> list[dict]:
    """The tidy rows in the long format of challengeR (``as.challenge(value=, algorithm=, case=, by="task")``) and
    Metrics Reloaded: one row per (task, case, algorithm) with ``value``.

    A task is one metric of one class in one comparison group (and split); the algorithm is the loss (``method``).
    Metrics not computed (NaN) are left out. For natural images a class absent from both the reference and the
    prediction of an image has no per-image value (it is not a 1: see docs/evaluation.md), so it is left out too.
    """
    out = []
    for r in rows:
        split = r.get("split") or SPLIT_CV
        group = f"{r['dataset']}/{r['configuration']}/{r['architecture']}/{r['plans']}/{r['budget']}"
        if split != SPLIT_CV:  # test rows: one task per predictor (ensemble, fold_N), else cases would repeat
            group += f" [{split}, {r['fold']}]"
        absent = bool(r.get("natural_image")) and bool(r.get("ref_empty")) and bool(r.get("pred_empty"))
        for metric, name in LONG_METRICS.items():
            v = r.get(metric)
            if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) or absent:
                continue
            out.append({"task": f"{group}: {name} {r['class_name']}", "case": r["case"], "algorithm": r["method"],
                        "value": float(v)})
    return out
