"""The Readout Bottleneck's parts: its network, its training batches, its file.

* :class:`ReadoutNetwork` -- three 1x1 convolutions from the stacked readout
  maps (and the target) to ``alpha`` on the bottleneck's grid;
* :func:`readout_maps` -- the readout layers' features, normalised and resized to that grid;
* :func:`training_batches`, :func:`first_passes` -- the training rows of each batch and their clean passes;
* :class:`FirstPasses` -- the clean first passes that ``fit`` reuses across epochs;
* :func:`write_readout` / :func:`read_readout` -- the ``captum_iba.ReadoutIBA/1``
  file (``torch.save`` of plain tensors and numbers, read with
  ``weights_only=True``): the network's configuration and weights, Adam's
  state, the statistics of every layer, the options that define the maps and
  the training record.
"""

from __future__ import annotations

import math
import os
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, SequentialSampler

from .._engine import Layout
from .._files import atomic_path, read_tagged
from ..stats import FeatureStats

FORMAT = "captum_iba.ReadoutIBA/1"
#: Most bytes of first passes that ``fit`` keeps in memory for its later epochs (see its ``cache``).
FIRST_PASS_CACHE_BYTES = 2 * 1024**3


class ReadoutNetwork(nn.Module):
    """Three 1x1 convolutions from readout features (and a target) to ``alpha``.

    The network follows the reference implementation (``IBAReadout`` in
    BioroboticsLab/IBA): conv 1x1 -> ReLU -> conv 1x1 -> ReLU -> conv 1x1, the
    last layer initialised near zero so that training starts at ``alpha =
    init_alpha``, where IBA's loop starts. The reference clamps ``alpha`` to
    [-5, 5]; a hard clamp passes no gradient to a unit beyond it, and a readout
    that starts at the bound can stay there (one toy run in three did). Here the
    bound is soft, ``alpha = bound * tanh(a / bound)`` with ``bound = 10``.
    The target class enters explicitly: a one-hot map of the target concatenated
    to the readout input (a per-class bias of the first convolution, stored as
    such) and a per-class gain on the second hidden layer, so that each class can
    pick its own units (with the bias alone the toy's two findings got nearly the
    same map). The reference read the model's logits as one more layer; they say
    which classes the model sees, not which one the user asks about, and a
    multilabel image has several.

    Args:
        in_channels (int): channels of the stacked, normalised readout maps.
        out_channels (int): channels of the bottleneck layer.
        n_targets (int): number of model outputs the target may pick; 0 for
            an unconditioned readout (a single-output model).
        hidden (tuple of int): widths of the two hidden layers.
        init_alpha (float): initial ``alpha`` everywhere.
        alpha_bound (float): ``alpha = bound * tanh(a / bound)``, > ``|init_alpha|``.
    """

    def __init__(self, in_channels: int, out_channels: int, n_targets: int,
                 hidden: Tuple[int, int], init_alpha: float, alpha_bound: float) -> None:
        super().__init__()
        self.config = dict(in_channels=in_channels, out_channels=out_channels, n_targets=n_targets,
                           hidden=tuple(hidden), init_alpha=init_alpha, alpha_bound=alpha_bound)
        self.conv1 = nn.Conv2d(in_channels, hidden[0], 1)
        # A one-hot target map through conv1 is a per-class bias: store just that. A
        # per-class gain on the second hidden layer lets each class pick its units.
        self.target_bias = nn.Embedding(n_targets, hidden[0]) if n_targets else None
        self.target_gain = nn.Embedding(n_targets, hidden[1]) if n_targets else None
        if n_targets:
            nn.init.zeros_(self.target_bias.weight)
            nn.init.ones_(self.target_gain.weight)
        self.conv2 = nn.Conv2d(hidden[0], hidden[1], 1)
        self.conv3 = nn.Conv2d(hidden[1], out_channels, 1)
        with torch.no_grad():  # start at alpha = init_alpha, IBA's starting point
            self.conv3.weight.mul_(1e-3)
            self.conv3.bias.fill_(alpha_bound * math.atanh(init_alpha / alpha_bound))
        self.alpha_bound = alpha_bound

    def forward(self, readout: Tensor, target: Optional[Tensor]) -> Tensor:
        """``alpha`` of shape ``(N, out_channels, h, w)`` from ``readout`` ``(N, in_channels, h, w)``."""
        hidden = self.conv1(readout)
        if self.target_bias is not None:
            hidden = hidden + self.target_bias(target)[:, :, None, None]
        hidden = F.relu(self.conv2(F.relu(hidden)))
        if self.target_gain is not None:
            hidden = hidden * self.target_gain(target)[:, :, None, None]
        alpha = self.conv3(hidden)
        return self.alpha_bound * torch.tanh(alpha / self.alpha_bound)


def readout_maps(readouts: List[Tensor], layouts: List[Layout], readout_stats: List[FeatureStats],
                 min_std: float, grid) -> Tensor:
    """The readout layers' features normalised by their statistics, on ``grid`` (h, w), stacked on channels."""
    maps = []
    for readout, layout, stats in zip(readouts, layouts, readout_stats):
        mean = stats.mean.to(device=readout.device, dtype=readout.dtype)
        std = stats.std(min_std).to(device=readout.device, dtype=readout.dtype)
        normalised = layout.to_grid((readout - mean) / std)
        if normalised.shape[-2:] != grid:
            normalised = F.interpolate(normalised, size=grid, mode="bilinear", align_corners=False)
        maps.append(normalised)
    return torch.cat(maps, 1)


def inputs_and_labels(batch) -> Tuple[Tensor, Optional[Tensor]]:
    """A batch as (inputs, labels or None): a tensor, an (inputs, labels) sequence, or a dict."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, dict) and isinstance(batch.get("image"), Tensor):
        return batch["image"], batch.get("labels")
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0], batch[1] if len(batch) > 1 else None
    raise TypeError(
        "data must yield tensors, (inputs, labels) tuples or dicts with 'image' and 'labels'; "
        f"got {type(batch).__name__}"
    )


def training_rows(inputs: Tensor, target, labels) -> Tuple[Tensor, Any]:
    """Inputs and targets per training row: a given target, class indices, or one row per positive label."""
    if target is not None:
        return inputs, target
    if labels is None:
        return inputs, None  # a single-output model needs no target; _target says otherwise
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.dim() == 1 and not (labels.is_floating_point() or labels.dtype == torch.bool):
        return inputs, labels
    if labels.dim() == 2 and labels.shape[0] == inputs.shape[0]:
        rows, classes = (labels > 0.5).nonzero(as_tuple=True)
        return inputs[rows.to(inputs.device)], classes
    raise ValueError(
        "labels must be class indices (n,) of an integer dtype or multi-hot (n, K) floats; "
        f"got shape {tuple(labels.shape)}, dtype {labels.dtype}"
    )


def training_batches(data, target):
    """``(inputs, target)`` of each batch of ``data``: a given target (one, or one per sample in order), or the labels'."""
    per_sample, offset = isinstance(target, Tensor) and target.dim() == 1, 0
    for batch in data:
        inputs, labels = inputs_and_labels(batch)
        batch_target = target
        if per_sample:
            batch_target = target[offset : offset + len(inputs)]
            if len(batch_target) != len(inputs):
                raise ValueError(f"target: expected one entry per sample of data, got {len(target)} for more")
            offset += len(inputs)
        inputs, batch_target = training_rows(inputs, batch_target, labels)
        if inputs.shape[0]:
            yield inputs, batch_target


def first_passes(batches, prepare, passes: Optional["FirstPasses"]):
    """``(*prepare(inputs), target)`` of each training batch, kept in ``passes`` for the later epochs."""
    for inputs, target in batches:
        entry = (*prepare(inputs), target)
        if passes is not None:
            passes.add(entry)
        yield entry


def write_readout(path, *, layers, network: ReadoutNetwork, optimizer, options: dict, epochs_trained: int,
                  history: list, stats: List[FeatureStats]) -> None:
    """Write a trained readout to ``path`` atomically (see the module notes)."""
    payload = {
        "format": FORMAT,
        "layers": layers,
        "network": dict(network.config, hidden=list(network.config["hidden"])),
        "options": options,
        "state": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epochs_trained": epochs_trained,
        "history": history,
        "stats": [s.state_dict() for s in stats],
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def read_readout(path, layers: Optional[List[str]], n_readout_layers: int):
    """The file at ``path``: ``(payload, network, optimizer, stats)``, checked against the layers' names.

    Raises
    ------
    FileNotFoundError, ValueError
        As :meth:`ReadoutIBA.load <captum_iba.attr.readout.ReadoutIBA.load>`.
    """
    where = repr(os.fspath(path))
    payload = read_tagged(path, FORMAT, "ReadoutIBA", "readout")
    if layers is not None and payload["layers"] is not None and layers != payload["layers"]:
        raise ValueError(f"{where} was trained with layer and readout_layers {payload['layers']}, "
                         f"these are {layers}")
    stats = [FeatureStats.from_state_dict(entry, f"the statistics in {where}") for entry in payload["stats"]]
    if len(stats) != 1 + n_readout_layers:
        raise ValueError(f"{where} holds {len(stats) - 1} readout layers' statistics, "
                         f"{n_readout_layers} readout layers are given")
    network = ReadoutNetwork(**dict(payload["network"], hidden=tuple(payload["network"]["hidden"])))
    network.load_state_dict(payload["state"])
    optimizer = torch.optim.Adam(network.parameters())
    optimizer.load_state_dict(payload["optimizer"])
    return payload, network, optimizer, stats


def same_batches(data) -> bool:
    """Whether ``data`` surely yields the same batches every epoch: a list or tuple, a non-shuffling DataLoader."""
    if isinstance(data, (list, tuple)):
        return True
    if isinstance(data, DataLoader):
        sampler = getattr(data.batch_sampler, "sampler", data.sampler)
        return isinstance(sampler, SequentialSampler)
    return False


def _nbytes(value) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


class FirstPasses:
    """The first passes of one ``fit`` call's first epoch, kept for its later epochs while they fit in
    :data:`FIRST_PASS_CACHE_BYTES` (``entries`` None once given up)."""

    def __init__(self) -> None:
        self.entries: Optional[list] = []
        self.size, self.complete = 0, False

    def add(self, entry: tuple) -> None:
        if self.entries is None:
            return
        self.size += _nbytes(entry)
        if self.size > FIRST_PASS_CACHE_BYTES:
            self.entries = None
        else:
            self.entries.append(entry)
