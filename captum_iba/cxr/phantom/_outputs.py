"""The model's output on edited phantom images, as the interventions (cue, parts) read it."""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def probabilities(model: nn.Module, images: Tensor, column: int) -> Tensor:
    """Sigmoid of output ``column`` for ``images`` (N,), in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        return torch.sigmoid(model(images.to(device))[:, column].float()).cpu()
    finally:
        model.train(was_training)
