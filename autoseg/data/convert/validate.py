"""Whole-source validation before anything is written: every problem of every case, reported at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Geometry tolerances: values read from float32 headers differ in the last digits.
_GEOMETRY_ATOL = 1e-4
_GEOMETRY_RTOL = 1e-5


@dataclass
class ImageData:
    """One image or label as read from the source.

    ``array`` is in numpy order ((z, y, x) for volumes, (y, x) for 2D, (y, x, 3) for RGB);
    ``spacing``, ``origin`` and ``direction`` are in SimpleITK (x, y, z) order, or None where
    the format has no geometry (PNG, npz, h5).
    """

    array: np.ndarray
    source: str
    spacing: tuple[float, ...] | None = None
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    rgb: bool = False
    # (NaN, inf) counts where the reader cannot show them in ``array``: SimpleITK's NIfTI
    # reader turns NaN and inf into 0, so nnU-Net would silently train on zeros
    nonfinite: tuple[int, int] | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[:-1]) if self.rgb else tuple(self.array.shape)


@dataclass
class CaseSpec:
    """A case found in the source; nothing is read until ``read_images``/``read_label`` is called."""

    name: str
    split: str  # "train" (imagesTr/labelsTr) or "test" (imagesTs, and labelsTs where labelled)
    files: list[Path]
    read_images: Callable[[], list[ImageData]]
    read_label: Callable[[], ImageData] | None = None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the source, tied to a case (or ``"-"`` for the source as a whole)."""

    case: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.case}: {self.kind}: {self.message}"


class SourceReadError(Exception):
    """A file that could not be read or lacks what the layout promises (a key, a dataset)."""


class ConversionError(ValueError):
    """The source has problems; ``problems`` lists all of them, each naming its case."""

    def __init__(self, source: str | Path, problems: list[Problem]):
        self.source = str(source)
        self.problems = list(problems)
        lines = "\n  ".join(str(p) for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {self.source}; nothing was written:\n  {lines}")


@dataclass
class LabelSpec:
    """What label values the source may hold and how they become nnU-Net labels.

    ``source_values``: the declared raw values (None: any non-negative integer, decided after
    validation). ``lut``: raw value -> output value for every declared value (None: identity).
    ``evaluated``: output values that count as "something labelled" for the empty-label check.
    """

    source_values: set[int] | None
    lut: dict[int, int] | None
    evaluated: list[int]

    def map(self, label: np.ndarray) -> np.ndarray:
        if self.lut is None:
            return label.astype(np.int64, copy=False)
        table = np.zeros(max(self.lut) + 1, dtype=np.int64)
        for k, v in self.lut.items():
            table[k] = v
        return table[label]


@dataclass
class ValidationReport:
    n_cases: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # raw label value -> voxel count over the whole source (used by converter sanity checks)
    raw_counts: dict[int, int] = field(default_factory=dict)
    # raw label value -> number of cases in which it occurs
    raw_case_counts: dict[int, int] = field(default_factory=dict)
    # per case: raw value -> voxels (only for cases with labels)
    per_case_counts: dict[str, dict[int, int]] = field(default_factory=dict)
    dims: set[int] = field(default_factory=set)
    channel_counts: dict[str, int] = field(default_factory=dict)  # case -> channels read
    dtypes: set[str] = field(default_factory=set)


def _close(a, b) -> bool:
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=_GEOMETRY_RTOL, atol=_GEOMETRY_ATOL))


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def check_case(case: CaseSpec, labels: LabelSpec, expected_channels: int | None, allow_empty: bool,
               report: ValidationReport) -> None:
    """Read one case and append its problems to ``report``."""
    problems = report.problems
    n_before = len(problems)

    def add(kind: str, message: str) -> None:
        p = Problem(case.name, kind, message)
        if p not in problems[n_before:]:  # images and label may share one unreadable file
            problems.append(p)

    try:
        images = case.read_images()
    except Exception as e:  # noqa: BLE001 - any reader failure is a problem of this case
        add("unreadable", _reason(e))
        images = None
    label = None
    if case.read_label is not None:
        try:
            label = case.read_label()
        except Exception as e:  # noqa: BLE001
            add("unreadable", _reason(e))

    if images:
        n_channels = sum(3 if im.rgb else 1 for im in images)
        report.channel_counts[case.name] = n_channels
        if expected_channels is not None and n_channels != expected_channels:
            add("channels", f"{n_channels} channel(s) in {', '.join(Path(im.source).name for im in images)}, "
                            f"expected {expected_channels}")
        ref = images[0]
        report.dims.add(len(ref.spatial_shape))
        for im in images:
            report.dtypes.add(str(im.array.dtype))
            if im.nonfinite is not None and sum(im.nonfinite):
                add("intensity", f"{Path(im.source).name} has {im.nonfinite[0]} NaN and {im.nonfinite[1]} "
                                 f"infinite value(s)")
            elif im.array.dtype.kind == "f":
                bad = ~np.isfinite(im.array)
                if bad.any():
                    n_nan = int(np.isnan(im.array).sum())
                    add("intensity", f"{Path(im.source).name} has {n_nan} NaN and {int(bad.sum()) - n_nan} "
                                     f"infinite value(s)")
            elif im.array.dtype.kind not in "uib":
                add("intensity", f"{Path(im.source).name} has unsupported data type {im.array.dtype}")
        for im in images[1:]:
            _compare(ref, im, "channel", add)
    if label is not None:
        if label.rgb or (label.array.ndim == 3 and images and len(images[0].spatial_shape) == 2):
            add("label values", f"{Path(label.source).name} has shape {label.array.shape}: a label map must "
                                "have one channel (colour-coded labels are not label maps)")
            label = None
    if label is not None and images:
        _compare(images[0], label, "label", add)
    if label is not None:
        arr = label.array
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all() or (label.nonfinite is not None and sum(label.nonfinite)):
                add("label values", f"{Path(label.source).name} has NaN or infinite values")
                arr = None
            elif not np.array_equal(arr, np.round(arr)):
                add("label values", f"{Path(label.source).name} has non-integer values")
                arr = None
        elif arr.dtype.kind not in "uib":
            add("label values", f"{Path(label.source).name} has unsupported data type {arr.dtype}")
            arr = None
        if arr is not None:
            values, counts = np.unique(arr, return_counts=True)
            values = [int(v) for v in values]
            declared = labels.source_values
            outside = [v for v in values if v < 0 or (declared is not None and v not in declared)]
            if outside:
                shown = sorted(declared) if declared is not None else "non-negative integers"
                add("label values", f"{Path(label.source).name} holds {outside}, outside the declared set {shown}")
            else:
                case_counts = dict(zip(values, (int(c) for c in counts)))
                report.per_case_counts[case.name] = case_counts
                for v, c in case_counts.items():
                    report.raw_counts[v] = report.raw_counts.get(v, 0) + c
                    report.raw_case_counts[v] = report.raw_case_counts.get(v, 0) + 1
                if labels.source_values is not None:
                    mapped = {labels.lut[v] if labels.lut is not None else v for v in values}
                    if not mapped & set(labels.evaluated):
                        msg = (f"{Path(label.source).name} holds none of the evaluated classes "
                               f"{labels.evaluated} (raw values {values})")
                        if allow_empty:
                            report.warnings.append(f"{case.name}: empty label: {msg}")
                        else:
                            add("empty label", msg)
    if len(problems) == n_before:
        report.n_cases += 1


def _compare(ref: ImageData, other: ImageData, what: str, add) -> None:
    a, b = Path(ref.source).name, Path(other.source).name
    if ref.spatial_shape != other.spatial_shape:
        add("shape", f"{what} {b} has shape {other.spatial_shape}, image {a} has {ref.spatial_shape}")
        return
    for attr in ("spacing", "origin", "direction"):
        x, y = getattr(ref, attr), getattr(other, attr)
        if x is not None and y is not None and not _close(x, y):
            add(attr, f"{what} {b} has {attr} {_fmt(y)}, image {a} has {_fmt(x)}")


def _reason(e: Exception) -> str:
    if isinstance(e, SourceReadError):
        return str(e)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".strip()


def validate_cases(cases: list[CaseSpec], labels: LabelSpec, *, expected_channels: int | None = None,
                   allow_empty: bool = False, progress: Callable[[str], None] | None = None,
                   every: int | None = None) -> ValidationReport:
    """Read every case once and collect all problems (shapes, geometry, values, NaN, empty labels...)."""
    report = ValidationReport()
    seen: dict[str, str] = {}
    for c in cases:
        if c.name in seen:
            report.problems.append(Problem(c.name, "duplicate", f"case name occurs in {seen[c.name]} and "
                                                                f"{', '.join(str(f) for f in c.files[:1])}"))
        seen.setdefault(c.name, ", ".join(str(f) for f in c.files[:1]))
    every = every or progress_interval(len(cases))
    for i, case in enumerate(cases):
        check_case(case, labels, expected_channels, allow_empty, report)
        if progress and ((i + 1) % every == 0 or i + 1 == len(cases)):
            progress(f"validated {i + 1}/{len(cases)} cases, {len(report.problems)} problem(s) so far")
    if len(report.dims) > 1:
        report.problems.append(Problem("-", "shape", f"images mix dimensionalities {sorted(report.dims)}"))
    return report


def progress_interval(n: int) -> int:
    """A progress line about every tenth of the way, at most every 100 cases."""
    return max(1, min(100, n // 10))
