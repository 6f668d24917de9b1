"""The paper's claims, one row each: the paper's figure, ours, and a verdict.

:data:`captum_iba.app.report.paper.CLAIMS` lists the claims; each has a judge here
that reads the results of the studies (:mod:`captum_iba.app.report.studies`) and
returns what was measured and a verdict (:data:`VERDICTS`):

* "held" / "did not hold": a comparison beyond its margin, on at least
  :data:`~captum_iba.app.report.studies.MIN_CLAIM_PAIRS` pairs; every row
  states its pairs and its margin.
* "too few pairs": the comparison rests on fewer pairs than that.
* "not testable here": the claim's premise is absent from the data, by a
  stated rule (the model does not hold redundant evidence; the ground truth
  does not localise; the model has no misaligned feature to correct); the
  row names the experiment that would test it.
* "not measurable here": the study did not run, with the reason.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple, Sequence

import numpy as np

from ..methods import METHODS
from ...objectives import REGRESSION_LOSSES
from .paper import CLAIMS
from .redundant import DETECTED_DROP, RULE_SHARE
from .studies import MIN_CLAIM_PAIRS, method_label

__all__ = ["claims", "fmt", "MARGIN", "JUDGES", "VERDICTS", "Judgement", "USES_CUE", "CLAIM_STUDY",
           "model_quality_text"]

SMALL_FINDINGS = ("Nodule", "Mass")
IBA_FAMILY = ("iba", "inverse", "multilayer")
# A comparison "holds" only beyond this margin, so noise on a few images does not decide it.
MARGIN = 0.02
# A correlation counts as above chance only this far above the random map's.
ABOVE_CHANCE = 0.1
#: A model uses the cue when removing the marker drops its finding's output by this much on average.
USES_CUE = 0.1

HELD, NOT_HELD, TOO_FEW, NOT_TESTABLE, NOT_MEASURED = (
    "held", "did not hold", "too few pairs", "not testable here", "not measurable here")
#: Every verdict a claim can get.
VERDICTS = (HELD, NOT_HELD, TOO_FEW, NOT_TESTABLE, NOT_MEASURED)


class Judgement(NamedTuple):
    """What a judge found: the measured text, the verdict and, where not testable, the experiment that would test it."""

    measured: str
    verdict: str
    experiment: str = ""


def fmt(value) -> str:
    """A number with 3 decimals, or "n/a" for None and NaN."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _nanmean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _defined(*values: float) -> bool:
    return not any(v is None or math.isnan(v) for v in values)


def _not_run(what: str) -> Judgement:
    return Judgement(f"not measured here: {what}", NOT_MEASURED)


def _judged(measured: str, pairs: int, margin: float, held) -> Judgement:
    """The verdict of a comparison on ``pairs`` pairs: "too few pairs" below the minimum; None is not measurable."""
    measured = f"{measured} [{pairs} pairs; margin {fmt(margin)}]"
    if pairs < MIN_CLAIM_PAIRS:
        return Judgement(f"{measured}; fewer than {MIN_CLAIM_PAIRS} pairs", TOO_FEW)
    return Judgement(measured, NOT_MEASURED if held is None else (HELD if held else NOT_HELD))


def _beyond(difference: dict) -> bool:
    """A paired difference beyond the margin and beyond twice its standard error."""
    margin = max(MARGIN, 2 * difference["se"]) if _defined(difference["se"]) else math.inf
    return _defined(difference["difference"]) and difference["difference"] > margin


def _feature_importance(results: dict) -> Judgement:
    nih = results.get("nih", {})
    scores = nih.get("scores", {})
    if not all(name in scores and "insertion_auc" in scores[name] for name in IBA_FAMILY):
        return _not_run("needs the NIH-like study with insertion/deletion")
    gap = {name: s["insertion_auc"] - s["deletion_auc"] for name, s in scores.items()}
    others = [v for name, v in gap.items() if METHODS[name].family != "captum_iba"]  # the other libraries' methods
    median = float(np.median(others)) if others else float("nan")
    measured = (", ".join(f"{method_label(n)} {fmt(gap[n])}" for n in IBA_FAMILY)
                + f" (insertion minus deletion AUC); median of the other methods {fmt(median)}")
    return _judged(measured, nih["pairs"], MARGIN,
                   all(gap[n] > median + MARGIN for n in IBA_FAMILY) if _defined(median) else None)


def _by_rule(redundant: dict, rule: str):
    return next(((name, entry) for name, entry in redundant["findings"].items() if entry["rule"] == rule),
                (None, None))


def _parts_text(finding: str, entry: dict) -> str:
    methods = entry["methods"]
    if not {"iba", "inverse"} <= set(methods):
        return f"{finding}, {entry['pairs']} pairs: no maps"
    iba, inverse = methods["iba"], methods["inverse"]
    text = (f"{finding}, {entry['pairs']} pairs: share of the lesions reached Inverse IBA {fmt(inverse['reached'])}, "
            f"IBA {fmt(iba['reached'])}; output drop when what the map reaches is removed Inverse IBA "
            f"{fmt(inverse['drop'])}, IBA {fmt(iba['drop'])}")
    if not entry["follows_rule"]:
        text += f"; the model does not follow {entry['rule'].upper()} by intervention"
    comparison = entry.get("inverse_minus_iba", {})
    if comparison:
        text += (" (Inverse minus IBA: " + ", ".join(f"{key} {fmt(c['difference'])} +- {fmt(c['se'])}"
                                                     for key, c in comparison.items()) + ")")
    return text


def _inverse_all_regions(results: dict) -> Judgement:
    redundant = results.get("redundant")
    if not redundant:
        return _not_run("needs the redundant-evidence study (model nih_redundant)")
    finding, entry = _by_rule(redundant, "or")
    if entry is None or not entry["pairs"]:
        return _not_run("the redundant-evidence study found no image with both lesions of an OR finding")
    joint, joint_entry = _by_rule(redundant, "and")
    measured = f"OR ({_parts_text(finding, entry)})"
    if joint_entry is not None and joint_entry["pairs"]:
        measured += f"; beside it, AND ({_parts_text(joint, joint_entry)})"
    check = entry["model_check"]
    if entry["pairs"] >= MIN_CLAIM_PAIRS and not entry["follows_rule"]:  # on fewer, the check says too little
        return Judgement(
            f"{measured}; the model does not hold {finding}'s lesions as each sufficient: removing one drops its "
            f"output by {fmt(check['one_removed_drop'])}, both by {fmt(check['both_removed_drop'])} (OR needs "
            f"under {RULE_SHARE} of the second, which must reach {DETECTED_DROP})", NOT_TESTABLE,
            "the redundant-evidence study on a model that passes its intervention check, e.g. nih_redundant "
            "trained longer (load_embedded_model('nih_redundant', epochs=8))")
    comparison = entry.get("inverse_minus_iba", {})
    held = (_beyond(comparison["reached"]) and _beyond(comparison["drop"])) if set(comparison) == {"reached", "drop"} \
        else None
    return _judged(measured + "; holds when Inverse IBA reaches more lesions and its removal drops the output more, "
                   "each beyond the margin and 2 standard errors", entry["pairs"], MARGIN, held)


def _inverse_deletion(results: dict) -> Judgement:
    nih = results.get("nih", {})
    scores = nih.get("scores", {})
    if not all("deletion_auc" in scores.get(n, {}) for n in ("iba", "inverse")):
        return _not_run("needs the NIH-like study with insertion/deletion")
    inverse, iba = scores["inverse"]["deletion_auc"], scores["iba"]["deletion_auc"]
    return _judged(f"deletion AUC Inverse IBA {fmt(inverse)}, IBA {fmt(iba)} (lower: the output falls faster)",
                   nih["pairs"], MARGIN, inverse < iba - MARGIN if _defined(inverse, iba) else None)


def _regression_severity(results: dict) -> Judgement:
    regression = results.get("regression")
    if not regression or "pcc" not in regression["scores"].get("random", {}):
        return _not_run(results.get("regression_pcc_skipped", "needs the regression study with severity maps"))
    scores = regression["scores"]
    pcc = {k: scores[f"regression_{k}"]["pcc"] for k in REGRESSION_LOSSES}
    chance = scores["random"]["pcc"]
    others = [k for k in scores if not k.startswith("regression_") and k != "random"]
    measured = ", ".join(f"{k} {fmt(v)}" for k, v in pcc.items()) + f"; random map {fmt(chance)}"
    if others:
        best = max(others, key=lambda k: np.nan_to_num(scores[k]["pcc"], nan=-2.0))
        measured += f"; best other method: {method_label(best)} {fmt(scores[best]['pcc'])}"
    held = all(v > chance + ABOVE_CHANCE for v in pcc.values()) if _defined(chance, *pcc.values()) else None
    return _judged(measured, regression["images"], ABOVE_CHANCE, held)


def _regression_sensitivity(results: dict) -> Judgement:
    regression = results.get("regression", {})
    scores = regression.get("scores", {})
    key = "sensitivity_cells"
    if not scores or key not in scores.get("random", {}):
        return _not_run("needs the regression study")
    mean = {k: _nanmean(list(v[key].values())) for k, v in scores.items() if key in v}
    losses = {k: mean[f"regression_{k}"] for k in REGRESSION_LOSSES if f"regression_{k}" in mean}
    measured = (", ".join(f"{k} {fmt(v)}" for k, v in losses.items()) + f"; random map {fmt(mean['random'])} "
                "(mean Pearson over the mask sizes; masks of whole cells of the bottleneck grid, squared change "
                "of the score; with the paper's scattered-pixel masks every loss is at chance, see Fig. 3b)")
    best = max(losses.values(), default=float("nan"))
    return _judged(measured, regression["images"], ABOVE_CHANCE,
                   best > mean["random"] + ABOVE_CHANCE if _defined(best, mean["random"]) else None)


def _multilayer_best(results: dict) -> Judgement:
    nih = results.get("nih", {})
    scores = nih.get("scores", {})
    if "iou" not in scores.get("multilayer", {}):
        return _not_run("needs the NIH-like study")
    others = {k: v.get("iou", float("nan")) for k, v in scores.items() if k != "multilayer"}
    best = max(others, key=lambda k: np.nan_to_num(others[k], nan=-1.0))
    multi = scores["multilayer"]["iou"]
    return _judged(f"mean IoU Multi-layer IBA {fmt(multi)}; best other: {method_label(best)} {fmt(others[best])}",
                   nih["pairs"], MARGIN, multi > others[best] + MARGIN if _defined(multi, others[best]) else None)


def _multilayer_fine(results: dict) -> Judgement:
    nih = results.get("nih", {})
    scores = nih.get("scores", {})
    if not all("class_iou" in scores.get(n, {}) for n in ("iba", "multilayer")):
        return _not_run("needs the NIH-like study")
    small = [f for f in SMALL_FINDINGS if f in scores["iba"]["class_iou"]]
    multi = _nanmean([scores["multilayer"]["class_iou"][f] for f in small])
    single = _nanmean([scores["iba"]["class_iou"][f] for f in small])
    layers = results.get("layers", {})
    measured = (f"IoU on {' and '.join(small) or 'no small finding'}: Multi-layer IBA {fmt(multi)}, IBA {fmt(single)}; "
                f"finest map at {layers.get('multilayer', ['?'])[0]}, IBA at {layers.get('bottleneck', '?')}")
    pairs = sum(nih["class_pairs"].get(f, 0) for f in small)
    return _judged(measured, pairs, MARGIN, multi > single + MARGIN if _defined(multi, single) else None)


def _brixia_iou(results: dict) -> Judgement:
    study = results.get("detectors", {})
    scores = study.get("scores", {})
    if not all(n in scores for n in ("inverse", "multilayer")):
        return _not_run(results.get("detectors_skipped", "needs the BrixIA detector study"))
    # Premise: the ground truth localises. Where a map of the whole lung fields scores as well as the best
    # method, the detector's zones are (nearly) the lungs and cannot tell a localising map from none.
    ours, rest, testable = {}, {}, []
    for detector in scores["inverse"]["class_iou"]:
        ours[detector] = max(scores[n]["class_iou"][detector] for n in ("inverse", "multilayer"))
        rest[detector] = max((v["class_iou"][detector] for k, v in scores.items()
                              if k not in ("inverse", "multilayer")), default=float("nan"))
        best = max(ours[detector], np.nan_to_num(rest[detector], nan=-1.0))
        if _defined(best, study["lung_iou"][detector]) and best > study["lung_iou"][detector] + MARGIN:
            testable.append(detector)
    lungs = ", ".join(f"{d} {fmt(v)}" for d, v in study["lung_iou"].items())
    if not testable:
        return Judgement(f"a map of the whole lung fields scores as well as every method on every detector "
                         f"(IoU {lungs})", NOT_TESTABLE,
                         "a BrixIA-like phantom (or BrixIA with lung masks) where each detector's zones are a small "
                         "part of the lungs, so that a whole-lung map scores below a localising one")
    wins = {d: ours[d] > rest[d] for d in testable if _defined(ours[d], rest[d])}
    measured = ", ".join(f"{d}: {'best' if wins.get(d) else 'not best'} ({fmt(ours[d])} vs {fmt(rest[d])})"
                         for d in testable) + " (max of Inverse and Multi-layer IBA vs the others)"
    left_out = [d for d in scores["inverse"]["class_iou"] if d not in testable]
    if left_out:
        measured += (f"; not testable on {', '.join(left_out)}: a whole-lung map does as well (IoU "
                     + ", ".join(fmt(study["lung_iou"][d]) for d in left_out) + ")")
    pairs = min(study["class_pairs"].get(d, 0) for d in testable)
    return _judged(measured, pairs, MARGIN, all(wins.values()) if len(wins) == len(testable) else None)


def _weighted_bce(results: dict) -> Judgement:
    # Premise: the BCE model's features are not aligned with the findings, shown by intervention. The plain
    # phantom draws nothing but anatomy and findings, so there is nothing to misalign with: its Table 3 is
    # stated, not judged. The cue data has a marker that the BCE model uses (or not: then not testable either).
    parts = []
    table3 = results.get("table3")
    if table3:
        bce, weighted = table3["bce"], table3["weighted_bce"]
        parts.append(f"plain phantom (no feature but the findings to align with, not judged): Inverse IBA mean IoU "
                     f"weighted BCE {fmt(weighted['iou'])} vs BCE {fmt(bce['iou'])}, mean AUC "
                     f"{fmt(weighted['mean_auc'])} vs {fmt(bce['mean_auc'])}")
    experiment = "the cue study (captum-iba demo without --no-cue): nih_cue vs nih_cue_weighted_bce"
    cue = results.get("cue", {})
    share = cue.get("weighted_bce_inverse_share")
    if not share and not table3:
        return _not_run("needs the weighted-BCE model (demo) or the cue models")
    if not share:
        return Judgement("; ".join(parts + ["no data with a non-pathology feature that the BCE model uses"]),
                         NOT_TESTABLE, experiment)
    drop = cue["intervention"]["nih_cue"]["drop"]
    if cue["images"] >= MIN_CLAIM_PAIRS and not drop >= USES_CUE:
        return Judgement("; ".join(parts + [f"cue data: removing the marker drops the BCE model's output by only "
                                            f"{fmt(drop)} (under {USES_CUE}): it does not use the marker"]),
                         NOT_TESTABLE, experiment + ", with a BCE model that uses the marker")
    parts.append(f"cue data (the BCE model uses the marker: removing it drops the output by {fmt(drop)}): Inverse "
                 f"IBA's share on the marker weighted BCE {fmt(share['weighted_bce'])} vs BCE {fmt(share['bce'])} "
                 "(lower: aligned with the finding)")
    held = share["weighted_bce"] < share["bce"] - MARGIN if _defined(*share.values()) else None
    return _judged("; ".join(parts), cue["images"], MARGIN, held)


#: One judge per claim of :data:`captum_iba.app.report.paper.CLAIMS`, by its id.
JUDGES: Dict[str, Callable[[dict], Judgement]] = {
    "iba_feature_importance": _feature_importance,
    "inverse_all_regions": _inverse_all_regions,
    "inverse_deletion": _inverse_deletion,
    "regression_severity": _regression_severity,
    "regression_sensitivity_n": _regression_sensitivity,
    "multilayer_best_iou": _multilayer_best,
    "multilayer_fine_grained": _multilayer_fine,
    "brixia_iou": _brixia_iou,
    "weighted_bce_alignment": _weighted_bce,
}


#: The study whose model each claim is measured on (its ``results`` key): its quality stands beside the verdict.
CLAIM_STUDY = {
    "iba_feature_importance": "nih", "inverse_all_regions": "redundant", "inverse_deletion": "nih",
    "regression_severity": "regression", "regression_sensitivity_n": "regression",
    "multilayer_best_iou": "nih", "multilayer_fine_grained": "nih", "brixia_iou": "detectors",
    "weighted_bce_alignment": "nih",
}


def model_quality_text(results: dict, claim_id: str) -> str:
    """The claim's model and how good it is on held-out images, e.g. "AUC 0.932 (200 images)"; "" if unknown."""
    quality = results.get(CLAIM_STUDY[claim_id], {}).get("quality")
    if not quality:
        return ""
    return f"{quality['metric']} {fmt(quality['value'])} ({quality['images']} images)"


def claims(results: dict) -> List[dict]:
    """Every claim of the paper with its published figure, what was measured here, and the verdict.

    Returns
    -------
    list of dict
        In the paper's order: ``id``, ``claim``, ``source``, ``published``,
        ``measured``, ``verdict`` (one of :data:`VERDICTS`), ``experiment``
        (for "not testable here", the experiment that would test the claim;
        else empty) and ``model`` (the quality of the model it is measured
        on, :func:`model_quality_text`).
    """
    rows = []
    for claim in CLAIMS:
        judgement = JUDGES[claim.id](results)
        rows.append({"id": claim.id, "claim": claim.claim, "source": claim.source, "published": claim.published,
                     **judgement._asdict(), "model": model_quality_text(results, claim.id)})
    return rows
