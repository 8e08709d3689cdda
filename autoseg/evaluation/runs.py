"""Discovery of runs: every ``fold_<N>`` folder below a results folder, identified from autoseg.json or folder names."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoseg.heldout import TEST_DIR

_FOLDER_RE = re.compile(r"^(?P<trainer>.+?)__(?P<plans>.+?)__(?P<configuration>.+)$")


@dataclass
class Run:
    """One fold of one trained configuration, identified from autoseg.json or, failing that, its folder names."""

    path: Path
    dataset: str
    trainer: str
    plans: str
    configuration: str
    fold: str
    loss: str
    loss_args: dict = field(default_factory=dict)
    method: str = ""
    architecture: str = "unknown"
    budget: str = "unknown"
    budget_detail: dict = field(default_factory=dict)
    seed: str = ""
    status: str = "unknown"
    natural_image: bool | None = None
    state: str = ""  # what the evaluation made of it: "evaluated", or why it was not
    n_cases: int = 0
    n_computed: int = 0
    meta: dict = field(default_factory=dict)  # autoseg.json as read (device, seconds, plan...), {} without one

    @property
    def group(self) -> tuple[str, str, str, str, str]:
        """Runs in one group are compared with each other: same data, configuration, network, plans and budget."""
        return (self.dataset, self.configuration, self.architecture, self.plans, self.budget)

    def identity(self) -> dict:
        return {"dataset": self.dataset, "configuration": self.configuration, "architecture": self.architecture,
                "plans": self.plans, "budget": self.budget, "seed": self.seed, "method": self.method,
                "loss": self.loss, "loss_args": json.dumps(self.loss_args, sort_keys=True), "trainer": self.trainer,
                "fold": self.fold, "natural_image": bool(self.natural_image)}

    def as_row(self) -> dict:
        return {**self.identity(), "status": self.status, "state": self.state, "n_cases": self.n_cases,
                "n_computed": self.n_computed, "budget_detail": json.dumps(self.budget_detail, sort_keys=True),
                "path": str(self.path)}


def method_name(loss: str, loss_args: dict, trainer_hash: str | None) -> str:
    """Name of a loss with its hyper-parameters: ``combo`` for defaults, ``combo[alpha=0.3]`` otherwise."""
    if not trainer_hash:
        return loss
    if loss_args:
        return f"{loss}[{','.join(f'{k}={v}' for k, v in sorted(loss_args.items()))}]"
    return f"{loss}[{trainer_hash}]"


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is absent or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def parse_run(fold_dir: Path) -> Run | None:
    """A :class:`Run` for ``<dataset>/<trainer>__<plans>__<configuration>/fold_<N>``, or None if not one.

    The identity comes from the fold's run record (``autoseg.json``, :mod:`autoseg.records`, which
    also reads the older ``autoseg.json``; a result store holds only these) or, failing that, from
    the folder names (:func:`autoseg.trainers.names.parse_trainer_name`).
    """
    from autoseg.records import read_record
    from autoseg.trainers.names import parse_trainer_name

    m = _FOLDER_RE.match(fold_dir.parent.name)
    if not fold_dir.name.startswith("fold_") or m is None:
        return None
    trainer, plans, configuration = m["trainer"], m["plans"], m["configuration"]
    fold = fold_dir.name[len("fold_"):]
    try:
        record = read_record(fold_dir)
    except ValueError:
        record = None
    if record is not None:
        from autoseg.evaluation.store_rows import run_from_record

        return run_from_record(record, fold_dir, meta=read_json(fold_dir / "autoseg.json") or {})
    # a plain nnU-Net run (or autoseg.json lost): identity from the folder names, done once training finished
    tm = parse_trainer_name(trainer)
    loss = tm.stem if tm else trainer
    status = "done" if (fold_dir / "checkpoint_final.pth").exists() else "unknown"
    return Run(path=fold_dir, dataset=fold_dir.parent.parent.name, trainer=trainer, plans=plans,
               configuration=configuration, fold=fold, loss=loss,
               method=method_name(loss, {}, tm.hash if tm else None), seed=str(tm.seed) if tm else "",
               status=status)


def find_runs(results: Path) -> list[Run]:
    """Every ``fold_*`` folder below ``results`` (a results root, one dataset or one trainer folder). Links to
    folders are followed, each real folder once: a folder of links to several stores reports them together."""
    results = Path(results)
    runs = []
    seen = {os.path.realpath(results)}
    for dirpath, dirnames, _ in os.walk(results, followlinks=True):
        dirnames.sort()
        for d in list(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen:  # a link back up, or a second link to the same folder
                dirnames.remove(d)
                continue
            seen.add(real)
            if d == TEST_DIR:  # held-out test predictions (their fold_N folders are not runs): heldout_scoring
                dirnames.remove(d)
            elif d.startswith("fold_"):
                run = parse_run(Path(dirpath) / d)
                if run is not None:
                    runs.append(run)
                dirnames.remove(d)  # never look inside a fold
    return sorted(runs, key=lambda r: (r.group, r.method, fold_key(r.fold)))


def fold_key(fold: str) -> tuple:
    """Sort key of a fold name: numbered folds in numeric order, then the others (``all``, ``ensemble``)."""
    return (0, int(fold), "") if fold.isdigit() else (1, 0, fold)


def missing_folds(runs: Sequence[Run]) -> list[Run]:
    """Placeholder runs (status ``missing``) for folds that other methods of the same group have and one lacks."""
    by_group: dict[tuple, dict[str, dict[str, Run]]] = {}
    for r in runs:
        by_group.setdefault(r.group, {}).setdefault(r.method, {})[r.fold] = r
    out = []
    for methods in by_group.values():
        folds = set().union(*(set(f) for f in methods.values()))
        for method, have in methods.items():
            template = next(iter(have.values()))
            for fold in sorted(folds - set(have), key=fold_key):
                out.append(Run(path=template.path.parent / f"fold_{fold}", dataset=template.dataset,
                               trainer=template.trainer, plans=template.plans, configuration=template.configuration,
                               fold=fold, loss=template.loss, loss_args=template.loss_args, method=method,
                               architecture=template.architecture, budget=template.budget,
                               budget_detail=template.budget_detail, seed=template.seed, status="missing",
                               natural_image=template.natural_image, state="fold folder missing"))
    return out
