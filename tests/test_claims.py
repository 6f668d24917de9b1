"""Each of the paper's claims judged from hand-made results: every verdict, at and beyond the margin,
below the minimum of pairs, and where the data lack the claim's premise."""

import pytest

from captum_iba.app.report.claims import CLAIM_STUDY, MARGIN, USES_CUE, VERDICTS, claims, fmt, model_quality_text
from captum_iba.app.report.paper import CLAIMS
from captum_iba.app.report.studies import MIN_CLAIM_PAIRS
from captum_iba.objectives import REGRESSION_LOSSES

NAN = float("nan")
HELD, NOT_HELD, UNMEASURABLE, UNTESTABLE, TOO_FEW = VERDICTS[0], VERDICTS[1], VERDICTS[4], VERDICTS[3], VERDICTS[2]
ABOVE, WITHIN = 1.5 * MARGIN, 0.5 * MARGIN  # a difference beyond the margin, and one inside it
ENOUGH = MIN_CLAIM_PAIRS


def test_the_verdicts():
    assert VERDICTS == ("held", "did not hold", "too few pairs", "not testable here", "not measurable here")


def nih_results(*, pairs=ENOUGH, small_pairs=ENOUGH, multi_small=0.6, iba_small=0.3,
                class_iou_keys=("Nodule", "Mass", "Effusion")):
    def scores(iou, small):
        return {"iou": iou, "class_iou": {k: (small if k in ("Nodule", "Mass") else 0.4) for k in class_iou_keys}}

    return {
        "nih": {
            "pairs": pairs, "class_pairs": {"Nodule": small_pairs // 2, "Mass": small_pairs - small_pairs // 2,
                                            "Effusion": 3},
            "scores": {"iba": scores(0.31, iba_small), "inverse": scores(0.32, 0.2),
                       "multilayer": scores(0.33, multi_small)},
        },
        "layers": {"bottleneck": "features.denseblock3", "multilayer": ["features.denseblock1", "features.denseblock2"],
                   "cam": "features.norm5"},
    }


def redundant_entry(rule, *, pairs=ENOUGH, reached=(0.95, 0.5), drop=(0.8, 0.1), se=0.01, follows=True):
    """A finding of the redundant-evidence study: (Inverse IBA, IBA) reached shares and drops, paired SEs."""
    methods = {"inverse": {"reached": reached[0], "drop": drop[0]}, "iba": {"reached": reached[1], "drop": drop[1]},
               "saliency": {"reached": 0.3, "drop": 0.2}}
    return {"rule": rule, "pairs": pairs, "follows_rule": follows, "methods": methods,
            "model_check": {"one_removed_drop": 0.1 if rule == "or" else 0.8, "both_removed_drop": 0.9},
            "inverse_minus_iba": {"reached": {"difference": reached[0] - reached[1], "se": se},
                                  "drop": {"difference": drop[0] - drop[1], "se": se}}}


def redundant_results(**options):
    return {"redundant": {"findings": {"Mass": redundant_entry("or", **options),
                                       "Effusion": redundant_entry("and", reached=(0.5, 1.0), drop=(0.8, 0.8))}}}


def table3_results(*, weighted_iou=0.5, bce_iou=0.3, weighted_auc=0.80, bce_auc=0.81):
    return {"table3": {"bce": {"iou": bce_iou, "mean_auc": bce_auc}, "weighted_bce": {"iou": weighted_iou,
                                                                                        "mean_auc": weighted_auc}}}


def cue_results(*, weighted_share, bce_share, drop=0.5, images=ENOUGH):
    return {"cue": {"images": images, "intervention": {"nih_cue": {"drop": drop}},
                    "weighted_bce_inverse_share": {"bce": bce_share, "weighted_bce": weighted_share}}}


def regression_results(pcc, chance=0.0, baselines=None, images=ENOUGH):
    scores = {f"regression_{loss}": {"pcc": value} for loss, value in pcc.items()}
    scores["random"] = {"pcc": chance}
    scores.update({name: {"pcc": value} for name, value in (baselines or {"gradcam": 0.2, "saliency": 0.4}).items()})
    return {"regression": {"images": images, "scores": scores}}


def claim_of(results, claim_id):
    found = {c["id"]: c for c in claims(results)}
    assert set(found[claim_id]) == {"id", "claim", "source", "published", "measured", "verdict", "experiment",
                                      "model"}
    assert found[claim_id]["verdict"] in VERDICTS
    assert bool(found[claim_id]["experiment"]) == (found[claim_id]["verdict"] == UNTESTABLE)
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


# IBA finds a sufficient region, Inverse IBA all of them: read where evidence is redundant (OR),
# the joint-evidence (AND) result beside it.


@pytest.mark.parametrize("reached, drop, se, verdict", [
    ((0.95, 0.5), (0.8, 0.1), 0.01, HELD),
    ((0.5 + ABOVE, 0.5), (0.8, 0.1), 0.001, HELD),  # beyond the margin, and beyond 2 SE
    ((0.5 + WITHIN, 0.5), (0.8, 0.1), 0.001, NOT_HELD),  # inside the margin
    ((0.95, 0.5), (0.8, 0.1), 0.3, NOT_HELD),  # beyond the margin but within 2 standard errors
    ((0.95, 0.5), (0.3, 0.3), 0.01, NOT_HELD),  # reaches more, but its removal drops the output no more
    ((0.5, 0.95), (0.8, 0.1), 0.01, NOT_HELD),  # its removal drops more, but IBA reaches more lesions
    ((0.95, 0.5), (0.8, 0.1), NAN, NOT_HELD),  # no standard error: nothing beyond it
])
def test_sufficiency_claim_reads_the_or_finding(reached, drop, se, verdict):
    claim = coverage_claim(redundant_results(reached=reached, drop=drop, se=se))
    assert claim["claim"].startswith("Inverse IBA highlights all regions")
    assert claim["verdict"] == verdict
    assert claim["measured"].startswith(f"OR (Mass, {ENOUGH} pairs: share of the lesions reached Inverse IBA "
                                        f"{fmt(reached[0])}, IBA {fmt(reached[1])}")
    assert f"removed Inverse IBA {fmt(drop[0])}, IBA {fmt(drop[1])}" in claim["measured"]
    assert f"[{ENOUGH} pairs; margin {fmt(MARGIN)}]" in claim["measured"]


def test_sufficiency_claim_states_the_and_finding_beside_and_is_not_decided_by_it():
    results = redundant_results()
    verdict = coverage_claim(results)["verdict"]
    joint = results["redundant"]["findings"]["Effusion"]
    joint["methods"]["inverse"]["reached"] = 0.123
    joint["follows_rule"] = False
    claim = coverage_claim(results)
    assert claim["verdict"] == verdict == HELD
    assert "beside it, AND (Effusion, 20 pairs: share of the lesions reached Inverse IBA 0.123" in claim["measured"]
    assert "the model does not follow AND" in claim["measured"]


def test_sufficiency_claim_not_testable_where_the_model_does_not_hold_either_lesion_sufficient():
    results = redundant_results(follows=False)
    results["redundant"]["findings"]["Mass"]["model_check"] = {"one_removed_drop": 0.6, "both_removed_drop": 0.9}
    claim = coverage_claim(results)
    assert claim["verdict"] == UNTESTABLE
    assert "removing one drops its output by 0.600, both by 0.900" in claim["measured"]
    assert "nih_redundant" in claim["experiment"]
    # On too few pairs, the intervention itself says too little: too few pairs, whatever it found.
    assert coverage_claim(redundant_results(follows=False, pairs=ENOUGH - 1))["verdict"] == TOO_FEW


@pytest.mark.parametrize("pairs", [ENOUGH - 1, 1])
def test_sufficiency_claim_on_too_few_pairs(pairs):
    claim = coverage_claim(redundant_results(pairs=pairs))
    assert claim["verdict"] == TOO_FEW and f"fewer than {MIN_CLAIM_PAIRS} pairs" in claim["measured"]


def test_sufficiency_claim_without_its_study():
    assert coverage_claim(nih_results())["verdict"] == UNMEASURABLE
    results = redundant_results()
    results["redundant"]["findings"]["Mass"] = {"rule": "or", "pairs": 0}
    assert coverage_claim(results)["verdict"] == UNMEASURABLE


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
    assert f"[{ENOUGH} pairs; margin" in claim["measured"]


def test_multilayer_claim_uses_only_the_small_findings_the_model_has():
    claim = multilayer_claim(nih_results(multi_small=0.9, iba_small=0.1, class_iou_keys=("Nodule", "Effusion"),
                                         small_pairs=2 * ENOUGH))
    assert "IoU on Nodule:" in claim["measured"] and claim["verdict"] == HELD
    assert f"[{ENOUGH} pairs" in claim["measured"]  # the Nodule pairs only
    claim = multilayer_claim(nih_results(class_iou_keys=("Effusion",)))
    assert claim["verdict"] == TOO_FEW  # no small finding: no pair to rest on


def test_claims_on_the_nih_pairs_need_enough_of_them():
    results = nih_results(pairs=ENOUGH - 1, small_pairs=ENOUGH - 1)
    for claim_id in ("multilayer_fine_grained", "multilayer_best_iou"):
        claim = claim_of(results, claim_id)
        assert claim["verdict"] == TOO_FEW and f"[{ENOUGH - 1} pairs" in claim["measured"]


# Weighted BCE: better-aligned maps at about the same AUC, where there is something to align.


def test_weighted_bce_claim_not_testable_on_the_plain_phantom():
    # However the plain phantom's Table 3 comes out, its BCE model has no feature but the findings.
    for weighted_iou in (0.3 + ABOVE, 0.2):
        claim = claim_of(table3_results(weighted_iou=weighted_iou, bce_iou=0.3), "weighted_bce_alignment")
        assert claim["claim"].startswith("Weighted BCE")
        assert claim["verdict"] == UNTESTABLE and "cue study" in claim["experiment"]
        assert f"weighted BCE {fmt(weighted_iou)} vs BCE 0.300" in claim["measured"]


@pytest.mark.parametrize("weighted_share, bce_share, images, verdict", [
    (0.05, 0.05 + ABOVE, ENOUGH, HELD),
    (0.05, 0.05 + WITHIN, ENOUGH, NOT_HELD),
    (0.05 + ABOVE, 0.05, ENOUGH, NOT_HELD),
    (0.05, 0.05 + ABOVE, ENOUGH - 1, TOO_FEW),
])
def test_weighted_bce_claim_on_the_cue_data(weighted_share, bce_share, images, verdict):
    for table3_holds in (True, False):  # the plain phantom's Table 3 does not decide
        results = table3_results(weighted_iou=0.3 + (ABOVE if table3_holds else -ABOVE), bce_iou=0.3)
        results.update(cue_results(weighted_share=weighted_share, bce_share=bce_share, images=images))
        claim = claim_of(results, "weighted_bce_alignment")
        assert claim["verdict"] == verdict
        assert f"weighted BCE {fmt(weighted_share)} vs BCE {fmt(bce_share)}" in claim["measured"]
        assert f"[{images} pairs" in claim["measured"]


def test_weighted_bce_claim_not_testable_where_the_bce_model_ignores_the_marker():
    results = cue_results(weighted_share=0.05, bce_share=0.3, drop=USES_CUE / 2)
    claim = claim_of(results, "weighted_bce_alignment")
    assert claim["verdict"] == UNTESTABLE and "does not use the marker" in claim["measured"]


# Regression IBA follows the zone severities: every loss's PCC above the random map's.


@pytest.mark.parametrize("pcc, chance, images, verdict", [
    ({loss: 0.5 for loss in REGRESSION_LOSSES}, 0.0, ENOUGH, HELD),
    ({**{loss: 0.5 for loss in REGRESSION_LOSSES}, "maximize": 0.05}, 0.0, ENOUGH, NOT_HELD),  # one loss near chance
    ({loss: 0.5 for loss in REGRESSION_LOSSES}, 0.45, ENOUGH, NOT_HELD),  # a random map does as well
    ({loss: 0.5 for loss in REGRESSION_LOSSES}, 0.0, ENOUGH - 1, TOO_FEW),
])
def test_regression_claim(pcc, chance, images, verdict):
    claim = claim_of(regression_results(pcc, chance, images=images), "regression_severity")
    assert claim["claim"].startswith("Regression IBA shows")
    assert claim["verdict"] == verdict
    for loss, value in pcc.items():
        assert f"{loss} {fmt(value)}" in claim["measured"]
    assert f"random map {fmt(chance)}" in claim["measured"]
    assert "best other method: Saliency (Captum) 0.400" in claim["measured"]
    assert f"[{images} pairs; margin 0.100]" in claim["measured"]


def test_regression_claim_left_out_without_severity_maps():
    results = regression_results({loss: 0.5 for loss in REGRESSION_LOSSES})
    for value in results["regression"]["scores"].values():
        value.pop("pcc")  # what the regression study does when the items have no severity map
    assert claim_of(results, "regression_severity")["verdict"] == UNMEASURABLE


@pytest.mark.parametrize("gap_iba, pairs, verdict", [(0.5, ENOUGH, HELD), (0.2 + WITHIN, ENOUGH, NOT_HELD),
                                                     (NAN, ENOUGH, NOT_HELD), (0.5, ENOUGH - 1, TOO_FEW)])
def test_feature_importance_claim_against_the_median_of_the_others(gap_iba, pairs, verdict):
    def scores(gap):
        return {"insertion_auc": 0.5 + gap, "deletion_auc": 0.5}
    nih = {"pairs": pairs, "scores": {"iba": scores(gap_iba), "inverse": scores(0.5), "multilayer": scores(0.5),
                                      "gradcam": scores(0.1), "saliency": scores(0.2), "lrp": scores(0.3)}}
    claim = claim_of({"nih": nih}, "iba_feature_importance")
    assert claim["verdict"] == verdict and "median of the other methods 0.200" in claim["measured"]


@pytest.mark.parametrize("multi, best_other, verdict", [(0.3, 0.3 - ABOVE, HELD), (0.3, 0.3 - WITHIN, NOT_HELD)])
def test_multilayer_best_iou_claim(multi, best_other, verdict):
    nih = {"pairs": ENOUGH, "scores": {"multilayer": {"iou": multi}, "iba": {"iou": best_other},
                                       "gradcam": {"iou": 0.01}}}
    claim = claim_of({"nih": nih}, "multilayer_best_iou")
    assert claim["verdict"] == verdict and f"best other: IBA {fmt(best_other)}" in claim["measured"]


def detector_results(lung_iou, pairs=ENOUGH):
    def scores(a, b):
        return {"class_iou": {"score_3": a, "score_2": b}}
    return {"detectors": {"class_pairs": {"score_3": pairs, "score_2": pairs}, "lung_iou": lung_iou,
                          "scores": {"inverse": scores(0.5, 0.1), "multilayer": scores(0.2, 0.4),
                                     "iba": scores(0.3, 0.3)}}}


def test_brixia_claim_needs_inverse_or_multilayer_best_for_every_detector():
    results = detector_results({"score_3": 0.1, "score_2": 0.1})
    assert claim_of(results, "brixia_iou")["verdict"] == HELD
    results["detectors"]["scores"]["gradcam"] = {"class_iou": {"score_3": 0.1, "score_2": 0.45}}
    claim = claim_of(results, "brixia_iou")
    assert claim["verdict"] == NOT_HELD and "score_2: not best" in claim["measured"]
    results["detectors"]["class_pairs"]["score_2"] = ENOUGH - 1  # every detector judged needs its pairs
    assert claim_of(results, "brixia_iou")["verdict"] == TOO_FEW


def test_brixia_claim_not_testable_where_a_whole_lung_map_does_as_well():
    # A detector whose zones are (nearly) the lungs: a whole-lung map scores as well as the best method.
    claim = claim_of(detector_results({"score_3": 0.5, "score_2": 0.9}), "brixia_iou")
    assert claim["verdict"] == UNTESTABLE and "whole lung fields" in claim["measured"]
    assert "BrixIA" in claim["experiment"]
    # Only some detectors localise: the claim is judged on those, the others named.
    claim = claim_of(detector_results({"score_3": 0.1, "score_2": 0.4 - WITHIN}), "brixia_iou")
    assert claim["verdict"] == HELD
    assert "score_3: best" in claim["measured"] and "not testable on score_2" in claim["measured"]


@pytest.mark.parametrize("deviation, verdict", [(0.4, HELD), (0.05, NOT_HELD)])
def test_sensitivity_claim_reads_the_cell_setting(deviation, verdict):
    scores = {"regression_deviation": {"sensitivity_cells": {0.1: deviation, 0.5: deviation}},
              "random": {"sensitivity_cells": {0.1: 0.0, 0.5: 0.02}}}
    claim = claim_of({"regression": {"images": ENOUGH, "scores": scores}}, "regression_sensitivity_n")
    assert claim["verdict"] == verdict and "random map 0.010" in claim["measured"]


def test_every_study_gives_its_claims_in_the_papers_order():
    results = {**nih_results(), **table3_results(), **regression_results({loss: 0.5 for loss in REGRESSION_LOSSES}),
               **redundant_results(), **cue_results(weighted_share=0.05, bce_share=0.3)}
    found = claims(results)
    assert [c["id"] for c in found] == [c.id for c in CLAIMS]
    verdicts = {c["id"]: c["verdict"] for c in found}
    assert [verdicts[k] for k in ("inverse_all_regions", "multilayer_fine_grained", "weighted_bce_alignment",
                                  "regression_severity")] == [HELD, HELD, HELD, HELD]


def test_fmt_says_n_a_for_what_was_not_measured():
    assert fmt(NAN) == "n/a" and fmt(None) == "n/a"
    assert fmt(0.12345) == "0.123"
    assert fmt(1) == "1.000"


def test_every_claim_names_the_quality_of_the_model_it_is_measured_on():
    """The claim's study's held-out quality stands beside its verdict; a study without it gives no text."""
    results = {"nih": {"quality": {"metric": "AUC", "value": 0.5123, "images": 16}},
               "regression": {"quality": {"metric": "MAE", "value": 1.25, "images": 8}}}
    assert model_quality_text(results, "multilayer_best_iou") == "AUC 0.512 (16 images)"
    assert model_quality_text(results, "regression_severity") == "MAE 1.250 (8 images)"
    assert model_quality_text(results, "inverse_all_regions") == ""  # no redundant study here
    assert set(CLAIM_STUDY) == {claim.id for claim in CLAIMS}
