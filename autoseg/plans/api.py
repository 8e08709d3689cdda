"""``plan_dataset``: nnU-Net's fingerprint and plans, then autoseg's budget-aware planner, written into the plans file."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from autoseg.plans.planner import ConfigurationPlan, PlanError, PlanRequest, configuration_entry, plan_configuration

PLANS = "nnUNetPlans"


def nnunet_plans(dataset: str | None, work_dir: str | os.PathLike | None, verify: bool | None,
                 num_processes: int | None, limit_cases: int | None, log: Callable[[str], None]):
    """Import ``dataset`` and run nnU-Net's fingerprint extraction and experiment planning (each once)."""
    from autoseg.data.bundled import BUNDLED, resolve_dataset
    from autoseg.paths import configure_nnunet, resolve_work_dirs
    from autoseg.pipeline import _env

    dirs = resolve_work_dirs(work_dir)
    configure_nnunet(dirs)
    ds = resolve_dataset(dataset, dirs.raw, limit=limit_cases, progress=log)
    if verify is None:
        verify = dataset not in (None, *BUNDLED)
    num_processes = num_processes or max(1, min(os.cpu_count() or 1, 8))
    pre = dirs.preprocessed / ds.name
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0.
    planning_env = {"nnUNet_n_proc_DA": None} if os.environ.get("nnUNet_n_proc_DA") == "0" else {}
    with _env(**planning_env):
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

        if not (pre / "dataset_fingerprint.json").is_file():
            log(f"extracting nnU-Net's dataset fingerprint of {ds.name}")
            extract_fingerprints([ds.dataset_id], num_processes=num_processes, check_dataset_integrity=verify,
                                 clean=False, verbose=False)
        if not (pre / f"{PLANS}.json").is_file():
            log("planning the experiment (nnU-Net ExperimentPlanner)")
            plan_experiments([ds.dataset_id])
    return ds, dirs, pre / f"{PLANS}.json"


def plan_dataset(
    dataset: str | None = None,
    configurations: Sequence[str] = ("3d_fullres",),
    request: PlanRequest | None = None,
    work_dir: str | os.PathLike | None = None,
    verify: bool | None = None,
    num_processes: int | None = None,
    limit_cases: int | None = None,
    refresh_benchmark: bool = False,
    write: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Plan ``configurations`` of ``dataset`` for ``request``; see ``autoseg plan -h``.

    Each plan is added to nnU-Net's plans file as ``<base>_<arch>_plan`` (inheriting ``<base>``,
    hence its preprocessed data), with an ``autoseg`` block holding the schedule, the estimate,
    the cost model and the reasons. Returns the readable summary as a dict.
    """
    from autoseg.plans.budget import _resolved
    from autoseg.plans.cost import machine_costs

    request = request or PlanRequest()
    if request.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PlanError("--device cuda was asked for but torch sees no CUDA GPU")
    elif request.device != "cpu":
        raise PlanError(f"unknown device {request.device!r}: use cpu or cuda")
    ds, dirs, plans_file = nnunet_plans(dataset, work_dir, verify, num_processes, limit_cases, log)
    plans = json.loads(plans_file.read_text())
    fingerprint = json.loads((plans_file.parent / "dataset_fingerprint.json").read_text())
    costs = machine_costs(request.device, cache_dir=dirs.preprocessed, refresh=refresh_benchmark, log=log)
    n_cases = len(fingerprint["spacings"])
    in_channels = len(ds.dataset_json.get("channel_names", ds.dataset_json.get("modality", {"0": 0})))
    labels = ds.dataset_json["labels"]
    num_classes = len([k for k in labels if k != "ignore"])
    out: dict[str, Any] = {
        "dataset": ds.name, "plans_file": str(plans_file), "device": request.device,
        "median_spacing": plans["original_median_spacing_after_transp"],
        "median_shape": plans["original_median_shape_after_transp"], "n_cases": n_cases,
        "request": {k: v for k, v in asdict(request).items() if v is not None},
        "machine": {"name": costs.machine, "threads": costs.threads, "benchmark_seconds": costs.seconds_spent},
        "configurations": {},
    }
    planned: list[tuple[ConfigurationPlan, dict]] = []
    for base in configurations:
        if base not in plans["configurations"]:
            raise PlanError(f"nnU-Net did not plan {base!r} for {ds.name}; it planned "
                            f"{', '.join(c for c in plans['configurations'] if not c.endswith('_plan'))}")
        t0 = time.perf_counter()
        plan = plan_configuration(plans, base, request, costs, n_cases, in_channels, num_classes)
        resolved = _resolved(plans["configurations"], base)
        d = plan.as_dict()
        d.update(target_spacing=resolved["spacing"], median_shape_in_voxels=resolved["median_image_size_in_voxels"],
                 nnunet_patch_size=resolved["patch_size"], nnunet_batch_size=resolved["batch_size"],
                 planning_seconds=round(time.perf_counter() - t0, 2))
        out["configurations"][plan.name] = d
        planned.append((plan, configuration_entry(plan, costs, request)))
    if write:
        from autoseg.pipeline import _write_json_atomic

        plans = json.loads(plans_file.read_text())  # re-read: nothing else may be lost
        for plan, entry in planned:
            plans["configurations"][plan.name] = entry
        _write_json_atomic(plans_file, plans)
    return out


def format_plan(summary: dict[str, Any]) -> str:
    """The plan as text a person can read."""
    lines = [f"dataset {summary['dataset']}: {summary['n_cases']} cases, median spacing "
             f"{_fmt(summary['median_spacing'])}, median shape {_fmt(summary['median_shape'])}",
             f"machine {summary['machine']['name']} ({summary['device']}, {summary['machine']['threads']} threads; "
             f"micro-benchmark {summary['machine']['benchmark_seconds']} s)"]
    for name, c in summary["configurations"].items():
        parts = c["estimated_seconds_by_part"]
        lines += [
            "",
            f"configuration {name} (inherits nnU-Net's {c['base_configuration']}, architecture {c['arch']})",
            f"  target spacing      {_fmt(c['target_spacing'])}   median shape {_fmt(c['median_shape_in_voxels'])}",
            f"  patch size          {_fmt(c['patch_size'])}   (nnU-Net: {_fmt(c['nnunet_patch_size'])})",
            f"  batch size          {c['batch_size']}   (nnU-Net: {c['nnunet_batch_size']})",
            f"  stages              {c['n_stages']}, features {c['features_per_stage']}, strides {c['strides']}",
            f"  parameters          {c['parameters'] / 1e6:.2f} M",
            f"  memory (estimated)  {c['estimated_memory_bytes'] / 2**30:.2f} GiB",
            f"  time per iteration  {c['estimated_seconds_per_iteration']:.3f} s (convolutions {parts['convolutions']:.3f}, "
            f"matmuls {parts['matmuls']:.3f}, softmax {parts['softmax']:.3f}, element-wise {parts['elementwise']:.3f}, augmentation "
            f"{parts['augmentation']:.3f}, per-operation overhead {parts['per_operation']:.3f}, fixed {parts['fixed']:.3f})",
            f"  schedule            {c['epochs']} epochs x {c['iterations_per_epoch']} iterations = {c['iterations']} "
            f"(validation {c['val_iterations_per_epoch']} per epoch)",
            f"  time per run        {_fmt_s(c['estimated_seconds_per_run'])} (training plus start-up and validation)",
            "  why:",
        ]
        lines += [f"    - {r}" for r in c["reasons"]]
        if c["overrides"]:
            lines.append(f"  overrides           {c['overrides']}")
    lines += ["", f"written to {summary['plans_file']}",
              "train with: autoseg plan_and_train (its own budgets) or nnUNetv2_train <dataset> <configuration> <fold> "
              "-tr nnUNetTrainer_autoseg_<loss> (after nnUNetv2_preprocess of the base configuration)"]
    return "\n".join(lines)


def _fmt(v) -> str:
    return "x".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else str(v)


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


__all__ = ["plan_dataset", "format_plan", "nnunet_plans"]
