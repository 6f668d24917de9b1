"""Where the bottleneck goes in a user's model: layer lookup and the default-layer rule.

The IBA family's default bottleneck is the layer whose feature map is closest
to the paper's 14 cells per side at the input size used: DenseNet-121's
``features.denseblock3`` at 224 px (14 x 14), ``features.denseblock2`` at 96 px
(12 x 12). Candidates are the stages of the two families the paper's models
come from: DenseNet dense blocks (``...denseblockK``) and ResNet stages
(``...layerK``); their map grids are measured with one forward pass of a
blank image, so any input size, stride or wrapper is handled.
"""

from __future__ import annotations

import re
from typing import List, Tuple

import torch
from torch import nn

__all__ = ["PAPER_CELLS", "bottleneck_candidates", "default_bottleneck"]

#: Cells per side of the paper's bottleneck (DenseNet-121's dense block 3 at 224 px).
PAPER_CELLS = 14

# (family, pattern of its stage names): the first family with a match is the model's.
_FAMILIES = (
    ("DenseNet", re.compile(r"(?:^|\.)denseblock\d+$")),
    ("ResNet", re.compile(r"(?:^|\.)layer\d+$")),
)


def bottleneck_candidates(model: nn.Module, input_size: int, channels: int = 3) -> List[Tuple[str, Tuple[int, int, int]]]:
    """The stages where a bottleneck may go, with their feature-map shapes.

    Parameters
    ----------
    model : nn.Module
        A DenseNet- or ResNet-family model (or a wrapper that exposes its
        layer names, as :class:`~captum_iba.cxr.models.external.ExternalModel`).
    input_size : int
        Side of the (square) input images, in pixels.
    channels : int
        Input channels of ``model`` (3 for the library's images).

    Returns
    -------
    list of (str, (C, h, w))
        Layer names in forward order and the shape of their output for one
        image. One forward pass of zeros measures them; the model's mode is
        restored.

    Raises
    ------
    ValueError
        If the model has no dense block nor ResNet stage: name a layer instead.
    """
    if not isinstance(input_size, int) or input_size < 8:
        raise ValueError(f"input_size: expected an integer >= 8, got {input_size!r}")
    named = list(model.named_modules())
    for _, pattern in _FAMILIES:
        names = [name for name, _ in named if pattern.search(name)]
        if names:
            break
    else:
        raise ValueError(
            "layer: no default bottleneck for this model (it has no DenseNet 'denseblockK' "
            "nor ResNet 'layerK' stages); name the layer"
        )
    modules = dict(named)
    shapes = {}

    def hook(name):
        def record(module, args, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                shapes[name] = tuple(output.shape[1:])

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, input_size, input_size))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return [(name, shapes[name]) for name in names if name in shapes]


def default_bottleneck(model: nn.Module, input_size: int, cells: int = PAPER_CELLS, channels: int = 3) -> str:
    """The candidate layer whose map grid is closest to ``cells`` per side.

    Ties go to the deeper layer. DenseNet-121: ``features.denseblock3`` at
    224 px, ``features.denseblock2`` at 96 px; ResNet-50: ``layer3`` at 224 px.

    Parameters
    ----------
    model : nn.Module
    input_size : int
        Side of the input images, in pixels.
    cells : int
        Wanted cells per side (the paper's 14).
    channels : int
        Input channels of ``model``.

    Returns
    -------
    str
        The layer's name.
    """
    candidates = bottleneck_candidates(model, input_size, channels)
    if not candidates:
        raise ValueError("layer: none of the model's stages gives a 2-D feature map; name the layer")
    distance = [(abs(shape[1] - cells), -order) for order, (_, shape) in enumerate(candidates)]
    return candidates[distance.index(min(distance))][0]
