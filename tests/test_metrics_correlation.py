"""Pearson correlation of maps with reference maps."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from captum_iba.metrics import map_correlation


@pytest.fixture
def maps():
    return torch.rand(3, 1, 10, 12, generator=torch.Generator().manual_seed(0))


def test_a_map_correlates_one_with_itself_and_minus_one_with_its_negation(maps):
    assert torch.allclose(map_correlation(maps, maps), torch.ones(3))
    assert torch.allclose(map_correlation(maps, -maps), -torch.ones(3))
    # Invariant to scale and offset of either map.
    assert torch.allclose(map_correlation(3 * maps + 1, maps), torch.ones(3))


def test_correlation_is_per_sample_and_equals_numpy(maps):
    references = torch.rand(3, 10, 12, generator=torch.Generator().manual_seed(1))
    expected = [
        np.corrcoef(m.flatten(), r.flatten())[0, 1]
        for m, r in zip(maps.numpy(), references.numpy())
    ]
    assert np.allclose(map_correlation(maps, references).numpy(), expected, atol=1e-6)


def test_maps_of_another_size_are_resized_to_the_reference(maps):
    references = F.interpolate(maps, size=(40, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(map_correlation(maps, references), torch.ones(3), atol=1e-6)
    shuffled = maps.flatten(1)[:, torch.randperm(120, generator=torch.Generator().manual_seed(2))]
    assert (map_correlation(shuffled.view(3, 1, 10, 12), references) < 0.5).all()
    # Channels are summed, as for every attribution.
    three_channels = maps.expand(3, 3, 10, 12)
    assert torch.allclose(map_correlation(three_channels, references), torch.ones(3), atol=1e-6)


def test_a_constant_map_has_no_correlation(maps):
    constant = torch.full_like(maps, 0.1)
    correlation = map_correlation(constant, maps)
    assert correlation.isnan().all()


def test_reference_maps_are_checked_by_name(maps):
    with pytest.raises(ValueError, match=r"attributions has batch size 3 but 2"):
        map_correlation(maps, maps[:2])
    with pytest.raises(ValueError, match="reference_maps contain NaN"):
        map_correlation(maps, torch.full_like(maps, float("nan")))
