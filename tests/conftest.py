"""Shared fixtures: a small nnU-Net work folder with the bundled sample planned and preprocessed once."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _load_file(folder: str, name: str):
    """``<folder>/<name>.py`` imported as a module (a script, not a package member), for tests of its pure parts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module."""
    return _load_file("benchmarks", name)


def load_script(name: str):
    """``scripts/<name>.py`` as a module."""
    return _load_file("scripts", name)


def camvid_subset(src: Path, dst: Path, void: int = 11) -> None:
    """A SegNet-layout folder of symlinks into the CamVid folder ``src``: the first 4 train, 4 val and 3 test
    images whose labels hold every one of the 11 classes."""
    import numpy as np
    from PIL import Image

    for split, n in (("train", 4), ("val", 4), ("test", 3)):
        (dst / split).mkdir(parents=True)
        (dst / f"{split}annot").mkdir()
        kept = 0
        for label in sorted((src / f"{split}annot").glob("*.png")):
            if set(np.unique(np.asarray(Image.open(label))).tolist()) - {void} == set(range(11)):
                os.symlink(label, dst / f"{split}annot" / label.name)
                os.symlink(src / split / label.name, dst / split / label.name)
                kept += 1
                if kept == n:
                    break
N_CASES = 10  # bundled cases used by the end-to-end tests (2 per validation fold)


@pytest.fixture(autouse=True)
def _restore_nnunet_environment():
    """In-process calls export nnUNet_* folders (nnU-Net reads them from the environment); undo that
    after each test so that no later test, or the subprocesses it starts, inherits another's folders."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("nnUNet_")}
    yield
    for k in [k for k in os.environ if k.startswith("nnUNet_")]:
        del os.environ[k]
    os.environ.update(saved)


def autoseg_cli(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the installed ``autoseg`` command in a fresh process (the way a user does).

    With ``env`` given, the child gets exactly that environment (plus PATH-like basics from this
    process), so stray nnUNet_* variables of this process cannot redirect it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    full_env = {**base, **(env or {})}
    return subprocess.run([sys.executable, "-m", "autoseg", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One real ``autoseg plan_and_train`` (smoke budget, 10 bundled cases, fold 0), shared by tests."""
    work = tmp_path_factory.mktemp("autoseg_work")
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env["nnUNet_def_n_proc"] = "2"
    proc = subprocess.run(
        [sys.executable, "-m", "autoseg", "plan_and_train", "--loss", "combo", "--budget", "smoke",
         "--limit-cases", str(N_CASES), "--work-dir", str(work), "--json"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"work": work, "result": json.loads(proc.stdout), "stderr": proc.stderr, "env": env}


@contextlib.contextmanager
def smoke_nnunet(smoke_run: dict, results: Path, **extra_env: str):
    """nnU-Net's folders in this process's environment over the shared smoke run's raw and preprocessed
    data, with trainings written to ``results``; restored on exit. Yields ``(plans, dataset_json,
    smoke result, env)``. ``extra_env`` adds variables (``nnUNet_n_proc_DA``, ``nnUNet_extTrainer`` ...)."""
    work = Path(smoke_run["work"])
    r = smoke_run["result"]
    env = {"nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
           "nnUNet_results": str(results), **extra_env}
    from autoseg.prepare import temporary_env

    plans = json.loads((work / "nnUNet_preprocessed" / r["dataset"] / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((work / "nnUNet_raw" / r["dataset"] / "dataset.json").read_text())
    with temporary_env(**env):
        yield plans, dataset_json, r, env


def scipy_signed(label, c: int, spacing):
    """Independent oracle: scipy's exact signed distance to class ``c`` (negative inside, 0 for an empty
    or full class), in ``spacing``."""
    import numpy as np
    from scipy import ndimage

    m = label == c
    if not m.any() or m.all():
        return np.zeros(label.shape)
    return np.where(m, -ndimage.distance_transform_edt(m, sampling=spacing),
                    ndimage.distance_transform_edt(~m, sampling=spacing))
