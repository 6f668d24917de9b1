"""The layer sweep: where to put the bottleneck, measured at every stage of the model.

For IBA, Inverse IBA and Regression IBA at every DenseNet dense block (or
ResNet stage) of the model, and for Multi-layer IBA over every prefix of
those stages, the localisation metrics of Table 1 (IoU, pointing game,
insertion/deletion AUC) on NIH-style pairs and the severity-map PCC of the
regressor on BrixIA-style items. The paper fixes one layer; this table tells
a user where the map's resolution and its faithfulness meet on their model.
"""

from __future__ import annotations

from typing import Dict, List

import torch

from ... import viz
from ...cxr import FINDINGS
from ...cxr.models.layers import bottleneck_candidates
from ..methods import METHODS
from ...stats import estimate_stats
from .evaluation import (EvaluationSettings, attribute_all, finding_pairs, items_with, localisation_scores,
                         regression_scores)
from ._study import Figure, ReportInputs, images_of

__all__ = ["sweep_study", "SWEEP_METHODS"]

#: The sweep's rows: (row name, registry method, which layers it gets at a stage).
SWEEP_METHODS = (("iba", "iba", "bottleneck"), ("inverse", "inverse", "bottleneck"),
                 ("multilayer", "multilayer", "prefix"))


def _stage_stats(model, stages: List[str], estimation, inputs: ReportInputs, progress) -> dict:
    """Statistics of every stage, estimated in one pass."""
    loader = torch.utils.data.DataLoader(estimation, batch_size=64,
                                         collate_fn=lambda items: torch.stack([item["image"] for item in items]))
    modules = dict(model.named_modules())
    stats = estimate_stats(model, [modules[name] for name in stages], loader, min(len(estimation), 256), progress)
    return dict(zip(stages, stats))


def _suite(model, task, stats, stage, stages, inputs: ReportInputs):
    from ..methods import MethodSuite

    options = {**inputs.suite_options, "layer": stage, "multilayer_layers": stages[: stages.index(stage) + 1]}
    return MethodSuite(model, task=task, stats=stats, **options)


def _localisation_rows(inputs, settings, progress, stages, size) -> Dict[str, Dict[str, dict]]:
    model = inputs.models["nih_bce"]
    pairs = finding_pairs(inputs.nih, items_with(inputs.nih, "labels", inputs.sweep_images), FINDINGS)
    stats = _stage_stats(model, stages, inputs.nih_estimation, inputs, progress)
    rows: Dict[str, Dict[str, dict]] = {row: {} for row, _, _ in SWEEP_METHODS}
    for stage in stages:
        suite = _suite(model, "classification", stats, stage, stages, inputs)
        maps = attribute_all(suite, [method for _, method, _ in SWEEP_METHODS], pairs.images, pairs.targets,
                             settings, progress)
        scores = localisation_scores(model, pairs, maps, settings, progress)
        for row, method, _ in SWEEP_METHODS:
            rows[row][stage] = {k: scores[method][k] for k in ("iou", "pointing", "insertion_auc", "deletion_auc")}
    return rows


def _regression_rows(inputs, settings, progress, stages) -> Dict[str, dict]:
    model = inputs.models["brixia_regression"]
    items = [inputs.brixia[i] for i in images_of(inputs.brixia, inputs.sweep_images)]
    if "severity_map" not in items[0]:
        return {}
    images = torch.stack([item["image"] for item in items])
    severity = torch.stack([item["severity_map"] for item in items]).float()
    stats = _stage_stats(model, stages, inputs.brixia_estimation, inputs, progress)
    row = {}
    for stage in stages:
        suite = _suite(model, "regression", stats, stage, stages, inputs)
        maps = attribute_all(suite, ["regression"], images, None, settings, progress, loss="deviation")
        row[stage] = {"pcc": regression_scores(model, images, severity, maps, settings, (), progress)
                      ["regression"]["pcc"]}
    return row


def sweep_study(inputs: ReportInputs, results: dict, figures: dict, settings: EvaluationSettings,
                progress: bool, log) -> None:
    """Fill ``results["sweep"]`` (rows x stages) and ask for its figure."""
    model = inputs.models["nih_bce"]
    size = inputs.nih[0]["image"].shape[-1]
    candidates = bottleneck_candidates(model, size)
    stages = [name for name, _ in candidates]
    log(f"layer sweep: {', '.join(stages)} on {inputs.sweep_images} images")
    rows = _localisation_rows(inputs, settings, progress, stages, size)
    if inputs.brixia is not None and "brixia_regression" in inputs.models:
        regression = _regression_rows(inputs, settings, progress, stages)
        if regression:
            rows["regression_deviation"] = regression
    results["sweep"] = {"stages": stages, "grids": {name: list(shape[1:]) for name, shape in candidates},
                        "images": inputs.sweep_images, "rows": rows}
    grids = [results["sweep"]["grids"][stage][0] for stage in stages]
    curves = {f"{METHODS[method].label} IoU": [rows[row][stage]["iou"] for stage in stages]
              for row, method, _ in SWEEP_METHODS}
    if "regression_deviation" in rows:
        curves["Regression IBA PCC"] = [rows["regression_deviation"][stage]["pcc"] for stage in stages]
    figures["sweep_layers"] = Figure(viz.curves, grids, curves, xlabel="cells per side of the bottleneck map",
                                     ylabel="IoU (localisation) / PCC (severity)",
                                     title="Layer sweep: the bottleneck at every stage")
