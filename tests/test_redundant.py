"""Redundant against joint evidence: the phantom's two-part findings are drawn where their masks say and
labelled by their rule (OR, AND); a model trained on them follows the rules by intervention; the
parts a map reaches and the outputs after removing them are computed right; the study fills its
results and the sufficiency claim reads them."""

import math

import pytest
import torch
from torch import nn

from captum_iba.app.report._study import ReportInputs
from captum_iba.app.report.claims import claims
from captum_iba.app.report.evaluation import EvaluationSettings
from captum_iba.app.report.redundant import (DETECTED_DROP, REDUNDANT_METHODS, RULE_SHARE, follows_rule,
                                             redundant_study)
from captum_iba.cxr import FINDINGS, PhantomCXR, load_embedded_model, to_grey
from captum_iba.cxr.models.embedded import (CUE_MODELS, EMBEDDED_MODELS, REDUNDANT_MODELS, REDUNDANT_PHANTOM,
                                            embedded_model_path)
from captum_iba.cxr.phantom.dataset import BOTH_PARTS_RATE, DECOY_RATE
from captum_iba.cxr.phantom.parts import (REACHED_FRACTION, pair_images, part_intervention, parts_reached,
                                          removal_outputs)

SIZE = 64
OR, AND = "Mass", "Effusion"


def two_part_phantom(n=12, seed=5, **options):
    options = {"redundant": OR, "conjunctive": (AND,), "prevalence": {OR: 0.6, AND: 0.6}, **options}
    return PhantomCXR(n, size=SIZE, seed=seed, **options)


def test_parts_are_drawn_one_per_lung_exactly_inside_their_masks():
    phantom = two_part_phantom()
    assert phantom.two_part == (AND, OR)  # the order of FINDINGS
    seen = 0
    for i in range(len(phantom)):
        item = phantom.item(i)
        assert item["part_masks"].shape == (2, 2, SIZE, SIZE) and item["part_masks"].dtype == torch.bool
        assert item["parts"].tolist() == [list(map(float, phantom.parts_of(i)[name])) for name in phantom.two_part]
        for row, name in enumerate(phantom.two_part):
            for side in (0, 1):
                mask = item["part_masks"][row, side]
                assert mask.any() == bool(item["parts"][row, side])
                if not mask.any():
                    continue
                seen += 1
                cols = torch.nonzero(mask)[:, 1].float()
                assert (cols.mean() < SIZE / 2) == (side == 0), "a part outside its lung"
                without = phantom.item(i, omit_parts=[(name, side)])
                changed = (to_grey(item["image"]) - to_grey(without["image"])).abs() > 1e-5
                assert not changed[~mask].any(), "removing a part changed pixels outside its mask"
                assert changed[mask].float().mean() > 0.3
                assert not without["part_masks"][row, side].any()
                assert torch.equal(without["part_masks"][row, 1 - side], item["part_masks"][row, 1 - side])
    assert seen >= 10


def test_labels_follow_or_and_and_under_removal():
    phantom = two_part_phantom(40)
    k_or, k_and = FINDINGS.index(OR), FINDINGS.index(AND)
    for i in pair_images(phantom, OR, 3):
        for removed, label in (([], 1.0), ([(OR, 0)], 1.0), ([(OR, 1)], 1.0), ([(OR, 0), (OR, 1)], 0.0)):
            item = phantom.item(i, omit_parts=removed)
            assert item["labels"][k_or] == label
            assert item["masks"][k_or].any() == bool(label)
            assert torch.equal(item["masks"][k_or], item["part_masks"][phantom.two_part.index(OR)].any(0))
    for i in pair_images(phantom, AND, 3):
        for removed, label in (([], 1.0), ([(AND, 0)], 0.0), ([(AND, 1)], 0.0)):
            item = phantom.item(i, omit_parts=removed)
            assert item["labels"][k_and] == label
            # One part alone is a decoy: in part_masks, not in the finding's mask or boxes.
            assert item["masks"][k_and].any() == bool(label)
            assert any(box[0] == AND for box in item["boxes"]) == bool(label)
            assert item["part_masks"][phantom.two_part.index(AND)].any()


def test_rates_of_one_part_both_parts_and_decoys():
    n = 3000
    phantom = PhantomCXR(n, size=SIZE, **REDUNDANT_PHANTOM)
    parts, labels = phantom.targets("parts"), phantom.targets("labels")
    row_or, row_and = phantom.two_part.index(OR), phantom.two_part.index(AND)
    has_or, has_and = labels[:, FINDINGS.index(OR)].bool(), labels[:, FINDINGS.index(AND)].bool()
    shown_or, shown_and = parts[:, row_or].sum(1), parts[:, row_and].sum(1)
    assert torch.equal(has_or, shown_or > 0) and torch.equal(has_and, shown_and == 2)  # OR and AND labels
    for observed, rate, count in (((shown_or[has_or] == 2).float().mean(), BOTH_PARTS_RATE, has_or.sum()),
                                  ((shown_and[~has_and] == 1).float().mean(), DECOY_RATE, (~has_and).sum())):
        assert abs(observed - rate) < 4 * math.sqrt(rate * (1 - rate) / count), (observed, rate)
    one = parts[has_or & (shown_or == 1), row_or]
    assert abs(one[:, 0].mean() - 0.5) < 0.1  # either lung as often
    assert labels[:, [k for k, name in enumerate(FINDINGS) if name not in (OR, AND)]].sum() == 0
    assert torch.equal(parts[7], phantom[7]["parts"])


def test_option_off_and_other_findings_leave_items_as_they_were():
    plain = PhantomCXR(6, size=SIZE, seed=5, prevalence={"Nodule": 0.5})
    assert "parts" not in plain[0] and "part_masks" not in plain[0]
    with_parts = PhantomCXR(6, size=SIZE, seed=5, prevalence={"Nodule": 0.5}, redundant="Pneumonia",
                            conjunctive=["Pneumothorax"])
    k = [FINDINGS.index(name) for name in FINDINGS if name not in ("Pneumonia", "Pneumothorax")]
    for i in range(6):
        before = plain.item(i, omit=["Pneumonia", "Pneumothorax"])
        after = with_parts.item(i, omit=["Pneumonia", "Pneumothorax"])
        assert torch.equal(before["image"], after["image"]) and torch.equal(before["masks"][k], after["masks"][k])
        assert before["boxes"] == after["boxes"]


def test_two_part_options_bad_input():
    with pytest.raises(ValueError, match="redundant"):
        PhantomCXR(2, redundant="Cardiomegaly")  # one heart: no parts
    with pytest.raises(ValueError, match="conjunctive"):
        PhantomCXR(2, conjunctive=["Hernia"])
    with pytest.raises(ValueError, match="one or the other"):
        PhantomCXR(2, redundant=OR, conjunctive=OR)
    with pytest.raises(ValueError, match="nih task"):
        PhantomCXR(2, task="brixia", redundant=OR)
    with pytest.raises(KeyError, match="parts"):
        PhantomCXR(2).targets("parts")
    phantom = two_part_phantom(2)
    with pytest.raises(ValueError, match="omit_parts"):
        phantom.item(0, omit_parts=[(OR, 2)])
    with pytest.raises(ValueError, match="omit_parts"):
        phantom.item(0, omit_parts=[("Nodule", 0)])
    with pytest.raises(ValueError, match="two-part finding"):
        pair_images(phantom, "Nodule", 1)
    with pytest.raises(ValueError, match="removed"):
        removal_outputs(nn.Linear(1, 1), phantom, OR, [0], torch.zeros(2, 2, dtype=torch.bool))


# ---------------------------------------------------------------- the parts a map reaches, the outputs without them


def test_parts_reached_by_the_share_of_each_part_covered():
    parts = torch.zeros(3, 2, 8, 8, dtype=torch.bool)
    parts[:, 0, :, :4] = True  # 32 pixels each
    parts[:, 1, :, 4:] = True
    maps = torch.zeros(3, 1, 8, 8)
    maps[0, 0, :, :4] = 1.0  # the left part only
    maps[1] = 1.0
    maps[1, 0, 0, 0] = 0.0  # both parts, near-even
    left = torch.nonzero(parts[2, 0])[: round(REACHED_FRACTION * 32)]
    maps[2, 0, left[1:, 0], left[1:, 1]] = 1.0  # one pixel short of the share of the left part
    reached = parts_reached(maps, parts, "otsu")
    assert reached.tolist() == [[True, False], [True, True], [False, False]]
    maps[2, 0, left[0, 0], left[0, 1]] = 1.0
    assert parts_reached(maps, parts, "otsu")[2].tolist() == [True, False]
    # A coarse map is brought to the masks' size first.
    assert parts_reached(torch.tensor([[[[1.0, 0.0]] * 2]]), parts[:1], "otsu").tolist() == [[True, False]]
    empty = parts.clone()
    empty[0, 1] = False
    assert parts_reached(torch.ones(3, 1, 8, 8), empty, "top:1.0")[0].tolist() == [True, False]  # no pixel: not reached
    with pytest.raises(ValueError, match="part_masks"):
        parts_reached(maps, parts.float(), "otsu")


class Recorder(nn.Module):
    """Outputs 8 logits of zero and keeps the images it saw."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, images):
        self.seen.append(images.clone())
        return self.weight.expand(len(images), len(FINDINGS))


def test_removal_outputs_draws_each_item_without_exactly_its_removed_parts():
    phantom = two_part_phantom(40)
    indices = pair_images(phantom, OR, 3)
    removed = torch.tensor([[True, False], [False, True], [True, True]])
    model = Recorder()
    out = removal_outputs(model, phantom, OR, indices, removed, batch_size=2)
    assert out.shape == (3,) and torch.allclose(out, torch.full((3,), 0.5))
    seen = torch.cat(model.seen)
    for image, index, (left, right) in zip(seen, indices, removed.tolist()):
        expected = phantom.item(index, omit_parts=[(OR, side) for side, gone in ((0, left), (1, right)) if gone])
        assert torch.equal(image, expected["image"])
    check = part_intervention(Recorder(), phantom, OR, indices)
    assert [len(values) for values in check] == [3, 3, 3, 3]


# ---------------------------------------------------------------- a trained model follows the rules


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """The embedded nih_redundant recipe at 32 px on 768 images (about 20 s)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPTUM_IBA_CACHE", str(tmp_path_factory.mktemp("redundant-cache")))
        return load_embedded_model("nih_redundant", progress=False, size=32, train_images=768, test_images=64,
                                   epochs=6)


def test_the_trained_model_holds_either_lesion_sufficient_and_both_parts_needed(small_model):
    phantom = PhantomCXR(600, size=32, seed=2, **REDUNDANT_PHANTOM)
    lesions = part_intervention(small_model, phantom, OR, pair_images(phantom, OR, 16))
    assert lesions.full.mean() > 0.7 and lesions.without_both.mean() < 0.2  # it sees the finding
    for without_one in (lesions.without_left, lesions.without_right):  # OR: either lesion keeps the output
        assert (lesions.full - without_one).mean() < RULE_SHARE * (lesions.full - lesions.without_both).mean()
    parts = part_intervention(small_model, phantom, AND, pair_images(phantom, AND, 16))
    assert parts.full.mean() > 0.6
    for without_one in (parts.without_left, parts.without_right):  # AND: either part missing drops it
        assert (parts.full - without_one).mean() > RULE_SHARE * (parts.full - parts.without_both).mean()


def test_follows_rule_reads_the_drops():
    assert follows_rule({"one_removed_drop": 0.1, "both_removed_drop": 0.9}, "or")
    assert not follows_rule({"one_removed_drop": 0.1, "both_removed_drop": 0.9}, "and")
    assert follows_rule({"one_removed_drop": 0.8, "both_removed_drop": 0.9}, "and")
    assert not follows_rule({"one_removed_drop": 0.8, "both_removed_drop": 0.9}, "or")
    assert not follows_rule({"one_removed_drop": 0.0, "both_removed_drop": DETECTED_DROP / 2}, "or")  # unseen
    assert not follows_rule({"one_removed_drop": math.nan, "both_removed_drop": math.nan}, "and")


def test_the_study_fills_its_results_and_the_claim_reads_them(small_model):
    phantom = PhantomCXR(400, size=32, seed=1000, **REDUNDANT_PHANTOM)
    inputs = ReportInputs(models={"nih_redundant": small_model}, redundant=phantom, redundant_images=3,
                          suite_options={"iba_options": {"steps": 2, "noise_draws": 2}, "layer": "features.denseblock2",
                                         "multilayer_layers": ("features.denseblock1", "features.denseblock2")})
    results, logged = {}, []
    redundant_study(inputs, results, {}, EvaluationSettings(batch_size=4), False, logged.append)
    study = results["redundant"]
    assert set(study["findings"]) == {OR, AND} and len(logged) == 2
    for finding, rule in ((OR, "or"), (AND, "and")):
        entry = study["findings"][finding]
        assert entry["rule"] == rule and entry["pairs"] == 3 and entry["target"] == FINDINGS.index(finding)
        assert set(entry["methods"]) == set(REDUNDANT_METHODS)
        check = entry["model_check"]
        assert check["both_removed_drop"] == pytest.approx(check["full"] - check["without_both"])
        for row in entry["methods"].values():
            assert 0 <= row["reached"] <= 1 and row["both_reached"] + row["one_reached"] <= 1 + 1e-6
            assert 0.5 <= row["heavier_share"] <= 1 or math.isnan(row["heavier_share"])
            assert -1 <= row["drop"] <= 1
            if row["both_reached"] == 1:  # every pair had both parts removed
                assert row["drop"] == pytest.approx(check["both_removed_drop"], abs=1e-6)
            if row["reached"] == 0:
                assert row["drop"] == pytest.approx(0.0, abs=1e-6)
        comparison = entry["inverse_minus_iba"]
        assert comparison["reached"]["difference"] == pytest.approx(
            entry["methods"]["inverse"]["reached"] - entry["methods"]["iba"]["reached"])
    row = {c["id"]: c for c in claims(results)}["inverse_all_regions"]
    assert row["verdict"] == "too few pairs" and "OR (Mass, 3 pairs" in row["measured"]
    assert "AND (Effusion, 3 pairs" in row["measured"]


def test_the_redundant_model_is_separate_from_the_others():
    assert REDUNDANT_MODELS == ("nih_redundant",)
    assert not set(REDUNDANT_MODELS) & set(EMBEDDED_MODELS + CUE_MODELS)
    paths = {embedded_model_path(name) for name in EMBEDDED_MODELS + CUE_MODELS + REDUNDANT_MODELS}
    assert len(paths) == len(EMBEDDED_MODELS) + len(CUE_MODELS) + len(REDUNDANT_MODELS)
