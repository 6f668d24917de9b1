"""Computation shared by the metrics: baselines, batched scoring, correlation."""

import math

import torch
from tqdm.auto import tqdm

from .._validate import check_output, select_targets
from ..maps import gaussian_blur as blur_images

# The paper's code blurs as RISE does (`gkern(klen=11, nsig=5)`).
BLUR_SIGMA = 5.0
BLUR_KERNEL_SIZE = 11


def gaussian_blur(images, sigma=BLUR_SIGMA, kernel_size=BLUR_KERNEL_SIZE):
    """Blur each channel of (N, C, H, W) images as the paper's code (RISE) does."""
    return blur_images(images, sigma, kernel_size)


def baseline_images(baseline, inputs):
    """The (N, C, H, W) images the inputs are perturbed towards.

    ``baseline`` has been validated by ``_inputs.check_baseline``: "blur",
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
        Long (N,) or (N, k), as returned by ``_inputs.check_target``.
    additional_forward_args : tuple
        As returned by ``_inputs.check_additional_forward_args``.
    transform : callable
        Outputs to scores, from ``_inputs.check_output_transform``.
    max_examples_per_batch : int or None
        Items per forward pass; None runs all items in one pass.

    Returns
    -------
    scores : torch.Tensor
        (M,), the transformed output of each item at its target.
    """
    n_items = len(sample_ids)
    batch_size = max_examples_per_batch or n_items
    scores = []
    starts = range(0, n_items, batch_size)
    for start in tqdm(starts, desc=description, disable=not progress, leave=False):
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
