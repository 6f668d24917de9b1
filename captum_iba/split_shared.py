"""Several layers of one network split by one trace, their prefixes run as one.

The layers of a network nest: the prefix of DenseNet's dense block 3 contains
the prefix of dense block 1. Multi-layer IBA needs every layer's output (and
the values its suffix carries) for the same inputs; :class:`SharedPrefix`
traces the model once with every layer kept as a call, cuts one
:class:`~captum_iba.split.FxSplit` per layer from that graph, and builds one
prefix graph that returns what all of them need, so the shared part runs
once. Layers the graph cannot be cut at use hooks, all captured in one
forward pass that stops after the deepest of them.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch.fx
from torch import nn

from .split import (
    SPLIT_MODES,
    FxSplit,
    HookSplit,
    LayerReusedError,
    _detach,
    _prefix_graph,
    capture_layer_outputs,
    check_feature_map,
    trace_model,
)


class SharedPrefix:
    """One split per layer and one pass that computes all their features.

    Parameters
    ----------
    forward_func : nn.Module or callable
    layers : sequence of nn.Module
    mode : {"auto", "fx", "hooks"}
        As in :func:`captum_iba.split.make_split`; ``"fx"`` raises where a
        layer cannot be cut.

    Attributes
    ----------
    splits : list
        The split of each layer, in order; its suffix takes the context that
        :meth:`features` returns for the layer.
    """

    def __init__(self, forward_func: Callable, layers: Sequence[nn.Module], mode: str = "auto") -> None:
        if mode not in SPLIT_MODES:
            raise ValueError(f"split must be one of {SPLIT_MODES}, got {mode!r}")
        self.forward_func = forward_func
        self.splits: List = [None] * len(layers)
        graph = self._trace(forward_func, layers, mode)
        for i, layer in enumerate(layers):
            if graph is not None:
                try:
                    self.splits[i] = FxSplit(forward_func, layer, graph)
                except LayerReusedError:
                    raise
                except ValueError:
                    if mode == "fx":
                        raise
            if self.splits[i] is None:
                self.splits[i] = HookSplit(forward_func, layer)
        fx = [split for split in self.splits if split.mode == "fx"]
        self.prefix = None
        if fx:
            wanted = [node for split in fx for node in split.prefix_outputs]
            self.prefix = torch.fx.GraphModule(forward_func, _prefix_graph(graph, wanted))

    @staticmethod
    def _trace(forward_func, layers, mode):
        if mode == "hooks" or not isinstance(forward_func, nn.Module):
            if mode == "fx":
                raise ValueError("split='fx' needs forward_func to be an nn.Module")
            return None
        try:
            return trace_model(forward_func, layers)
        except ValueError:
            if mode == "fx":
                raise
            return None

    def features(self, inputs: Tuple, additional_forward_args: Tuple) -> List[Tuple]:
        """``(features, context)`` of every layer, as each split's ``features`` returns it."""
        results: List = [None] * len(self.splits)
        if self.prefix is not None:
            values = iter(self.prefix(*inputs, *additional_forward_args))
            for i, split in enumerate(self.splits):
                if split.mode == "fx":
                    features, *carried = [next(values) for _ in split.prefix_outputs]
                    check_feature_map(features, split.layer)
                    results[i] = (features.detach(), tuple(_detach(value) for value in carried))
        hooked = [i for i, split in enumerate(self.splits) if split.mode == "hooks"]
        if hooked:
            outputs = capture_layer_outputs(
                self.forward_func, [self.splits[i].layer for i in hooked], inputs, additional_forward_args
            )
            for i, features in zip(hooked, outputs):
                results[i] = (features, (inputs, additional_forward_args))
        return results
