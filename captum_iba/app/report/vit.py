"""The ViT study: Table 1 and the severity PCC for the embedded Vision Transformers, beside the DenseNet's.

The embedded ViTs (:func:`~captum_iba.cxr.models.vit.small_vit`: timm's
``VisionTransformer`` on a convolutional stem, a class token and a 12 x 12
patch grid at the phantom's 96 px) are explained at a middle block
(``blocks.2``, tokens ``(N, 1 + 144, D)``): the IBA family restricts every
token, draws the patch tokens on the grid; Multi-layer IBA combines two blocks
on the one grid they share; pytorch-grad-cam's methods read the last block's
``norm1`` through the same layout (their reshape_transform). Captum's
``LayerGradCam``, TorchRay's methods and LRP assume ``(N, C, h, w)`` layers
or CNN rules and are left out, with the reason in the report.
"""

from __future__ import annotations

from typing import Dict

import torch

from ...cxr import FINDINGS
from ..baselines import GRAD_CAM_METHODS
from ..methods import METHODS
from ._study import images_of, study_suite
from .evaluation import (MethodMaps, attribute_all, finding_pairs, items_with, localisation_scores, random_maps,
                         regression_scores)

__all__ = ["VIT_MODELS", "VIT_LAYERS", "VIT_METHODS", "LEFT_OUT", "vit_study"]

#: The embedded ViTs the study needs: the 8-finding classifier and the severity regressor.
VIT_MODELS = ("nih_vit", "brixia_regression_vit")
#: Where each method looks in the embedded ViT (4 blocks).
VIT_LAYERS = {"layer": "blocks.2", "multilayer_layers": ("blocks.1", "blocks.2"), "cam_layer": "blocks.3.norm1",
              "readout_layers": ("blocks.2",)}
#: The methods of the ViT study, and those left out with the reason.
VIT_METHODS = ("iba", "inverse", "multilayer", "integrated_gradients", "saliency",
               *(key for key in GRAD_CAM_METHODS if METHODS[key].in_report))
LEFT_OUT = {
    "gradcam": "Captum's LayerGradCam averages gradients over the last axes of a (N, C, h, w) layer; on "
               "tokens (N, L, D) it averages over the channels instead (no reshape_transform)",
    "lrp": "Captum's LRP has no rules for attention and LayerNorm",
    "torchray_gradcam": "TorchRay's grad_cam needs a (N, C, h, w) layer",
    "excitation_backprop": "TorchRay's excitation backprop has no rules for attention",
    "extremal_perturbation": "left out for time (one image at a time), as it is not about the layout",
    "readout": "left out for time (trained per model)",
}


def vit_study(inputs, results, figures, settings, progress, log) -> None:
    """Table 1 (localisation) and the severity PCC of the embedded ViTs, with their layers and layout."""
    model = inputs.models["nih_vit"]
    pairs = finding_pairs(inputs.nih, items_with(inputs.nih, "labels", inputs.images), FINDINGS)
    log(f"ViT study: {len(pairs)} (image, finding) pairs from {inputs.images} images, layer {VIT_LAYERS['layer']}")
    suite = study_suite(model, "classification", inputs.nih_estimation, inputs, progress, **VIT_LAYERS)
    failed: Dict[str, str] = {}
    maps = attribute_all(suite, VIT_METHODS, pairs.images, pairs.targets, settings, progress, failures=failed)
    scores = localisation_scores(model, pairs, maps, settings, progress)
    features = suite.stats[suite.layer].mean.shape
    grid = model.patch_embed.grid_size
    results["vit"] = {
        "pairs": len(pairs), "images": inputs.images, "scores": scores, "failed": failed, "left_out": LEFT_OUT,
        "layers": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in VIT_LAYERS.items()},
                   "layout": f"tokens (N, {features[0]}, {features[1]}): 1 class token, then a "
                             f"{grid[0]}x{grid[1]} patch grid", "grid": list(grid)},
        "quality": getattr(model, "metrics", {}),
    }
    log("  mean IoU: " + ", ".join(f"{METHODS[k].label} {v['iou']:.3f}" for k, v in scores.items()))
    if "brixia_regression_vit" in inputs.models and inputs.brixia is not None:
        _severity(inputs, results, settings, progress, log)


def _severity(inputs, results, settings, progress, log) -> None:
    model = inputs.models["brixia_regression_vit"]
    items = [inputs.brixia[i] for i in images_of(inputs.brixia, inputs.images)]
    if "severity_map" not in items[0]:
        return
    images = torch.stack([item["image"] for item in items])
    severity = torch.stack([item["severity_map"] for item in items]).float()
    suite = study_suite(model, "regression", inputs.brixia_estimation, inputs, progress, **VIT_LAYERS)
    failed: Dict[str, str] = {}
    maps = attribute_all(suite, ["regression"], images, None, settings, progress, loss="deviation")
    maps.update(attribute_all(suite, ["integrated_gradients", "saliency", "pgc_gradcam"], images, None, settings,
                              progress, failures=failed))
    maps["random"] = MethodMaps(random_maps(maps["regression"].maps, settings.seed), 0.0)
    scores = regression_scores(model, images, severity, maps, settings, sensitivity_methods=(), progress=progress)
    results["vit"]["severity"] = {"images": len(items), "pcc": {k: v["pcc"] for k, v in scores.items()},
                                  "failed": failed, "quality": getattr(model, "metrics", {})}
    log("  severity PCC: " + ", ".join(f"{k} {v['pcc']:.3f}" for k, v in scores.items()))
