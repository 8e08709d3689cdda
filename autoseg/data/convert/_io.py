"""Readers for the source formats (NIfTI/NRRD/MHA via SimpleITK, PNG/BMP via Pillow, TIFF, npz, h5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoseg.data.convert.validate import ImageData, SourceReadError

MEDICAL_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PLAIN_2D_ENDINGS = (".png", ".bmp")
TIFF_ENDINGS = (".tif", ".tiff")
ALL_ENDINGS = MEDICAL_ENDINGS + PLAIN_2D_ENDINGS + TIFF_ENDINGS


def split_ending(name: str) -> tuple[str, str] | None:
    """``("case", ".nii.gz")`` for a supported file name, None for anything else."""
    low = name.lower()
    for e in sorted(ALL_ENDINGS, key=len, reverse=True):
        if low.endswith(e):
            return name[: -len(e)], e
    return None


def visible_files(folder: Path) -> list[Path]:
    """Files of a folder without hidden ones (MSD archives carry macOS ``._*`` resource forks)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_sitk(path: Path) -> list[ImageData]:
    """A medical image; a 4D file becomes one 3D image per channel (the MSD multi-modal layout)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except Exception as e:  # noqa: BLE001
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise SourceReadError(f"{path.name}: unreadable ({reason})") from e
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise SourceReadError(f"{path.name}: vector pixels ({img.GetNumberOfComponentsPerPixel()} components) "
                              "are not supported; store channels as a 4th dimension or separate files")
    arr = sitk.GetArrayFromImage(img)
    dim = img.GetDimension()
    spacing, origin, direction = img.GetSpacing(), img.GetOrigin(), img.GetDirection()
    nonfinite = _nifti_nonfinite(path) if arr.dtype.kind == "f" and path.name.lower().endswith((".nii", ".nii.gz")) \
        else None
    if dim == 4:
        d = np.asarray(direction).reshape(4, 4)[:3, :3].ravel()
        return [ImageData(arr[c], f"{path}[channel {c}]", tuple(spacing[:3]), tuple(origin[:3]), tuple(d),
                          nonfinite=nonfinite if c == 0 else None) for c in range(arr.shape[0])]
    if dim not in (2, 3):
        raise SourceReadError(f"{path.name}: {dim}D images are not supported")
    return [ImageData(arr, str(path), tuple(spacing), tuple(origin), tuple(direction), nonfinite=nonfinite)]


def _nifti_nonfinite(path: Path) -> tuple[int, int] | None:
    """(NaN, inf) counts read with nibabel: SimpleITK's NIfTI reader replaces both with 0."""
    try:
        import nibabel as nib
    except ImportError:  # nibabel comes with nnU-Net; without it the check is skipped
        return None
    data = np.asanyarray(nib.load(str(path)).dataobj)
    if data.dtype.kind != "f":
        return None
    n_nan = int(np.isnan(data).sum())
    return n_nan, int(np.isinf(data).sum())


def read_2d(path: Path) -> ImageData:
    """A PNG/BMP image: RGB(A) becomes (y, x, 3); palette and grey images stay one channel."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            # Palette images keep their indices (some label maps are stored that way).
            if im.mode == "RGBA":
                im = im.convert("RGB")
            elif im.mode == "LA":
                im = im.convert("L")
            arr = np.asarray(im)
    except Exception as e:  # noqa: BLE001
        raise SourceReadError(f"{path.name}: unreadable ({type(e).__name__}: {e})") from e
    return ImageData(arr, str(path), rgb=arr.ndim == 3)


def read_tiff(path: Path) -> ImageData:
    import tifffile

    try:
        arr = tifffile.imread(path)
    except Exception as e:  # noqa: BLE001
        raise SourceReadError(f"{path.name}: unreadable ({type(e).__name__}: {e})") from e
    rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4
    if rgb and arr.shape[-1] == 4:
        arr = arr[..., :3]
    return ImageData(arr, str(path), rgb=rgb)


def read_any(path: Path) -> list[ImageData]:
    parts = split_ending(path.name)
    if parts is None:
        raise SourceReadError(f"{path.name}: unsupported file type")
    ending = parts[1]
    if ending in PLAIN_2D_ENDINGS:
        return [read_2d(path)]
    if ending in TIFF_ENDINGS:
        return [read_tiff(path)]
    return read_sitk(path)


def read_label_any(path: Path) -> ImageData:
    images = read_any(path)
    if len(images) != 1:
        raise SourceReadError(f"{path.name}: a label map must have one channel, found {len(images)}")
    return images[0]


def read_npz_slice(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One TransUNet training slice: keys ``image`` and ``label``, both 2D."""
    try:
        with np.load(path) as data:
            missing = [k for k in ("image", "label") if k not in data.files]
            if missing:
                raise SourceReadError(f"{path.name}: key(s) {missing} missing (found {sorted(data.files)})")
            image, label = data["image"], data["label"]
    except SourceReadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise SourceReadError(f"{path.name}: unreadable ({type(e).__name__}: {e})") from e
    for key, arr in (("image", image), ("label", label)):
        if arr.ndim != 2:
            raise SourceReadError(f"{path.name}: {key!r} has shape {arr.shape}, expected a 2D slice")
    return image, label


def read_h5_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One TransUNet test volume: datasets ``image`` and ``label``, (slices, y, x)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                raise SourceReadError(f"{path.name}: dataset(s) {missing} missing (found {sorted(f.keys())})")
            image, label = f["image"][()], f["label"][()]
    except SourceReadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise SourceReadError(f"{path.name}: unreadable ({type(e).__name__}: {e})") from e
    for key, arr in (("image", image), ("label", label)):
        if arr.ndim != 3:
            raise SourceReadError(f"{path.name}: {key!r} has shape {arr.shape}, expected a volume (slices, y, x)")
    return image, label
