"""The API as a Captum user meets it first: no trap at the edges.

``help`` shows the constructor's own arguments; a classifier's loss must be
chosen; the dict-output idiom runs the traced split at the module's speed;
``internal_batch_size`` gives the maps of one batch; ``NoiseTunnel`` over IBA
is reproducible as the README says; ``ReadoutIBA.load`` is a classmethod and
``fit`` says when the maps collapse.
"""

import inspect
import warnings

import pytest
import torch
from captum.attr import NoiseTunnel

from _toys import RegionModel, SmallCNN, background, region_mask
from captum_iba import IBA, InverseIBA, MultiLayerIBA, ReadoutIBA, RegressionIBA
from captum_iba.attr.readout import COLLAPSE_NATS
from captum_iba.stats import estimate_stats


def _data(n, seed=0, size=12):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cnn():
    model = SmallCNN(n_outputs=4).eval()
    (stats,) = estimate_stats(model, [model.layer], [_data(16)], 16, False)
    return model, stats


@pytest.mark.parametrize("cls", [IBA, InverseIBA, RegressionIBA, MultiLayerIBA, ReadoutIBA])
def test_help_shows_the_constructors_own_arguments(cls):
    doc = inspect.getdoc(cls.__init__)
    assert "device_ids" not in doc  # Captum's inherited constructor text
    assert "forward_func" in doc and ("loss" in doc or "options" in doc)


def test_a_classifier_needs_its_loss_chosen(cnn):
    model, stats = cnn
    for cls in (IBA, InverseIBA):
        with pytest.raises(TypeError, match=r"^loss: expected a loss, got none: .*loss='bce'\) for a multilabel model"):
            cls(model, model.layer, stats=stats)
    with pytest.raises(TypeError, match="^loss: expected a loss"):
        MultiLayerIBA(model, [model.layer])
    assert RegressionIBA(model, model.layer).options.loss == "deviation"  # a regressor's default is not silent


def test_the_dict_output_idiom_runs_the_traced_split(cnn):
    model, stats = cnn

    class DictModel(torch.nn.Module):  # e.g. a HuggingFace-style ModelOutput
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return {"logits": self.net(x)}

    wrapped = DictModel().eval()
    calls = []
    handle = model.stem[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        iba = IBA(lambda x: wrapped(x)["logits"], model.layer, loss="ce", stats=stats, steps=4)
        assert iba.split().mode == "fx"
        x = _data(2, 1)
        bits = iba.attribute(x, target=1, seed=0)
        first = len(calls)
        iba.attribute(x, target=1, seed=0)
        assert len(calls) - first == 1  # the prefix once per call, not once per step
    finally:
        handle.remove()
    direct = IBA(model, model.layer, loss="ce", stats=stats, steps=4).attribute(x, target=1, seed=0)
    assert torch.allclose(bits, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_internal_batch_size_gives_the_maps_of_one_batch(cnn, size):
    model, stats = cnn
    iba = IBA(model, model.layer, loss="ce", stats=stats, steps=3, noise_draws=2)
    x, target = _data(5, 2), [0, 1, 2, 3, 0]
    whole, lam = iba.attribute(x, target=target, seed=4, return_lambda=True)
    parts, parts_lam = iba.attribute(x, target=target, seed=4, internal_batch_size=size, return_lambda=True)
    assert torch.allclose(parts, whole, rtol=1e-5, atol=1e-6) and torch.allclose(parts_lam, lam, atol=1e-6)
    with pytest.raises(ValueError, match=r"^internal_batch_size: expected an int >= 1, got 0"):
        iba.attribute(x, target=target, internal_batch_size=0)


def test_noise_tunnel_over_iba_is_reproducible_with_torchs_seed(cnn):
    model, stats = cnn
    iba = IBA(model, model.layer, loss="ce", stats=stats, steps=2, noise_draws=2)
    x = _data(2, 3)

    def smoothed():
        torch.manual_seed(0)  # NoiseTunnel's noise comes from torch's global generator
        return NoiseTunnel(iba).attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.1, target=2, seed=0)

    assert torch.equal(smoothed(), smoothed())


SIZE = 16
LEFT = region_mask(SIZE, 2, 2, 6)


def test_readout_load_is_a_classmethod_and_fit_says_when_the_maps_collapse(tmp_path):
    model = RegionModel([LEFT], gain=10.0)
    readout = ReadoutIBA(model, model.features, [model.features], loss="ce", beta=1e5)
    assert ReadoutIBA(model, model.features, [model.features], loss="ce").options.beta == 1.0
    readout.estimate([background(32, size=SIZE)], progress=False)
    x = background(8, size=SIZE, seed=3)
    with pytest.warns(RuntimeWarning, match=r"ReadoutIBA.fit: the maps collapsed to noise .* lower beta"):
        history = readout.fit([x], epochs=20, target=1, lr=5e-2, seed=0, progress=False)
    assert history[-1]["information_loss"] < COLLAPSE_NATS
    readout.save(tmp_path / "r.pt")
    loaded = ReadoutIBA.load(tmp_path / "r.pt", model, model.features, [model.features])
    assert torch.equal(loaded.attribute(x, target=1), readout.attribute(x, target=1))
    healthy = ReadoutIBA(model, model.features, [model.features], loss="ce", beta=1.0, stats=readout.stats,
                         readout_stats=readout.readout_stats)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no collapse warning when the maps keep information
        healthy.fit([x + 4.0 * LEFT], epochs=5, target=1, lr=1e-2, seed=0, progress=False)
