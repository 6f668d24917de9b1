"""NIH ChestX-ray8 (ChestX-ray14) read from a user's folder.

Expected layout (as downloaded from the NIH box folder)::

    root/
      Data_Entry_2017.csv          or Data_Entry_2017_v2020.csv (either variant)
      BBox_List_2017.csv           boxes, needed for bbox_only=True
      train_val_list.txt           needed for split="train"
      test_list.txt                needed for split="test"
      images/*.png                 the official archives unpacked into root, or
      images_001/images/*.png ...  the per-archive folders of common mirrors

A partial download (some of the 12 archives) is read as it is: listed images
that are absent are left out with one :class:`MissingImagesWarning`. Resized
copies (512, 256, 224 px, ...) are read like the official 1024-px PNGs: the
boxes of ``BBox_List_2017.csv`` are in the official 1024 x 1024 frame and are
scaled from it, whatever the size of the PNG on disk.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

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
from ..schema import FINDINGS, to_model_input

__all__ = ["NIHChestXray8", "MissingImagesWarning", "BOX_FRAME"]

#: Side of the official NIH PNGs, the frame of the boxes in ``BBox_List_2017.csv``.
BOX_FRAME = 1024

_NAME = "NIH ChestX-ray8"
_ENTRY_FILES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
_BOX_FILE = "BBox_List_2017.csv"
_BOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")
_SPLIT_FILES = {"train": "train_val_list.txt", "test": "test_list.txt"}
# The box file spells "Infiltrate" where the label file says "Infiltration".
_SPELLINGS = {"Infiltrate": "Infiltration"}

Box = Tuple[str, float, float, float, float]


def _finding(label: str) -> str:
    label = label.strip()
    return _SPELLINGS.get(label, label)


def _image_paths(root: Path) -> Dict[str, Path]:
    """PNG file name to path, over ``images/`` and the per-archive ``images_*/images/`` folders."""
    paths = {}
    for folder in [root / "images", *sorted(root.glob("images_*/images"))]:
        for path in folder.glob("*.png"):
            paths[path.name] = path
    return paths


def _where(root: Path) -> str:
    return f"{str(root / 'images')!r} or {str(root / 'images_*' / 'images')!r}"


def _selection(split: Optional[str], bbox_only: bool) -> str:
    what = "the label file" if split is None else f"the {split!r} split ({_SPLIT_FILES[split]})"
    return what + (" with boxes" if bbox_only else "")


def _read_boxes(root: Path) -> Dict[str, List[Box]]:
    """Boxes of the 8 findings per image, in the 1024-px frame: ``(finding, x, y, w, h)``."""
    path = first_existing(_NAME, root, (_BOX_FILE,), "the box list (needed for bbox_only=True)")
    boxes: Dict[str, List[Box]] = {}
    for row in read_table(_NAME, path, _BOX_COLUMNS):
        finding = _finding(row["Finding Label"])
        if finding in FINDINGS:
            x, y, w, h = (float(row[column]) for column in _BOX_COLUMNS[2:])
            boxes.setdefault(row["Image Index"], []).append((finding, x, y, w, h))
    return boxes


def _read_split(root: Path, split: str) -> Set[str]:
    path = first_existing(_NAME, root, (_SPLIT_FILES[split],), f"the official list of the {split!r} split")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


class NIHChestXray8(Dataset):
    """NIH ChestX-ray8 images with the paper's 8 findings, their boxes and box masks.

    Parameters
    ----------
    root : path
        The dataset folder (see the module notes for its layout).
    split : {None, "train", "test"}
        All images, or those of the official ``train_val_list.txt`` /
        ``test_list.txt``.
    size : int, default 224
        Images are resized to ``size`` x ``size`` (anti-aliased bilinear);
        boxes are scaled from the official frame to it.
    bbox_only : bool
        Keep only the images with at least one box of the 8 findings (880 of
        them), as for localisation. Boxes are read from ``BBox_List_2017.csv``
        when it exists; it is required for ``bbox_only=True``.
    box_frame : int, default 1024
        Side of the frame the box file's coordinates are in: the official
        PNGs' 1024, also for resized copies of the images (their box file is
        the official one). Change it only for a box file rewritten to another
        frame.

    Raises
    ------
    FileNotFoundError
        When a needed file is missing, or none of the selected images is on
        disk (the message names the selection and some of the files).

    Warns
    -----
    MissingImagesWarning
        Once, when some of the selected images are not on disk: they are left
        out.

    Notes
    -----
    Items are dicts: ``image`` (3 x size x size float32, see
    :func:`~captum_iba.cxr.schema.to_model_input`), ``labels`` (8 float32
    0/1, order of :data:`~captum_iba.cxr.schema.FINDINGS`, from ``Finding
    Labels``), ``masks`` (8 x size x size bool, the union of each finding's
    boxes), ``boxes`` (list of ``(finding, x, y, w, h)`` in output pixels) and
    ``image_id`` (the ``Image Index``, e.g. ``"00000001_000.png"``). Grey, RGB
    and RGBA PNGs are all read as grey, 8- or 16-bit.
    """

    def __init__(
        self,
        root,
        split: Optional[str] = None,
        size: int = 224,
        bbox_only: bool = False,
        *,
        box_frame: int = BOX_FRAME,
    ) -> None:
        if split is not None and split not in _SPLIT_FILES:
            raise ValueError(f"split: expected None, 'train' or 'test', got {split!r}")
        if not isinstance(size, numbers.Integral) or size < 32:
            raise ValueError(f"size: expected an integer >= 32, got {size!r}")
        if not isinstance(box_frame, numbers.Real) or box_frame <= 0:
            raise ValueError(f"box_frame: expected a positive number of pixels, got {box_frame!r}")
        self.root = existing_folder(_NAME, root)
        self.size = int(size)
        self.box_frame = float(box_frame)
        entries = read_table(
            _NAME,
            first_existing(_NAME, self.root, _ENTRY_FILES, "the label file"),
            ("Image Index", "Finding Labels"),
        )
        if bbox_only or (self.root / _BOX_FILE).is_file():
            self._boxes = _read_boxes(self.root)
        else:
            self._boxes = {}
        if split is not None:
            listed = _read_split(self.root, split)
            entries = [row for row in entries if row["Image Index"] in listed]
        if bbox_only:
            entries = [row for row in entries if row["Image Index"] in self._boxes]

        if not entries:
            raise ValueError(f"{_NAME}: no image of {_selection(split, bbox_only)} is listed in the label file")
        available = _image_paths(self.root)
        names = [row["Image Index"] for row in entries]
        paths = [available.get(name) for name in names]
        present = keep_present(_NAME, names, paths, _where(self.root), _selection(split, bbox_only))
        entries = [entries[i] for i in present]
        self._paths = [paths[i] for i in present]
        self.image_ids = [row["Image Index"] for row in entries]
        findings = [{_finding(label) for label in row["Finding Labels"].split("|")} for row in entries]
        self._labels = torch.tensor([[float(name in labels) for name in FINDINGS] for labels in findings])
        self._labels = self._labels.reshape(len(entries), len(FINDINGS))

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return f"NIHChestXray8(root={str(self.root)!r}, n={len(self)}, size={self.size})"

    def targets(self, key: str) -> torch.Tensor:
        """All ``labels``, shape (N, 8), without reading any image."""
        if key != "labels":
            raise KeyError(f"key: NIH ChestX-ray8 items have the label key 'labels', got {key!r}")
        return self._labels

    def __getitem__(self, index: int) -> Dict[str, Any]:
        name = self.image_ids[index]
        grey = read_grey(self._paths[index])
        # Boxes are in the official frame, not the stored PNG's (mirrors ship resized copies).
        scale = self.size / self.box_frame
        masks = np.zeros((len(FINDINGS), self.size, self.size), dtype=bool)
        boxes = []
        for finding, x, y, w, h in self._boxes.get(name, []):
            box = (finding, x * scale, y * scale, w * scale, h * scale)
            left, top = int(round(box[1])), int(round(box[2]))
            right, bottom = int(round(box[1] + box[3])), int(round(box[2] + box[4]))
            masks[FINDINGS.index(finding), max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = True
            boxes.append(box)
        return {
            "image": to_model_input(resize_grey(grey, self.size)),
            "labels": self._labels[index],
            "masks": torch.from_numpy(masks),
            "boxes": boxes,
            "image_id": name,
        }
