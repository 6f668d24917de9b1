"""The noise mixing of every step, ``Z = lambda * F + (1 - lambda) * eps`` for N x draws maps, on one buffer.

:func:`captum_iba.bottleneck.mix` states the formula; :func:`noisy_features`
computes it as the loop needs it: ``lambda * F`` and ``1 - lambda`` once per
sample, ``Z`` written in one pass into a buffer that every step reuses (a fresh
map of the N x draws size costs page faults at every step), and a backward
that gets the gradient of ``lambda`` as ``F * sum_b g_b - sum_b g_b * eps_b``
without forming ``F - eps`` per draw. Optionally ``Z`` is clamped at 0, built
channels-last, or average-pooled (the network's leading pool folded in).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def noisy_features(features: Tensor, lam: Tensor, noise: Tensor, active: Optional[Tensor] = None,
                   relu: bool = False, *, channels_last: bool = False, out: Optional[Tensor] = None,
                   pool: int = 1) -> Tensor:
    """``Z = lam * F + (1 - lam) * eps`` for every noise draw (Inverse IBA passes ``1 - lambda`` as ``lam``).

    Parameters
    ----------
    features : Tensor, shape (N, *S)
        The layer's features ``F`` in their own layout (``S``: ``(C, h, w)``, ``(h, w, C)``, ``(L, D)``).
    lam : Tensor, shape (N, *S)
        Fraction of the signal kept; the only input that gets a gradient.
    noise : Tensor, shape (B, *S) or (N, B, *S)
        Noise draws ``eps``; a (B, ...) tensor is shared by all N samples (the
        loop's case, the one the buffer serves), an (N, B, ...) one is per sample.
    active : Tensor of bool, shape S, optional
        Inactive neurons are zeroed in ``Z``.
    relu : bool
        Clamp ``Z`` at 0, for layers whose activations are non-negative.
    channels_last : bool
        Return 4-D ``Z`` in ``torch.channels_last`` memory format; its gradient is expected in it too.
    out : Tensor, optional
        A buffer of ``N * B * prod(S)`` elements of ``features``' dtype and
        device that ``Z`` is written into. Nothing may still use the previous
        ``Z`` written there, and the backward pass uses it as scratch space.
    pool : int
        Return 4-D ``Z`` averaged over non-overlapping ``pool x pool`` windows
        (the sides divisible by ``pool``): the network's leading average pool
        folded in, its backward too on the buffer.

    Returns
    -------
    Tensor, shape (N * B, *S) (pooled sides with ``pool``)
        Sample-major: rows ``i * B ... (i + 1) * B - 1`` belong to sample ``i``.
    """
    if pool != 1 and (features.dim() != 4 or features.shape[2] % pool or features.shape[3] % pool or channels_last):
        raise ValueError(f"pool={pool} needs a contiguous 4-D Z whose sides {tuple(features.shape[2:])} it divides")
    if active is not None:
        # Masking the per-sample inputs is cheap; masking Z would touch N * B maps.
        features, noise = features * active, noise * active
    if features.requires_grad or noise.requires_grad or noise.dim() == features.dim() + 1:
        # Differentiable in every input, or per-sample noise (Readout IBA's training): autograd's form.
        z = torch.addcmul(noise, lam.unsqueeze(1), features.unsqueeze(1) - noise).flatten(0, 1)
        z = z.clamp(min=0) if relu else z
        z = F.avg_pool2d(z, pool) if pool != 1 else z
        return z.contiguous(memory_format=torch.channels_last) if channels_last else z
    return _MixNoise.apply(lam, features, noise, relu, channels_last, out, pool)


class _MixNoise(torch.autograd.Function):
    """:func:`noisy_features` in an (n, draws, K) layout over a reusable buffer.

    ``Z = lam * F + (1 - lam) * eps`` with ``lam * F`` and ``1 - lam`` computed
    once per sample; the gradient of ``lam`` is ``F * sum_b g_b - sum_b g_b * eps_b``.
    With ``pool``, the output is ``Z`` average-pooled and the gradient of ``Z``
    (the pooled gradient over ``pool^2``, spread over each window) is
    multiplied into the buffer in place.
    """

    @staticmethod
    def forward(ctx, lam, features, noise, relu, channels_last, out, pool):
        shape = features.shape
        order = (0, 2, 3, 1) if channels_last else tuple(range(features.dim()))
        flat = lambda t: t.permute(order).reshape(t.shape[0], 1, -1)  # noqa: E731
        n, draws = shape[0], noise.shape[0]
        z = _new_maps((n * draws, *shape[1:]), channels_last, features, out)
        work = z.permute(order).view(n, draws, -1)  # contiguous in this layout
        eps = flat(noise).view(1, draws, -1)
        torch.addcmul(flat(lam * features), flat(1 - lam), eps, out=work)
        clamped = None
        if relu:
            clamped = work < 0  # where clamp(min=0) stops the gradient
            work.clamp_(min=0)
        ctx.save_for_backward(flat(features), eps, clamped)
        # The loop's buffer is free again by the time Z's gradient arrives (the
        # buffer itself, not Z: a reference to an output would make a cycle).
        ctx.scratch = None if out is None else out.view(-1)[: work.numel()].view(work.shape)
        ctx.layout, ctx.pool = (shape, order), pool
        return F.avg_pool2d(z, pool) if pool != 1 else z

    @staticmethod
    def backward(ctx, grad_z):
        features, eps, clamped = ctx.saved_tensors
        shape, order = ctx.layout
        n, draws = shape[0], eps.shape[1]
        if ctx.pool != 1:  # a contiguous 4-D Z (noisy_features checks)
            k = ctx.pool
            difference = torch.sub(features, eps, out=ctx.scratch)
            windows = difference.view(n * draws, shape[1], shape[2] // k, k, shape[3] // k, k)
            windows.mul_((grad_z / (k * k)).unsqueeze(3).unsqueeze(5))
            grad_lam = _unclamped(difference, clamped).sum(1)
            return grad_lam.view(shape), None, None, None, None, None, None
        # A gradient in another memory format is made contiguous in ours (one copy).
        grad = grad_z.permute(order).reshape(n, draws, -1)
        if clamped is not None:
            grad = torch.where(clamped, 0.0, grad)
        against_noise = torch.einsum("nbk,bk->nk", grad, eps[0])
        grad_lam = torch.addcmul(-against_noise, features[:, 0], grad.sum(1))
        permuted = [n] + [shape[i] for i in order[1:]]
        inverse = [order.index(i) for i in range(len(order))]
        return grad_lam.view(permuted).permute(inverse).contiguous(), None, None, None, None, None, None


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
