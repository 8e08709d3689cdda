"""The one preparation path: dataset import, fingerprint, plans, preprocessing, splits, the trained configuration.

``autoseg plan``, ``autoseg plan_and_train`` and ``autoseg benchmark`` all prepare through here,
once per dataset and configuration, so a configuration gets one name whatever command made it.
Everything here may run in several processes at once (two copies of a benchmark, a grid's
workers): each step is guarded by a lock and skipped when already done, and every shared file
(the plans file, ``splits_final.json``, ``autoseg_trainers.json``) is changed under its own lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg.data.bundled import DatasetError, ResolvedDataset, resolve_dataset
from autoseg.io import atomic_write_json, file_lock, read_json, update_json
from autoseg.paths import WorkDirs, configure_nnunet, resolve_work_dirs
from autoseg.plans.budget import Budget, add_budget_configuration

PLANS = "nnUNetPlans"
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
N_FOLDS = 5
SPLITS_FILE = "autoseg_splits.json"  # folds frozen by `autoseg convert`


class PrepareError(ValueError):
    """A preparation that cannot be done as asked (configuration nnU-Net did not plan, too few cases...)."""


@contextlib.contextmanager
def temporary_env(**values: str | None) -> Iterator[None]:
    """Set (or with None, unset) environment variables for the duration of a block."""
    old = {k: os.environ.get(k) for k in values}
    try:
        _set_env(values)
        yield
    finally:
        _set_env(old)


def _set_env(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _planning_env() -> dict[str, str | None]:
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0.
    return {"nnUNet_n_proc_DA": None} if os.environ.get("nnUNet_n_proc_DA") == "0" else {}


def default_processes() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def import_dataset(dataset: str | None, dirs: WorkDirs, limit_cases: int | None = None,
                   log: Callable[[str], None] = print) -> ResolvedDataset:
    """The raw dataset named ``dataset`` (imported into ``dirs.raw`` once, even by processes started together)."""
    configure_nnunet(dirs)
    with file_lock(dirs.raw / "autoseg_import"):
        return resolve_dataset(dataset, dirs.raw, limit=limit_cases, progress=log)


def nnunet_plans(ds: ResolvedDataset, dirs: WorkDirs, verify: bool, num_processes: int | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """nnU-Net's fingerprint extraction and experiment planning of ``ds`` (each once); the plans file."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    pre = dirs.preprocessed / ds.name
    plans_file = pre / f"{PLANS}.json"
    with file_lock(pre / "autoseg_prepare"), temporary_env(**_planning_env()):
        if not (pre / "dataset_fingerprint.json").is_file():
            log(f"[1/4] extracting the dataset fingerprint of {ds.name}"
                + (" (with nnU-Net's dataset integrity check)" if verify else ""))
            extract_fingerprints([ds.dataset_id], num_processes=num_processes or default_processes(),
                                 check_dataset_integrity=verify, clean=False, verbose=False)
        else:
            log(f"[1/4] fingerprint of {ds.name} exists, reused")
        if not plans_file.is_file():
            log("[2/4] planning the experiment (nnU-Net ExperimentPlanner)")
            with file_lock(plans_file):
                plan_experiments([ds.dataset_id])
        else:
            log("[2/4] plans exist, reused")
    return plans_file


def preprocess(ds: ResolvedDataset, configuration: str, dirs: WorkDirs, num_processes: int | None = None,
               log: Callable[[str], None] = print) -> None:
    """nnU-Net's preprocessing of ``configuration`` (skipped when every case is there)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess as nnunet_preprocess

    pre = dirs.preprocessed / ds.name
    with file_lock(pre / "autoseg_prepare"), temporary_env(**_planning_env()):
        plans = read_json(pre / f"{PLANS}.json")
        if configuration not in plans["configurations"]:
            raise PrepareError(
                f"configuration {configuration!r} was not planned for {ds.name} (planned: "
                f"{', '.join(c for c in plans['configurations'] if c in CONFIGURATIONS)}); nnU-Net plans 3d_lowres "
                "only for large images")
        data_id = plans["configurations"][configuration].get("data_identifier", f"{PLANS}_{configuration}")
        data_dir = pre / data_id
        n_cases = len(list((ds.raw_dir / "labelsTr").glob("*" + ds.dataset_json["file_ending"])))
        done = len(list(data_dir.glob("*.pkl"))) if data_dir.is_dir() else 0
        if done < n_cases:
            log(f"[3/4] preprocessing {n_cases} cases for {configuration}")
            nnunet_preprocess([ds.dataset_id], PLANS, configurations=[configuration],
                              num_processes=[num_processes or default_processes()], verbose=False)
        else:
            log(f"[3/4] preprocessed data for {configuration} exists, reused")


def parse_int_ranges(text: str, noun: str, examples: str, error: type[Exception] = ValueError) -> list[int]:
    """``"0"``, ``"0-4"``, ``"0,3,7"`` as a list of integers (folds, seeds); ``error`` names what cannot be read."""
    values: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None:
            raise error(f"cannot read {noun}s {text!r}: use e.g. {examples}")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo:
            raise error(f"{noun} range {part.strip()!r} runs backwards")
        values.extend(range(lo, hi + 1))
    return values


def parse_folds(spec: str | int | Sequence[int], n_folds: int = N_FOLDS) -> list[int]:
    """``"0"``, ``"0-4"``, ``"0,2"`` or ``"all"`` (every fold of the dataset's split) as a list."""
    if isinstance(spec, int):
        folds = [spec]
    elif isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return list(range(n_folds))
        folds = parse_int_ranges(spec, "fold", "0, 0-4, 0,2 or all", PrepareError)
    else:
        folds = [int(f) for f in spec]
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad:
        raise PrepareError(
            f"fold {bad[0]} does not exist: the cross-validation has {n_folds} folds (0-{n_folds - 1})"
        )
    return sorted(set(folds))


def planned_fold_count(ds: ResolvedDataset, preprocessed_dir: Path) -> int:
    """How many folds the dataset's split has (nnU-Net's 5 unless a converter froze others)."""
    for path in (preprocessed_dir / "splits_final.json", ds.raw_dir / SPLITS_FILE):
        data = read_json(path)
        if isinstance(data, list):
            return len(data)
    return N_FOLDS


def ensure_splits(ds: ResolvedDataset, preprocessed_dir: Path, n_folds: int = N_FOLDS) -> list[dict]:
    """Write the cross-validation split once, so every loss trains and validates on the same cases.

    A split frozen by ``autoseg convert`` (``autoseg_splits.json``) is installed as it is;
    otherwise nnU-Net's own seeded 5-fold split is drawn, exactly as nnU-Net would. Under the
    split file's lock: runs started at once agree on one split.
    """
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    path = preprocessed_dir / "splits_final.json"
    with file_lock(path):
        if (ds.raw_dir / SPLITS_FILE).is_file():
            from autoseg.data.convert import install_splits

            try:
                install_splits(ds.raw_dir, preprocessed_dir)
            except FileExistsError as e:
                raise DatasetError(str(e)) from None
        existing = read_json(path)
        if existing is not None:
            return existing
        data_dirs = sorted(p for p in preprocessed_dir.iterdir() if p.is_dir() and p.name.startswith(PLANS))
        keys = sorted({p.name[:-4] for d in data_dirs for p in d.glob("*.pkl")})
        if len(keys) < n_folds:
            raise DatasetError(f"{len(keys)} cases cannot be split into {n_folds} folds; a dataset needs at least "
                               f"{n_folds}")
        splits = generate_crossval_split(keys, seed=12345, n_splits=n_folds)
        atomic_write_json(path, splits)
        return splits


def planned_configuration(plans_file: Path, base_configuration: str, request: Any, ds: ResolvedDataset,
                          dirs: WorkDirs, log: Callable[[str], None] = print,
                          refresh_benchmark: bool = False, write: bool = True) -> tuple[Any, dict[str, Any]]:
    """Run the budget-aware planner on ``base_configuration`` and add its configuration to the plans file.

    Returns the plan (its ``name`` is the configuration's one name, ``<base>_<arch>_plan_<digest>``,
    the digest naming what was chosen, so a different plan never reuses another plan's runs) and
    the plans-file entry.
    """
    from autoseg.plans.cost import machine_costs
    from autoseg.plans.planner import PlanError, configuration_entry, plan_configuration, step_timer

    plans = read_json(plans_file)
    if base_configuration not in plans["configurations"]:
        raise PlanError(f"nnU-Net did not plan {base_configuration!r} for {ds.name}; it planned "
                        f"{', '.join(c for c in plans['configurations'] if c in CONFIGURATIONS)}")
    fingerprint = read_json(plans_file.parent / "dataset_fingerprint.json")
    costs = machine_costs(request.device, cache_dir=dirs.preprocessed, refresh=refresh_benchmark, log=log,
                          architecture=request.arch)
    dj = ds.dataset_json
    labels = [k for k in dj["labels"] if k != "ignore"]
    in_channels = len(dj.get("channel_names", dj.get("modality", {"0": 0})))
    planned = plan_configuration(plans, base_configuration, request, costs, len(fingerprint["spacings"]),
                                 in_channels, len(labels), timer=step_timer(request.device, in_channels, len(labels)))
    entry = configuration_entry(planned, costs, request)
    key = {k: entry[k] for k in ("patch_size", "batch_size", "architecture")} | {"budget": entry["autoseg"]["budget"]}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    planned = dataclasses.replace(planned, name=f"{planned.name}_{digest}")
    entry["autoseg"]["budget"]["name"] = planned.name
    if write:
        update_json(plans_file, lambda p: None if p["configurations"].get(planned.name) == entry
                    else {**p, "configurations": {**p["configurations"], planned.name: entry}}, indent=4)
    return planned, entry


def plan_record(planned: Any, entry: dict[str, Any]) -> dict[str, Any]:
    """What a run records of its plan: the request, the overrides, what was chosen, the estimate and why."""
    return {"name": planned.name, "request": entry["autoseg"]["request"], "overrides": planned.overrides,
            "patch_size": planned.patch_size, "batch_size": planned.batch_size,
            "features_per_stage": planned.features_per_stage, "estimate": entry["autoseg"]["estimate"],
            "reasons": planned.reasons}


def register_trainers(results_dir: Path, losses: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Record the trainers nnU-Net cannot derive from the registry alone (hyper-parameters, compounds)."""
    from autoseg.trainers.factory import needs_variant_record, record_variant

    for loss, args in losses:
        if needs_variant_record(loss, args):
            record_variant(results_dir, loss, args)


@dataclass
class Prepared:
    """A dataset and one trained configuration, ready for runs of any loss, fold and seed."""

    dataset: ResolvedDataset
    dirs: WorkDirs
    plans_file: Path
    base_configuration: str
    configuration: str  # the trained configuration's one name in the plans file
    architecture: str
    budget: Budget
    plan: dict[str, Any] | None  # plan_record of a planned configuration
    n_folds: int

    @property
    def natural_image(self) -> bool:
        return bool(self.dataset.dataset_json.get("autoseg", {}).get("natural_image", False))

    @property
    def labels(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.dataset.dataset_json["labels"].items() if not isinstance(v, list)}

    def budget_record(self) -> dict[str, Any]:
        return {"name": self.budget.name, **self.budget.schedule()}


def prepare(dataset: str | None, configuration: str, budget: Budget, arch: str = "cnn", plan: Any = None,
            dirs: WorkDirs | None = None, work_dir: str | os.PathLike | None = None, verify: bool | None = None,
            num_processes: int | None = None, limit_cases: int | None = None, device: str = "cpu",
            losses: Iterable[tuple[str, dict[str, Any]]] = (), run_preprocessing: bool = True,
            log: Callable[[str], None] = print) -> Prepared:
    """Import, fingerprint, plan, preprocess, split and add the trained configuration; register the trainers.

    ``budget`` is a preset (its configuration ``<base>_<budget>[_<arch>]``), or ``plan`` (a
    :class:`~autoseg.plans.planner.PlanRequest`) lets the planner choose for ``device`` ("cpu" or
    "cuda"). ``run_preprocessing`` False stops before preprocessing and splits (a dry run's cost
    estimate needs only the plans). Each step is skipped when done.
    """
    from autoseg.data.bundled import BUNDLED

    if configuration not in CONFIGURATIONS:
        raise PrepareError(f"configuration must be one of {', '.join(CONFIGURATIONS)}, got {configuration!r}")
    dirs = dirs or resolve_work_dirs(work_dir)
    configure_nnunet(dirs)
    ds = import_dataset(dataset, dirs, limit_cases, log)
    if verify is None:
        verify = dataset not in (None, *BUNDLED)
    plans_file = nnunet_plans(ds, dirs, verify, num_processes, log)
    if configuration not in read_json(plans_file)["configurations"]:
        raise PrepareError(
            f"configuration {configuration!r} was not planned for {ds.name} "
            f"(planned: {', '.join(c for c in read_json(plans_file)['configurations'] if c in CONFIGURATIONS)}); "
            "nnU-Net plans 3d_lowres only for large images")
    if run_preprocessing:
        preprocess(ds, configuration, dirs, num_processes, log)
    record = None
    if plan is None:
        with file_lock(plans_file):
            name = add_budget_configuration(plans_file, configuration, budget, arch=arch)
    else:
        request = dataclasses.replace(plan, arch=arch, device=device)
        planned, entry = planned_configuration(plans_file, configuration, request, ds, dirs, log)
        name, record = planned.name, plan_record(planned, entry)
        log(f"  planned {name}: patch {planned.patch_size}, batch {planned.batch_size}, features "
            f"{planned.features_per_stage}, {planned.epochs} x {planned.iterations_per_epoch} iterations, estimated "
            f"{planned.estimated_seconds_per_iteration:.2f} s/iteration, {planned.estimated_seconds_per_run:.0f} s per run")
        budget = Budget(name, epochs=planned.epochs, iterations_per_epoch=planned.iterations_per_epoch,
                        val_iterations_per_epoch=planned.val_iterations_per_epoch,
                        save_every=entry["autoseg"]["budget"]["save_every"])
    if run_preprocessing:
        ensure_splits(ds, plans_file.parent)
    register_trainers(dirs.results, losses)
    return Prepared(ds, dirs, plans_file, configuration, name, arch, budget, record,
                    planned_fold_count(ds, plans_file.parent))


__all__ = ["CONFIGURATIONS", "N_FOLDS", "PLANS", "Prepared", "PrepareError", "default_processes", "ensure_splits",
           "import_dataset", "nnunet_plans", "parse_folds", "parse_int_ranges",
           "plan_record", "planned_configuration", "planned_fold_count", "prepare",
           "preprocess", "register_trainers", "temporary_env"]
