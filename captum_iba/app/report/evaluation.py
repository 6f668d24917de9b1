"""The evaluation's building blocks: pairs to explain, every method's maps, every metric.

* :class:`Pairs`, :func:`finding_pairs`, :func:`detector_pairs` -- the
  (image, output) pairs a classifier is explained on, with their ground truth.
* :func:`attribute_all` -- each method's maps for all pairs, batched and
  timed after a warm-up call.
* :func:`localisation_scores` -- IoU (paper Tables 1-3), the pointing game and
  insertion/deletion AUC (Fig. 2) per method.
* :func:`regression_scores` -- severity-map PCC and sensitivity-N (Fig. 3).
* :func:`component_coverage` -- for findings drawn in two places, how many of
  the places a thresholded map reaches (Fig. 1).

Results are plain dicts of floats (JSON-ready). The studies that put these
together are :mod:`captum_iba.app.report.studies`; :mod:`captum_iba.app.report.render`
renders them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from skimage.measure import label as connected_components
from torch import Tensor

from ..._progress import progress as progress_lines
from ...maps import binarize, resize_map
from ..methods import METHODS, MethodSuite
from ...metrics import insertion_deletion, localization_iou, map_correlation, pointing_game, sensitivity_n

#: How a map is binarised for IoU and coverage: Otsu's threshold per map.
IOU_THRESHOLD = "otsu"


@dataclass
class EvaluationSettings:
    """Knobs of the evaluation (the defaults are the demo's).

    Attributes
    ----------
    batch_size : int
        Images attributed together.
    insertion_steps : int
        Steps of the insertion/deletion curves.
    sensitivity_ns : tuple of int
        Mask sizes of sensitivity-N, in pixels (clipped to the image).
    sensitivity_masks : int
        Random masks per n.
    pointing_tolerance : int
        Pointing-game tolerance at 224 px (TorchRay's 15), scaled with the image.
    seed : int
        Seed of the IBA noise and of every random choice.
    """

    batch_size: int = 8
    insertion_steps: int = 50
    sensitivity_ns: Tuple[int, ...] = (16, 64, 256, 1024, 4096)
    sensitivity_masks: int = 32
    pointing_tolerance: int = 15
    seed: int = 0


@dataclass
class Pairs:
    """(image, output) pairs to explain, with their inputs and ground truth.

    Attributes
    ----------
    images : Tensor (P, 3, H, W)
    targets : Tensor of int64 (P,)
    masks : Tensor of bool (P, H, W)
        Ground truth of the pair's output.
    image_ids : list of str
    class_names : list of str
        Name of each output index.
    regions : Tensor of bool (P, H, W), optional
        Where the ground truth can lie (BrixIA: the lung fields), for the
        IoU of a map that marks all of it.
    """

    images: Tensor
    targets: Tensor
    masks: Tensor
    image_ids: List[str]
    class_names: Sequence[str]
    regions: Optional[Tensor] = None

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: Sequence[int]) -> "Pairs":
        """The pairs at ``indices``, in that order."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return Pairs(self.images[index], self.targets[index], self.masks[index],
                     [self.image_ids[i] for i in index.tolist()], self.class_names,
                     None if self.regions is None else self.regions[index])

    def class_counts(self) -> Dict[str, int]:
        """Pairs per output name."""
        counts = torch.bincount(self.targets, minlength=len(self.class_names)).tolist()
        return dict(zip(self.class_names, counts))

    def region_iou(self) -> Dict[str, float]:
        """Per output name, the mean IoU of a map marking all of ``regions`` (NaN where no pair)."""
        overlap = (self.regions & self.masks).flatten(1).sum(1).float()
        union = (self.regions | self.masks).flatten(1).sum(1).float().clamp(min=1)
        iou = overlap / union
        return {name: _mean(iou[self.targets == k]) for k, name in enumerate(self.class_names)}

    def multipart(self) -> List[int]:
        """Indices of the pairs whose ground truth has two or more separate parts."""
        return [i for i, mask in enumerate(self.masks.numpy()) if connected_components(mask).max() >= 2]


def items_with(dataset, key: str, n: int) -> List[int]:
    """Indices of the first ``n`` items with at least one positive ``key`` label.

    Uses ``dataset.targets(key)`` (no image rendered) when the dataset has it.
    """
    labels = dataset.targets(key) if hasattr(dataset, "targets") else torch.stack([item[key] for item in dataset])
    positive = torch.nonzero((labels > 0.5).flatten(1).any(1)).flatten().tolist()
    return positive[:n]


def finding_pairs(dataset, indices: Sequence[int], class_names: Sequence[str]) -> Pairs:
    """One pair per positive finding of each NIH-style item (``labels``, ``masks``)."""
    images, targets, masks, ids = [], [], [], []
    for index in indices:
        item = dataset[index]
        for k in torch.nonzero(item["labels"] > 0.5).flatten().tolist():
            if item["masks"][k].any():
                images.append(item["image"])
                targets.append(k)
                masks.append(item["masks"][k])
                ids.append(item["image_id"])
    return _pairs(images, targets, masks, ids, class_names)


def detector_pairs(dataset, indices: Sequence[int], class_names: Sequence[str]) -> Pairs:
    """One pair per positive BrixIA detector: the zones scored 3, 2, or 0-1; the regions are the lung fields."""
    images, targets, masks, ids, lungs = [], [], [], [], []
    for index in indices:
        item = dataset[index]
        scores = item["zone_scores"]
        zones_of = [scores == 3, scores == 2, scores <= 1]
        for k in torch.nonzero(item["detectors"] > 0.5).flatten().tolist():
            mask = item["zone_masks"][zones_of[k]].any(0)
            if mask.any():
                images.append(item["image"])
                targets.append(k)
                masks.append(mask)
                ids.append(item["image_id"])
                lungs.append(item["zone_masks"].any(0))
    return _pairs(images, targets, masks, ids, class_names, torch.stack(lungs) if lungs else None)


def _pairs(images, targets, masks, ids, class_names, regions=None) -> Pairs:
    if not images:
        raise ValueError("the evaluation items hold no positive finding to explain: use more images")
    return Pairs(torch.stack(images), torch.tensor(targets), torch.stack(masks), ids, list(class_names), regions)


@dataclass
class MethodMaps:
    """Maps of one method for every pair, and the seconds they took.

    ``seconds`` is the batched run after one warm-up call on one image
    (tracing, first allocations, compilation); ``warmup_seconds`` is that
    one-off call, reported apart so that a method's first call does not
    decide its rate.
    """

    maps: Tensor
    seconds: float
    warmup_seconds: float = 0.0

    @property
    def seconds_per_map(self) -> float:
        return self.seconds / max(1, len(self.maps))


def attribute_all(
    suite: MethodSuite,
    methods: Sequence[str],
    images: Tensor,
    targets: Optional[Tensor],
    settings: EvaluationSettings,
    progress: bool = True,
    target_values: Optional[Tensor] = None,
    failures: Optional[Dict[str, str]] = None,
    **options,
) -> Dict[str, MethodMaps]:
    """Each method's maps for all images, batched, with wall-clock seconds after a warm-up call.

    ``targets`` None attributes a single-output regressor; ``target_values``
    (one score per image) goes to Regression IBA's ``"mse"`` loss; ``options``
    go to every method call (e.g. ``loss=`` for Regression IBA). With
    ``failures`` (a dict), a Captum or TorchRay baseline that raises on this
    model is left out and its error's first line recorded there; the IBA
    family's errors always propagate.
    """
    def run(name: str, lo: int, hi: int) -> Tensor:
        target = None if targets is None else targets[lo:hi]
        extra = {} if target_values is None else {"target_values": target_values[lo:hi]}
        return suite.attribute(name, images[lo:hi], target, seed=settings.seed, **options, **extra)

    results = {}
    for name in methods:
        try:
            start = time.perf_counter()
            run(name, 0, 1)
            warmup = time.perf_counter() - start
            start = time.perf_counter()
            batches = [run(name, lo, lo + settings.batch_size)
                       for lo in progress_lines(range(0, len(images), settings.batch_size),
                                                desc=METHODS[name].label, unit="batch", enabled=progress)]
        except Exception as error:  # a third-party method that cannot explain this model
            if failures is None or METHODS[name].family == "captum_iba":
                raise
            failures[name] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            continue
        results[name] = MethodMaps(torch.cat(batches), time.perf_counter() - start, warmup)
    return results


def localisation_scores(
    model,
    pairs: Pairs,
    method_maps: Dict[str, MethodMaps],
    settings: EvaluationSettings,
    progress: bool = True,
    perturbation: bool = True,
) -> Dict[str, dict]:
    """IoU (mean and per class), pointing game, insertion/deletion AUC and time per method.

    ``perturbation=False`` skips the insertion/deletion curves (the costly
    part: ``2 * insertion_steps`` forward passes per map).

    Returns
    -------
    dict
        method -> {"iou", "pointing", "insertion_auc", "deletion_auc",
        "seconds_per_map", "class_iou": {class: IoU}, "class_pointing": {...}}
    """
    size = pairs.images.shape[-1]
    tolerance = max(1, round(settings.pointing_tolerance * size / 224))
    n_classes = len(pairs.class_names)
    scores = {}
    for name, result in progress_lines(method_maps.items(), desc="metrics", enabled=progress):
        maps = result.maps
        iou = localization_iou(maps, pairs.masks, threshold=IOU_THRESHOLD, labels=pairs.targets, num_classes=n_classes)
        pointing = pointing_game(maps, pairs.masks, tolerance=tolerance, labels=pairs.targets, num_classes=n_classes)
        scores[name] = {
            "iou": _mean(iou.iou),
            "pointing": float(pointing.accuracy),
            "seconds_per_map": result.seconds_per_map,
            "warmup_seconds": result.warmup_seconds,
            "class_iou": dict(zip(pairs.class_names, _floats(iou.class_iou))),
            "class_pointing": dict(zip(pairs.class_names, _floats(pointing.class_accuracy))),
        }
        if perturbation:
            curves = insertion_deletion(
                model, pairs.images, maps, pairs.targets, n_steps=settings.insertion_steps,
                output_transform="sigmoid", max_examples_per_batch=256,
            )
            scores[name].update(insertion_auc=_mean(curves.insertion_auc), deletion_auc=_mean(curves.deletion_auc))
    return scores


def regression_scores(
    model,
    images: Tensor,
    severity_maps: Tensor,
    method_maps: Dict[str, MethodMaps],
    settings: EvaluationSettings,
    sensitivity_methods: Sequence[str],
    progress: bool = True,
    grid: Optional[int] = None,
) -> Dict[str, dict]:
    """Severity-map Pearson correlation per method, sensitivity-N for some of them.

    Sensitivity-N is measured twice for ``sensitivity_methods``: as the paper
    does (scattered pixels to zero, the signed drop of the score), and, with
    ``grid`` (the bottleneck's cells per side), over whole cells of that grid
    with the squared change of the score (:func:`sensitivity_cells`).

    Returns
    -------
    dict
        method -> {"pcc", "seconds_per_map", "warmup_seconds", and for
        ``sensitivity_methods`` "sensitivity_n": {n: mean correlation} and,
        with ``grid``, "sensitivity_cells": {fraction of cells: mean correlation}}
    """
    pixels = images.shape[-1] * images.shape[-2]
    ns = sorted({min(n, pixels - 1) for n in settings.sensitivity_ns})
    scores = {}
    for name, result in progress_lines(method_maps.items(), desc="metrics", enabled=progress):
        scores[name] = {
            "pcc": _mean(map_correlation(result.maps, severity_maps)),
            "seconds_per_map": result.seconds_per_map,
            "warmup_seconds": result.warmup_seconds,
        }
        if name in sensitivity_methods:
            correlations = sensitivity_n(
                model, images, result.maps, None, n=ns, num_masks=settings.sensitivity_masks,
                seed=settings.seed, max_examples_per_batch=256,
            )
            scores[name]["sensitivity_n"] = {int(n): _mean(correlations[:, j]) for j, n in enumerate(ns)}
            if grid:
                scores[name]["sensitivity_cells"] = sensitivity_cells(
                    model, images, result.maps, grid, num_masks=settings.sensitivity_masks, seed=settings.seed)
    return scores


#: Fractions of the grid's cells masked by :func:`sensitivity_cells`.
CELL_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5)


class _CellProbe(torch.nn.Module):
    """``(gates, index) -> -(f(x_gated) - f(x))^2``: the score :func:`sensitivity_cells` probes.

    ``gates`` (N, 1, k, k) are ones that Sensitivity-N's zero baseline closes;
    the model sees image ``index`` where its cell's gate is 1 and zeros elsewhere.
    """

    def __init__(self, model, images: Tensor) -> None:
        super().__init__()
        self.model, self.images = model, images
        with torch.no_grad():
            self.clean = model(images)

    def forward(self, gates: Tensor, index: Tensor) -> Tensor:
        keep = torch.nn.functional.interpolate(gates, size=self.images.shape[-2:], mode="nearest")
        return -(self.model(keep * self.images[index]) - self.clean[index]) ** 2


def sensitivity_cells(model, images: Tensor, maps: Tensor, grid: int, *, fractions=CELL_FRACTIONS,
                      num_masks: int = 32, seed: int = 0) -> Dict[float, float]:
    """Sensitivity-N over whole cells of a ``grid`` x ``grid`` partition, of the squared output change.

    The paper's Sensitivity-N (scattered pixels, the signed drop of the score)
    puts an unsigned map such as Regression IBA's at chance by construction:
    masking a severe zone lowers the score, masking a healthy one raises it,
    and a map of information carries no sign. Here each mask sets whole cells
    of the bottleneck's grid to zero and the "drop" is the squared change of
    the score, what the deviation loss optimises; the map is summed per cell.
    Built on the public :func:`captum_iba.metrics.sensitivity_n`.

    Returns
    -------
    dict
        fraction of the cells masked -> mean Pearson correlation over the images.
    """
    gates = torch.ones(len(images), 1, grid, grid)
    counts = sorted({max(1, round(f * grid * grid)) for f in fractions})
    correlations = sensitivity_n(_CellProbe(model, images), gates, resize_map(maps, (grid, grid)), None,
                                 additional_forward_args=torch.arange(len(images)), n=counts,
                                 num_masks=num_masks, seed=seed, max_examples_per_batch=256)
    return {round(n / (grid * grid), 4): _mean(correlations[:, j]) for j, n in enumerate(counts)}


def component_coverage(maps: Tensor, masks: Tensor) -> Tuple[float, int]:
    """Mean fraction of a ground truth's separate parts that the thresholded map reaches.

    Only pairs whose ground truth has two or more connected parts count
    (bilateral effusion, two nodules): there, a map marking one part covers
    half, a map marking all covers 1.

    Parameters
    ----------
    maps : Tensor (P, 1, h, w)
    masks : Tensor of bool (P, H, W)

    Returns
    -------
    (coverage, pairs)
        The mean coverage (NaN when no pair has several parts) and how many
        pairs counted.
    """
    binary = binarize(resize_map(maps, masks.shape[-2:]), IOU_THRESHOLD)[:, 0].numpy()
    coverages = []
    for on, mask in zip(binary, masks.numpy()):
        parts = connected_components(mask)
        if parts.max() >= 2:
            coverages.append(np.mean([on[parts == p].any() for p in range(1, parts.max() + 1)]))
    return (float(np.mean(coverages)) if coverages else float("nan")), len(coverages)


def random_maps(like: Tensor, seed: int) -> Tensor:
    """Uniform random maps shaped like ``like``: the chance level of a metric."""
    return torch.rand(like.shape, generator=torch.Generator().manual_seed(seed))


def _mean(values: Tensor) -> float:
    values = values.detach().double()
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else float("nan")


def _floats(values: Tensor) -> List[float]:
    return [float(v) for v in values.detach().double()]
