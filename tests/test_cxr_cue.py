"""The cue study: the phantom's cue is drawn where its mask says, at the set rates; a model
trained with the cue uses it (intervention) and one trained without does not; the share of a
map on the cue is computed right."""

import math

import pytest
import torch
from torch import nn

from captum_iba.cxr import FINDINGS, PhantomCXR, load_embedded_model, to_grey
from captum_iba.cxr.phantom.cue import cue_images, cue_table, intervention_drop, share_on_cue
from captum_iba.cxr.models.embedded import CUE_FINDING, CUE_MODELS, EMBEDDED_MODELS, embedded_model_path

SIZE = 64
FINDING = "Cardiomegaly"


def cue_phantom(n=8, **options):
    options = {"cue": FINDING, "cue_rates": (1.0, 1.0), **options}
    return PhantomCXR(n, size=SIZE, seed=5, **options)


def test_cue_is_drawn_exactly_inside_its_mask():
    phantom = cue_phantom()
    for i in range(len(phantom)):
        item, without = phantom.item(i), phantom.item(i, with_cue=False)
        mask = item["cue_mask"]
        assert item["cue"] == 1 and mask.dtype == torch.bool and mask.shape == (SIZE, SIZE)
        assert 0.005 < mask.float().mean() < 0.05  # a marker, not a region of the chest
        assert without["cue"] == 0 and not without["cue_mask"].any()
        changed = (item["image"] != without["image"]).any(0)
        assert not changed[~mask].any(), "the cue changed pixels outside its mask"
        assert changed[mask].float().mean() > 0.9
        brighter = to_grey(item["image"])[mask] - to_grey(without["image"])[mask]
        assert brighter.mean() > 0.3  # bright enough to learn
        assert torch.equal(item["labels"], without["labels"]) and torch.equal(item["masks"], without["masks"])
        # Mask in a top corner, clear of the findings' masks.
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert rows.max() < SIZE // 4 and (cols.max() < SIZE // 4 or cols.min() >= 3 * SIZE // 4)
        assert not (mask & item["masks"].any(0)).any()


def test_option_off_leaves_every_item_as_it_was():
    plain, cued = PhantomCXR(6, size=SIZE, seed=5), cue_phantom(6)
    for i in range(6):
        before, without = plain[i], cued.item(i, with_cue=False)
        assert "cue" not in before and "cue_mask" not in before
        for key, value in before.items():
            other = without[key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


def test_cue_goes_with_the_items_findings_even_when_omitted():
    phantom = cue_phantom(40, cue_rates=(1.0, 0.0), prevalence={FINDING: 0.5})
    for i in range(len(phantom)):
        has = FINDING in phantom.findings_of(i)
        assert phantom.cue_of(i) == has
        item = phantom.item(i, omit=[FINDING])
        assert item["cue"] == float(has) and item["labels"][FINDINGS.index(FINDING)] == 0


def test_cue_rates_are_as_set():
    n, rates = 3000, (0.8, 0.1)
    phantom = PhantomCXR(n, size=SIZE, cue=FINDING, cue_rates=rates, prevalence={FINDING: 0.3})
    cue = phantom.targets("cue").bool()
    has = phantom.targets("labels")[:, FINDINGS.index(FINDING)].bool()
    for rate, group in zip(rates, (has, ~has)):
        observed, count = cue[group].float().mean().item(), int(group.sum())
        assert abs(observed - rate) < 4 * math.sqrt(rate * (1 - rate) / count), (observed, rate, count)
    first = [i for i in range(n) if phantom.cue_of(i)][:3]
    assert [phantom[i]["cue"].item() for i in first] == [1.0] * 3


def test_cue_option_bad_input():
    with pytest.raises(ValueError, match="cue"):
        PhantomCXR(2, cue="Hernia")
    with pytest.raises(ValueError, match="cue"):
        PhantomCXR(2, task="brixia", cue=FINDING)
    with pytest.raises(ValueError, match="cue_rates"):
        PhantomCXR(2, cue=FINDING, cue_rates=(0.5, 1.5))
    with pytest.raises(KeyError, match="cue"):
        PhantomCXR(2).targets("cue")
    with pytest.raises(ValueError, match="phantom"):
        cue_images(PhantomCXR(4), 1)
    with pytest.raises(ValueError, match="only 0 of its 4"):
        cue_images(cue_phantom(4, cue_rates=(0.0, 0.0)), 1)


# ---------------------------------------------------------------- the share of a map on the cue


def square_masks(n, size, corner):
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, :corner, :corner] = True
    return masks


def test_share_on_cue_hand_made_maps():
    masks = square_masks(4, 8, 4)  # a quarter of the image
    maps = torch.zeros(4, 1, 8, 8)
    maps[0] = 1.0  # even: the mask's area
    maps[1, 0, :4, :4] = 2.0  # all on the cue
    maps[2, 0, 4:, 4:] = 3.0  # none on the cue
    maps[3] = -5.0  # negative evidence elsewhere is not mass
    maps[3, 0, 0, 0], maps[3, 0, 7, 7] = 1.0, 3.0
    assert torch.allclose(share_on_cue(maps, masks), torch.tensor([0.25, 1.0, 0.0, 0.25]))
    # A coarse map is brought to the mask's size first: an even 2x2 map still gives the area.
    assert torch.allclose(share_on_cue(torch.ones(1, 1, 2, 2), square_masks(1, 8, 2)), torch.tensor([4 / 64]))
    assert torch.isnan(share_on_cue(torch.zeros(1, 1, 8, 8), masks[:1])).all()
    with pytest.raises(ValueError, match="cue_masks"):
        share_on_cue(maps, masks.float())
    with pytest.raises(ValueError, match="maps"):
        share_on_cue(maps[:2], masks)


def test_cue_table_rows():
    masks = square_masks(3, 8, 4)
    cue_model, clean_model = nn.Identity(), nn.Identity()
    calls = []

    def on_cue_for_the_cue_model(model, images, target):
        calls.append((model, target))
        return masks[:, None].float() if model is cue_model else torch.ones(len(images), 1, 8, 8)

    methods = {"follows": on_cue_for_the_cue_model, "even": lambda model, images, target: torch.ones(3, 1, 4, 4)}
    rows = cue_table(methods, cue_model, clean_model, torch.zeros(3, 3, 8, 8), masks, target=1)
    assert [row["method"] for row in rows] == ["follows", "even"]
    assert calls == [(cue_model, 1), (clean_model, 1)]
    follows, even = rows
    assert follows["cue_model"] == pytest.approx(1.0) and follows["clean_model"] == pytest.approx(0.25)
    assert follows["difference"] == pytest.approx(0.75) and follows["difference_se"] == pytest.approx(0.0)
    assert even["difference"] == pytest.approx(0.0) and even["n"] == 3
    with pytest.raises(ValueError, match="methods"):
        cue_table({}, cue_model, clean_model, torch.zeros(3, 3, 8, 8), masks, 1)


# ---------------------------------------------------------------- the intervention on trained models


@pytest.fixture(scope="module")
def small_cue_models(tmp_path_factory):
    """The embedded cue models' recipes, at 32 px on 768 images (about 15 s for both)."""
    cache = tmp_path_factory.mktemp("cue-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPTUM_IBA_CACHE", str(cache))
        recipe = {"size": 32, "train_images": 768, "test_images": 32, "epochs": 6}
        return {name: load_embedded_model(name, progress=False, **recipe) for name in ("nih_cue", "nih_cue_clean")}


def test_the_cue_model_uses_the_cue_and_the_clean_model_does_not(small_cue_models):
    phantom = PhantomCXR(600, size=32, seed=2, cue=CUE_FINDING)
    indices = cue_images(phantom, 16)
    assert all(phantom.cue_of(i) for i in indices)
    used = intervention_drop(small_cue_models["nih_cue"], phantom, indices, batch_size=5)
    ignored = intervention_drop(small_cue_models["nih_cue_clean"], phantom, indices)
    assert used.drop.shape == (16,) and torch.allclose(used.drop, used.with_cue - used.without_cue)
    assert used.drop.mean() > 0.1 and (used.drop > 0).float().mean() >= 0.75
    assert ignored.drop.abs().mean() < 0.05 and used.drop.mean() > 5 * ignored.drop.abs().mean()
    with pytest.raises(ValueError, match="carry no cue"):
        no_cue = next(i for i in range(len(phantom)) if not phantom.cue_of(i))
        intervention_drop(small_cue_models["nih_cue"], phantom, [no_cue])


def test_cue_models_are_separate_from_the_papers_four():
    assert set(CUE_MODELS) == {"nih_cue", "nih_cue_clean", "nih_cue_weighted_bce"}
    assert not set(CUE_MODELS) & set(EMBEDDED_MODELS)
    paths = {embedded_model_path(name) for name in EMBEDDED_MODELS + CUE_MODELS}
    assert len(paths) == len(EMBEDDED_MODELS) + len(CUE_MODELS)
    assert CUE_FINDING in FINDINGS
