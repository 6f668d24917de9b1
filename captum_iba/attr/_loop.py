"""The per-sample optimisation of IBA, Inverse IBA and Regression IBA, as the paper states it.

At the layer's features ``F`` (Schulz et al. 2020, Eq. 1-4; Khakzar et al.
2021, Eq. 5-6 for the inverse form), for every sample at once:

1. ``lambda = smooth(sigmoid(alpha))``, ``alpha`` starting at ``init_alpha``;
2. noise ``eps ~ N(mu, sigma^2)``, ``noise_draws`` draws per step (from ``seed``);
3. ``Z = lambda * F + (1 - lambda) * eps`` (Inverse IBA: ``lambda * eps + (1 - lambda) * F``);
4. the loss ``sign * L_model(phi(Z)) + beta * L_I`` (``sign`` -1 for Inverse IBA);
5. one Adam step on ``alpha``.

The :class:`~captum_iba.bottleneck.Bottleneck` states the terms; the
:class:`~captum_iba._engine.Engine` computes ``phi(Z)`` (how fast, not what).
Adam updates every element on its own and the noise of a step is shared by
the samples, so each sample follows the trajectory it would follow alone.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .._progress import progress as progress_bar
from ..bottleneck import Bottleneck


@torch.enable_grad()  # also when the caller runs under torch.no_grad()
def optimise(bottleneck: Bottleneck, engine: Callable[[Tensor, Tensor], Tensor],
             model_loss: Callable[[Tensor], Tensor], options, sign: float, seed: int,
             progress: bool = False) -> Tensor:
    """Minimise ``sign * L_model + beta * L_I`` over ``alpha``; return the final ``lambda`` (N, *S).

    ``engine(kept, noise)`` gives the model outputs for the N x draws noisy
    maps; ``model_loss(outputs)`` each sample's ``L_model``, averaged over its
    draws, shape (N,); ``options`` an :class:`~captum_iba.attr.options.IBAOptions`.
    """
    generator = torch.Generator(device=bottleneck.features.device).manual_seed(seed)
    alpha = torch.full_like(bottleneck.features, float(options.init_alpha), requires_grad=True)
    optimizer = torch.optim.Adam([alpha], lr=options.lr)
    for _ in progress_bar(range(options.steps), desc="bottleneck steps", enabled=progress):
        lam = bottleneck.lambda_of(alpha)                          # lambda = smooth(sigmoid(alpha))
        noise = bottleneck.noise(options.noise_draws, generator)   # eps ~ N(mu, sigma^2)
        outputs = engine(bottleneck.kept(lam), noise)              # phi(Z), Z mixes F and eps by lambda
        loss = (sign * model_loss(outputs) + options.beta * bottleneck.information(lam)).sum()
        optimizer.zero_grad()
        (alpha.grad,) = torch.autograd.grad(loss, [alpha])
        optimizer.step()
    return bottleneck.lambda_of(alpha.detach())
