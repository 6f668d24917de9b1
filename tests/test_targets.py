"""Targets mean what they mean in Captum, for every method and metric.

Reference: ``captum._utils.common._select_targets`` and Captum's
``tests/attr/test_targets.py``: an int or a tuple indexes every sample's
output (a tuple is ONE index into a multi-dimensional output); a 1-D tensor
or a list has one entry per sample.
"""

import pytest
import torch
from captum._utils.common import _select_targets
from hypothesis import given, strategies as st
from torch import nn

from _toys import SmallCNN
from captum_iba import IBA, InverseIBA, MultiLayerIBA, RegressionIBA
from captum_iba._validate import format_target, select_targets
from captum_iba.metrics import insertion_deletion, sensitivity_n
from captum_iba.stats import estimate_stats


@st.composite
def outputs_and_targets(draw):
    """An output (N, *shape) and a valid Captum target of any form for it."""
    n = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    output = torch.randn(n, *shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    index = st.tuples(*[st.integers(0, s - 1) for s in shape])
    forms = [index.map(tuple), st.lists(index, min_size=n, max_size=n)]
    if len(shape) == 1:
        k = shape[0]
        forms += [
            st.integers(0, k - 1),
            st.lists(st.integers(0, k - 1), min_size=n, max_size=n),
            st.lists(st.integers(0, k - 1), min_size=n, max_size=n).map(torch.tensor),
            st.integers(0, k - 1).map(torch.tensor),
        ]
    return output, draw(st.one_of(forms))


@given(outputs_and_targets())
def test_selection_equals_captums_for_every_target_form(case):
    output, target = case
    ours = select_targets(output, format_target(target, output.shape[0]))
    assert torch.equal(ours, _select_targets(output, target))


def test_a_tuple_is_one_index_not_a_list_per_sample():
    output = torch.arange(2 * 3 * 4.0).view(2, 3, 4)
    assert torch.equal(select_targets(output, format_target((1, 2), 2)), output[:, 1, 2])
    pairs = [(0, 3), (2, 1)]
    assert torch.equal(select_targets(output, format_target(pairs, 2)), torch.stack([output[0, 0, 3], output[1, 2, 1]]))
    # On a 1-D output a tuple of two indices selects nothing: refused, not read per sample.
    with pytest.raises(ValueError, match="select one value per sample"):
        select_targets(torch.zeros(2, 5), format_target((1, 2), 2))


@pytest.mark.parametrize("target", [True, [True, False], torch.tensor([True, False]), (1, True), [(0,), (True,)]])
def test_booleans_are_refused_everywhere(target):
    with pytest.raises(TypeError):
        format_target(target, 2)


@pytest.mark.parametrize("target, error", [
    (0.5, TypeError), ([0, (1,)], TypeError), (torch.zeros(2, 2, dtype=torch.long), ValueError),
    ([0, 1, 2], ValueError), ([(0, 1), (1,)], ValueError), ("0", TypeError), ((), TypeError),
])
def test_malformed_targets_are_refused(target, error):
    with pytest.raises(error):
        format_target(target, 2)


class GridModel(nn.Module):
    """Outputs a (2, 3) grid of logits per sample from a conv layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 6)

    def forward(self, x):
        return self.head(torch.relu(self.layer(x)).mean((2, 3))).view(-1, 2, 3)


@pytest.fixture(scope="module")
def grid():
    model = GridModel().eval()
    data = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    (stats,) = estimate_stats(model, [model.layer], [data], 16, False)
    return model, stats, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", [IBA, InverseIBA, RegressionIBA])
def test_tuple_targets_explain_one_output_of_a_multi_dimensional_model(grid, method):
    """Failure 1 of issue 14: a tuple was read per sample (maps of [1, 2])."""
    model, stats, x = grid
    # A small beta and lambda starting at 0.5: the maps depend strongly on the target.
    kwargs = dict(stats=stats, steps=3, noise_draws=2, beta=0.1, init_alpha=0.0,
                  loss="maximize" if method is RegressionIBA else "ce")
    flat = method(lambda inputs: model(inputs).flatten(1), model.layer, **kwargs)
    maps = method(model, model.layer, **kwargs).attribute(x, target=(1, 2), seed=0)
    assert torch.allclose(maps, flat.attribute(x, target=1 * 3 + 2, seed=0), atol=1e-5)
    assert not torch.allclose(maps, flat.attribute(x, target=[1, 2], seed=0), atol=1e-2)
    per_sample = method(model, model.layer, **kwargs).attribute(x, target=[(0, 1), (1, 2)], seed=0)
    assert torch.allclose(per_sample, flat.attribute(x, target=[1, 5], seed=0), atol=1e-5)


def test_multilayer_iba_takes_tuple_targets(grid):
    model, stats, x = grid
    ml = MultiLayerIBA(model, [model.layer], stats=[stats], steps=2, noise_draws=2, loss="ce")
    single = IBA(model, model.layer, stats=stats, steps=2, noise_draws=2, loss="ce")
    assert torch.allclose(ml.attribute(x, target=(1, 0), seed=3), single.attribute(x, target=(1, 0), seed=3))


@pytest.mark.parametrize("metric", [insertion_deletion, sensitivity_n])
def test_metrics_read_tuple_targets_as_captum_does(grid, metric):
    model, _, x = grid
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(2))
    options = {"n_steps": 4} if metric is insertion_deletion else {"n": 8, "num_masks": 4}
    flat = lambda inputs: model(inputs).flatten(1)  # noqa: E731
    ours = metric(model, x, maps, target=(1, 2), **options)
    reference = metric(flat, x, maps, target=5, **options)
    for a, b in zip(ours if isinstance(ours, tuple) else [ours], reference if isinstance(reference, tuple) else [reference]):
        assert torch.allclose(a, b, equal_nan=True)


def test_attributions_and_metrics_accept_the_same_targets():
    model = SmallCNN(n_outputs=4).eval()
    data = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    (stats,) = estimate_stats(model, [model.layer], [data], 8, False)
    x = data[:2]
    iba = IBA(model, model.layer, stats=stats, steps=2, noise_draws=2, loss="ce")
    forms = [3, -1, (3,), torch.tensor(3), [3, 3], torch.tensor([3, 3]), [(3,), (-1,)]]
    maps = [iba.attribute(x, target=t, seed=0) for t in forms]
    curves = [insertion_deletion(model, x, maps[0], target=t, n_steps=3).deletion_curve for t in forms]
    for m, c in zip(maps[1:], curves[1:]):
        assert torch.equal(m, maps[0]) and torch.equal(c, curves[0])
    for bad in (True, [True, False], (1, 2)):
        with pytest.raises((TypeError, ValueError)):
            iba.attribute(x, target=bad)
        with pytest.raises((TypeError, ValueError)):
            insertion_deletion(model, x, maps[0], target=bad, n_steps=3)
