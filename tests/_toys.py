"""Toy models with known ground truth for the attribution tests."""

from __future__ import annotations

import torch
from torch import nn


def region_mask(size: int, top: int, left: int, side: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


class RegionModel(nn.Module):
    """Two-class logits from the mean of one feature channel inside known regions.

    ``features`` (the bottleneck layer) is an identity 1x1 convolution, so the
    feature map is the input. The class-1 logit is ``gain * (score - 1)`` where
    ``score`` combines the region means of channel ``channel``: a weighted sum
    (``combine="sum"``) or the maximum (``combine="max"``, two detectors of the
    same evidence). Every other channel and location is ignored.
    """

    def __init__(self, masks, weights=None, channels: int = 3, channel: int = 0,
                 combine: str = "sum", gain: float = 3.0):
        super().__init__()
        self.features = nn.Conv2d(channels, channels, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
            self.features.bias.zero_()
        masks = torch.stack(list(masks)).float()
        self.register_buffer("masks", masks / masks.sum((1, 2), keepdim=True))
        weights = torch.ones(len(masks)) if weights is None else torch.as_tensor(weights).float()
        self.register_buffer("weights", weights)
        self.channel, self.combine, self.gain = channel, combine, gain

    def forward(self, x):
        f = self.features(x)
        means = (f[:, self.channel, None] * self.masks).sum((2, 3))
        if self.combine == "max":
            score = means.max(1).values
        else:
            score = (means * self.weights).sum(1)
        logit = self.gain * (score - 1.0)
        return torch.stack([torch.zeros_like(logit), logit], 1)


def background(n: int, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Estimation data: unit Gaussian features, no finding anywhere."""
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def with_findings(masks, strengths, channels: int = 3, size: int = 16, seed: int = 1):
    """One input: background plus ``strength`` in every channel inside each mask."""
    x = background(1, channels, size, seed)
    for mask, strength in zip(masks, strengths):
        x[:, :, mask] += strength
    return x


class SmallCNN(nn.Module):
    """A small random CNN: conv stack -> ``layer`` -> head with ``n_outputs`` outputs."""

    def __init__(self, n_outputs: int = 4, width: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.layer = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Dropout(0.3),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, n_outputs),
        )

    def forward(self, x):
        return self.head(self.layer(self.stem(x)))


class ResidualNet(nn.Module):
    """A skip connection around the layer and an extra argument used after it."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x, scale):
        h = torch.relu(self.stem(x))
        y = self.layer(h)
        y += h  # in place on the suffix's value, as ResNets do
        return self.head(y.mean((2, 3))) * scale


class UntraceableNet(SmallCNN):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x):
        h = self.layer(self.stem(x))
        if h.sum() > 0:
            h = h * 1.0
        return self.head(h)


class RegionRegressor(RegionModel):
    """A score ``sum_k weights[k] * mean of channel 0 in region k``, shape (N, 1)."""

    def forward(self, x):
        f = self.features(x)
        means = (f[:, self.channel, None] * self.masks).sum((2, 3))
        return (means * self.weights).sum(1, keepdim=True)


def tiny_densenet(n_outputs: int = 4, seed: int = 0) -> nn.Module:
    """torchvision's DenseNet with DenseNet-121's layer names at a toy size."""
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.DenseNet(
        growth_rate=4, block_config=(1, 1, 1, 1), num_init_features=8, bn_size=2, num_classes=n_outputs
    ).eval()
