"""Attribution metrics as Captum-style functions.

Each takes attributions from any method (Captum's, TorchRay's, captum_iba's)
in the shapes (N, H, W), (N, 1, h, w) or (N, C, H, W) and returns per-sample
tensors:

- perturbation: :func:`insertion_deletion`, :func:`sensitivity_n`
- localisation: :func:`localization_iou`, :func:`pointing_game`
- correlation with a reference map: :func:`map_correlation`
- sanity check: :func:`randomization_check`
"""

from .correlation import map_correlation
from .localization import (
    LocalizationIoUResult,
    PointingGameResult,
    localization_iou,
    pointing_game,
)
from .perturbation import InsertionDeletionResult, insertion_deletion, sensitivity_n
from .sanity import RandomizationCheckResult, randomization_check

__all__ = [
    "insertion_deletion",
    "sensitivity_n",
    "localization_iou",
    "pointing_game",
    "map_correlation",
    "randomization_check",
    "InsertionDeletionResult",
    "LocalizationIoUResult",
    "PointingGameResult",
    "RandomizationCheckResult",
]
