"""The one hand-written nnU-Net trainer: builds its loss from the autoseg registry and reads its budget from the plans."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from autoseg.losses import SegmentationLoss, build_loss

# Keys of a configuration's "autoseg" block in the plans file that set the training schedule.
BUDGET_KEYS = {
    "epochs": "num_epochs",
    "iterations_per_epoch": "num_iterations_per_epoch",
    "val_iterations_per_epoch": "num_val_iterations_per_epoch",
    "initial_lr": "initial_lr",
    "save_every": "save_every",
}


class nnUNetTrainerAutoseg(nnUNetTrainer):
    """nnU-Net's trainer with the loss taken from the autoseg registry.

    Subclasses made by :func:`autoseg.trainers.factory.make_trainer_class` set ``loss_name`` and
    ``loss_args``. The signature of ``__init__`` is nnU-Net's own (nnU-Net rebuilds a trainer from
    it), so everything else comes from class attributes and from the ``autoseg`` block of the
    configuration in the plans file (the training budget), which makes ``nnUNetv2_train`` with a
    generated trainer reproduce an ``autoseg plan_and_train`` run exactly.
    """

    loss_name: str = "dice_ce"
    loss_args: dict[str, Any] = {}
    #: ``False`` sends nnU-Net's per-epoch log lines to the log file only and prints one progress
    #: line per epoch instead (autoseg's CLI); ``True`` keeps nnU-Net's console output.
    console_log: bool = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        block = self.configuration_manager.configuration.get("autoseg", {})
        for key, attr in BUDGET_KEYS.items():
            if key in block.get("budget", {}):
                value = block["budget"][key]
                setattr(self, attr, type(getattr(self, attr))(value))
        self.autoseg_loss: SegmentationLoss | None = None
        self._epoch_started = time.time()
        self._epoch_seconds: list[float] = []

    # ---------------------------------------------------------------- loss
    def build_autoseg_loss(self) -> SegmentationLoss:
        """The registry loss with the dataset's settings: ignore label, batch Dice, natural-image classes."""
        if self.label_manager.has_regions:
            raise NotImplementedError(
                "autoseg losses are multi-class softmax losses; region-based (sigmoid) nnU-Net datasets are not supported"
            )
        context: dict[str, Any] = {
            "ignore_index": self.label_manager.ignore_label,
            "batch": bool(self.configuration_manager.batch_dice),
        }
        if self.dataset_json.get("autoseg", {}).get("natural_image", False):
            # Street scenes have no background class: class 0 (road, sky) must be trained like any other.
            context["include_background"] = True
        return build_loss(self.loss_name, context=context, **self.loss_args).to(self.device)

    def _build_loss(self):
        if self.autoseg_loss is None:
            self.autoseg_loss = self.build_autoseg_loss()
        loss = self.autoseg_loss
        if self.enable_deep_supervision:
            # nnU-Net's weighting: 1/2^i per scale, the coarsest ignored, normalised to sum 1.
            weights = np.array([1 / (2 ** i) for i in range(len(self._get_deep_supervision_scales()))])
            weights[-1] = 1e-6 if self.is_ddp else 0
            loss = DeepSupervisionWrapper(loss, weights / weights.sum())
        return loss

    def configure_optimizers(self):
        # Some losses own parameters (robust_t learns its degrees of freedom): they train with the network.
        if self.autoseg_loss is None:
            self.autoseg_loss = self.build_autoseg_loss()
        params = list(self.network.parameters()) + list(self.autoseg_loss.parameters())
        optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if (self.local_rank == 0 and not self.disable_checkpointing and self.autoseg_loss is not None
                and any(True for _ in self.autoseg_loss.parameters())):
            checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
            checkpoint["autoseg_loss_state"] = self.autoseg_loss.state_dict()
            tmp = f"{filename}.tmp"
            torch.save(checkpoint, tmp)
            os.replace(tmp, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        if "autoseg_loss_state" in checkpoint and self.autoseg_loss is not None:
            self.autoseg_loss.load_state_dict(checkpoint["autoseg_loss_state"])

    # ------------------------------------------------------------ progress
    def print_to_log_file(self, *args, also_print_to_console=True, add_timestamp=True):
        super().print_to_log_file(*args, also_print_to_console=also_print_to_console and self.console_log,
                                  add_timestamp=add_timestamp)

    def on_epoch_start(self):
        self._epoch_started = time.time()
        if self.autoseg_loss is not None:
            # Losses with a schedule (Kervadec's boundary-loss weight) follow the epoch; compounds pass it on.
            self.autoseg_loss.on_epoch_start(self.current_epoch, self.num_epochs)
        super().on_epoch_start()

    def on_epoch_end(self):
        done = self.current_epoch + 1
        super().on_epoch_end()
        self._epoch_seconds.append(time.time() - self._epoch_started)
        if self.console_log or self.local_rank != 0:
            return
        recent = self._epoch_seconds[-5:]
        left = max(0, self.num_epochs - done) * sum(recent) / len(recent)
        dice = self.logger.get_value("dice_per_class_or_region", step=-1)
        print(
            f"  epoch {done:>4}/{self.num_epochs}  train loss {self.logger.get_value('train_losses', step=-1):.4f}"
            f"  val loss {self.logger.get_value('val_losses', step=-1):.4f}"
            f"  pseudo Dice {' '.join(f'{d:.3f}' for d in dice)}  {self._epoch_seconds[-1]:.1f} s"
            f"  left ~{_fmt_seconds(left)}",
            flush=True,
        )


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
