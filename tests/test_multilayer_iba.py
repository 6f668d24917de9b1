"""Multi-layer IBA: thresholds, the two ways to combine, one-pass estimation."""

import pytest
import torch

from _toys import SmallCNN, tiny_densenet
from captum_iba import IBA, InverseIBA, MultiLayerIBA
from captum_iba.attr import combine_layer_maps
from captum_iba.maps import binarize, resize_map


def _maps(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 4, 4, generator=g)]


@pytest.mark.parametrize("threshold", ["otsu", "top:0.3", 0.05])
def test_intersection_lies_inside_every_thresholded_map(threshold):
    maps = _maps()
    intersection = combine_layer_maps(maps, threshold, "intersection").bool()
    assert intersection.shape == (2, 1, 16, 16)
    for m in maps:
        layer_mask = binarize(resize_map(m, (16, 16)), threshold)
        assert not (intersection & ~layer_mask).any()
    assert intersection.any()  # the test is not vacuous


def test_masked_is_the_finest_map_inside_the_coarser_masks_and_zero_outside():
    maps = _maps(1)
    masked = combine_layer_maps(maps, "top:0.5", "masked")
    coarser = binarize(resize_map(maps[1], 16), "top:0.5") & binarize(resize_map(maps[2], 16), "top:0.5")
    assert torch.equal(masked[coarser], maps[0][coarser])
    assert (masked[~coarser] == 0).all()
    # The finest layer's own threshold does not cut the masked map.
    finest_mask = binarize(maps[0], "top:0.5")
    assert (masked[coarser & ~finest_mask] > 0).any()


def test_threshold_modes_on_hand_made_maps():
    ramp = torch.arange(64.0).view(1, 1, 8, 8)
    assert combine_layer_maps([ramp], "top:0.25", "intersection").sum() == 16
    bimodal = torch.full((1, 1, 8, 8), 0.1)
    bimodal[..., 2:5, 2:6] = 0.9
    bimodal += 0.01 * torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    otsu = combine_layer_maps([bimodal], "otsu", "intersection").bool()
    assert torch.equal(otsu[0, 0], bimodal[0, 0] > 0.5)
    value = combine_layer_maps([ramp], 0.2, "intersection").bool()
    assert torch.equal(value, ramp / ramp.norm() > 0.2)


@pytest.fixture(scope="module")
def densenet():
    model = tiny_densenet()
    layers = [model.features.denseblock1, model.features.denseblock2, model.features.denseblock3]
    return model, layers


def test_one_pass_of_estimation_fills_every_layer(densenet):
    model, layers = densenet
    calls = {"n": 0}
    handle = model.features.conv0.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        ml = MultiLayerIBA(model, layers, loss="ce")
        stats = ml.estimate([torch.randn(4, 3, 32, 32) for _ in range(3)], n_samples=12, progress=False)
    finally:
        handle.remove()
    assert calls["n"] == 3  # one forward per batch for all three layers
    assert [s.shape[1:] for s in stats] == [(8, 8), (4, 4), (2, 2)]
    assert all(s.count == 12 for s in ml.stats)


def test_attribute_at_the_finest_resolution_with_layer_maps(densenet):
    model, layers = densenet
    ml = MultiLayerIBA(model, layers, threshold="top:0.3", loss="bce", steps=3)
    ml.estimate([torch.randn(8, 3, 32, 32)], n_samples=8, progress=False)
    x = torch.randn(2, 3, 32, 32)
    combined, per_layer = ml.attribute(x, target=1, seed=0, return_layer_maps=True)
    assert combined.shape == (2, 1, 8, 8)
    assert [tuple(m.shape[-2:]) for m in per_layer] == [(8, 8), (4, 4), (2, 2)]
    for layer, stats, layer_map in zip(layers, ml.stats, per_layer):
        alone = IBA(model, layer, stats=stats, loss="bce", steps=3).attribute(x, target=1, seed=0)
        assert torch.allclose(layer_map, alone)
    binary = ml.attribute(x, target=1, seed=0, combine="intersection")
    assert set(binary.unique().tolist()) <= {0.0, 1.0}
    # The full intersection also passes the coarser masks, so "masked" keeps bits there.
    assert ((binary > 0) <= (combined > 0)).all()


def test_one_layer_equals_iba(densenet):
    model, layers = densenet
    for method in (IBA, InverseIBA):
        single = MultiLayerIBA(model, layers[1:2], method=method, steps=3, loss="ce")
        single.estimate([torch.randn(8, 3, 32, 32)], n_samples=8, progress=False)
        x = torch.randn(2, 3, 32, 32)
        expected = method(model, layers[1], stats=single.stats[0], steps=3, loss="ce").attribute(x, target=0, seed=2)
        assert torch.equal(single.attribute(x, target=0, seed=2), expected)


def test_bad_input(densenet):
    model, layers = densenet
    with pytest.raises(ValueError, match="non-empty"):
        MultiLayerIBA(model, [], loss="ce")
    with pytest.raises(ValueError, match="distinct"):
        MultiLayerIBA(model, [layers[0], layers[0]], loss="ce")
    with pytest.raises(ValueError, match=r"layers\[1\]: expected a submodule of the model"):
        MultiLayerIBA(model, [layers[0], SmallCNN().layer], loss="ce")
    for threshold in ["top:1.5", "top:0", 1.2, -0.1, "median", None]:
        with pytest.raises(ValueError, match="threshold must be"):
            MultiLayerIBA(model, layers, threshold=threshold, loss="ce")
    with pytest.raises(ValueError, match="combine"):
        MultiLayerIBA(model, layers, combine="union", loss="ce")
    with pytest.raises(ValueError, match="stats: expected one entry per layer"):
        MultiLayerIBA(model, layers, stats=[None], loss="ce")
    with pytest.raises(ValueError, match="loss must be one of"):
        MultiLayerIBA(model, layers, loss="hinge")
    ml = MultiLayerIBA(model, layers, loss="ce")
    with pytest.raises(ValueError, match="threshold must be"):
        ml.attribute(torch.randn(1, 3, 32, 32), target=0, threshold="top:2")
