"""Builders of small dataset folders in the official NIH ChestX-ray8 and BrixIA formats.

Plain functions (no pytest fixtures): each writes into a folder it is given and
returns what a test needs to know about it. The images are drawn so that a test
can check where things land: a dark smooth background with a bright rectangle
on every box of ``BBox_List_2017.csv``, drawn in the official 1024-px frame and
then resized to the size stored on disk (as the mirrors that ship 512- or
256-px copies do).

Also here: :func:`write_factory_module`, a Python module of model factories for
the "bring your own model" path (``module:function`` specs).
"""

from __future__ import annotations

import hashlib
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "NIH_HEADER",
    "NIH_HEADER_V2020",
    "BRIXIA_HEADER",
    "BOX_HEADER",
    "NIHImage",
    "NIH_IMAGES",
    "BrixIAImage",
    "BRIXIA_IMAGES",
    "gradient",
    "folder_digest",
    "nih_pattern",
    "brixia_pattern",
    "write_png",
    "write_dicom",
    "write_nih_folder",
    "write_brixia_folder",
    "write_factory_module",
]

#: ``Data_Entry_2017.csv``: note the trailing comma (an empty last column).
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
#: ``Data_Entry_2017_v2020.csv``: no trailing column.
NIH_HEADER_V2020 = NIH_HEADER[:-1]
#: ``BBox_List_2017.csv``: three empty columns after the four box numbers.
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
BRIXIA_HEADER = (
    "Filename;StudyDate;Modality;Columns;Rows;Manufacturer;PhotometricInterpretation;BrixiaScore;"
    "BrixiaScoreGlobal;ConsensusTestset;Subject;StudyId;Sex;AgeAtStudyDateFiveYear"
)

#: Side of the official NIH PNGs, the frame of the box file.
FRAME = 1024

Box = Tuple[str, float, float, float, float]


@dataclass(frozen=True)
class NIHImage:
    """One row of the NIH label file and how its PNG is stored.

    ``size`` None: listed but absent (a partial download). ``boxes`` are
    ``(label as spelt in the box file, x, y, w, h)`` in the 1024-px frame.
    ``folder`` is where the PNG goes under the root.
    """

    name: str
    labels: str
    split: str
    mode: str  # "grey", "rgb", "rgba" or "grey16"
    size: Optional[int]
    folder: str = "images"
    boxes: Tuple[Box, ...] = field(default=())


#: Ten listed images: grey, RGB, RGBA and 16-bit PNGs at 1024 and 512 px, in
#: ``images/`` and two per-archive folders; two listed images are absent.
NIH_IMAGES = (
    NIHImage("00000001_000.png", "Cardiomegaly|Effusion", "train", "grey", 1024,
             boxes=(("Cardiomegaly", 300.0, 420.0, 420.0, 300.0),)),
    NIHImage("00000001_001.png", "No Finding", "train", "rgb", 512),
    NIHImage("00000002_000.png", "Infiltration|Hernia", "test", "rgba", 1024, "images_001/images",
             boxes=(("Infiltrate", 100.0, 150.0, 200.0, 250.0), ("Infiltrate", 600.0, 500.0, 150.0, 120.0))),
    NIHImage("00000003_000.png", "Nodule", "test", "grey16", 512, "images_001/images",
             boxes=(("Nodule", 701.5, 300.2, 61.3, 58.9),)),
    NIHImage("00000004_000.png", "Atelectasis|Mass", "test", "grey", 512,
             boxes=(("Atelectasis", 200.0, 600.0, 250.0, 100.0), ("Mass", 620.0, 250.0, 180.0, 160.0))),
    NIHImage("00000005_000.png", "Pneumothorax", "train", "rgb", 1024, "images_002/images",
             boxes=(("Pneumothorax", 650.0, 100.0, 250.0, 300.0),)),
    NIHImage("00000006_000.png", "Pneumonia", "test", "grey", None, "images_003/images",
             boxes=(("Pneumonia", 300.0, 300.0, 200.0, 200.0),)),
    NIHImage("00000007_000.png", "Effusion", "train", "grey", None, "images_003/images"),
    NIHImage("00000008_000.png", "Mass|Nodule", "train", "grey16", 1024, "images_002/images",
             boxes=(("Nodule", 150.0, 200.0, 50.0, 50.0), ("Mass", 500.0, 550.0, 220.0, 200.0))),
    NIHImage("00000009_000.png", "No Finding", "test", "rgba", 512),
)


@dataclass(frozen=True)
class BrixIAImage:
    """One row of ``metadata_global_v2.csv`` and how its image is stored.

    ``kind``: ``"MONOCHROME1"`` / ``"MONOCHROME2"`` (a DICOM in ``dicom_clean/``),
    ``"png"`` / ``"png16"`` (8- or 16-bit grey PNG in ``png/``), or None (absent).
    """

    filename: str
    score: str
    consensus: int
    kind: Optional[str]


BRIXIA_IMAGES = (
    BrixIAImage("1001.dcm", "012321", 0, "MONOCHROME2"),
    BrixIAImage("1002.dcm", "333000", 1, "MONOCHROME1"),
    BrixIAImage("1003.dcm", "12221", 0, "png"),  # a spreadsheet dropped the leading 0
    BrixIAImage("1004.dcm", "000110", 1, "png16"),
    BrixIAImage("1005.dcm", "123123", 1, "MONOCHROME1"),
    BrixIAImage("1006.dcm", "010101", 0, None),
)


def gradient(height: int, width: int) -> np.ndarray:
    """A grey test pattern, uint8."""
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows * 3 + cols * 5) % 256).astype(np.uint8)


def folder_digest(root: Path) -> Dict[str, str]:
    """SHA-256 of every file under ``root``: to check that a reader changed nothing."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def nih_pattern(image: NIHImage, size: int) -> np.ndarray:
    """The grey levels (0-1) of ``image`` at ``size`` px: drawn at 1024 px, resized as a mirror does."""
    rows, cols = np.mgrid[0:FRAME, 0:FRAME] / FRAME
    grey = (0.1 + 0.2 * rows * cols).astype(np.float32)
    for _, x, y, w, h in image.boxes:
        grey[int(round(y)) : int(round(y + h)), int(round(x)) : int(round(x + w))] = 0.9
    if size == FRAME:
        return grey
    return np.asarray(Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def brixia_pattern(size: int = 64) -> np.ndarray:
    """A grey radiograph stand-in (0-1, bright = dense): bright bottom right, dark top left."""
    rows, cols = np.mgrid[0:size, 0:size] / (size - 1)
    return (0.05 + 0.9 * (rows + cols) / 2).astype(np.float32)


def write_png(path: Path, grey: np.ndarray, mode: str) -> None:
    """Save grey levels (0-1) as a ``"grey"``, ``"rgb"``, ``"rgba"`` or 16-bit ``"grey16"`` PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "grey16":
        Image.fromarray(np.round(grey * 65535).astype(np.uint16)).save(path)
        return
    eight = np.round(grey * 255).astype(np.uint8)
    if mode == "grey":
        Image.fromarray(eight).save(path)
    elif mode == "rgb":
        Image.fromarray(np.stack([eight] * 3, -1)).save(path)
    elif mode == "rgba":  # a nearly transparent alpha, which readers must ignore
        Image.fromarray(np.dstack([eight] * 3 + [np.full_like(eight, 7)])).save(path)
    else:
        raise ValueError(f"mode: expected grey, rgb, rgba or grey16, got {mode!r}")


def write_nih_folder(
    root: Path,
    *,
    label_file: str = "Data_Entry_2017.csv",
    size: Optional[int] = None,
    images: Sequence[NIHImage] = NIH_IMAGES,
) -> Path:
    """Write an NIH ChestX-ray8 folder in the official format.

    Parameters
    ----------
    root : Path
        Created if needed.
    label_file : {"Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"}
        Which variant of the label file to write (the first has a trailing
        empty column).
    size : int, optional
        Store every present image at this size (a resized mirror); by default
        each at its own ``NIHImage.size``.
    images : sequence of NIHImage

    Returns
    -------
    Path
        ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    v2020 = label_file.endswith("_v2020.csv")
    lines = [NIH_HEADER_V2020 if v2020 else NIH_HEADER]
    for patient, image in enumerate(images, start=1):
        row = f"{image.name},{image.labels},0,{patient},{40 + patient},M,PA,2500,2048,0.143,0.143"
        lines.append(row if v2020 else row + ",")
    (root / label_file).write_text("\n".join(lines) + "\n")
    boxes = [BOX_HEADER] + [
        f"{image.name},{label},{x},{y},{w},{h},,," for image in images for label, x, y, w, h in image.boxes
    ]
    (root / "BBox_List_2017.csv").write_text("\n".join(boxes) + "\n")
    for split, list_file in (("train", "train_val_list.txt"), ("test", "test_list.txt")):
        (root / list_file).write_text("".join(f"{image.name}\n" for image in images if image.split == split))
    for image in images:
        if image.size is not None:
            stored = size or image.size
            write_png(root / image.folder / image.name, nih_pattern(image, stored), image.mode)
    return root


def write_dicom(path: Path, pixels: np.ndarray, photometric: str) -> None:
    """A 12-bit grey DICOM file (needs pydicom)."""
    import pydicom
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
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)


def write_brixia_folder(root: Path, *, images: Sequence[BrixIAImage] = BRIXIA_IMAGES, size: int = 64) -> Path:
    """Write a BrixIA folder: ``metadata_global_v2.csv`` and the images (DICOM needs pydicom).

    Every present image shows :func:`brixia_pattern` (``MONOCHROME1`` files
    store it inverted, as the format means), so a reader that gets the
    photometric interpretation right reads the same picture from all (the
    DICOMs' 12-bit values stretched to [0, 1]).

    Returns
    -------
    Path
        ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    grey = brixia_pattern(size)
    rows = [BRIXIA_HEADER]
    for subject, image in enumerate(images, start=1):
        photometric = image.kind if image.kind and image.kind.startswith("MONO") else "MONOCHROME2"
        total = sum(int(digit) for digit in image.score)
        rows.append(
            f"{image.filename};2020030{subject % 10};CR;{size};{size};X;{photometric};{image.score};{total};"
            f"{image.consensus};{subject};{10 + subject};F;60"
        )
        stem = Path(image.filename).stem
        if image.kind in ("MONOCHROME1", "MONOCHROME2"):
            levels = np.round(grey * 4000).astype(np.uint16) + 40
            stored = levels.max() + levels.min() - levels if image.kind == "MONOCHROME1" else levels
            write_dicom(root / "dicom_clean" / image.filename, stored, image.kind)
        elif image.kind in ("png", "png16"):
            write_png(root / "png" / f"{stem}.png", grey, "grey16" if image.kind == "png16" else "grey")
    (root / "metadata_global_v2.csv").write_text("\n".join(rows) + "\n")
    return root


_FACTORIES = '''
    """Model factories for the "bring your own model" tests (written by tests/_realdata.py)."""
    import torch
    import torchvision


    def resnet50():
        """A torchvision ResNet-50 with 8 outputs, random weights."""
        torch.manual_seed(0)
        return torchvision.models.resnet50(weights=None, num_classes=8)


    def resnet18_14():
        """A torchvision ResNet-18 with 14 outputs (a ChestX-ray14 head), random weights."""
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None, num_classes=14)


    def not_a_model():
        return "resnet50"
'''


def write_factory_module(folder: Path, name: str = "cxr_factories") -> str:
    """Write a module of model factories into ``folder``; returns its module name.

    Put ``folder`` on ``sys.path`` (or ``PYTHONPATH`` for a subprocess) to
    import it; its factories: ``resnet50`` (8 outputs), ``resnet18_14`` (14
    outputs) and ``not_a_model`` (returns a string).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(_FACTORIES).lstrip())
    return name
