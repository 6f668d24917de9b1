"""BrixIA (COVID-19 severity on chest X-rays) read from a user's folder.

Expected layout::

    root/
      metadata_global_v2.csv       ';'-separated, with Filename and BrixiaScore
      dicom_clean/<Filename>       DICOM images (needs pydicom: pip install 'captum-iba[dicom]')
      png/<stem>.png               or pre-converted images, same stem as Filename
      jpg/<stem>.jpg

``BrixiaScore`` holds six digits 0-3, the zones A-F (A, B, C: right lung, top
to bottom; D, E, F: left lung). DICOM images may be ``MONOCHROME1`` (inverted)
or ``MONOCHROME2``; PNGs grey, RGB(A), 8- or 16-bit. Images listed in the
metadata but absent from all the image folders are left out with one
:class:`MissingImagesWarning`; only a selection with none present is refused.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from .folders import (
    MissingImagesWarning,
    existing_folder,
    first_existing,
    keep_present,
    read_grey,
    read_table,
    resize_grey,
)
from ..schema import ZONES, detectors_from_zone_scores, to_model_input

__all__ = ["BrixIA", "MissingImagesWarning"]

_NAME = "BrixIA"
_METADATA = "metadata_global_v2.csv"
_IMAGE_FOLDERS = ("dicom_clean", "png", "jpg")
_SPLITS = (None, "train", "test")


def _zone_scores(text: str, filename: str) -> List[int]:
    # Spreadsheet tools drop leading zeros ("012221" -> "12221"): pad back to six zones.
    digits = text.zfill(len(ZONES))
    if len(digits) != len(ZONES) or any(digit not in "0123" for digit in digits):
        raise ValueError(f"{_NAME}: BrixiaScore of {filename!r} is {text!r}; expected six digits 0-3 (zones A-F)")
    return [int(digit) for digit in digits]


def _image_path(root: Path, filename: str) -> Optional[Path]:
    """The image of a metadata row: the DICOM file, else a PNG or JPEG of the same stem."""
    stem = Path(filename).stem
    candidates = [root / "dicom_clean" / filename, root / "dicom_clean" / f"{stem}.dcm", root / "png" / f"{stem}.png"]
    candidates += [root / "jpg" / f"{stem}{suffix}" for suffix in (".jpg", ".jpeg")]
    return next((path for path in candidates if path.is_file()), None)


def _read_dicom(path: Path) -> np.ndarray:
    """A DICOM radiograph as grey levels in [0, 1], bright = dense (``MONOCHROME1`` inverted)."""
    import pydicom  # optional extra, checked when the dataset is built

    dataset = pydicom.dcmread(path)
    pixels = dataset.pixel_array.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    grey = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    if getattr(dataset, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        grey = 1.0 - grey  # MONOCHROME1 stores air bright
    return grey


def _selection(split: Optional[str]) -> str:
    if split is None:
        return _METADATA
    return f"the {split!r} split (ConsensusTestset = {int(split == 'test')} in {_METADATA})"


class BrixIA(Dataset):
    """BrixIA images with their six zone scores, global score and three-detector labels.

    Parameters
    ----------
    root : path
        The dataset folder (see the module notes for its layout).
    size : int, default 224
        Images are resized to ``size`` x ``size`` (anti-aliased bilinear).
    split : {None, "train", "test"}
        All images; those outside the consensus test set; or the consensus
        test set (``ConsensusTestset`` = 1).

    Notes
    -----
    Items are dicts: ``image`` (3 x size x size float32, see
    :func:`~captum_iba.cxr.schema.to_model_input`), ``zone_scores`` (6
    int64 0-3, zones A-F), ``score`` (float32 scalar, their sum 0-18),
    ``detectors`` (3 float32 0/1: a zone scored 3 / 2 / 0-or-1 exists) and
    ``image_id`` (the ``Filename``). Unlike the phantom's items they have no
    ``zone_masks`` nor ``severity_map``: zones need a lung segmentation,
    which the dataset does not provide.

    DICOM pixel values are stretched to [0, 1] per image and ``MONOCHROME1``
    images inverted; PNG/JPEG images are taken as they display (already
    converted, bright = dense).

    Raises
    ------
    FileNotFoundError
        When the metadata or every image folder is missing, or none of the
        selected images is on disk (the message names the selection).

    Warns
    -----
    MissingImagesWarning
        Once, when some of the selected images are not on disk: they are left out.
    """

    def __init__(self, root, size: int = 224, split: Optional[str] = None) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split: expected None, 'train' or 'test', got {split!r}")
        if not isinstance(size, numbers.Integral) or size < 32:
            raise ValueError(f"size: expected an integer >= 32, got {size!r}")
        self.root = existing_folder(_NAME, root)
        self.size = int(size)
        columns = ("Filename", "BrixiaScore") + (("ConsensusTestset",) if split else ())
        rows = read_table(_NAME, first_existing(_NAME, self.root, (_METADATA,), "the metadata file"), columns, ";")
        if split is not None:
            rows = [row for row in rows if (row["ConsensusTestset"] == "1") == (split == "test")]
        if not any((self.root / folder).is_dir() for folder in _IMAGE_FOLDERS):
            raise FileNotFoundError(
                f"{_NAME}: no image folder in {str(self.root)!r}: "
                f"looked for {', '.join(f + '/' for f in _IMAGE_FOLDERS)}"
            )
        if not rows:
            raise ValueError(f"{_NAME}: {_METADATA} lists no image of {_selection(split)}")
        names = [row["Filename"] for row in rows]
        paths = [_image_path(self.root, name) for name in names]
        where = f"{', '.join(f + '/' for f in _IMAGE_FOLDERS)} under {str(self.root)!r}"
        present = keep_present(_NAME, names, paths, where, _selection(split))
        rows, paths = [rows[i] for i in present], [paths[i] for i in present]
        self.image_ids = [row["Filename"] for row in rows]
        if any(path.parent.name == "dicom_clean" for path in paths):
            try:
                import pydicom  # noqa: F401
            except ImportError:
                raise ImportError(
                    f"{_NAME}: reading the DICOM images in {str(self.root / 'dicom_clean')!r} needs pydicom: "
                    "pip install 'captum-iba[dicom]' (or provide png/ or jpg/ images)"
                ) from None
        self._paths = paths
        scores = [_zone_scores(row["BrixiaScore"], row["Filename"]) for row in rows]
        self._zone_scores = torch.tensor(scores, dtype=torch.int64).reshape(len(rows), len(ZONES))

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return f"BrixIA(root={str(self.root)!r}, n={len(self)}, size={self.size})"

    def targets(self, key: str) -> torch.Tensor:
        """All ``zone_scores``, ``score`` or ``detectors`` stacked, without reading any image."""
        if key == "zone_scores":
            return self._zone_scores
        if key == "score":
            return self._zone_scores.sum(1).float()
        if key == "detectors":
            return detectors_from_zone_scores(self._zone_scores)
        raise KeyError(f"key: BrixIA items have the label keys 'zone_scores', 'score', 'detectors'; got {key!r}")

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path = self._paths[index]
        grey = _read_dicom(path) if path.parent.name == "dicom_clean" else read_grey(path)
        zone_scores = self._zone_scores[index]
        return {
            "image": to_model_input(resize_grey(grey, self.size)),
            "zone_scores": zone_scores,
            "score": zone_scores.sum().float(),
            "detectors": detectors_from_zone_scores(zone_scores),
            "image_id": self.image_ids[index],
        }
