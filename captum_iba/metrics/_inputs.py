"""Argument checking shared by the metrics: one place, one wording.

Each function validates one argument and returns it in the form the metrics
compute with, or raises a ValueError/TypeError that names the argument and
says what was expected.
"""

import math
import numbers

import torch

from .._validate import check_number, check_positive_int, format_target
from ..maps import _map_batch, _size_pair, as_map_batch, resize_map

BASELINES = ("blur", "zero", "mean")


def check_inputs(inputs):
    """Return ``inputs`` if it is a floating (N, C, H, W) tensor."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(
            "inputs must be a torch.Tensor of shape (N, C, H, W), got "
            f"{type(inputs).__name__}; pass further model arguments through "
            "additional_forward_args"
        )
    if inputs.dim() != 4 or inputs.shape[0] == 0:
        raise ValueError(
            f"inputs must have shape (N, C, H, W) with N >= 1, got {tuple(inputs.shape)}"
        )
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be floating point, got {inputs.dtype}")
    return inputs.detach()


def input_maps(attributions, inputs):
    """Attributions as (N, 1, H, W) maps at the size of ``inputs``.

    Low-resolution maps are resized preserving their total (bits).
    """
    maps = as_map_batch(attributions, n=inputs.shape[0])
    return resize_map(maps, tuple(inputs.shape[-2:])).to(inputs.device)


def check_size(size):
    """Return ``size`` (an int or a pair) as a pair (H, W) of positive ints."""
    return _size_pair(size)


def map_batch(value, name, n):
    """``value`` as (N, 1, H, W) maps, as ``as_map_batch``; errors name ``name``."""
    return _map_batch(value, n, name)


def check_max_examples(max_examples_per_batch):
    """None (everything in one batch) or a positive int."""
    if max_examples_per_batch is None:
        return None
    return check_positive_int(max_examples_per_batch, "max_examples_per_batch")


def check_fraction(value, name):
    """Return ``value`` as a float in (0, 1]."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return float(value)


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


def check_target(target, n):
    """Captum's target for ``n`` samples as indices, see :func:`captum_iba._validate.format_target`."""
    return format_target(target, n)


def check_additional_forward_args(additional_forward_args, n):
    """Return the extra forward arguments as a tuple.

    As in Captum, every tensor among them is taken to be per sample and must
    have ``n`` rows; other values are passed unchanged.
    """
    if additional_forward_args is None:
        return ()
    if not isinstance(additional_forward_args, tuple):
        additional_forward_args = (additional_forward_args,)
    for position, arg in enumerate(additional_forward_args):
        if isinstance(arg, torch.Tensor) and (arg.dim() == 0 or arg.shape[0] != n):
            raise ValueError(
                f"additional_forward_args[{position}] is a tensor, so it must have one "
                f"row per input ({n}), got shape {tuple(arg.shape)}"
            )
    return additional_forward_args


def check_baseline(baseline, inputs):
    """Validate a baseline spec: 'blur', 'zero', 'mean', a number or a tensor.

    A number fills every pixel, as in Captum; a tensor must broadcast to the
    shape of ``inputs``. Both are returned expanded to that shape.
    """
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        check_number(baseline, "baseline")
        if not math.isfinite(baseline):
            raise ValueError(f"baseline must be finite, got {baseline!r}")
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


def _boxes_to_masks(boxes, size):
    """Rasterise per-image lists of [x, y, w, h] boxes (pixel units)."""
    height, width = size
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    # A pixel belongs to a box when its centre does: [x, x + w) covers
    # columns x .. x + w - 1 for integer boxes.
    columns = torch.arange(width, dtype=torch.float64) + 0.5
    rows = torch.arange(height, dtype=torch.float64) + 0.5
    for i, image_boxes in enumerate(boxes):
        image_boxes = torch.as_tensor(image_boxes, dtype=torch.float64).reshape(-1, 4)
        for x, y, w, h in image_boxes.tolist():
            if not (w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height):
                raise ValueError(
                    f"box [x, y, w, h] = {[x, y, w, h]} of image {i} is not a non-empty box "
                    f"inside the image of size (H, W) = {(height, width)}"
                )
            inside_columns = (columns >= x) & (columns < x + w)
            inside_rows = (rows >= y) & (rows < y + h)
            masks[i] |= inside_rows[:, None] & inside_columns[None, :]
    return masks


def ground_truth_masks(masks_or_boxes, size):
    """Ground truth as a bool tensor (N, H, W).

    ``masks_or_boxes`` is a tensor of masks, (N, H, W) or (N, 1, H, W), with
    values 0/1; or a sequence of N entries, each a list of ``[x, y, w, h]``
    boxes (possibly none), rasterised at ``size``.
    """
    if isinstance(masks_or_boxes, torch.Tensor):
        masks = masks_or_boxes.detach()
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.dim() != 3:
            raise ValueError(
                "masks_or_boxes as a tensor must be masks of shape (N, H, W) or "
                f"(N, 1, H, W), got {tuple(masks_or_boxes.shape)}"
            )
        if masks.dtype != torch.bool:
            if not ((masks == 0) | (masks == 1)).all():
                raise ValueError("masks_or_boxes masks must be boolean or hold only 0 and 1")
            masks = masks != 0
        return masks.cpu()
    if isinstance(masks_or_boxes, (list, tuple)):
        return _boxes_to_masks(masks_or_boxes, size)
    raise TypeError(
        "masks_or_boxes must be a tensor of masks or a list (one entry per image) of "
        f"[x, y, w, h] boxes, got {type(masks_or_boxes).__name__}"
    )


def check_same_batch(maps, ground_truth, name):
    """Raise unless there is one attribution map per entry of ``name``."""
    if len(maps) != len(ground_truth):
        raise ValueError(
            f"attributions has batch size {len(maps)} but {name} holds {len(ground_truth)} "
            "(one map per image)"
        )
