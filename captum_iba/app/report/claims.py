"""The paper's claims, one row each: the paper's figure, ours, and a verdict.

:data:`captum_iba.app.report.paper.CLAIMS` lists the claims; each has a judge here
that reads the results of the studies (:mod:`captum_iba.app.report.studies`) and
returns what was measured and whether the claim held. A claim whose study did
not run, or ran on too little, is "not measurable here", with the reason.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..methods import METHODS
from ...objectives import REGRESSION_LOSSES
from .paper import CLAIMS
from .studies import MIN_CLAIM_PAIRS, method_label

__all__ = ["claims", "fmt", "MARGIN", "JUDGES"]

SMALL_FINDINGS = ("Nodule", "Mass")
IBA_FAMILY = ("iba", "inverse", "multilayer")
# A comparison "holds" only beyond this margin, so noise on a few images does not decide it.
MARGIN = 0.02
# A correlation counts as above chance only this far above the random map's.
ABOVE_CHANCE = 0.1
# Two classifiers have "equal" AUC within this.
SAME_AUC = 0.05

Verdict = Tuple[str, Optional[bool]]  # (what was measured, held: True / False / None = not measurable)


def fmt(value) -> str:
    """A number with 3 decimals, or "n/a" for None and NaN."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _nanmean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _defined(*values: float) -> bool:
    return not any(v is None or math.isnan(v) for v in values)


def _not_run(what: str) -> Verdict:
    return f"not measured here: {what}", None


def _feature_importance(results: dict) -> Verdict:
    scores = results.get("nih", {}).get("scores", {})
    if not all(name in scores and "insertion_auc" in scores[name] for name in IBA_FAMILY):
        return _not_run("needs the NIH-like study with insertion/deletion")
    gap = {name: s["insertion_auc"] - s["deletion_auc"] for name, s in scores.items()}
    others = [v for name, v in gap.items() if METHODS[name].family != "captum_iba"]  # the other libraries' methods
    median = float(np.median(others)) if others else float("nan")
    measured = (", ".join(f"{method_label(n)} {fmt(gap[n])}" for n in IBA_FAMILY)
                + f" (insertion minus deletion AUC); median of the other methods {fmt(median)}")
    return measured, (all(gap[n] > median + MARGIN for n in IBA_FAMILY) if _defined(median) else None)


def _inverse_all_regions(results: dict) -> Verdict:
    nih = results.get("nih")
    if not nih:
        return _not_run("needs the NIH-like study")
    if "coverage" not in nih:
        return _not_run(nih.get("coverage_skipped", "no two-part finding"))
    iba, inverse = nih["coverage"]["iba"], nih["coverage"]["inverse"]
    measured = (f"share of a two-part finding's parts reached by the thresholded map, over {inverse['pairs']} "
                f"pairs: Inverse IBA {fmt(inverse['coverage'])}, IBA {fmt(iba['coverage'])}")
    enough = inverse["pairs"] >= MIN_CLAIM_PAIRS and _defined(inverse["coverage"], iba["coverage"])
    return measured, (inverse["coverage"] > iba["coverage"] + MARGIN if enough else None)


def _inverse_deletion(results: dict) -> Verdict:
    scores = results.get("nih", {}).get("scores", {})
    if not all("deletion_auc" in scores.get(n, {}) for n in ("iba", "inverse")):
        return _not_run("needs the NIH-like study with insertion/deletion")
    inverse, iba = scores["inverse"]["deletion_auc"], scores["iba"]["deletion_auc"]
    return (f"deletion AUC Inverse IBA {fmt(inverse)}, IBA {fmt(iba)} (lower: the output falls faster)",
            inverse < iba - MARGIN if _defined(inverse, iba) else None)


def _regression_severity(results: dict) -> Verdict:
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
    if not _defined(chance, *pcc.values()):
        return measured, None
    return measured, all(v > chance + ABOVE_CHANCE for v in pcc.values())


def _regression_sensitivity(results: dict) -> Verdict:
    scores = results.get("regression", {}).get("scores", {})
    key = "sensitivity_cells"
    if not scores or key not in scores.get("random", {}):
        return _not_run("needs the regression study")
    mean = {k: _nanmean(list(v[key].values())) for k, v in scores.items() if key in v}
    losses = {k: mean[f"regression_{k}"] for k in REGRESSION_LOSSES if f"regression_{k}" in mean}
    measured = (", ".join(f"{k} {fmt(v)}" for k, v in losses.items()) + f"; random map {fmt(mean['random'])} "
                "(mean Pearson over the mask sizes; masks of whole cells of the bottleneck grid, squared change "
                "of the score; with the paper's scattered-pixel masks every loss is at chance, see Fig. 3b)")
    best = max(losses.values(), default=float("nan"))
    return measured, (best > mean["random"] + ABOVE_CHANCE if _defined(best, mean["random"]) else None)


def _multilayer_best(results: dict) -> Verdict:
    scores = results.get("nih", {}).get("scores", {})
    if "iou" not in scores.get("multilayer", {}):
        return _not_run("needs the NIH-like study")
    others = {k: v.get("iou", float("nan")) for k, v in scores.items() if k != "multilayer"}
    best = max(others, key=lambda k: np.nan_to_num(others[k], nan=-1.0))
    multi = scores["multilayer"]["iou"]
    return (f"mean IoU Multi-layer IBA {fmt(multi)}; best other: {method_label(best)} {fmt(others[best])}",
            multi > others[best] + MARGIN if _defined(multi, others[best]) else None)


def _multilayer_fine(results: dict) -> Verdict:
    scores = results.get("nih", {}).get("scores", {})
    if not all("class_iou" in scores.get(n, {}) for n in ("iba", "multilayer")):
        return _not_run("needs the NIH-like study")
    small = [f for f in SMALL_FINDINGS if f in scores["iba"]["class_iou"]]
    multi = _nanmean([scores["multilayer"]["class_iou"][f] for f in small])
    single = _nanmean([scores["iba"]["class_iou"][f] for f in small])
    layers = results.get("layers", {})
    measured = (f"IoU on {' and '.join(small) or 'no small finding'}: Multi-layer IBA {fmt(multi)}, IBA {fmt(single)}; "
                f"finest map at {layers.get('multilayer', ['?'])[0]}, IBA at {layers.get('bottleneck', '?')}")
    return measured, (multi > single + MARGIN if _defined(multi, single) else None)


def _brixia_iou(results: dict) -> Verdict:
    scores = results.get("detectors", {}).get("scores", {})
    if not all(n in scores for n in ("inverse", "multilayer")):
        return _not_run(results.get("detectors_skipped", "needs the BrixIA detector study"))
    detectors = list(scores["inverse"]["class_iou"])
    wins = []
    for detector in detectors:
        ours = max(scores[n]["class_iou"][detector] for n in ("inverse", "multilayer"))
        rest = max((v["class_iou"][detector] for k, v in scores.items() if k not in ("inverse", "multilayer")),
                   default=float("nan"))
        wins.append(bool(ours > rest) if _defined(ours, rest) else None)
    measured = ", ".join(f"{d}: {'best' if w else 'not best' if w is not None else 'n/a'}"
                         for d, w in zip(detectors, wins)) + " (max of Inverse and Multi-layer IBA vs the others)"
    return measured, (None if None in wins else all(wins))


def _weighted_bce(results: dict) -> Verdict:
    parts, verdicts = [], []
    table3 = results.get("table3")
    if table3:
        bce, weighted = table3["bce"], table3["weighted_bce"]
        parts.append(f"plain phantom: Inverse IBA mean IoU weighted BCE {fmt(weighted['iou'])} vs BCE "
                     f"{fmt(bce['iou'])}, mean AUC {fmt(weighted['mean_auc'])} vs {fmt(bce['mean_auc'])}")
        same_auc = abs(weighted["mean_auc"] - bce["mean_auc"]) < SAME_AUC
        verdicts.append(weighted["iou"] > bce["iou"] + MARGIN and same_auc
                        if _defined(weighted["iou"], bce["iou"]) else None)
    cue = results.get("cue", {}).get("weighted_bce_inverse_share")
    if cue:
        parts.append(f"cue data: Inverse IBA's share on the non-pathology marker weighted BCE "
                     f"{fmt(cue['weighted_bce'])} vs BCE {fmt(cue['bce'])} (lower: aligned with the finding)")
        verdicts.append(cue["weighted_bce"] < cue["bce"] - MARGIN if _defined(*cue.values()) else None)
    if not parts:
        return _not_run("needs the weighted-BCE model (demo) or the cue models")
    if None not in verdicts and len(set(verdicts)) > 1:
        parts.append("the two settings disagree")
    return "; ".join(parts), (None if None in verdicts else all(verdicts))


#: One judge per claim of :data:`captum_iba.app.report.paper.CLAIMS`, by its id.
JUDGES: Dict[str, Callable[[dict], Verdict]] = {
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


def claims(results: dict) -> List[dict]:
    """Every claim of the paper with its published figure, what was measured here, and the verdict.

    Returns
    -------
    list of dict
        In the paper's order: ``id``, ``claim``, ``source``, ``published``,
        ``measured`` and ``verdict`` ("held", "did not hold" or
        "not measurable here").
    """
    rows = []
    for claim in CLAIMS:
        measured, held = JUDGES[claim.id](results)
        verdict = "not measurable here" if held is None else ("held" if held else "did not hold")
        rows.append({"id": claim.id, "claim": claim.claim, "source": claim.source, "published": claim.published,
                     "measured": measured, "verdict": verdict})
    return rows
