"""Segmentation losses behind one API: ``build_loss(name, **hyper_parameters)`` and ``list_losses()``.

Every loss takes raw logits ``[B, C, *spatial]`` and integer targets ``[B, 1, *spatial]`` or
``[B, *spatial]``, masks ``ignore_index`` out of every term and returns a value to minimise.
Registered names combine as weighted sums: ``"dice+ce"``, ``"dice+0.5*topk"``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

from autoseg.losses.base import RegionLoss, SegmentationLoss
from autoseg.losses.registry import (
    CATEGORIES,
    LossInfo,
    UnknownLossError,
    check_hyper_parameters,
    get_loss_info,
    list_losses,
    register_loss,
)

__all__ = [
    "CATEGORIES", "LossInfo", "RegionLoss", "SegmentationLoss", "UnknownLossError", "build_loss", "get_loss_info",
    "list_losses", "parse_loss_spec", "register_loss",
]

_TERM = re.compile(r"^\s*(?:(?P<w>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[a-z][a-z0-9_]*)\s*$")


def parse_loss_spec(spec: str) -> list[tuple[float, str]]:
    """Split ``"dice+0.5*topk"`` into ``[(1.0, "dice"), (0.5, "topk")]``, checking every name."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a loss name must be a non-empty string, got {spec!r}")
    terms = []
    for part in spec.split("+"):
        m = _TERM.match(part)
        if m is None:
            raise ValueError(
                f"cannot parse loss term {part.strip()!r} in {spec!r}; write a registered name, "
                "optionally with a weight, e.g. 'dice+0.5*topk'"
            )
        get_loss_info(m["name"])  # raises with suggestions for unknown names
        terms.append((float(m["w"]) if m["w"] else 1.0, m["name"]))
    names = [n for _, n in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"loss {spec!r} names a component twice")
    return terms


def _accepted(info: LossInfo) -> set[str]:
    return {k for k in inspect.signature(info.cls.__init__).parameters if k != "self"}


def build_loss(name: str, context: Mapping[str, Any] | None = None, **hyper_parameters: Any) -> SegmentationLoss:
    """Build the loss module registered as ``name`` (or a compound ``"a+b"``).

    Args:
        name: a registered name (see :func:`list_losses`) or a ``+``-separated weighted sum of them.
        context: settings a trainer supplies (``ignore_index``, ``batch``...), applied to every
            component that accepts them unless the caller set them explicitly.
        **hyper_parameters: the loss's keyword arguments. For a compound, prefix a component's
            argument with its name (``**{"topk.k": 20}``); unprefixed ones go to every component
            that accepts them.

    Raises:
        UnknownLossError: for an unregistered name, with the closest names.
        ValueError: for a hyper-parameter the loss does not have or a value out of range.
    """
    terms = parse_loss_spec(name)
    context = dict(context or {})
    if len(terms) == 1 and terms[0][0] == 1.0:
        loss_name = terms[0][1]
        info = get_loss_info(loss_name)
        bad = [k for k in hyper_parameters if "." in k]
        if bad:
            raise ValueError(f"prefixed hyper-parameters {bad} only apply to compound losses like 'a+b'")
        check_hyper_parameters(loss_name, hyper_parameters)
        accepted = _accepted(info)
        kwargs = {k: v for k, v in context.items() if k in accepted}
        kwargs.update(hyper_parameters)
        return info.cls(**kwargs)

    from autoseg.losses.compound import CompoundLoss

    names = [n for _, n in terms]
    per_component: dict[str, dict[str, Any]] = {n: {} for n in names}
    shared: dict[str, Any] = {}
    for key, value in hyper_parameters.items():
        if "." in key:
            comp, _, arg = key.partition(".")
            if comp not in per_component:
                raise ValueError(f"hyper-parameter {key!r} names {comp!r}, which is not part of {name!r}")
            per_component[comp][arg] = value
        else:
            shared[key] = value
    unused = set(shared)
    components = []
    for n in names:
        accepted = _accepted(get_loss_info(n))
        kwargs = {k: v for k, v in context.items() if k in accepted}
        for k, v in shared.items():
            if k in accepted:
                kwargs[k] = v
                unused.discard(k)
        kwargs.update(per_component[n])
        check_hyper_parameters(n, per_component[n])
        components.append((n, get_loss_info(n).cls(**kwargs)))
    if unused:
        raise ValueError(f"no component of {name!r} accepts {sorted(unused)}")
    return CompoundLoss(components, [w for w, _ in terms])
