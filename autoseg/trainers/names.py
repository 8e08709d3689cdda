"""The names of generated trainers: how one is made from (loss, hyper-parameters, seed) and how one is read back.

Kept apart from the factory (which imports nnU-Net, seconds of imports) so that the evaluation can
parse folder names cheaply. ``nnUNetTrainer_autoseg_<stem>[_<hash>][_seed<N>]``: ``stem`` is the
loss (a compound such as ``dice+0.5*topk`` becomes ``dice_plus_0p5xtopk``), ``hash`` eight hex
digits of the hyper-parameters when any are set, ``seed`` the training seed when it is not 0.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

PREFIX = "nnUNetTrainer_autoseg_"
_NAME_RE = re.compile(r"^nnUNetTrainer_autoseg_(?P<stem>.+?)(?:_(?P<hash>[0-9a-f]{8}))?(?:_seed(?P<seed>\d+))?$")


def canonical_args(loss_args: dict[str, Any] | None) -> dict[str, Any]:
    """Hyper-parameters in a stable, JSON-able form (sorted keys, tuples as lists)."""
    return json.loads(json.dumps(loss_args or {}, sort_keys=True))


def args_hash(loss: str, loss_args: dict[str, Any] | None) -> str:
    """Eight hex digits naming a (loss, hyper-parameters) setting; ``""`` for the defaults."""
    args = canonical_args(loss_args)
    if not args:
        return ""
    return hashlib.sha1(json.dumps({"loss": loss, "loss_args": args}, sort_keys=True).encode()).hexdigest()[:8]


def loss_stem(loss: str) -> str:
    """The loss part of a trainer name: ``dice+0.5*topk`` -> ``dice_plus_0p5xtopk``."""
    from autoseg.losses import parse_loss_spec

    terms = parse_loss_spec(loss)
    return "_plus_".join(n if w == 1.0 else f"{w:g}".replace(".", "p").replace("-", "m") + "x" + n for w, n in terms)


def trainer_class_name(loss: str, loss_args: dict[str, Any] | None = None, seed: int = 0) -> str:
    """``nnUNetTrainer_autoseg_<loss>``, plus a short hash of the hyper-parameters when any are set and
    ``_seed<N>`` for a seed other than 0.

    Different settings (and seeds) get different names, hence different nnU-Net result folders: two
    runs never overwrite each other.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    stem = loss_stem(loss)
    digest = args_hash(loss, loss_args)
    if digest:
        stem = f"{stem}_{digest}"
    if seed:
        stem = f"{stem}_seed{seed}"
    return PREFIX + stem


@dataclass(frozen=True)
class TrainerName:
    """What a generated trainer's name tells: the loss stem, the hyper-parameter hash ("" for none), the seed."""

    name: str
    stem: str
    hash: str
    seed: int

    @property
    def base(self) -> str:
        """The name without the seed: the trainer of the same loss and hyper-parameters at seed 0."""
        return PREFIX + self.stem + (f"_{self.hash}" if self.hash else "")


def parse_trainer_name(name: str) -> TrainerName | None:
    """The parts of an autoseg trainer name, or ``None`` for any other trainer (nnU-Net's own)."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return TrainerName(name, m["stem"], m["hash"] or "", int(m["seed"] or 0))


__all__ = ["PREFIX", "TrainerName", "args_hash", "canonical_args", "loss_stem", "parse_trainer_name",
           "trainer_class_name"]
