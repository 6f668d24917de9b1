"""Properties of the attributions for generated models, shapes, targets and seeds.

Run with the hypothesis profile of ``conftest.py`` ("quick" by default,
``HYPOTHESIS_PROFILE=thorough`` for many more examples).
"""

import pytest
import torch
from hypothesis import given, strategies as st

from _toys import SmallCNN
from captum_iba import IBA, InverseIBA, MultiLayerIBA, RegressionIBA, Speed
from captum_iba.stats import estimate_stats

METHODS = st.sampled_from([IBA, InverseIBA, RegressionIBA])
SEEDS = st.integers(0, 2**31 - 1)


@st.composite
def setups(draw, max_n=4):
    """A small CNN (train or eval mode), its statistics, N inputs and one target per input."""
    outputs = draw(st.integers(2, 4))
    width, size = draw(st.integers(2, 5)), draw(st.sampled_from([6, 8]))
    model = SmallCNN(n_outputs=outputs, width=width, seed=draw(st.integers(0, 5)))
    model.train(draw(st.booleans()))
    data = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(draw(SEEDS)))
    (stats,) = estimate_stats(model, [model.layer], [data], 8, False)
    n = draw(st.integers(1, max_n))
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(draw(SEEDS)))
    targets = draw(st.lists(st.integers(-outputs, outputs - 1), min_size=n, max_size=n))
    return model, stats, x, targets


def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
    )


def _assert_same_state(before, after):
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]


OPTIONS = dict(steps=2, noise_draws=2)
LOSSES = {IBA: "ce", InverseIBA: "ce", RegressionIBA: "deviation"}


@given(setups(), METHODS, SEEDS)
def test_batched_equals_one_by_one_for_any_mix_of_targets(setup, method, seed):
    model, stats, x, targets = setup
    attribution = method(model, model.layer, stats=stats, **OPTIONS, loss=LOSSES[method])
    batched = attribution.attribute(x, target=targets, seed=seed)
    alone = torch.cat([attribution.attribute(x[i:i + 1], target=t, seed=seed) for i, t in enumerate(targets)])
    assert torch.allclose(batched, alone, rtol=1e-4, atol=1e-5)


@given(setups(), METHODS, SEEDS)
def test_maps_are_finite_non_negative_and_the_same_seed_gives_the_same_map(setup, method, seed):
    model, stats, x, targets = setup
    attribution = method(model, model.layer, stats=stats, **OPTIONS, loss=LOSSES[method])
    first = attribution.attribute(x, target=targets, seed=seed)
    assert torch.isfinite(first).all() and (first >= 0).all()
    assert torch.equal(first, attribution.attribute(x, target=targets, seed=seed))


@given(setups(), METHODS, SEEDS, st.booleans(), st.booleans())
def test_the_model_is_left_as_found(setup, method, seed, wrapped, raising):
    model, stats, x, targets = setup
    for p in list(model.parameters())[::2]:
        p.requires_grad_(False)  # a mix of flags to restore
    handle = model.layer.register_forward_hook(lambda m, i, o: None)
    before = _state(model)
    forward = (lambda inputs: model(inputs)) if wrapped else model
    options = dict(OPTIONS, loss=(lambda outputs, target: 1 / 0) if raising else LOSSES[method])
    attribution = method(forward, model.layer, stats=stats, **options)
    if raising:
        with pytest.raises(ZeroDivisionError):
            attribution.attribute(x, target=targets, seed=seed)
    else:
        attribution.attribute(x, target=targets, seed=seed)
        if len(x) > 1:
            attribution.estimate(x, n_samples=len(x), progress=False)
    _assert_same_state(before, _state(model))
    handle.remove()


@given(setups(), METHODS, SEEDS)
def test_fx_and_hook_splits_agree(setup, method, seed):
    model, stats, x, targets = setup
    maps = [
        method(model, model.layer, stats=stats, speed=Speed(split=split), **OPTIONS, loss=LOSSES[method]).attribute(
            x, target=targets, seed=seed)
        for split in ("fx", "hooks")
    ]
    assert torch.allclose(maps[0], maps[1], rtol=1e-4, atol=1e-5)


@given(setups(max_n=3), st.sampled_from([IBA, InverseIBA]), SEEDS)
def test_multilayer_iba_with_one_layer_is_iba(setup, method, seed):
    model, stats, x, targets = setup
    single = method(model, model.layer, stats=stats, **OPTIONS, loss=LOSSES[method]).attribute(x, target=targets, seed=seed)
    multi = MultiLayerIBA(model, [model.layer], method=method, stats=[stats], **OPTIONS, loss=LOSSES[method])
    assert torch.equal(multi.attribute(x, target=targets, seed=seed), single)
