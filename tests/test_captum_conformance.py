"""captum_iba's methods in Captum's own pipelines, on Captum's own test models.

Each of the five failures of issue 14 has a test here (or in test_targets.py
for tuple targets), next to the conformance runs on
``captum.testing.helpers.basic_models`` with Captum's ``LayerGradCam``.
"""

import copy

import pytest
import torch
from captum.attr import LayerGradCam, NoiseTunnel
from captum.testing.helpers import basic_models
from torch import nn

import captum_iba.torchray as tr
from _toys import SmallCNN
from captum_iba import IBA, InverseIBA, MultiLayerIBA, RegressionIBA, Speed
from captum_iba.metrics import insertion_deletion, randomization_check, sensitivity_n
from captum_iba._engine import LayerReusedError
from captum_iba.stats import estimate_stats

METHODS = [IBA, InverseIBA, RegressionIBA]


def _data(n, channels=3, size=8, seed=0):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _state(model):
    """Everything IBA must leave as it found: parameters, buffers, modes, flags, hooks."""
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
    )


def _same_state(a, b):
    return a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1:] == b[1:]


class DictNet(nn.Module):
    """A HuggingFace-like model: BatchNorm and Dropout, outputs in a dict."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(6, 6, 3, padding=1)
        )
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return {"logits": self.head(self.features(x).mean((2, 3))), "hidden": x}


# Failure 2: a model wrapped in a plain function is frozen and restored like a module.


def test_a_function_wrapped_model_in_train_mode_is_frozen_and_restored():
    model = DictNet().train()
    before = _state(model)
    iba = IBA(lambda x: model(x)["logits"], model.features[4], steps=3, noise_draws=2, loss="ce")
    iba.estimate(_data(16), n_samples=16, progress=False)
    assert _same_state(before, _state(model))  # BatchNorm's running stats untouched
    x = _data(2, seed=1)
    first, second = (iba.attribute(x, target=1, seed=0) for _ in range(2))
    assert torch.equal(first, second)  # dropout off: the same seed gives the same map
    assert _same_state(before, _state(model))
    # The map is that of the model in eval mode.
    evaluated = copy.deepcopy(model).eval()
    as_eval = IBA(lambda x: evaluated(x)["logits"], evaluated.features[4], stats=iba.stats, steps=3, noise_draws=2, loss="ce")
    assert torch.equal(as_eval.attribute(x, target=1, seed=0), first)


def test_a_function_wrapped_model_is_restored_when_the_loss_raises():
    model = DictNet().train()
    before = _state(model)
    iba = IBA(lambda x: model(x)["logits"], model.features[4], steps=2, noise_draws=2,
              loss=lambda outputs, target: 1 / 0)
    iba.estimate(_data(8), n_samples=8, progress=False)
    with pytest.raises(ZeroDivisionError):
        iba.attribute(_data(2), target=0)
    assert _same_state(before, _state(model))


def test_dict_and_tuple_outputs_say_how_to_select_the_logits():
    model = DictNet().eval()
    iba = IBA(model, model.features[4], steps=2, loss="ce")
    iba.estimate(_data(8), n_samples=8, progress=False)
    with pytest.raises(TypeError, match=r"keys \['logits', 'hidden'\].*lambda x: model\(x\)\['logits'\]"):
        iba.attribute(_data(2), target=0)
    tuple_model = lambda x: (model(x)["logits"], x)  # noqa: E731
    with pytest.raises(TypeError, match=r"tuple of 2 values.*model\(x\)\[0\]"):
        IBA(tuple_model, model.features[4], stats=iba.stats, loss="ce").attribute(_data(2), target=0)
    with pytest.raises(TypeError, match="keys"):
        insertion_deletion(model, _data(2), torch.rand(2, 8, 8), target=0, n_steps=2)


# Failure 3: Captum's wrappers call attribute.__wrapped__.


@pytest.fixture(scope="module")
def cnn():
    model = SmallCNN(n_outputs=3).eval()
    (stats,) = estimate_stats(model, [model.layer], [_data(16)], 16, False)
    (stem_stats,) = estimate_stats(model, [model.stem], [_data(16)], 16, False)
    return model, stats, stem_stats


@pytest.mark.parametrize("method", ["iba", "inverse", "multilayer"])
def test_noise_tunnel_wraps_the_methods(cnn, method):
    model, stats, stem_stats = cnn
    options = dict(steps=2, noise_draws=2, loss="ce")
    attribution = {
        "iba": lambda: IBA(model, model.layer, stats=stats, **options),
        "inverse": lambda: InverseIBA(model, model.layer, stats=stats, **options),
        "multilayer": lambda: MultiLayerIBA(model, [model.stem, model.layer], stats=[stem_stats, stats], **options),
    }[method]()
    assert hasattr(attribution.attribute, "__wrapped__")
    x = _data(2, seed=3)
    smoothed = NoiseTunnel(attribution).attribute(x, nt_samples=3, stdevs=0.1, target=[0, 2], seed=0)
    plain = attribution.attribute(x, target=[0, 2], seed=0)
    assert smoothed.shape == plain.shape and torch.isfinite(smoothed).all()
    # With no noise, the tunnel averages three identical maps.
    still = NoiseTunnel(attribution).attribute(x, nt_samples=3, stdevs=0.0, target=[0, 2], seed=0)
    assert torch.allclose(still, plain, atol=1e-5)


# Failure 4: a layer run twice in one forward pass is refused on both splits.


class SharedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.block(x))).mean((2, 3)))


@pytest.mark.parametrize("split", ["auto", "fx", "hooks"])
def test_a_layer_run_twice_is_refused(split):
    model = SharedBlock().eval()
    stats = estimate_stats(model, [model.block], [_data(8)], 8, False)[0]
    with pytest.raises(LayerReusedError, match="runs 2 times"):
        IBA(model, model.block, stats=stats, speed=Speed(split=split), steps=1, loss="ce").attribute(_data(2), target=0)
    with pytest.raises(LayerReusedError):
        IBA(lambda x: model(x), model.block, stats=stats, steps=1, loss="ce").attribute(_data(2), target=0)


# Failure 5: estimate() takes what attribute() takes.


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x, mask, scale):
        return self.head(torch.relu(self.layer(x * mask)).mean((2, 3))) * scale


def test_estimate_takes_the_inputs_of_attribute():
    model = TwoInputs().eval()
    x, mask = _data(12), (_data(12, 1, seed=5) > 0).float()
    expected = estimate_stats(lambda a: model(a, mask, 2.0), [model.layer], [x], 12, False)[0]
    iba = IBA(model, model.layer, steps=2, noise_draws=2, loss="ce")
    forms = [
        lambda: iba.estimate((x, mask), 12, False, additional_forward_args=2.0),
        lambda: iba.estimate([(x[:5], mask[:5]), (x[5:], mask[5:])], 12, False, additional_forward_args=(2.0,),
                             batch_inputs=lambda batch: batch),
        lambda: iba.estimate(torch.utils.data.DataLoader(list(zip(x, mask)), batch_size=4), 12, False,
                             additional_forward_args=2.0, batch_inputs=tuple),
        lambda: iba.estimate([{"image": x, "mask": mask}], 12, False, additional_forward_args=2.0,
                             batch_inputs=lambda b: (b["image"], b["mask"])),
    ]
    for estimate in forms:
        stats = estimate()
        assert torch.allclose(stats.mean, expected.mean) and torch.allclose(stats.m2, expected.m2)
    assert iba.attribute((x[:2], mask[:2]), target=1, additional_forward_args=2.0).shape == (2, 1, 8, 8)


def test_a_plain_tensor_is_one_batch():
    model = SmallCNN(n_outputs=3).eval()
    x = _data(10)
    stats = IBA(model, model.layer, loss="ce").estimate(x, n_samples=6, progress=False)
    assert stats.count == 6
    assert torch.allclose(stats.mean, estimate_stats(model, [model.layer], [x[:6]], 6, False)[0].mean)


# Also in issue 14: scalar baselines, randomisation factories, TorchRay keywords.


def test_metrics_take_scalar_baselines(cnn):
    model, _, _ = cnn
    x, maps = _data(2), torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    for value in (0, 0.5):
        scalar = insertion_deletion(model, x, maps, target=1, n_steps=3, baseline=value)
        tensor = insertion_deletion(model, x, maps, target=1, n_steps=3, baseline=torch.tensor(float(value)))
        assert torch.equal(scalar.deletion_curve, tensor.deletion_curve)
    zero = sensitivity_n(model, x, maps, target=1, n=4, num_masks=4, baseline=0.0)
    assert torch.equal(zero, sensitivity_n(model, x, maps, target=1, n=4, num_masks=4, baseline="zero"))
    for bad in (float("nan"), True):
        with pytest.raises(ValueError, match="baseline"):
            insertion_deletion(model, x, maps, target=1, n_steps=3, baseline=bad)


def test_randomization_check_takes_a_factory_and_refuses_a_bound_object(cnn):
    model, stats, _ = cnn
    x = _data(2)
    factory = lambda m: IBA(m, m.layer, stats=stats, steps=2, noise_draws=2, loss="ce")  # noqa: E731
    result = randomization_check(factory, model, x, target=1, layers=["head.5", "layer.0"])
    assert result.spearman.shape == (2, 2)
    assert not torch.allclose(result.spearman[1], torch.ones(2, dtype=torch.float64))
    with pytest.raises(TypeError, match="factory"):
        randomization_check(IBA(model, model.layer, stats=stats, loss="ce"), model, x, target=1, layers=["head.5"])
    with pytest.raises(ValueError, match="model .*it is given"):
        randomization_check(lambda m: IBA(model, model.layer, stats=stats, loss="ce"), model, x, target=1, layers=["head.5"])


def test_torchray_functions_take_torchrays_keywords(cnn):
    model, stats, _ = cnn
    x = _data(2, size=8)
    common = dict(stats=stats, steps=2, noise_draws=2, seed=0, loss="ce")
    plain = tr.iba(model, x, 1, "layer", **common)
    wide = tr.iba(model, x, 1, "layer", resize=(12, 8), resize_mode="nearest", **common)
    assert wide.shape == (2, 1, 8, 12)  # TorchRay's (width, height)
    assert torch.allclose(wide.sum((2, 3)), plain.sum((2, 3)), rtol=1e-4)  # nearest keeps the total
    smooth = tr.iba(model, x, 1, "layer", resize=True, smooth=0.1, **common)
    sharp = tr.iba(model, x, 1, "layer", resize=True, **common)
    assert smooth.shape == sharp.shape == (2, 1, 8, 8) and smooth.std() < sharp.std()
    with pytest.raises(ValueError, match="resize_mode"):
        tr.iba(model, x, 1, "layer", resize=True, resize_mode="cubic", **common)
    with pytest.raises(ValueError, match="close names: layer"):
        tr.iba(model, x, 1, "layr", **common)


# Every method on Captum's own test models, next to LayerGradCam.

BASIC = [
    ("BasicModel_ConvNet_One_Conv", "conv1", 1, 4, 3),
    ("BasicModel_ConvNetWithPaddingDilation", "conv1", 1, 6, 7),
    ("BasicModel_ConvNet", "conv2", 1, 10, 9),
]


@pytest.mark.parametrize("name, layer_name, channels, size, n_outputs", BASIC)
def test_every_method_on_captums_basic_models(name, layer_name, channels, size, n_outputs):
    model = getattr(basic_models, name)().eval()
    layer = getattr(model, layer_name)
    data = 10 * _data(16, channels, size, seed=1)
    x = 10 * _data(3, channels, size, seed=2)
    targets = [1, torch.tensor([0, 1, 2]), [2, 0, 1]]
    before = _state(model)
    cam = LayerGradCam(model, layer)
    for method in METHODS:
        attribution = method(model, layer, steps=2, noise_draws=2, loss="deviation" if method is RegressionIBA else "ce")
        attribution.estimate(data, n_samples=16, progress=False)
        for target in targets:
            maps = attribution.attribute(x, target=target, seed=0)
            assert maps.shape == cam.attribute(x, target=target).shape
            assert torch.isfinite(maps).all() and (maps >= 0).all()
    ml = MultiLayerIBA(model, [layer], steps=2, noise_draws=2, loss="ce")
    ml.estimate(data, n_samples=16, progress=False)
    assert ml.attribute(x, target=targets[1], seed=0).shape == cam.attribute(x, target=targets[1]).shape
    assert _same_state(before, _state(model))
