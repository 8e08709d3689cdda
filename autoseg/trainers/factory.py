"""Makes one nnU-Net trainer class per loss (and per hyper-parameter setting and seed) from the registry."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from autoseg.io import read_json, update_json
from autoseg.losses import build_loss, list_losses
from autoseg.trainers.base import nnUNetTrainerAutoseg
from autoseg.trainers.names import PREFIX, canonical_args, parse_trainer_name, trainer_class_name

VARIANTS_FILE = "autoseg_trainers.json"
_CACHE: dict[str, type] = {}


def make_trainer_class(loss: str, loss_args: dict[str, Any] | None = None, seed: int = 0) -> type:
    """The trainer class for ``loss`` with ``loss_args`` and training ``seed`` (cached: one class object per name).

    The loss is built once here so that a bad name or hyper-parameter fails before any training.
    """
    args = canonical_args(loss_args)
    name = trainer_class_name(loss, args, seed)
    if name not in _CACHE:
        build_loss(loss, **args)  # validate now, with a clear error
        _CACHE[name] = type(name, (nnUNetTrainerAutoseg,), {
            "loss_name": loss,
            "loss_args": args,
            "seed": seed,
            "__module__": __name__,
            "__doc__": f"nnU-Net trainer with the autoseg loss {loss!r} {args or ''}{f' seed {seed}' if seed else ''}".strip(),
        })
    return _CACHE[name]


def registered_trainers() -> dict[str, type]:
    """One trainer per registered loss at its default hyper-parameters."""
    return {trainer_class_name(n): make_trainer_class(n) for n in list_losses()}


def needs_variant_record(loss: str, loss_args: dict[str, Any] | None) -> bool:
    """Whether nnU-Net can resolve this loss's trainer by name without ``autoseg_trainers.json``."""
    return bool(canonical_args(loss_args)) or "+" in loss


def record_variant(results_dir: str | os.PathLike, loss: str, loss_args: dict[str, Any] | None) -> str:
    """Remember a non-default trainer name in ``<results>/autoseg_trainers.json`` so that nnU-Net
    (``nnUNetv2_predict``, ``nnUNetv2_train --c``) can resolve it again by name.

    The file is shared by every run of a results folder: it is changed under its lock, so runs
    started at once never drop each other's entries. The name recorded is the seed-0 one; a
    seeded name resolves through it."""
    name = trainer_class_name(loss, loss_args)
    entry = {"loss": loss, "loss_args": canonical_args(loss_args)}

    def add(variants: dict) -> dict | None:
        if variants.get(name) == entry:
            return None
        return {**variants, name: entry}

    update_json(Path(results_dir) / VARIANTS_FILE, add, default={}, sort_keys=True)
    return name


def resolve_trainer_name(name: str) -> type | None:
    """The trainer class called ``name``, or ``None`` if it is not an autoseg trainer.

    Registered losses resolve directly; other settings through the variants file of
    ``nnUNet_results``. A ``_seed<N>`` suffix gives the same trainer with that seed.
    """
    parsed = parse_trainer_name(name)
    if parsed is None:
        return None
    if name in _CACHE:
        return _CACHE[name]
    if not parsed.hash and re.fullmatch(r"[a-z][a-z0-9_]*", parsed.stem) and parsed.stem in list_losses():
        return make_trainer_class(parsed.stem, seed=parsed.seed)
    results = os.environ.get("nnUNet_results")
    if results:
        entry = (read_json(Path(results) / VARIANTS_FILE, {}) or {}).get(parsed.base)
        if entry is not None:
            return make_trainer_class(entry["loss"], entry["loss_args"], seed=parsed.seed)
    return None


__all__ = ["PREFIX", "VARIANTS_FILE", "canonical_args", "make_trainer_class", "needs_variant_record",
           "parse_trainer_name", "record_variant", "registered_trainers", "resolve_trainer_name",
           "trainer_class_name"]
