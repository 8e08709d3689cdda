"""Makes one nnU-Net trainer class per loss (and per hyper-parameter setting) from the registry."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from autoseg.losses import build_loss, list_losses, parse_loss_spec
from autoseg.trainers.base import nnUNetTrainerAutoseg

PREFIX = "nnUNetTrainer_autoseg_"
VARIANTS_FILE = "autoseg_trainers.json"
_CACHE: dict[str, type] = {}


def canonical_args(loss_args: dict[str, Any] | None) -> dict[str, Any]:
    """Hyper-parameters in a stable, JSON-able form (sorted keys, tuples as lists)."""
    return json.loads(json.dumps(loss_args or {}, sort_keys=True))


def trainer_class_name(loss: str, loss_args: dict[str, Any] | None = None) -> str:
    """``nnUNetTrainer_autoseg_<loss>``, plus a short hash of the hyper-parameters when any are set.

    A compound such as ``dice+0.5*topk`` becomes ``dice_plus_0p5xtopk``. Different settings get
    different names, hence different nnU-Net result folders: two settings never overwrite each other.
    """
    terms = parse_loss_spec(loss)
    stem = "_plus_".join(n if w == 1.0 else f"{w:g}".replace(".", "p").replace("-", "m") + "x" + n for w, n in terms)
    args = canonical_args(loss_args)
    if args:
        digest = hashlib.sha1(json.dumps({"loss": loss, "loss_args": args}, sort_keys=True).encode()).hexdigest()[:8]
        stem = f"{stem}_{digest}"
    return PREFIX + stem


def make_trainer_class(loss: str, loss_args: dict[str, Any] | None = None) -> type:
    """The trainer class for ``loss`` with ``loss_args`` (cached: one class object per name).

    The loss is built once here so that a bad name or hyper-parameter fails before any training.
    """
    args = canonical_args(loss_args)
    name = trainer_class_name(loss, args)
    if name not in _CACHE:
        build_loss(loss, **args)  # validate now, with a clear error
        _CACHE[name] = type(name, (nnUNetTrainerAutoseg,), {
            "loss_name": loss,
            "loss_args": args,
            "__module__": __name__,
            "__doc__": f"nnU-Net trainer with the autoseg loss {loss!r} {args or ''}".strip(),
        })
    return _CACHE[name]


def registered_trainers() -> dict[str, type]:
    """One trainer per registered loss at its default hyper-parameters."""
    return {trainer_class_name(n): make_trainer_class(n) for n in list_losses()}


def record_variant(results_dir: str | os.PathLike, loss: str, loss_args: dict[str, Any] | None) -> str:
    """Remember a non-default trainer name in ``<results>/autoseg_trainers.json`` so that nnU-Net
    (``nnUNetv2_predict``, ``nnUNetv2_train --c``) can resolve it again by name."""
    name = trainer_class_name(loss, loss_args)
    path = Path(results_dir) / VARIANTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    variants = _read_variants(path)
    entry = {"loss": loss, "loss_args": canonical_args(loss_args)}
    if variants.get(name) != entry:
        variants[name] = entry
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".autoseg_trainers.")
        with os.fdopen(fd, "w") as f:
            json.dump(variants, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    return name


def _read_variants(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def resolve_trainer_name(name: str) -> type | None:
    """The trainer class called ``name``, or ``None`` if it is not an autoseg trainer.

    Registered losses resolve directly; other settings through the variants file of
    ``nnUNet_results``.
    """
    if not name.startswith(PREFIX):
        return None
    if name in _CACHE:
        return _CACHE[name]
    stem = name[len(PREFIX):]
    if re.fullmatch(r"[a-z][a-z0-9_]*", stem) and stem in list_losses():
        return make_trainer_class(stem)
    results = os.environ.get("nnUNet_results")
    if results:
        entry = _read_variants(Path(results) / VARIANTS_FILE).get(name)
        if entry is not None:
            return make_trainer_class(entry["loss"], entry["loss_args"])
    return None
