"""The bottleneck math against closed forms and independent implementations."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import ndimage

from captum_iba._engine.mix import noisy_features
from captum_iba.bottleneck import capacity, gaussian_kernel_1d, lambda_from_alpha, mean_capacity, smooth, to_bits


@pytest.mark.parametrize(
    "lam, r, expected",
    [
        (0.0, 3.0, 0.0),  # all noise: Z carries nothing
        (0.5, 2.0, 0.5 * (1.0 + 0.25 - 1.0 - math.log(0.25))),  # m = 1, v = 1/4
        (0.9, 0.0, 0.5 * (0.01 - 1.0 - math.log(0.01))),  # only the variance term
        (0.9, -1.0, 0.5 * (0.81 + 0.01 - 1.0 - math.log(0.01))),
    ],
)
def test_capacity_hand_picked_values(lam, r, expected):
    mean, std = torch.tensor([[[1.0]]]), torch.tensor([[[2.0]]])
    features = mean + r * std  # so that (F - mu) / sigma = r
    kl = capacity(features.view(1, 1, 1, 1), torch.full((1, 1, 1, 1), lam), mean, std)
    assert kl.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    lam=st.floats(0.0, 0.999),
    r=st.floats(-5, 5),
)
def test_capacity_is_kl_of_gaussians(lam, r):
    """KL( N(lam * r, (1 - lam)^2) || N(0, 1) ), the closed form in torch.distributions."""
    kl = capacity(
        torch.tensor(r, dtype=torch.float64).view(1, 1, 1, 1),
        torch.tensor(lam, dtype=torch.float64).view(1, 1, 1, 1),
        torch.zeros(1, 1, 1, dtype=torch.float64),
        torch.ones(1, 1, 1, dtype=torch.float64),
    )
    q = torch.distributions.Normal(torch.tensor(lam * r), torch.tensor(1 - lam, dtype=torch.float64))
    p = torch.distributions.Normal(torch.tensor(0.0), torch.tensor(1.0))
    assert kl.item() == pytest.approx(torch.distributions.kl_divergence(q, p).item(), rel=1e-4, abs=1e-5)
    assert kl.item() >= 0


def test_inactive_neurons_have_no_capacity_and_are_left_out_of_the_mean():
    features = torch.full((2, 2, 1, 1), 3.0)
    lam = torch.full_like(features, 0.5)
    active = torch.tensor([True, False]).view(2, 1, 1)
    kl = capacity(features, lam, torch.zeros(2, 1, 1), torch.ones(2, 1, 1), active)
    assert (kl[:, 1] == 0).all() and (kl[:, 0] > 0).all()
    assert torch.allclose(mean_capacity(kl, active), kl[:, 0, 0, 0])


def test_noisy_features_interpolates_and_is_sample_major():
    features = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    noise = torch.full((3, 1, 2, 2), 10.0)
    keep_all = noisy_features(features, torch.ones_like(features), noise)
    assert keep_all.shape == (6, 1, 2, 2)
    assert torch.equal(keep_all[:3], torch.zeros(3, 1, 2, 2))
    assert torch.equal(keep_all[3:], torch.ones(3, 1, 2, 2))
    assert torch.equal(noisy_features(features, torch.zeros_like(features), noise), noise.repeat(2, 1, 1, 1))
    quarter = noisy_features(features, torch.full_like(features, 0.25), noise)
    assert torch.allclose(quarter[3:], torch.full((3, 1, 2, 2), 0.25 * 1 + 0.75 * 10))


def test_noisy_features_active_mask_and_relu():
    features = torch.full((1, 2, 1, 1), -1.0)
    noise = torch.full((1, 2, 1, 1), -2.0)
    active = torch.tensor([True, False]).view(2, 1, 1)
    z = noisy_features(features, torch.full_like(features, 0.5), noise, active, relu=False)
    assert z[0, 0].item() == -1.5 and z[0, 1].item() == 0
    z = noisy_features(features, torch.full_like(features, 0.5), noise, active, relu=True)
    assert (z == 0).all()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7, 3.0])
def test_kernel_size_and_normalisation(sigma):
    kernel = gaussian_kernel_1d(sigma)
    assert kernel.numel() == 2 * round(2 * sigma) + 1
    assert kernel.sum().item() == pytest.approx(1.0)
    assert torch.allclose(kernel, kernel.flip(0))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_smoothing_matches_scipy_mirror_gaussian(sigma):
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = smooth(x, sigma).numpy()
    # scipy's "mirror" is torch's "reflect"; truncate=2 gives radius round(2 * sigma).
    theirs = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=2.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-10)


def test_smoothing_disabled_and_tiny_maps():
    x = torch.rand(1, 2, 3, 3)
    assert smooth(x, None) is x and smooth(x, 0) is x
    one_cell = torch.rand(1, 2, 1, 1)
    assert torch.equal(smooth(one_cell, 2.0), one_cell)  # nothing to blur with
    assert torch.allclose(smooth(torch.full((1, 1, 2, 5), 0.3), 4.0), torch.full((1, 1, 2, 5), 0.3))


def test_lambda_is_smoothed_sigmoid_and_bits():
    alpha = torch.randn(1, 2, 6, 6)
    assert torch.allclose(lambda_from_alpha(alpha, None), torch.sigmoid(alpha))
    assert torch.allclose(lambda_from_alpha(alpha, 1.0), smooth(torch.sigmoid(alpha), 1.0))
    assert to_bits(torch.tensor(math.log(2))).item() == pytest.approx(1.0)


def test_noisy_features_takes_per_sample_noise_as_well_as_shared_noise():
    # Readout IBA draws noise per sample (N, B, ...); the loop shares it (B, ...): both are Z = lam F + (1-lam) eps.
    generator = torch.Generator().manual_seed(0)
    features, lam = torch.randn(3, 4, 5, 5, generator=generator), torch.rand(3, 4, 5, 5, generator=generator)
    per_sample = torch.randn(3, 2, 4, 5, 5, generator=generator)
    expected = (lam.unsqueeze(1) * features.unsqueeze(1) + (1 - lam.unsqueeze(1)) * per_sample).flatten(0, 1)
    assert torch.allclose(noisy_features(features, lam, per_sample), expected, atol=1e-6)
    shared = per_sample[0]
    expected = (lam.unsqueeze(1) * features.unsqueeze(1) + (1 - lam.unsqueeze(1)) * shared).flatten(0, 1)
    assert torch.allclose(noisy_features(features, lam, shared), expected, atol=1e-6)
