"""Reading a user's dataset folder: CSV tables, grey images, with errors that say what is missing.

Files are only ever opened for reading.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "MissingImagesWarning",
    "UnreadableImageError",
    "existing_folder",
    "first_existing",
    "read_table",
    "read_grey",
    "resize_grey",
    "keep_present",
]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class MissingImagesWarning(UserWarning):
    """Some images listed in a dataset's label file are not on disk and were left out."""


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded (truncated, corrupt, not an image); the message names it."""


def existing_folder(dataset: str, root) -> Path:
    """``root`` as a Path, or a FileNotFoundError if it is not a folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: the root folder {str(path)!r} does not exist or is not a folder")
    return path


def first_existing(dataset: str, root: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``root / name`` that exists, or a FileNotFoundError naming all of them."""
    for name in names:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{dataset}: {what} not found: looked for {' or '.join(names)} in {str(root)!r}")


def read_table(dataset: str, path: Path, columns: Iterable[str], delimiter: str = ",") -> List[Dict[str, str]]:
    """Rows of a CSV file as dicts, after checking that it has the needed columns.

    Parameters
    ----------
    dataset : str
        Name used in error messages.
    path : Path
    columns : iterable of str
        Columns that must be present (others are kept too).
    delimiter : str

    Returns
    -------
    list of dict
        Column name to (stripped) text; one dict per data row.
    """
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file, delimiter=delimiter)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in columns if name not in header]
        if missing:
            raise ValueError(
                f"{dataset}: {str(path)!r} lacks the column(s) {missing} "
                f"(expected {delimiter!r}-separated columns; found {header})"
            )
        reader.fieldnames = header
        return [{key: (value or "").strip() for key, value in row.items() if key} for row in reader]


def read_grey(path: Path) -> np.ndarray:
    """A PNG/JPEG image as grey levels in [0, 1].

    Grey, grey+alpha, palette, RGB and RGBA images are converted to luminance
    (alpha ignored); 16-bit images are scaled by 65535.

    Returns
    -------
    ndarray, shape (H, W), float32

    Raises
    ------
    UnreadableImageError
        Naming the file, if it is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as image:
            if image.mode in _SIXTEEN_BIT_MODES:
                return np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
            if image.mode == "F":
                return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
            return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # what PIL raises on bad files
        raise UnreadableImageError(f"{path}: unreadable image ({error})") from error


def resize_grey(grey: np.ndarray, size: int) -> np.ndarray:
    """Resize (anti-aliased bilinear) a grey image to ``size`` x ``size``.

    Returns
    -------
    ndarray, shape (size, size), float32
    """
    if grey.shape == (size, size):
        return grey.astype(np.float32, copy=False)
    resized = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def keep_present(
    dataset: str, names: Sequence[str], paths: Sequence[Optional[Path]], where: str, selection: str
) -> List[int]:
    """Indices of the listed images found on disk; one warning for the others.

    A partial download (a few of NIH's 12 archives) is usable: the absent
    images are left out with a single :class:`MissingImagesWarning` that says
    how many and where they were looked for. Only when none is present is it
    an error.

    Parameters
    ----------
    dataset : str
        Name used in messages.
    names : sequence of str
        The listed image names.
    paths : sequence of Path or None
        Each name's file, None when absent.
    where : str
        The folders searched, as the messages state them.
    selection : str
        What was selected (e.g. ``"the 'test' split"``), named when none is present.

    Returns
    -------
    list of int
        Positions of the present images, in the listed order.

    Raises
    ------
    FileNotFoundError
        If images were listed but none is present.
    """
    present = [i for i, path in enumerate(paths) if path is not None]
    missing = [name for name, path in zip(names, paths) if path is None]
    if names and not present:
        raise FileNotFoundError(
            f"{dataset}: none of the {len(names)} image(s) of {selection} is present in {where}, "
            f"e.g. {', '.join(missing[:3])}"
        )
    if missing:
        warnings.warn(
            f"{dataset}: {len(missing)} of the {len(names)} image(s) of {selection} are not in {where} "
            f"and are left out (e.g. {', '.join(missing[:3])})",
            MissingImagesWarning,
            stacklevel=3,
        )
    return present
