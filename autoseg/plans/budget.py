"""Training budgets as extra configurations of nnU-Net's plans file (``inherits_from``, same preprocessed data)."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Budget:
    """A training schedule and the network size it can afford.

    ``max_features`` caps the features per stage of nnU-Net's planned U-Net and ``batch_size``
    overrides the planned batch; ``None`` keeps nnU-Net's choice. ``epochs`` etc. are the
    trainer's schedule; ``None`` keeps nnU-Net's (1000 epochs of 250 iterations).
    """

    name: str
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None
    initial_lr: float | None = None
    save_every: int | None = None
    max_features: int | None = None
    base_features: int | None = None
    batch_size: int | None = None

    def schedule(self) -> dict[str, Any]:
        keys = ("epochs", "iterations_per_epoch", "val_iterations_per_epoch", "initial_lr", "save_every")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def with_schedule(self, epochs: int | None = None, iterations: int | None = None) -> Budget:
        """This budget with an explicit number of epochs and/or iterations per epoch."""
        for label, v in (("epochs", epochs), ("iterations", iterations)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{label} must be a positive integer, got {v!r}")
        if epochs is None and iterations is None:
            return self
        n_epochs = epochs if epochs is not None else self.epochs or 1000
        n_iter = iterations if iterations is not None else self.iterations_per_epoch or 250
        return replace(
            self,
            name=f"{self.name}_e{n_epochs}i{n_iter}",
            epochs=n_epochs,
            iterations_per_epoch=n_iter,
            # nnU-Net validates 50 batches per 250 training iterations; keep that proportion
            val_iterations_per_epoch=self.val_iterations_per_epoch or max(1, round(n_iter / 5)),
            save_every=min(self.save_every or 50, n_epochs),
        )


# ``quick`` was sized on a 2-core CPU for the bundled Hippocampus sample (see README: about 7
# minutes of plan_and_train with bf16 autocast, benchmarks/demo_speed.py); 50 epochs since
# 2026-11-30 (60 before: the same Dice, 0.8725 over two bf16 runs at 60, in 0.54x the float32
# run's time; 50 brings it under half). ``standard`` is nnU-Net's own plan and schedule.
BUDGETS: dict[str, Budget] = {
    "quick": Budget("quick", epochs=50, iterations_per_epoch=25, val_iterations_per_epoch=4, save_every=5,
                    initial_lr=1e-2, max_features=128, base_features=16, batch_size=None),
    "standard": Budget("standard"),
    # for tests: a couple of seconds of training
    "smoke": Budget("smoke", epochs=2, iterations_per_epoch=2, val_iterations_per_epoch=1, save_every=1,
                    max_features=32, base_features=8, batch_size=2),
}


def budget_configuration_name(base_configuration: str, budget: Budget, arch: str = "cnn") -> str:
    if arch != "cnn":
        return f"{base_configuration}_{budget.name}_{arch}"
    return base_configuration if budget.name == "standard" else f"{base_configuration}_{budget.name}"


def add_budget_configuration(plans_file: str | os.PathLike, base_configuration: str, budget: Budget,
                             arch: str = "cnn") -> str:
    """Add (or refresh) the configuration ``<base>_<budget>`` to an nnU-Net plans file.

    The new configuration inherits from ``base_configuration`` so it reuses its preprocessed data;
    it narrows the network (features per stage capped) and sets the batch, and its ``autoseg``
    block holds the budget, which :class:`~autoseg.trainers.base.nnUNetTrainerAutoseg` applies.
    The file is rewritten atomically (callers that may run at once hold its lock,
    :func:`autoseg.io.file_lock`, as :func:`autoseg.prepare.prepare` does). Returns the configuration's name.

    ``arch`` ``"cnn_resenc"`` swaps in nnU-Net's residual-encoder U-Net on the same stages;
    ``"transformer"`` MONAI's SwinUNETR (:mod:`autoseg.plans.architectures`) with the patch rounded
    to multiples of 32 and ``feature_size`` 12 (``max_features`` set) or 24. Both get their own
    configuration ``<base>_<budget>_<arch>``; ``"cnn"`` is the budget's narrowed nnU-Net U-Net.
    """
    from autoseg.plans.architectures import check_architecture, resenc_architecture, swin_architecture

    check_architecture(arch)
    path = Path(plans_file)
    plans = json.loads(path.read_text())
    configs = plans["configurations"]
    if base_configuration not in configs:
        raise ValueError(
            f"configuration {base_configuration!r} is not in {path}; it has: {', '.join(configs)}"
        )
    name = budget_configuration_name(base_configuration, budget, arch)
    if name == base_configuration:
        return name
    arch_name = arch
    base = _resolved(configs, base_configuration)
    arch = copy.deepcopy(base["architecture"])
    feats = list(arch["arch_kwargs"]["features_per_stage"])
    if budget.base_features is not None:
        feats = [budget.base_features * 2 ** i for i in range(len(feats))]
    if budget.max_features is not None:
        feats = [min(f, budget.max_features) for f in feats]
    arch["arch_kwargs"]["features_per_stage"] = feats
    entry: dict[str, Any] = {"inherits_from": base_configuration, "architecture": arch}
    if arch_name == "cnn_resenc":
        entry["architecture"] = resenc_architecture(arch)
    elif arch_name == "transformer":
        dims = len(base["patch_size"])
        entry["architecture"] = swin_architecture(dims, feature_size=12 if budget.max_features else 24)
        entry["patch_size"] = transformer_patch(base["patch_size"])
    if budget.batch_size is not None:
        entry["batch_size"] = budget.batch_size
    entry["autoseg"] = {"budget": {"name": budget.name, **budget.schedule()}, **({"architecture": arch_name} if arch_name != "cnn" else {}),
                        "budget_definition": {k: v for k, v in asdict(budget).items() if v is not None}}
    if configs.get(name) != entry:
        from autoseg.io import atomic_write_json

        configs[name] = entry
        atomic_write_json(path, plans, indent=4)
    return name


def transformer_patch(patch: list[int]) -> list[int]:
    """nnU-Net's patch rounded per axis to the nearest multiple of 32 (SwinUNETR), at least 32,
    with at least one axis of 64 so that its 1/32 bottleneck holds more than one voxel."""
    out = [max(32, int(round(p / 32)) * 32) for p in patch]
    if all(p == 32 for p in out):
        out[int(max(range(len(patch)), key=lambda i: patch[i]))] = 64
    return out


def resolved_configuration(configs: dict, name: str) -> dict:
    """The configuration ``name`` of a plans file's ``configurations`` with its ``inherits_from`` chain merged."""
    return _resolved(configs, name)


def _resolved(configs: dict, name: str) -> dict:
    entry = configs[name]
    if "inherits_from" in entry:
        merged = copy.deepcopy(_resolved(configs, entry["inherits_from"]))
        merged.update({k: v for k, v in entry.items() if k != "inherits_from"})
        return merged
    return entry
