"""Regression IBA on a toy regressor whose score is a weighted sum of regions."""

import numpy as np
import pytest
import torch

from _toys import RegionRegressor, background, region_mask, with_findings
from captum_iba import RegressionIBA

SIZE = 16
REGIONS = [region_mask(SIZE, 1, 1, 5), region_mask(SIZE, 1, 10, 5),
           region_mask(SIZE, 10, 1, 5), region_mask(SIZE, 10, 10, 5)]
WEIGHTS = [0.0, 1.0, 2.0, 4.0]  # the first region shows the finding but does not count
STRENGTH = 1.5


@pytest.fixture(scope="module")
def toy():
    model = RegionRegressor(REGIONS, weights=WEIGHTS)
    method = RegressionIBA(model, model.features)
    method.estimate([background(64, size=SIZE)], progress=False)
    return model, method, with_findings(REGIONS, [STRENGTH] * 4)


def _region_bits(bits):
    return np.array([bits[0, 0][region].sum().item() for region in REGIONS])


@pytest.mark.parametrize("loss", ["deviation", "maximize"])
def test_maps_follow_the_regions_contributions(toy, loss):
    model, method, x = toy
    per_region = _region_bits(method.attribute(x, seed=0, loss=loss))
    contributions = np.array(WEIGHTS) * STRENGTH
    assert np.corrcoef(per_region, contributions)[0, 1] > 0.8
    assert per_region.argmax() == int(np.argmax(WEIGHTS))  # the heaviest region ranks first
    assert per_region[0] < 0.01 * per_region.max()  # the ignored region keeps nothing


def test_mse_against_the_clean_score_is_deviation_and_against_zero_keeps_little(toy):
    model, method, x = toy
    deviation = method.attribute(x, seed=3, loss="deviation")
    clean_score = model(x).detach()[:, 0]
    assert torch.allclose(method.attribute(x, seed=3, loss="mse", target_values=clean_score), deviation)
    towards_zero = method.attribute(x, seed=3, loss="mse", target_values=0.0)
    assert towards_zero.sum() < 0.05 * deviation.sum()


def test_target_selects_the_output_of_a_multi_output_regressor(toy):
    model, method, x = toy
    single = method.attribute(x, seed=0)
    def two_outputs(inputs):  # the model runs once: the bottleneck layer may run only once
        score = model(inputs)
        return torch.cat([-score, score], 1)

    multi = RegressionIBA(two_outputs, model.features, stats=method.stats)
    assert torch.allclose(multi.attribute(x, target=1, seed=0), single, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="target is required"):
        multi.attribute(x, seed=0)


def test_bad_input(toy):
    model, method, x = toy
    with pytest.raises(ValueError, match="target_values: expected the score y per sample"):
        method.attribute(x, loss="mse")
    with pytest.raises(ValueError, match="one score per sample"):
        method.attribute(x, loss="mse", target_values=torch.zeros(3))
    with pytest.raises(TypeError, match="target_values: expected numbers"):
        method.attribute(x, loss="mse", target_values="3")
    with pytest.raises(ValueError, match="NaN or Inf"):
        method.attribute(x, loss="mse", target_values=torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="target_values: expected none with loss 'deviation'"):
        method.attribute(x, target_values=torch.zeros(1))
    with pytest.raises(ValueError, match="loss must be one of"):
        RegressionIBA(model, model.features, loss="ce")
    with pytest.raises(ValueError, match="loss must be one of"):
        method.attribute(x, loss="squared")
