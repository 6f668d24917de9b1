"""The TorchRay-style functions: same maps as the classes, cached statistics, layer names."""

import pytest
import torch

from _toys import tiny_densenet
from captum_iba import IBA, InverseIBA, MultiLayerIBA, RegressionIBA
from captum_iba import torchray as tr


@pytest.fixture()
def model():
    tr.clear_cache()
    yield tiny_densenet()
    tr.clear_cache()


def _data():
    return [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]


def test_same_maps_as_the_classes(model):
    x = torch.randn(2, 3, 32, 32)
    layer = model.features.denseblock3
    stats = IBA(model, layer, loss="ce").estimate(_data(), n_samples=16, progress=False)
    options = dict(steps=3, seed=4)
    pairs = [
        (tr.iba(model, x, 1, "features.denseblock3", stats=stats, loss="ce", **options),
         IBA(model, layer, stats=stats, loss="ce").attribute(x, 1, **options)),
        (tr.inverse_iba(model, x, [1, 2], layer, stats=stats, loss="ce", **options),
         InverseIBA(model, layer, stats=stats, loss="ce").attribute(x, [1, 2], **options)),
        (tr.regression_iba(model, x, 0, "features.denseblock3", stats=stats, loss="maximize", **options),
         RegressionIBA(model, layer, stats=stats, loss="maximize").attribute(x, 0, **options)),
    ]
    for functional, method in pairs:
        assert functional.shape == (2, 1, 2, 2)
        assert torch.equal(functional, method)
    names = ["features.denseblock1", "features.denseblock2"]
    ml = MultiLayerIBA(model, [model.features.denseblock1, model.features.denseblock2], threshold="top:0.5", loss="ce")
    ml.estimate(_data(), n_samples=16, progress=False)
    assert torch.equal(
        tr.multilayer_iba(model, x, 1, names, stats=ml.stats, threshold="top:0.5", loss="ce", **options),
        ml.attribute(x, 1, **options),
    )


def test_statistics_are_estimated_once_per_model_and_layer(model):
    calls = {"n": 0}
    model.features.conv0.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    x = torch.randn(1, 3, 32, 32)
    tr.iba(model, x, 0, "features.denseblock2", data=_data(), n_samples=16, steps=1, loss="ce")
    after_first = calls["n"]
    assert after_first == 2 + 2 + 1  # two estimation batches, the split's one check (model, prefix), one prefix run
    tr.iba(model, x, 0, "features.denseblock2", data=_data(), n_samples=16, steps=1, loss="ce")
    tr.inverse_iba(model, x, 0, model.features.denseblock2, steps=1, loss="ce")  # same layer: cached stats
    assert calls["n"] == after_first + 1 + 2 + 1  # a prefix run; the new InverseIBA: its split check, a prefix run
    with pytest.raises(ValueError, match="pass stats= .* or data="):
        tr.iba(model, x, 0, "features.denseblock1", loss="ce")


def test_resize_to_the_input_keeps_the_total(model):
    x = torch.randn(1, 3, 32, 32)
    small = tr.iba(model, x, 0, "features.denseblock2", data=_data(), n_samples=16, steps=2, seed=0, loss="ce")
    big = tr.iba(model, x, 0, "features.denseblock2", steps=2, seed=0, resize=True, loss="ce")
    assert big.shape == (1, 1, 32, 32)
    assert big.sum().item() == pytest.approx(small.sum().item(), rel=0.05)


def test_layer_errors(model):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"'features.denseblok3' is not a layer.*close names: features.denseblock3"):
        tr.iba(model, x, 0, "features.denseblok3", data=_data())
    with pytest.raises(ValueError, match="not a submodule"):
        tr.iba(model, x, 0, tiny_densenet().features.denseblock3, data=_data())
    with pytest.raises(ValueError, match="non-empty list"):
        tr.multilayer_iba(model, x, 0, "features.denseblock1", data=_data())
    with pytest.raises(ValueError, match="saliency_layers 'features.nope'"):
        tr.multilayer_iba(model, x, 0, ["features.denseblock1", "features.nope"], data=_data())
    with pytest.raises(TypeError, match="saliency_layer must be a layer name"):
        tr.iba(model, x, 0, 3, data=_data())
