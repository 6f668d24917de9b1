"""Readers of real datasets on small folders in the official formats (see tests/_realdata.py)."""

import shutil
import sys

import numpy as np
import pytest
import torch
from _realdata import (
    BRIXIA_HEADER,
    NIH_IMAGES,
    folder_digest,
    gradient,
    nih_pattern,
    write_dicom,
)
from PIL import Image

from captum_iba.cxr import FINDINGS, BrixIA, MissingImagesWarning, NIHChestXray8, to_grey

# The NIH folder has two listed images missing (a partial download): tested in test_cxr_real_folders.py.
pytestmark = pytest.mark.filterwarnings("ignore::captum_iba.cxr.MissingImagesWarning")

PRESENT = [image for image in NIH_IMAGES if image.size is not None]
SPELLING = {"Infiltrate": "Infiltration"}


def box_mask(boxes, finding, size):
    """The union of ``finding``'s boxes (1024-px frame) at ``size`` px, rounded as the reader does."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    scale = size / 1024
    for label, x, y, w, h in boxes:
        if SPELLING.get(label, label) == finding:
            mask[round(y * scale) : round((y + h) * scale), round(x * scale) : round((x + w) * scale)] = True
    return mask


def test_nih_labels_boxes_and_masks(nih_root):
    before = folder_digest(nih_root)
    data = NIHChestXray8(nih_root, size=64)
    assert data.image_ids == [image.name for image in PRESENT]
    for image, index in zip(PRESENT, range(len(data))):
        item = data[index]
        labels = {SPELLING.get(label, label) for label in image.labels.split("|")}
        assert item["labels"].tolist() == [float(name in labels) for name in FINDINGS]  # Hernia is not one
        assert [box[0] for box in item["boxes"]] == [SPELLING.get(box[0], box[0]) for box in image.boxes]
        expected = [[value * 64 / 1024 for value in box[1:]] for box in image.boxes]
        assert [list(box[1:]) for box in item["boxes"]] == [pytest.approx(box) for box in expected]
        for k, finding in enumerate(FINDINGS):
            assert torch.equal(item["masks"][k], box_mask(image.boxes, finding, 64)), (image.name, finding)
        assert item["image"].shape == (3, 64, 64) and item["image_id"] == image.name
    # Effusion of the first image has a label but no box: no mask.
    assert not data[0]["masks"][FINDINGS.index("Effusion")].any()
    assert torch.equal(data.targets("labels"), torch.stack([data[i]["labels"] for i in range(len(data))]))
    assert folder_digest(nih_root) == before  # user files are only read


def test_nih_grey_rgb_rgba_and_16_bit_read_alike(nih_root):
    data = NIHChestXray8(nih_root, size=64)
    modes = set()
    for image, index in zip(PRESENT, range(len(data))):
        stored = nih_pattern(image, image.size)
        expected = np.array(Image.fromarray(stored).resize((64, 64), Image.Resampling.BILINEAR))
        assert torch.allclose(to_grey(data[index]["image"]), torch.from_numpy(expected), atol=1 / 255 + 1e-4)
        modes.add(image.mode)
    assert modes == {"grey", "rgb", "rgba", "grey16"}


def test_nih_splits_and_bbox_only(nih_root):
    for split in ("train", "test"):
        expected = [image.name for image in PRESENT if image.split == split]
        assert NIHChestXray8(nih_root, split=split, size=32).image_ids == expected
    boxed = NIHChestXray8(nih_root, size=32, bbox_only=True)
    assert boxed.image_ids == [image.name for image in PRESENT if image.boxes]
    boxed_test = NIHChestXray8(nih_root, split="test", size=32, bbox_only=True).image_ids
    assert boxed_test == [image.name for image in PRESENT if image.boxes and image.split == "test"]


@pytest.mark.parametrize(
    "break_it, kwargs, error, words",
    [
        (lambda root: shutil.rmtree(root), {}, FileNotFoundError, ["root folder", "nih"]),
        (
            lambda root: (root / "Data_Entry_2017.csv").unlink(),
            {},
            FileNotFoundError,
            ["Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv", "nih"],
        ),
        (
            lambda root: (root / "Data_Entry_2017.csv").write_text("Image Index,Labels\nx.png,Mass\n"),
            {},
            ValueError,
            ["Finding Labels", "Data_Entry_2017.csv"],
        ),
        (
            lambda root: (root / "test_list.txt").unlink(),
            {"split": "test"},
            FileNotFoundError,
            ["test_list.txt", "nih"],
        ),
        (
            lambda root: (root / "train_val_list.txt").unlink(),
            {"split": "train"},
            FileNotFoundError,
            ["train_val_list.txt"],
        ),
        (
            lambda root: (root / "BBox_List_2017.csv").unlink(),
            {"bbox_only": True},
            FileNotFoundError,
            ["BBox_List_2017.csv"],
        ),
        (
            lambda root: (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label\nx.png,Mass\n"),
            {},
            ValueError,
            ["Bbox [x", "BBox_List_2017.csv"],
        ),
        (
            lambda root: (root / "test_list.txt").write_text("99999999_000.png\n"),
            {"split": "test"},
            ValueError,
            ["'test' split", "label file"],
        ),
    ],
)
def test_nih_missing_pieces_are_named(nih_root, break_it, kwargs, error, words):
    break_it(nih_root)
    with pytest.raises(error) as raised:
        NIHChestXray8(nih_root, size=32, **kwargs)
    assert all(word in str(raised.value) for word in words), str(raised.value)


def test_nih_bad_arguments(nih_root):
    with pytest.raises(ValueError, match="split: expected None, 'train' or 'test'"):
        NIHChestXray8(nih_root, split="val")
    with pytest.raises(ValueError, match="size"):
        NIHChestXray8(nih_root, size=8)
    with pytest.raises(ValueError, match="box_frame"):
        NIHChestXray8(nih_root, box_frame=0)


def test_brixia_scores_detectors_and_images(brixia_root):
    before = folder_digest(brixia_root)
    data = BrixIA(brixia_root, size=48)
    items = [data[i] for i in range(len(data))]
    zone_scores = [[0, 1, 2, 3, 2, 1], [3, 3, 3, 0, 0, 0], [0, 1, 2, 2, 2, 1]]
    assert [item["zone_scores"].tolist() for item in items] == zone_scores
    assert [float(item["score"]) for item in items] == [9.0, 9.0, 8.0]
    assert [item["detectors"].tolist() for item in items] == [[1, 1, 1], [1, 0, 1], [0, 1, 1]]
    assert [item["image_id"] for item in items] == ["1001.dcm", "1002.dcm", "1003.dcm"]
    assert all(item["image"].shape == (3, 48, 48) for item in items)
    assert "zone_masks" not in items[0] and "severity_map" not in items[0]
    assert torch.equal(data.targets("score"), torch.stack([item["score"] for item in items]))
    assert folder_digest(brixia_root) == before


def test_brixia_consensus_split(brixia_root):
    assert BrixIA(brixia_root, split="test", size=32).image_ids == ["1002.dcm"]
    assert BrixIA(brixia_root, split="train", size=32).image_ids == ["1001.dcm", "1003.dcm"]


def test_brixia_dicom_monochrome1_is_inverted(tmp_path):
    pytest.importorskip("pydicom")
    root = tmp_path / "brixia"
    (root / "dicom_clean").mkdir(parents=True)
    pixels = (gradient(64, 64).astype(np.uint16) * 16) + 5
    write_dicom(root / "dicom_clean" / "a.dcm", pixels, "MONOCHROME2")
    write_dicom(root / "dicom_clean" / "b.dcm", pixels, "MONOCHROME1")
    rows = [
        "a.dcm;20200301;CR;64;64;X;MONOCHROME2;000000;0;0;1;1;M;60",
        "b.dcm;20200301;CR;64;64;X;MONOCHROME1;000000;0;0;2;2;M;60",
    ]
    (root / "metadata_global_v2.csv").write_text("\n".join([BRIXIA_HEADER] + rows) + "\n")
    data = BrixIA(root, size=64)
    normal, inverted = to_grey(data[0]["image"]), to_grey(data[1]["image"])
    assert torch.allclose(normal + inverted, torch.ones(64, 64), atol=1e-5)
    expected = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    assert torch.allclose(normal, torch.from_numpy(expected).float(), atol=1e-5)


def test_brixia_without_pydicom_says_how_to_get_it(tmp_path, monkeypatch):
    root = tmp_path / "brixia"
    (root / "dicom_clean").mkdir(parents=True)
    (root / "dicom_clean" / "a.dcm").write_bytes(b"not read")
    (root / "metadata_global_v2.csv").write_text(BRIXIA_HEADER + "\na.dcm;1;CR;1;1;X;MONOCHROME2;000000;0;0;1;1;M;60\n")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` fail
    with pytest.raises(ImportError, match=r"captum-iba\[dicom\]"):
        BrixIA(root)


@pytest.mark.parametrize(
    "break_it, kwargs, error, words",
    [
        (lambda root: shutil.rmtree(root), {}, FileNotFoundError, ["root folder", "brixia"]),
        (
            lambda root: (root / "metadata_global_v2.csv").unlink(),
            {},
            FileNotFoundError,
            ["metadata_global_v2.csv", "brixia"],
        ),
        (
            lambda root: (root / "metadata_global_v2.csv").write_text("Filename;Score\n1001.dcm;012321\n"),
            {},
            ValueError,
            ["BrixiaScore", "metadata_global_v2.csv", "';'"],
        ),
        (
            lambda root: (root / "metadata_global_v2.csv").write_text("Filename;BrixiaScore\n1001.dcm;012321\n"),
            {"split": "test"},
            ValueError,
            ["ConsensusTestset"],
        ),
        (
            lambda root: (shutil.rmtree(root / "png"), shutil.rmtree(root / "jpg")),
            {},
            FileNotFoundError,
            ["dicom_clean/", "png/", "jpg/", "brixia"],
        ),
        (
            lambda root: [path.unlink() for path in (root / "png").glob("*")],
            {"split": "test"},
            FileNotFoundError,
            ["'test' split", "1002.dcm", "png/"],
        ),
        (
            lambda root: (root / "metadata_global_v2.csv").write_text(
                BRIXIA_HEADER + "\n1001.dcm;1;CR;1;1;X;M;0124a1;0;0;1;1;M;6\n"
            ),
            {},
            ValueError,
            ["BrixiaScore", "1001.dcm", "0124a1"],
        ),
    ],
)
def test_brixia_missing_pieces_are_named(brixia_root, break_it, kwargs, error, words):
    break_it(brixia_root)
    with pytest.raises(error) as raised:
        BrixIA(brixia_root, size=32, **kwargs)
    assert all(word in str(raised.value) for word in words), str(raised.value)
