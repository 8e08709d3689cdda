"""Inside nnU-Net, active_boundary gets its distance maps from the data pipeline, not from its own fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def test_trainer_hands_the_distance_maps_to_active_boundary(smoke_run, tmp_path, monkeypatch):
    from autoseg.losses.boundary import active_boundary
    from autoseg.losses.maps import compute_maps_torch
    from autoseg.trainers.factory import make_trainer_class

    work = Path(smoke_run["work"])
    r = smoke_run["result"]
    for key, value in {"nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
                       "nnUNet_results": str(tmp_path), "nnUNet_n_proc_DA": "0"}.items():
        monkeypatch.setenv(key, value)
    plans = json.loads((work / "nnUNet_preprocessed" / r["dataset"] / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((work / "nnUNet_raw" / r["dataset"] / "dataset.json").read_text())

    calls = []
    forward = active_boundary.ActiveBoundaryLoss.forward

    def spy(self, logits, target, distance=None):
        calls.append((target.detach().clone(), None if distance is None else distance.detach().clone()))
        return forward(self, logits, target, distance)

    monkeypatch.setattr(active_boundary.ActiveBoundaryLoss, "forward", spy)
    torch.manual_seed(0)
    trainer = make_trainer_class("active_boundary")(
        plans={**plans, "continue_training": False}, configuration=r["configuration"], fold=0,
        dataset_json=dataset_json, device=torch.device("cpu"))
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    loss = float(trainer.train_step(next(trainer.dataloader_train))["loss"])
    trainer.on_train_end()
    assert calls and all(d is not None for _, d in calls), "the trainer did not hand in the distance maps"
    assert torch.isfinite(torch.tensor(loss))
    # Full resolution: the workers' map is the map of the (augmented) target in the plan's spacing.
    target, distance = calls[0]  # nnU-Net's [B, 1, *spatial] int16 labels
    spacing = trainer.configuration_manager.spacing
    own = compute_maps_torch(target[:, 0], distance.shape[1], ("distance",), spacing=spacing,
                             ignore_index=trainer.label_manager.ignore_label)["distance"]
    torch.testing.assert_close(distance, own)
    assert (distance > 0).any()
