"""Tests of captum_iba.maps: map batches, resizing, thresholds."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.filters import threshold_otsu

from captum_iba.maps import as_map_batch, binarize, parse_threshold, rank_pixels, resize_map


# as_map_batch


def test_as_map_batch_shapes_and_channel_sum():
    maps = torch.randn(2, 3, 5, 6)
    batch = as_map_batch(maps)
    assert batch.shape == (2, 1, 5, 6)
    assert torch.allclose(batch[:, 0], maps[:, 0] + maps[:, 1] + maps[:, 2])
    assert torch.equal(as_map_batch(maps[:, 0]), maps[:, :1])
    assert torch.equal(as_map_batch(maps[:, :1]), maps[:, :1])


def test_as_map_batch_returns_a_new_float_tensor():
    maps = torch.zeros(2, 1, 3, 3)
    batch = as_map_batch(maps)
    batch += 1
    assert maps.abs().sum() == 0
    assert as_map_batch(torch.ones(1, 2, 2, dtype=torch.int64)).dtype == torch.get_default_dtype()
    assert as_map_batch(torch.ones(1, 2, 2, dtype=torch.float64)).dtype == torch.float64


def test_as_map_batch_checks_the_batch_size():
    with pytest.raises(ValueError, match=r"attributions.*3.*2"):
        as_map_batch(torch.zeros(3, 4, 4), n=2)
    assert as_map_batch(torch.zeros(3, 4, 4), n=3).shape == (3, 1, 4, 4)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_as_map_batch_rejects_non_finite(bad):
    maps = torch.zeros(2, 4, 4)
    maps[1, 2, 3] = bad
    with pytest.raises(ValueError, match="attributions contain NaN or Inf"):
        as_map_batch(maps)


@pytest.mark.parametrize("shape", [(4,), (4, 4), (1, 1, 1, 4, 4)])
def test_as_map_batch_rejects_other_ranks(shape):
    with pytest.raises(ValueError, match="attributions must have shape"):
        as_map_batch(torch.zeros(shape))


def test_as_map_batch_rejects_non_tensors():
    with pytest.raises(TypeError, match="attributions"):
        as_map_batch(np.zeros((1, 4, 4)))


# resize_map


def test_resize_map_identity_when_sizes_match():
    maps = torch.rand(2, 1, 6, 5)
    assert torch.equal(resize_map(maps, (6, 5)), maps)


@pytest.mark.parametrize("size", [(28, 28), (14, 21)])
def test_resize_map_preserves_the_total_on_integer_upsampling(size):
    maps = torch.rand(3, 1, 7, 7, dtype=torch.float64)
    resized = resize_map(maps, size)
    assert resized.shape == (3, 1) + size
    assert torch.allclose(resized.sum(dim=(1, 2, 3)), maps.sum(dim=(1, 2, 3)), rtol=1e-9)


def test_resize_map_scale_and_values():
    maps = torch.full((1, 1, 4, 4), 2.0)
    assert torch.allclose(resize_map(maps, 8, preserve_total=False), torch.full((1, 1, 8, 8), 2.0))
    assert torch.allclose(resize_map(maps, 8), torch.full((1, 1, 8, 8), 0.5))
    # Downsampling keeps the total too (antialiased).
    big = torch.rand(1, 1, 64, 64, dtype=torch.float64)
    assert torch.isclose(resize_map(big, 16).sum(), big.sum(), rtol=0.01)


def test_resize_map_is_bilinear_like_captum_interpolate():
    from captum.attr import LayerAttribution

    maps = torch.rand(2, 1, 5, 5)
    expected = LayerAttribution.interpolate(maps, (20, 20), "bilinear")
    assert torch.allclose(resize_map(maps, 20, preserve_total=False), expected)


@pytest.mark.parametrize("size", [0, (3,), (3, 0), (2.5, 3)])
def test_resize_map_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="size"):
        resize_map(torch.rand(1, 1, 4, 4), size)


# parse_threshold


@pytest.mark.parametrize(
    "spec, expected",
    [
        (0.0, ("value", 0.0)),
        (1, ("value", 1.0)),
        (np.float32(0.25), ("value", 0.25)),
        ("top:0.1", ("top", 0.1)),
        ("top:1", ("top", 1.0)),
        ("otsu", ("otsu", None)),
    ],
)
def test_parse_threshold_accepts(spec, expected):
    assert parse_threshold(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [-0.1, 1.5, math.nan, True, None, "top:0", "top:1.5", "top:x", "top:", "0.5", "Otsu", [0.5]],
)
def test_parse_threshold_rejects(spec):
    with pytest.raises(ValueError, match=r"threshold must be .*top:F.*otsu"):
        parse_threshold(spec)


# rank_pixels and binarize


def test_rank_pixels_breaks_ties_by_flat_index():
    maps = torch.tensor([[[1.0, 3.0, 0.0], [3.0, 1.0, 3.0]]])
    assert rank_pixels(maps).tolist() == [[1, 3, 5, 0, 4, 2]]


def test_binarize_value_threshold_on_the_l2_normalised_map():
    maps = torch.tensor([[[3.0, 4.0], [0.0, -1.0]]])  # norm sqrt(26)
    expected_high = [[False, True], [False, False]]  # 4/5.10 = 0.78
    assert binarize(maps, 0.7)[0, 0].tolist() == expected_high
    assert binarize(maps * 100, 0.7)[0, 0].tolist() == expected_high  # scale-free
    assert binarize(maps, 0.5)[0, 0].tolist() == [[True, True], [False, False]]
    assert binarize(maps, 0.0)[0, 0].tolist() == [[True, True], [False, False]]
    assert not binarize(torch.zeros(1, 3, 3), 0.0).any()


def test_binarize_is_per_sample():
    first = torch.tensor([[0.0, 1.0], [2.0, 10.0]])
    second = torch.tensor([[5.0, 5.0], [0.0, 0.0]])
    for spec in (0.5, "top:0.5", "otsu"):
        together = binarize(torch.stack([first, second]), spec)
        assert torch.equal(together[0], binarize(first[None], spec)[0])
        assert torch.equal(together[1], binarize(second[None], spec)[0])


def test_binarize_top_fraction_breaks_ties_by_flat_index():
    constant = torch.ones(1, 4, 4)
    kept = binarize(constant, "top:0.25").flatten()
    assert kept.tolist() == [True] * 4 + [False] * 12
    # At least one pixel, however small the fraction.
    assert binarize(torch.rand(1, 4, 4), "top:0.001").sum() == 1


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.integers(-3, 3), min_size=30, max_size=30),
    fraction=st.floats(0.01, 1.0),
)
def test_binarize_top_fraction_keeps_the_highest_pixels(values, fraction):
    maps = torch.tensor(values, dtype=torch.float32).view(1, 5, 6)
    kept = binarize(maps, f"top:{fraction}").flatten()
    assert kept.sum() == max(1, math.floor(fraction * 30 + 0.5))
    flat = maps.flatten()
    if not kept.all():
        assert flat[kept].min() >= flat[~kept].max()


def test_binarize_otsu_separates_two_levels_and_empties_constant_maps():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(1, 16, 16, generator=generator) * 0.1
    maps[0, 4:9, 2:12] += 1.0
    kept = binarize(maps, "otsu")[0, 0]
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:9, 2:12] = True
    assert torch.equal(kept, expected)
    assert torch.equal(kept, torch.from_numpy(maps[0].numpy() > threshold_otsu(maps[0].numpy())))
    assert not binarize(torch.full((2, 5, 5), 0.3), "otsu").any()


def test_otsu_on_a_tiny_range_far_from_zero():
    # float32 values 1e-7 apart around 1.0: skimage's histogram alone cannot bin them.
    maps = torch.full((1, 1, 4, 4), 1.0, dtype=torch.float32)
    maps[..., :2, :] += 2e-7
    assert torch.equal(binarize(maps, "otsu")[0, 0, :, 0], torch.tensor([True, True, False, False]))
