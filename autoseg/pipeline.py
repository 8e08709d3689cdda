"""``plan_and_train``: import a dataset, let nnU-Net plan and preprocess it, train folds with a loss, validate."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.data.bundled import BUNDLED, DatasetError, ResolvedDataset, resolve_dataset
from autoseg.paths import WorkDirs, configure_nnunet, resolve_work_dirs
from autoseg.plans.budget import BUDGETS, Budget, add_budget_configuration

PLANS = "nnUNetPlans"
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
N_FOLDS = 5
SPLITS_FILE = "autoseg_splits.json"  # folds frozen by `autoseg convert`


class PipelineError(ValueError):
    """A request that cannot be carried out as asked (unknown fold, configuration, ...)."""


@dataclass
class FoldResult:
    fold: int
    output_dir: Path
    per_case: list[dict[str, Any]]  # one row per validation case: {"case": ..., "dice": {label: value}}
    trained: bool  # False when a finished fold was reused
    seconds: float


@dataclass
class RunResult:
    dataset: str
    configuration: str
    loss: str
    loss_args: dict[str, Any]
    budget: str
    trainer: str
    device: str
    output_dir: Path
    labels: dict[str, int]
    folds: list[FoldResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    architecture: str = "cnn"
    plan: dict[str, Any] | None = None  # what the planner chose, its estimate and the overrides
    natural_image: bool = False
    # natural images: dataset-level IoU of every class (class 0 included) over the validation images of the folds
    validation_scores: Any = None  # autoseg.evaluation.summary.Scores
    test_set: dict[str, Any] | None = None  # autoseg.heldout.run_test_set: decision, predictions and their scores

    @property
    def per_class_dice(self) -> dict[str, float]:
        """Case-averaged Dice per foreground class over the validation cases of every fold run.

        A case where a class is absent from both reference and prediction has no Dice (nnU-Net
        writes NaN) and is left out of that class's mean.
        """
        out = {}
        for name, label in self.labels.items():
            if label == 0 or name == "ignore":
                continue
            values = [row["dice"][str(label)] for f in self.folds for row in f.per_case]
            values = [v for v in values if v is not None and np.isfinite(v)]
            out[name] = float(np.mean(values)) if values else float("nan")
        return out

    @property
    def mean_dice(self) -> float:
        values = [v for v in self.per_class_dice.values() if np.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")

    def headline(self) -> dict[str, Any]:
        """The number to read first: mIoU over all classes (natural images, PROTOCOL.md), else mean foreground Dice."""
        if self.natural_image and self.validation_scores is not None:
            s = self.validation_scores
            return {"metric": "mIoU", "value": s.mean, "aggregation": s.aggregation, "description": s.headline}
        return {"metric": "mean foreground Dice", "value": self.mean_dice, "aggregation": "per_case",
                "description": "nnU-Net's validation Dice per class, averaged over cases, background left out"}

    def as_dict(self) -> dict[str, Any]:
        if self.natural_image and self.validation_scores is not None:
            scores = {"miou": self.validation_scores.mean, "per_class_iou": self.validation_scores.per_class,
                      "validation": self.validation_scores.as_dict()}
        else:
            scores = {"mean_dice": self.mean_dice, "per_class_dice": self.per_class_dice}
        return {
            "headline": self.headline(),
            **scores,
            "natural_image": self.natural_image,
            "test_set": self.test_set,
            "folds": [f.fold for f in self.folds],
            "n_validation_cases": sum(len(f.per_case) for f in self.folds),
            "loss": self.loss,
            "loss_args": self.loss_args,
            "budget": self.budget,
            "architecture": self.architecture,
            "plan": self.plan,
            "dataset": self.dataset,
            "configuration": self.configuration,
            "trainer": self.trainer,
            "device": self.device,
            "output_dir": str(self.output_dir),
            "fold_dirs": {str(f.fold): str(f.output_dir) for f in self.folds},
            "reused_folds": [f.fold for f in self.folds if not f.trained],
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
        }


def parse_folds(spec: str | int | Sequence[int], n_folds: int = N_FOLDS) -> list[int]:
    """``"0"``, ``"0-4"``, ``"0,2"`` or ``"all"`` (every fold of the dataset's split) as a list."""
    if isinstance(spec, int):
        folds = [spec]
    elif isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return list(range(n_folds))
        folds = []
        for part in s.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if m is None:
                raise PipelineError(f"cannot read folds {spec!r}: use e.g. 0, 0-4, 0,2 or all")
            lo, hi = int(m[1]), int(m[2] or m[1])
            if hi < lo:
                raise PipelineError(f"fold range {part.strip()!r} runs backwards")
            folds.extend(range(lo, hi + 1))
    else:
        folds = [int(f) for f in spec]
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad:
        raise PipelineError(
            f"fold {bad[0]} does not exist: the cross-validation has {n_folds} folds (0-{n_folds - 1})"
        )
    return sorted(set(folds))


def pick_device(requested: str | None = None):
    import torch

    if requested in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda was asked for but torch sees no CUDA GPU")
    if requested not in ("cpu", "cuda", "mps"):
        raise PipelineError(f"unknown device {requested!r}: use cpu, cuda, mps or auto")
    return torch.device(requested)


def plan_and_preprocess(ds: ResolvedDataset, configuration: str, dirs: WorkDirs, verify: bool,
                        num_processes: int, log: Callable[[str], None]) -> Path:
    """nnU-Net's fingerprint, plans and preprocessing of one configuration; each step skipped when done."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    pre = dirs.preprocessed / ds.name
    if not (pre / "dataset_fingerprint.json").is_file():
        log(f"[1/4] extracting the dataset fingerprint of {ds.name}"
            + (" (with nnU-Net's dataset integrity check)" if verify else ""))
        extract_fingerprints([ds.dataset_id], num_processes=num_processes, check_dataset_integrity=verify,
                             clean=False, verbose=False)
    else:
        log(f"[1/4] fingerprint of {ds.name} exists, reused")
    plans_file = pre / f"{PLANS}.json"
    if not plans_file.is_file():
        log("[2/4] planning the experiment (nnU-Net ExperimentPlanner)")
        plan_experiments([ds.dataset_id])
    else:
        log("[2/4] plans exist, reused")
    plans = json.loads(plans_file.read_text())
    if configuration not in plans["configurations"]:
        raise PipelineError(
            f"configuration {configuration!r} was not planned for {ds.name} "
            f"(planned: {', '.join(plans['configurations'])}); nnU-Net plans 3d_lowres only for large images"
        )
    data_id = plans["configurations"][configuration].get("data_identifier", f"{PLANS}_{configuration}")
    data_dir = pre / data_id
    n_cases = len(list((ds.raw_dir / "labelsTr").glob("*" + ds.dataset_json["file_ending"])))
    done = len(list(data_dir.glob("*.pkl"))) if data_dir.is_dir() else 0
    if done < n_cases:
        log(f"[3/4] preprocessing {n_cases} cases for {configuration}")
        preprocess([ds.dataset_id], PLANS, configurations=[configuration], num_processes=[num_processes],
                   verbose=False)
    else:
        log(f"[3/4] preprocessed data for {configuration} exists, reused")
    return plans_file


def planned_fold_count(ds: ResolvedDataset, preprocessed_dir: Path) -> int:
    """How many folds the dataset's split has (nnU-Net's 5 unless a converter froze others)."""
    for path in (preprocessed_dir / "splits_final.json", ds.raw_dir / SPLITS_FILE):
        if path.is_file():
            return len(json.loads(path.read_text()))
    return N_FOLDS


def ensure_splits(ds: ResolvedDataset, preprocessed_dir: Path, n_folds: int = N_FOLDS) -> list[dict]:
    """Write the cross-validation split once, so every loss trains and validates on the same cases.

    A split frozen by ``autoseg convert`` (``autoseg_splits.json``) is installed as it is;
    otherwise nnU-Net's own seeded 5-fold split is drawn, exactly as nnU-Net would.
    """
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    path = preprocessed_dir / "splits_final.json"
    if (ds.raw_dir / SPLITS_FILE).is_file():
        from autoseg.data.convert._write import install_splits

        try:
            install_splits(ds.raw_dir, preprocessed_dir)
        except FileExistsError as e:
            raise DatasetError(str(e)) from None
    if path.is_file():
        return json.loads(path.read_text())
    data_dirs = sorted(p for p in preprocessed_dir.iterdir() if p.is_dir() and p.name.startswith(PLANS))
    keys = sorted({p.name[:-4] for d in data_dirs for p in d.glob("*.pkl")})
    if len(keys) < n_folds:
        raise DatasetError(f"{len(keys)} cases cannot be split into {n_folds} folds; a dataset needs at least {n_folds}")
    splits = generate_crossval_split(keys, seed=12345, n_splits=n_folds)
    _write_json_atomic(path, splits)
    return splits


@contextlib.contextmanager
def _env(**values: str | None):
    """Set (or with None, unset) environment variables for the duration of a block."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def _read_summary(fold_dir: Path) -> list[dict[str, Any]]:
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    rows = []
    for item in summary["metric_per_case"]:
        case = Path(item["reference_file"]).name
        dice = {str(k): (None if v.get("Dice") is None or not np.isfinite(v["Dice"]) else float(v["Dice"]))
                for k, v in item["metrics"].items()}
        rows.append({"case": case, "dice": dice})
    return rows


def plan_and_train(
    loss: str = "combo",
    loss_args: dict[str, Any] | None = None,
    dataset: str | None = None,
    configuration: str = "3d_fullres",
    folds: str | Sequence[int] = "0",
    budget: str | Budget = "quick",
    epochs: int | None = None,
    iterations: int | None = None,
    device: str | None = None,
    work_dir: str | os.PathLike | None = None,
    verify: bool | None = None,
    num_processes: int | None = None,
    limit_cases: int | None = None,
    arch: str = "cnn",
    plan: Any = None,
    test_set: str = "auto",
    test_per_fold: bool = False,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Plan, preprocess, train and validate ``loss`` on ``dataset`` with nnU-Net; see ``autoseg plan_and_train -h``.

    Finished folds (``checkpoint_final.pth`` and ``validation/summary.json`` present) are not
    retrained; an interrupted fold resumes from its latest checkpoint. Each fold folder gets an
    ``autoseg.json`` recording the loss, its hyper-parameters, the budget and the status.

    ``plan`` (an :class:`autoseg.plans.planner.PlanRequest`: time budget, memory, overrides)
    replaces the preset ``budget``: the planner chooses patch, batch, network and schedule for
    this machine, as ``autoseg plan`` does, and the fold's ``autoseg.json`` records the plan,
    its estimate and every override.

    ``test_set`` (auto, on, off): after training, predict the dataset's held-out test set (``imagesTs``) with
    the ensemble of the trained folds (and, with ``test_per_fold``, each fold) and score it against ``labelsTs``;
    ``auto`` does so where it is cheap (:func:`autoseg.heldout.decide`).
    """
    t_start = time.time()
    from autoseg.trainers.factory import make_trainer_class, record_variant

    loss_args = dict(loss_args or {})
    trainer_cls = make_trainer_class(loss, loss_args)  # unknown loss / bad hyper-parameter fails here
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise PipelineError(f"unknown budget {budget!r}: use one of {', '.join(BUDGETS)}")
        budget = BUDGETS[budget]
    budget = budget.with_schedule(epochs, iterations)
    if plan is not None and (epochs is not None or iterations is not None):
        raise PipelineError("--epochs/--iterations set the schedule of a preset budget; with a planned run "
                            "(--time-budget or overrides) the planner sets it")
    if configuration not in CONFIGURATIONS:
        raise PipelineError(f"configuration must be one of {', '.join(CONFIGURATIONS)}, got {configuration!r}")
    parse_folds(folds, n_folds=10**6)  # syntax errors before any work
    from autoseg.heldout import MODES as TEST_SET_MODES

    if test_set not in TEST_SET_MODES:
        raise PipelineError(f"test_set must be one of {', '.join(TEST_SET_MODES)}, got {test_set!r}")
    from autoseg.plans.architectures import check_architecture

    try:
        check_architecture(arch)
    except ValueError as e:
        raise PipelineError(str(e)) from None
    torch_device = pick_device(device)
    num_processes = num_processes or max(1, min(os.cpu_count() or 1, 8))

    dirs = resolve_work_dirs(work_dir)
    configure_nnunet(dirs)
    ds = resolve_dataset(dataset, dirs.raw, limit=limit_cases, progress=log)
    fold_list = parse_folds(folds, planned_fold_count(ds, dirs.preprocessed / ds.name))
    if verify is None:
        verify = dataset not in (None, *BUNDLED)
    timings = {}
    t0 = time.time()
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0.
    planning_env = {"nnUNet_n_proc_DA": None} if os.environ.get("nnUNet_n_proc_DA") == "0" else {}
    with _env(**planning_env):
        plans_file = plan_and_preprocess(ds, configuration, dirs, verify, num_processes, log)
    timings["plan_and_preprocess"] = time.time() - t0
    plan_record = None
    if plan is None:
        config_name = add_budget_configuration(plans_file, configuration, budget, arch=arch)
    else:
        config_name, budget, plan_record = _add_planned_configuration(plans_file, configuration, plan, arch, ds,
                                                                      torch_device, dirs, log)
    ensure_splits(ds, plans_file.parent)
    trainer_name = trainer_cls.__name__
    if loss_args or "+" in loss:  # names nnU-Net cannot derive from the registry alone
        record_variant(dirs.results, loss, loss_args)
    # autoseg's CLI prints one line per epoch; nnU-Net's own lines still go to the fold's log file.
    quiet_cls = type(trainer_cls.__name__, (trainer_cls,), {"console_log": False, "__module__": trainer_cls.__module__})
    run_dir = dirs.results / ds.name / f"{trainer_name}__{PLANS}__{config_name}"
    result = RunResult(ds.name, config_name, loss, loss_args, budget.name, trainer_name, str(torch_device), run_dir,
                       {k: int(v) for k, v in ds.dataset_json["labels"].items() if not isinstance(v, list)},
                       timings=timings, architecture=arch, plan=plan_record,
                       natural_image=bool(ds.dataset_json.get("autoseg", {}).get("natural_image", False)))
    for i, fold in enumerate(fold_list):
        log(f"[4/4] fold {fold} ({i + 1}/{len(fold_list)}): training {trainer_name} on {config_name}, "
            f"budget {budget.name!r}, device {torch_device}")
        result.folds.append(_train_fold(quiet_cls, plans_file, ds, config_name, run_dir / f"fold_{fold}", fold,
                                        torch_device, budget, loss, loss_args, log, arch, plan_record))
    if result.natural_image:
        result.validation_scores = _natural_validation_scores(result, dirs.preprocessed / ds.name, ds.dataset_json)
    t0 = time.time()
    result.test_set = _test_set_step(test_set, ds, run_dir, torch_device, test_per_fold, log)
    timings["test_set"] = time.time() - t0
    timings["total"] = time.time() - t_start
    return result


def _natural_validation_scores(result: RunResult, preprocessed_dataset: Path, dataset_json: dict):
    """nnU-Net's validation summary leaves label 0 out; natural images need every class, from one confusion matrix."""
    from autoseg.evaluation.summary import validation_scores

    return validation_scores([f.output_dir for f in result.folds], preprocessed_dataset / "gt_segmentations",
                             dataset_json)


def _test_set_step(mode: str, ds: ResolvedDataset, run_dir: Path, device, per_fold: bool,
                   log: Callable[[str], None]) -> dict[str, Any]:
    from autoseg.heldout import run_test_set

    return run_test_set(mode, ds.raw_dir, ds.dataset_json, run_dir, device, per_fold=per_fold, log=log)


def _add_planned_configuration(plans_file: Path, configuration: str, request, arch: str, ds: ResolvedDataset,
                               device, dirs: WorkDirs, log: Callable[[str], None]) -> tuple[str, Budget, dict]:
    """Run the budget-aware planner and add its configuration, named after what it chose (so a
    different plan never reuses another plan's finished folds)."""
    import dataclasses
    import hashlib

    from autoseg.plans.cost import machine_costs
    from autoseg.plans.planner import configuration_entry, plan_configuration

    request = dataclasses.replace(request, arch=arch, device="cuda" if device.type == "cuda" else "cpu")
    plans = json.loads(plans_file.read_text())
    fingerprint = json.loads((plans_file.parent / "dataset_fingerprint.json").read_text())
    costs = machine_costs(request.device, cache_dir=dirs.preprocessed, log=log)
    labels = [k for k in ds.dataset_json["labels"] if k != "ignore"]
    planned = plan_configuration(plans, configuration, request, costs, len(fingerprint["spacings"]),
                                 len(ds.dataset_json["channel_names"]), len(labels))
    entry = configuration_entry(planned, costs, request)
    key = {k: entry[k] for k in ("patch_size", "batch_size", "architecture")} | {"budget": entry["autoseg"]["budget"]}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{planned.name}_{digest}"
    entry["autoseg"]["budget"]["name"] = name
    plans["configurations"][name] = entry
    _write_json_atomic(plans_file, plans)
    log(f"  planned {name}: patch {planned.patch_size}, batch {planned.batch_size}, features "
        f"{planned.features_per_stage}, {planned.epochs} x {planned.iterations_per_epoch} iterations, "
        f"estimated {planned.estimated_seconds_per_iteration:.2f} s/iteration, {planned.estimated_seconds_per_run:.0f} s per run")
    budget = Budget(name, epochs=planned.epochs, iterations_per_epoch=planned.iterations_per_epoch,
                    val_iterations_per_epoch=planned.val_iterations_per_epoch,
                    save_every=entry["autoseg"]["budget"]["save_every"])
    record = {"name": name, "request": entry["autoseg"]["request"], "overrides": planned.overrides,
              "patch_size": planned.patch_size, "batch_size": planned.batch_size,
              "features_per_stage": planned.features_per_stage, "estimate": entry["autoseg"]["estimate"],
              "reasons": planned.reasons}
    return name, budget, record


def _train_fold(trainer_cls, plans_file: Path, ds: ResolvedDataset, config_name: str, out: Path, fold: int, device,
                budget: Budget, loss: str, loss_args: dict, log: Callable[[str], None],
                arch: str = "cnn", plan_record: dict | None = None) -> FoldResult:
    """Train (or resume, or only validate) one fold into ``out``, nnU-Net's fold folder."""
    t0 = time.time()
    plans = json.loads(plans_file.read_text())
    final = out / "checkpoint_final.pth"
    summary = out / "validation" / "summary.json"
    if final.is_file() and summary.is_file():
        log(f"  fold {fold} is finished ({out}); reusing it, not retraining")
        return FoldResult(fold, out, _read_summary(out), trained=False, seconds=0.0)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "loss": loss, "loss_args": loss_args, "trainer": trainer_cls.__name__, "plans": PLANS,
        "configuration": config_name, "architecture": arch,
        "budget": {"name": budget.name, **budget.schedule()}, "dataset": ds.name, "fold": fold,
        "device": str(device), "natural_image": bool(ds.dataset_json.get("autoseg", {}).get("natural_image", False)),
        "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if plan_record is not None:
        meta["plan"] = plan_record
    _write_json_atomic(out / "autoseg.json", meta)
    # On a CPU, augmenting in the training process beats worker processes that fight it for the cores
    # (measured 18-35 % faster on 2 cores); an explicit nnUNet_n_proc_DA wins.
    da_env = {"nnUNet_n_proc_DA": "0"} if device.type == "cpu" and "nnUNet_n_proc_DA" not in os.environ else {}
    plans["continue_training"] = False
    with _env(**da_env):
        trainer = trainer_cls(plans=plans, configuration=config_name, fold=fold, dataset_json=ds.dataset_json,
                              device=device)
        _fit_and_validate(trainer, out, final, meta, log)
    meta.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S"), seconds=round(time.time() - t0, 1))
    _write_json_atomic(out / "autoseg.json", meta)
    return FoldResult(fold, out, _read_summary(out), trained=True, seconds=time.time() - t0)


def _fit_and_validate(trainer, out: Path, final: Path, meta: dict, log: Callable[[str], None]) -> None:
    """Run training (resuming from the latest checkpoint) and nnU-Net's validation; a failure is recorded."""
    try:
        if final.is_file():
            log("  training finished earlier; running the validation only")
            trainer.load_checkpoint(str(final))
        else:
            latest = out / "checkpoint_latest.pth"
            if latest.is_file():
                trainer.load_checkpoint(str(latest))
                log(f"  resuming from {latest.name} at epoch {trainer.current_epoch}")
            n_it = trainer.num_epochs * trainer.num_iterations_per_epoch
            log(f"  {trainer.num_epochs} epochs x {trainer.num_iterations_per_epoch} iterations ({n_it} in all), "
                f"batch {trainer.configuration_manager.batch_size}, patch {trainer.configuration_manager.patch_size}")
            trainer.run_training()
        log("  validating (sliding window with mirroring, nnU-Net's evaluation)")
        trainer.perform_actual_validation(save_probabilities=False)
    except BaseException as e:
        meta.update(status="failed", error=f"{type(e).__name__}: {e}")
        _write_json_atomic(out / "autoseg.json", meta)
        raise
