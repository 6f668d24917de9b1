"""Real folders as people have them: resized mirrors, both label files, partial downloads, DICOM."""

import warnings

import pytest
import torch
from _realdata import (
    BRIXIA_IMAGES,
    NIH_IMAGES,
    brixia_pattern,
    folder_digest,
    write_brixia_folder,
    write_nih_folder,
)

from captum_iba.cxr import FINDINGS, BrixIA, MissingImagesWarning, NIHChestXray8, to_grey

PRESENT = [image for image in NIH_IMAGES if image.size is not None]
MISSING = [image.name for image in NIH_IMAGES if image.size is None]


def read_quietly(reader, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingImagesWarning)
        return reader(*args, **kwargs)


@pytest.mark.parametrize("size", [224, 64])
def test_resized_copies_give_the_same_masks_on_the_same_anatomy(tmp_path, size):
    copies = {side: write_nih_folder(tmp_path / f"nih{side}", size=side) for side in (1024, 512, 256)}
    data = {side: read_quietly(NIHChestXray8, root, size=size, bbox_only=True) for side, root in copies.items()}
    assert len(data[1024]) == sum(bool(image.boxes) for image in PRESENT) > 0
    n_boxes = 0
    for index in range(len(data[1024])):
        items = {side: dataset[index] for side, dataset in data.items()}
        for side in (512, 256):
            assert torch.equal(items[side]["masks"], items[1024]["masks"])
            assert items[side]["boxes"] == items[1024]["boxes"]
        for side, item in items.items():
            grey = to_grey(item["image"])
            for finding, x, y, w, h in item["boxes"]:
                n_boxes += 1
                # Each box was drawn bright on a dark image: its mask must cover the bright patch.
                assert grey[int(y + h / 2), int(x + w / 2)] > 0.8, (side, item["image_id"], finding)
            k = item["masks"].flatten(1).any(1)
            assert grey[item["masks"][k].any(0)].mean() > 0.75 > grey[~item["masks"].any(0)].mean() + 0.3
    assert n_boxes == 3 * sum(len(image.boxes) for image in PRESENT)


def test_both_label_file_variants_read_the_same(tmp_path):
    old = read_quietly(NIHChestXray8, write_nih_folder(tmp_path / "a"), size=32)
    new = read_quietly(NIHChestXray8, write_nih_folder(tmp_path / "b", label_file="Data_Entry_2017_v2020.csv"), size=32)
    assert (tmp_path / "a" / "Data_Entry_2017.csv").read_text().splitlines()[0].endswith(",")
    assert not (tmp_path / "b" / "Data_Entry_2017_v2020.csv").read_text().splitlines()[0].endswith(",")
    assert old.image_ids == new.image_ids == [image.name for image in PRESENT]
    assert torch.equal(old.targets("labels"), new.targets("labels"))
    assert old.targets("labels").sum(0)[FINDINGS.index("Infiltration")] == 1


def test_partial_download_leaves_absent_images_out_with_one_warning(tmp_path):
    root = write_nih_folder(tmp_path / "nih")
    before = folder_digest(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = NIHChestXray8(root, size=32)
    assert [str(w.message) for w in caught if w.category is MissingImagesWarning] == [str(caught[0].message)]
    message = str(caught[0].message)
    assert "\n" not in message and f"{len(MISSING)} of the {len(NIH_IMAGES)}" in message
    assert str(root / "images") in message and all(name in message for name in MISSING)
    assert data.image_ids == [image.name for image in PRESENT] and len(data.targets("labels")) == len(PRESENT)
    assert folder_digest(root) == before


def test_a_split_with_no_image_present_is_refused_by_name(tmp_path):
    root = write_nih_folder(tmp_path / "nih")
    for image in PRESENT:
        if image.split == "test":
            (root / image.folder / image.name).unlink()
    train = read_quietly(NIHChestXray8, root, split="train", size=32)
    assert train.image_ids == [image.name for image in PRESENT if image.split == "train"]
    with pytest.raises(FileNotFoundError) as raised:
        NIHChestXray8(root, split="test", size=32)
    message = str(raised.value)
    assert "'test' split" in message and "test_list.txt" in message and "n_samples" not in message
    assert any(image.name in message for image in NIH_IMAGES if image.split == "test")
    for image in PRESENT:
        (root / image.folder / image.name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="none of the 10 image"):
        NIHChestXray8(root, size=32)


@pytest.fixture
def brixia_root(tmp_path):
    pytest.importorskip("pydicom")
    return write_brixia_folder(tmp_path / "brixia")


def test_brixia_dicom_monochrome1_and_2_and_png_read_alike(brixia_root):
    before = folder_digest(brixia_root)
    with pytest.warns(MissingImagesWarning, match=r"1 of the 6 image.*1006\.dcm") as caught:
        data = BrixIA(brixia_root, size=64)
    assert len([w for w in caught if w.category is MissingImagesWarning]) == 1
    present = [image for image in BRIXIA_IMAGES if image.kind is not None]
    assert data.image_ids == [image.filename for image in present]
    assert {image.kind for image in present} == {"MONOCHROME1", "MONOCHROME2", "png", "png16"}
    pattern = torch.from_numpy(brixia_pattern(64))
    stretched = (pattern - pattern.min()) / (pattern.max() - pattern.min())
    for index, image in enumerate(present):
        item = data[index]
        expected = stretched if image.kind.startswith("MONO") else pattern
        assert torch.allclose(to_grey(item["image"]), expected, atol=2 / 255), image.kind
        assert item["zone_scores"].tolist() == [int(d) for d in image.score.zfill(6)]
    assert folder_digest(brixia_root) == before


def test_brixia_split_with_no_image_present_is_refused_by_name(brixia_root):
    for path in [*(brixia_root / "dicom_clean").glob("*"), *(brixia_root / "png").glob("*")]:
        if path.stem in {"1002", "1004", "1005"}:  # the consensus test set
            path.unlink()
    assert read_quietly(BrixIA, brixia_root, size=32, split="train").image_ids == ["1001.dcm", "1003.dcm"]
    with pytest.raises(FileNotFoundError) as raised:
        BrixIA(brixia_root, size=32, split="test")
    message = str(raised.value)
    assert "'test' split" in message and "1002.dcm" in message and "dicom_clean/" in message
