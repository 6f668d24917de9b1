"""Computation shared by the metrics: baselines, batched scoring, correlation."""

import math

import torch

from .._engine.frozen import frozen_model
from .._progress import progress as progress_lines
from .._validate import check_output, select_targets
from ..maps import as_map_batch, gaussian_blur as blur_images, resize_map

# The paper's code blurs as RISE does (`gkern(klen=11, nsig=5)`).
BLUR_SIGMA = 5.0
BLUR_KERNEL_SIZE = 11


def gaussian_blur(images, sigma=BLUR_SIGMA, kernel_size=BLUR_KERNEL_SIZE):
    """Blur each channel of (N, C, H, W) images as the paper's code (RISE) does."""
    return blur_images(images, sigma, kernel_size)


def baseline_images(baseline, inputs):
    """The (N, C, H, W) images the inputs are perturbed towards.

    ``baseline`` has been validated by ``_validate.check_baseline``: "blur",
    "zero", "mean" (each image's per-channel mean) or an expanded tensor
    (also what a number becomes).
    """
    if isinstance(baseline, torch.Tensor):
        return baseline
    if baseline == "blur":
        return gaussian_blur(inputs)
    if baseline == "zero":
        return torch.zeros_like(inputs)
    return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs)


def score_perturbations(
    forward_func,
    build_inputs,
    sample_ids,
    target,
    additional_forward_args,
    transform,
    max_examples_per_batch,
    progress=False,
    description=None,
):
    """Score many perturbed inputs in batches.

    Parameters
    ----------
    forward_func : callable
        The model.
    build_inputs : callable
        ``build_inputs(items)`` with a long tensor of item indices returns the
        perturbed inputs of those items, shape (len(items), C, H, W).
    sample_ids : torch.Tensor
        Long, (M,): the sample each of the M items perturbs; it selects the
        item's target and per-sample forward arguments.
    target : torch.Tensor or None
        Long (N,) or (N, k), as returned by ``_validate.format_target``.
    additional_forward_args : tuple
        As returned by ``_validate.format_additional_args``.
    transform : callable
        Outputs to scores, from ``_validate.check_output_transform``.
    max_examples_per_batch : int or None
        Items per forward pass; None runs all items in one pass.

    Returns
    -------
    scores : torch.Tensor
        (M,), the transformed output of each item at its target.

    The model runs in eval mode without gradients (a train-mode model would
    update BatchNorm's running statistics and drop units at random) and is
    left exactly as found, as the attributions leave it.
    """
    n_items = len(sample_ids)
    batch_size = max_examples_per_batch or n_items
    scores = []
    starts = range(0, n_items, batch_size)
    with frozen_model(forward_func), torch.no_grad():
        for start in progress_lines(starts, desc=description, enabled=progress):
            items = torch.arange(start, min(start + batch_size, n_items))
            samples = sample_ids[items]
            extra = tuple(
                arg[samples.to(arg.device)] if isinstance(arg, torch.Tensor) else arg
                for arg in additional_forward_args
            )
            outputs = check_output(forward_func(build_inputs(items), *extra))
            scores.append(_select_scores(transform(outputs), target, samples))
    return torch.cat(scores)


def _select_scores(scores, target, samples):
    if scores.dim() == 0 or scores.shape[0] != len(samples):
        raise ValueError(
            f"forward_func must return one row of outputs per input, (B, ...), for a batch of "
            f"{len(samples)} inputs, got {tuple(scores.shape)}"
        )
    item_targets = None if target is None else target[samples]
    return select_targets(scores, item_targets)


def pearson(a, b):
    """Pearson correlation along the last dimension, computed in float64.

    NaN where either side is constant (the correlation is undefined).
    """
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.double(), b.double()
    constant = (a.amax(dim=-1) == a.amin(dim=-1)) | (b.amax(dim=-1) == b.amin(dim=-1))
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    correlation = (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.where(constant, math.nan, correlation.clamp(-1.0, 1.0)).to(dtype)


def input_maps(attributions, inputs):
    """Attributions as (N, 1, H, W) maps at the size of ``inputs``.

    Low-resolution maps are resized preserving their total (bits); a map
    whose aspect ratio is not the image's (more than one cell off) is refused,
    as stretching it would move its evidence.
    """
    maps = as_map_batch(attributions, n=inputs.shape[0])
    (h, w), (height, width) = maps.shape[-2:], inputs.shape[-2:]
    if abs(h * width / height - w) > 1:
        raise ValueError(f"attributions: expected maps of the images' aspect ratio ({height} x {width}), got "
                         f"{h} x {w}; resize them to the images' size first (captum_iba.maps.resize_map)")
    return resize_map(maps, tuple(inputs.shape[-2:])).to(inputs.device)


def _boxes_to_masks(boxes, size, size_from_maps=False):
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
                hint = (f"; boxes are in the image's pixels: pass size=images.shape[-2:] (the maps are "
                        f"{height} x {width})") if size_from_maps else ""
                raise ValueError(
                    f"box [x, y, w, h] = {[x, y, w, h]} of image {i} is not a non-empty box "
                    f"inside the image of size (H, W) = {(height, width)}{hint}"
                )
            inside_columns = (columns >= x) & (columns < x + w)
            inside_rows = (rows >= y) & (rows < y + h)
            masks[i] |= inside_rows[:, None] & inside_columns[None, :]
    return masks


def ground_truth_masks(masks_or_boxes, size, size_from_maps=False):
    """Ground truth as a bool tensor (N, H, W).

    ``masks_or_boxes`` is a tensor of masks, (N, H, W) or (N, 1, H, W), with
    values 0/1; or a sequence of N entries, each a list of ``[x, y, w, h]``
    boxes (possibly none), rasterised at ``size`` (``size_from_maps``: the
    maps' own size, as no ``size=`` was given; an error then says to pass it).
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
        return _boxes_to_masks(masks_or_boxes, size, size_from_maps)
    raise TypeError(
        "masks_or_boxes must be a tensor of masks or a list (one entry per image) of "
        f"[x, y, w, h] boxes, got {type(masks_or_boxes).__name__}"
    )
