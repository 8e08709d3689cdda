"""Runs a grid: prepares each (dataset, configuration, architecture) once, expands the runs, writes their
records to the store and hands what is left to an executor. ``plan_and_train`` and ``benchmark`` both go
through :func:`run_records`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoseg.grid.executors import ExecutorOptions, RunTask, get_executor
from autoseg.grid.spec import LossSetting, Target, expand
from autoseg.grid.store import Store
from autoseg.io import read_json
from autoseg.paths import WorkDirs, resolve_work_dirs
from autoseg.plans.budget import Budget
from autoseg.records import FoldRecord, read_record

STORE_NAME = "autoseg_store"


def default_store(dirs: WorkDirs) -> Path:
    """``<work>/autoseg_store``: beside nnU-Net's folders (the work folder is nnUNet_results' parent)."""
    return dirs.results.parent / STORE_NAME


@dataclass
class GridRequest:
    """Everything ``autoseg benchmark`` was asked for."""

    datasets: list[str | None]
    configurations: list[str]
    architectures: list[str]
    losses: list[LossSetting]
    folds: str = "0"
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: Budget | None = None  # a preset (with --epochs/--iterations applied); None when planned
    plan: Any = None  # a PlanRequest: the planner sizes each configuration instead
    device: str = "cpu"  # "cpu", "cuda" or "mps": resolved, never "auto"
    work_dir: str | os.PathLike | None = None
    store: str | os.PathLike | None = None
    verify: bool | None = None
    num_processes: int | None = None
    limit_cases: int | None = None


@dataclass
class Grid:
    """The expanded grid: its runs (records as the store has them, or pending) and where they live."""

    runs: list[FoldRecord]
    targets: list[Target]
    dirs: WorkDirs
    store: Store
    estimates: dict[str, float | None] = field(default_factory=dict)  # configuration -> seconds per run

    def state(self, run: FoldRecord) -> str:
        return self.store.view(run.run_id, self.store.read(run.run_id))

    def fold_dir(self, run: FoldRecord) -> Path:
        return self.dirs.results / run.run_id


def target_of(prepared) -> Target:
    return Target(dataset=prepared.dataset.name, base_configuration=prepared.base_configuration,
                  configuration=prepared.configuration, architecture=prepared.architecture,
                  n_folds=prepared.n_folds, budget=prepared.budget_record(), plan=prepared.plan,
                  natural_image=prepared.natural_image)


def build_grid(request: GridRequest, dry_run: bool = False, log: Callable[[str], None] = print) -> Grid:
    """Prepare every (dataset, configuration, architecture) once and expand the runs.

    ``dry_run`` stops preparation before preprocessing (the cost estimate needs only nnU-Net's
    plans) and estimates each configuration's seconds per run with the planner's cost model.
    """
    from autoseg.prepare import prepare

    dirs = resolve_work_dirs(request.work_dir)
    store = Store(request.store or default_store(dirs))
    targets = []
    estimates: dict[str, float | None] = {}
    for dataset in request.datasets:
        for configuration in request.configurations:
            for arch in request.architectures:
                prepared = prepare(dataset, configuration, request.budget or Budget("standard"), arch=arch,
                                   plan=request.plan, dirs=dirs, verify=request.verify,
                                   num_processes=request.num_processes, limit_cases=request.limit_cases,
                                   device="cuda" if request.device == "cuda" else "cpu", losses=request.losses,
                                   run_preprocessing=not dry_run, log=log)
                targets.append(target_of(prepared))
                if dry_run:
                    estimates[f"{prepared.dataset.name}/{prepared.configuration}"] = estimate_seconds(prepared, request.device)
    runs = expand(targets, request.losses, request.folds, request.seeds)
    runs = [store.read(r.run_id) or r for r in runs]
    return Grid(runs, targets, dirs, store, estimates)


def estimate_seconds(prepared, device: str = "cpu") -> float | None:
    """Seconds one run of ``prepared``'s configuration should take: the planner's cost model with the network's
    training step timed on this machine (None if unknown)."""
    if prepared.plan is not None:
        return float(prepared.plan["estimate"]["seconds_per_run"])
    try:
        from autoseg.io import read_json
        from autoseg.plans.budget import resolved_configuration
        from autoseg.plans.cost import machine_costs
        from autoseg.plans.planner import TRAIN_SHARE, estimate_block, step_timer, with_timed_network

        plans = read_json(prepared.plans_file)
        block = resolved_configuration(plans["configurations"], prepared.configuration)
        dj = prepared.dataset.dataset_json
        in_channels = len(dj.get("channel_names", {"0": 0}))
        n_classes = len([k for k in dj["labels"] if k != "ignore"])
        arch = block.get("autoseg", {}).get("architecture", "cnn")
        dev = "cuda" if device == "cuda" else "cpu"
        costs = machine_costs(dev, cache_dir=prepared.dirs.preprocessed, architecture=arch)
        # priced and then timed on this machine, as the planner does for its choice
        est = estimate_block(costs, block["architecture"], block["patch_size"], block["batch_size"], in_channels,
                             n_classes)
        est = with_timed_network(est, step_timer(dev, in_channels, n_classes)(
            block["architecture"], block["patch_size"], block["batch_size"], arch))
        b = prepared.budget
        iterations = (b.epochs or 1000) * (b.iterations_per_epoch or 250)
        return float(est["seconds_per_iteration"] * iterations / TRAIN_SHARE)
    except Exception:  # an estimate is a convenience: a grid still runs without one
        return None


@dataclass
class Outcome:
    """What happened to each run of one invocation."""

    skipped_done: list[FoldRecord] = field(default_factory=list)  # finished before
    skipped_failed: list[FoldRecord] = field(default_factory=list)  # failed before, not retried
    elsewhere: list[FoldRecord] = field(default_factory=list)  # another process holds it
    submitted: list[FoldRecord] = field(default_factory=list)
    final: dict[str, FoldRecord] = field(default_factory=dict)  # run_id -> record after the executor ended


def adopt_finished(run: FoldRecord, fold_dir: Path, store: Store, dirs: WorkDirs) -> FoldRecord | None:
    """A run finished in nnU-Net's results folder before the store knew of it (an older ``autoseg.json``, or
    a store started afresh): its record is completed from the fold folder and put in the store."""
    from autoseg.grid.worker import finish_record, keep_dataset_json

    try:
        there = read_record(fold_dir)
    except ValueError:
        return None
    if there is None or not there.done or there.run_id != run.run_id:
        return None
    if not (fold_dir / "checkpoint_final.pth").is_file() or not (fold_dir / "validation" / "summary.json").is_file():
        return None
    if not there.per_case or there.evaluation is None:
        finish_record(there, fold_dir, dirs.preprocessed, dirs.raw)
    keep_dataset_json(fold_dir, store.path(run.run_id).parent)
    store.write(there)
    return there


def test_set_decisions(datasets: Sequence[str], mode: str, raw: Path, device: str,
                       log: Callable[[str], None] = print) -> dict[str, bool]:
    """Whether each run of a dataset predicts its held-out test set (``benchmark --test-set MODE``): the rule of
    ``plan_and_train`` (:func:`autoseg.heldout.decide`) for one network per image, the run's own model."""
    from autoseg.heldout import HeldOutError, decide, find_test_set

    out = {}
    for dataset in dict.fromkeys(datasets):
        if mode == "off":
            out[dataset] = False
            continue
        try:
            test_set = find_test_set(raw / dataset, read_json(raw / dataset / "dataset.json") or {})
            decision = decide(mode, test_set, device, n_models=1)
        except HeldOutError as e:
            out[dataset] = False
            log(f"test set of {dataset}: {e}; not predicted")
            continue
        out[dataset] = decision.predict
        log(f"test set of {dataset}: {decision.reason}" + ("; each run predicts it with its own model "
                                                            "(test_predictions/fold_<N>)" if decision.predict
                                                            else "; not predicted"))
    return out


def run_records(runs: Sequence[FoldRecord], dirs: WorkDirs, store: Store, device: str, executor: str = "local",
                jobs: int = 1, retry_failed: bool = False, executor_options: dict[str, Any] | None = None,
                log: Callable[[str], None] = print, test_set: str = "off") -> Outcome:
    """Run what is left of ``runs``: done ones are skipped, interrupted ones resume, failed ones only with
    ``retry_failed``; the rest go to ``executor``. Returns what happened to each.

    ``test_set`` (auto, on, off: :func:`test_set_decisions`): runs also predict and score the dataset's held-out
    test set; a done run without test scores (or, with ``retry_failed``, with a failed test) whose
    ``checkpoint_final.pth`` is on this machine gets them without training again."""
    from autoseg.grid.worker import needs_test

    out = Outcome()
    todo: list[RunTask] = []
    with_test = test_set_decisions([r.dataset for r in runs], test_set, dirs.raw, device, log)
    for run in runs:
        fold_dir = dirs.results / run.run_id
        test_only = False
        # decide under the run's lock: a worker of another copy of this command may be writing its record
        lock = store.try_claim(run.run_id)
        if lock is None:
            log(f"  {run.run_id} is running in another process; left to it")
            out.elsewhere.append(store.read(run.run_id) or run)
            continue
        try:
            record = store.read(run.run_id)
            if record is None or not record.done:
                record = adopt_finished(run, fold_dir, store, dirs) or record
            if record is not None and record.done:
                test_only = (with_test[run.dataset] and needs_test(record, retry_failed)
                             and (fold_dir / "checkpoint_final.pth").is_file())
                # the record may come from another machine's store: say so rather than name a folder not here
                where = fold_dir if fold_dir.is_dir() else f"{run.run_id}: done in the store, not trained here"
                log(f"  fold {run.fold} is finished ({where}); reusing it, not retraining"
                    + ("; predicting its test set only" if test_only else ""))
                out.skipped_done.append(record)
                if not test_only:
                    continue
            if record is not None and record.status == "failed" and not retry_failed:
                log(f"  {run.run_id} failed before ({record.error}); not retried without --retry-failed")
                out.skipped_failed.append(record)
                continue
            if record is None or record.status == "failed":
                fresh = FoldRecord.from_dict(run.to_dict())
                fresh.status, fresh.error = "pending", None
                fresh.attempts = record.attempts if record is not None else 0
                record = fresh
                store.write(record)
            # pending, or left running by a process that is gone (interrupted): the worker resumes it
        finally:
            lock.release()
        fold_dir.mkdir(parents=True, exist_ok=True)
        if not test_only:
            out.submitted.append(record)
        todo.append(RunTask(run_id=run.run_id, store=str(store.root), raw=str(dirs.raw),
                            preprocessed=str(dirs.preprocessed), results=str(dirs.results), device=device,
                            executor=executor, test_set=with_test[run.dataset]))
    if todo:
        ex = get_executor(executor, ExecutorOptions(jobs=jobs, device=device, log=log,
                                                    extra=dict(executor_options or {})))
        ex.submit(todo)
        ex.wait()
    for run in runs:
        rec = store.read(run.run_id)
        if rec is not None:
            out.final[run.run_id] = rec
    return out


__all__ = ["Grid", "GridRequest", "Outcome", "STORE_NAME", "build_grid", "default_store", "estimate_seconds",
           "run_records", "test_set_decisions"]
