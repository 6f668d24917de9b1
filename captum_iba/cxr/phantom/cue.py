"""A ground truth of what a model uses: the cue study.

The phantom's cue option (:class:`~captum_iba.cxr.PhantomCXR` with ``cue=``)
draws a non-pathology marker that co-occurs with one finding. A model trained
on such data may predict the finding from the marker; one trained without the
marker cannot. Whether a model *uses* the marker is measured by intervention
(:func:`intervention_drop`: draw the same image without it, with the same
seed, and see the finding's output fall). An attribution method is then
faithful to the extent that its map moves to the marker
(:func:`share_on_cue`) for the model that uses it and not for the one that
does not (:func:`cue_table`).

Plain functions, no hidden state; the models are left as found (eval mode for
the forward passes, then restored).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional

import torch
from torch import Tensor, nn

from ...maps import as_map_batch, resize_map
from ._outputs import probabilities
from .dataset import PhantomCXR
from ..schema import FINDINGS

__all__ = ["InterventionResult", "cue_images", "intervention_drop", "share_on_cue", "cue_table"]

#: An attribution method of :func:`cue_table`: ``(model, images, target) -> maps (N, 1, h, w)``.
AttributionFn = Callable[[nn.Module, Tensor, int], Tensor]


class InterventionResult(NamedTuple):
    """Outputs of the cue's finding with and without the cue, per image (sigmoid probabilities)."""

    with_cue: Tensor
    without_cue: Tensor
    drop: Tensor  # with_cue - without_cue


def _check_cue_phantom(phantom: PhantomCXR) -> str:
    if not isinstance(phantom, PhantomCXR) or phantom.cue is None:
        raise ValueError(f"phantom: expected a PhantomCXR made with cue=<finding>, got {phantom!r}")
    return phantom.cue


def cue_images(phantom: PhantomCXR, n: int, *, with_finding: Optional[bool] = None) -> List[int]:
    """Indices of the first ``n`` items that carry the cue (none rendered).

    Parameters
    ----------
    phantom : PhantomCXR
        Made with ``cue=<finding>``.
    n : int
        How many indices to return (at least 1).
    with_finding : bool, optional
        Keep only items with (True) or without (False) the cue's finding;
        None keeps both.

    Returns
    -------
    list of int
        Increasing indices, ``n`` of them.

    Raises
    ------
    ValueError
        If the phantom holds fewer than ``n`` such items.
    """
    finding = _check_cue_phantom(phantom)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    found = []
    for index in range(len(phantom)):
        if phantom.cue_of(index) and with_finding in (None, finding in phantom.findings_of(index)):
            found.append(index)
            if len(found) == n:
                return found
    raise ValueError(f"phantom: only {len(found)} of its {len(phantom)} items match, {n} requested")


def intervention_drop(model: nn.Module, phantom: PhantomCXR, indices, *, batch_size: int = 32) -> InterventionResult:
    """How much a model's output for the cue's finding falls when the cue is removed.

    Each item is drawn twice with the same seed, with and without its cue
    (:meth:`PhantomCXR.item` with ``with_cue=False``): the two images differ
    only inside the cue's mask, so the drop is the effect of the cue alone.

    Parameters
    ----------
    model : nn.Module
        A multilabel classifier over :data:`~captum_iba.cxr.schema.FINDINGS`
        (raw logits, N x 8).
    phantom : PhantomCXR
        Made with ``cue=<finding>``.
    indices : sequence of int
        Items to test; each must carry the cue (see :func:`cue_images`).
    batch_size : int

    Returns
    -------
    InterventionResult
        ``with_cue``, ``without_cue`` and ``drop`` (their difference), each of
        shape (len(indices),): sigmoid probabilities of the cue's finding.
        A model that uses the cue has a clearly positive mean drop; one that
        does not, a drop near 0.
    """
    finding = _check_cue_phantom(phantom)
    indices = [int(index) for index in indices]
    if not indices:
        raise ValueError("indices: expected at least one item index")
    missing = [index for index in indices if not phantom.cue_of(index)]
    if missing:
        raise ValueError(f"indices: items {missing[:5]} carry no cue; choose them with cue_images()")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    column = FINDINGS.index(finding)
    outputs = {True: [], False: []}
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        for with_cue, values in outputs.items():
            images = torch.stack([phantom.item(index, with_cue=with_cue)["image"] for index in chunk])
            values.append(probabilities(model, images, column))
    with_cue, without_cue = torch.cat(outputs[True]), torch.cat(outputs[False])
    return InterventionResult(with_cue, without_cue, with_cue - without_cue)


def share_on_cue(maps, cue_masks) -> Tensor:
    """Share of each map's positive mass that lies on the cue.

    Parameters
    ----------
    maps : Tensor
        Attribution maps, any shape :func:`~captum_iba.maps.as_map_batch`
        accepts, e.g. (N, 1, h, w) at a bottleneck's resolution. They are
        resized to the masks' size preserving their totals
        (:func:`~captum_iba.maps.resize_map`); negative values are set to 0
        (the share of evidence *for* the output).
    cue_masks : Tensor, shape (N, H, W) or (N, 1, H, W), bool
        The cue's pixels (items' ``cue_mask``).

    Returns
    -------
    Tensor, shape (N,), float32
        ``sum(map on mask) / sum(map)`` in [0, 1]; NaN for a map without
        positive mass. A map spread evenly gives the mask's area fraction.

    Examples
    --------
    >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool); masks[0, :2, :2] = True
    >>> share_on_cue(torch.ones(1, 1, 4, 4), masks)
    tensor([0.2500])
    """
    masks = torch.as_tensor(cue_masks)
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3 or masks.dtype != torch.bool:
        raise ValueError(f"cue_masks: expected a bool tensor (N, H, W), got {masks.dtype} {tuple(masks.shape)}")
    maps = as_map_batch(maps)
    if maps.shape[0] != masks.shape[0]:
        raise ValueError(f"maps: expected {masks.shape[0]} maps (one per mask), got {maps.shape[0]}")
    positive = resize_map(maps.detach().float(), tuple(masks.shape[-2:])).clamp(min=0)[:, 0]
    total = positive.flatten(1).sum(1)
    on_cue = (positive * masks.to(positive)).flatten(1).sum(1)
    return torch.where(total > 0, on_cue / total.clamp(min=torch.finfo(total.dtype).tiny), torch.nan).cpu()


def _mean_and_se(values: Tensor) -> tuple:
    values = values[~torch.isnan(values)]
    if len(values) == 0:
        return math.nan, math.nan
    se = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return values.mean().item(), se


def cue_table(
    methods: Mapping[str, AttributionFn],
    cue_model: nn.Module,
    clean_model: nn.Module,
    images: Tensor,
    cue_masks: Tensor,
    target: int,
) -> List[Dict[str, float]]:
    """Share of each method's map on the cue, for the model that uses it and for the clean one.

    Parameters
    ----------
    methods : mapping of str to callable
        ``name -> f(model, images, target)`` returning maps (N, 1, h, w) (or
        any shape :func:`~captum_iba.maps.as_map_batch` accepts) for ``images``
        and the output ``target``. Called once per model.
    cue_model, clean_model : nn.Module
        Trained with the cue reliable (e.g. ``load_embedded_model("nih_cue")``)
        and without it (``"nih_cue_clean"``).
    images : Tensor, shape (N, 3, H, W)
        Images that carry the cue.
    cue_masks : Tensor, shape (N, H, W), bool
        Their cue masks.
    target : int
        The output explained: the cue's finding
        (``FINDINGS.index(phantom.cue)``).

    Returns
    -------
    list of dict
        One row per method, in order: ``method``, ``cue_model`` and
        ``clean_model`` (mean share on the cue over the images), ``difference``
        (cue model minus clean model), ``difference_se`` (standard error of
        the per-image differences) and ``n`` (images with a defined share for
        both models). A faithful method has a clearly positive difference
        when the intervention shows that the cue model uses the cue.
    """
    if not methods:
        raise ValueError("methods: expected at least one attribution method")
    rows = []
    for name, attribute in methods.items():
        shares = [share_on_cue(attribute(model, images, target), cue_masks) for model in (cue_model, clean_model)]
        difference = shares[0] - shares[1]
        defined = ~torch.isnan(difference)
        mean, se = _mean_and_se(difference)
        rows.append(
            {
                "method": name,
                "cue_model": _mean_and_se(shares[0][defined])[0],
                "clean_model": _mean_and_se(shares[1][defined])[0],
                "difference": mean,
                "difference_se": se,
                "n": int(defined.sum()),
            }
        )
    return rows
