"""IBA / Inverse IBA as Captum layer attributions: shapes, batching, the split, restoration, errors."""

import copy

import pytest
import torch
from captum.attr import LayerAttribution
from hypothesis import given, settings, strategies as st
from torch import nn

from _toys import ResidualNet, SmallCNN, UntraceableNet
from captum_iba import IBA, InverseIBA, Speed
from captum_iba.stats import estimate_stats


def _stats(model, layer, size=12, n=16, seed=0):
    data = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return estimate_stats(model, [layer], [data], n_samples=n, progress=False)[0]


def _inputs(n, size=12, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cnn():
    model = SmallCNN(n_outputs=4).eval()
    return model, _stats(model, model.layer)


@settings(max_examples=12, deadline=None)
@given(
    width=st.integers(2, 6),
    size=st.sampled_from([6, 8, 12]),
    n=st.integers(1, 3),
    draws=st.integers(1, 4),
    seed=st.integers(0, 2**31),
    inverse=st.booleans(),
)
def test_maps_are_finite_non_negative_bits_of_the_closed_form(width, size, n, draws, seed, inverse):
    model = SmallCNN(n_outputs=3, width=width, seed=seed % 7).eval()
    method = (InverseIBA if inverse else IBA)(
        model, model.layer, stats=_stats(model, model.layer, size), noise_draws=draws, steps=3, loss="ce"
    )
    x = _inputs(n, size, seed % 11)
    bits, lam = method.attribute(x, target=seed % 3, seed=seed, reduce="none", return_lambda=True)
    h = (size + 1) // 2
    assert bits.shape == lam.shape == (n, width, h, h)
    assert bits.dtype == torch.float32 and bits.device == x.device
    assert torch.isfinite(bits).all() and (bits >= 0).all()
    assert ((lam >= 0) & (lam <= 1)).all()
    summed = method.attribute(x, target=seed % 3, seed=seed)
    assert summed.shape == (n, 1, h, h)
    assert torch.allclose(summed, bits.sum(1, keepdim=True), atol=1e-5)
    # The map is the closed-form capacity at the returned lambda, in bits.
    stats = method.stats
    with torch.no_grad():
        features = model.layer(model.stem(x)).double()
    r = (features - stats.mean) / stats.std(0.01)
    v = (1 - lam.double()) ** 2
    expected = 0.5 * ((lam.double() * r) ** 2 + v - 1 - torch.log(v.clamp(min=1e-8)))
    expected = expected * stats.active_mask(0.01) / torch.log(torch.tensor(2.0, dtype=torch.float64))
    assert torch.allclose(bits.double(), expected, rtol=1e-3, atol=1e-4)


def test_captum_face(cnn):
    model, stats = cnn
    iba = IBA(model, model.layer, stats=stats, loss="ce")
    assert isinstance(iba, LayerAttribution) and isinstance(InverseIBA(model, model.layer, loss="ce"), LayerAttribution)
    assert iba.options.beta == 10 and InverseIBA(model, model.layer, loss="ce").options.beta == 30
    bits = iba.attribute(_inputs(2), target=1, seed=0)
    upsampled = IBA.interpolate(bits, (12, 12))
    assert upsampled.shape == (2, 1, 12, 12)


def test_batched_equals_one_by_one(cnn):
    model, stats = cnn
    for method in (IBA, InverseIBA):
        attribution = method(model, model.layer, stats=stats, loss="bce")
        x, target = _inputs(4), [0, 3, 1, 3]
        batched = attribution.attribute(x, target=target, seed=7)
        alone = torch.cat([attribution.attribute(x[i : i + 1], target=t, seed=7) for i, t in enumerate(target)])
        assert torch.allclose(batched, alone, rtol=1e-4, atol=1e-5)


def test_same_seed_same_map_and_target_forms_agree(cnn):
    model, stats = cnn
    iba = IBA(model, model.layer, stats=stats, loss="ce")
    x = _inputs(3)
    first = iba.attribute(x, target=2, seed=3)
    assert torch.equal(first, iba.attribute(x, target=[2, 2, 2], seed=3))
    assert torch.equal(first, iba.attribute(x, target=torch.tensor([2, 2, 2]), seed=3))
    assert torch.equal(first, iba.attribute(x, target=torch.tensor(2), seed=3))
    assert not torch.allclose(first, iba.attribute(x, target=2, seed=4))
    torch.manual_seed(0)
    unseeded = iba.attribute(x, target=2)
    torch.manual_seed(0)
    assert torch.equal(unseeded, iba.attribute(x, target=2))


def test_options_override_per_call(cnn):
    model, stats = cnn
    iba = IBA(model, model.layer, stats=stats, loss="ce")
    x = _inputs(1)
    assert not torch.allclose(iba.attribute(x, target=0, seed=0), iba.attribute(x, target=0, seed=0, beta=0.1))
    assert torch.equal(
        iba.attribute(x, target=0, seed=0, beta=0.1),
        IBA(model, model.layer, stats=stats, beta=0.1, loss="ce").attribute(x, target=0, seed=0),
    )
    assert iba.options.beta == 10  # the override did not stick


def _counting(module):
    counter = {"calls": 0}
    module.register_forward_hook(lambda *args: counter.__setitem__("calls", counter["calls"] + 1))
    return counter


def test_fx_runs_the_prefix_once_and_equals_the_hook_path(cnn):
    model, stats = cnn
    model = copy.deepcopy(model)
    fx = IBA(model, model.layer, stats=stats, steps=4, loss="ce")
    hooks = IBA(model, model.layer, stats=stats, steps=4, speed=Speed(split="hooks"), loss="ce")
    assert fx.split().mode == "fx" and hooks.split().mode == "hooks"
    stem_calls = _counting(model.stem[0])  # a leaf: fx calls it directly
    x = _inputs(3)
    via_fx = fx.attribute(x, target=1, seed=5)
    # The first call checks once that the traced parts reproduce the model (a whole forward and a prefix).
    assert stem_calls["calls"] == 1 + 2
    assert torch.equal(fx.attribute(x, target=1, seed=5), via_fx)
    assert stem_calls["calls"] == 1 + 2 + 1  # the prefix ran once, not once per step
    via_hooks = hooks.attribute(x, target=1, seed=5)
    assert stem_calls["calls"] > 4
    assert torch.allclose(via_fx, via_hooks, rtol=1e-4, atol=1e-5)


def test_fx_carries_skip_connections_and_extra_arguments():
    model = ResidualNet().eval()
    data = torch.randn(16, 3, 8, 8)
    (stats,) = estimate_stats(lambda x: model(x, 1.0), [model.layer], [data], 16, False)
    x, scale = _inputs(2, 8), torch.tensor([[1.0], [2.0]])
    fx = IBA(model, model.layer, stats=stats, loss="ce")
    hooks = IBA(model, model.layer, stats=stats, speed=Speed(split="hooks"), loss="ce")
    via_fx = fx.attribute(x, target=0, additional_forward_args=(scale,), seed=1)
    assert fx.split().mode == "fx"
    via_hooks = hooks.attribute(x, target=0, additional_forward_args=(scale,), seed=1)
    assert torch.allclose(via_fx, via_hooks, rtol=1e-4, atol=1e-5)
    # Running twice gives the same map: the in-place skip did not corrupt the carried values.
    assert torch.equal(via_fx, fx.attribute(x, target=0, additional_forward_args=(scale,), seed=1))


def test_untraceable_models_and_functions_fall_back_to_hooks(cnn):
    _, stats = cnn
    model = UntraceableNet(n_outputs=4).eval()
    stats = _stats(model, model.layer)
    untraceable = IBA(model, model.layer, stats=stats, loss="ce")
    assert untraceable.split().mode == "hooks"
    function = IBA(lambda x: model(x), model.layer, stats=stats, loss="ce")
    assert function.split().mode == "hooks"  # a function of an untraceable model: hooks too
    x = _inputs(2)
    assert torch.allclose(untraceable.attribute(x, target=0, seed=0), function.attribute(x, target=0, seed=0))
    with pytest.raises(ValueError, match="does not trace"):
        IBA(model, model.layer, stats=stats, speed=Speed(split="fx"), loss="ce").split("fx")


def _state(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        [p.grad for p in model.parameters()],
    )


def _assert_same_state(before, after):
    assert before[0] == after[0] and before[1] == after[1] and before[3] == after[3]
    assert before[2].keys() == after[2].keys()
    assert all(torch.equal(before[2][k], after[2][k]) for k in before[2])
    assert all(g is None for g in after[4])


@pytest.mark.parametrize("split", ["fx", "hooks"])
def test_model_is_left_exactly_as_found(split):
    model = SmallCNN(n_outputs=4).train()
    model.head[2].eval()  # a mixed state must survive too
    model.stem[0].weight.requires_grad_(False)
    stats = _stats(model, model.layer)
    before = _state(model)
    assert model.training  # estimation restored the mode
    IBA(model, model.layer, stats=stats, speed=Speed(split=split), loss="ce").attribute(_inputs(2), target=1, seed=0)
    _assert_same_state(before, _state(model))

    calls = {"n": 0}

    def failing_loss(outputs, target):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("loss failed")
        return -outputs[:, 0]

    with pytest.raises(RuntimeError, match="loss failed"):
        IBA(model, model.layer, stats=stats, loss=failing_loss, speed=Speed(split=split)).attribute(_inputs(2), seed=0)
    _assert_same_state(before, _state(model))


def test_callable_loss_gets_rows_and_targets(cnn):
    model, stats = cnn
    seen = {}

    def loss(outputs, target):
        seen["shapes"] = (tuple(outputs.shape), tuple(target.shape))
        return torch.nn.functional.cross_entropy(outputs, target, reduction="none")

    custom = IBA(model, model.layer, stats=stats, loss=loss, noise_draws=3).attribute(_inputs(2), target=1, seed=0)
    assert seen["shapes"] == ((6, 4), (6,))
    builtin = IBA(model, model.layer, stats=stats, noise_draws=3, loss="ce").attribute(_inputs(2), target=1, seed=0)
    assert torch.allclose(custom, builtin, atol=1e-6)


def test_bad_input(cnn, tmp_path):
    model, stats = cnn
    x = _inputs(2)
    with pytest.raises(TypeError, match="loss: expected a loss"):
        IBA(model, model.layer)
    with pytest.raises(ValueError, match="estimate"):
        IBA(model, model.layer, loss="ce").attribute(x, target=0)
    other = _stats(model, model.layer, size=16)
    with pytest.raises(ValueError, match=r"stats: expected statistics of the layer's output, shape \(6, 6, 6\)"):
        IBA(model, model.layer, stats=other, loss="ce").attribute(x, target=0)
    with pytest.raises(ValueError, match="layer: expected a submodule of the model"):
        IBA(model, nn.Conv2d(3, 3, 1), loss="ce")
    with pytest.raises(TypeError, match="layer: expected an nn.Module"):
        IBA(model, "layer", loss="ce")
    with pytest.raises(ValueError, match=r"reshape_transform: .*got \(N, 4\)"):
        IBA(model, model.head[-1], stats=stats, loss="ce").attribute(x, target=0)
    iba = IBA(model, model.layer, stats=stats, loss="ce")
    with pytest.raises(ValueError, match=r"target indices must lie in \[-4, 3\]"):
        iba.attribute(x, target=4)
    with pytest.raises(ValueError, match="target indices"):
        iba.attribute(x, target=[0, -5])
    with pytest.raises(ValueError, match="select one value per sample"):
        iba.attribute(x, target=(0, 1))
    with pytest.raises(ValueError, match="one entry per sample"):
        iba.attribute(x, target=[0, 1, 2])
    with pytest.raises(TypeError, match="integer"):
        iba.attribute(x, target=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="target is required"):
        iba.attribute(x)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs: expected finite values, got NaN or Inf"):
        iba.attribute(bad, target=0)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        iba.attribute(bad, target=0)
    for option, value in [("steps", 0), ("noise_draws", 0), ("beta", -1.0), ("lr", 0.0), ("lr", -1.0),
                          ("steps", 2.5), ("min_std", 0.0), ("active_neurons_threshold", 1.0)]:
        with pytest.raises((TypeError, ValueError), match=option):
            IBA(model, model.layer, loss="ce", **{option: value})
        with pytest.raises((TypeError, ValueError), match=option):
            iba.attribute(x, target=0, **{option: value})
    with pytest.raises(ValueError, match="loss must be one of"):
        IBA(model, model.layer, loss="mse")
    with pytest.raises(TypeError, match="unexpected keyword"):
        iba.attribute(x, target=0, stpes=3)
    with pytest.raises(ValueError, match="reduce"):
        iba.attribute(x, target=0, reduce="mean")
    with pytest.raises(TypeError, match="FeatureStats"):
        IBA(model, model.layer, stats="stats.pt", loss="ce")
    with pytest.raises(ValueError, match="speed.split: expected one of 'auto', 'fx', 'hooks', got 'graph'"):
        IBA(model, model.layer, speed=Speed(split="graph"), loss="ce")


def test_attribute_under_no_grad_equals_attribute(cnn):
    model, stats = cnn
    iba = IBA(model, model.layer, stats=stats, loss="ce")
    x = _inputs(2)
    with torch.no_grad():
        inside = iba.attribute(x, target=1, seed=0)
    assert torch.equal(inside, iba.attribute(x, target=1, seed=0))
