"""What a chest X-ray item looks like: label names, image normalisation, batching.

Every dataset of :mod:`captum_iba.cxr` (the phantom and the real-data readers)
returns items as dicts with the same keys and conventions, defined here once.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "FINDINGS",
    "ZONES",
    "DETECTORS",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "to_model_input",
    "to_grey",
    "detectors_from_zone_scores",
    "collate",
]

#: The 8 NIH ChestX-ray8 findings of the paper, in its order (the order of ``labels``).
FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)

#: BrixIA lung zones: A, B, C the right lung (image left) top to bottom; D, E, F the left lung.
ZONES = ("A", "B", "C", "D", "E", "F")

#: The three detectors of the paper's BrixIA classifier: a zone scored 3 / 2 / 0-or-1 exists.
DETECTORS = ("score_3", "score_2", "score_0_1")

#: Per-channel mean and std the models' inputs are normalised with (torchvision's ImageNet
#: convention, so that ImageNet- or CheXNet-style DenseNet weights can be used unchanged).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def to_model_input(grey: np.ndarray) -> torch.Tensor:
    """Turn grey radiographs into model inputs.

    Parameters
    ----------
    grey : array_like, shape (H, W) or (N, H, W), values in [0, 1]
        Grey levels, bright = dense (bone white, air black); a numpy array or a CPU tensor.

    Returns
    -------
    Tensor, shape (3, H, W) or (N, 3, H, W), float32
        The grey image repeated over three channels and normalised with
        :data:`IMAGE_MEAN` and :data:`IMAGE_STD`.
    """
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim not in (2, 3):
        raise ValueError(f"grey: expected shape (H, W) or (N, H, W), got {grey.shape}")
    # numpy, not torch: per-item torch ops of this size pay for thread-pool wake-ups.
    mean = np.array(IMAGE_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(IMAGE_STD, dtype=np.float32)[:, None, None]
    return torch.from_numpy((grey[..., None, :, :] - mean) / std)


def to_grey(image: torch.Tensor) -> torch.Tensor:
    """Undo :func:`to_model_input`: grey levels in [0, 1] for display.

    Parameters
    ----------
    image : Tensor, shape (3, H, W) or (N, 3, H, W)

    Returns
    -------
    Tensor, shape (H, W) or (N, H, W)
        The mean of the de-normalised channels, clipped to [0, 1].
    """
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"image: expected shape (3, H, W) or (N, 3, H, W), got {tuple(image.shape)}")
    mean = torch.tensor(IMAGE_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=image.device).view(3, 1, 1)
    return (image * std + mean).mean(dim=-3).clamp(0.0, 1.0)


def detectors_from_zone_scores(zone_scores: torch.Tensor) -> torch.Tensor:
    """The three-detector labels of the paper from BrixIA zone scores.

    Parameters
    ----------
    zone_scores : Tensor, shape (..., 6), integers 0-3
        Severity per zone A-F.

    Returns
    -------
    Tensor, shape (..., 3), float32 0/1
        Whether some zone scored 3, some zone scored 2, some zone scored 0 or 1
        (the order of :data:`DETECTORS`).
    """
    return torch.stack(
        [(zone_scores == 3).any(-1), (zone_scores == 2).any(-1), (zone_scores <= 1).any(-1)], dim=-1
    ).to(torch.float32)


def collate(items: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Batch items for a :class:`torch.utils.data.DataLoader`.

    Tensors are stacked along a new first dimension; everything else (``boxes``,
    whose count varies per image, and ``image_id``) is kept as a list with one
    entry per item.

    Parameters
    ----------
    items : sequence of dict
        Items with the same keys.

    Returns
    -------
    dict
        The same keys; values of shape (N, ...) for tensors, lists of length N otherwise.
    """
    if not items:
        raise ValueError("items: expected at least one item")
    keys = items[0].keys()
    batch: Dict[str, Any] = {}
    for key in keys:
        values: List[Any] = [item[key] for item in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch
