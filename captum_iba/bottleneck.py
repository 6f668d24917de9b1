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
``Z`` and left out of the capacity. The functions here are stateless; the
optimisation loop lives in :mod:`captum_iba.attr._base`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

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


def noisy_features(
    features: Tensor,
    lam: Tensor,
    noise: Tensor,
    active: Optional[Tensor] = None,
    relu: bool = False,
    *,
    channels_last: bool = False,
    out: Optional[Tensor] = None,
    exact: bool = True,
    pool: int = 1,
) -> Tensor:
    """``Z = lam * F + (1 - lam) * eps`` for every noise draw.

    Inverse IBA calls this with ``1 - lambda`` as ``lam``. No map of the
    ``N x B`` size is allocated when ``out`` is given, in the forward pass or
    the backward. ``exact=True`` (default) rounds as ``eps + lam * (F - eps)``
    always did, bit for bit; ``exact=False`` computes ``lam * F`` and
    ``1 - lam`` once per sample, writes ``Z`` in one pass and gets the
    gradient of ``lam`` as ``F * sum_b g_b - sum_b g_b * eps_b``, without
    ``F - eps`` per draw (fewer passes over the maps, other rounding).

    Parameters
    ----------
    features : Tensor, shape (N, C, h, w)
    lam : Tensor, shape (N, C, h, w)
        Fraction of the signal kept; the only input that gets a gradient.
    noise : Tensor, shape (B, C, h, w) or (N, B, C, h, w)
        Noise draws ``eps``; a (B, ...) tensor is shared by all N samples (the
        optimisation loop's case, the one the buffer path serves).
    active : Tensor of bool, shape (C, h, w), optional
        Inactive neurons are zeroed in ``Z``.
    relu : bool
        Clamp ``Z`` at 0, for layers whose activations are non-negative.
    channels_last : bool
        Return ``Z`` in ``torch.channels_last`` memory format (for a suffix
        that runs channels-last); its gradient is expected in the same format.
    out : Tensor, optional
        A buffer of ``N * B * C * h * w`` elements, of ``features``' dtype and
        device, that ``Z`` is written into (the optimisation loop reuses one:
        a fresh map of this size costs page faults on every step). Nothing may
        still use the previous ``Z`` written there, and the backward pass uses
        the buffer as scratch space (``Z``'s values are gone after it).
    exact : bool
        Keep the rounding of ``eps + lam * (F - eps)`` (see above).
    pool : int
        Return ``Z`` averaged over non-overlapping ``pool x pool`` windows
        (``avg_pool2d(Z, pool)``; ``h`` and ``w`` divisible by ``pool``): the
        network's leading average pooling folded in, so that with ``out``
        its backward too runs on the buffer, without a fresh full-size map.

    Returns
    -------
    Tensor, shape (N * B, C, h / pool, w / pool)
        Sample-major: rows ``i * B ... (i + 1) * B - 1`` belong to sample ``i``.
    """
    if pool != 1 and (features.shape[2] % pool or features.shape[3] % pool or channels_last):
        raise ValueError(
            f"pool={pool} needs a contiguous Z whose sides {tuple(features.shape[2:])} it divides"
        )
    if active is not None:
        # Masking the per-sample inputs is cheap; masking Z would touch N * B maps.
        features, noise = features * active, noise * active
    if features.requires_grad or noise.requires_grad or noise.dim() == features.dim() + 1:
        # Differentiable in every input, or per-sample noise (Readout IBA's training): autograd's form.
        z = torch.addcmul(noise, lam.unsqueeze(1), features.unsqueeze(1) - noise).flatten(0, 1)
        z = z.clamp(min=0) if relu else z
        z = F.avg_pool2d(z, pool) if pool != 1 else z
        return z.contiguous(memory_format=torch.channels_last) if channels_last else z
    return _MixNoise.apply(lam, features, noise, relu, channels_last, out, exact, pool)


class _MixNoise(torch.autograd.Function):
    """``noisy_features`` in an (n, draws, K) layout over a reusable buffer.

    ``exact``: today's rounding, bit for bit -- ``Z = eps + lam * (F - eps)``
    and the gradient ``sum_b g_b * (F - eps_b)`` -- with ``F - eps`` written
    into the buffer instead of fresh memory. Otherwise the per-sample form:
    ``Z = lam * F + (1 - lam) * eps`` with ``lam * F`` and ``1 - lam`` computed
    once per sample, and ``F * sum_b g_b - sum_b g_b * eps_b`` as gradient.
    With ``pool``, the output is ``Z`` average-pooled and the gradient of ``Z``
    (the pooled gradient over ``pool^2``, spread over each window) is
    multiplied into the buffer in place.
    """

    @staticmethod
    def forward(ctx, lam, features, noise, relu, channels_last, out, exact, pool):
        shape = features.shape  # (N, C, h, w)
        order = (0, 2, 3, 1) if channels_last else (0, 1, 2, 3)
        flat = lambda t: t.permute(order).reshape(t.shape[0], 1, -1)  # noqa: E731
        n, draws = shape[0], noise.shape[0]
        z = _new_maps((n * draws, *shape[1:]), channels_last, features, out)
        work = z.permute(order).view(n, draws, -1)  # contiguous in this layout
        eps = flat(noise).view(1, draws, -1)
        if exact:
            torch.sub(flat(features), eps, out=work)
            torch.addcmul(eps, flat(lam), work, out=work)
        else:
            torch.addcmul(flat(lam * features), flat(1 - lam), eps, out=work)
        clamped = None
        if relu:
            clamped = work < 0  # where clamp(min=0) stops the gradient
            work.clamp_(min=0)
        ctx.save_for_backward(flat(features), eps, clamped)
        # The loop's buffer is free again by the time Z's gradient arrives (the
        # buffer itself, not Z: a reference to an output would make a cycle).
        ctx.scratch = None if out is None else out.view(-1)[: work.numel()].view(work.shape)
        ctx.layout, ctx.exact, ctx.pool = (shape, order), exact, pool
        return F.avg_pool2d(z, pool) if pool != 1 else z

    @staticmethod
    def backward(ctx, grad_z):
        features, eps, clamped = ctx.saved_tensors
        shape, order = ctx.layout
        n, draws = shape[0], eps.shape[1]
        if ctx.pool != 1:  # a contiguous Z (noisy_features checks)
            k = ctx.pool
            difference = torch.sub(features, eps, out=ctx.scratch)
            windows = difference.view(n * draws, shape[1], shape[2] // k, k, shape[3] // k, k)
            windows.mul_((grad_z / (k * k)).unsqueeze(3).unsqueeze(5))
            grad_lam = _unclamped(difference, clamped).sum(1)
            return grad_lam.view(shape), None, None, None, None, None, None, None
        # A gradient in another memory format is made contiguous in ours (one copy).
        grad = grad_z.permute(order).reshape(n, draws, -1)
        if ctx.exact:
            # (F - eps) * g, zeroed where the clamp stopped it: in the buffer, no fresh map.
            difference = torch.sub(features, eps, out=ctx.scratch).mul_(grad)
            grad_lam = _unclamped(difference, clamped).sum(1)
        else:
            if clamped is not None:
                grad = torch.where(clamped, 0.0, grad)
            against_noise = torch.einsum("nbk,bk->nk", grad, eps[0])
            grad_lam = torch.addcmul(-against_noise, features[:, 0], grad.sum(1))
        permuted = [n] + [shape[i] for i in order[1:]]
        inverse = [order.index(i) for i in range(4)]
        return grad_lam.view(permuted).permute(inverse).contiguous(), None, None, None, None, None, None, None


def _unclamped(grad: Tensor, clamped: Optional[Tensor]) -> Tensor:
    """``grad`` zeroed in place where the clamp at 0 stopped it (a bool mask, no float copy)."""
    return grad if clamped is None else grad.masked_fill_(clamped, 0.0)


def _new_maps(shape, channels_last: bool, like: Tensor, out: Optional[Tensor]) -> Tensor:
    """An uninitialised tensor of ``shape``, on ``out``'s memory when given.

    ``set_`` makes a new tensor over the buffer's storage rather than a view of
    it, so autograd treats it as the function's own output (which the suffix
    may then modify in place).
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format)
    if out.dtype != like.dtype or out.device != like.device or out.numel() < math.prod(shape):
        raise ValueError(f"out must hold {math.prod(shape)} elements of {like.dtype} on {like.device}")
    stride = torch.empty(shape, device="meta", memory_format=memory_format).stride()
    return like.new_empty(0).set_(out.untyped_storage(), out.storage_offset(), shape, stride)


def to_bits(kl_nats: Tensor) -> Tensor:
    """Convert nats to bits."""
    return kl_nats / math.log(2)
