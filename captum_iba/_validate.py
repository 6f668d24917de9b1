"""Checking and formatting what users pass: one place for the library's validation."""

from __future__ import annotations

import difflib
from typing import Tuple, Union

from torch import nn

from .attr._base import format_target

__all__ = ["format_target", "resolve_layer"]

LayerSpec = Union[str, nn.Module]


def resolve_layer(model: nn.Module, layer: LayerSpec, name: str = "saliency_layer") -> Tuple[str, nn.Module]:
    """``(qualified name, module)`` for a layer given by name or as a module.

    Raises ``ValueError`` for a name the model does not have (listing the
    closest names) or a module that is not inside the model.
    """
    names = {module: qualified for qualified, module in model.named_modules()}
    if isinstance(layer, nn.Module):
        if layer not in names:
            raise ValueError(f"{name} ({type(layer).__name__}) is not a submodule of the model")
        return names[layer], layer
    if not isinstance(layer, str):
        raise TypeError(f"{name} must be a layer name or an nn.Module, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        close = difflib.get_close_matches(layer, [n for n in modules if n], n=5, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ValueError(f"{name} {layer!r} is not a layer of the model{hint}")
    return layer, modules[layer]
