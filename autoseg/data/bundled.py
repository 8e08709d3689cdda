"""The data autoseg ships (a subset of MSD Hippocampus) and how a ``--dataset`` argument is found."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
BUNDLED = tuple(sorted(p.name for p in SAMPLES_DIR.iterdir() if (p / "sample.json").is_file()))
DEFAULT_DATASET = "hippocampus"
_DATASET_NAME = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")


class DatasetError(ValueError):
    """A dataset that is missing, malformed or inconsistent; the message says what and where."""


@dataclass(frozen=True)
class ResolvedDataset:
    dataset_id: int
    name: str  # DatasetXXX_Name
    raw_dir: Path

    @property
    def dataset_json(self) -> dict:
        return json.loads((self.raw_dir / "dataset.json").read_text())


def _sample_meta(name: str) -> dict:
    return json.loads((SAMPLES_DIR / name / "sample.json").read_text())


def import_bundled(name: str, raw_root: Path, limit: int | None = None, progress=print) -> ResolvedDataset:
    """Write the bundled sample ``name`` as an nnU-Net raw dataset under ``raw_root``.

    Labels are cast to uint8 (some source files store them as float32); images are copied as
    they are. ``limit`` keeps only the first cases (tests). The dataset is written to a temporary
    folder and moved into place, so an interrupted import never leaves half a dataset; an existing
    complete import with the same cases is reused.
    """
    import SimpleITK as sitk

    if name not in BUNDLED:
        raise DatasetError(f"no bundled dataset {name!r}; bundled: {', '.join(BUNDLED)}")
    meta = _sample_meta(name)
    src = SAMPLES_DIR / name
    cases = sorted(p.name[: -len(meta["file_ending"])] for p in (src / "images").glob("*" + meta["file_ending"]))
    if limit is not None:
        cases = cases[:limit]
    # A cut-down copy (tests) gets the next id, so it never collides with the full sample.
    ds_name = meta["dataset_name"] if limit is None else f"Dataset{meta['dataset_id'] + 1}_{_suffix(meta)}{limit}"
    target = Path(raw_root) / ds_name
    _check_id_free(Path(raw_root), ds_name)
    dataset_json = {
        "channel_names": meta["channel_names"],
        "labels": meta["labels"],
        "numTraining": len(cases),
        "file_ending": meta["file_ending"],
        "name": ds_name,
        "description": meta["description"],
        "licence": meta["licence"],
        "reference": meta["reference"],
    }
    if (target / "dataset.json").is_file():
        existing = json.loads((target / "dataset.json").read_text())
        if existing == dataset_json and _complete(target, cases, meta["file_ending"]):
            return ResolvedDataset(int(ds_name[7:10]), ds_name, target)
        raise DatasetError(
            f"{target} exists but is not the bundled {name!r} sample autoseg would write; "
            "move it away or point --work-dir elsewhere"
        )
    Path(raw_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ds_name}.", dir=raw_root))
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        ending = meta["file_ending"]
        for i, case in enumerate(cases):
            shutil.copyfile(src / "images" / f"{case}{ending}", tmp / "imagesTr" / f"{case}_0000{ending}")
            label = sitk.ReadImage(str(src / "labels" / f"{case}{ending}"))
            sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8), str(tmp / "labelsTr" / f"{case}{ending}"), True)
            if progress and ((i + 1) % 20 == 0 or i + 1 == len(cases)):
                progress(f"  imported {i + 1}/{len(cases)} cases of the bundled {name!r} sample")
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ResolvedDataset(int(ds_name[7:10]), ds_name, target)


def _suffix(meta: dict) -> str:
    return meta["dataset_name"].split("_", 1)[1]


def _complete(folder: Path, cases: list[str], ending: str) -> bool:
    return all((folder / "imagesTr" / f"{c}_0000{ending}").is_file() and (folder / "labelsTr" / f"{c}{ending}").is_file()
               for c in cases)


def _check_id_free(raw_root: Path, ds_name: str) -> None:
    if not raw_root.is_dir():
        return
    prefix = ds_name[:10]
    for other in raw_root.iterdir():
        if other.name.startswith(prefix + "_") and other.name != ds_name:
            raise DatasetError(
                f"dataset id {ds_name[7:10]} is taken by {other} in {raw_root}; autoseg's bundled "
                f"sample needs it as {ds_name}: use another --work-dir or nnUNet_raw"
            )


def check_raw_dataset(folder: Path) -> dict:
    """Light structural check of an nnU-Net raw dataset; returns its dataset.json.

    Reports every problem at once: missing dataset.json keys, images without labels and the
    reverse, missing channels. nnU-Net's own integrity check (geometry, label values) runs later
    during fingerprint extraction.
    """
    problems = []
    dj_path = folder / "dataset.json"
    if not dj_path.is_file():
        raise DatasetError(f"{folder} has no dataset.json; an nnU-Net raw dataset needs dataset.json, imagesTr, labelsTr")
    try:
        dj = json.loads(dj_path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{dj_path} is not valid JSON: {e}") from None
    for key in ("channel_names", "labels", "file_ending"):
        if key not in dj:
            problems.append(f"dataset.json has no {key!r}")
    if "labels" in dj and "background" not in dj["labels"] and 0 not in dj["labels"].values():
        problems.append("dataset.json labels must give label 0 a name (nnU-Net calls it 'background')")
    for sub in ("imagesTr", "labelsTr"):
        if not (folder / sub).is_dir():
            problems.append(f"missing folder {sub}/")
    if problems:
        raise DatasetError(f"{folder}: " + "; ".join(problems))
    ending = dj["file_ending"]
    n_ch = len(dj["channel_names"])
    labels = {p.name[: -len(ending)] for p in (folder / "labelsTr").iterdir() if p.name.endswith(ending)}
    images: dict[str, set[int]] = {}
    for p in (folder / "imagesTr").iterdir():
        if p.name.endswith(ending) and re.match(r".*_\d{4}$", p.name[: -len(ending)]):
            stem = p.name[: -len(ending)]
            images.setdefault(stem[:-5], set()).add(int(stem[-4:]))
    for case in sorted(labels - set(images)):
        problems.append(f"case {case}: label without image")
    for case in sorted(set(images) - labels):
        problems.append(f"case {case}: image without label")
    # One file per channel (_0000, _0001, ...), except natural images, where nnU-Net reads an RGB
    # PNG as one file with three channels: every case must have the same channel files as the rest.
    widest = max((len(c) for c in images.values()), default=0)
    expected = set(range(n_ch if widest > 1 or n_ch == 1 else 1))
    for case, chans in sorted(images.items()):
        missing = sorted(expected - chans)
        if missing:
            problems.append(f"case {case}: missing channel file(s) {[f'{case}_{m:04d}{ending}' for m in missing]}")
    if not labels:
        problems.append(f"labelsTr/ holds no file ending in {ending!r}")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise DatasetError(f"{folder} is not a valid nnU-Net raw dataset:\n  " + "\n  ".join(shown))
    return dj


def resolve_dataset(dataset: str | None, raw_root: Path, limit: int | None = None, progress=print) -> ResolvedDataset:
    """Find the dataset a user named: a bundled sample, an nnU-Net id or name, or a raw folder."""
    raw_root = Path(raw_root)
    if dataset is None or dataset in BUNDLED:
        return import_bundled(dataset or DEFAULT_DATASET, raw_root, limit=limit, progress=progress)
    path = Path(dataset).expanduser()
    if path.is_dir():
        m = _DATASET_NAME.match(path.resolve().name)
        if m is None:
            raise DatasetError(
                f"{path} must be named DatasetXXX_Name (three digits) to be used as an nnU-Net dataset"
            )
        check_raw_dataset(path)
        link = raw_root / path.resolve().name
        if path.resolve() != link.resolve():
            _check_id_free(raw_root, path.resolve().name)
            raw_root.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                if link.resolve() != path.resolve():
                    raise DatasetError(f"{link} already exists and is not {path}")
            else:
                link.symlink_to(path.resolve(), target_is_directory=True)
        return ResolvedDataset(int(m[1]), path.resolve().name, link)
    if re.fullmatch(r"\d{1,3}", dataset):
        prefix = f"Dataset{int(dataset):03d}_"
        matches = sorted(p for p in raw_root.glob(prefix + "*") if p.is_dir()) if raw_root.is_dir() else []
        if not matches:
            raise DatasetError(f"no dataset with id {dataset} in {raw_root}" + _known(raw_root))
        if len(matches) > 1:
            raise DatasetError(f"dataset id {dataset} is ambiguous in {raw_root}: {[m.name for m in matches]}")
        check_raw_dataset(matches[0])
        return ResolvedDataset(int(dataset), matches[0].name, matches[0])
    m = _DATASET_NAME.match(dataset)
    if m and (raw_root / dataset).is_dir():
        check_raw_dataset(raw_root / dataset)
        return ResolvedDataset(int(m[1]), dataset, raw_root / dataset)
    raise DatasetError(
        f"dataset {dataset!r} not found: give a bundled name ({', '.join(BUNDLED)}), an nnU-Net dataset id or "
        f"DatasetXXX_Name under {raw_root}, or the path of a raw dataset folder" + _known(raw_root)
    )


def _known(raw_root: Path) -> str:
    if not raw_root.is_dir():
        return ""
    names = sorted(p.name for p in raw_root.iterdir() if _DATASET_NAME.match(p.name))
    return f" (found: {', '.join(names)})" if names else ""
