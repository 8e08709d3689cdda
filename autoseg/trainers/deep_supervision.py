"""Deep supervision that hands each scale its own extra inputs (maps), with nnU-Net's scale weights.

Replaces nnU-Net's ``DeepSupervisionWrapper``: ``loss(outputs, targets, extras)`` with ``extras`` a
list (one per scale) of keyword tensors for the loss. A loss, or a compound component, whose class
sets ``full_resolution_only = True`` (``hausdorff_dt``: distance maps of the prediction are computed
at full resolution only) is evaluated at scale 0 only, with the whole deep-supervision weight (the
weights sum to 1), so its balance against the other terms is the same as without deep supervision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from autoseg.losses.maps import MAP_KINDS


def _declared(module: nn.Module) -> set[str]:
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "extra_inputs", ()) or ())
    return names


def full_resolution_modules(loss: nn.Module) -> list[nn.Module]:
    return [m for m in loss.modules() if getattr(m, "full_resolution_only", False)]


def map_kinds_per_scale(loss: nn.Module, weights: Sequence[float] | None) -> list[tuple[str, ...]]:
    """Which map kinds the workers must compute at each scale (one entry without deep supervision).

    Scales with weight 0 get none (nnU-Net does not evaluate the loss there); kinds needed only by
    full-resolution-only terms are computed at scale 0 only.
    """
    full = full_resolution_modules(loss)
    inside_full = {id(m) for f in full for m in f.modules()}
    # A compound's own extra_inputs is the union of its components'; a module that holds a
    # full-resolution term must not re-add that term's kinds at the coarse scales.
    holds_full = {id(m) for m in loss.modules() if any(id(c) in inside_full for c in m.modules())}
    coarse: set[str] = set()
    for m in loss.modules():
        if id(m) not in holds_full:
            coarse.update(getattr(m, "extra_inputs", ()) or ())
    everywhere = set().union(*(_declared(f) for f in full)) | coarse if full else coarse
    n = 1 if weights is None else len(weights)
    layout = []
    for i in range(n):
        if weights is not None and not weights[i]:
            layout.append(())
            continue
        names = everywhere if i == 0 else coarse
        layout.append(tuple(k for k in MAP_KINDS if k in names))
    return layout


def _call(loss: nn.Module, logits: torch.Tensor, target: torch.Tensor, extras: Mapping[str, Any]) -> torch.Tensor:
    if not extras:
        return loss(logits, target)
    wanted = _declared(loss)
    return loss(logits, target, **{k: v for k, v in extras.items() if k in wanted})


def _terms(loss: nn.Module) -> list[tuple[float, nn.Module]]:
    """A compound's weighted components (recursively), or the loss itself."""
    components = getattr(loss, "components", None)
    weights = getattr(loss, "weights", None)
    if components is None or weights is None or not full_resolution_modules(loss):
        return [(1.0, loss)]
    out = []
    for w, comp in zip(weights, components):
        out.extend((float(w) * cw, c) for cw, c in _terms(comp))
    return out


class DeepSupervisionLoss(nn.Module):
    """``sum_i w_i * loss(output_i, target_i, **extras_i)``; ``weights=None`` means no deep supervision."""

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]
        self._terms = _terms(loss)

    def forward(self, outputs, targets, extras: Sequence[Mapping[str, Any]] | None = None) -> torch.Tensor:
        if self.weights is None:
            return _call(self.loss, outputs, targets, (extras or [{}])[0])
        if len(outputs) != len(self.weights) or len(targets) != len(self.weights):
            raise ValueError(f"deep supervision with {len(self.weights)} weights got {len(outputs)} outputs "
                             f"and {len(targets)} targets")
        extras = list(extras) if extras is not None else [{} for _ in outputs]
        total: Any = 0
        if len(self._terms) == 1 and not getattr(self._terms[0][1], "full_resolution_only", False):
            for w, out, tgt, ex in zip(self.weights, outputs, targets, extras):
                if w:
                    total = total + w * _call(self.loss, out, tgt, ex)
            return total
        weight_sum = sum(self.weights)
        for tw, term in self._terms:
            if not tw:
                continue
            if getattr(term, "full_resolution_only", False):
                total = total + tw * weight_sum * _call(term, outputs[0], targets[0], extras[0])
                continue
            for w, out, tgt, ex in zip(self.weights, outputs, targets, extras):
                if w:
                    total = total + tw * w * _call(term, out, tgt, ex)
        return total
