"""Run the network in two parts around a layer: the prefix once, the suffix per step.

IBA optimises a mask at one layer; everything before that layer is the same at
every optimisation step. :class:`FxSplit` cuts the traced graph of the model at
the layer into a prefix (inputs -> layer output and every other value the rest
still needs, e.g. a residual branch around the layer) and a suffix (those
values -> model output), so the optimisation runs the suffix alone.
:class:`HookSplit` is the fallback for models that do not trace: it runs the
whole ``forward_func`` and swaps the layer's output through a forward hook.
Both give the same outputs for the same ``Z``.

A layer may return a tensor or a tuple whose first element is the tensor
(HuggingFace blocks): the bottleneck replaces that element and passes the
others on unchanged.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.fx
from torch import Tensor, nn

from .frozen import owning_module

SPLIT_MODES = ("auto", "fx", "hooks")


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted layers have run."""


class LayerReusedError(ValueError):
    """The bottleneck layer runs more than once in one forward pass (a shared block).

    One mask cannot stand for several uses of the layer, and replacing every
    call would change what the model computes; both splits refuse.
    """

    def __init__(self, layer: nn.Module, calls: int, split: str) -> None:
        super().__init__(
            f"layer: expected a module that runs once per forward pass, got a {type(layer).__name__} that "
            f"runs {calls} times ({split} split); choose the block after the shared one"
        )


def layer_features(output, layer: nn.Module) -> Tuple[Tensor, Optional[tuple]]:
    """The feature tensor in a layer's output, and the rest of a tuple output (None for a tensor)."""
    if isinstance(output, Tensor):
        return output, None
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0], tuple(output[1:])
    raise ValueError(
        f"layer: expected a module returning a tensor (or a tuple whose first element is one), "
        f"got a {type(layer).__name__} returning a {type(output).__name__}"
    )


def with_features(z: Tensor, rest: Optional[tuple]):
    """The layer's output with ``z`` as its features: ``z``, or the tuple ``(z, *rest)``."""
    return z if rest is None else (z, *rest)


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


def cut_per_sample(value, n: int, rows: slice):
    """``value`` with every per-sample tensor (first dimension ``n``) cut to ``rows``; the rest as it is."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[rows]
    if isinstance(value, (tuple, list)):
        return type(value)(cut_per_sample(v, n, rows) for v in value)
    return value


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


def capture_layer_outputs(
    forward_func: Callable, layers: Sequence[nn.Module], inputs: Tuple, additional_forward_args: Tuple = ()
) -> List[Tensor]:
    """The feature tensors of ``layers`` for ``inputs``, stopping the forward pass once all have run.

    Returns
    -------
    list of Tensor
        One detached feature tensor per layer (see :func:`layer_features`), in the order of ``layers``.
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
            f"layer: expected a module that forward_func runs, got a {type(layers[missing[0]]).__name__} "
            "that the forward pass never called"
        )
    return [layer_features(captured[i], layer)[0].detach() for i, layer in enumerate(layers)]


class HookSplit:
    """Whole-model execution with the layer's output replaced by a forward hook.

    ``features`` captures the layer output with one forward pass stopped at
    the layer; ``outputs`` reruns ``forward_func`` on the inputs repeated per
    noise draw, and the hook returns ``Z`` in place of the layer's features.
    """

    mode = "hooks"

    def __init__(self, forward_func: Callable, layer: nn.Module) -> None:
        self.forward_func = forward_func
        self.layer = layer

    def features(self, inputs: Tuple, additional_forward_args: Tuple):
        """Layer features ``F`` (detached) and the context ``outputs`` needs."""
        (features,) = capture_layer_outputs(self.forward_func, [self.layer], inputs, additional_forward_args)
        return features, (inputs, additional_forward_args)

    #: The context for a batch with every sample repeated: ``expand(context, n, repeats)``.
    expand = staticmethod(expand_per_sample)

    def outputs(self, z: Tensor, context) -> Tensor:
        """Model outputs with the layer's features replaced by ``z``."""
        inputs, additional_forward_args = context
        calls = []

        def replace(module, args, output):
            calls.append(1)
            return with_features(z, layer_features(output, module)[1])

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


class FunctionOfModel(nn.Module):
    """A function of one model as a module whose submodule is that model, so that it traces.

    Use :func:`function_of_model`: its ``forward`` takes the function's own
    positional parameters (torch.fx cannot trace through ``*args``).
    """

    def __init__(self, function: Callable, model: nn.Module) -> None:
        super().__init__()
        self.function, self.model = function, model


def function_of_model(function: Callable, model: nn.Module) -> Optional[FunctionOfModel]:
    """``function`` of ``model`` as a :class:`FunctionOfModel`; None if its parameters are not plain positional ones."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not parameters or any(p.kind not in plain or not p.name.isidentifier() for p in parameters):
        return None
    names = ", ".join(p.name for p in parameters)
    namespace: dict = {}
    exec(f"def forward(self, {names}):\n    return self.function({names})\n", namespace)  # the function's arity
    return type("FunctionOfModel", (FunctionOfModel,), {"forward": namespace["forward"]})(function, model)


def required_arguments(forward_func: Callable) -> int:
    """How many positional arguments ``forward_func`` (a module: its ``forward``) needs, at least 1."""
    function = forward_func.forward if isinstance(forward_func, nn.Module) else forward_func
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return 1
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return max(1, sum(p.kind in plain and p.default is inspect.Parameter.empty for p in parameters))


def trace_model(model: nn.Module, layers: Sequence[nn.Module], arity: int = 1) -> torch.fx.Graph:
    """The fx graph of ``model`` called with ``arity`` positional arguments, ``layers`` kept as calls.

    Optional parameters past the ones given are traced at their defaults (a
    ViT's ``attn_mask=None``). Raises ``ValueError`` if it does not trace.
    """
    parameters = list(inspect.signature(model.forward).parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if arity > len(positional) or any(p.default is inspect.Parameter.empty for p in positional[arity:]):
        raise ValueError(f"forward takes {len(positional)} positional arguments, the call passes {arity}")
    concrete = {p.name: p.default for p in positional[arity:]}
    try:
        return _LeafTracer(layers).trace(model, concrete_args=concrete or None)
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
        the layer more than once (:class:`LayerReusedError`), reads a shape
        before the layer that the rest uses, or its output does not depend on
        the layer.
    """

    mode = "fx"
    #: Whether :func:`verified_split` saw the parts reproduce the model's outputs.
    verified = False

    def __init__(self, model: nn.Module, layer: nn.Module, arity: int = 1) -> None:
        graph = trace_model(model, [layer], arity)
        layer_nodes = [node for node in graph.nodes
                       if node.op == "call_module" and model.get_submodule(node.target) is layer]
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
        carried = [node for node in graph.nodes
                   if node not in downstream and node.op != "get_attr"
                   and any(user in downstream and user is not layer_node for user in node.users)]
        if any(_reads_shape(node) for node in carried):
            # e.g. ``n = x.shape[0]`` before the layer, ``reshape(n, -1)`` after: the
            # value would be stale for the suffix's batch of noise draws.
            raise ValueError("the model uses a shape read before the layer after it")
        self.prefix = torch.fx.GraphModule(model, _prefix_graph(graph, [layer_node] + carried))
        self.suffix = torch.fx.GraphModule(model, _suffix_graph(graph, layer_node, carried, suffix_nodes))

    def features(self, inputs: Tuple, additional_forward_args: Tuple):
        """Layer features ``F`` (detached) and the context: the rest of a tuple output, the carried values."""
        output, *carried = self.prefix(*inputs, *additional_forward_args)
        features, rest = layer_features(output, self.layer)
        return features.detach(), (_detach(rest), tuple(_detach(value) for value in carried))

    #: The context for a batch with every sample repeated: ``expand(context, n, repeats)``.
    expand = staticmethod(expand_per_sample)

    def outputs(self, z: Tensor, context) -> Tensor:
        """Model outputs computed from ``z`` by the suffix alone."""
        return self.run(self.suffix, z, context)

    @staticmethod
    def run(suffix: Callable, z: Tensor, context) -> Tensor:
        """``suffix`` (this split's, or a rewritten or compiled copy) on ``z`` and the context."""
        rest, carried = context
        # The suffix may update a carried tensor in place (``x += skip``): give it copies.
        carried = tuple(v.clone() if isinstance(v, Tensor) else v for v in carried)
        return suffix(with_features(z, rest), *carried)


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
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(v) for v in value)
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


def _suffix_graph(graph: torch.fx.Graph, layer_node: torch.fx.Node, carried: List[torch.fx.Node],
                  suffix_nodes: List[torch.fx.Node]) -> torch.fx.Graph:
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


def verified_split(split, forward_func: Callable, inputs: Tuple, additional_forward_args: Tuple, mode: str = "auto"):
    """``split`` if its prefix and suffix reproduce ``forward_func``'s outputs on these inputs, else the hook split.

    A trace follows one path through Python code (``isinstance`` on a traced
    value, a branch on a constant), which other inputs may not take: one
    clean forward pass of both checks it once. ``mode="fx"`` raises instead
    of falling back.
    """
    if split.mode != "fx" or split.verified:
        return split
    with torch.no_grad():
        expected = forward_func(*inputs, *additional_forward_args)
        try:
            features, context = split.features(inputs, additional_forward_args)
            agrees = _same_outputs(split.outputs(features, context), expected)
        except Exception:  # the traced path breaks on these inputs
            agrees = False
    if agrees:
        split.verified = True
        return split
    if mode == "fx":
        raise ValueError("speed.split='fx': the traced model does not reproduce the model's outputs on these inputs "
                         "(its Python code takes another path); use split='auto' or 'hooks'")
    return HookSplit(forward_func, split.layer)


def _same_outputs(ours, expected) -> bool:
    if not (isinstance(ours, Tensor) and isinstance(expected, Tensor)) or ours.shape != expected.shape:
        return ours is expected or (not isinstance(ours, Tensor) and type(ours) is type(expected))
    return bool(torch.allclose(ours.float(), expected.float(), rtol=1e-4, atol=1e-5, equal_nan=True))


def make_split(forward_func: Callable, layer: nn.Module, mode: str = "auto", arity: int = 1):
    """Build the split for ``mode`` in ``"auto"``, ``"fx"`` or ``"hooks"``, for calls with ``arity`` arguments.

    ``"auto"`` traces the model (a function of one model is traced with it,
    see :func:`~captum_iba._engine.frozen.owning_module`) and falls back to
    hooks when tracing or cutting fails. A layer that runs more than once
    raises :class:`LayerReusedError` in every mode.
    """
    if mode == "hooks":
        return HookSplit(forward_func, layer)
    model = owning_module(forward_func)
    if model is not None and forward_func is not model:
        model = function_of_model(forward_func, model)
    if model is None:
        if mode == "fx":
            raise ValueError("speed.split='fx' needs forward_func to be an nn.Module or a function of one")
        return HookSplit(forward_func, layer)
    try:
        return FxSplit(model, layer, arity)
    except LayerReusedError:
        raise
    except ValueError:
        if mode == "fx":
            raise
        return HookSplit(forward_func, layer)
