"""Inputs of the bottleneck attributions in Captum's forms, checked."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..stats import FeatureStats


def format_inputs(inputs) -> Tuple[Tensor, ...]:
    """Inputs as a tuple of tensors sharing the batch size, finite, as Captum takes them."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if not inputs or not all(isinstance(x, Tensor) for x in inputs):
        raise TypeError("inputs must be a tensor or a tuple of tensors")
    n = inputs[0].shape[0] if inputs[0].dim() > 0 else None
    for x in inputs:
        if x.dim() == 0 or x.shape[0] != n:
            raise ValueError(
                "inputs must share their first (batch) dimension; got shapes "
                f"{[tuple(t.shape) for t in inputs]}"
            )
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError("inputs contain NaN or Inf")
    if n == 0:
        raise ValueError("inputs hold no samples (batch size 0)")
    return inputs


def format_additional_args(additional_forward_args) -> Tuple:
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def check_stats(stats, name: str = "stats") -> Optional[FeatureStats]:
    if stats is not None and not isinstance(stats, FeatureStats):
        raise TypeError(f"{name} must be a FeatureStats (or None), got {type(stats).__name__}")
    return stats
