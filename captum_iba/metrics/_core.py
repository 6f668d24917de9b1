"""Computation shared by the metrics: baselines, batched scoring, correlation."""

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

# The paper's code blurs as RISE does (`gkern(klen=11, nsig=5)`).
BLUR_SIGMA = 5.0
BLUR_KERNEL_SIZE = 11


def gaussian_blur(images, sigma=BLUR_SIGMA, kernel_size=BLUR_KERNEL_SIZE):
    """Blur each channel of (N, C, H, W) images with a normalised Gaussian.

    Borders are padded by replication, so they are not darkened as zero
    padding would.
    """
    offsets = torch.arange(kernel_size, dtype=images.dtype, device=images.device)
    offsets = offsets - (kernel_size - 1) / 2
    profile = torch.exp(-0.5 * (offsets / sigma) ** 2)
    profile = profile / profile.sum()
    channels = images.shape[1]
    pad = kernel_size // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    # Separable: a horizontal, then a vertical 1-D pass, one group per channel.
    rows = F.conv2d(padded, profile.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, profile.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def baseline_images(baseline, inputs):
    """The (N, C, H, W) images the inputs are perturbed towards.

    ``baseline`` has been validated by ``_inputs.check_baseline``: "blur",
    "zero", "mean" (each image's per-channel mean) or an expanded tensor.
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
        Long (N,), as returned by ``_inputs.check_target``.
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
        outputs = forward_func(build_inputs(items), *extra)
        scores.append(_select_scores(transform(outputs), target, samples))
    return torch.cat(scores)


def _select_scores(scores, target, samples):
    if scores.dim() == 1:
        scores = scores[:, None]
    if scores.dim() != 2 or scores.shape[0] != len(samples):
        raise ValueError(
            f"forward_func must return outputs of shape (B,) or (B, K) for a batch of "
            f"{len(samples)} inputs, got {tuple(scores.shape)}"
        )
    if target is None:
        if scores.shape[1] != 1:
            raise ValueError(
                f"target is required: the model has {scores.shape[1]} outputs per sample"
            )
        return scores[:, 0]
    item_targets = target[samples].to(scores.device)
    if int(item_targets.max()) >= scores.shape[1]:
        raise ValueError(
            f"target holds index {int(item_targets.max())} but the model has "
            f"{scores.shape[1]} outputs per sample"
        )
    return scores.gather(1, item_targets[:, None])[:, 0]


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
