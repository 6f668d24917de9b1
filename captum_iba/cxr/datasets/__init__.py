"""Readers of the real datasets, from folders the user names (opened for reading only).

:mod:`.nih` (NIH ChestX-ray8, its labels and boxes), :mod:`.brixia` (BrixIA
severity scores), over :mod:`.folders` (CSV tables, grey images, errors that
say which file is missing).
"""

from .brixia import BrixIA
from .folders import MissingImagesWarning
from .nih import NIHChestXray8

__all__ = ["NIHChestXray8", "BrixIA", "MissingImagesWarning"]
