"""What a grid asks for and its expansion into runs, each with one deterministic identity."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoseg.records import FoldRecord
from autoseg.trainers.names import canonical_args, trainer_class_name


class GridError(ValueError):
    """A grid that cannot be expanded as written; the message names the part."""


LossSetting = tuple[str, dict[str, Any]]


def parse_loss_item(text: str) -> list[LossSetting]:
    """One ``--loss`` value as (loss, hyper-parameters) settings.

    ``all`` every registered loss; ``pixel``/``region``/``combination`` a category, or
    ``category=<name>`` for any category (``boundary`` alone is Kervadec's loss: a registered loss's
    name wins over a category's, so ``category=boundary`` selects the boundary category);
    ``dice,combo`` a list; ``tversky:alpha=0.3,0.5,0.7`` a sweep (one setting per value);
    ``tversky:alpha=0.3,0.7:beta=0.5,0.7`` the product of two sweeps. Values read as in
    ``--loss-args`` (``1;2;3`` a list, ``topk.k=20`` a component of a compound).
    """
    from autoseg.cli._args import parse_value
    from autoseg.losses import CATEGORIES, list_losses

    text = text.strip()
    if not text:
        raise GridError("an empty --loss")
    name, *sweeps = text.split(":")
    name = name.strip()
    if not sweeps:
        out: list[LossSetting] = []
        for item in (s.strip() for s in name.split(",")):
            if not item:
                continue
            if item == "all":
                out += [(n, {}) for n in list_losses()]
            elif item.startswith("category="):
                category = item.partition("=")[2].strip()
                if category not in CATEGORIES:
                    raise GridError(f"unknown loss category {category!r} in --loss {text!r}; "
                                    f"categories: {', '.join(CATEGORIES)}")
                out += [(n, {}) for n in list_losses(category=category)]
            elif item in CATEGORIES and item not in list_losses():
                out += [(n, {}) for n in list_losses(category=item)]
            else:
                out.append((item, {}))
        return out
    axes: list[list[tuple[str, Any]]] = []
    for sweep in sweeps:
        key, eq, values = sweep.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", key):
            raise GridError(f"cannot read {sweep!r} in --loss {text!r}: write loss:key=v1,v2,... "
                            "(e.g. tversky:alpha=0.3,0.5,0.7), several keys as loss:a=1,2:b=3")
        parsed = [parse_value(v) for v in values.split(",") if v.strip()]
        if not parsed:
            raise GridError(f"{key} has no values in --loss {text!r}")
        axes.append([(key, v) for v in parsed])
    keys = [a[0][0] for a in axes]
    if len(set(keys)) != len(keys):
        raise GridError(f"a hyper-parameter is swept twice in --loss {text!r}")
    return [(name, dict(combo)) for combo in itertools.product(*axes)]


def expand_losses(items: Sequence[str], validate: bool = True) -> list[LossSetting]:
    """Every setting of ``items`` (``--loss`` values), duplicates removed, in the order given.

    ``validate`` builds each loss once, so an unknown name or a bad hyper-parameter fails here,
    before any preparation or training.
    """
    from autoseg.losses import build_loss

    seen: dict[str, LossSetting] = {}
    for item in items:
        for loss, args in parse_loss_item(item):
            args = canonical_args(args)
            if validate:
                build_loss(loss, **args)
            seen.setdefault(trainer_class_name(loss, args), (loss, args))
    if not seen:
        raise GridError("no loss to run: give --loss (a name, a list, a category, all, or a sweep)")
    return list(seen.values())


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """``0``, ``0-2``, ``0,3,7``: non-negative training seeds (0 keeps nnU-Net's unseeded behaviour)."""
    if isinstance(text, int):
        values = [text]
    elif isinstance(text, str):
        from autoseg.prepare import parse_int_ranges

        values = parse_int_ranges(text, "seed", "0, 0-2 or 0,3,7", GridError)
    else:
        values = [int(s) for s in text]
    if any(s < 0 for s in values):
        raise GridError(f"seeds are non-negative integers, got {values}")
    return sorted(set(values))


@dataclass(frozen=True)
class Target:
    """One prepared (dataset, configuration, architecture): what every run on it shares."""

    dataset: str  # DatasetXXX_Name
    base_configuration: str
    configuration: str  # the trained configuration's name in the plans file
    architecture: str
    n_folds: int
    budget: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    natural_image: bool = False
    plans: str = "nnUNetPlans"


def expand(targets: Sequence[Target], losses: Sequence[LossSetting], folds: str | Sequence[int],
           seeds: Sequence[int], parse_folds: Callable[[Any, int], list[int]] | None = None) -> list[FoldRecord]:
    """The runs of a grid as pending records, in a fixed order: target, loss, seed, fold.

    Each run's identity (:attr:`FoldRecord.run_id`) names everything that determines its result:
    dataset, trained configuration (base, budget or plan, architecture), plans, loss,
    hyper-parameters (hash), seed, fold.
    """
    if parse_folds is None:
        from autoseg.prepare import parse_folds as parse_folds_
        parse_folds = parse_folds_
    runs: list[FoldRecord] = []
    seen: set[str] = set()
    for t in targets:
        fold_list = parse_folds(folds, t.n_folds)
        for (loss, args), seed in itertools.product(losses, seeds):
            trainer = trainer_class_name(loss, args, seed)
            for fold in fold_list:
                rec = FoldRecord(dataset=t.dataset, configuration=t.configuration, trainer=trainer, fold=fold,
                                 loss=loss, loss_args=canonical_args(args), seed=seed, plans=t.plans,
                                 architecture=t.architecture, base_configuration=t.base_configuration,
                                 budget=dict(t.budget), plan=t.plan, natural_image=t.natural_image)
                if rec.run_id not in seen:
                    seen.add(rec.run_id)
                    runs.append(rec)
    return runs


__all__ = ["GridError", "LossSetting", "Target", "expand", "expand_losses", "parse_loss_item", "parse_seeds"]
