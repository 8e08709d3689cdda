"""The loss registry: a decorator fills it, ``build_loss`` and ``list_losses`` read it."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

CATEGORIES = ("pixel", "region", "boundary", "combination")

# Keyword arguments that every loss understands the same way; they are plumbing, not hyper-parameters
# a study varies, so the registry lists them apart.
COMMON_ARGUMENTS = ("ignore_index", "reduction")


@dataclass(frozen=True)
class LossInfo:
    """What the registry knows of one loss."""

    name: str
    cls: type[nn.Module]
    function: Callable[..., Any] | None
    category: str
    citation: str
    summary: str
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    extra_inputs: tuple[str, ...] = ()
    learnable: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "class": self.cls.__name__,
            "category": self.category,
            "citation": self.citation,
            "summary": self.summary,
            "hyper_parameters": dict(self.hyper_parameters),
            "extra_inputs": list(self.extra_inputs),
            "learnable": self.learnable,
        }


_REGISTRY: dict[str, LossInfo] = {}


def register_loss(
    name: str,
    *,
    category: str,
    citation: str,
    function: Callable[..., Any] | None = None,
    extra_inputs: tuple[str, ...] = (),
    learnable: bool = False,
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers an ``nn.Module`` loss under ``name``."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    if not name.isidentifier() or name.lower() != name:
        raise ValueError(f"loss names are snake_case identifiers, got {name!r}")

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"a loss named {name!r} is already registered ({_REGISTRY[name].cls.__name__})")
        doc = inspect.getdoc(cls) or ""
        _REGISTRY[name] = LossInfo(
            name=name,
            cls=cls,
            function=function,
            category=category,
            citation=citation,
            summary=doc.splitlines()[0] if doc else "",
            hyper_parameters=_defaults(cls),
            extra_inputs=tuple(extra_inputs),
            learnable=learnable,
        )
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def _defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {
        k: (None if p.default is inspect.Parameter.empty else p.default)
        for k, p in params.items()
        if k != "self" and k not in COMMON_ARGUMENTS
        and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _ensure_loaded() -> None:
    # Importing the catalogue modules runs their decorators.
    from autoseg.losses import catalogue  # noqa: F401


def list_losses(pattern: str = "*", category: str | None = None) -> list[str]:
    """Registered loss names matching a shell-style ``pattern`` (and ``category``), sorted."""
    _ensure_loaded()
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    return sorted(
        n for n, info in _REGISTRY.items()
        if fnmatch.fnmatchcase(n, pattern) and (category is None or info.category == category)
    )


def get_loss_info(name: str) -> LossInfo:
    """The registry entry of ``name``; unknown names raise ``KeyError`` with the closest names."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownLossError(name, list(_REGISTRY)) from None


class UnknownLossError(KeyError, ValueError):
    """Raised for a loss name that is not registered; the message suggests close matches."""

    def __init__(self, name: str, known: list[str]):
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        self.message = (f"unknown loss {name!r}.{hint} Registered losses: {', '.join(sorted(known))} "
                        "(or combine them as 'a+b').")
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def check_hyper_parameters(name: str, kwargs: dict[str, Any]) -> None:
    """Reject keyword arguments the loss does not accept, naming the accepted ones."""
    info = get_loss_info(name)
    params = inspect.signature(info.cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [k for k in params if k != "self"]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ValueError(
            f"loss {name!r} has no hyper-parameter {', '.join(repr(u) for u in unknown)}; "
            f"it accepts: {', '.join(accepted)}"
        )
