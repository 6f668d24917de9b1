"""Localisation metrics: IoU with ground truth and the pointing game.

Both compare maps with ground truth given as binary masks or as
``[x, y, w, h]`` boxes, per sample, and average per class over a dataset.
They need no model.
"""

import numbers
from typing import NamedTuple

import torch

from .. import _validate
from ..maps import as_map_batch, binarize, parse_threshold, rank_pixels, resize_map, size_pair
from . import _core

__all__ = ["LocalizationIoUResult", "PointingGameResult", "localization_iou", "pointing_game"]


class LocalizationIoUResult(NamedTuple):
    """Result of :func:`localization_iou` for N maps and K classes."""

    iou: torch.Tensor
    """(N,) IoU of each thresholded map; NaN where the ground truth is empty."""
    class_iou: torch.Tensor
    """(K,) mean IoU of each class; NaN for a class without a defined IoU."""
    mean_iou: torch.Tensor
    """() the mean of ``class_iou`` over the classes where it is defined."""


class PointingGameResult(NamedTuple):
    """Result of :func:`pointing_game` for N maps and K classes."""

    hits: torch.Tensor
    """(N,) bool: whether each map's maximum hits its ground truth."""
    class_hits: torch.Tensor
    """(K,) float64 hit counts, as TorchRay's ``PointingGame.hits``."""
    class_misses: torch.Tensor
    """(K,) float64 miss counts, as TorchRay's ``PointingGame.misses``."""
    class_accuracy: torch.Tensor
    """(K,) hits / (hits + misses); NaN for a class without samples."""
    accuracy: torch.Tensor
    """() the mean of ``class_accuracy`` over the classes with samples."""


def _maps_and_ground_truth(attributions, masks_or_boxes, size):
    """Maps at the ground truth's size, and the ground truth (N, H, W) bool."""
    maps = as_map_batch(attributions)
    if isinstance(masks_or_boxes, torch.Tensor) and size is not None:
        raise ValueError("size is only for boxes; masks carry their own size")
    box_size = maps.shape[-2:] if size is None else size_pair(size)
    ground_truth = _core.ground_truth_masks(masks_or_boxes, box_size, size_from_maps=size is None)
    _validate.check_same_batch(maps, ground_truth, "masks_or_boxes")
    maps = resize_map(maps, tuple(ground_truth.shape[-2:]))[:, 0].cpu()
    return maps, ground_truth


def _class_means(values, labels, num_classes):
    """Per-class nan-mean of per-sample values (NaN for empty classes)."""
    values = values.double()
    defined = ~values.isnan()
    sums = torch.zeros(num_classes, dtype=torch.float64).index_add_(
        0, labels, torch.where(defined, values, 0.0)
    )
    counts = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, defined.double())
    class_means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan)
    return class_means, class_means.nanmean()


def localization_iou(
    attributions, masks_or_boxes, threshold="otsu", labels=None, num_classes=None, size=None
):
    r"""Intersection over union of thresholded maps with ground truth.

    Each map is resized to the ground truth's size, thresholded (per
    sample), and compared with the union of its ground-truth regions.

    Args:

        attributions (Tensor): Maps of shape (N, H, W), (N, 1, h, w) or
                    (N, C, H, W) (summed over channels).
        masks_or_boxes (Tensor or list): Either binary masks, a tensor of
                    shape (N, H, W) or (N, 1, H, W); or boxes, a list with
                    one entry per map, each a list (or (B, 4) tensor) of
                    ``[x, y, w, h]`` boxes in pixels (x: column, y: row of
                    the top-left corner), possibly several, possibly none.
                    A pixel is inside a box when its centre is; boxes must
                    lie inside the image.
        threshold (float or str, optional): How maps are binarised, as in
                    :func:`captum_iba.maps.binarize`: a value in [0, 1] on
                    the L2-normalised map, ``"top:F"`` (the top fraction F
                    of the pixels) or ``"otsu"``. Default: ``"otsu"``
        labels (list or Tensor, optional): The class of each map (for
                    instance the finding it explains), to average per
                    class. None puts every map in one class. Default: None
        num_classes (int, optional): Number of classes; default: the
                    largest label + 1.
        size (tuple of int, optional): (H, W) of the image the boxes refer
                    to; default: the maps' size. Only for boxes.

    Returns:
        :class:`LocalizationIoUResult`, a named tuple of

        - **iou** (*Tensor*, (N,)): per map. An empty ground truth leaves
          the IoU undefined: NaN, and the map does not count in the means.
          An empty thresholded map (e.g. a constant map under Otsu) with a
          non-empty ground truth scores 0.
        - **class_iou** (*Tensor*, (num_classes,)): the mean IoU of each
          class, NaN for a class with no defined IoU.
        - **mean_iou** (*Tensor*, ()): the mean over the classes (the
          paper's "mean IoU" over findings).

    Examples::

        >>> maps = IntegratedGradients(net).attribute(images, target=findings)
        >>> boxes = [[[30, 40, 50, 20]], [[10, 10, 5, 5], [60, 60, 8, 8]]]
        >>> result = localization_iou(maps, boxes, threshold="top:0.05",
        ...                           labels=findings, num_classes=8)
        >>> result.iou.shape, result.class_iou.shape
        (torch.Size([2]), torch.Size([8]))
    """
    parse_threshold(threshold)  # a bad spec fails before any work
    maps, ground_truth = _maps_and_ground_truth(attributions, masks_or_boxes, size)
    labels, num_classes = _validate.check_labels(labels, len(maps), num_classes)
    predicted = binarize(maps, threshold)[:, 0]
    intersection = (predicted & ground_truth).sum(dim=(1, 2)).double()
    union = (predicted | ground_truth).sum(dim=(1, 2)).double()
    has_ground_truth = ground_truth.flatten(1).any(dim=1)
    iou = torch.where(has_ground_truth, intersection / union.clamp_min(1), torch.nan)
    class_iou, mean_iou = _class_means(iou, labels, num_classes)
    return LocalizationIoUResult(iou=iou, class_iou=class_iou, mean_iou=mean_iou)


def pointing_game(
    attributions, masks_or_boxes, tolerance=15, labels=None, num_classes=None, size=None
):
    r"""The pointing game (Zhang et al.), in TorchRay's convention.

    The point of a map is its maximum, found after resizing the map to the
    ground truth's size; among equal maxima the lowest flat index (``row *
    W + col``) wins, as ``torch.argmax``. A map *hits* when some
    ground-truth pixel lies strictly closer than ``tolerance`` pixels to the
    point (TorchRay's disc ``(v - y)**2 + (u - x)**2 < tolerance**2``). The
    result equals ``torchray.benchmark.pointing_game.PointingGame``'s
    ``evaluate`` and ``aggregate`` on the same points, vectorised.

    Args:

        attributions (Tensor): Maps of shape (N, H, W), (N, 1, h, w) or
                    (N, C, H, W) (summed over channels).
        masks_or_boxes (Tensor or list): Ground truth, masks or boxes, as in
                    :func:`localization_iou`.
        tolerance (float, optional): Radius in pixels, >= 0. With 0 nothing
                    is ever hit (TorchRay's disc is empty). Default: 15
        labels (list or Tensor, optional): The class of each map; None puts
                    every map in one class. Default: None
        num_classes (int, optional): Number of classes; default: the
                    largest label + 1.
        size (tuple of int, optional): (H, W) of the image the boxes refer
                    to; default: the maps' size. Only for boxes.

    Returns:
        :class:`PointingGameResult`, a named tuple of

        - **hits** (*Tensor*, (N,), bool): per map. An empty ground truth is
          a miss, as in TorchRay's ``PointingGame.evaluate``.
        - **class_hits**, **class_misses** (*Tensor*, (num_classes,)):
          counts per class.
        - **class_accuracy** (*Tensor*, (num_classes,)): hits / (hits +
          misses), NaN for a class with no maps (TorchRay reports 0 there).
        - **accuracy** (*Tensor*, ()): the mean of the class accuracies
          over the classes with maps.

    Examples::

        >>> result = pointing_game(maps, masks, tolerance=15, labels=findings)
        >>> result.hits.float().mean(), result.class_accuracy
    """
    if (
        not isinstance(tolerance, numbers.Real)
        or isinstance(tolerance, bool)
        or not tolerance >= 0
    ):
        raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
    maps, ground_truth = _maps_and_ground_truth(attributions, masks_or_boxes, size)
    labels, num_classes = _validate.check_labels(labels, len(maps), num_classes)
    height, width = ground_truth.shape[-2:]
    point = rank_pixels(maps)[:, 0]
    point_row, point_column = point // width, point % width
    rows = torch.arange(height)
    columns = torch.arange(width)
    squared_distance = (rows[None, :, None] - point_row[:, None, None]) ** 2 + (
        columns[None, None, :] - point_column[:, None, None]
    ) ** 2
    accept = squared_distance < tolerance**2
    hits = (accept & ground_truth).flatten(1).any(dim=1)
    class_hits = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, hits.double())
    class_misses = torch.zeros(num_classes, dtype=torch.float64).index_add_(
        0, labels, (~hits).double()
    )
    class_accuracy, accuracy = _class_means(hits, labels, num_classes)
    return PointingGameResult(
        hits=hits,
        class_hits=class_hits,
        class_misses=class_misses,
        class_accuracy=class_accuracy,
        accuracy=accuracy,
    )
