"""The cue study: a ground truth of what the model uses, and which maps follow it.

Two embedded models are trained on phantom images where a side marker (the
cue) goes with one finding: ``nih_cue`` on data where the marker is reliable,
``nih_cue_clean`` on the same images without it (:mod:`captum_iba.cxr.phantom.cue`).
An intervention -- the same image drawn without its marker -- shows whether a
model uses the marker (the finding's output drops). Each method's share of its
map on the marker is then measured for both models: a faithful method moves to
the marker exactly when the model relies on it. ``nih_cue_weighted_bce`` (the
same data, weighted BCE) puts the paper's weighted-BCE claim on a setting
where its premise -- features aligned with the pathology or with something
else -- can be checked.
"""

from __future__ import annotations

from typing import Dict

import torch

from ...cxr import FINDINGS, PhantomCXR
from ...cxr.phantom.cue import cue_images, cue_table, intervention_drop, share_on_cue
from ...cxr.phantom.dataset import DEFAULT_CUE_RATES
from .evaluation import EvaluationSettings
from ._study import ReportInputs, study_suite

__all__ = ["cue_study", "CUE_METHODS", "CUE_MODELS_NEEDED"]

#: The methods compared on the cue (the IBA family's two and Captum's two gradient methods).
CUE_METHODS = ("iba", "inverse", "saliency", "integrated_gradients")
CUE_MODELS_NEEDED = ("nih_cue", "nih_cue_clean")


def _drop(model, phantom: PhantomCXR, indices) -> dict:
    result = intervention_drop(model, phantom, indices)
    return {"with_cue": float(result.with_cue.mean()), "without_cue": float(result.without_cue.mean()),
            "drop": float(result.drop.mean()), "drop_min": float(result.drop.min())}


def cue_study(inputs: ReportInputs, results: dict, figures: dict, settings: EvaluationSettings,
              progress: bool, log) -> None:
    """Fill ``results["cue"]``: the intervention per model and each method's share on the cue."""
    phantom = inputs.cue
    indices = cue_images(phantom, min(inputs.cue_images, len(phantom)))
    items = [phantom[i] for i in indices]
    images = torch.stack([item["image"] for item in items])
    masks = torch.stack([item["cue_mask"] for item in items])
    target = FINDINGS.index(phantom.cue)
    log(f"cue study: {len(items)} held-out images with the marker (finding {phantom.cue})")
    names = [name for name in (*CUE_MODELS_NEEDED, "nih_cue_weighted_bce") if name in inputs.models]
    # Both models' statistics from the distribution being explained (images that may carry the marker):
    # estimated on marker-free images, the clean model's statistics would make the unseen marker itself
    # "informative" to the bottleneck (a feature far from its prior), whatever the model's output does.
    estimation = PhantomCXR(256, size=images.shape[-1], seed=0, task="nih", cue=phantom.cue,
                            cue_rates=DEFAULT_CUE_RATES)
    suites = {name: study_suite(inputs.models[name], "classification", estimation, inputs, progress)
              for name in names}
    by_model = {suite.model: suite for suite in suites.values()}

    def method(name: str):
        def attribute(model, batch, target_index):
            return by_model[model].attribute(name, batch, target_index, seed=settings.seed)
        return attribute

    rows = cue_table({name: method(name) for name in CUE_METHODS}, inputs.models["nih_cue"],
                     inputs.models["nih_cue_clean"], images, masks, target)
    weighted: Dict[str, float] = {}
    if "nih_cue_weighted_bce" in suites:
        shares = {name: share_on_cue(suites[name].attribute("inverse", images, target, seed=settings.seed), masks)
                  for name in ("nih_cue", "nih_cue_weighted_bce")}
        weighted = {"bce": float(shares["nih_cue"].nanmean()),
                    "weighted_bce": float(shares["nih_cue_weighted_bce"].nanmean())}
    results["cue"] = {
        "finding": phantom.cue, "images": len(items), "rates": list(DEFAULT_CUE_RATES),
        "cue_area": float(masks.float().mean()),
        "intervention": {name: _drop(inputs.models[name], phantom, indices) for name in names},
        "methods": {row["method"]: {k: v for k, v in row.items() if k != "method"} for row in rows},
        "weighted_bce_inverse_share": weighted,
    }
