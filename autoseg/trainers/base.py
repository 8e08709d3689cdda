"""The one hand-written nnU-Net trainer: builds its loss from the autoseg registry and reads its budget from the plans."""

from __future__ import annotations

import math
import os
import random
import time
from typing import Any

import numpy as np
import torch
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from autoseg import precision as _precision
from autoseg.console import say
from autoseg.losses import SegmentationLoss, build_loss
from autoseg.losses.maps import map_classes
from autoseg.trainers.deep_supervision import DeepSupervisionLoss, map_kinds_per_scale
from autoseg.trainers.heads import CHECKPOINT_KEY, AuxiliaryHeads, head_requests
from autoseg.trainers.maps_transform import LossMapsTransform, scale_spacings, split_target

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
    #: training seed (part of the trainer's name, ``_seed<N>``): 0 keeps nnU-Net's unseeded behaviour
    seed: int = 0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        block = self.configuration_manager.configuration.get("autoseg", {})
        for key, attr in BUDGET_KEYS.items():
            if key in block.get("budget", {}):
                value = block["budget"][key]
                setattr(self, attr, type(getattr(self, attr))(value))
        self.autoseg_loss: SegmentationLoss | None = None
        # Map kinds the augmentation workers append to each scale's target (see maps_transform.py);
        # None until the data pipeline is built, empty tuples when the loss needs no map.
        self.maps_layout: list[tuple[str, ...]] | None = None
        #: training-only heads on the last decoder stage, built when the loss asks for any (see heads.py)
        self.autoseg_heads: AuxiliaryHeads | None = None
        self._epoch_started = time.time()
        self._epoch_seconds: list[float] = []
        #: "fp16-amp" (CUDA, nnU-Net's), "bf16" (CPUs with native bfloat16) or "fp32": see autoseg/precision.py
        self.training_precision = _precision.training_precision(self.device.type,
                                                                block.get("architecture", "cnn"))

    def initialize(self):
        # nnU-Net seeds nothing; a grid needs seeds that really change training (weight initialisation,
        # patch sampling and augmentation in the main process) and that can be named again.
        if self.seed:
            seed_everything(self.seed)
        super().initialize()

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
        loss = build_loss(self.loss_name, context=context, **self.loss_args).to(self.device)
        for module in loss.modules():
            # Losses that compute maps of the prediction themselves (hausdorff_dt) measure them in
            # the plan's spacing, the unit of the ground-truth maps the workers hand them.
            if hasattr(module, "spacing") and module.spacing is None:
                module.spacing = tuple(float(s) for s in self.configuration_manager.spacing)
            # Frozen networks inside a loss (InverseForm's) run in the training precision when it is bfloat16.
            if hasattr(module, "network_dtype") and module.network_dtype is None and self.training_precision == "bf16":
                module.network_dtype = "bfloat16"
        return loss

    def deep_supervision_weights(self) -> list[float] | None:
        """nnU-Net's weighting: 1/2^i per scale, the coarsest ignored, normalised to sum 1 (None without DS)."""
        if not self.enable_deep_supervision:
            return None
        weights = np.array([1 / (2 ** i) for i in range(len(self._get_deep_supervision_scales()))])
        weights[-1] = 1e-6 if self.is_ddp else 0
        return list(weights / weights.sum())

    def _build_loss(self):
        if self.autoseg_loss is None:
            self.autoseg_loss = self.build_autoseg_loss()
        return DeepSupervisionLoss(self.autoseg_loss, self.deep_supervision_weights())

    def compute_loss(self, output, target, extras: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """The training and validation loss of one batch: the one place both steps call.

        ``output`` is the network's output (a list per scale with deep supervision), ``target`` the
        label maps as nnU-Net hands them, ``extras`` one dict of keyword tensors per scale (the
        maps the workers computed). The auxiliary heads' outputs of this same forward pass join the
        full-resolution scale's extras (the heads sit on the last decoder stage).
        """
        if self.autoseg_heads is not None:
            captured = self.autoseg_heads.pop_outputs()
            if not captured:
                raise RuntimeError("the loss asks for auxiliary heads but none were captured in this forward pass")
            extras = [dict(e) for e in extras] if extras else [{} for _ in (output if isinstance(output, list) else [0])]
            extras[0].update(_precision.to_float32(captured))
        return self.loss(output, target, extras)

    def _do_i_compile(self):
        # The heads read the last decoder stage through a forward hook that stores tensors on a Python
        # object; torch.compile's handling of such side effects is not something to rely on silently.
        if self.autoseg_loss is None:
            self.autoseg_loss = self.build_autoseg_loss()
        heads, features = head_requests(self.autoseg_loss)
        if heads or features:
            return False
        return super()._do_i_compile()

    def build_autoseg_heads(self) -> AuxiliaryHeads | None:
        """The auxiliary heads the loss asks for, hooked onto the network's last decoder stage (or ``None``)."""
        dims = len(self.configuration_manager.patch_size)
        heads = AuxiliaryHeads.for_loss(self.network, self.autoseg_loss, dims)
        if heads is not None:
            heads.to(self.device)
            self.print_to_log_file(f"autoseg: training-only heads {heads.spec} on the last decoder stage "
                                   f"({heads.in_channels} channels){' + decoder features' if heads.keep_features else ''}")
        return heads

    # ------------------------------------------------------- maps in the workers
    def _maps_transform(self, deep_supervision_scales) -> LossMapsTransform | None:
        if self.autoseg_loss is None:
            self.autoseg_loss = self.build_autoseg_loss()
        weights = self.deep_supervision_weights() if deep_supervision_scales is not None else None
        self.maps_layout = map_kinds_per_scale(self.autoseg_loss, weights)
        if not any(self.maps_layout):
            return None  # a loss that needs no map pays nothing
        spacings = scale_spacings(self.configuration_manager.spacing, self.configuration_manager.patch_size,
                                  deep_supervision_scales)
        num_classes = self.label_manager.num_segmentation_heads
        return LossMapsTransform(self.maps_layout, num_classes, spacings, self.label_manager.ignore_label,
                                 map_classes(self.autoseg_loss, num_classes))

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        transforms = nnUNetTrainer.get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=use_mask_for_norm, is_cascaded=is_cascaded, foreground_labels=foreground_labels,
            regions=regions, ignore_label=ignore_label)
        maps = self._maps_transform(deep_supervision_scales)
        if maps is not None:
            transforms.transforms.append(maps)  # last: after spatial augmentation and DS down-sampling
        return transforms

    def get_validation_transforms(self, deep_supervision_scales, is_cascaded=False, foreground_labels=None,
                                  regions=None, ignore_label=None):
        transforms = nnUNetTrainer.get_validation_transforms(
            deep_supervision_scales, is_cascaded=is_cascaded, foreground_labels=foreground_labels,
            regions=regions, ignore_label=ignore_label)
        maps = self._maps_transform(deep_supervision_scales)
        if maps is not None:
            transforms.transforms.append(maps)
        return transforms

    def split_batch_target(self, target):
        """``(labels, extras)`` of a collated batch target (maps unpacked, see maps_transform.py)."""
        return split_target(target, self.maps_layout if self.maps_layout and any(self.maps_layout) else None,
                            self.label_manager.num_segmentation_heads)

    # ------------------------------------------------------------- steps
    def _to_device(self, x):
        if isinstance(x, list):
            return [self._to_device(i) for i in x]
        if isinstance(x, dict):
            return {k: self._to_device(v) for k, v in x.items()}
        return x.to(self.device, non_blocking=True)

    def forward_in_precision(self, data):
        """The network's output in the run's precision (autoseg/precision.py): under nnU-Net's float16
        autocast on CUDA; under bfloat16 autocast on CPUs that compute it natively, cast back to float32
        for the loss (its sums run over the whole patch)."""
        with _precision.autocast(self.training_precision):
            output = self.network(data)
        return _precision.to_float32(output) if self.training_precision == "bf16" else output

    def loss_in_precision(self, output, target, extras):
        """compute_loss on :meth:`forward_in_precision`'s output: inside float16 autocast on CUDA (nnU-Net's
        way), in float32 otherwise."""
        if self.training_precision == "bf16":
            return self.compute_loss(output, target, extras)
        with _precision.autocast(self.training_precision):
            return self.compute_loss(output, target, extras)

    def _forward_and_loss(self, data, target, extras):
        output = self.forward_in_precision(data)
        return output, self.loss_in_precision(output, target, extras)

    def train_step(self, batch: dict) -> dict:
        # nnU-Net's train_step, with the target unpacked into labels and maps and the loss taken
        # from compute_loss.
        data = batch["data"].to(self.device, non_blocking=True)
        target, extras = self.split_batch_target(batch["target"])
        target, extras = self._to_device(target), self._to_device(extras)
        self.optimizer.zero_grad(set_to_none=True)
        output, loss = self._forward_and_loss(data, target, extras)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}

    def validation_step(self, batch: dict) -> dict:
        # nnU-Net's validation_step (softmax case; region-based datasets are rejected when the loss
        # is built), with the same unpacking and compute_loss as train_step.
        data = batch["data"].to(self.device, non_blocking=True)
        target, extras = self.split_batch_target(batch["target"])
        target, extras = self._to_device(target), self._to_device(extras)
        output, loss = self._forward_and_loss(data, target, extras)
        del data
        if self.enable_deep_supervision:
            output, target = output[0], target[0]
        axes = [0] + list(range(2, output.ndim))
        output_seg = output.argmax(1)[:, None]
        predicted_onehot = torch.zeros(output.shape, device=output.device, dtype=torch.float16)
        predicted_onehot.scatter_(1, output_seg, 1)
        del output_seg
        mask = None
        if self.label_manager.has_ignore_label:
            mask = (target != self.label_manager.ignore_label).float()
            target = torch.where(target == self.label_manager.ignore_label, torch.zeros_like(target), target)
        tp, fp, fn, _ = get_tp_fp_fn_tn(predicted_onehot, target, axes=axes, mask=mask)
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp.detach().cpu().numpy()[1:],
                "fp_hard": fp.detach().cpu().numpy()[1:], "fn_hard": fn.detach().cpu().numpy()[1:]}

    def configure_optimizers(self):
        # Some losses own parameters (robust_t learns its degrees of freedom): they train with the network.
        if self.autoseg_loss is None:
            self.autoseg_loss = self.build_autoseg_loss()
        if self.autoseg_heads is None:
            self.autoseg_heads = self.build_autoseg_heads()
        params = list(self.network.parameters()) + list(self.autoseg_loss.parameters())
        if self.autoseg_heads is not None:
            params += list(self.autoseg_heads.parameters())
        optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"training precision: {self.training_precision} (autoseg/precision.py)",
                               also_print_to_console=False)
        if self.autoseg_heads is not None:
            self.autoseg_heads.set_capture(True)

    def on_train_end(self):
        super().on_train_end()
        if self.autoseg_heads is not None:
            self.autoseg_heads.set_capture(False)  # later forward passes (inference) compute no head

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnU-Net's sliding-window validation reuses self.network: no head may run there.
        if self.autoseg_heads is None:
            return super().perform_actual_validation(save_probabilities)
        with self.autoseg_heads.capturing(False):
            return super().perform_actual_validation(save_probabilities)

    def save_checkpoint(self, filename: str) -> None:
        # nnU-Net writes a checkpoint in place: a run killed during the write (a grid killed, a job
        # preempted) would leave a truncated checkpoint_latest.pth that no resume can read. Written
        # beside it and renamed, the old checkpoint stays whole until the new one is.
        partial = f"{filename}.partial"
        super().save_checkpoint(partial)
        if not os.path.isfile(partial):  # another rank, or checkpointing disabled: nothing was written
            return
        learnable = self.autoseg_loss is not None and any(True for _ in self.autoseg_loss.parameters())
        if learnable or self.autoseg_heads is not None:
            # The network's weights stay nnU-Net's own entry; loss parameters and heads ride beside them.
            checkpoint = torch.load(partial, map_location="cpu", weights_only=False)
            if learnable:
                checkpoint["autoseg_loss_state"] = self.autoseg_loss.state_dict()
            if self.autoseg_heads is not None:
                checkpoint[CHECKPOINT_KEY] = self.autoseg_heads.checkpoint_state()
            torch.save(checkpoint, partial)
        os.replace(partial, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        if "autoseg_loss_state" in checkpoint and self.autoseg_loss is not None:
            self.autoseg_loss.load_state_dict(checkpoint["autoseg_loss_state"])
        if self.autoseg_heads is not None:
            if CHECKPOINT_KEY not in checkpoint:
                raise ValueError("this loss trains auxiliary heads but the checkpoint holds none "
                                 f"(no {CHECKPOINT_KEY!r} entry): it was written by a trainer without them")
            self.autoseg_heads.load_checkpoint_state(checkpoint[CHECKPOINT_KEY])

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
        # nnU-Net redraws progress.png after every epoch: about half a second of matplotlib on this
        # CPU, 4 to 7 % of a quick epoch. It is drawn when checkpoint_latest is written and at the end.
        redraw = done % self.save_every == 0 or done >= self.num_epochs
        if not redraw:
            self.logger.plot_progress_png = _skip_plot
        try:
            super().on_epoch_end()
        finally:
            self.logger.__dict__.pop("plot_progress_png", None)
        self._epoch_seconds.append(time.time() - self._epoch_started)
        if self.console_log or self.local_rank != 0:
            return
        recent = self._epoch_seconds[-5:]
        left = max(0, self.num_epochs - done) * sum(recent) / len(recent)
        dice = self.logger.get_value("dice_per_class_or_region", step=-1)
        say(
            f"  epoch {done:>4}/{self.num_epochs}  train loss {self.logger.get_value('train_losses', step=-1):.4f}"
            f"  val loss {self.logger.get_value('val_losses', step=-1):.4f}"
            f"  pseudo Dice {' '.join(f'{d:.3f}' for d in dice)}  {self._epoch_seconds[-1]:.1f} s"
            f"  left ~{_fmt_seconds(left)}"
        )
        if done == CORRECTION_EPOCHS and self.num_epochs > CORRECTION_EPOCHS:
            say(self.corrected_estimate())

    def corrected_estimate(self) -> str:
        """The run's cost from its measured epochs (the first one, with start-up, left out), beside the plan's estimate."""
        measured = self._epoch_seconds[1:CORRECTION_EPOCHS] or self._epoch_seconds[:1]
        per_epoch = sum(measured) / len(measured)
        text = (f"  corrected estimate after {CORRECTION_EPOCHS} epochs: {per_epoch:.1f} s per epoch, training "
                f"~{_fmt_seconds(per_epoch * self.num_epochs)} in all")
        estimate = self.configuration_manager.configuration.get("autoseg", {}).get("estimate", {})
        if estimate.get("seconds_per_iteration"):
            planned = estimate["seconds_per_iteration"] * self.num_iterations_per_epoch
            text += (f"; the plan estimated {planned:.1f} s per epoch of training iterations (measured/estimated "
                     f"{per_epoch / planned:.2f}, the measured epoch includes its validation iterations)")
        return text


#: after this many epochs a run prints its cost measured so far against the plan's estimate
CORRECTION_EPOCHS = 3


def _skip_plot(output_folder: str) -> None:
    """Stands in for the logger's plot_progress_png on epochs that draw no picture."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
