"""What every study shares: its inputs, the figures it asks for, the method suite it builds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from ...cxr import evaluate
from ..methods import MethodSuite

__all__ = ["ReportInputs", "Figure", "study_suite", "images_of", "model_quality"]


class Figure:
    """A figure to draw: ``function(*args, path=..., **kwargs)`` of :mod:`captum_iba.viz`."""

    def __init__(self, function: Callable, *args, **kwargs) -> None:
        self.function, self.args, self.kwargs = function, args, kwargs

    def draw(self, path: str) -> None:
        self.function(*self.args, path=path, **self.kwargs)


@dataclass
class ReportInputs:
    """What the report runs on.

    Attributes
    ----------
    nih : Dataset, optional
        Held-out NIH-style items (``labels``, ``masks``).
    brixia : Dataset, optional
        Held-out BrixIA-style items (``zone_masks``, ``severity_map`` where known).
    nih_estimation, brixia_estimation : Dataset, optional
        Items to estimate the IBA statistics from (training distribution).
    models : dict
        Any of ``"nih_bce"``, ``"nih_weighted_bce"``, ``"brixia_regression"``,
        ``"brixia_detectors"`` -> model.
    images : int
        Held-out images per study.
    auc_images : int
        Held-out images for the AUC/AP of Table 3.
    description : str
        One line on the data and models, for the report's head.
    suite_options : dict
        Arguments of every study's :class:`~captum_iba.app.methods.MethodSuite`
        (layers, IBA options, ...).
    sweep_images : int
        Held-out images of the layer sweep (0: no sweep).
    cue : Dataset, optional
        Held-out phantom items with the cue (``cue_mask``), for the cue study
        with the models ``"nih_cue"`` and ``"nih_cue_clean"`` (and
        ``"nih_cue_weighted_bce"`` for the weighted-BCE claim).
    cue_images : int
        Images of the cue study.
    redundant : PhantomCXR, optional
        Held-out phantom items with two-part findings
        (:data:`~captum_iba.cxr.models.embedded.REDUNDANT_PHANTOM`), for the
        redundant-evidence study with the model ``"nih_redundant"``.
    redundant_images : int
        Images per two-part finding of that study (each shows both parts).
    """

    models: Dict[str, nn.Module]
    nih: Optional[Dataset] = None
    brixia: Optional[Dataset] = None
    nih_estimation: Optional[Dataset] = None
    brixia_estimation: Optional[Dataset] = None
    images: int = 16
    auc_images: int = 200
    description: str = ""
    suite_options: dict = field(default_factory=dict)
    sweep_images: int = 0
    cue: Optional[Dataset] = None
    cue_images: int = 16
    redundant: Optional[Dataset] = None
    redundant_images: int = 20


def images_of(dataset: Dataset, n: int) -> List[int]:
    """The indices of the first ``n`` items of ``dataset``."""
    return list(range(min(n, len(dataset))))


def model_quality(model, dataset, n: int, target: str) -> dict:
    """How good the study's model is on the first ``n`` held-out items: the figure beside its claims' verdicts.

    Returns
    -------
    dict
        ``metric`` ("AUC", the mean over classes, for ``target`` "labels" or
        "detectors"; "MAE" in score units for "score"), ``value`` and ``images``;
        for a classifier also ``mean_ap`` (Table 3 reports both).
    """
    items = torch.utils.data.Subset(dataset, images_of(dataset, n))
    quality = evaluate(model, items, target=target)
    if target == "score":
        return {"metric": "MAE", "value": float(quality["mae"]), "images": len(items)}
    return {"metric": "AUC", "value": float(quality["mean_auc"]), "mean_ap": float(quality["mean_ap"]),
            "images": len(items)}


def _stack_images(items) -> torch.Tensor:
    return torch.stack([item["image"] for item in items])


def study_suite(model, task, estimation, inputs: "ReportInputs", progress, **overrides) -> MethodSuite:
    """The method suite of a study: statistics estimated on ``estimation``, the inputs' options, ``overrides``."""
    loader = torch.utils.data.DataLoader(estimation, batch_size=64, collate_fn=_stack_images)
    return MethodSuite(model, task=task, data=loader, n_samples=min(len(estimation), 256),
                       progress=progress, **{**inputs.suite_options, **overrides})


