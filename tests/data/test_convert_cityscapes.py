"""Cityscapes converter: labelIds -> the 19 train ids (official table), ignore, split, resizing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _convert_fixtures import CITYSCAPES_FILES, cityscapes_label, make_cityscapes, read_png, verify_with_nnunet
from PIL import Image

from autoseg.data.convert import ConversionError, convert

# The official cityscapesScripts labels.py table, written out by hand: labelId -> (trainId, name).
OFFICIAL = {7: (0, "road"), 8: (1, "sidewalk"), 11: (2, "building"), 12: (3, "wall"), 13: (4, "fence"),
            17: (5, "pole"), 19: (6, "traffic light"), 20: (7, "traffic sign"), 21: (8, "vegetation"),
            22: (9, "terrain"), 23: (10, "sky"), 24: (11, "person"), 25: (12, "rider"), 26: (13, "car"),
            27: (14, "truck"), 28: (15, "bus"), 31: (16, "train"), 32: (17, "motorcycle"), 33: (18, "bicycle")}
# trainId 255 in the table: unlabeled, ego vehicle, rectification border, out of roi, static, dynamic,
# ground, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer
IGNORED_IDS = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cityscapes")
    src = make_cityscapes(tmp / "cityscapes")
    return convert("cityscapes", src, tmp / "raw"), tmp


def _value_of(label_id: int, out: np.ndarray) -> int:
    src = cityscapes_label()
    ys, xs = np.nonzero(src == label_id)
    return int(out[ys[0], xs[0]])


def test_label_ids_become_train_ids(converted):
    result, _ = converted
    out = read_png(result.path / "labelsTr" / "aachen_000000_000019.png")
    dj = json.loads((result.path / "dataset.json").read_text())
    names = dj["autoseg"]["class_names"]
    for label_id, (train_id, name) in OFFICIAL.items():
        assert _value_of(label_id, out) == train_id, (label_id, name)
        assert names[str(train_id)] == name
    assert _value_of(26, out) == 13 and names["13"] == "car"
    for label_id in IGNORED_IDS:
        assert _value_of(label_id, out) == 19, label_id
    assert _value_of(4, out) == dj["labels"]["ignore"] == 19


def test_dataset_json_counts_road_as_a_class(converted):
    """PROTOCOL pitfall: road (train id 0) is a real class, trained and evaluated like the others."""
    result, _ = converted
    dj = json.loads((result.path / "dataset.json").read_text())
    assert dj["autoseg"]["natural_image"] is True
    assert dj["autoseg"]["evaluated_classes"] == list(range(19))
    assert 0 in dj["autoseg"]["evaluated_classes"] and dj["autoseg"]["class_names"]["0"] == "road"
    assert dj["labels"]["ignore"] == max(dj["labels"].values())  # nnU-Net: ignore must be the highest
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dj["file_ending"] == ".png"
    assert dj["autoseg"]["aggregation"] == "dataset_confusion_matrix"


def test_train_and_val_kept_val_is_the_test_set(converted):
    result, tmp = converted
    assert sorted(p.stem for p in (result.path / "labelsTr").iterdir()) == sorted(CITYSCAPES_FILES["train"])
    assert sorted(p.stem for p in (result.path / "labelsTs").iterdir()) == sorted(CITYSCAPES_FILES["val"])
    assert sorted(p.stem for p in (result.path / "imagesTs").iterdir()) == sorted(
        f"{n}_0000" for n in CITYSCAPES_FILES["val"])
    dj = json.loads((result.path / "dataset.json").read_text())
    assert dj["autoseg"]["test_split"] == sorted(CITYSCAPES_FILES["val"])
    # the RGB image is copied pixel for pixel
    src = read_png(tmp / "cityscapes" / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png")
    np.testing.assert_array_equal(read_png(result.path / "imagesTs" / "lindau_000000_000019_0000.png"), src)


def test_resize_uses_nearest_neighbour_for_labels(tmp_path):
    src = make_cityscapes(tmp_path / "cityscapes")
    result = convert("cityscapes", src, tmp_path / "raw", size="8x6")
    out = read_png(result.path / "labelsTr" / "aachen_000000_000019.png")
    assert out.shape == (6, 8)
    # the fixture's labels are 2x2 blocks, so halving picks one pixel of each block, never a blend
    lut = np.full(34, 19)
    for label_id, (train_id, _) in OFFICIAL.items():
        lut[label_id] = train_id
    np.testing.assert_array_equal(out, lut[cityscapes_label()[::2, ::2]])
    img = read_png(result.path / "imagesTr" / "aachen_000000_000019_0000.png")
    assert img.shape == (6, 8, 3)
    block = json.loads((result.path / "dataset.json").read_text())["autoseg"]
    assert block["resized_to"] == [8, 6]
    assert block["conversion"]["options"] == {"size": "8x6"} and block["conversion"]["kind"] == "cityscapes"


def test_nnunet_accepts_it(converted, tmp_path):
    verify_with_nnunet([converted[0].path], tmp_path)


def test_problems_name_the_cases(tmp_path):
    src = make_cityscapes(tmp_path / "cityscapes")
    gt = src / "gtFine" / "train"
    (gt / "bochum" / "bochum_000000_000313_gtFine_labelIds.png").unlink()
    lab = cityscapes_label()
    lab[0, 0] = 40  # no labelId 40 in the table
    Image.fromarray(lab).save(gt / "aachen" / "aachen_000001_000019_gtFine_labelIds.png")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(
        src / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png")  # only 'unlabeled'
    Image.fromarray(np.zeros((10, 16, 3), np.uint8)).save(
        src / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png")
    with pytest.raises(ConversionError) as e:
        convert("cityscapes", src, tmp_path / "raw")
    found = {(p.case, p.kind) for p in e.value.problems}
    assert found == {("bochum_000000_000313", "missing partner"), ("aachen_000001_000019", "label values"),
                     ("lindau_000000_000019", "empty label"), ("frankfurt_000000_000294", "shape")}
    assert "aachen_000001_000019: label values: aachen_000001_000019_gtFine_labelIds.png holds [40]" in str(e.value)
    assert not (tmp_path / "raw").exists()
