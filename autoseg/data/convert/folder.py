"""Any pair of folders of images and label maps (NIfTI, NRRD, MHA, PNG, BMP, TIFF).

Images are matched to labels by name: ``case.ext`` or, for several channels, ``case_0000.ext``,
``case_0001.ext`` ... Volumes are written as NIfTI (geometry kept), 2D images as PNG (8/16-bit)
or TIFF (anything else). Label values are taken from an optional label-name file, else from
the data; non-consecutive values (e.g. 0, 1, 255) are renumbered in order, "ignore" last.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from autoseg.data.convert import register
from autoseg.data.convert._io import (
    MEDICAL_ENDINGS,
    read_any,
    read_label_any,
    split_ending,
    visible_files,
)
from autoseg.data.convert._write import DatasetPlan
from autoseg.data.convert.validate import CaseSpec, ConversionError, LabelSpec, Problem

_CHANNEL = re.compile(r"^(.*)_(\d{4})$")


def read_label_names(path: str | Path) -> tuple[dict[int, str], int | None]:
    """A label-name file: JSON ``{"0": "background", "1": "liver", "255": "ignore"}`` (or nnU-Net's
    ``{"background": 0, ...}``), or text lines ``VALUE NAME``. Returns (value -> name, ignore value)."""
    path = Path(path)
    text = path.read_text()
    names: dict[int, str] = {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit() and
                                      not str(k).strip().lstrip("-").isdigit()):
                names[int(v)] = str(k)
            else:
                names[int(k)] = str(v)
    else:
        for i, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace(",", " ").replace(":", " ").split(None, 1)
            if len(parts) != 2 or not parts[0].lstrip("-").isdigit():
                raise ValueError(f"{path}:{i}: expected 'VALUE NAME', got {line!r}")
            names[int(parts[0])] = parts[1].strip()
    ignore = [v for v, n in names.items() if n.lower() == "ignore"]
    if len(ignore) > 1:
        raise ValueError(f"{path}: more than one value is named 'ignore': {ignore}")
    if any(v < 0 for v in names):
        raise ValueError(f"{path}: label values must be non-negative")
    return names, (ignore[0] if ignore else None)


def _group(folder: Path, problems: list[Problem]) -> tuple[dict[str, dict[int, Path]], list[Path]]:
    """case -> {channel: file}; files of unsupported types are returned separately."""
    cases: dict[str, dict[int, Path]] = {}
    other = []
    for p in visible_files(folder):
        parts = split_ending(p.name)
        if parts is None:
            other.append(p)
            continue
        stem = parts[0]
        m = _CHANNEL.match(stem)
        case, ch = (m[1], int(m[2])) if m else (stem, 0)
        chans = cases.setdefault(case, {})
        if ch in chans:  # e.g. case.nii.gz and case.nrrd: which one is meant?
            problems.append(Problem(case, "duplicate", f"{chans[ch].name} and {p.name} in {folder} are the same "
                                                       "case and channel"))
            continue
        chans[ch] = p
    return cases, other


@register("folder")
def folder(source: Path, *, images_dir: str | Path | None = None, labels_dir: str | Path | None = None,
           label_names: str | Path | dict | None = None, channel_names: str | list[str] | None = None,
           natural_image: bool = False, test_images_dir: str | Path | None = None,
           limit: int | None = None) -> DatasetPlan:
    """Discover ``source/images`` + ``source/labels`` (or ``imagesTr``/``labelsTr``, or the given folders).

    ``label_names``: file (see ``read_label_names``) or dict value -> name. ``channel_names``:
    ``"T2,ADC"`` or a list (default "image", or R,G,B for RGB). ``natural_image``: class 0 is a
    real class (no background), as in street scenes.
    """
    problems: list[Problem] = []
    img_dir = Path(images_dir) if images_dir else next(
        (source / d for d in ("images", "imagesTr") if (source / d).is_dir()), source / "images")
    lab_dir = Path(labels_dir) if labels_dir else next(
        (source / d for d in ("labels", "labelsTr") if (source / d).is_dir()), source / "labels")
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise ConversionError(source, [Problem("-", "layout", f"{d} is not a folder (give images_dir/labels_dir)")])
    images, other_i = _group(img_dir, problems)
    label_files, other_l = _group(lab_dir, problems)
    for p in other_i + other_l:
        problems.append(Problem(p.name, "unreadable", f"{p} is not a supported image type"))
    labels: dict[str, Path] = {}
    for case, chans in label_files.items():
        if len(chans) > 1 or 0 not in chans:
            # a label named like a channel file: take its full stem as the case
            for ch, p in chans.items():
                labels[f"{case}_{ch:04d}"] = p
        else:
            labels[case] = chans[0]
    # "case_0000" images whose label is "case_0000" (no channel suffix) are single-channel cases
    for lab_case in list(labels):
        m = _CHANNEL.match(lab_case)
        if m and m[1] in images and lab_case not in images:
            chans = images[m[1]]
            if int(m[2]) in chans and len(chans) == 1:
                images[lab_case] = {0: chans.pop(int(m[2]))}
                del images[m[1]]
    n_channels = max((len(c) for c in images.values()), default=1)
    for case in sorted(set(images) - set(labels)):
        problems.append(Problem(case, "missing partner", f"image {images[case][min(images[case])].name} has no label "
                                                         f"in {lab_dir}"))
    for case in sorted(set(labels) - set(images)):
        problems.append(Problem(case, "missing partner", f"label {labels[case].name} has no image in {img_dir}"))
    names = sorted(set(images) & set(labels))
    for case in names:
        chans = images[case]
        missing = sorted(set(range(n_channels)) - set(chans))
        if missing:
            problems.append(Problem(case, "missing partner", f"channel(s) {missing} missing (other cases have "
                                                             f"{n_channels})"))
    tests: dict[str, dict[int, Path]] = {}
    if test_images_dir:
        tests, other_t = _group(Path(test_images_dir), problems)
        problems += [Problem(p.name, "unreadable", f"{p} is not a supported image type") for p in other_t]
    if limit is not None:
        names = names[:limit]
        tests = dict(sorted(tests.items())[:limit])

    def reader(chans: dict[int, Path]):
        return lambda: [im for ch in sorted(chans) for im in read_any(chans[ch])]

    cases = [CaseSpec(c, "train", [images[c][k] for k in sorted(images[c])] + [labels[c]],
                      read_images=reader(images[c]), read_label=lambda p=labels[c]: read_label_any(p)) for c in names]
    cases += [CaseSpec(c, "test", list(ch.values()), read_images=reader(ch)) for c, ch in sorted(tests.items())]

    # output format from the first image's file type; mixed 2D/3D is caught by validation
    first = next((images[c][min(images[c])] for c in names), None)
    ending0 = split_ending(first.name)[1] if first is not None else ".nii.gz"
    is_3d = ending0 in MEDICAL_ENDINGS
    if isinstance(channel_names, str):
        channel_names = [c.strip() for c in channel_names.split(",") if c.strip()]

    declared, ignore = (None, None)
    if isinstance(label_names, dict):
        declared = {int(k): str(v) for k, v in label_names.items()}
        ign = [v for v, n in declared.items() if n.lower() == "ignore"]
        ignore = ign[0] if ign else None
    elif label_names is not None:
        declared, ignore = read_label_names(label_names)
    if declared is not None and 0 not in declared:
        problems.append(Problem("-", "labels", "the label-name file must name value 0 (nnU-Net's background, or "
                                               "the first real class of a natural image)"))

    plan = DatasetPlan(
        name=re.sub(r"[^A-Za-z0-9_\-]", "", source.name) or "Folder", default_id=605, source=source,
        cases=cases, labels=LabelSpec(source_values=set(declared) if declared else None, lut=None, evaluated=[]),
        class_names={}, channel_names={}, file_ending=".nii.gz" if is_3d else ".png", natural_image=natural_image,
        problems=problems, expected_channels=None,
        metadata={"description": f"converted from {img_dir} and {lab_dir}"},
        autoseg={"source_kind": "folder", "source_layout": f"{img_dir.name}/ + {lab_dir.name}/"},
    )
    plan.labels = _label_spec(declared, ignore, plan)
    plan.on_validated = lambda p, report: _finish(p, report, declared, ignore, channel_names)
    return plan


def _label_spec(declared: dict[int, str] | None, ignore: int | None, plan: DatasetPlan) -> LabelSpec:
    if declared is None:
        return LabelSpec(source_values=None, lut=None, evaluated=[])
    values = sorted(v for v in declared if v != ignore)
    lut = {v: i for i, v in enumerate(values)}
    if ignore is not None:
        lut[ignore] = len(values)
    plan.class_names = {lut[v]: declared[v] for v in values}
    plan.ignore_label = lut[ignore] if ignore is not None else None
    evaluated = list(range(len(values))) if plan.natural_image else list(range(1, len(values)))
    identity = all(k == v for k, v in lut.items())
    return LabelSpec(source_values=set(declared), lut=None if identity else lut, evaluated=evaluated)


def _finish(plan: DatasetPlan, report, declared, ignore, channel_names) -> None:
    """After validation: labels from the data where no file named them, channel names, output format."""
    if declared is None:
        found = sorted(report.raw_counts)
        if 0 not in found:
            found = [0] + found
        names = {v: ("background" if v == 0 and not plan.natural_image else f"label_{v}") for v in found}
        plan.labels = _label_spec(names, None, plan)
        for case, counts in report.per_case_counts.items():
            present = {plan.labels.lut[v] if plan.labels.lut else v for v in counts}
            if not present & set(plan.labels.evaluated) and not plan.natural_image:
                report.problems.append(Problem(case, "empty label", "label holds only background (0)"))
        if plan.labels.lut:
            report.warnings.append(f"label values {found} renumbered to 0..{len(found) - 1}")
    n_channels = None
    if report.dims == {2}:
        # PNG holds 8/16-bit integers only; other 2D data goes to TIFF, which nnU-Net reads as well
        ok_png = report.dtypes <= {"uint8", "uint16", "bool"}
        plan.file_ending = ".png" if ok_png else ".tif"
        if ok_png or plan.natural_image:
            plan.metadata["overwrite_image_reader_writer"] = "NaturalImage2DIO"
    first = next((c for c in plan.cases if c.split == "train"), None)
    if first is not None:
        ims = first.read_images()
        n_channels = sum(3 if im.rgb else 1 for im in ims)
        default = ["R", "G", "B"] if len(ims) == 1 and ims[0].rgb else [f"image{i}" if i else "image"
                                                                         for i in range(n_channels)]
        for case, n in sorted(report.channel_counts.items()):
            if n != n_channels:
                report.problems.append(Problem(case, "channels", f"{n} channel(s), but {first.name} has "
                                                                 f"{n_channels}"))
    else:
        default = ["image"]
    chans = list(channel_names) if channel_names else default
    if n_channels is not None and len(chans) != n_channels:
        report.problems.append(Problem("-", "channels", f"{len(chans)} channel name(s) {chans} given for "
                                                        f"{n_channels} channel(s)"))
    plan.channel_names = {str(i): c for i, c in enumerate(chans)}
    plan.expected_channels = n_channels
