"""Find the runs under an nnU-Net results folder, evaluate their validation predictions (cached per case) and write
one tidy table: one row per (run, case, class)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoseg.evaluation.metrics import METRICS_VERSION, case_metrics
from autoseg.io import atomic_write_text

CACHE_NAME = "autoseg_metrics_cache.json"
TABLE_NAME = "autoseg_evaluation.csv"
RUNS_NAME = "autoseg_runs.csv"

_FOLDER_RE = re.compile(r"^(?P<trainer>.+?)__(?P<plans>.+?)__(?P<configuration>.+)$")

RUN_COLUMNS = ["dataset", "configuration", "architecture", "plans", "budget", "seed", "method", "loss",
               "loss_args", "trainer", "fold", "natural_image"]
CASE_COLUMNS = ["case", "label", "class_name", "ref_empty", "pred_empty", "dice", "iou", "hd95", "nsd",
                "nsd_tolerance_mm", "tp", "fp", "fn", "tn", "n_ref", "n_pred", "spacing"]
TABLE_COLUMNS = RUN_COLUMNS + CASE_COLUMNS
RUNS_TABLE_COLUMNS = RUN_COLUMNS + ["status", "state", "n_cases", "n_computed", "budget_detail", "path"]

_INT_COLUMNS = {"label", "tp", "fp", "fn", "tn", "n_ref", "n_pred", "n_cases", "n_computed"}
_FLOAT_COLUMNS = {"dice", "iou", "hd95", "nsd", "nsd_tolerance_mm"}
_BOOL_COLUMNS = {"ref_empty", "pred_empty", "natural_image"}


@dataclass
class Run:
    """One fold of one trained configuration, identified from autoseg.json or, failing that, its folder names."""

    path: Path
    dataset: str
    trainer: str
    plans: str
    configuration: str
    fold: str
    loss: str
    loss_args: dict = field(default_factory=dict)
    method: str = ""
    architecture: str = "unknown"
    budget: str = "unknown"
    budget_detail: dict = field(default_factory=dict)
    seed: str = ""
    status: str = "unknown"
    natural_image: bool | None = None
    state: str = ""  # what the evaluation made of it: "evaluated", or why it was not
    n_cases: int = 0
    n_computed: int = 0

    @property
    def group(self) -> tuple[str, str, str, str, str]:
        """Runs in one group are compared with each other: same data, configuration, network, plans and budget."""
        return (self.dataset, self.configuration, self.architecture, self.plans, self.budget)

    def identity(self) -> dict:
        return {"dataset": self.dataset, "configuration": self.configuration, "architecture": self.architecture,
                "plans": self.plans, "budget": self.budget, "seed": self.seed, "method": self.method,
                "loss": self.loss, "loss_args": json.dumps(self.loss_args, sort_keys=True), "trainer": self.trainer,
                "fold": self.fold, "natural_image": bool(self.natural_image)}

    def as_row(self) -> dict:
        return {**self.identity(), "status": self.status, "state": self.state, "n_cases": self.n_cases,
                "n_computed": self.n_computed, "budget_detail": json.dumps(self.budget_detail, sort_keys=True),
                "path": str(self.path)}


def method_name(loss: str, loss_args: dict, trainer_hash: str | None) -> str:
    """Name of a loss with its hyper-parameters: ``combo`` for defaults, ``combo[alpha=0.3]`` otherwise."""
    if not trainer_hash:
        return loss
    if loss_args:
        return f"{loss}[{','.join(f'{k}={v}' for k, v in sorted(loss_args.items()))}]"
    return f"{loss}[{trainer_hash}]"


def _read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def parse_run(fold_dir: Path) -> Run | None:
    """A :class:`Run` for ``<dataset>/<trainer>__<plans>__<configuration>/fold_<N>``, or None if not one.

    The identity comes from the fold's run record (``autoseg.json``, :mod:`autoseg.records`; a
    result store holds only these) or, failing that, from the folder names.
    """
    from autoseg.records import read_record
    from autoseg.trainers.names import parse_trainer_name

    m = _FOLDER_RE.match(fold_dir.parent.name)
    if not fold_dir.name.startswith("fold_") or m is None:
        return None
    trainer, plans, configuration = m["trainer"], m["plans"], m["configuration"]
    fold = fold_dir.name[len("fold_"):]
    try:
        record = read_record(fold_dir)
    except ValueError:
        record = None
    if record is not None:
        from autoseg.evaluation.store_rows import run_from_record

        return run_from_record(record, fold_dir)
    # a plain nnU-Net run (or autoseg.json lost): identity from the folder names, done once training finished
    tm = parse_trainer_name(trainer)
    loss = tm.stem if tm else trainer
    status = "done" if (fold_dir / "checkpoint_final.pth").exists() else "unknown"
    return Run(path=fold_dir, dataset=fold_dir.parent.parent.name, trainer=trainer, plans=plans,
               configuration=configuration, fold=fold, loss=loss,
               method=method_name(loss, {}, tm.hash if tm else None), seed=str(tm.seed) if tm else "",
               status=status)


def find_runs(results: Path) -> list[Run]:
    """Every ``fold_*`` folder below ``results`` (a results root, one dataset or one trainer folder)."""
    results = Path(results)
    runs = []
    for dirpath, dirnames, _ in os.walk(results):
        dirnames.sort()
        for d in list(dirnames):
            if d.startswith("fold_"):
                run = parse_run(Path(dirpath) / d)
                if run is not None:
                    runs.append(run)
                dirnames.remove(d)  # never look inside a fold
    return sorted(runs, key=lambda r: (r.group, r.method, _fold_key(r.fold)))


def _fold_key(fold: str):
    return (0, int(fold), "") if fold.isdigit() else (1, 0, fold)


def missing_folds(runs: Sequence[Run]) -> list[Run]:
    """Placeholder runs (status ``missing``) for folds that other methods of the same group have and one lacks."""
    by_group: dict[tuple, dict[str, dict[str, Run]]] = {}
    for r in runs:
        by_group.setdefault(r.group, {}).setdefault(r.method, {})[r.fold] = r
    out = []
    for methods in by_group.values():
        folds = set().union(*(set(f) for f in methods.values()))
        for method, have in methods.items():
            template = next(iter(have.values()))
            for fold in sorted(folds - set(have), key=_fold_key):
                out.append(Run(path=template.path.parent / f"fold_{fold}", dataset=template.dataset,
                               trainer=template.trainer, plans=template.plans, configuration=template.configuration,
                               fold=fold, loss=template.loss, loss_args=template.loss_args, method=method,
                               architecture=template.architecture, budget=template.budget,
                               budget_detail=template.budget_detail, seed=template.seed, status="missing",
                               natural_image=template.natural_image, state="fold folder missing"))
    return out


# --------------------------------------------------------------------------------------------------- dataset


@dataclass
class DatasetInfo:
    name: str
    labels: dict[str, int]
    file_ending: str
    ignore_label: int | None
    natural_image: bool
    dataset_json: Path

    def evaluated_labels(self) -> list[int]:
        """Labels to evaluate: every class but ``ignore``; label 0 only for natural images where it is a real class
        (Cityscapes' road) rather than a ``background``."""
        out = []
        for name, value in self.labels.items():
            if name == "ignore" or value == self.ignore_label:
                continue
            if value == 0 and (not self.natural_image or name.lower() == "background"):
                continue
            out.append(value)
        return sorted(set(out))

    def class_name(self, label: int) -> str:
        for name, value in self.labels.items():
            if value == label and name != "ignore":
                return name
        return str(label)


def load_dataset_info(run: Run, preprocessed: Path | None, raw: Path | None) -> DatasetInfo:
    candidates = [run.path.parent / "dataset.json"]
    candidates += [Path(p) / run.dataset / "dataset.json" for p in (preprocessed, raw) if p]
    for path in candidates:
        data = _read_json(path)
        if data is None:
            continue
        labels: dict[str, int] = {}
        for name, value in (data.get("labels") or {}).items():
            if isinstance(value, (list, tuple)):
                raise ValueError(f"{path}: region-based label {name!r}={value} is not supported by the evaluation")
            labels[str(name)] = int(value)
        ignore = labels.get("ignore")
        natural = run.natural_image if run.natural_image is not None else bool(data.get("natural_image", False))
        return DatasetInfo(run.dataset, labels, str(data.get("file_ending", ".nii.gz")), ignore, natural, path)
    raise FileNotFoundError(f"no dataset.json for {run.dataset} (looked at {', '.join(map(str, candidates))})")


def read_segmentation(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Label map in numpy axis order and its spacing in the same order (SimpleITK reads every nnU-Net format)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = arr[..., 0]
    spacing = tuple(float(s) for s in reversed(img.GetSpacing()))[-arr.ndim:]
    return arr, spacing


def _stat(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _reference_for(case: str, info: DatasetInfo, run: Run, preprocessed: Path | None, raw: Path | None,
                   summary_refs: dict[str, str]) -> Path | None:
    candidates = []
    if preprocessed:
        candidates.append(Path(preprocessed) / run.dataset / "gt_segmentations" / f"{case}{info.file_ending}")
    if case in summary_refs:
        candidates.append(Path(summary_refs[case]))
    if raw:
        candidates.append(Path(raw) / run.dataset / "labelsTr" / f"{case}{info.file_ending}")
    return next((p for p in candidates if p.is_file()), None)


# -------------------------------------------------------------------------------------------- training log

_LOG_LINE = re.compile(r"^\S+ \S+: (?P<msg>.*?)\s*$")
_NP_SCALAR = re.compile(r"np\.(?:float|int)\d*\(([^)]*)\)")


def parse_training_log(paths: Sequence[Path]) -> dict[str, list[float]]:
    """Per-epoch ``epoch``, ``train_loss``, ``val_loss`` and ``pseudo_dice`` (mean over classes) from nnU-Net's
    ``training_log_*.txt`` files, oldest first; an epoch logged again (a resumed run) keeps its last values."""
    epochs: dict[int, dict[str, float]] = {}
    current = None
    for path in sorted(paths):
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            m = _LOG_LINE.match(line)
            if m is None:
                continue
            msg = m["msg"]
            if msg.startswith("Epoch ") and msg[6:].strip().isdigit():
                current = int(msg[6:])
                epochs[current] = {}
            elif current is None:
                continue
            elif msg.startswith("train_loss "):
                epochs[current]["train_loss"] = _to_float(msg.split(None, 1)[1])
            elif msg.startswith("val_loss "):
                epochs[current]["val_loss"] = _to_float(msg.split(None, 1)[1])
            elif msg.startswith("Pseudo dice "):
                numbers = _NP_SCALAR.sub(r"\1", msg[len("Pseudo dice "):]).strip("[] ").split(",")
                values = [_to_float(v) for v in numbers if v.strip()]
                if values:
                    epochs[current]["pseudo_dice"] = float(np.nanmean(values))
    out: dict[str, list[float]] = {"epoch": [], "train_loss": [], "val_loss": [], "pseudo_dice": []}
    for e in sorted(epochs):
        if not epochs[e]:
            continue
        out["epoch"].append(float(e))
        for k in ("train_loss", "val_loss", "pseudo_dice"):
            out[k].append(epochs[e].get(k, float("nan")))
    return out


def _to_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        return float("nan")


# ---------------------------------------------------------------------------------------------- evaluation


def tolerance_for(dataset: str, tolerances: dict[str, float] | float | None, default: float = 2.0) -> float:
    """NSD tolerance (mm) of a dataset: ``{"Dataset501_Hippocampus": 1.0, "*": 2.0}`` or one number."""
    if tolerances is None:
        return default
    if isinstance(tolerances, (int, float)):
        return float(tolerances)
    return float(tolerances.get(dataset, tolerances.get("*", default)))


def _compute_case(pred_path: Path, ref_path: Path, labels: list[int], tolerance_mm: float, ignore_label: int | None,
                  with_distances: bool) -> list[dict]:
    """Metric rows of one case read from disk (top level so that worker processes can run it)."""
    pred, _ = read_segmentation(pred_path)
    ref, spacing = read_segmentation(ref_path)
    if pred.shape != ref.shape:
        raise ValueError(f"{pred_path}: shape {pred.shape} differs from its reference {ref_path} {ref.shape}")
    rows = case_metrics(pred, ref, labels, spacing, tolerance_mm, ignore_label, with_distances)
    for r in rows:
        r["spacing"] = "x".join(f"{s:g}" for s in spacing)
    return rows


def evaluate_run(run: Run, preprocessed: Path | None = None, raw: Path | None = None, tolerance_mm: float = 2.0,
                 distances: str = "auto", pool=None) -> list[dict]:
    """Rows of one finished run, reading the per-case cache in the fold folder and updating it.

    ``distances``: "auto" (HD95 and NSD for volumes, not for natural images), "always" or "never".
    ``pool``: an executor whose ``map`` computes the new cases in parallel (None: in this process).
    Sets ``run.state``, ``run.n_cases`` and ``run.n_computed``.
    """
    if not (run.path / "validation").is_dir():
        # a result store (or a results folder without predictions): the metric rows the run recorded
        from autoseg.evaluation.store_rows import rows_from_record
        from autoseg.records import read_record

        try:
            record = read_record(run.path)
        except ValueError:
            record = None
        stored = rows_from_record(record, run, tolerance_mm, distances) if record is not None else None
        if stored is not None:
            return stored
    info = load_dataset_info(run, preprocessed, raw)
    run.natural_image = info.natural_image
    with_distances = distances == "always" or (distances == "auto" and not info.natural_image)
    labels = info.evaluated_labels()
    val = run.path / "validation"
    ending = info.file_ending
    preds = sorted(p for p in val.glob(f"*{ending}") if p.is_file()) if val.is_dir() else []
    if not preds:
        run.state = "no validation predictions"
        return []
    summary = _read_json(val / "summary.json") or {}
    summary_refs = {}
    for entry in summary.get("metric_per_case", []):
        pf, rf = entry.get("prediction_file"), entry.get("reference_file")
        if pf and rf:
            summary_refs[Path(pf).name[: -len(ending)]] = rf

    cache_path = run.path / CACHE_NAME
    cache = _read_json(cache_path) or {}
    cached = cache.get("cases", {}) if cache.get("version") == METRICS_VERSION else {}
    new_cache: dict[str, dict] = {}
    rows: list[dict] = []
    identity = run.identity()
    missing_refs: list[str] = []
    todo: list[tuple[str, str, Path, Path]] = []  # (case, key, prediction, reference) to compute
    order: list[str] = []
    for pred_path in preds:
        case = pred_path.name[: -len(ending)]
        ref_path = _reference_for(case, info, run, preprocessed, raw, summary_refs)
        if ref_path is None:
            missing_refs.append(case)
            continue
        key = hashlib.sha1(json.dumps([METRICS_VERSION, tolerance_mm, with_distances, labels, info.ignore_label,
                                       _stat(pred_path), _stat(ref_path)]).encode()).hexdigest()
        order.append(case)
        entry = cached.get(case)
        if entry is None or entry.get("key") != key:
            todo.append((case, key, pred_path, ref_path))
        else:
            new_cache[case] = entry
    args = [(p, r, labels, tolerance_mm, info.ignore_label, with_distances) for _, _, p, r in todo]
    if pool is not None and len(todo) > 1:
        results = pool.map(_compute_case, *zip(*args))
    else:
        results = (_compute_case(*a) for a in args)
    computed = 0
    try:
        for (case, key, _, _), metric_rows in zip(todo, results):
            new_cache[case] = {"key": key, "rows": metric_rows}
            computed += 1
    finally:  # keep what was computed, even when a case fails or the user interrupts
        if computed or set(new_cache) != set(cached):
            try:
                atomic_write_text(cache_path, json.dumps({"version": METRICS_VERSION, "cases": new_cache}))
            except OSError:  # a read-only results tree still gets evaluated, just not cached
                pass
    for case in order:
        for r in new_cache[case]["rows"]:
            rows.append({**identity, "case": case, "class_name": info.class_name(r["label"]),
                         "nsd_tolerance_mm": tolerance_mm if with_distances else float("nan"), **r})
    run.n_cases, run.n_computed = len(new_cache), computed
    if missing_refs:
        run.state = f"evaluated; no reference for {len(missing_refs)} case(s): {', '.join(missing_refs[:5])}"
    else:
        run.state = "evaluated"
    if not new_cache:
        run.state = f"no reference segmentations found for {len(missing_refs)} prediction(s)"
    return rows


@dataclass
class Evaluation:
    """The tidy table (rows), every run found with what happened to it, and where the CSVs went."""

    rows: list[dict]
    runs: list[Run]
    table_path: Path | None = None
    runs_path: Path | None = None


def evaluate(results: Path, out: Path | None = None, preprocessed: Path | None = None, raw: Path | None = None,
             tolerances: dict[str, float] | float | None = None, distances: str = "auto",
             progress: Callable[[str], None] | None = print, workers: int = 1) -> Evaluation:
    """Evaluate every finished run under ``results`` and write the table (``out``) and the run list beside it.

    ``out`` defaults to ``<results>/autoseg_evaluation.csv``; the run list goes to ``autoseg_runs.csv`` in the same
    folder. Runs not done, missing folds and runs without predictions are in the run list with the reason.
    ``workers`` > 1 computes the cases of a run in that many processes.
    """
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"results folder {results} does not exist")
    preprocessed = preprocessed or _env_path("nnUNet_preprocessed")
    raw = raw or _env_path("nnUNet_raw")
    runs = find_runs(results)
    say = progress or (lambda s: None)
    rows: list[dict] = []
    say(f"found {len(runs)} fold folder(s) under {results}")
    pool = None
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent may hold torch threads
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        _evaluate_runs(runs, rows, say, preprocessed, raw, tolerances, distances, pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    all_runs = runs + missing_folds(runs)
    for m in all_runs[len(runs):]:
        say(f"missing: {m.dataset} {m.configuration} {m.method} fold {m.fold}")
    out = Path(out) if out else results / TABLE_NAME
    write_table(out, rows, TABLE_COLUMNS)
    runs_path = out.with_name(RUNS_NAME) if out.name == TABLE_NAME else out.with_name(out.stem + "_runs.csv")
    write_table(runs_path, [r.as_row() for r in all_runs], RUNS_TABLE_COLUMNS)
    return Evaluation(rows, all_runs, out, runs_path)


def _evaluate_runs(runs: list[Run], rows: list[dict], say: Callable[[str], None], preprocessed, raw, tolerances,
                   distances: str, pool) -> None:
    for i, run in enumerate(runs, 1):
        label = f"[{i}/{len(runs)}] {run.dataset} {run.configuration} {run.method} fold {run.fold}"
        if run.status != "done":
            run.state = f"not evaluated: status {run.status}"
        elif not run.fold.isdigit():
            run.state = "not evaluated: fold_all has no held-out validation"
        else:
            try:
                rows.extend(evaluate_run(run, preprocessed, raw, tolerance_for(run.dataset, tolerances), distances,
                                         pool))
            except (OSError, ValueError, RuntimeError) as e:
                run.state = f"error: {e}"
        counts = f" ({run.n_cases} cases, {run.n_computed} computed)" if run.n_cases else ""
        say(f"{label}: {run.state}{counts}")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


# ------------------------------------------------------------------------------------------------- file IO


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_table(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """CSV with the given columns, written atomically."""
    import io

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
    return out
