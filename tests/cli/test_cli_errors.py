"""The CLI's errors: one line that names the problem and what to do, exit status 2, nothing trained."""

from __future__ import annotations

import json

import pytest

from autoseg.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_loss_suggests_closest(capsys, tmp_path):
    code, _, err = run(capsys, "plan_and_train", "--loss", "comb", "--work-dir", str(tmp_path))
    assert code == 2
    assert "unknown loss 'comb'" in err and "Did you mean 'combo'" in err
    assert not (tmp_path / "nnUNet_raw").exists()  # failed before touching anything


def test_bad_hyper_parameter(capsys, tmp_path):
    code, _, err = run(capsys, "plan_and_train", "--loss", "combo", "--loss-args", "alpha=2", "--work-dir", str(tmp_path))
    assert code == 2 and "alpha must lie in [0, 1], got 2.0" in err
    code, _, err = run(capsys, "plan_and_train", "--loss", "combo", "--loss-args", "gama=2", "--work-dir", str(tmp_path))
    assert code == 2 and "no hyper-parameter 'gama'" in err and "alpha" in err
    code, _, err = run(capsys, "plan_and_train", "--loss", "combo", "--loss-args", "alpha", "--work-dir", str(tmp_path))
    assert code == 2 and "key=value" in err


@pytest.mark.parametrize("folds, message", [("5", "fold 5 does not exist"), ("3-1", "runs backwards"),
                                            ("x", "cannot read folds")])
def test_fold_that_does_not_exist(capsys, tmp_path, folds, message):
    code, _, err = run(capsys, "plan_and_train", "--folds", folds, "--work-dir", str(tmp_path))
    assert code == 2 and message in err


def test_missing_dataset(capsys, tmp_path):
    code, _, err = run(capsys, "plan_and_train", "--dataset", "Dataset123_Nope", "--work-dir", str(tmp_path))
    assert code == 2 and "dataset 'Dataset123_Nope' not found" in err
    code, _, err = run(capsys, "plan_and_train", "--dataset", "77", "--work-dir", str(tmp_path))
    assert code == 2 and "no dataset with id 77" in err


def test_malformed_dataset_folder(capsys, tmp_path):
    bad = tmp_path / "Dataset321_Broken"
    (bad / "imagesTr").mkdir(parents=True)
    (bad / "labelsTr").mkdir()
    code, _, err = run(capsys, "plan_and_train", "--dataset", str(bad), "--work-dir", str(tmp_path / "w"))
    assert code == 2 and "has no dataset.json" in err
    (bad / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1},
                                                  "numTraining": 2, "file_ending": ".nii.gz"}))
    (bad / "imagesTr" / "a_0000.nii.gz").write_bytes(b"")
    (bad / "labelsTr" / "b.nii.gz").write_bytes(b"")
    code, _, err = run(capsys, "plan_and_train", "--dataset", str(bad), "--work-dir", str(tmp_path / "w"))
    assert code == 2
    assert "case a: image without label" in err and "case b: label without image" in err
    wrong_name = tmp_path / "my_data"
    wrong_name.mkdir()
    code, _, err = run(capsys, "plan_and_train", "--dataset", str(wrong_name), "--work-dir", str(tmp_path / "w"))
    assert code == 2 and "must be named DatasetXXX_Name" in err


def test_losses_command_lists_registry(capsys):
    from autoseg.losses import list_losses

    code, out, _ = run(capsys, "losses", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [e["name"] for e in listed] == list_losses()
    combo = next(e for e in listed if e["name"] == "combo")
    assert combo["category"] == "combination" and combo["hyper_parameters"]["alpha"] == 0.5
    assert "Taghanaki" in combo["citation"]
    code, out, _ = run(capsys, "losses", "dice*")
    assert code == 0 and "dice_ce" in out and "combo" not in out


def test_loss_args_parsing():
    from autoseg.cli._args import parse_key_values

    assert parse_key_values("alpha=0.7,beta=3,flag=true,w=1;2.5,name=x,none=none,topk.k=20") == {
        "alpha": 0.7, "beta": 3, "flag": True, "w": [1, 2.5], "name": "x", "none": None, "topk.k": 20}
    with pytest.raises(ValueError, match="given twice"):
        parse_key_values("a=1,a=2")
