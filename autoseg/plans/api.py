"""``plan_dataset``: nnU-Net's fingerprint and plans, then autoseg's budget-aware planner, written into the plans file."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from autoseg.plans.planner import PlanError, PlanRequest


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

    Each plan is added to nnU-Net's plans file as ``<base>_<arch>_plan_<digest>`` (inheriting
    ``<base>``, hence its preprocessed data), with an ``autoseg`` block holding the schedule, the
    estimate, the cost model and the reasons: the same name ``plan_and_train`` and ``benchmark``
    give the same plan (:func:`autoseg.prepare.planned_configuration`). Returns the readable
    summary as a dict.
    """
    from autoseg.data.bundled import BUNDLED
    from autoseg.plans.budget import _resolved
    from autoseg.plans.cost import machine_costs
    from autoseg.prepare import import_dataset, nnunet_plans, planned_configuration

    request = request or PlanRequest()
    if request.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PlanError("--device cuda was asked for but torch sees no CUDA GPU")
    elif request.device != "cpu":
        raise PlanError(f"unknown device {request.device!r}: use cpu or cuda")
    from autoseg.paths import resolve_work_dirs

    dirs = resolve_work_dirs(work_dir)
    ds = import_dataset(dataset, dirs, limit_cases, log)
    if verify is None:
        verify = dataset not in (None, *BUNDLED)
    plans_file = nnunet_plans(ds, dirs, verify, num_processes, log)
    plans = json.loads(plans_file.read_text())
    fingerprint = json.loads((plans_file.parent / "dataset_fingerprint.json").read_text())
    costs = machine_costs(request.device, cache_dir=dirs.preprocessed, refresh=refresh_benchmark, log=log,
                          architecture=request.arch)
    n_cases = len(fingerprint["spacings"])
    out: dict[str, Any] = {
        "dataset": ds.name, "plans_file": str(plans_file), "device": request.device,
        "median_spacing": plans["original_median_spacing_after_transp"],
        "median_shape": plans["original_median_shape_after_transp"], "n_cases": n_cases,
        "request": {k: v for k, v in asdict(request).items() if v is not None},
        "machine": {"name": costs.machine, "threads": costs.threads, "benchmark_seconds": costs.seconds_spent},
        "configurations": {},
    }
    for base in configurations:
        t0 = time.perf_counter()
        # the machine was measured just above (refreshed if asked): the cached costs serve every configuration
        plan, _ = planned_configuration(plans_file, base, request, ds, dirs, log, write=write)
        resolved = _resolved(plans["configurations"], base)
        d = plan.as_dict()
        d.update(target_spacing=resolved["spacing"], median_shape_in_voxels=resolved["median_image_size_in_voxels"],
                 nnunet_patch_size=resolved["patch_size"], nnunet_batch_size=resolved["batch_size"],
                 planning_seconds=round(time.perf_counter() - t0, 2))
        out["configurations"][plan.name] = d
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
            f"  time per iteration  {c['estimated_seconds_per_iteration']:.3f} s ({_fmt_parts(parts)})",
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


_PART_NAMES = {"network_timed": "network step, timed", "convolutions": "convolutions", "matmuls": "matmuls",
               "softmax": "softmax", "elementwise": "element-wise", "augmentation": "augmentation",
               "per_operation": "per-operation overhead", "fixed": "fixed"}


def _fmt_parts(parts: dict) -> str:
    """The estimate's parts, in seconds: the timed network step where there is one, else the model's parts."""
    return ", ".join(f"{label} {parts[k]:.3f}" for k, label in _PART_NAMES.items() if k in parts)


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


__all__ = ["plan_dataset", "format_plan"]
