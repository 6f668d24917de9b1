"""The per-sample bottleneck: the math of Information Bottleneck Attribution.

At a layer with feature map ``F`` (per sample ``C x h x w``) and estimated
per-neuron statistics ``mu``, ``sigma`` (Schulz et al. 2020, "Restricting the
flow"; Khakzar et al. 2021 for the inverse form):

* ``lambda = smooth(sigmoid(alpha))``, a Gaussian blur per channel;
* ``eps ~ N(mu, sigma^2)`` per neuron;
* IBA:          ``Z = lambda * F + (1 - lambda) * eps``
* Inverse IBA:  ``Z = lambda * eps + (1 - lambda) * F``
* capacity per neuron, in nats, with ``r = (F - mu) / sigma``:
  ``KL = -0.5 * (1 + log v - m^2 - v)``, ``m = lambda * r``,
  ``v = (1 - lambda)^2`` -- the KL divergence of ``N(m, v)`` from ``N(0, 1)``.

Inactive neurons (almost always zero in the estimation data) are zeroed in
``Z`` and left out of the capacity. :class:`Bottleneck` gathers these terms
for one layer and one batch; the optimisation loop that uses them is
:func:`captum_iba.attr._loop.optimise`, and the mixing of ``Z`` for N x draws
maps at once is :func:`captum_iba._engine.mix.noisy_features`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # annotations only
    from ._engine.layouts import Layout
    from .stats import FeatureStats

# Keeps log((1 - lambda)^2) finite when the sigmoid saturates to exactly 1.
_MIN_VARIANCE = 1e-8


def gaussian_kernel_1d(sigma: float) -> Tensor:
    """Normalised 1-D Gaussian kernel of size ``2 * round(2 * sigma) + 1``.

    Parameters
    ----------
    sigma : float
        Standard deviation in feature-map cells (> 0).

    Returns
    -------
    Tensor, shape (K,), float64
        Weights summing to 1.
    """
    radius = int(round(2 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def smooth(lam: Tensor, sigma: Optional[float]) -> Tensor:
    """Blur ``lam`` spatially, per channel, with a Gaussian of std ``sigma``.

    Separable, with reflection padding, so the blurred map keeps its shape
    and stays in [0, 1]. Near a side shorter than the kernel the kernel is
    cut to fit and renormalised.

    Parameters
    ----------
    lam : Tensor, shape (N, C, h, w)
    sigma : float or None
        Standard deviation in cells; ``None`` or 0 returns ``lam`` unchanged.

    Returns
    -------
    Tensor, shape (N, C, h, w)
    """
    if not sigma:
        return lam
    kernel = gaussian_kernel_1d(sigma)
    for dim in (2, 3):
        if lam.shape[dim] > 1:
            lam = _blur_along(lam, _fit_kernel(kernel, lam.shape[dim]), dim)
    return lam


def _blur_along(x: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """Convolve ``x`` (N, C, h, w) with a 1-D ``kernel`` along ``dim`` (2 or 3), reflecting."""
    radius = kernel.numel() // 2
    pad = (0, 0, radius, radius) if dim == 2 else (radius, radius, 0, 0)
    padded = F.pad(x, pad, mode="reflect")
    # A weighted sum of shifted views: depthwise convolution with one input
    # channel per map is several times slower on CPUs, backward above all.
    return sum(float(weight) * padded.narrow(dim, i, x.shape[dim]) for i, weight in enumerate(kernel))


def _fit_kernel(kernel: Tensor, side: int) -> Tensor:
    """The kernel cut to a radius below ``side`` (reflection padding needs it), renormalised."""
    radius = kernel.numel() // 2
    cut = min(radius, side - 1)
    kernel = kernel[radius - cut : radius + cut + 1]
    return kernel / kernel.sum()


def lambda_from_alpha(alpha: Tensor, sigma: Optional[float]) -> Tensor:
    """``lambda = smooth(sigmoid(alpha), sigma)``, shape of ``alpha``."""
    return smooth(torch.sigmoid(alpha), sigma)


def capacity(
    features: Tensor,
    lam: Tensor,
    mean: Tensor,
    std: Tensor,
    active: Optional[Tensor] = None,
) -> Tensor:
    """KL capacity per neuron, in nats.

    ``KL = -0.5 * (1 + log v - m^2 - v)`` with ``r = (F - mu) / sigma``,
    ``m = lambda * r`` and ``v = (1 - lambda)^2``: the information that the
    noisy ``Z`` still carries about ``F``, relative to pure noise.

    Parameters
    ----------
    features : Tensor, shape (N, C, h, w)
        The feature map ``F``.
    lam : Tensor, shape (N, C, h, w)
        Signal fraction ``lambda`` in [0, 1].
    mean, std : Tensor, shape (C, h, w)
        Per-neuron statistics; ``std`` already clamped below.
    active : Tensor of bool, shape (C, h, w), optional
        Neurons to keep; the capacity of the others is 0.

    Returns
    -------
    Tensor, shape (N, C, h, w)
        Non-negative capacity in nats.
    """
    r = (features - mean) / std
    m = lam * r
    v = (1 - lam) ** 2
    kl = -0.5 * (1 + torch.log(v.clamp(min=_MIN_VARIANCE)) - m**2 - v)
    if active is not None:
        kl = kl * active
    return kl


def mean_capacity(kl: Tensor, active: Optional[Tensor] = None) -> Tensor:
    """Per-sample mean capacity over active neurons, shape (N,), in nats."""
    total = kl.flatten(1).sum(1)
    count = kl[0].numel() if active is None else active.sum().clamp(min=1)
    return total / count


def to_bits(kl_nats: Tensor) -> Tensor:
    """Convert nats to bits."""
    return kl_nats / math.log(2)


class Bottleneck:
    """The bottleneck at one layer for one batch: ``F``, its statistics, and the terms of a step.

    Used by the per-sample loop (:func:`captum_iba.attr._loop.optimise`) and by
    the readout's training step. Every tensor is in the layer's own layout;
    ``layout`` says where the spatial grid lies in it (for the smoothing of
    ``lambda`` and for the map).

    Parameters
    ----------
    features : Tensor, shape (N, *S)
        The layer's output ``F``.
    stats : FeatureStats
        Per-neuron statistics of shape ``S``.
    min_std, active_neurons_threshold : float
        The clamp of the std and the active-neuron threshold.
    sigma : float or None
        Smoothing of ``lambda``, in grid cells.
    layout : Layout
    inverse : bool
        Inverse IBA's ``Z = lambda * eps + (1 - lambda) * F``: ``Z`` keeps ``1 - lambda`` of ``F``.
    """

    def __init__(self, features: Tensor, stats: "FeatureStats", *, min_std: float, active_neurons_threshold: float,
                 sigma: Optional[float], layout: "Layout", inverse: bool = False) -> None:
        self.features, self.sigma, self.layout, self.inverse = features, sigma, layout, inverse
        like = dict(device=features.device, dtype=features.dtype)
        self.mean = stats.mean.to(**like)
        self.std = stats.std(min_std).to(**like)
        self.active = stats.active_mask(active_neurons_threshold).to(features.device)

    def lambda_of(self, alpha: Tensor) -> Tensor:
        """``lambda = smooth(sigmoid(alpha))``, smoothed on the grid (elements outside it unsmoothed)."""
        if self.layout.index is None:
            return lambda_from_alpha(alpha, self.sigma)
        lam = torch.sigmoid(alpha)
        return self.layout.to_output(smooth(self.layout.to_grid(lam), self.sigma), self.layout.outside_of(lam))

    def kept(self, lam: Tensor) -> Tensor:
        """The share of ``F`` that ``Z`` keeps: ``lambda`` (IBA) or ``1 - lambda`` (Inverse IBA)."""
        return 1 - lam if self.inverse else lam

    def noise(self, draws: int, generator: torch.Generator, per_sample: bool = False) -> Tensor:
        """``eps ~ N(mu, sigma^2)``: ``(draws, *S)`` shared by the samples, or ``(N, draws, *S)``.

        Drawn in the grid's ``(C, h, w)`` order (then the elements outside it),
        so a layer gets the same noise per (channel, cell) whatever its layout.
        """
        rows = (self.features.shape[0], draws) if per_sample else (draws,)
        # Per-sample noise is drawn on the CPU, as the readout's training always has.
        device = "cpu" if per_sample else self.features.device
        draw = lambda *shape: torch.randn((*rows, *shape), generator=generator, device=device,  # noqa: E731
                                          dtype=self.features.dtype)
        layout = self.layout
        eps = draw(*layout.grid)
        if layout.index is not None:
            eps = layout.to_output(eps.flatten(0, len(rows) - 1), draw(layout.leading).flatten(0, len(rows) - 1))
            eps = eps.view(*rows, *layout.shape)
        return self.mean + self.std * eps.to(self.features.device)

    def information(self, lam: Tensor) -> Tensor:
        """``L_I``: the mean capacity over active neurons per sample, shape (N,), in nats."""
        return mean_capacity(capacity(self.features, lam, self.mean, self.std, self.active), self.active)

    def bits(self, lam: Tensor) -> Tensor:
        """Capacity per neuron in bits on the grid, ``(N, C, h, w)``; elements outside the grid are left out."""
        return self.layout.to_grid(to_bits(capacity(self.features, lam, self.mean, self.std, self.active)))
