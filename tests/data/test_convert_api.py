"""convert() API: registry, atomic writing, --force, default output folder, install_splits, the CLI."""

from __future__ import annotations

import json

import pytest
from _convert_fixtures import make_camvid, make_cityscapes, make_msd_prostate, make_synapse_transunet

import autoseg.data.convert._write as write_mod
from autoseg.data.convert import (
    ConversionError,
    DatasetExistsError,
    convert,
    converter_options,
    install_splits,
    list_converters,
)

FIXTURES = {
    "synapse": lambda root: make_synapse_transunet(root / "Synapse"),
    "cityscapes": lambda root: make_cityscapes(root / "cityscapes"),
    "camvid": lambda root: make_camvid(root / "camvid"),
    "msd": lambda root: make_msd_prostate(root),
    "folder": lambda root: make_camvid(root / "cv") / "CamVid",  # train/ + trainannot/ given explicitly below
}


def test_every_registered_converter_has_a_fixture():
    """A converter registered without a fixture here fails this test until it gets one."""
    assert sorted(FIXTURES) == list_converters()
    for kind in list_converters():
        assert "limit" in converter_options(kind), kind


@pytest.mark.parametrize("kind", sorted(FIXTURES))
def test_limit_and_dataset_id(kind, tmp_path):
    src = FIXTURES[kind](tmp_path)
    extra = {"images_dir": src / "train", "labels_dir": src / "trainannot"} if kind == "folder" else {}
    result = convert(kind, src, tmp_path / "raw", dataset_id=777, limit=2, **extra)
    assert result.path.name.startswith("Dataset777_") and result.dataset_id == 777
    assert result.n_train == (4 if kind == "camvid" else 2)  # camvid: train and val are both training
    dj = json.loads((result.path / "dataset.json").read_text())
    assert dj["numTraining"] == result.n_train == len(list((result.path / "labelsTr").iterdir()))
    assert isinstance(dj["autoseg"]["natural_image"], bool)


def test_existing_dataset_is_not_overwritten_without_force(tmp_path):
    src = make_camvid(tmp_path / "camvid")
    first = convert("camvid", src, tmp_path / "raw", limit=1)
    marker = first.path / "keep.txt"
    marker.write_text("mine")
    with pytest.raises(DatasetExistsError):
        convert("camvid", src, tmp_path / "raw", limit=2)
    assert marker.read_text() == "mine"
    again = convert("camvid", src, tmp_path / "raw", limit=2, force=True)
    assert not marker.exists() and again.n_train == 4
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset603_CamVid"]  # no temp left


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    src = make_camvid(tmp_path / "camvid")
    calls = []
    real = write_mod.write_case

    def failing(plan, case, root):
        calls.append(case.name)
        if len(calls) == 3:
            raise OSError("disk full")
        real(plan, case, root)

    monkeypatch.setattr(write_mod, "write_case", failing)
    with pytest.raises(OSError, match="disk full"):
        convert("camvid", src, tmp_path / "raw")
    assert len(calls) == 3
    assert list((tmp_path / "raw").iterdir()) == []


def test_failed_force_keeps_the_old_dataset(tmp_path, monkeypatch):
    src = make_camvid(tmp_path / "camvid")
    first = convert("camvid", src, tmp_path / "raw", limit=1)
    before = json.loads((first.path / "dataset.json").read_text())
    monkeypatch.setattr(write_mod, "write_case", lambda *a: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        convert("camvid", src, tmp_path / "raw", force=True)
    assert json.loads((first.path / "dataset.json").read_text()) == before
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset603_CamVid"]


def test_default_output_is_nnunet_raw(tmp_path, monkeypatch):
    src = make_camvid(tmp_path / "camvid")
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(ValueError, match="--out"):
        convert("camvid", src, limit=1)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnraw"))
    assert convert("camvid", src, limit=1).path == tmp_path / "nnraw" / "Dataset603_CamVid"
    # an explicit DatasetXXX_Name folder is used as it is
    assert convert("camvid", src, tmp_path / "x" / "Dataset603_Street", limit=1).path.name == "Dataset603_Street"


def test_dataset_id_clash_is_refused(tmp_path):
    (tmp_path / "raw" / "Dataset603_Other").mkdir(parents=True)
    with pytest.raises(ValueError, match="already used"):
        convert("camvid", make_camvid(tmp_path / "camvid"), tmp_path / "raw", limit=1)


def test_unknown_kind_and_option(tmp_path):
    with pytest.raises(ValueError, match="did you mean camvid"):
        convert("camvd", tmp_path)
    with pytest.raises(ValueError, match="does not take option"):
        convert("msd", tmp_path, tmp_path, size="512x512")
    with pytest.raises(ConversionError, match="not a folder"):
        convert("camvid", tmp_path / "missing", tmp_path)
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        convert("camvid", tmp_path, tmp_path, limit=0)
    for split in ("train", "val", "test"):
        (tmp_path / "empty" / split).mkdir(parents=True)
        (tmp_path / "empty" / f"{split}annot").mkdir()
    with pytest.raises(ConversionError, match="no labelled training case"):
        convert("camvid", tmp_path / "empty", tmp_path / "raw")


def test_install_splits(tmp_path):
    result = convert("camvid", make_camvid(tmp_path / "camvid"), tmp_path / "raw")
    pre = tmp_path / "pre" / result.path.name
    dst = install_splits(result.path, pre)
    assert dst == pre / "splits_final.json"
    assert json.loads(dst.read_text()) == json.loads((result.path / "autoseg_splits.json").read_text())
    assert install_splits(result.path, pre) == dst  # same folds: nothing to do
    dst.write_text(json.dumps([{"train": ["a"], "val": ["b"]}]))
    with pytest.raises(FileExistsError, match="other folds"):
        install_splits(result.path, pre)
    install_splits(result.path, pre, force=True)
    assert json.loads(dst.read_text()) == json.loads((result.path / "autoseg_splits.json").read_text())


def test_cli(tmp_path, capsys):
    from autoseg.cli.main import main

    src = make_camvid(tmp_path / "camvid")
    assert main(["convert", "camvid", "--source", str(src), "--out", str(tmp_path / "raw"), "--size", "4x3"]) == 0
    out = capsys.readouterr()
    assert "Dataset603_CamVid: 7 training case(s), 2 test case(s), 11 class(es), ignore label 11" in out.out
    assert "[convert] wrote 9/9 cases" in out.err  # progress with counts
    assert main(["convert", "camvid", "--source", str(src), "--out", str(tmp_path / "raw")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["convert", "msd", "--source", str(src), "--out", str(tmp_path / "raw"), "--size", "4x4"]) == 2
    assert "--size does not apply to msd" in capsys.readouterr().err
    (src / "CamVid" / "testannot" / "Seq05VD_f02370.png").unlink()
    assert main(["convert", "camvid", "--source", str(src), "--out", str(tmp_path / "raw2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Seq05VD_f02370: missing partner" in err and "nothing was written" in err
