"""The parts of :class:`~captum_iba.attr.readout.ReadoutIBA`: its network, its input checks, its file.

* :class:`ReadoutNetwork` -- three 1x1 convolutions from the stacked readout
  maps (and the target) to ``alpha``; see :mod:`captum_iba.attr.readout`.
* the checks of ``readout_layers``, ``readout_stats`` and the training batches
  (:func:`inputs_and_labels`, :func:`training_rows`);
* :class:`FirstPasses`: the clean first passes that ``fit`` reuses across epochs;
* :func:`write_readout` / :func:`read_readout`: the ``captum_iba.ReadoutIBA/1``
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

from .._files import atomic_path, read_tagged
from ..split import check_layer_in_model, owning_module
from ..stats import FeatureStats
from ._base import check_stats

FORMAT = "captum_iba.ReadoutIBA/1"
#: Most bytes of first passes that ``fit`` keeps in memory for its later epochs (see its ``cache``).
FIRST_PASS_CACHE_BYTES = 2 * 1024**3
#: Options that define the map of a trained readout: saved with it and restored by load().
MAP_OPTIONS = ("sigma", "min_std", "init_alpha", "active_neurons_threshold", "beta", "noise_draws", "relu")


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


def readout_maps(readouts: List[Tensor], readout_stats: List[FeatureStats], min_std: float, grid) -> Tensor:
    """The readout layers' outputs normalised by their statistics, resized to ``grid``, stacked on channels."""
    maps = []
    for i, (readout, stats) in enumerate(zip(readouts, readout_stats)):
        check_shape(stats, readout, f"readout_stats[{i}]", f"readout_layers[{i}]")
        mean = stats.mean.to(device=readout.device, dtype=readout.dtype)
        std = stats.std(min_std).to(device=readout.device, dtype=readout.dtype)
        normalised = (readout - mean) / std
        if normalised.shape[-2:] != grid:
            normalised = F.interpolate(normalised, size=grid, mode="bilinear", align_corners=False)
        maps.append(normalised)
    return torch.cat(maps, 1)


def check_target(target: Optional[Tensor], n_targets: int) -> Optional[Tensor]:
    """Formatted target indices checked against a readout trained for ``n_targets`` outputs (0: one output)."""
    if target is None and n_targets:
        raise ValueError(f"target is required: the readout was trained on a model with {n_targets} outputs")
    if target is not None and n_targets and ((target < 0) | (target >= n_targets)).any():
        raise ValueError(f"target indices must lie in [0, {n_targets - 1}] for a model with {n_targets} "
                         f"outputs, got {target.tolist()}")
    # A single-output model has nothing to condition on: any valid target is that output.
    return target if n_targets else None


def check_readout_layers(forward_func, readout_layers) -> List[nn.Module]:
    if isinstance(readout_layers, nn.Module) or not isinstance(readout_layers, (list, tuple)) \
            or not readout_layers:
        raise ValueError("readout_layers must be a non-empty list of modules")
    for i, layer in enumerate(readout_layers):
        check_layer_in_model(forward_func, layer, name=f"readout_layers[{i}]")
    if len({id(layer) for layer in readout_layers}) != len(readout_layers):
        raise ValueError("readout_layers must be distinct: a layer appears twice")
    return list(readout_layers)


def check_readout_stats(readout_stats, n: int) -> Optional[List[FeatureStats]]:
    if readout_stats is None:
        return None
    if not isinstance(readout_stats, (list, tuple)) or len(readout_stats) != n:
        raise ValueError(f"readout_stats must hold one FeatureStats per readout layer ({n})")
    return [check_stats(s, f"readout_stats[{i}]") for i, s in enumerate(readout_stats)]


def check_shape(stats: FeatureStats, output: Tensor, name: str, layer_name: str) -> None:
    if stats.shape != tuple(output.shape[1:]):
        raise ValueError(
            f"{name} were estimated for features of shape {stats.shape}, but {layer_name} outputs "
            f"{tuple(output.shape[1:])} per sample: estimate them at this layer and input size"
        )


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


def layer_names(forward_func, layers) -> Optional[List[str]]:
    model = owning_module(forward_func)
    if model is None:
        return None
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(layer)] for layer in layers]


def write_readout(readout, path) -> None:
    """Write ``readout`` (a trained ReadoutIBA) to ``path`` atomically (see the module notes)."""
    payload = {
        "format": FORMAT,
        "layers": layer_names(readout.forward_func, [readout.layer, *readout.readout_layers]),
        "network": dict(readout.network.config, hidden=list(readout.network.config["hidden"])),
        "options": {name: getattr(readout.options, name) for name in MAP_OPTIONS},
        "state": readout.network.state_dict(),
        "optimizer": readout._optimizer.state_dict(),
        "epochs_trained": readout.epochs_trained,
        "history": readout.history,
        "stats": [s.state_dict() for s in (readout.stats, *readout.readout_stats)],
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def read_readout(readout, path) -> Tuple[dict, ReadoutNetwork, torch.optim.Optimizer, List[FeatureStats]]:
    """The file at ``path`` for ``readout``: ``(payload, network, optimizer, stats)``, checked.

    Raises
    ------
    FileNotFoundError, ValueError
        As :meth:`ReadoutIBA.load <captum_iba.attr.readout.ReadoutIBA.load>`.
    """
    payload = read_tagged(path, FORMAT, "ReadoutIBA", "readout")
    names = layer_names(readout.forward_func, [readout.layer, *readout.readout_layers])
    if names is not None and payload["layers"] is not None and names != payload["layers"]:
        raise ValueError(
            f"{os.fspath(path)!r} was trained with layer and readout_layers {payload['layers']}, "
            f"this instance has {names}"
        )
    stats = [FeatureStats.from_state_dict(entry, f"the statistics in {os.fspath(path)!r}")
             for entry in payload["stats"]]
    if len(stats) != 1 + len(readout.readout_layers):
        raise ValueError(f"{os.fspath(path)!r} holds {len(stats) - 1} readout layers' statistics, "
                         f"this instance has {len(readout.readout_layers)} readout layers")
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
