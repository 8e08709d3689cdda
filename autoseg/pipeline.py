"""``plan_and_train``: import a dataset, let nnU-Net plan and preprocess it, train folds with a loss, validate."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.plans.budget import BUDGETS, Budget
from autoseg.prepare import CONFIGURATIONS, N_FOLDS, PLANS, PrepareError, parse_folds

#: a request that cannot be carried out as asked (unknown fold, configuration, ...)
PipelineError = PrepareError


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
    seed: int = 0,
    store: str | os.PathLike | None = None,
    executor: str = "inline",
    jobs: int = 1,
    test_set: str = "auto",
    test_per_fold: bool = False,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Plan, preprocess, train and validate ``loss`` on ``dataset`` with nnU-Net; see ``autoseg plan_and_train -h``.

    Prepares through :func:`autoseg.prepare.prepare` and runs the folds through the grid's runner
    (:func:`autoseg.grid.runner.run_records`), as ``autoseg benchmark`` does: each fold is a run
    with a record in the result store (``store``, default ``<work>/autoseg_store``) and in its
    fold folder (``autoseg.json``). Finished folds are not retrained; an interrupted fold resumes
    from its latest checkpoint; a fold that failed before is tried again (it was asked for by name).

    ``plan`` (an :class:`autoseg.plans.planner.PlanRequest`: time budget, memory, overrides)
    replaces the preset ``budget``: the planner chooses patch, batch, network and schedule for
    this machine, as ``autoseg plan`` does, and the record keeps the plan, its estimate and every
    override. ``seed`` other than 0 seeds training (and names the trainer ``..._seed<N>``).

    ``test_set`` (auto, on, off): after training, predict the dataset's held-out test set (``imagesTs``) with
    the ensemble of the trained folds (and, with ``test_per_fold``, each fold) and score it against ``labelsTs``;
    ``auto`` does so where it is cheap (:func:`autoseg.heldout.decide`).
    """
    t_start = time.time()
    from autoseg.grid.runner import default_store, estimate_seconds, run_records
    from autoseg.grid.spec import Target, expand
    from autoseg.grid.store import Store
    from autoseg.paths import resolve_work_dirs
    from autoseg.prepare import import_dataset, planned_fold_count, prepare
    from autoseg.trainers.factory import make_trainer_class

    loss_args = dict(loss_args or {})
    trainer_cls = make_trainer_class(loss, loss_args, seed)  # unknown loss / bad hyper-parameter / seed fails here
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

    dirs = resolve_work_dirs(work_dir)
    ds = import_dataset(dataset, dirs, limit_cases, log)
    fold_list = parse_folds(folds, planned_fold_count(ds, dirs.preprocessed / ds.name))  # before hours of planning
    timings = {}
    t0 = time.time()
    prepared = prepare(dataset, configuration, budget, arch=arch, plan=plan, dirs=dirs, verify=verify,
                       num_processes=num_processes, limit_cases=limit_cases,
                       device="cuda" if torch_device.type == "cuda" else "cpu", losses=[(loss, loss_args)], log=log)
    timings["plan_and_preprocess"] = time.time() - t0
    config_name, budget = prepared.configuration, prepared.budget
    trainer_name = trainer_cls.__name__
    target = Target(ds.name, configuration, config_name, arch, prepared.n_folds, prepared.budget_record(),
                    prepared.plan, prepared.natural_image)
    runs = expand([target], [(loss, loss_args)], fold_list, [seed])
    run_dir = dirs.results / ds.name / runs[0].run_dir_name
    result = RunResult(ds.name, config_name, loss, loss_args, budget.name, trainer_name, str(torch_device), run_dir,
                       prepared.labels, timings=timings, architecture=arch, plan=prepared.plan,
                       natural_image=prepared.natural_image)
    log(cost_statement(budget, estimate_seconds(prepared, torch_device.type), torch_device.type))
    log(f"[4/4] {len(runs)} fold(s) {', '.join(str(f) for f in fold_list)}: training {trainer_name} on {config_name}, "
        f"budget {budget.name!r}, device {torch_device}")
    outcome = run_records(runs, dirs, Store(store or default_store(dirs)), torch_device.type, executor=executor,
                          jobs=jobs, retry_failed=True, log=log)
    reused = {r.run_id for r in outcome.skipped_done}
    for run in runs:
        rec = outcome.final.get(run.run_id)
        if rec is None or not rec.done:
            why = rec.error if rec is not None and rec.error else (rec.status if rec is not None else "no record")
            raise PipelineError(f"fold {run.fold} did not finish: {why} (record: {dirs.results / run.run_id})")
        result.folds.append(FoldResult(int(rec.fold), dirs.results / run.run_id, rec.per_case,
                                       trained=run.run_id not in reused,
                                       seconds=0.0 if run.run_id in reused else float(rec.wall_seconds or 0.0)))
    if result.natural_image:
        result.validation_scores = _natural_validation_scores(result, dirs.preprocessed / ds.name, ds.dataset_json)
    t0 = time.time()
    result.test_set = _test_set_step(test_set, ds, run_dir, torch_device, test_per_fold, log)
    timings["test_set"] = time.time() - t0
    timings["total"] = time.time() - t_start
    return result


def cost_statement(budget: Budget, seconds_per_run: float | None, device: str) -> str:
    """What one run will cost, said before it starts: its schedule and the planner's estimate of its time."""
    epochs, its = budget.epochs or 1000, budget.iterations_per_epoch or 250
    val = budget.val_iterations_per_epoch or 50
    text = (f"  cost of each fold: {epochs} epochs x {its} training iterations (+ {val} validation iterations "
            f"per epoch), {epochs * its} training iterations in all")
    if seconds_per_run is None:
        return text + "; no time estimate (the cost model could not price this network)"
    return (text + f"; estimated ~{seconds_per_run / epochs:.1f} s per epoch, ~{_fmt_duration(seconds_per_run)} per "
            f"fold on this {device} by the planner's cost model (a corrected estimate follows the first epochs)")


def _fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def _natural_validation_scores(result: RunResult, preprocessed_dataset: Path, dataset_json: dict):
    """nnU-Net's validation summary leaves label 0 out; natural images need every class, from one confusion matrix."""
    from autoseg.evaluation.summary import validation_scores

    return validation_scores([f.output_dir for f in result.folds], preprocessed_dataset / "gt_segmentations",
                             dataset_json)


def _test_set_step(mode: str, ds, run_dir: Path, device, per_fold: bool, log: Callable[[str], None]) -> dict[str, Any]:
    from autoseg.heldout import run_test_set

    return run_test_set(mode, ds.raw_dir, ds.dataset_json, run_dir, device, per_fold=per_fold, log=log)


__all__ = ["CONFIGURATIONS", "FoldResult", "N_FOLDS", "PLANS", "PipelineError", "RunResult", "parse_folds",
           "pick_device", "plan_and_train"]
