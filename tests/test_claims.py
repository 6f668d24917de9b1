"""Each of the paper's claims judged from hand-made results: every verdict, at and beyond the margin."""

import pytest

from captum_iba.app.report.claims import MARGIN, claims, fmt
from captum_iba.app.report.paper import CLAIMS
from captum_iba.app.report.studies import MIN_CLAIM_PAIRS
from captum_iba.objectives import REGRESSION_LOSSES

NAN = float("nan")
HELD, NOT_HELD, UNMEASURABLE = "held", "did not hold", "not measurable here"
ABOVE, WITHIN = 1.5 * MARGIN, 0.5 * MARGIN  # a difference beyond the margin, and one inside it


def nih_results(*, inverse=0.9, iba=0.5, pairs=MIN_CLAIM_PAIRS, multi_small=0.6, iba_small=0.3,
                class_iou_keys=("Nodule", "Mass", "Effusion")):
    def scores(iou, small):
        return {"iou": iou, "class_iou": {k: (small if k in ("Nodule", "Mass") else 0.4) for k in class_iou_keys}}

    return {
        "nih": {
            "coverage": {"iba": {"coverage": iba, "pairs": pairs}, "inverse": {"coverage": inverse, "pairs": pairs}},
            "scores": {"iba": scores(0.31, iba_small), "inverse": scores(0.32, 0.2),
                       "multilayer": scores(0.33, multi_small)},
        },
        "layers": {"bottleneck": "features.denseblock3", "multilayer": ["features.denseblock1", "features.denseblock2"],
                   "cam": "features.norm5"},
    }


def table3_results(*, weighted_iou=0.5, bce_iou=0.3, weighted_auc=0.80, bce_auc=0.81):
    return {"table3": {"bce": {"iou": bce_iou, "mean_auc": bce_auc}, "weighted_bce": {"iou": weighted_iou,
                                                                                        "mean_auc": weighted_auc}}}


def regression_results(pcc, chance=0.0, baselines=None):
    scores = {f"regression_{loss}": {"pcc": value} for loss, value in pcc.items()}
    scores["random"] = {"pcc": chance}
    scores.update({name: {"pcc": value} for name, value in (baselines or {"gradcam": 0.2, "saliency": 0.4}).items()})
    return {"regression": {"scores": scores}}


def claim_of(results, claim_id):
    found = {c["id"]: c for c in claims(results)}
    assert set(found[claim_id]) == {"id", "claim", "source", "published", "measured", "verdict"}
    return found[claim_id]


def coverage_claim(results):
    return claim_of(results, "inverse_all_regions")


def multilayer_claim(results):
    return claim_of(results, "multilayer_fine_grained")


def test_no_study_every_claim_not_measurable_with_the_papers_figure():
    found = claims({})
    assert [c["id"] for c in found] == [c.id for c in CLAIMS]
    assert all(c["verdict"] == UNMEASURABLE and c["measured"].startswith("not measured here") for c in found)
    assert [c["published"] for c in found] == [c.published for c in CLAIMS]


# Inverse IBA reaches every part of a two-part finding, IBA a sufficient subset.


@pytest.mark.parametrize("inverse, iba, pairs, verdict", [
    (0.5 + ABOVE, 0.5, MIN_CLAIM_PAIRS, HELD),
    (0.5 + WITHIN, 0.5, MIN_CLAIM_PAIRS, NOT_HELD),  # better, but inside the margin
    (0.4, 0.5, MIN_CLAIM_PAIRS, NOT_HELD),
    (1.0, 0.5, MIN_CLAIM_PAIRS - 1, UNMEASURABLE),  # too few two-part findings to say
    (NAN, NAN, 0, UNMEASURABLE),
])
def test_inverse_iba_coverage_claim(inverse, iba, pairs, verdict):
    claim = coverage_claim(nih_results(inverse=inverse, iba=iba, pairs=pairs))
    assert claim["claim"].startswith("Inverse IBA highlights all regions")
    assert claim["verdict"] == verdict
    assert f"over {pairs} pairs" in claim["measured"]
    assert f"Inverse IBA {fmt(inverse)}, IBA {fmt(iba)}" in claim["measured"]


@pytest.mark.parametrize("multi, single, verdict", [
    (0.3 + ABOVE, 0.3, HELD),
    (0.3 + WITHIN, 0.3, NOT_HELD),
    (0.2, 0.3, NOT_HELD),
    (NAN, 0.3, UNMEASURABLE),  # no small finding among the pairs
    (0.3, NAN, UNMEASURABLE),
])
def test_multilayer_small_findings_claim(multi, single, verdict):
    claim = multilayer_claim(nih_results(multi_small=multi, iba_small=single))
    assert claim["claim"].startswith("Multi-layer IBA gives finer maps")
    assert claim["verdict"] == verdict
    assert "IoU on Nodule and Mass" in claim["measured"]
    assert "finest map at features.denseblock1, IBA at features.denseblock3" in claim["measured"]


def test_multilayer_claim_uses_only_the_small_findings_the_model_has():
    claim = multilayer_claim(nih_results(multi_small=0.9, iba_small=0.1, class_iou_keys=("Nodule", "Effusion")))
    assert "IoU on Nodule:" in claim["measured"] and claim["verdict"] == HELD
    claim = multilayer_claim(nih_results(class_iou_keys=("Effusion",)))
    assert claim["verdict"] == UNMEASURABLE


# Weighted BCE: better-aligned maps at about the same AUC.


@pytest.mark.parametrize("weighted_iou, bce_iou, weighted_auc, bce_auc, verdict", [
    (0.3 + ABOVE, 0.3, 0.80, 0.81, HELD),
    (0.3 + WITHIN, 0.3, 0.80, 0.81, NOT_HELD),  # IoU inside the margin
    (0.2, 0.3, 0.80, 0.81, NOT_HELD),
    (0.6, 0.3, 0.70, 0.81, NOT_HELD),  # better maps bought with a worse classifier
    (0.6, 0.3, 0.90, 0.81, NOT_HELD),  # AUC not "about equal" either way
])
def test_weighted_bce_claim(weighted_iou, bce_iou, weighted_auc, bce_auc, verdict):
    claim = claim_of(table3_results(weighted_iou=weighted_iou, bce_iou=bce_iou, weighted_auc=weighted_auc,
                                    bce_auc=bce_auc), "weighted_bce_alignment")
    assert claim["claim"].startswith("Weighted BCE")
    assert claim["verdict"] == verdict
    assert f"weighted BCE {fmt(weighted_iou)} vs BCE {fmt(bce_iou)}" in claim["measured"]


@pytest.mark.parametrize("weighted_share, bce_share, table3_holds, verdict", [
    (0.05, 0.05 + ABOVE, True, HELD),  # both settings agree
    (0.05, 0.05 + WITHIN, True, NOT_HELD),  # the cue data does not confirm it: the settings disagree
    (0.05 + ABOVE, 0.05, False, NOT_HELD),
])
def test_weighted_bce_claim_on_the_cue_data(weighted_share, bce_share, table3_holds, verdict):
    results = table3_results(weighted_iou=0.3 + (ABOVE if table3_holds else -ABOVE), bce_iou=0.3)
    results["cue"] = {"weighted_bce_inverse_share": {"bce": bce_share, "weighted_bce": weighted_share}}
    claim = claim_of(results, "weighted_bce_alignment")
    assert claim["verdict"] == verdict
    assert f"weighted BCE {fmt(weighted_share)} vs BCE {fmt(bce_share)}" in claim["measured"]
    assert ("disagree" in claim["measured"]) == (verdict == NOT_HELD and table3_holds)


# Regression IBA follows the zone severities: every loss's PCC above the random map's.


@pytest.mark.parametrize("pcc, chance, verdict", [
    ({loss: 0.5 for loss in REGRESSION_LOSSES}, 0.0, HELD),
    ({**{loss: 0.5 for loss in REGRESSION_LOSSES}, "maximize": 0.05}, 0.0, NOT_HELD),  # one loss near chance
    ({loss: 0.5 for loss in REGRESSION_LOSSES}, 0.45, NOT_HELD),  # a random map does as well
])
def test_regression_claim(pcc, chance, verdict):
    claim = claim_of(regression_results(pcc, chance), "regression_severity")
    assert claim["claim"].startswith("Regression IBA shows")
    assert claim["verdict"] == verdict
    for loss, value in pcc.items():
        assert f"{loss} {fmt(value)}" in claim["measured"]
    assert f"random map {fmt(chance)}" in claim["measured"]
    assert "best other method: Saliency (Captum) 0.400" in claim["measured"]


def test_regression_claim_left_out_without_severity_maps():
    results = regression_results({loss: 0.5 for loss in REGRESSION_LOSSES})
    for value in results["regression"]["scores"].values():
        value.pop("pcc")  # what the regression study does when the items have no severity map
    assert claim_of(results, "regression_severity")["verdict"] == UNMEASURABLE


@pytest.mark.parametrize("gap_iba, verdict", [(0.5, HELD), (0.2 + WITHIN, NOT_HELD), (NAN, NOT_HELD)])
def test_feature_importance_claim_against_the_median_of_the_others(gap_iba, verdict):
    def scores(gap):
        return {"insertion_auc": 0.5 + gap, "deletion_auc": 0.5}
    nih = {"scores": {"iba": scores(gap_iba), "inverse": scores(0.5), "multilayer": scores(0.5),
                      "gradcam": scores(0.1), "saliency": scores(0.2), "lrp": scores(0.3)}}
    claim = claim_of({"nih": nih}, "iba_feature_importance")
    assert claim["verdict"] == verdict and "median of the other methods 0.200" in claim["measured"]


@pytest.mark.parametrize("multi, best_other, verdict", [(0.3, 0.3 - ABOVE, HELD), (0.3, 0.3 - WITHIN, NOT_HELD)])
def test_multilayer_best_iou_claim(multi, best_other, verdict):
    nih = {"scores": {"multilayer": {"iou": multi}, "iba": {"iou": best_other}, "gradcam": {"iou": 0.01}}}
    claim = claim_of({"nih": nih}, "multilayer_best_iou")
    assert claim["verdict"] == verdict and f"best other: IBA {fmt(best_other)}" in claim["measured"]


def test_brixia_claim_needs_inverse_or_multilayer_best_for_every_detector():
    def scores(a, b):
        return {"class_iou": {"score_3": a, "score_2": b}}
    detectors = {"scores": {"inverse": scores(0.5, 0.1), "multilayer": scores(0.2, 0.4), "iba": scores(0.3, 0.3)}}
    assert claim_of({"detectors": detectors}, "brixia_iou")["verdict"] == HELD
    detectors["scores"]["gradcam"] = scores(0.1, 0.45)
    claim = claim_of({"detectors": detectors}, "brixia_iou")
    assert claim["verdict"] == NOT_HELD and "score_2: not best" in claim["measured"]


@pytest.mark.parametrize("deviation, verdict", [(0.4, HELD), (0.05, NOT_HELD)])
def test_sensitivity_claim_reads_the_cell_setting(deviation, verdict):
    scores = {"regression_deviation": {"sensitivity_cells": {0.1: deviation, 0.5: deviation}},
              "random": {"sensitivity_cells": {0.1: 0.0, 0.5: 0.02}}}
    claim = claim_of({"regression": {"scores": scores}}, "regression_sensitivity_n")
    assert claim["verdict"] == verdict and "random map 0.010" in claim["measured"]


def test_every_study_gives_its_claims_in_the_papers_order():
    results = {**nih_results(), **table3_results(), **regression_results({loss: 0.5 for loss in REGRESSION_LOSSES})}
    found = claims(results)
    assert [c["id"] for c in found] == [c.id for c in CLAIMS]
    verdicts = {c["id"]: c["verdict"] for c in found}
    assert [verdicts[k] for k in ("inverse_all_regions", "multilayer_fine_grained", "weighted_bce_alignment",
                                  "regression_severity")] == [HELD, HELD, HELD, HELD]


def test_a_skipped_two_part_study_says_why():
    results = nih_results()
    del results["nih"]["coverage"]
    results["nih"]["coverage_skipped"] = "no two-part finding among 4 items"
    claim = coverage_claim(results)
    assert claim["verdict"] == UNMEASURABLE and "no two-part finding among 4 items" in claim["measured"]


def test_fmt_says_n_a_for_what_was_not_measured():
    assert fmt(NAN) == "n/a" and fmt(None) == "n/a"
    assert fmt(0.12345) == "0.123"
    assert fmt(1) == "1.000"
