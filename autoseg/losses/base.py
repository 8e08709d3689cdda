"""The public base of every registered loss: what a loss takes, declares and is told by the trainer.

A loss is an ``nn.Module`` that subclasses :class:`SegmentationLoss` (pixel losses, compounds) or
:class:`RegionLoss` (losses built from per-class ratios), registers itself with
:func:`autoseg.losses.register_loss` in one module under ``autoseg/losses/<category>/`` and is found
there without any other edit (see ``docs/losses.md``, "Adding a loss").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from autoseg.losses._validation import (
    check_bool,
    check_extras,
    check_ignore_index,
    check_logits_target,
    check_positive,
    check_reduction,
)

__all__ = ["RegionLoss", "SegmentationLoss"]


class SegmentationLoss(nn.Module):
    """Base of every autoseg loss: raw logits ``[B, C, *spatial]`` and integer targets in, a value out.

    Class attributes (read by the registry, so they are stated once, where the loss is defined):

    - ``extra_inputs``: names of the extra tensors the loss can use (e.g. ``("signed_distance",)``).
      The trainer hands them to :meth:`forward` as keyword arguments ``[B, C, *spatial]`` at the
      logits' scale; called without them, the loss must compute them from ``target`` itself, so
      ``build_loss(name)(logits, target)`` always works.
    - ``learnable``: ``True`` when the loss owns parameters the optimiser must train
      (``robust_t``'s degrees of freedom); the trainer adds ``loss.parameters()`` to its optimiser.

    Keyword-only constructor arguments shared by every loss:

    - ``ignore_index``: label whose voxels add neither value nor gradient (``None``: none).
    - ``reduction``: ``"mean"``, ``"sum"`` or ``"none"`` (one value per case).

    Subclasses implement ``forward(logits, target, **extras)``; a loss without extra inputs may
    write ``forward(logits, target)``. :meth:`check_inputs` runs the shared input checks.
    """

    extra_inputs: ClassVar[tuple[str, ...]] = ()
    learnable: ClassVar[bool] = False

    def __init__(self, *, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__()
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(logits, target, **extras)")

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called by the trainer at the start of every epoch (0-based ``epoch`` of ``num_epochs``).

        The default does nothing; a loss with a schedule (Kervadec's boundary-loss weight) overrides it.
        """

    def check_inputs(self, logits: torch.Tensor, target: torch.Tensor,
                     extras: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Validate ``(logits, target)`` and the extra inputs; return the target as ``[B, *spatial]`` int64.

        Raises ``TypeError``/``ValueError`` naming what arrived and what was expected, for wrong
        shapes, dtypes, labels, non-finite logits, and extra inputs the loss does not declare or
        whose batch or spatial size is not the logits'.
        """
        target = check_logits_target(logits, target, self.ignore_index)
        if extras:
            check_extras(type(self).__name__, self.extra_inputs, extras, logits)
        return target

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._shared_arguments().items())

    def _shared_arguments(self) -> dict[str, Any]:
        return {"ignore_index": self.ignore_index, "reduction": self.reduction}


class RegionLoss(SegmentationLoss):
    """Base of the losses built from per-class ratios of soft counts (Dice, IoU, Tversky...).

    Adds three keyword-only arguments to :class:`SegmentationLoss`'s:

    - ``include_background``: keep class 0 in the class mean.
    - ``batch``: sum the batch before any ratio is taken (nnU-Net's batch Dice); with
      ``reduction="none"`` the value then has shape ``[1]``.
    - ``smooth``: added to numerator and denominator of every ratio (``s/s = 1`` for a class absent
      from reference and prediction).

    A subclass whose formula has no use for one of them leaves it out of its own signature and
    passes the value that describes it (e.g. Lovász has no smoothing: ``smooth=0``), so no
    argument is ever accepted and then ignored.
    """

    def __init__(self, *, include_background: bool = False, batch: bool = False, smooth: float = 1e-5,
                 ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.include_background = check_bool("include_background", include_background)
        self.batch = check_bool("batch", batch)
        self.smooth = check_positive("smooth", smooth, allow_zero=True)

    def region_kwargs(self) -> dict[str, Any]:
        """The five shared arguments as keywords, for the loss's functional form."""
        return dict(ignore_index=self.ignore_index, include_background=self.include_background,
                    batch=self.batch, smooth=self.smooth, reduction=self.reduction)

    def _shared_arguments(self) -> dict[str, Any]:
        return self.region_kwargs()
