"""The paper's claims, each with the numbers measured here and a verdict."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

from ..objectives import REGRESSION_LOSSES
from .studies import MIN_CLAIM_PAIRS, method_label

__all__ = ["claims", "fmt", "MARGIN"]

SMALL_FINDINGS = ("Nodule", "Mass")
# A claim "holds" only beyond this margin, so noise on a few images does not decide it.
MARGIN = 0.02


def claims(results: dict) -> List[dict]:
    """The paper's claims with the numbers measured here and whether each held."""
    found = []
    nih = results.get("nih")
    if nih:
        found.append(_inverse_claim(nih))
        small = [f for f in SMALL_FINDINGS if f in nih["scores"]["iba"]["class_iou"]]
        multi = _nanmean([nih["scores"]["multilayer"]["class_iou"][f] for f in small])
        single = _nanmean([nih["scores"]["iba"]["class_iou"][f] for f in small])
        measured = (f"IoU on {' and '.join(small)}: Multi-layer IBA {fmt(multi)}, IBA {fmt(single)}; "
                    f"map resolution: Multi-layer at {results['layers']['multilayer'][0]}, IBA at {results['layers']['bottleneck']}")
        found.append(_claim("Multi-layer IBA is finer and localises small findings better", measured,
                            None if math.isnan(multi) or math.isnan(single) else multi > single + MARGIN))
    table3 = results.get("table3")
    if table3:
        bce, weighted = table3["bce"], table3["weighted_bce"]
        measured = (f"Inverse IBA mean IoU: weighted BCE {fmt(weighted['iou'])}, BCE {fmt(bce['iou'])}; "
                    f"mean AUC {fmt(weighted['mean_auc'])} vs {fmt(bce['mean_auc'])}")
        same_auc = abs(weighted["mean_auc"] - bce["mean_auc"]) < 0.05
        found.append(_claim("Weighted BCE aligns features with findings at (about) equal AUC", measured,
                            weighted["iou"] > bce["iou"] + MARGIN and same_auc))
    regression = results.get("regression")
    if regression and "pcc" in regression["scores"]["random"]:
        pcc = {k: regression["scores"][f"regression_{k}"]["pcc"] for k in REGRESSION_LOSSES}
        chance = regression["scores"]["random"]["pcc"]
        best = max((k for k in regression["scores"] if not k.startswith("regression_") and k != "random"),
                   key=lambda k: regression["scores"][k]["pcc"])
        measured = (", ".join(f"{k} {fmt(v)}" for k, v in pcc.items()) + f"; random map {fmt(chance)}; "
                    f"best other method: {method_label(best)} {fmt(regression['scores'][best]['pcc'])}")
        found.append(_claim("Regression IBA maps follow the zone severities (severity-map PCC above chance)",
                            measured, all(v > chance + 0.1 for v in pcc.values())))
    return found


def _inverse_claim(nih: dict) -> dict:
    claim = "Inverse IBA finds all informative regions, IBA a sufficient subset"
    if "coverage" not in nih:
        return _claim(claim, f"not measured: {nih['coverage_skipped']}", None)
    iba, inverse = nih["coverage"]["iba"], nih["coverage"]["inverse"]
    measured = (f"share of a two-part finding's parts reached by the thresholded map, over {inverse['pairs']} "
                f"pairs: Inverse IBA {fmt(inverse['coverage'])}, IBA {fmt(iba['coverage'])}; "
                f"mean IoU Inverse {fmt(nih['scores']['inverse']['iou'])}, IBA {fmt(nih['scores']['iba']['iou'])}")
    enough = inverse["pairs"] >= MIN_CLAIM_PAIRS
    return _claim(claim, measured, inverse["coverage"] > iba["coverage"] + MARGIN if enough else None)


def _claim(claim: str, measured: str, held: Optional[bool]) -> dict:
    verdict = "not measurable here" if held is None else ("held" if held else "did not hold")
    return {"claim": claim, "measured": measured, "verdict": verdict}


def _nanmean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
