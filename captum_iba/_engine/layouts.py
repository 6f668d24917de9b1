"""Where a layer's output holds its grid of feature vectors: one idea for every model layout.

A bottleneck layer returns a map ``(N, C, h, w)`` (torchvision, timm
ConvNeXt), a channels-last map ``(N, h, w, C)`` (timm Swin stages), or a
token sequence ``(N, L, D)`` whose ``L - k`` patch tokens lie on an ``h x w``
grid after ``k`` leading tokens (class, distillation, register tokens). A
``reshape_transform`` -- pytorch-grad-cam's meaning: the layer's output to
``(N, C, h, w)`` -- states the layout; for timm and HuggingFace ViT, DeiT,
Swin and ConvNeXt layers it is found from the model.

The bottleneck acts on the layer's own output in its own layout. A
:class:`Layout` knows which elements of one sample's output form the grid
(as a gather index, found by running ``reshape_transform`` once on element
numbers), so the spatial smoothing of ``lambda`` and the map work on the grid
and everything else stays elementwise. Elements outside the grid (the leading
tokens) are restricted like every other feature -- their own ``lambda``,
counted in the information term -- but have no place on the map.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

#: HuggingFace model types and their leading tokens before the patch tokens.
_HF_LEADING_TOKENS = {"vit": 1, "deit": 2, "beit": 1, "dinov2": 1, "dinov2_with_registers": 1, "vit_msn": 1,
                      "swin": 0, "swinv2": 0, "donut-swin": 0}


class Layout:
    """The grid inside one layer's output.

    Parameters
    ----------
    shape : tuple of int
        One sample's output shape (``(C, h, w)``, ``(h, w, C)``, ``(L, D)``).
    grid : tuple of int
        ``(C, h, w)``: the feature vectors on their grid.
    index : Tensor of int64, shape (C * h * w,), or None
        Element numbers (into one flattened sample) of the grid in ``(C, h, w)``
        order; None when the output is the grid itself.
    name : str
        How the layout was found, for reports (``"NCHW"``, ``"NHWC"``,
        ``"tokens (1 leading)"``, ``"reshape_transform"``).
    """

    def __init__(self, shape, grid, index: Optional[Tensor], name: str) -> None:
        self.shape, self.grid, self.name = tuple(shape), tuple(grid), name
        self.index = index
        numel = math.prod(self.shape)
        if index is None:
            self.outside, self.inverse = None, None
        else:
            mask = torch.ones(numel, dtype=torch.bool)
            mask[index] = False
            self.outside = mask.nonzero()[:, 0]
            # to_output's gather: [grid elements, outside elements] -> one sample's order.
            self.inverse = torch.cat([index, self.outside]).argsort()

    @property
    def leading(self) -> int:
        """Elements of a sample outside the grid (leading tokens times their width)."""
        return 0 if self.outside is None else self.outside.numel()

    def to_grid(self, x: Tensor) -> Tensor:
        """``x`` (N, *shape) as the grid (N, C, h, w): the output itself, or a gathered copy."""
        if self.index is None:
            return x
        return x.flatten(1)[:, self.index.to(x.device)].view(x.shape[0], *self.grid)

    def to_output(self, grid: Tensor, outside: Tensor) -> Tensor:
        """The inverse of :meth:`to_grid`: ``grid`` (N, C, h, w) and the elements ``outside`` (N, R) in the layout."""
        if self.index is None:
            return grid
        values = torch.cat([grid.flatten(1), outside], 1)
        return values[:, self.inverse.to(grid.device)].view(grid.shape[0], *self.shape)

    def outside_of(self, x: Tensor) -> Tensor:
        """The elements of ``x`` (N, *shape) outside the grid, (N, R)."""
        return x.flatten(1)[:, self.outside.to(x.device)]

    def __repr__(self) -> str:
        return f"Layout({self.name}, grid {self.grid[1]}x{self.grid[2]} of {self.grid[0]} channels)"


def channels_first(shape) -> Layout:
    return Layout(shape, shape, None, "NCHW")


def from_transform(shape, reshape_transform: Callable, name: str = "reshape_transform") -> Layout:
    """The layout that ``reshape_transform`` states, found by running it once on element numbers.

    Raises
    ------
    ValueError
        If it does not return ``(1, C, h, w)`` for one sample, or does more
        than select and rearrange elements (arithmetic, repeats).
    """
    numel = math.prod(shape)
    numbers = torch.arange(numel, dtype=torch.float64).view(1, *shape)
    try:
        grid = reshape_transform(numbers)
    except Exception as error:
        raise ValueError(f"reshape_transform: expected a function of the layer's output (N, {', '.join(map(str, shape))}) "
                         f"-> (N, C, h, w), got one that raised {type(error).__name__}: {error}") from error
    if not isinstance(grid, Tensor) or grid.dim() != 4 or grid.shape[0] != 1:
        got = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
        raise ValueError(f"reshape_transform: expected a (N, C, h, w) tensor for a layer output of shape "
                         f"(1, {', '.join(map(str, shape))}), got {got}")
    index = grid.flatten()
    whole = torch.equal(index, index.round()) and index.min() >= 0 and index.max() < numel
    if not whole or index.unique().numel() != index.numel():
        raise ValueError("reshape_transform: expected a function that only selects and rearranges the layer's "
                         "output (slicing, reshape, permute), got one that computes or repeats values")
    index = index.long()
    if torch.equal(index, torch.arange(numel)) and len(shape) == 3:
        return channels_first(shape)
    return Layout(shape, tuple(grid.shape[1:]), index, name)


def channels_last(shape) -> Layout:
    return from_transform(shape, lambda x: x.permute(0, 3, 1, 2), "NHWC")


def tokens(shape, leading: int, grid: Optional[Tuple[int, int]] = None) -> Layout:
    """``(L, D)`` tokens: ``leading`` tokens, then ``h x w`` patch tokens in row order (square if ``grid`` is None)."""
    length, width = shape
    patches = length - leading
    if grid is None:
        side = math.isqrt(max(patches, 0))
        if side * side != patches or side == 0:
            raise ValueError(f"reshape_transform: the layer's {length} tokens minus {leading} leading ones do not form "
                             "a square grid; pass reshape_transform=captum_iba.token_transform(leading, (h, w))")
        grid = (side, side)
    if grid[0] * grid[1] != patches:
        raise ValueError(f"reshape_transform: expected {leading} + {grid[0]} x {grid[1]} tokens, "
                         f"the layer returns {length}")
    return from_transform(shape, token_transform(leading, grid), f"tokens ({leading} leading)")


def token_transform(leading: int, grid: Tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """A ``reshape_transform`` for token sequences: ``(N, L, D)`` -> ``(N, D, h, w)``.

    The ``leading`` first tokens (class, distillation, registers) are left
    out and the ``h x w`` patch tokens, in row order, become the grid:
    pytorch-grad-cam's ``reshape_transform`` for ViTs.
    """
    h, w = grid

    def transform(x: Tensor) -> Tensor:
        return x[:, leading:].reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)

    return transform


def find_layout(model: Optional[nn.Module], features: Tensor,
                reshape_transform: Optional[Callable] = None) -> Layout:
    """The layout of a layer's features ``(N, ...)``: stated by ``reshape_transform``, or found from the model.

    Found: a 4-D output is ``(N, C, h, w)``, or ``(N, h, w, C)`` in a timm
    model whose ``output_fmt`` is ``"NHWC"`` (Swin); a 3-D output is a token
    sequence whose leading tokens the model names (timm's
    ``num_prefix_tokens``, a HuggingFace config's model type) and whose patch
    grid is the model's (timm's ``patch_embed.grid_size``) or square.

    Raises
    ------
    ValueError
        One line naming ``reshape_transform`` and the shape seen, where the
        layout is not found.
    """
    shape = tuple(features.shape[1:])
    if reshape_transform is not None:
        if not callable(reshape_transform):
            raise TypeError(f"reshape_transform: expected a function (N, ...) -> (N, C, h, w), "
                            f"got {type(reshape_transform).__name__}")
        return from_transform(shape, reshape_transform)
    seen = f"(N, {', '.join(map(str, shape))})"
    if len(shape) == 3:
        return channels_last(shape) if _model_attribute(model, "output_fmt") == "NHWC" else channels_first(shape)
    if len(shape) == 2:
        leading = _leading_tokens(model)
        if leading is None:
            if math.isqrt(shape[0]) ** 2 != shape[0]:
                raise ValueError(f"reshape_transform: the layer returns tokens {seen} and the model does not say how "
                                 "many lead the patch grid: pass reshape_transform=captum_iba.token_transform("
                                 "leading, (h, w)) (e.g. leading=1 for a class token)")
            leading = 0
        grid = _model_grid(model)
        if grid is not None and grid[0] * grid[1] != shape[0] - leading:
            grid = None  # a stage after patch merging: its own, square grid
        return tokens(shape, leading, grid)
    raise ValueError(f"reshape_transform: expected a layer output (N, C, h, w), (N, h, w, C) or tokens (N, L, D), "
                     f"got {seen}; pass reshape_transform (output -> (N, C, h, w))")


def _model_attribute(model: Optional[nn.Module], name: str):
    """``name`` of the first module (the model, or one it wraps) that has it, or None.

    A wrapper that shares its model's children (the application's
    ``ExternalModel``, ``HFLogits``) keeps the model itself as ``wrapped``.
    """
    wrapped = []
    while isinstance(model, nn.Module) and model not in wrapped:
        wrapped.append(model)
        model = getattr(model, "wrapped", None)
    for module in (m for top in wrapped for m in top.modules()):
        value = getattr(module, name, None)
        if value is not None and not isinstance(value, (nn.Module, Tensor)):
            return value
    return None


def _leading_tokens(model: Optional[nn.Module]) -> Optional[int]:
    leading = _model_attribute(model, "num_prefix_tokens")  # timm ViT, DeiT, registers
    if isinstance(leading, int):
        return leading
    config = _model_attribute(model, "config")
    kind = getattr(config, "model_type", None)
    if kind in _HF_LEADING_TOKENS:
        return _HF_LEADING_TOKENS[kind] + int(getattr(config, "num_register_tokens", 0) or 0)
    return None


def _model_grid(model: Optional[nn.Module]) -> Optional[Tuple[int, int]]:
    grid = _model_attribute(model, "grid_size")  # timm's patch_embed
    if grid is not None:
        return tuple(int(g) for g in grid)
    config = _model_attribute(model, "config")
    size, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if isinstance(size, int) and isinstance(patch, int) and patch > 0:
        return (size // patch, size // patch)
    return None
