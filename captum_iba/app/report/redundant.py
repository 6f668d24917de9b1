"""Sufficient against all evidence: the paper's central claim where it has a ground truth.

IBA is said to find a region *sufficient* for the output, Inverse IBA *all*
the regions that carry it. The two differ only where evidence is redundant.
The embedded model ``nih_redundant`` is trained on the phantom with two-part
findings (:data:`~captum_iba.cxr.models.embedded.REDUNDANT_PHANTOM`): one
finding drawn as two lesions, either of which is the finding (OR), one as two
parts, both of which are (AND). The intervention of
:mod:`captum_iba.cxr.phantom.parts` first checks that the model follows the
rules (OR: the output survives either lesion removed and falls with both;
AND: it falls with either part removed). Then, per method and rule, on images
that show both parts: the share of the parts the thresholded map reaches,
the share of its mass on the heavier part (no threshold), and the output
after removing exactly the parts it reaches. Where evidence is
redundant, a sufficient map may reach one lesion and its removal keep the
output; a map of all the evidence reaches both and its removal drops the
output. Where evidence is joint, a sufficient region holds both parts, while
removing either part already drops the output.
"""

from __future__ import annotations

import math
from typing import Dict, List

import torch

from ...cxr import FINDINGS, PhantomCXR
from ...maps import resize_map
from ...cxr.phantom.parts import REACHED_FRACTION, pair_images, part_intervention, parts_reached, removal_outputs
from .evaluation import IOU_THRESHOLD, EvaluationSettings, attribute_all
from ._study import ReportInputs, model_quality, study_suite

__all__ = ["redundant_study", "REDUNDANT_METHODS", "REDUNDANT_MODELS_NEEDED", "follows_rule", "RULE_SHARE",
           "DETECTED_DROP"]

#: The methods compared: the IBA family's three and Captum's three.
REDUNDANT_METHODS = ("iba", "inverse", "multilayer", "gradcam", "integrated_gradients", "saliency")
REDUNDANT_MODELS_NEEDED = ("nih_redundant",)

#: A model follows OR when removing one lesion costs less than this share of what removing both
#: costs (mean over pairs), and AND when it costs more.
RULE_SHARE = 0.5
#: ... provided removing both parts drops the output by at least this much (the model sees the finding).
DETECTED_DROP = 0.3


def _mean_se(values: torch.Tensor) -> tuple:
    values = values.double()
    se = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(values.mean()), se


def follows_rule(check: dict, rule: str) -> bool:
    """Whether the intervention ``check`` (a ``model_check`` entry) shows the model following ``rule``.

    Parameters
    ----------
    check : dict
        ``one_removed_drop`` and ``both_removed_drop``: mean output drops.
    rule : {"or", "and"}

    Returns
    -------
    bool
        Removing both parts drops the output by :data:`DETECTED_DROP` or more, and
        removing one costs less (OR) or more (AND) than :data:`RULE_SHARE` of that.
    """
    both, one = check["both_removed_drop"], check["one_removed_drop"]
    if not both >= DETECTED_DROP:
        return False
    return one < RULE_SHARE * both if rule == "or" else one > RULE_SHARE * both


def _clean_pairs(phantom: PhantomCXR, finding: str, n: int) -> List[dict]:
    """Up to ``n`` items showing both parts of ``finding``, neither touching another lesion.

    A part that overlaps another finding's lesion would count as reached, or be
    removed, for that lesion's sake; such items are skipped, as are items where
    a part is too small to cover a pixel.
    """
    row = phantom.two_part.index(finding)
    chosen = []
    for index in pair_images(phantom, finding, len(phantom)):
        item = phantom[index]
        parts = item["part_masks"][row].any(0)
        others = item["masks"][[k for k in range(len(FINDINGS)) if FINDINGS[k] != finding]].any(0)
        others |= item["part_masks"][[r for r in range(len(phantom.two_part)) if r != row]].flatten(0, 1).any(0)
        if item["part_masks"][row].flatten(1).any(1).all() and not (parts & others).any():
            chosen.append({"index": index, **item})
            if len(chosen) == n:
                break
    return chosen


def _check(model, phantom, finding, indices) -> tuple:
    """The intervention's means (a ``model_check`` entry) and the output on each item as drawn."""
    outputs = part_intervention(model, phantom, finding, indices)
    one = torch.stack([outputs.without_left, outputs.without_right]).mean(0)
    return {"full": float(outputs.full.mean()), "without_left": float(outputs.without_left.mean()),
            "without_right": float(outputs.without_right.mean()), "without_both": float(outputs.without_both.mean()),
            "one_removed_drop": float((outputs.full - one).mean()),
            "both_removed_drop": float((outputs.full - outputs.without_both).mean())}, outputs.full


def _heavier_share(maps: torch.Tensor, part_masks: torch.Tensor) -> torch.Tensor:
    """Per pair, the share of the map's positive mass on the two parts that lies on the heavier one.

    0.5: the map weighs both parts alike; 1: one part only. NaN where the map puts no mass on either.
    No threshold is involved, so it tells whether a map singles out one part at all.
    """
    positive = resize_map(maps.detach().float(), tuple(part_masks.shape[-2:])).clamp(min=0)  # (N, 1, H, W)
    mass = (positive * part_masks.float()).flatten(2).sum(2)  # (N, 2)
    total = mass.sum(1)
    return torch.where(total > 0, mass.max(1).values / total.clamp(min=torch.finfo(total.dtype).tiny), torch.nan)


def _method_row(drop, reached, heavier) -> dict:
    (reached_mean, reached_se), (drop_mean, drop_se) = _mean_se(reached.float().mean(1)), _mean_se(drop)
    defined = heavier[~torch.isnan(heavier)]
    return {"reached": reached_mean, "reached_se": reached_se, "both_reached": float(reached.all(1).float().mean()),
            "one_reached": float((reached.sum(1) == 1).float().mean()),
            "heavier_share": float(defined.mean()) if len(defined) else math.nan, "drop": drop_mean, "drop_se": drop_se}


def redundant_study(inputs: ReportInputs, results: dict, figures: dict, settings: EvaluationSettings,
                    progress: bool, log) -> None:
    """Fill ``results["redundant"]``: the model's rules by intervention, each method's parts reached and drops."""
    phantom, model = inputs.redundant, inputs.models["nih_redundant"]
    rules = {**{name: "or" for name in phantom.redundant}, **{name: "and" for name in phantom.conjunctive}}
    chosen = {finding: _clean_pairs(phantom, finding, inputs.redundant_images) for finding in rules}
    for finding, items in chosen.items():
        log(f"redundant-evidence study: {finding} ({rules[finding].upper()}), {len(items)} held-out images "
            "with both parts")
    pairs = [(finding, item) for finding, items in chosen.items() for item in items]
    findings: Dict[str, dict] = {finding: {"rule": rule, "pairs": len(chosen[finding])}
                                 for finding, rule in rules.items()}
    failed: Dict[str, str] = {}
    results["redundant"] = {"findings": findings, "failed": failed, "threshold": IOU_THRESHOLD,
                            "quality": model_quality(model, phantom, inputs.auc_images, "labels"),
                            "reached_fraction": REACHED_FRACTION, "rule_share": RULE_SHARE,
                            "detected_drop": DETECTED_DROP}
    if not pairs:
        return
    # The statistics from the model's training distribution (the same options, the training seed).
    estimation = PhantomCXR(256, size=phantom.size, seed=0, redundant=phantom.redundant,
                            conjunctive=phantom.conjunctive, prevalence=dict(zip(FINDINGS, phantom.prevalence)))
    suite = study_suite(model, "classification", estimation, inputs, progress)
    # One batched run over both findings' pairs (each its own target): one warm-up call per method.
    images = torch.stack([item["image"] for _, item in pairs])
    targets = torch.tensor([FINDINGS.index(finding) for finding, _ in pairs])
    maps = attribute_all(suite, REDUNDANT_METHODS, images, targets, settings, progress, failures=failed)
    start = 0
    for finding, items in chosen.items():
        if not items:
            continue
        rows = slice(start, start + len(items))
        start += len(items)
        indices = [item["index"] for item in items]
        part_masks = torch.stack([item["part_masks"][phantom.two_part.index(finding)] for item in items])
        check, full = _check(model, phantom, finding, indices)
        methods, per_pair = {}, {}
        for name, result in maps.items():
            reached = parts_reached(result.maps[rows], part_masks, IOU_THRESHOLD)
            drop = full - removal_outputs(model, phantom, finding, indices, reached)
            per_pair[name] = {"reached": reached.float().mean(1), "drop": drop}
            methods[name] = _method_row(drop, reached, _heavier_share(result.maps[rows], part_masks))
        # Inverse IBA minus IBA per pair: the claim's comparison, with the standard error of the paired differences.
        comparison = {}
        if {"iba", "inverse"} <= set(per_pair):
            for key in ("reached", "drop"):
                mean, se = _mean_se(per_pair["inverse"][key] - per_pair["iba"][key])
                comparison[key] = {"difference": mean, "se": se}
        findings[finding].update(target=FINDINGS.index(finding), model_check=check,
                                 follows_rule=follows_rule(check, rule=rules[finding]), methods=methods,
                                 inverse_minus_iba=comparison)
