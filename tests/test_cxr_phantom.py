"""The chest X-ray phantom: determinism, item layout, and ground truth that matches the pixels."""

import numpy as np
import pytest
import torch

from captum_iba.cxr import DEFAULT_PREVALENCE, DETECTORS, FINDINGS, ZONES, PhantomCXR, collate, to_grey, to_model_input

SIZE = 64


def only(finding, p=1.0):
    """Prevalences that draw ``finding`` with probability ``p`` and nothing else."""
    return {name: (p if name == finding else 0.0) for name in FINDINGS}


@pytest.mark.parametrize("task", ["nih", "brixia"])
def test_same_seed_same_item_and_items_independent_of_n(task):
    a, b = PhantomCXR(4, size=SIZE, seed=3, task=task), PhantomCXR(9, size=SIZE, seed=3, task=task)
    for key, value in a[2].items():
        other = b[2][key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    assert not torch.equal(a[2]["image"], PhantomCXR(4, size=SIZE, seed=4, task=task)[2]["image"])
    assert not torch.equal(a[1]["image"], a[2]["image"])
    assert a[-1]["image_id"] == a[3]["image_id"] == f"phantom-{task}-3-00003"


def test_nih_item_layout():
    item = PhantomCXR(3, size=SIZE, seed=1, prevalence=only("Nodule"))[0]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["labels"].shape == (8,) and item["labels"].dtype == torch.float32
    assert item["masks"].shape == (8, SIZE, SIZE) and item["masks"].dtype == torch.bool
    assert item["labels"].tolist() == [float(name == "Nodule") for name in FINDINGS]
    assert all(box[0] == "Nodule" and len(box) == 5 for box in item["boxes"]) and item["boxes"]
    grey = to_grey(item["image"])
    assert 0.0 <= grey.min() and grey.max() <= 1.0 and grey.std() > 0.1  # a real image, not a flat field


def test_brixia_item_layout():
    item = PhantomCXR(2, size=SIZE, task="brixia")[1]
    assert item["zone_scores"].shape == (6,) and item["zone_scores"].dtype == torch.int64
    assert item["score"].shape == () and item["score"] == item["zone_scores"].sum()
    assert item["zone_masks"].shape == (6, SIZE, SIZE) and item["zone_masks"].dtype == torch.bool
    assert item["severity_map"].shape == (SIZE, SIZE) and item["detectors"].shape == (len(DETECTORS),)


@pytest.mark.parametrize("finding", FINDINGS)
def test_finding_changes_the_pixels_inside_its_mask_and_no_others(finding):
    """Re-rendering without the finding (same anatomy, same texture) differs only inside its mask."""
    phantom = PhantomCXR(4, size=SIZE, seed=7, prevalence=only(finding))
    k = FINDINGS.index(finding)
    for i in range(len(phantom)):
        with_it, without = phantom.item(i), phantom.item(i, omit=[finding])
        mask = with_it["masks"][k]
        assert mask.any() and not without["masks"].any() and without["labels"].sum() == 0
        change = (to_grey(with_it["image"]) - to_grey(without["image"])).abs()
        assert change[~mask].max() < 1e-5
        assert change[mask].mean() > 0.02
        # The boxes (one per lesion) enclose the mask, tightly.
        boxes = [box for box in with_it["boxes"] if box[0] == finding]
        covered = torch.zeros_like(mask)
        for _, x, y, w, h in boxes:
            covered[int(y) : int(y + h), int(x) : int(x + w)] = True
        assert not (mask & ~covered).any()
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert min(y for _, _, y, _, _ in boxes) == rows.min() and min(x for _, x, _, _, _ in boxes) == cols.min()
        assert max(y + h for _, _, y, _, h in boxes) == rows.max() + 1
        assert max(x + w for _, x, _, w, _ in boxes) == cols.max() + 1


def test_omitting_one_finding_leaves_the_others_untouched():
    phantom = PhantomCXR(1, size=SIZE, seed=2, prevalence={"Mass": 1.0, "Effusion": 1.0, "Infiltration": 0.0})
    both, without_mass = phantom.item(0), phantom.item(0, omit=["Mass"])
    effusion = FINDINGS.index("Effusion")
    assert torch.equal(both["masks"][effusion], without_mass["masks"][effusion])
    assert without_mass["labels"][FINDINGS.index("Mass")] == 0 and without_mass["labels"][effusion] == 1


@pytest.mark.parametrize("finding", ["Effusion", "Nodule"])
def test_some_findings_come_in_two_places(finding):
    phantom = PhantomCXR(20, size=SIZE, seed=0, prevalence=only(finding))
    counts = [len(phantom[i]["boxes"]) for i in range(len(phantom))]
    assert 1 in counts and 2 in counts


def test_findings_per_image_bounded_and_prevalence_followed():
    phantom = PhantomCXR(3000, size=SIZE, seed=0, max_findings=3)
    labels = phantom.targets("labels")
    assert labels.sum(1).max() <= 3 and (labels.sum(1) == 0).any()
    expected = torch.tensor([DEFAULT_PREVALENCE[name] for name in FINDINGS])
    # Capping at 3 findings lowers prevalences a little, never raises them.
    assert torch.all(labels.mean(0) <= expected + 0.03) and torch.all(labels.mean(0) >= 0.8 * expected - 0.02)
    assert torch.equal(labels[5], phantom[5]["labels"])


def test_zone_masks_tile_the_lungs_and_severity_map_matches_scores():
    phantom = PhantomCXR(6, size=SIZE, seed=4, task="brixia")
    for i in range(len(phantom)):
        item = phantom[i]
        masks, scores = item["zone_masks"], item["zone_scores"]
        assert torch.all(masks.sum(0) <= 1), "zones overlap"
        assert all(mask.any() for mask in masks)
        centre_rows = [torch.nonzero(mask)[:, 0].float().mean() for mask in masks]
        centre_cols = [torch.nonzero(mask)[:, 1].float().mean() for mask in masks]
        assert centre_rows[0] < centre_rows[1] < centre_rows[2] and centre_rows[3] < centre_rows[4] < centre_rows[5]
        assert max(centre_cols[:3]) < SIZE / 2 < min(centre_cols[3:])
        expected = (scores.view(6, 1, 1).float() * masks).sum(0)
        assert torch.equal(item["severity_map"], expected)
        assert torch.all(item["severity_map"][~masks.any(0)] == 0)
        exists = [(scores == 3).any(), (scores == 2).any(), (scores <= 1).any()]
        assert item["detectors"].tolist() == [float(e) for e in exists]


def test_zone_masks_cover_the_lung_fields():
    """The zones' union is exactly the dark (aerated) lung: omitting every zone's opacity changes nothing outside it."""
    phantom = PhantomCXR(8, size=SIZE, seed=1, task="brixia")
    for i in range(len(phantom)):
        item, clear = phantom.item(i), phantom.item(i, omit=ZONES)
        lungs = item["zone_masks"].any(0)
        change = (to_grey(item["image"]) - to_grey(clear["image"])).abs()
        assert change[~lungs].max() < 1e-5
        assert clear["score"] == 0 and torch.all(clear["severity_map"] == 0)
        grey = to_grey(clear["image"])
        assert grey[lungs].mean() < grey[~lungs & (grey > 0.15)].mean() - 0.15  # aerated lung is darker than the body


def test_zone_opacity_grows_with_the_score():
    """A zone scored s changes the image inside that zone only, and more for a higher s."""
    phantom = PhantomCXR(30, size=SIZE, seed=2, task="brixia")
    change_by_score = {1: [], 2: [], 3: []}
    for i in range(len(phantom)):
        item = phantom.item(i)
        zone = int(torch.argmax(item["zone_scores"]))
        score = int(item["zone_scores"][zone])
        if score == 0:
            continue
        cleared = phantom.item(i, omit=[ZONES[zone]])
        mask = item["zone_masks"][zone]
        change = to_grey(item["image"]) - to_grey(cleared["image"])
        assert change[~mask].abs().max() < 1e-5
        change_by_score[score].append(change[mask].mean().item())
    means = [np.mean(change_by_score[s]) for s in (1, 2, 3) if change_by_score[s]]
    assert len(means) >= 2 and all(m > 0 for m in means) and means == sorted(means)


def test_targets_match_items_without_rendering():
    phantom = PhantomCXR(5, size=SIZE, seed=9, task="brixia")
    for key in ("zone_scores", "score", "detectors"):
        assert torch.equal(phantom.targets(key), torch.stack([phantom[i][key] for i in range(5)]))
    with pytest.raises(KeyError, match="labels"):
        phantom.targets("labels")


def test_collate_keeps_boxes_per_image():
    phantom = PhantomCXR(3, size=SIZE, seed=0, prevalence={"Nodule": 1.0, "Infiltration": 0.0})
    batch = collate([phantom[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, SIZE, SIZE) and batch["masks"].shape == (3, 8, SIZE, SIZE)
    assert [len(boxes) for boxes in batch["boxes"]] == [len(phantom[i]["boxes"]) for i in range(3)]
    assert batch["image_id"] == [phantom[i]["image_id"] for i in range(3)]


def test_model_input_round_trip():
    grey = np.random.default_rng(0).random((2, 8, 8), dtype=np.float32)
    image = to_model_input(grey)
    assert image.shape == (2, 3, 8, 8) and not torch.equal(image[:, 0], image[:, 1])  # per-channel normalisation
    assert torch.allclose(to_grey(image), torch.from_numpy(grey), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=-1), "n: expected an int >= 0"),
        (dict(n=2, size=16), "size: expected an int >= 32"),
        (dict(n=2, size=64.0), "size"),
        (dict(n=2, task="chexpert"), "task: expected one of"),
        (dict(n=2, seed=-3), "seed"),
        (dict(n=2, prevalence={"Hernia": 0.1}), "unknown findings \\['Hernia'\\]"),
        (dict(n=2, prevalence={"Mass": 1.5}), "probabilities in \\[0, 1\\]"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):  # TypeError for a value of the wrong type
        PhantomCXR(**kwargs)


def test_bad_index_and_omit():
    phantom = PhantomCXR(2, size=SIZE)
    with pytest.raises(IndexError, match="index"):
        phantom[2]
    with pytest.raises(ValueError, match="omit"):
        phantom.item(0, omit=["Hernia"])
