"""Readers of real datasets, on tiny fixture folders written in the official formats."""

import hashlib
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from captum_iba.cxr import FINDINGS, BrixIA, NIHChestXray8, to_grey

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
BRIXIA_HEADER = (
    "Filename;StudyDate;Modality;Columns;Rows;Manufacturer;PhotometricInterpretation;BrixiaScore;"
    "BrixiaScoreGlobal;ConsensusTestset;Subject;StudyId;Sex;AgeAtStudyDateFiveYear"
)


def gradient(height, width):
    """A grey test pattern, uint8."""
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows * 3 + cols * 5) % 256).astype(np.uint8)


def folder_digest(root):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def nih_root(tmp_path):
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    (root / "images_001" / "images").mkdir(parents=True)
    pattern = gradient(128, 128)
    Image.fromarray(pattern).save(root / "images" / "00000001_000.png")  # grey
    Image.fromarray(np.stack([pattern] * 3, -1)).save(root / "images" / "00000002_000.png")  # RGB
    rgba = np.dstack([pattern] * 3 + [np.full_like(pattern, 7)])  # RGBA, nearly transparent
    Image.fromarray(rgba).save(root / "images_001" / "images" / "00000003_001.png")
    Image.fromarray(gradient(80, 160)).save(root / "images_001" / "images" / "00000004_000.png")  # 160 wide, 80 high
    (root / "Data_Entry_2017.csv").write_text(
        "\n".join(
            [
                NIH_HEADER,
                "00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA,2682,2749,0.143,0.143,",
                "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171,",
                "00000003_001.png,Infiltration|Hernia,1,3,77,F,AP,2048,2500,0.168,0.168,",
                "00000004_000.png,Nodule,0,4,63,F,PA,2992,2991,0.143,0.143,",
            ]
        )
        + "\n"
    )
    (root / "BBox_List_2017.csv").write_text(
        "\n".join(
            [
                "Image Index,Finding Label,Bbox [x,y,w,h],,,",
                "00000001_000.png,Cardiomegaly,32.0,48.0,64.0,40.0,,,",
                "00000003_001.png,Infiltrate,8,16,24,32,,,",
                "00000003_001.png,Infiltrate,80,64,16,16,,,",
                "00000004_000.png,Nodule,40,20,20,10,,,",
            ]
        )
        + "\n"
    )
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000002_000.png\n")
    (root / "test_list.txt").write_text("00000003_001.png\n00000004_000.png\n")
    return root


def rectangle(top, bottom, left, right, size=64):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


def test_nih_labels_boxes_and_masks(nih_root):
    before = folder_digest(nih_root)
    data = NIHChestXray8(nih_root, size=64)
    assert len(data) == 4 and data.image_ids[2] == "00000003_001.png"
    items = [data[i] for i in range(len(data))]
    assert items[0]["labels"].tolist() == [float(name in ("Cardiomegaly", "Effusion")) for name in FINDINGS]
    assert items[1]["labels"].sum() == 0 and items[1]["boxes"] == [] and not items[1]["masks"].any()
    # Hernia is not one of the 8 findings.
    assert items[2]["labels"].tolist() == [float(name == "Infiltration") for name in FINDINGS]
    # Boxes follow the image from 128 to 64 pixels; "Infiltrate" is read as Infiltration.
    assert items[0]["boxes"] == [("Cardiomegaly", 16.0, 24.0, 32.0, 20.0)]
    assert torch.equal(items[0]["masks"][FINDINGS.index("Cardiomegaly")], rectangle(24, 44, 16, 48))
    assert items[0]["masks"].sum() == 32 * 20  # Effusion has a label but no box
    assert [box[0] for box in items[2]["boxes"]] == ["Infiltration", "Infiltration"]
    infiltration = rectangle(8, 24, 4, 16) | rectangle(32, 40, 40, 48)
    assert torch.equal(items[2]["masks"][FINDINGS.index("Infiltration")], infiltration)
    # A non-square image: x and y scale separately (160 -> 64 wide, 80 -> 64 high).
    assert items[3]["boxes"] == [("Nodule", 16.0, 16.0, 8.0, 8.0)]
    assert all(item["image"].shape == (3, 64, 64) for item in items)
    assert [item["image_id"] for item in items] == data.image_ids
    assert torch.equal(data.targets("labels"), torch.stack([item["labels"] for item in items]))
    assert folder_digest(nih_root) == before  # user files are only read


def test_nih_grey_rgb_and_rgba_read_alike(nih_root):
    data = NIHChestXray8(nih_root, size=64)
    grey, rgb, rgba = (data[i]["image"] for i in range(3))
    assert torch.allclose(grey, rgb, atol=1e-6) and torch.allclose(grey, rgba, atol=1e-6)
    expected = np.asarray(Image.fromarray(gradient(128, 128)).resize((64, 64), Image.Resampling.BILINEAR)) / 255
    assert torch.allclose(to_grey(grey), torch.from_numpy(expected).float(), atol=1 / 255 + 1e-4)


def test_nih_splits_and_bbox_only(nih_root):
    assert NIHChestXray8(nih_root, split="train", size=32).image_ids == ["00000001_000.png", "00000002_000.png"]
    assert NIHChestXray8(nih_root, split="test", size=32).image_ids == ["00000003_001.png", "00000004_000.png"]
    boxed = NIHChestXray8(nih_root, size=32, bbox_only=True)
    assert boxed.image_ids == ["00000001_000.png", "00000003_001.png", "00000004_000.png"]
    assert NIHChestXray8(nih_root, split="test", size=32, bbox_only=True).image_ids == boxed.image_ids[1:]


def test_nih_v2020_label_file_accepted(nih_root):
    (nih_root / "Data_Entry_2017.csv").rename(nih_root / "Data_Entry_2017_v2020.csv")
    assert len(NIHChestXray8(nih_root, size=32)) == 4


@pytest.mark.parametrize(
    "break_it, kwargs, error, words",
    [
        (lambda root: shutil.rmtree(root), {}, FileNotFoundError, ["root folder", "nih"]),
        (lambda root: (root / "Data_Entry_2017.csv").unlink(), {}, FileNotFoundError, ["Data_Entry_2017.csv", "nih"]),
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
            lambda root: (root / "images_001" / "images" / "00000004_000.png").unlink(),
            {},
            FileNotFoundError,
            ["00000004_000.png", "images"],
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


@pytest.fixture
def brixia_root(tmp_path):
    root = tmp_path / "brixia"
    (root / "png").mkdir(parents=True)
    (root / "jpg").mkdir()
    Image.fromarray(gradient(120, 100)).save(root / "png" / "1001.png")
    Image.fromarray(gradient(64, 64)).save(root / "png" / "1002.png")
    Image.fromarray(gradient(64, 64)).save(root / "jpg" / "1003.jpg")
    rows = [
        "1001.dcm;20200301;CR;100;120;Carestream;MONOCHROME2;012321;9;0;1;11;M;65",
        "1002.dcm;20200302;DX;64;64;Agfa;MONOCHROME1;333000;9;1;2;12;F;70",
        "1003.dcm;20200303;CR;64;64;Agfa;MONOCHROME2;12221;8;0;3;13;F;50",  # a spreadsheet dropped the leading 0
    ]
    (root / "metadata_global_v2.csv").write_text("\n".join([BRIXIA_HEADER] + rows) + "\n")
    return root


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


def write_dicom(path, pixels, photometric):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)


def test_brixia_dicom_monochrome1_is_inverted(tmp_path):
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
        (lambda root: (root / "jpg" / "1003.jpg").unlink(), {}, FileNotFoundError, ["1003.dcm", "png/"]),
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
