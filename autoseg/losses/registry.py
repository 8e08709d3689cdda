"""The loss registry: a decorator fills it, ``build_loss`` and ``list_losses`` read it."""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import pkgutil
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

# The packages whose modules are loss modules: every public module in them must register a loss.
LOSS_PACKAGES = tuple(f"autoseg.losses.{c}" for c in CATEGORIES)
# Modules outside the category packages that also register losses (the weighted sums).
LOSS_MODULES = ("autoseg.losses.compound",)


def register_loss(
    name: str,
    *,
    category: str,
    citation: str,
    function: Callable[..., Any] | None = None,
    extra_inputs: tuple[str, ...] | None = None,
    learnable: bool | None = None,
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a :class:`~autoseg.losses.base.SegmentationLoss` under ``name``.

    ``extra_inputs`` and ``learnable`` are read from the class's attributes of the same names. The
    decorator arguments of the same names are kept for older code: given, they set the class
    attribute (and must not contradict a value the class states itself).
    """
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    if not name.isidentifier() or name.lower() != name:
        raise ValueError(f"loss names are snake_case identifiers, got {name!r}")

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        from autoseg.losses.base import SegmentationLoss

        if not (isinstance(cls, type) and issubclass(cls, SegmentationLoss)):
            raise TypeError(f"loss {name!r}: {cls!r} must subclass autoseg.losses.base.SegmentationLoss")
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"a loss named {name!r} is already registered ({_REGISTRY[name].cls.__name__})")
        _apply_legacy_argument(cls, "extra_inputs", None if extra_inputs is None else tuple(extra_inputs))
        _apply_legacy_argument(cls, "learnable", learnable)
        declared = cls.extra_inputs
        if not isinstance(declared, tuple) or not all(isinstance(x, str) and x.isidentifier() for x in declared):
            raise TypeError(f"{cls.__name__}.extra_inputs must be a tuple of identifiers, got {declared!r}")
        doc = inspect.getdoc(cls) or ""
        _REGISTRY[name] = LossInfo(
            name=name,
            cls=cls,
            function=function,
            category=category,
            citation=citation,
            summary=doc.splitlines()[0] if doc else "",
            hyper_parameters=_defaults(cls),
            extra_inputs=tuple(declared),
            learnable=bool(cls.learnable),
        )
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def _apply_legacy_argument(cls: type, attr: str, value: Any) -> None:
    if value is None:
        return
    own = cls.__dict__.get(attr)
    if own is not None and own != value:
        raise ValueError(f"{cls.__name__}.{attr} = {own!r} but register_loss was given {attr}={value!r}")
    setattr(cls, attr, value)


def _defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {
        k: (None if p.default is inspect.Parameter.empty else p.default)
        for k, p in params.items()
        if k != "self" and k not in COMMON_ARGUMENTS
        and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def loss_modules() -> list[str]:
    """Names of every module that defines losses: the public modules of the category packages, and compound.

    A module or package whose name starts with ``_`` is a private helper and is skipped.
    """
    names = list(LOSS_MODULES)
    for package_name in LOSS_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if not any(part.startswith("_") for part in info.name.split(".")[len(package_name.split(".")):]):
                if not info.ispkg:
                    names.append(info.name)
    return sorted(names)


def modules_without_losses() -> list[str]:
    """Loss modules (see :func:`loss_modules`) in which no registered loss class is defined.

    A test asserts this is empty, so a loss module whose ``@register_loss`` was forgotten fails.
    """
    _ensure_loaded()
    defining = {info.cls.__module__ for info in _REGISTRY.values()}
    return [m for m in loss_modules() if m not in defining]


_LOADED = False


def _ensure_loaded() -> None:
    # Importing every loss module runs its decorators: a new loss is one new file, nothing to list.
    global _LOADED
    if _LOADED:
        return
    for module in loss_modules():
        importlib.import_module(module)
    _LOADED = True


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
