"""Properties of the metrics for generated models, maps, masks and transforms."""

import math

import torch
from hypothesis import assume, given, strategies as st
from torch import nn

from captum_iba.maps import resize_map
from captum_iba.metrics import (
    insertion_deletion,
    localization_iou,
    map_correlation,
    pointing_game,
    sensitivity_n,
)

SEEDS = st.integers(0, 2**31 - 1)
SIDES = st.integers(3, 9)


def _generator(seed):
    return torch.Generator().manual_seed(seed)


class PixelLinear(nn.Module):
    """``f(x) = sum(w * x) + b`` over a single-channel image: one output per sample."""

    def __init__(self, weights, bias):
        super().__init__()
        self.weights, self.bias = weights, bias

    def forward(self, x):
        return (x[:, 0] * self.weights).sum((1, 2)) + self.bias


@st.composite
def linear_cases(draw):
    """A linear model, inputs, and its exact attribution ``w * x`` (zero baseline)."""
    n, height, width, seed = draw(st.integers(1, 3)), draw(SIDES), draw(SIDES), draw(SEEDS)
    weights = torch.randn(height, width, generator=_generator(seed), dtype=torch.float64)
    x = torch.randn(n, 1, height, width, generator=_generator(seed + 1), dtype=torch.float64)
    model = PixelLinear(weights, draw(st.floats(-2, 2)))
    return model, x, x * weights


@given(linear_cases(), st.integers(1, 12), st.sampled_from(["zero", "blur", 0.5]), SEEDS)
def test_insertion_and_deletion_areas_lie_within_the_scores_along_the_curve(case, steps, baseline, seed):
    model, x, _ = case
    maps = torch.rand(x.shape[0], *x.shape[-2:], generator=_generator(seed), dtype=torch.float64)
    result = insertion_deletion(model, x, maps, n_steps=steps, baseline=baseline)
    for auc, curve in ((result.insertion_auc, result.insertion_curve), (result.deletion_auc, result.deletion_curve)):
        slack = 1e-9 * (1 + curve.abs().amax(1))
        assert (auc >= curve.amin(1) - slack).all() and (auc <= curve.amax(1) + slack).all()


@given(linear_cases(), st.integers(1, 12), SEEDS)
def test_deleting_by_the_exact_attribution_of_a_linear_model_beats_a_random_map(case, steps, seed):
    model, x, exact = case
    random_map = torch.rand(exact.shape, generator=_generator(seed), dtype=torch.float64)
    ours = insertion_deletion(model, x, exact, n_steps=steps, baseline="zero")
    other = insertion_deletion(model, x, random_map, n_steps=steps, baseline="zero")
    assert (ours.deletion_auc <= other.deletion_auc + 1e-9).all()


@given(linear_cases(), st.data())
def test_sensitivity_n_of_the_exact_attribution_of_a_linear_model_is_one(case, data):
    model, x, exact = case
    n_pixels = x.shape[-1] * x.shape[-2]
    counts = data.draw(st.lists(st.integers(1, n_pixels - 1), min_size=1, max_size=3))
    result = sensitivity_n(model, x, exact, n=counts, num_masks=6, baseline="zero", seed=data.draw(SEEDS))
    defined = ~result.isnan()
    assert torch.allclose(result[defined], torch.ones_like(result[defined]), atol=1e-6)


@st.composite
def masks(draw):
    n, height, width = draw(st.integers(1, 3)), draw(SIDES), draw(SIDES)
    mask = torch.rand(n, height, width, generator=_generator(draw(SEEDS))) < draw(st.floats(0.1, 0.9))
    assume(mask.flatten(1).any(1).all() and (~mask).flatten(1).any(1).all())
    return mask


@given(masks())
def test_iou_is_one_for_a_map_equal_to_its_mask_and_zero_for_a_disjoint_one(mask):
    for threshold in ("otsu", 0.01):
        assert torch.equal(localization_iou(mask.double(), mask, threshold=threshold).iou, torch.ones(len(mask), dtype=torch.float64))
        assert torch.equal(localization_iou((~mask).double(), mask, threshold=threshold).iou, torch.zeros(len(mask), dtype=torch.float64))


@st.composite
def boxes(draw):
    height, width, n = draw(SIDES), draw(SIDES), draw(st.integers(1, 3))
    per_image = []
    for _ in range(n):
        image_boxes = []
        for _ in range(draw(st.integers(0, 3))):
            x, y = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
            image_boxes.append([x, y, draw(st.integers(1, width - x)), draw(st.integers(1, height - y))])
        per_image.append(image_boxes)
    return per_image, (height, width)


@given(boxes(), SEEDS)
def test_boxes_score_as_their_rasterised_masks(case, seed):
    per_image, (height, width) = case
    rasterised = torch.zeros(len(per_image), height, width, dtype=torch.bool)
    for i, image_boxes in enumerate(per_image):
        for x, y, w, h in image_boxes:
            rasterised[i, y:y + h, x:x + w] = True
    maps = torch.rand(len(per_image), height, width, generator=_generator(seed))
    for threshold in ("otsu", "top:0.3"):
        from_boxes = localization_iou(maps, per_image, threshold=threshold).iou
        assert torch.allclose(from_boxes, localization_iou(maps, rasterised, threshold=threshold).iou, equal_nan=True)
    assert torch.equal(pointing_game(maps, per_image, tolerance=2).hits, pointing_game(maps, rasterised, tolerance=2).hits)


INCREASING = [
    lambda m: 3 * m + 1,
    torch.exp,
    lambda m: m**3 + m,
    lambda m: torch.atan(m) * 100,
]


@given(masks(), SEEDS, st.sampled_from(INCREASING), st.floats(0.05, 0.9))
def test_pointing_game_and_top_fraction_iou_depend_only_on_the_ranking(mask, seed, transform, fraction):
    maps = torch.randn(mask.shape, generator=_generator(seed), dtype=torch.float64)
    moved = transform(maps)
    assume(torch.isfinite(moved).all() and moved.unique().numel() == maps.unique().numel())  # no ties made
    assert torch.equal(pointing_game(moved, mask, tolerance=1.5).hits, pointing_game(maps, mask, tolerance=1.5).hits)
    top = f"top:{fraction}"
    assert torch.equal(localization_iou(moved, mask, threshold=top).iou, localization_iou(maps, mask, threshold=top).iou)


@given(masks(), SEEDS, st.sampled_from([0.5, 2.0, 4.0]), st.sampled_from([0.0, 1.0, -3.0]))
def test_otsu_iou_is_invariant_under_positive_affine_maps(mask, seed, scale, shift):
    maps = torch.rand(mask.shape, generator=_generator(seed), dtype=torch.float64)
    assert torch.allclose(
        localization_iou(scale * maps + shift, mask).iou, localization_iou(maps, mask).iou, equal_nan=True
    )


@given(st.integers(1, 3), SIDES, SIDES, SEEDS, st.floats(0.01, 100), st.floats(-100, 100))
def test_map_correlation_is_affine_invariant_and_odd(n, height, width, seed, scale, shift):
    maps = torch.randn(n, height, width, generator=_generator(seed), dtype=torch.float64)
    reference = torch.randn(n, height, width, generator=_generator(seed + 1), dtype=torch.float64)
    correlation = map_correlation(maps, reference)
    assert torch.allclose(map_correlation(scale * maps + shift, reference), correlation, atol=1e-9)
    assert torch.allclose(map_correlation(-maps, reference), -correlation, atol=1e-12)


@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 40), st.integers(1, 40), SEEDS)
def test_resize_map_preserves_the_total(h, w, height, width, seed):
    # Exact for any non-negative map (bits) at any sizes, up or down; a signed map exactly when the
    # interpolation moves no mass (a constant map, integer upsampling factors).
    maps = torch.rand(2, 1, h, w, generator=_generator(seed), dtype=torch.float64)
    assert torch.allclose(resize_map(maps, (height, width)).sum((2, 3)), maps.sum((2, 3)), rtol=1e-9)
    constant = torch.full((1, 1, h, w), -0.5, dtype=torch.float64)
    assert math.isclose(resize_map(constant, (height, width)).sum().item(), constant.sum().item(), rel_tol=1e-9)
    signed = maps - 0.5
    upsampled = resize_map(signed, (h * (1 + height % 4), w * (1 + width % 4)))
    assert torch.allclose(upsampled.sum((2, 3)), signed.sum((2, 3)), rtol=1e-9, atol=1e-12)
