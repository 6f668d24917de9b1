"""Perturbation metrics: insertion/deletion and sensitivity-n.

Both perturb the inputs towards a baseline under masks derived from the
attribution map and score the perturbed inputs with the model, in batches.
"""

import numbers
from typing import NamedTuple

import torch

from .. import _validate
from ..maps import rank_pixels
from . import _core
from ._core import baseline_images, pearson, score_perturbations

__all__ = ["InsertionDeletionResult", "insertion_deletion", "sensitivity_n"]


class InsertionDeletionResult(NamedTuple):
    """Result of :func:`insertion_deletion` for N inputs and ``n_steps`` steps."""

    insertion_auc: torch.Tensor
    """(N,) area under the insertion curve (higher is better)."""
    deletion_auc: torch.Tensor
    """(N,) area under the deletion curve (lower is better)."""
    insertion_curve: torch.Tensor
    """(N, n_steps + 1) score from the baseline (step 0) towards the image."""
    deletion_curve: torch.Tensor
    """(N, n_steps + 1) score from the image (step 0) towards the baseline."""
    fractions: torch.Tensor
    """(n_steps + 1,) the fraction of the pixels moved after each step."""


_DELETION, _INSERTION = 0, 1


@torch.no_grad()
def insertion_deletion(
    forward_func,
    inputs,
    attributions,
    target=None,
    additional_forward_args=None,
    *,
    n_steps=100,
    fraction=1.0,
    baseline="blur",
    output_transform=None,
    max_examples_per_batch=None,
    progress=False,
):
    r"""Insertion and deletion curves and their areas (Petsiuk et al., RISE).

    The pixels are ranked by attribution, highest first. *Deletion* moves
    the image towards the baseline, the highest-ranked pixels first;
    *insertion* moves the baseline towards the image in the same order. Each
    curve scores the model after each of ``n_steps`` equal steps, which
    together move ``fraction`` of the pixels. A faithful map gives a high
    insertion and a low deletion area.

    A pixel moves in all its channels at once. The perturbed inputs are
    scored in batches: with ``fraction=1`` the first and last images of
    either curve are the clean image and the baseline, scored once each, so
    ``n_steps`` steps cost ``2 * n_steps`` forward passes per input (fewer
    when steps move equal pixel counts, as with more steps than pixels).

    Args:

        forward_func (Callable): The model, or any function that maps a batch
                    of inputs (and ``additional_forward_args``) to outputs of
                    shape (B,) or (B, K).
        inputs (Tensor): Images of shape (N, C, H, W).
        attributions (Tensor): One map per input, of shape (N, H, W),
                    (N, 1, h, w) or (N, C, H, W) (summed over channels).
                    Maps smaller than the inputs are resized bilinearly,
                    preserving their total. Only the ranking of the pixels
                    matters; ties go to the lower flat index (``row * W +
                    col``) first.
        target (int, list, Tensor, or None, optional): The output to score:
                    an int for every input, or one index per input. None
                    only for models with a single output. Default: None
        additional_forward_args (Any, optional): Further arguments of
                    ``forward_func``, after the inputs. Tensors among them
                    are per input (first dimension N) and are repeated along
                    with their input. Default: None
        n_steps (int, optional): Number of steps of each curve, >= 1.
                    Default: 100
        fraction (float, optional): Fraction of the pixels, in (0, 1], moved
                    after the last step. Default: 1.0
        baseline (str or Tensor, optional): What pixels move towards (from,
                    for insertion): ``"blur"`` (each channel blurred by a
                    Gaussian of sigma 5 in an 11 x 11 kernel, as the paper's
                    code, borders padded by replication), ``"zero"``,
                    ``"mean"`` (each image's per-channel mean), or a tensor
                    that broadcasts to the inputs. Default: ``"blur"``
        output_transform (str or None, optional): What is scored:
                    ``"sigmoid"`` (multilabel probabilities), ``"softmax"``
                    (multi-class probabilities) or None (the raw output, as
                    for regression and as ``captum.metrics`` does).
                    Default: None
        max_examples_per_batch (int, optional): The most perturbed inputs
                    per forward pass. None runs all of them in one pass, as
                    in ``captum.metrics.infidelity``. Default: None
        progress (bool, optional): Show a progress bar over the batches.
                    Default: False

    Returns:
        :class:`InsertionDeletionResult`, a named tuple of

        - **insertion_auc**, **deletion_auc** (*Tensor*, (N,)): the
          trapezoid area under each curve, the steps spread evenly over
          [0, 1] (so the area is the mean score, whatever ``fraction``).
        - **insertion_curve**, **deletion_curve** (*Tensor*, (N, n_steps +
          1)): the score before the first step and after each step.
          Deletion starts at the clean score; insertion at the baseline's;
          with ``fraction=1`` each ends where the other starts.
        - **fractions** (*Tensor*, (n_steps + 1,)): the fraction of pixels
          moved at each point of the curves.

    Examples::

        >>> net = ImageClassifier()
        >>> images = torch.rand(2, 3, 32, 32)
        >>> maps = IntegratedGradients(net).attribute(images, target=3)
        >>> result = insertion_deletion(net, images, maps, target=3,
        ...                             output_transform="softmax",
        ...                             max_examples_per_batch=64)
        >>> result.insertion_auc.shape, result.deletion_curve.shape
        (torch.Size([2]), torch.Size([2, 101]))
    """
    inputs = _validate.check_images(inputs)
    maps = _core.input_maps(attributions, inputs)
    n_steps = _validate.check_positive_int(n_steps, "n_steps")
    fraction = _validate.check_fraction(fraction, "fraction")
    baseline = _validate.check_baseline(baseline, inputs)
    transform = _validate.check_output_transform(output_transform)
    n, _, height, width = inputs.shape
    target = _validate.format_target(target, n)
    extra_args = _validate.format_additional_args(additional_forward_args, n)
    max_examples = _validate.check_max_examples(max_examples_per_batch)

    n_pixels = height * width
    steps = torch.arange(n_steps + 1, dtype=torch.float64)
    moved_per_step = torch.floor(steps * (fraction * n_pixels / n_steps) + 0.5).long()
    # Each distinct count of moved pixels is scored once per curve; a curve's
    # images with no pixel moved are its start, and its image with every
    # pixel moved is the other curve's start.
    partial = torch.unique(moved_per_step)
    partial = partial[(partial > 0) & (partial < n_pixels)]
    levels = torch.cat([torch.zeros(1, dtype=torch.long), partial])
    n_levels = len(levels)

    device = inputs.device
    rank_of_pixel = torch.empty(n, n_pixels, dtype=torch.long, device=device)
    rank_of_pixel.scatter_(
        1, rank_pixels(maps), torch.arange(n_pixels, device=device).expand(n, n_pixels)
    )
    baselines = baseline_images(baseline, inputs)
    levels_on_device = levels.to(device)

    # Item (sample, curve, level) has index (sample * 2 + curve) * n_levels + level.
    def build_inputs(items):
        items = items.to(device)
        samples = items // (2 * n_levels)
        deleting = (items // n_levels) % 2 == _DELETION
        moved = rank_of_pixel[samples] < levels_on_device[items % n_levels, None]
        moved = moved.view(-1, 1, height, width)
        deleting = deleting.view(-1, 1, 1, 1)
        image, background = inputs[samples], baselines[samples]
        start = torch.where(deleting, image, background)
        end = torch.where(deleting, background, image)
        return torch.where(moved, end, start)

    sample_ids = torch.arange(n).repeat_interleave(2 * n_levels)
    scores = score_perturbations(
        forward_func, build_inputs, sample_ids, target, extra_args, transform,
        max_examples, progress, "insertion/deletion",
    ).view(n, 2, n_levels)

    level_index = torch.searchsorted(levels, moved_per_step).clamp(max=n_levels - 1).to(device)
    all_moved = (moved_per_step == n_pixels).to(device)

    def curve(kind):
        other_start = scores[:, 1 - kind, :1]
        return torch.where(all_moved, other_start, scores[:, kind, level_index])

    insertion_curve, deletion_curve = curve(_INSERTION), curve(_DELETION)
    return InsertionDeletionResult(
        insertion_auc=torch.trapezoid(insertion_curve, dx=1.0 / n_steps, dim=1),
        deletion_auc=torch.trapezoid(deletion_curve, dx=1.0 / n_steps, dim=1),
        insertion_curve=insertion_curve,
        deletion_curve=deletion_curve,
        fractions=moved_per_step.to(inputs.dtype) / n_pixels,
    )


def _check_pixel_counts(n, n_pixels):
    """Return sensitivity-n's ``n`` as a list of pixel counts in [1, n_pixels]."""
    counts = [n] if isinstance(n, numbers.Integral) else n
    if isinstance(counts, (str, bytes)) or not hasattr(counts, "__iter__"):
        raise TypeError(f"n must be an int or a sequence of ints, got {type(n).__name__}")
    counts = list(counts)
    if not counts:
        raise ValueError("n must hold at least one pixel count")
    for count in counts:
        if not isinstance(count, numbers.Integral) or isinstance(count, bool):
            raise TypeError(f"n must hold ints, got {count!r}")
        if not 1 <= count <= n_pixels:
            raise ValueError(
                f"n must hold pixel counts between 1 and the number of pixels "
                f"({n_pixels}), got {count}"
            )
    return [int(count) for count in counts]


@torch.no_grad()
def sensitivity_n(
    forward_func,
    inputs,
    attributions,
    target=None,
    additional_forward_args=None,
    *,
    n,
    num_masks=100,
    baseline="zero",
    output_transform=None,
    seed=0,
    max_examples_per_batch=None,
    progress=False,
):
    r"""Sensitivity-n (Ancona et al., 2018).

    For each pixel count in ``n``, ``num_masks`` random sets of that many
    pixels are drawn; each set is moved to the baseline (all channels), and
    the drop of the score, ``score(x) - score(x_masked)``, is correlated
    (Pearson, over the masks) with the attribution mass under the mask. A
    map whose values add up to output changes scores 1. Works for
    classification and regression alike (``output_transform``).

    The masks depend only on ``seed``, the pixel count and the image size,
    so every input, in any batch, is probed with the same masks.

    Args:

        forward_func (Callable): The model, mapping (inputs,
                    ``*additional_forward_args``) to outputs of shape (B,) or
                    (B, K).
        inputs (Tensor): Images of shape (N, C, H, W).
        attributions (Tensor): One map per input, of shape (N, H, W),
                    (N, 1, h, w) or (N, C, H, W) (summed over channels);
                    smaller maps are resized preserving their total.
        target (int, list, Tensor, or None, optional): The output to score,
                    for every input or per input; None only for models with
                    a single output. Default: None
        additional_forward_args (Any, optional): Further arguments of
                    ``forward_func``; tensors among them are per input.
                    Default: None
        n (int or sequence of int): The pixel counts, each between 1 and
                    H * W. With ``n = H * W`` every mask is the whole image
                    and the correlation is undefined (NaN).
        num_masks (int, optional): Random masks per pixel count, >= 2.
                    Default: 100
        baseline (str or Tensor, optional): ``"zero"`` (as Ancona et al.),
                    ``"blur"``, ``"mean"`` or a tensor that broadcasts to the
                    inputs; see :func:`insertion_deletion`. Default: ``"zero"``
        output_transform (str or None, optional): ``"sigmoid"``,
                    ``"softmax"`` or None (raw output). Default: None
        seed (int, optional): Seed of the masks. Default: 0
        max_examples_per_batch (int, optional): The most perturbed inputs
                    per forward pass; None: all in one. Default: None
        progress (bool, optional): Show a progress bar. Default: False

    Returns:
        *Tensor* of shape (N, len(n)): the correlation for each input and
        pixel count; NaN where the drops or the masses do not vary over the
        masks.

    Examples::

        >>> net = SeverityRegressor()
        >>> images = torch.rand(4, 1, 64, 64)
        >>> maps = InputXGradient(net).attribute(images)
        >>> sensitivity_n(net, images, maps, n=[16, 256, 1024]).shape
        torch.Size([4, 3])
    """
    inputs = _validate.check_images(inputs)
    maps = _core.input_maps(attributions, inputs)
    n_inputs, _, height, width = inputs.shape
    n_pixels = height * width
    counts = _check_pixel_counts(n, n_pixels)
    num_masks = _validate.check_positive_int(num_masks, "num_masks", minimum=2)
    seed = _validate.check_positive_int(seed, "seed", minimum=0)
    baseline = _validate.check_baseline(baseline, inputs)
    transform = _validate.check_output_transform(output_transform)
    target = _validate.format_target(target, n_inputs)
    extra_args = _validate.format_additional_args(additional_forward_args, n_inputs)
    max_examples = _validate.check_max_examples(max_examples_per_batch)

    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(len(counts) * num_masks, n_pixels, dtype=torch.bool)
    for position, count in enumerate(counts):
        chosen = torch.rand(num_masks, n_pixels, generator=generator).argsort(dim=1)[:, :count]
        masks[position * num_masks:(position + 1) * num_masks].scatter_(1, chosen, True)
    # Row 0, the empty mask, gives the clean score the drops are taken from.
    masks = torch.cat([torch.zeros(1, n_pixels, dtype=torch.bool), masks]).to(inputs.device)
    items_per_input = len(masks)
    baselines = baseline_images(baseline, inputs)

    def build_inputs(items):
        items = items.to(inputs.device)
        samples = items // items_per_input
        masked = masks[items % items_per_input].view(-1, 1, height, width)
        return torch.where(masked, baselines[samples], inputs[samples])

    sample_ids = torch.arange(n_inputs).repeat_interleave(items_per_input)
    scores = score_perturbations(
        forward_func, build_inputs, sample_ids, target, extra_args, transform,
        max_examples, progress, "sensitivity-n",
    ).view(n_inputs, items_per_input)

    drops = scores[:, :1] - scores[:, 1:]
    masses = maps.flatten(1) @ masks[1:].to(maps.dtype).T
    shape = (n_inputs, len(counts), num_masks)
    return pearson(masses.view(shape), drops.view(shape))
