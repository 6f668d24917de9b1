"""Run the network in two parts around a layer: the prefix once, the suffix per step.

IBA optimises a mask at one layer; everything before that layer is the same at
every optimisation step. :class:`FxSplit` cuts the traced graph of an
``nn.Module`` at the layer into a prefix (inputs -> layer output and every
other value the rest still needs, e.g. a residual branch around the layer) and
a suffix (those values -> model output), so the optimisation runs the suffix
alone. :class:`HookSplit` is the fallback for models that do not trace and for
plain functions: it runs the whole ``forward_func`` and swaps the layer's
output through a forward hook. Both give the same outputs for the same ``Z``.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.fx
from torch import Tensor, nn


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted layers have run."""


class LayerReusedError(ValueError):
    """The bottleneck layer runs more than once in one forward pass (a shared block).

    One mask cannot stand for several uses of the layer, and replacing every
    call would change what the model computes; both splits refuse.
    """

    def __init__(self, layer: nn.Module, calls: int, split: str) -> None:
        super().__init__(
            f"the layer ({type(layer).__name__}) runs {calls} times in one forward pass "
            f"({split} split): a bottleneck needs a layer that runs once. Choose a module "
            "that the forward pass calls exactly once (e.g. the block after the shared one)"
        )


def owning_module(forward_func: Callable) -> Optional[nn.Module]:
    """The ``nn.Module`` behind ``forward_func`` (itself, or a bound method's owner)."""
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def check_layer_in_model(forward_func: Callable, layer: nn.Module, name: str = "layer") -> None:
    """Raise ``ValueError`` if ``layer`` is not a submodule of ``forward_func``'s module."""
    if not isinstance(layer, nn.Module):
        raise TypeError(f"{name} must be an nn.Module, got {type(layer).__name__}")
    model = owning_module(forward_func)
    if model is not None and not any(m is layer for m in model.modules()):
        raise ValueError(
            f"{name} ({type(layer).__name__}) is not a submodule of the model passed as "
            "forward_func"
        )


def expand_per_sample(value, n: int, repeats: int):
    """Repeat each of the ``n`` samples of ``value`` ``repeats`` times, sample-major.

    Tensors whose first dimension is ``n`` are per-sample values; anything else
    (constants, non-tensors) is passed through, as Captum does for
    ``additional_forward_args``.
    """
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value.repeat_interleave(repeats, dim=0)
    if isinstance(value, (tuple, list)):
        return type(value)(expand_per_sample(v, n, repeats) for v in value)
    return value


def capture_layer_outputs(
    forward_func: Callable,
    layers: Sequence[nn.Module],
    inputs: Tuple,
    additional_forward_args: Tuple = (),
) -> List[Tensor]:
    """Outputs of ``layers`` for ``inputs``, stopping the forward pass once all have run.

    Returns
    -------
    list of Tensor
        One detached output per layer, in the order of ``layers``.
    """
    captured: dict = {}

    def make_hook(index: int):
        def hook(module, args, output):
            captured[index] = output
            if len(captured) == len(layers):
                raise _StopForward

        return hook

    with _hooks([(layer, make_hook(i)) for i, layer in enumerate(layers)]):
        try:
            forward_func(*inputs, *additional_forward_args)
        except _StopForward:
            pass
    missing = [i for i in range(len(layers)) if i not in captured]
    if missing:
        raise ValueError(
            f"layer {missing[0]} ({type(layers[missing[0]]).__name__}) was not called by "
            "forward_func: pass a module that the forward pass runs"
        )
    outputs = [captured[i] for i in range(len(layers))]
    for layer, output in zip(layers, outputs):
        check_feature_map(output, layer)
    return [output.detach() for output in outputs]


def check_feature_map(output, layer: nn.Module) -> None:
    """Raise ``ValueError`` unless ``output`` is a 4-D tensor (N, C, h, w)."""
    if not isinstance(output, Tensor) or output.dim() != 4:
        got = (
            f"a tensor of shape {tuple(output.shape)}"
            if isinstance(output, Tensor)
            else f"a {type(output).__name__}"
        )
        raise ValueError(
            f"the bottleneck needs a layer whose output is one 4-D feature map (N, C, h, w); "
            f"{type(layer).__name__} returned {got}"
        )


@contextlib.contextmanager
def _hooks(pairs) -> Iterator[None]:
    handles = []
    try:
        for module, hook in pairs:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def frozen_model(forward_func: Callable) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; the exact prior state after.

    Every module's ``training`` flag and every parameter's ``requires_grad``
    flag are restored one by one, also when an exception escapes. For a plain
    function (``lambda x: model(x)["logits"]``) the model is not reachable
    beforehand: a global forward pre-hook freezes each module the function
    runs, with everything inside it, just before its first call, and the same
    restoration follows.
    """
    model = owning_module(forward_func)
    saved: dict = {}
    handle = None
    if model is not None:
        _freeze(model, saved)
    else:

        def freeze_before_call(module, args):
            if id(module) not in saved:
                _freeze(module, saved)

        handle = nn.modules.module.register_module_forward_pre_hook(freeze_before_call)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
        for module, training, flags in saved.values():
            module.training = training
            for param, requires_grad in flags:
                param.requires_grad_(requires_grad)


def _freeze(root: nn.Module, saved: dict) -> None:
    """Put ``root`` and its submodules in eval mode without parameter gradients, noting their state."""
    for module in root.modules():
        if id(module) not in saved:
            flags = [(param, param.requires_grad) for param in module.parameters(recurse=False)]
            saved[id(module)] = (module, module.training, flags)
            for param, _ in flags:
                param.requires_grad_(False)
    root.eval()  # through ``train``, which some modules override


class HookSplit:
    """Whole-model execution with the layer's output replaced by a forward hook.

    ``features`` captures the layer output with one forward pass stopped at
    the layer; ``outputs`` reruns ``forward_func`` on the inputs repeated per
    noise draw, and the hook returns ``Z`` in place of the layer's output.
    """

    mode = "hooks"

    def __init__(self, forward_func: Callable, layer: nn.Module) -> None:
        self.forward_func = forward_func
        self.layer = layer

    def features(self, inputs: Tuple, additional_forward_args: Tuple):
        """Layer output ``F`` (detached) and the context ``outputs`` needs."""
        (features,) = capture_layer_outputs(
            self.forward_func, [self.layer], inputs, additional_forward_args
        )
        return features, (inputs, additional_forward_args)

    #: The context for a batch with every sample repeated: ``expand(context, n, repeats)``.
    expand = staticmethod(expand_per_sample)

    def outputs(self, z: Tensor, context) -> Tensor:
        """Model outputs with the layer's output replaced by ``z``."""
        inputs, additional_forward_args = context

        calls = []

        def replace(module, args, output):
            calls.append(1)
            return z

        with _hooks([(self.layer, replace)]):
            outputs = self.forward_func(*inputs, *additional_forward_args)
        if len(calls) != 1:
            raise LayerReusedError(self.layer, len(calls), "hooks")
        return outputs


class _LeafTracer(torch.fx.Tracer):
    """Traces through every module except the bottleneck layers (and torch's own leaves)."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = {id(layer) for layer in layers}

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return id(module) in self.layers or super().is_leaf_module(module, qualified_name)


def trace_model(model: nn.Module, layers: Sequence[nn.Module]) -> torch.fx.Graph:
    """The fx graph of ``model`` with ``layers`` kept as calls; ``ValueError`` if it does not trace."""
    optional = [p.name for p in inspect.signature(model.forward).parameters.values()
                if p.default is not inspect.Parameter.empty]
    if optional:
        # The trace takes every branch an argument could take (``if x2 is not None``).
        raise ValueError(f"forward has optional arguments {optional}: the trace cannot follow them")
    try:
        return _LeafTracer(layers).trace(model)
    except Exception as error:  # tracing fails in many ways on dynamic code
        raise ValueError(f"the model does not trace with torch.fx: {error}") from error


class FxSplit:
    """The traced model cut at the layer into a prefix and a suffix graph.

    The prefix returns the layer output and every value computed before the
    layer that the suffix uses (a skip connection, an extra input); the suffix
    takes those values and returns the model output. Both graphs share the
    model's modules and parameters: nothing is copied.

    Raises
    ------
    ValueError
        If the model does not trace, has optional forward arguments, calls
        the layer more than once
        (:class:`LayerReusedError`), reads a shape before the layer that the
        rest uses, or its output does not depend on the layer.
    """

    mode = "fx"

    def __init__(self, model: nn.Module, layer: nn.Module, graph: Optional[torch.fx.Graph] = None) -> None:
        # ``graph``: a trace shared with other layers (see :class:`SharedPrefix`).
        graph = trace_model(model, [layer]) if graph is None else graph
        layer_nodes = [
            node
            for node in graph.nodes
            if node.op == "call_module" and model.get_submodule(node.target) is layer
        ]
        if len(layer_nodes) > 1:
            raise LayerReusedError(layer, len(layer_nodes), "fx")
        if not layer_nodes:
            raise ValueError("the layer is not called in the traced model")
        (layer_node,) = layer_nodes
        self.layer, self.model = layer, model

        downstream = {layer_node}
        for node in graph.nodes:
            if any(arg in downstream for arg in node.all_input_nodes):
                downstream.add(node)
        output_node = next(node for node in graph.nodes if node.op == "output")
        if output_node not in downstream:
            raise ValueError("the model output does not depend on the layer")
        suffix_nodes = [n for n in graph.nodes if n in downstream and n is not layer_node]
        carried = [
            node
            for node in graph.nodes
            if node not in downstream
            and node.op != "get_attr"
            and any(user in downstream and user is not layer_node for user in node.users)
        ]
        if any(_reads_shape(node) for node in carried):
            # e.g. ``n = x.shape[0]`` before the layer, ``reshape(n, -1)`` after: the
            # value would be stale for the suffix's batch of noise draws.
            raise ValueError("the model uses a shape read before the layer after it")
        #: The prefix's outputs: the layer's node, then the carried values.
        self.prefix_outputs = [layer_node] + carried
        self.prefix = torch.fx.GraphModule(model, _prefix_graph(graph, self.prefix_outputs))
        self.suffix = torch.fx.GraphModule(
            model, _suffix_graph(graph, layer_node, carried, suffix_nodes)
        )

    def features(self, inputs: Tuple, additional_forward_args: Tuple):
        """Layer output ``F`` (detached) and the carried prefix values."""
        features, *carried = self.prefix(*inputs, *additional_forward_args)
        check_feature_map(features, self.layer)
        return features.detach(), tuple(_detach(value) for value in carried)

    #: The carried values for a batch with every sample repeated: ``expand(context, n, repeats)``.
    expand = staticmethod(expand_per_sample)

    def outputs(self, z: Tensor, context) -> Tensor:
        """Model outputs computed from ``z`` by the suffix alone."""
        # The suffix may update a carried tensor in place (``x += skip``): give it copies.
        carried = tuple(v.clone() if isinstance(v, Tensor) else v for v in context)
        return self.suffix(z, *carried)


def _reads_shape(node: torch.fx.Node) -> bool:
    """Whether ``node`` is computed from a tensor's ``shape`` or ``size()``."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if (current.op == "call_method" and current.target == "size") or (
            current.op == "call_function" and current.target is getattr and "shape" in current.args
        ):
            return True
        stack.extend(current.all_input_nodes)
    return False


def _detach(value):
    return value.detach() if isinstance(value, Tensor) else value


def _prefix_graph(graph: torch.fx.Graph, wanted: List[torch.fx.Node]) -> torch.fx.Graph:
    needed = set()
    stack = list(wanted)
    while stack:
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack.extend(node.all_input_nodes)
    prefix = torch.fx.Graph()
    env: dict = {}
    for node in graph.nodes:
        # Every placeholder stays, so the prefix keeps the model's call signature.
        if node.op == "placeholder" or node in needed:
            env[node] = prefix.node_copy(node, lambda n: env[n])
    prefix.output(tuple(env[node] for node in wanted))
    prefix.lint()
    return prefix


def _suffix_graph(
    graph: torch.fx.Graph,
    layer_node: torch.fx.Node,
    carried: List[torch.fx.Node],
    suffix_nodes: List[torch.fx.Node],
) -> torch.fx.Graph:
    suffix = torch.fx.Graph()
    env = {layer_node: suffix.placeholder("bottleneck_z")}
    for i, node in enumerate(carried):
        env[node] = suffix.placeholder(f"carried_{i}")
    in_suffix = set(suffix_nodes)
    for node in graph.nodes:
        if node.op == "get_attr" and not in_suffix.isdisjoint(node.users):
            env[node] = suffix.node_copy(node, lambda n: env[n])
    for node in suffix_nodes:
        if node.op == "output":
            suffix.output(torch.fx.map_arg(node.args[0], lambda n: env[n]))
        else:
            env[node] = suffix.node_copy(node, lambda n: env[n])
    suffix.lint()
    return suffix


SPLIT_MODES = ("auto", "fx", "hooks")


def make_split(forward_func: Callable, layer: nn.Module, mode: str = "auto"):
    """Build the split for ``mode`` in ``"auto"``, ``"fx"`` or ``"hooks"``.

    ``"auto"`` traces an ``nn.Module`` ``forward_func`` and falls back to hooks
    when tracing or cutting fails; functions always use hooks. A layer that
    runs more than once raises :class:`LayerReusedError` in every mode.
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"split must be one of {SPLIT_MODES}, got {mode!r}")
    if mode == "hooks":
        return HookSplit(forward_func, layer)
    if not isinstance(forward_func, nn.Module):
        if mode == "fx":
            raise ValueError("split='fx' needs forward_func to be an nn.Module")
        return HookSplit(forward_func, layer)
    try:
        return FxSplit(forward_func, layer)
    except LayerReusedError:
        raise
    except ValueError:
        if mode == "fx":
            raise
        return HookSplit(forward_func, layer)
