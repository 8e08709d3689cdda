"""Budget-aware planner: patch, batch, width and depth from nnU-Net's plan, a time/memory budget and the cost model."""

from __future__ import annotations

import copy
import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from autoseg.plans.architectures import (
    ARCHITECTURES,
    SWIN_DIVISOR,
    check_architecture,
    resenc_architecture,
    swin_architecture,
)
from autoseg.plans.cost import MachineCosts, estimate

#: nnU-Net's rule: one batch covers at most 5 % of the dataset's voxels (and is at least 2)
MAX_BATCH_FRACTION = 0.05
#: the planner's rule: the most capable candidate that reaches this many iterations in the budget. Measured
#: (docs/planning.md, "Which rule trains best"): at 10 minutes a floor of 2000 beat 500 on Hippocampus
#: (0.877 against 0.828), its thick-slice stand-in (0.840 against 0.831) and CamVid (mIoU 0.292 against 0.191)
MIN_ITERATIONS = 2000
#: a run shorter than this is not worth planning (the network does not converge): when no candidate reaches
#: the floor, the fastest one is taken if it reaches this many
HARD_MIN_ITERATIONS = 500
#: share of a run's wall clock left for training: the rest is start-up and the final validation
TRAIN_SHARE = 0.8
PATCH_SCALES = (1.0, 0.8, 0.64, 0.5)
# 8 is left out: an 8-16-32-64 U-Net planned for 10 minutes collapsed to background on Hippocampus
# (docs/planning.md); 16 is the narrowest width measured to learn (the quick budget)
CNN_BASE_WIDTHS = (32, 24, 16)
SWIN_FEATURE_SIZES = (48, 24, 12)


class PlanError(ValueError):
    """A plan that cannot be made: bad override, or a budget nothing fits in."""


@dataclass
class PlanRequest:
    """What the person asks of the planner; ``None`` lets it choose."""

    arch: str = "cnn"
    device: str = "cpu"
    memory_bytes: float | None = None
    time_budget_s: float | None = None  # for all runs together
    runs: int = 1
    patch_size: list[int] | None = None
    batch_size: int | None = None
    features: list[int] | None = None  # one value: the first stage's width (or SwinUNETR's feature_size)
    min_iterations: int = MIN_ITERATIONS

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in (("patch_size", self.patch_size), ("batch_size", self.batch_size),
                                  ("features", self.features)) if v is not None}


@dataclass
class ConfigurationPlan:
    """One planned configuration: what was chosen, what it costs, and why."""

    name: str
    base_configuration: str
    arch: str
    patch_size: list[int]
    batch_size: int
    features_per_stage: list[int]
    n_stages: int
    strides: list[list[int]]
    parameters: int
    estimated_seconds_per_iteration: float
    estimated_seconds_by_part: dict[str, float]
    estimated_memory_bytes: float
    epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    estimated_seconds_per_run: float
    reasons: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)

    @property
    def iterations(self) -> int:
        return self.epochs * self.iterations_per_epoch

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["iterations"] = self.iterations
        d.pop("architecture")
        return d


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``600``, ``90s``, ``10m``, ``1.5h`` or ``1h30m``."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = text.strip().lower()
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", s)
        if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms]?)", "", s).strip():
            raise PlanError(f"cannot read the duration {text!r}: use e.g. 600, 90s, 10m, 1.5h or 1h30m")
        value = sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[u] for n, u in parts)
    if not value > 0:
        raise PlanError(f"a time budget must be positive, got {text!r}")
    return value


def parse_memory(text: str | float | int) -> float:
    """Bytes from ``8G``, ``512M``, ``8GB`` or a plain number of bytes."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
        if m is None:
            raise PlanError(f"cannot read the memory size {text!r}: use e.g. 8G, 512M or 16GB")
        value = float(m[1]) * 1024 ** " kmgt".index(m[2] or " ")
    if not value > 0:
        raise PlanError(f"a memory size must be positive, got {text!r}")
    return value


def parse_int_list(text: str | Sequence[int] | None, label: str) -> list[int] | None:
    if text is None:
        return None
    if isinstance(text, str):
        try:
            values = [int(v) for v in re.split(r"[x,\s]+", text.strip()) if v]
        except ValueError:
            raise PlanError(f"{label}: expected integers such as 40x56x40 or 16,32,64, got {text!r}") from None
    else:
        values = [int(v) for v in text]
    if not values or any(v < 1 for v in values):
        raise PlanError(f"{label}: expected positive integers, got {text!r}")
    return values


def default_memory(device: str) -> float:
    """The memory a plan may use: 90 % of the GPU, or half of this machine's RAM."""
    if device == "cuda":
        import torch

        return 0.9 * torch.cuda.get_device_properties(0).total_memory
    return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def max_batch_size(plans: dict, base: dict, patch_size: Sequence[int], n_cases: int) -> int:
    """nnU-Net's cap: a batch covers at most 5 % of all the dataset's voxels, and is at least 2."""
    median = np.prod(base.get("median_image_size_in_voxels", plans["original_median_shape_after_transp"]))
    dims = len(patch_size)
    if dims == 2 and len(plans["original_median_shape_after_transp"]) == 3:
        # 2D: every slice is a sample
        median = np.prod(plans["original_median_shape_after_transp"])
    total = median * max(n_cases, 1)
    return max(2, int(round(MAX_BATCH_FRACTION * total / np.prod(patch_size))))


def patch_divisors(strides: Sequence[Sequence[int]]) -> list[int]:
    """Per axis, what the patch size must divide by: the product of the network's strides."""
    return [int(np.prod([s[a] for s in strides])) for a in range(len(strides[0]))]


def check_patch(patch: Sequence[int], divisors: Sequence[int], what: str) -> None:
    if len(patch) != len(divisors):
        raise PlanError(f"patch size {list(patch)} has {len(patch)} axes; this configuration has {len(divisors)}")
    for axis, (p, d) in enumerate(zip(patch, divisors)):
        if p % d:
            raise PlanError(
                f"patch size {list(patch)}: axis {axis} ({p}) must be divisible by {d} ({what}); "
                f"nearest valid: {max(d, int(round(p / d)) * d)}"
            )


def _scaled_patches(patch: Sequence[int], divisors: Sequence[int], scales=PATCH_SCALES) -> list[list[int]]:
    out: list[list[int]] = []
    for f in scales:
        p = [max(d, int(round(s * f / d)) * d) for s, d in zip(patch, divisors)]
        if p not in out:
            out.append(p)
    return out


def _cnn_features(base_width: int, n_stages: int, cap: int) -> list[int]:
    return [min(base_width * 2 ** i, cap) for i in range(n_stages)]


def _candidates(base: dict, arch: str, req: PlanRequest) -> list[tuple[dict, list[int], str]]:
    """(architecture block, patch, description) for every network and patch the planner considers,
    most capable first: nnU-Net's patch before smaller ones, wider before narrower, deeper before shallower."""
    plain = base["architecture"]
    kw = plain["arch_kwargs"]
    dims = len(base["patch_size"])
    out = []
    if arch == "transformer":
        divisors = [SWIN_DIVISOR] * dims
        sizes = SWIN_FEATURE_SIZES
        if req.features is not None:
            if len(req.features) != 1 or req.features[0] % 12:
                raise PlanError(f"--features for the transformer is one SwinUNETR feature_size, a multiple of 12 "
                                f"(e.g. 12, 24, 48); got {req.features}")
            sizes = (req.features[0],)
        patches = ([req.patch_size] if req.patch_size is not None
                   else _scaled_patches(base["patch_size"], divisors, scales=(1.0, 0.75, 0.5, 0.375, 0.25)))
        if req.patch_size is not None:
            check_patch(req.patch_size, divisors, "SwinUNETR halves every axis five times")
        # instance norm at the 1/32 bottleneck needs more than one voxel there
        patches = [p for p in patches if np.prod(p) > SWIN_DIVISOR ** dims]
        if not patches:
            raise PlanError(f"patch size {req.patch_size}: SwinUNETR needs at least one axis of 64 or more "
                            f"(its 1/32 bottleneck must hold more than one voxel)")
        for patch, fs in itertools.product(patches, sizes):
            block = swin_architecture(dims, feature_size=fs)
            out.append((block, patch, f"SwinUNETR feature_size {fs}"))
        return out
    n0 = kw["n_stages"]
    cap = max(kw["features_per_stage"])
    depths = [n0] + ([n0 - 1] if n0 > 3 else [])
    if req.features is not None:
        if len(req.features) == 1:
            feature_options = [(n, _cnn_features(req.features[0], n, cap)) for n in depths]
        else:
            if len(req.features) not in depths:
                raise PlanError(f"--features lists {len(req.features)} stages; nnU-Net planned {n0} "
                                f"(give {n0}{' or ' + str(n0 - 1) if n0 > 3 else ''} values, or one base width)")
            feature_options = [(len(req.features), list(req.features))]
    else:
        feature_options = [(n, _cnn_features(w, n, cap)) for w in CNN_BASE_WIDTHS for n in depths]
    for n, feats in feature_options:
        block = copy.deepcopy(plain)
        k = block["arch_kwargs"]
        k["n_stages"] = n
        k["features_per_stage"] = feats
        for key in ("kernel_sizes", "strides", "n_conv_per_stage"):
            k[key] = k[key][:n]
        k["n_conv_per_stage_decoder"] = k["n_conv_per_stage_decoder"][:n - 1]
        if arch == "cnn_resenc":
            block = resenc_architecture(block)
        divisors = patch_divisors(k["strides"])
        if req.patch_size is not None:
            check_patch(req.patch_size, divisors, f"2^pools of a {n}-stage U-Net")
            patches = [req.patch_size]
        else:
            patches = _scaled_patches(base["patch_size"], divisors)
        for patch in patches:
            out.append((block, patch, f"{n} stages, features {feats}"))
    # most capable first: patch (context) matters most, then width, then depth
    out.sort(key=lambda c: (-np.prod(c[1]), -c[0]["arch_kwargs"]["features_per_stage"][0]))
    return out


def build_network(block: dict, in_channels: int, num_classes: int, deep_supervision: bool = True):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(block["network_class_name"], block["arch_kwargs"], block["_kw_requires_import"],
                                  in_channels, num_classes, allow_init=False, deep_supervision=deep_supervision)


_ESTIMATES: dict[tuple, dict] = {}


def estimate_block(costs: MachineCosts, block: dict, patch: list[int], batch: int, in_channels: int,
                   num_classes: int) -> dict:
    """:func:`~autoseg.plans.cost.estimate` of a plans block, the network built on the meta device
    (no memory, no initialisation) where it allows, and remembered per machine and candidate."""
    import json as _json

    import torch

    key = (_json.dumps(asdict(costs), sort_keys=True), _json.dumps(block, sort_keys=True), tuple(patch), batch,
           in_channels, num_classes)
    if key not in _ESTIMATES:
        try:
            with torch.device("meta"):
                net = build_network(block, in_channels, num_classes)
        except (RuntimeError, NotImplementedError):  # SwinUNETR calls .item() while it builds
            net = build_network(block, in_channels, num_classes)
        _ESTIMATES[key] = estimate(costs, net, batch, patch, in_channels)
    return _ESTIMATES[key]


#: at most this many candidates are timed for real per plan (each a few seconds); the rest keep the model's price
MAX_TIMED_CANDIDATES = 4
#: the parts of the model's estimate a timed step replaces (the data pipeline and the fixed cost stay priced)
NETWORK_PARTS = ("convolutions", "matmuls", "softmax", "elementwise", "per_operation")
_TIMED: dict[tuple, float] = {}


def step_timer(device: str, in_channels: int, num_classes: int, precision: str | None = None):
    """A function ``(architecture, patch, batch, arch) -> seconds`` that times one real training step of a plans
    block's ``architecture`` (autoseg ``arch``: cnn, cnn_resenc, transformer) on this machine
    (:func:`autoseg.plans.cost.time_training_step`), remembered per candidate."""
    import json as _json

    import torch

    from autoseg.plans.cost import time_training_step
    from autoseg.precision import training_precision

    def timer(block: dict, patch: Sequence[int], batch: int, arch: str = "cnn") -> float:
        prec = precision or training_precision(torch.device(device).type, arch)
        key = (device, torch.get_num_threads(), prec, _json.dumps(block, sort_keys=True), tuple(patch), batch,
               in_channels, num_classes)
        if key not in _TIMED:
            torch.manual_seed(0)
            net = build_network(block, in_channels, num_classes)
            _TIMED[key] = time_training_step(net, batch, patch, in_channels, num_classes, device, prec)
        return _TIMED[key]

    return timer


def with_timed_network(est: dict, seconds: float) -> dict:
    """``est`` with the network's priced parts replaced by the timed step's ``seconds``."""
    parts = {k: v for k, v in est["seconds_by_part"].items() if k not in NETWORK_PARTS and k != "total"}
    parts = {"network_timed": float(seconds), **parts}
    parts["total"] = sum(parts.values())
    return {**est, "seconds_per_iteration": parts["total"], "seconds_by_part": parts,
            "model_seconds_per_iteration": est["seconds_per_iteration"]}


def schedule_for(iterations: int) -> tuple[int, int, int]:
    """(epochs, iterations per epoch, validation iterations) for about ``iterations`` training steps.

    About 50 epochs (nnU-Net's learning-rate schedule and checkpoints are per epoch) of at most
    nnU-Net's 250 iterations, and validation in nnU-Net's 1:5 proportion.
    """
    per_epoch = int(min(250, max(10, round(iterations / 50))))
    epochs = max(1, int(iterations // per_epoch))
    return epochs, per_epoch, max(1, round(per_epoch / 5))


def plan_configuration(plans: dict, base_configuration: str, request: PlanRequest, costs: MachineCosts,
                       n_cases: int, in_channels: int, num_classes: int, timer=None) -> ConfigurationPlan:
    """Choose the network, patch and batch of one configuration for ``request`` on the measured machine.

    Candidates are tried from the most to the least capable (nnU-Net's patch first, then smaller
    patches; wider and deeper networks first; the largest batch nnU-Net allows down to 2); the
    first that fits the memory and reaches ``min_iterations`` within the time budget wins. Without
    a time budget the most capable candidate that fits the memory wins and keeps nnU-Net's schedule.

    ``timer`` (:func:`step_timer`): a candidate the cost model accepts is then timed for real, one training
    step of its network, and that time replaces the model's price of the network (up to
    ``MAX_TIMED_CANDIDATES`` candidates); one that no longer reaches ``min_iterations`` is passed over.
    """
    arch = check_architecture(request.arch)
    configs = plans["configurations"]
    if base_configuration not in configs:
        raise PlanError(f"configuration {base_configuration!r} was not planned by nnU-Net; it planned: "
                        f"{', '.join(configs)}")
    from autoseg.plans.budget import _resolved

    base = _resolved(configs, base_configuration)
    if request.batch_size is not None and request.batch_size < 1:
        raise PlanError(f"batch size must be at least 1, got {request.batch_size}")
    if request.runs < 1:
        raise PlanError(f"the number of runs must be at least 1, got {request.runs}")
    memory = request.memory_bytes or default_memory(request.device)
    per_run = request.time_budget_s / request.runs if request.time_budget_s else None
    train_s = per_run * TRAIN_SHARE if per_run else None
    reasons = [f"nnU-Net planned patch {base['patch_size']}, batch {base['batch_size']}, "
               f"features {base['architecture']['arch_kwargs']['features_per_stage']} for spacing {base['spacing']}"]

    def reaches(est: dict, floor: int) -> bool:
        """Whether ``est``'s seconds per iteration give ``floor`` iterations in the training time (always, without one)."""
        return not train_s or int(train_s // est["seconds_per_iteration"]) >= floor

    tried = []
    best = None
    fastest = None  # the quickest candidate that fits the memory: the plan when none reaches the floor
    timed = 0
    for block, patch, desc in _candidates(base, arch, request):
        bmax = max_batch_size(plans, base, patch, n_cases)
        if request.batch_size is not None:
            batches = [request.batch_size]
        else:
            # nnU-Net's own batch obeys its rule for its own patch; smaller patches may not take more
            allowed = {b for b in (32, 16, 8, 4, 2) if b <= bmax}
            if list(patch) == list(base["patch_size"]) or base["batch_size"] <= bmax:
                allowed.add(base["batch_size"])
            batches = sorted(b for b in allowed if b <= max(base["batch_size"], 2)) [::-1] or [2]
        for b in batches:
            est = estimate_block(costs, block, patch, b, in_channels, num_classes)
            fits_memory = est["memory_bytes"] <= memory
            if timer is not None and fits_memory and reaches(est, request.min_iterations) \
                    and timed < MAX_TIMED_CANDIDATES:
                timed += 1
                est = with_timed_network(est, timer(block, patch, b, arch))
            s_it = est["seconds_per_iteration"]
            tried.append((desc, patch, b, s_it, est["memory_bytes"]))
            if fits_memory and (fastest is None or s_it < fastest[3]["seconds_per_iteration"]):
                fastest = (block, patch, b, est, desc, bmax)
            if fits_memory and reaches(est, request.min_iterations):
                best = (block, patch, b, est, desc, bmax)
                break
        if best:
            break
    hard_min = min(request.min_iterations, HARD_MIN_ITERATIONS)
    fallback = False
    if best is None and train_s and fastest is not None:
        if timer is not None and "network_timed" not in fastest[3]["seconds_by_part"]:
            fastest = (*fastest[:3], with_timed_network(fastest[3], timer(*fastest[:3], arch)), *fastest[4:])
        if reaches(fastest[3], hard_min):
            best, fallback = fastest, True
    if best is None:
        smallest = min(tried, key=lambda t: t[3])
        need = []
        if train_s and smallest[3] * hard_min > train_s:
            need.append(f"{smallest[3]:.2f} s/iteration x {hard_min} iterations = "
                        f"{smallest[3] * hard_min / TRAIN_SHARE:.0f} s per run "
                        f"(budget {per_run:.0f} s per run)")
        if smallest[4] > memory:
            need.append(f"{smallest[4] / 2**30:.2f} GiB (limit {memory / 2**30:.2f} GiB)")
        if not need:
            need.append("more time or memory than the budget gives")
        raise PlanError(f"nothing fits the budget: the cheapest plan ({smallest[0]}, patch {smallest[1]}, "
                        f"batch {smallest[2]}) needs {' and '.join(need)}")
    block, patch, b, est, desc, bmax = best
    s_it = est["seconds_per_iteration"]
    if "network_timed" in est["seconds_by_part"]:
        reasons.append(f"network timed on this machine: {est['seconds_by_part']['network_timed']:.2f} s per training "
                       f"step (the cost model priced the whole iteration at {est['model_seconds_per_iteration']:.2f} s, "
                       f"the timed one is {s_it:.2f} s with the data pipeline)"
                       + (f"; {timed - 1} faster-priced candidate(s) timed slower and were passed over" if timed > 1 else ""))
    if train_s:
        iterations = int(train_s // s_it)
        epochs, per_epoch, val = schedule_for(iterations)
        budget = f"time budget {per_run:.0f} s per run ({request.runs} run(s)), {TRAIN_SHARE:.0%} of it for training"
        if fallback:
            reasons.append(f"{budget}: no candidate reaches {request.min_iterations} iterations; the fastest, {desc}, "
                           f"patch {patch}, batch {b}, reaches {iterations} at {s_it:.2f} s (at least {hard_min} "
                           "are needed)")
        else:
            reasons.append(f"{budget}: the most capable candidate reaching {request.min_iterations} iterations "
                           f"is {desc}, patch {patch}, batch {b} ({iterations} iterations at {s_it:.2f} s)")
    else:
        epochs, per_epoch, val = 1000, 250, 50
        reasons.append(f"no time budget: the most capable candidate within the memory limit ({desc}, patch {patch}, "
                       f"batch {b}) with nnU-Net's schedule (1000 x 250 iterations)")
    if len(tried) > 1:
        rejected = tried[:-1][:3]
        reasons.append("rejected first: " + "; ".join(
            f"{d}, patch {p}, batch {bb}: {s:.2f} s/it, {m / 2**30:.2f} GiB" for d, p, bb, s, m in rejected))
    reasons.append(f"batch capped at {bmax} by nnU-Net's rule (one batch covers at most "
                   f"{MAX_BATCH_FRACTION:.0%} of the dataset's voxels), at least 2")
    if arch == "transformer":
        reasons.append(f"SwinUNETR halves every axis 5 times: patch axes are multiples of {SWIN_DIVISOR} "
                       f"(nnU-Net's {base['patch_size']} rounded)")
    else:
        reasons.append(f"patch divisible per axis by {patch_divisors(block['arch_kwargs']['strides'])} "
                       "(2^pools; nnU-Net's strides keep its anisotropic handling)")
    if request.overrides():
        reasons.append(f"overridden by the user: {request.overrides()}")
    feats = (block["arch_kwargs"].get("features_per_stage")
             or [block["arch_kwargs"]["feature_size"] * 2 ** i for i in range(5)])
    name = f"{base_configuration}_{arch}_plan"
    return ConfigurationPlan(
        name=name, base_configuration=base_configuration, arch=arch, patch_size=list(patch), batch_size=int(b),
        features_per_stage=list(feats), n_stages=int(block["arch_kwargs"]["n_stages"]),
        strides=[list(s) for s in block["arch_kwargs"]["strides"]], parameters=int(est["parameters"]),
        estimated_seconds_per_iteration=round(s_it, 4),
        estimated_seconds_by_part={k: round(v, 4) for k, v in est["seconds_by_part"].items()},
        estimated_memory_bytes=float(est["memory_bytes"]), epochs=epochs, iterations_per_epoch=per_epoch,
        val_iterations_per_epoch=val, estimated_seconds_per_run=round(s_it * epochs * per_epoch / TRAIN_SHARE, 1),
        reasons=reasons, overrides=request.overrides(), architecture=block,
    )


def configuration_entry(plan: ConfigurationPlan, costs: MachineCosts, request: PlanRequest) -> dict[str, Any]:
    """The plans-file entry of ``plan``: inherits nnU-Net's configuration (same preprocessed data)."""
    budget = {"name": plan.name, "epochs": plan.epochs, "iterations_per_epoch": plan.iterations_per_epoch,
              "val_iterations_per_epoch": plan.val_iterations_per_epoch,
              "save_every": max(1, min(50, plan.epochs // 10 or 1))}
    return {
        "inherits_from": plan.base_configuration,
        "patch_size": plan.patch_size,
        "batch_size": plan.batch_size,
        "architecture": plan.architecture,
        "autoseg": {
            "budget": budget,
            "architecture": plan.arch,
            "request": {k: v for k, v in asdict(request).items() if v is not None},
            "overrides": plan.overrides,
            "estimate": {"seconds_per_iteration": plan.estimated_seconds_per_iteration,
                         "seconds_by_part": plan.estimated_seconds_by_part,
                         "seconds_per_run": plan.estimated_seconds_per_run,
                         "memory_bytes": plan.estimated_memory_bytes, "parameters": plan.parameters},
            "cost_model": asdict(costs),
            "reasons": plan.reasons,
        },
    }


__all__ = ["ARCHITECTURES", "HARD_MIN_ITERATIONS", "MIN_ITERATIONS", "ConfigurationPlan", "PlanError", "PlanRequest", "plan_configuration",
           "configuration_entry", "parse_duration", "parse_memory", "parse_int_list", "max_batch_size",
           "patch_divisors", "check_patch", "schedule_for", "build_network", "estimate_block", "step_timer",
           "with_timed_network"]
