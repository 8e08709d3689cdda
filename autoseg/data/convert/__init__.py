"""Dataset converters: Synapse, Cityscapes, CamVid, MSD and generic folders to nnU-Net raw datasets.

``convert(kind, source, out, dataset_id, **options)`` discovers the cases of a source, validates
all of them (every problem reported at once, nothing written), then writes the dataset to a
temporary folder that is renamed into place. Converters register themselves with ``@register``.

>>> from autoseg.data.convert import convert, list_converters
>>> list_converters()
['camvid', 'cityscapes', 'folder', 'msd', 'synapse']
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autoseg.data.convert._write import (
    SPLITS_FILE,
    DatasetExistsError,
    DatasetPlan,
    crossval_splits,
    install_splits,
    write_dataset,
)
from autoseg.data.convert.validate import ConversionError, Problem, validate_cases

__all__ = [
    "SPLITS_FILE", "ConversionError", "ConversionResult", "DatasetExistsError", "DatasetPlan", "Problem",
    "convert", "crossval_splits", "discover", "get_converter", "install_splits", "list_converters", "register",
    "validate",
]

_DATASET_DIR = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")
_REGISTRY: dict[str, Callable[..., DatasetPlan]] = {}
_LOADED = False


def register(kind: str):
    """Register ``fn(source: Path, **options) -> DatasetPlan`` as the converter ``kind``."""

    def deco(fn: Callable[..., DatasetPlan]) -> Callable[..., DatasetPlan]:
        if kind in _REGISTRY and _REGISTRY[kind] is not fn:
            raise ValueError(f"converter {kind!r} is registered twice")
        _REGISTRY[kind] = fn
        return fn

    return deco


def _load() -> None:
    global _LOADED
    if not _LOADED:
        from autoseg.data.convert import camvid, cityscapes, folder, msd, synapse  # noqa: F401

        _LOADED = True


def list_converters() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get_converter(kind: str) -> Callable[..., DatasetPlan]:
    _load()
    if kind not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(kind, _REGISTRY, n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown dataset kind {kind!r}{hint} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[kind]


def converter_options(kind: str) -> list[str]:
    """Keyword options the converter ``kind`` accepts besides ``source``."""
    sig = inspect.signature(get_converter(kind))
    return [n for n, p in sig.parameters.items() if n != "source" and p.kind == p.KEYWORD_ONLY]


@dataclass
class ConversionResult:
    path: Path
    dataset_id: int
    n_train: int
    n_test: int
    dataset_json: dict
    warnings: list[str] = field(default_factory=list)


def discover(kind: str, source: str | Path, **options) -> DatasetPlan:
    """The converter's view of ``source`` (cases, labels, split) without reading any image."""
    fn = get_converter(kind)
    limit = options.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    accepted = converter_options(kind)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"converter {kind!r} does not take option(s) {unknown}; it takes {accepted}")
    source = Path(source).expanduser()
    if not source.is_dir():
        raise ConversionError(source, [Problem("-", "source", f"{source} is not a folder")])
    return fn(source, **options)


def validate(plan: DatasetPlan, *, allow_empty: bool = False, progress: Callable[[str], None] | None = None):
    """Read every case of ``plan``; raise ``ConversionError`` listing all problems, else return the report."""
    report = validate_cases(plan.cases, plan.labels, expected_channels=plan.expected_channels,
                            allow_empty=allow_empty, progress=progress)
    problems = list(plan.problems) + report.problems
    if not plan.train_cases and not problems:
        problems.append(Problem("-", "source", f"no labelled training case found in {plan.source}"))
    if plan.on_validated is not None and not problems:
        plan.on_validated(plan, report)
        problems += report.problems
    if problems:
        raise ConversionError(plan.source, problems)
    return report


def target_folder(name: str, dataset_id: int, out: str | Path | None) -> Path:
    """``out`` itself when named DatasetXXX_Name, else ``out/DatasetXXX_Name``; ``$nnUNet_raw`` without ``out``."""
    if out is None:
        raw = os.environ.get("nnUNet_raw")
        if not raw:
            raise ValueError("give an output folder (--out) or set nnUNet_raw")
        out = raw
    out = Path(out).expanduser()
    m = _DATASET_DIR.match(out.name)
    if m:
        if int(m[1]) != dataset_id:
            raise ValueError(f"output folder {out.name} says dataset id {int(m[1])} but the id is {dataset_id}")
        return out
    return out / f"Dataset{dataset_id:03d}_{name}"


def _check_id_free(target: Path) -> None:
    parent = target.parent
    if not parent.is_dir():
        return
    prefix = target.name[:10] + "_"
    for other in parent.iterdir():
        if other.name.startswith(prefix) and other.name != target.name:
            raise ValueError(f"dataset id {target.name[7:10]} is already used by {other}; nnU-Net needs unique "
                             "ids: pass another --dataset-id")


def convert(kind: str, source: str | Path, out: str | Path | None = None, dataset_id: int | None = None, *,
            name: str | None = None, force: bool = False, allow_empty: bool = False,
            progress: Callable[[str], None] | None = None, **options) -> ConversionResult:
    """Convert ``source`` (a ``kind`` layout) into an nnU-Net raw dataset and return where it went.

    Options per kind: see ``converter_options(kind)`` (``limit`` for all; ``size`` for the
    natural-image kinds; ``layout`` for synapse; ``label_names``, ``channel_names``,
    ``natural_image`` for folder...). Raises ``ConversionError`` (with every problem) before
    writing anything when the source is inconsistent, ``DatasetExistsError`` when the target
    exists and ``force`` is false.
    """
    plan = discover(kind, source, **options)
    if name:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ValueError(f"dataset name {name!r} may only hold letters, digits, '_' and '-'")
        plan.name = name
    from autoseg import __version__

    # recorded so that every dataset can be traced to the exact conversion that made it
    plan.autoseg["conversion"] = {
        "kind": kind, "source": str(Path(source).expanduser().resolve()), "autoseg_version": __version__,
        "allow_empty": allow_empty,
        "options": {k: (v if isinstance(v, (int, float, bool, type(None), list, dict)) else str(v))
                    for k, v in sorted(options.items())},
    }
    dataset_id = plan.default_id if dataset_id is None else int(dataset_id)
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be 1..999, got {dataset_id}")
    target = target_folder(plan.name, dataset_id, out)
    # cheap checks first, so a long validation is not wasted
    if target.exists() and not force:
        raise DatasetExistsError(f"{target} exists; pass --force (force=True) to replace it")
    _check_id_free(target)
    if progress:
        progress(f"{kind}: {len(plan.train_cases)} training and {len(plan.test_cases)} test case(s) found in "
                 f"{plan.source}")
    report = validate(plan, allow_empty=allow_empty, progress=progress)
    warnings = plan.warnings + report.warnings
    if progress:
        for w in warnings:
            progress(f"warning: {w}")
    dj = write_dataset(plan, target, force=force, progress=progress)
    return ConversionResult(target, dataset_id, len(plan.train_cases), len(plan.test_cases), dj, warnings)
