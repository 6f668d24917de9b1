"""A ground truth of sufficient against all evidence: findings drawn in two parts.

The phantom's two-part options (:class:`~captum_iba.cxr.PhantomCXR` with
``redundant=`` or ``conjunctive=``) draw a finding as one lesion in each lung.
For a *redundant* finding either lesion is the finding (OR), for a
*conjunctive* one both parts are (AND). Whether a trained model follows that
rule is measured by intervention (:func:`part_intervention`: draw the same
image without one part, without the other, without both, and read the
finding's output). An attribution map is then read against the parts: which
of them its thresholded map reaches (:func:`parts_reached`), and what the
output does when exactly those are removed (:func:`removal_outputs`). A map
of a *sufficient* region may mark one lesion of a redundant finding and keep
the output when it is removed; a map of *all* the evidence marks both.

Plain functions, no hidden state; the models are left as found (eval mode for
the forward passes, then restored).
"""

from __future__ import annotations

from typing import List, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ...maps import binarize, resize_map
from ..schema import FINDINGS
from ._outputs import probabilities
from .dataset import PhantomCXR

__all__ = ["PartsIntervention", "pair_images", "part_intervention", "parts_reached", "removal_outputs",
           "REACHED_FRACTION"]

#: A part counts as reached when the thresholded map covers at least this share of its pixels:
#: a coarse map upsampled to the image grazes the neighbouring lesion at its edge, which is not
#: marking it.
REACHED_FRACTION = 0.25


class PartsIntervention(NamedTuple):
    """The finding's output (sigmoid probability) per image: as drawn and with parts removed."""

    full: Tensor
    without_left: Tensor  # the image-left lung's part removed
    without_right: Tensor
    without_both: Tensor


def _check(phantom: PhantomCXR, finding: str) -> int:
    if not isinstance(phantom, PhantomCXR) or finding not in phantom.two_part:
        two_part = getattr(phantom, "two_part", ())
        raise ValueError(f"finding: expected a two-part finding of the phantom {two_part}, got {finding!r}")
    return phantom.two_part.index(finding)


def pair_images(phantom: PhantomCXR, finding: str, n: int) -> List[int]:
    """Indices of the first ``n`` items that show both parts of ``finding`` (none rendered).

    Parameters
    ----------
    phantom : PhantomCXR
        Made with ``finding`` among its ``redundant`` or ``conjunctive`` findings.
    finding : str
    n : int
        At most this many (at least 1); fewer when the phantom holds fewer.

    Returns
    -------
    list of int
        Increasing indices; their items have the finding's label 1.
    """
    _check(phantom, finding)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    found = []
    for index in range(len(phantom)):
        if all(phantom.parts_of(index)[finding]):
            found.append(index)
            if len(found) == n:
                break
    return found


def removal_outputs(model: nn.Module, phantom: PhantomCXR, finding: str, indices: Sequence[int],
                    removed, *, batch_size: int = 32) -> Tensor:
    """The finding's output on each item drawn without the parts ``removed``.

    The removed parts are not drawn (the image shows the chest behind them, as
    the cue's intervention does), so each image differs from the item only
    inside those parts' masks.

    Parameters
    ----------
    model : nn.Module
        A multilabel classifier over :data:`~captum_iba.cxr.schema.FINDINGS`
        (raw logits, N x 8).
    phantom : PhantomCXR
    finding : str
        One of ``phantom.two_part``.
    indices : sequence of int
    removed : bool tensor or nested sequence, shape (len(indices), 2)
        Per item, whether its image-left and image-right part are removed.
    batch_size : int

    Returns
    -------
    Tensor, shape (len(indices),)
        Sigmoid probabilities of ``finding``.
    """
    _check(phantom, finding)
    removed = torch.as_tensor(removed, dtype=torch.bool)
    indices = [int(index) for index in indices]
    if removed.shape != (len(indices), 2):
        raise ValueError(f"removed: expected shape ({len(indices)}, 2), got {tuple(removed.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    column = FINDINGS.index(finding)
    outputs = []
    for start in range(0, len(indices), batch_size):
        chunk = range(start, min(start + batch_size, len(indices)))
        images = [phantom.item(indices[i], omit_parts=[(finding, side) for side in (0, 1) if removed[i, side]])
                  ["image"] for i in chunk]
        outputs.append(probabilities(model, torch.stack(images), column))
    return torch.cat(outputs) if outputs else torch.zeros(0)


def part_intervention(model: nn.Module, phantom: PhantomCXR, finding: str, indices: Sequence[int],
                      *, batch_size: int = 32) -> PartsIntervention:
    """The finding's output with both parts, without either one, and without both.

    On items that show both parts (:func:`pair_images`), a model that learnt a
    redundant finding's OR keeps its output without either lesion and loses it
    without both; one that learnt a conjunctive finding's AND loses it without
    either part.

    Returns
    -------
    PartsIntervention
        Each of shape (len(indices),).
    """
    n = len(indices)
    if n == 0:
        raise ValueError("indices: expected at least one item index")
    runs = [removal_outputs(model, phantom, finding, indices, torch.tensor([removed] * n), batch_size=batch_size)
            for removed in ((False, False), (True, False), (False, True), (True, True))]
    return PartsIntervention(*runs)


def parts_reached(maps: Tensor, part_masks: Tensor, threshold) -> Tensor:
    """Which parts each thresholded map reaches.

    Parameters
    ----------
    maps : Tensor
        Attribution maps, any shape :func:`~captum_iba.maps.as_map_batch`
        accepts (e.g. (N, 1, h, w) at a layer's resolution); resized to the
        masks' size (bilinearly, :func:`~captum_iba.maps.resize_map`) before
        :func:`~captum_iba.maps.binarize` thresholds each.
    part_masks : Tensor, shape (N, 2, H, W), bool
        One finding's parts per item (a row of the items' ``part_masks``).
    threshold : float or str
        As :func:`~captum_iba.maps.binarize` takes it (e.g. ``"otsu"``).

    Returns
    -------
    Tensor, shape (N, 2), bool
        Whether the thresholded map covers at least :data:`REACHED_FRACTION`
        of the part's pixels; False for an empty part.

    Examples
    --------
    >>> parts = torch.zeros(1, 2, 4, 4, dtype=torch.bool); parts[0, 0, :, :2] = parts[0, 1, :, 2:] = True
    >>> maps = torch.zeros(1, 1, 4, 4); maps[0, 0, :, :2] = 1.0
    >>> parts_reached(maps, parts, "otsu").tolist()
    [[True, False]]
    """
    masks = torch.as_tensor(part_masks)
    if masks.dim() != 4 or masks.shape[1] != 2 or masks.dtype != torch.bool:
        raise ValueError(f"part_masks: expected a bool tensor (N, 2, H, W), got {masks.dtype} {tuple(masks.shape)}")
    on = binarize(resize_map(maps.detach().float(), tuple(masks.shape[-2:])), threshold)  # (N, 1, H, W)
    if on.shape[0] != masks.shape[0]:
        raise ValueError(f"maps: expected {masks.shape[0]} maps (one per item), got {on.shape[0]}")
    covered = (on & masks).flatten(2).sum(2).float()
    area = masks.flatten(2).sum(2).float()
    return (area > 0) & (covered >= REACHED_FRACTION * area)
