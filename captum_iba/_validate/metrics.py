"""The metrics' arguments: images, fractions, baselines, labels, output transforms."""

from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from .core import check_number, check_positive_int

#: The images a perturbation metric moves the inputs towards, by name.
BASELINES = ("blur", "zero", "mean")


def check_images(inputs, name: str = "inputs") -> Tensor:
    """Return ``inputs`` detached if it is a finite floating ``(N, C, H, W)`` tensor with N >= 1."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (N, C, H, W), got {type(inputs).__name__}; "
                        "pass further model arguments through additional_forward_args")
    if inputs.dim() != 4 or inputs.shape[0] == 0:
        raise ValueError(f"{name}: expected shape (N, C, H, W) with N >= 1, got {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise TypeError(f"{name}: expected floating point values, got {inputs.dtype}")
    check_finite(inputs, name)
    return inputs.detach()


def check_finite(values: Tensor, name: str) -> Tensor:
    """Return ``values`` if every element is finite; else name the first sample that is not."""
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        first = int((~torch.isfinite(values)).flatten(1).any(1).nonzero()[0]) if values.dim() > 1 else 0
        raise ValueError(f"{name}: expected finite values, got NaN or infinity (first in sample {first})")
    return values


def check_fraction(value, name: str) -> float:
    """Return ``value`` as a float in (0, 1]."""
    value = check_number(value, name)
    if not 0 < value <= 1:
        raise ValueError(f"{name}: expected a number in (0, 1], got {value}")
    return value


def check_max_examples(max_examples_per_batch) -> Optional[int]:
    """None (everything in one batch) or a positive int."""
    if max_examples_per_batch is None:
        return None
    return check_positive_int(max_examples_per_batch, "max_examples_per_batch")


def check_output_transform(output_transform):
    """Return the function that turns model outputs into scores."""
    if output_transform == "sigmoid":
        return torch.sigmoid
    if output_transform == "softmax":
        return lambda outputs: torch.softmax(outputs, dim=1)
    if output_transform is None:
        return lambda outputs: outputs
    raise ValueError(
        "output_transform must be 'sigmoid' (multilabel), 'softmax' (multi-class) "
        f"or None (regression: the raw output), got {output_transform!r}"
    )


def check_baseline(baseline, inputs):
    """Validate a baseline spec: 'blur', 'zero', 'mean', a number or a tensor.

    A number fills every pixel, as in Captum; a tensor must broadcast to the
    shape of ``inputs``. Both are returned expanded to that shape.
    """
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        baseline = check_number(baseline, "baseline")
        baseline = torch.tensor(float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.detach().to(inputs).expand_as(inputs)
        except RuntimeError:
            raise ValueError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to the "
                f"inputs' shape {tuple(inputs.shape)}"
            ) from None
    if isinstance(baseline, str) and baseline in BASELINES:
        return baseline
    raise ValueError(
        f"baseline must be one of {BASELINES}, a number or a tensor that broadcasts to the "
        f"inputs, got {baseline!r}"
    )


def check_labels(labels, n, num_classes):
    """Return class labels (long, shape (n,)) and the number of classes.

    ``labels=None`` puts every sample in one class.
    """
    if labels is None:
        labels = torch.zeros(n, dtype=torch.long)
    else:
        labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"labels must hold integers, got {labels.dtype}")
        if labels.shape != (n,):
            raise ValueError(
                f"labels must hold one class per sample ({n}), got shape {tuple(labels.shape)}"
            )
        labels = labels.long().cpu()
        if (labels < 0).any():
            raise ValueError("labels must be non-negative class indices")
    smallest = int(labels.max()) + 1
    if num_classes is None:
        num_classes = smallest
    num_classes = check_positive_int(num_classes, "num_classes")
    if num_classes < smallest:
        raise ValueError(f"num_classes is {num_classes} but labels go up to {smallest - 1}")
    return labels, num_classes


def check_same_batch(maps, ground_truth, name):
    """Raise unless there is one attribution map per entry of ``name``."""
    if len(maps) != len(ground_truth):
        raise ValueError(
            f"attributions has batch size {len(maps)} but {name} holds {len(ground_truth)} "
            "(one map per image)"
        )
