"""How the network after the bottleneck runs at each step: rewrites, memory format, precision, compilation.

Four execution options of the bottleneck attributions, none of which changes
the model (its parameters keep their dtype, memory format and values):

* ``fuse`` (on by default): exact algebraic rewrites of the traced suffix
  (:func:`fuse_suffix`): an eval-mode ``BatchNorm2d`` becomes one
  multiply-add, average pooling moves before the pointwise convolution it
  follows, and a suffix that starts with ``BatchNorm2d`` (and ``ReLU``) has
  it folded into the noise mixing (:class:`LeadingAffine`). The suffix
  computes the same function; float32 sums are rounded in another order.

* ``channels_last``: ``Z`` is built in ``torch.channels_last`` memory format,
  which the CPU's convolution kernels run faster. Only for an fx split whose
  suffix allows it: a ``.view`` in the suffix (``x.view(n, -1)`` after a
  convolution) fails on a channels-last tensor, so such a suffix is refused
  (``True``) or run contiguous (``"auto"``), with the reason in
  :func:`channels_last_refusal`.
* ``precision``: ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA) runs the model
  under :func:`torch.autocast`; the loss, the bottleneck and Adam stay float32.
* ``compile``: :func:`torch.compile` of the suffix (``True`` for the inductor
  backend, or a backend name). A compiled suffix is cached per (model,
  layer, input shapes and dtypes, options): a run pays the compilation once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import weakref
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: Largest difference of a map from the default (float32, contiguous) map,
#: over the map's largest value, that each option is held to (tests and
#: docstrings). Measured on DenseNet-121 at 224 px (benchmarks/speed.py):
#: channels_last 1.5e-6 at beta 10 but 5.1e-4 at beta 0.01, where Adam's
#: normalised steps amplify float32 sums taken in another order; bf16 4.6e-5
#: at beta 10, 4.7e-3 at beta 0.01. fp16 (CUDA) is not yet measured and held
#: to the bf16 bound. None of them stays within 1e-4 at both betas, so all
#: are opt-in. ``fuse`` (float32, on by default) is held to the fp32 bound:
#: 1.1e-6 at beta 10, 1.4e-4 at beta 0.01 -- as far as the unfused loop
#: itself moves between 1 and 2 threads (1.4e-4) or one image at a time and
#: the batch (1.7e-4).
TOLERANCES = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 5e-2}

#: model -> {key: compiled suffix}; entries go with the model.
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def check_channels_last(value) -> None:
    if not (isinstance(value, bool) or value == "auto"):
        raise ValueError(f"channels_last must be True, False or 'auto', got {value!r}")


def check_precision(value) -> None:
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {value!r}")


def check_compile(value) -> None:
    if isinstance(value, bool):
        return
    backends = set(torch.compiler.list_backends(exclude_tags=())) | {"inductor"}
    if not isinstance(value, str) or value not in backends:
        raise ValueError(
            f"compile must be True, False or a torch.compile backend name {sorted(backends)}, got {value!r}"
        )


def channels_last_refusal(split) -> Optional[str]:
    """Why ``split``'s suffix cannot take a channels-last ``Z``; None if it can.

    The suffix graph must exist (fx split) and call no ``.view``: a view of a
    channels-last tensor that merges the channel and spatial dimensions
    fails, where ``reshape`` and ``flatten`` copy.
    """
    if split.mode != "fx":
        return "channels_last needs the fx split: with hooks the whole model runs on contiguous inputs"
    for node in split.suffix.graph.nodes:
        if (node.op == "call_method" and node.target == "view") or (
            node.op == "call_function" and node.target is Tensor.view
        ):
            return (
                f"the network after the layer calls .view ({node.name}), which fails on a "
                "channels_last tensor (reshape or flatten would not)"
            )
    return None


def batchnorm_scale_shift(batchnorm: nn.BatchNorm2d) -> Tuple[Tensor, Tensor]:
    """``(scale, shift)``, each (C, 1, 1), with eval-mode ``batchnorm(x) = scale * x + shift``.

    ``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale``,
    from the module's current buffers.
    """
    scale = torch.rsqrt(batchnorm.running_var + batchnorm.eps)
    if batchnorm.weight is not None:
        scale = scale * batchnorm.weight
    shift = -batchnorm.running_mean * scale
    if batchnorm.bias is not None:
        shift = shift + batchnorm.bias
    return scale.view(-1, 1, 1), shift.view(-1, 1, 1)


def batchnorm_affine(x: Tensor, batchnorm: nn.BatchNorm2d) -> Tensor:
    """Eval-mode ``batchnorm(x)`` as one multiply-add, whose backward is one multiply.

    The same values as the module's forward; its backward is one pass where
    the BatchNorm's takes several.
    """
    scale, shift = batchnorm_scale_shift(batchnorm)
    return torch.addcmul(shift, x, scale)


@dataclasses.dataclass(frozen=True)
class LeadingAffine:
    """The suffix's first operation, ``y = relu?(scale * z + shift)``, folded into the noise mixing.

    An affine map commutes with the mixing's convex combination:
    ``scale * (lam * F + (1 - lam) * eps) + shift = lam * F' + (1 - lam) * eps'``
    with ``F' = scale * F + shift`` and ``eps' = scale * eps + shift``. Mixing the
    transformed per-sample maps gives the BatchNorm's output without its pass
    over the N x draws maps, forward and backward; a ReLU after it becomes
    the mixing's clamp at 0.

    Attributes
    ----------
    batchnorm : nn.BatchNorm2d
        The model's module, read at every use (nothing is copied).
    relu : bool
        Whether a ReLU follows it (and is folded too).
    pool : int
        The window (= stride) of an ``AvgPool2d`` after them, folded into the
        mixing's output (:func:`captum_iba.bottleneck.noisy_features`), or 1.
    """

    batchnorm: nn.BatchNorm2d
    relu: bool
    pool: int = 1

    def apply(self, maps: Tensor, active: Optional[Tensor] = None) -> Tensor:
        """``scale * (maps * active) + shift``: maps (N, C, h, w) as the mixing takes them."""
        if active is not None:
            maps = maps * active
        return batchnorm_affine(maps, self.batchnorm)

    def __call__(self, z: Tensor) -> Tensor:
        """What was folded, applied to ``z`` (N, C, h, w): the fused suffix's input."""
        y = self.apply(z)
        y = y.clamp(min=0) if self.relu else y
        return F.avg_pool2d(y, self.pool) if self.pool != 1 else y


def _plain(module: nn.Module) -> bool:
    """Whether calling ``module`` runs its forward alone: no hooks that a rewrite would skip."""
    return not (
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or getattr(module, "_backward_pre_hooks", None)
    )


def _global_hooks() -> bool:
    registry = nn.modules.module
    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
             "_global_backward_pre_hooks")
    return any(getattr(registry, name, None) for name in names)


def _module(graph_module, node, kind) -> Optional[nn.Module]:
    """The module that ``node`` calls, if it is exactly of type ``kind`` and hook-free."""
    if node.op != "call_module":
        return None
    module = graph_module.get_submodule(node.target)
    return module if type(module) is kind and _plain(module) else None


def _batchnorms_as_affine(graph_module) -> int:
    """Replace eval-mode ``BatchNorm2d`` calls by :func:`batchnorm_affine`; the count replaced."""
    graph, count = graph_module.graph, 0
    for node in list(graph.nodes):
        batchnorm = _module(graph_module, node, nn.BatchNorm2d)
        if batchnorm is None or batchnorm.running_mean is None or len(node.args) != 1 or node.kwargs:
            continue  # without running statistics a BatchNorm normalises by the batch's
        with graph.inserting_before(node):
            module_value = graph.get_attr(node.target)
            affine = graph.call_function(batchnorm_affine, (node.args[0], module_value))
        node.replace_all_uses_with(affine)
        graph.erase_node(node)
        count += 1
    return count


def _pools_before_pointwise_convs(graph_module) -> int:
    """Swap ``avg_pool(conv1x1(x))`` into ``conv1x1(avg_pool(x))``; the count swapped.

    A 1x1 convolution is the same affine map at every pixel and an average
    pool without padding has weights summing to 1, so they commute; pooled
    first, the convolution runs on a quarter of the pixels (DenseNet's
    transitions).
    """
    graph, count = graph_module.graph, 0
    for pool in list(graph.nodes):
        pool_module = _module(graph_module, pool, nn.AvgPool2d)
        if pool_module is None or len(pool.args) != 1 or pool.kwargs:
            continue
        if nn.modules.utils._pair(pool_module.padding) != (0, 0) or pool_module.ceil_mode or pool_module.divisor_override:
            continue
        conv = pool.args[0]
        conv_module = _module(graph_module, conv, nn.Conv2d) if isinstance(conv, torch.fx.Node) else None
        if conv_module is None or len(conv.users) != 1 or len(conv.args) != 1 or conv.kwargs:
            continue
        if conv_module.kernel_size != (1, 1) or conv_module.stride != (1, 1) or conv_module.padding not in ((0, 0), "valid"):
            continue
        with graph.inserting_before(conv):
            pooled = graph.call_module(pool.target, (conv.args[0],))
            convolved = graph.call_module(conv.target, (pooled,))
        pool.replace_all_uses_with(convolved)
        graph.erase_node(pool)
        graph.erase_node(conv)
        count += 1
    return count


_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)


def _is_relu(graph_module, node) -> bool:
    if node.op == "call_module":
        return _module(graph_module, node, nn.ReLU) is not None
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and len(node.args) == 1 and set(node.kwargs) <= {"inplace"}
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1


def _tiling_pool(graph_module, node, sides) -> int:
    """The window of ``node`` if it is an ``AvgPool2d`` whose windows tile ``sides`` exactly, else 1."""
    module = _module(graph_module, node, nn.AvgPool2d)
    if module is None or len(node.args) != 1 or node.kwargs or sides is None:
        return 1
    pair = nn.modules.utils._pair
    kernel, stride = pair(module.kernel_size), pair(module.stride or module.kernel_size)
    plain = pair(module.padding) == (0, 0) and not module.ceil_mode and module.divisor_override is None
    k = kernel[0]
    tiles = kernel == stride == (k, k) and all(side % k == 0 for side in sides)
    return k if plain and tiles else 1


def _fold_leading_affine(graph_module, sides) -> Optional[LeadingAffine]:
    """Take the suffix's leading BatchNorm (+ReLU, +AvgPool2d) out of the graph, as a :class:`LeadingAffine`.

    ``sides``: the feature map's (h, w) for a pool fold (None: no pool fold).
    """
    graph = graph_module.graph
    z = next(node for node in graph.nodes if node.op == "placeholder")
    (first, *others) = list(z.users) or [None]
    if others or first is None or first.op != "call_function" or first.target is not batchnorm_affine:
        return None
    if first.args[0] is not z:
        return None
    batchnorm = graph_module.get_submodule(first.args[1].target)
    users = list(first.users)
    folded = [first]
    relu = len(users) == 1 and _is_relu(graph_module, users[0])
    if relu:
        folded.append(users[0])
    users = list(folded[-1].users)
    pool = _tiling_pool(graph_module, users[0], sides) if len(users) == 1 else 1
    if pool != 1:
        folded.append(users[0])
    folded[-1].replace_all_uses_with(z)
    module_value = first.args[1]
    for node in reversed(folded):
        graph.erase_node(node)
    if not module_value.users:
        graph.erase_node(module_value)
    return LeadingAffine(batchnorm, relu, pool)


#: split -> {(fold_leading, pool_sides, modules with hooks, ...): (suffix, leading affine)}.
_FUSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fuse_suffix(split, fold_leading: bool = True, pool_sides: Optional[Tuple[int, int]] = None):
    """The split's suffix with exact algebraic rewrites, and its folded leading affine.

    Rewrites (each leaves the function unchanged; float32 rounding differs):

    * ``AvgPool2d(Conv2d 1x1 (x))`` -> ``Conv2d 1x1 (AvgPool2d(x))``;
    * each eval-mode ``BatchNorm2d`` -> ``scale * x + shift``
      (:func:`batchnorm_affine`): the same forward values, a one-multiply backward;
    * with ``fold_leading``, a suffix whose input goes into a BatchNorm alone
      (and a ReLU, and an average pool tiling ``pool_sides``, after it) loses
      them to the noise mixing (:class:`LeadingAffine`).

    A BatchNorm after a convolution is not folded into its weights: on
    DenseNet-121 that measured no faster and rounded 3x further from the
    unfused maps at beta 0.01.

    Modules with hooks are left as calls (a rewrite would skip their hooks),
    and with global module hooks nothing is rewritten. The rewritten graph
    shares the model's modules and parameters.

    Parameters
    ----------
    split : FxSplit
    fold_leading : bool
        Fold the leading BatchNorm (+ReLU) (not when ``Z`` itself is clamped
        at 0 before it, the ``relu`` option).
    pool_sides : (int, int) or None
        The feature map's sides, for folding a pool too (None: a
        channels-last ``Z``, which the pooled mixing does not write).

    Returns
    -------
    (torch.fx.GraphModule, LeadingAffine or None)
        The suffix to run on the mixing's output, and what was folded.
    """
    hooked = tuple(id(m) for m in split.model.modules() if not _plain(m))
    key = (fold_leading, pool_sides, hooked, _global_hooks(), split.suffix.code)
    cache = _FUSED.setdefault(split, {})
    if key not in cache:
        suffix = torch.fx.GraphModule(split.model, copy.deepcopy(split.suffix.graph))
        leading = None
        if not _global_hooks():
            _pools_before_pointwise_convs(suffix)
            _batchnorms_as_affine(suffix)
            leading = _fold_leading_affine(suffix, pool_sides) if fold_leading else None
            suffix.graph.lint()
            suffix.recompile()
        cache[key] = (suffix, leading)
    return cache[key]


class SuffixRunner:
    """Model outputs from ``Z`` with the chosen execution options, float32 outputs.

    Parameters
    ----------
    split : FxSplit or HookSplit
    channels_last : bool or "auto"
    precision : str
        One of :data:`PRECISIONS`.
    compile : bool or str
        False, True (inductor) or a torch.compile backend name.
    fuse : bool
        Run the rewritten suffix of :func:`fuse_suffix` (fx split only, and
        not with ``compile``: the compiler fuses the traced graph itself).
    relu_z : bool
        Whether the loop clamps ``Z`` at 0 (then nothing is folded into the mixing).
    features : Tensor, shape (N, C, h, w)
        The layer output: its device (autocast, the fp16 check) and sides
        (whether a pool can be folded).

    Attributes
    ----------
    channels_last : bool
        Whether ``Z`` is to be built channels-last.
    reason : str or None
        Why ``channels_last="auto"`` fell back to contiguous.
    leading : LeadingAffine or None
        The suffix's first BatchNorm (+ReLU), for the loop to fold into the
        noise mixing: ``Z`` given to the runner is then its output.
    """

    def __init__(self, split, *, channels_last, precision: str, compile, fuse: bool, relu_z: bool,
                 features: Tensor) -> None:
        device = features.device
        self.split = split
        self.reason = channels_last_refusal(split) if channels_last else None
        if channels_last is True and self.reason:
            raise ValueError(f"channels_last=True is not possible here: {self.reason}")
        self.channels_last = bool(channels_last) and self.reason is None
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("precision='fp16' needs a CUDA device; use precision='bf16' on a CPU")
        if compile and split.mode != "fx":
            raise ValueError(
                "compile needs the fx split (a model that traces with torch.fx); this one runs with hooks"
            )
        self.precision = precision
        self.backend = ("inductor" if compile is True else compile) if compile else None
        # A compiler fuses the graph as traced itself, and the rewritten BatchNorms
        # hide the conv + BatchNorm pattern from it: compile + bf16 + channels_last
        # measured 0.78 s/map fused against 0.47 as traced (DenseNet-121, 224 px).
        fuse = fuse and self.backend is None
        self.suffix, self.leading = None, None
        if split.mode == "fx":
            sides = None if self.channels_last else tuple(features.shape[2:])
            self.suffix, self.leading = fuse_suffix(split, not relu_z, sides) if fuse else (split.suffix, None)
        self.device = device
        self._fn = None

    def prepare(self, context):
        """The context in the runner's memory format (once per call)."""
        if not self.channels_last:
            return context
        return tuple(
            v.contiguous(memory_format=torch.channels_last) if isinstance(v, Tensor) and v.dim() == 4 else v
            for v in context
        )

    def __call__(self, z: Tensor, context) -> Tensor:
        if self.suffix is None:  # the hook split: the whole model, Z put in by a hook
            with self._autocast():
                outputs = self.split.outputs(z, context)
        else:
            # The suffix may update a carried tensor in place (``x += skip``): give it copies.
            carried = tuple(v.clone() if isinstance(v, Tensor) else v for v in context)
            if self.backend is None:
                with self._autocast():
                    outputs = self.suffix(z, *carried)
            else:
                if self._fn is None:  # the shapes are fixed for the runner's life: look up once
                    self._fn = self._compiled(z, carried)
                outputs = self._fn(z, *carried)
        return outputs.to(z.dtype) if outputs.is_floating_point() else outputs

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def _compiled(self, z: Tensor, carried: Tuple) -> Callable:
        model = self.suffix
        owner = self.split.model
        key = (
            id(self.split.layer),
            model.code,
            tuple(id(m) for m in owner.modules()),
            _signature((z, *carried)),
            self.channels_last,
            self.precision,
            self.backend,
        )
        cache = _COMPILED.setdefault(owner, {})
        if key not in cache:
            autocast = self._autocast

            def run(*args):
                with autocast():
                    return model(*args)

            cache[key] = torch.compile(run, backend=self.backend, dynamic=False)
        return cache[key]


def _signature(values) -> tuple:
    return tuple(
        (tuple(v.shape), v.dtype, v.device, v.is_contiguous(memory_format=torch.channels_last))
        if isinstance(v, Tensor)
        else type(v).__name__
        for v in values
    )


def compiled_count(model: nn.Module) -> int:
    """How many compiled suffixes are cached for ``model``."""
    return len(_COMPILED.get(model, {}))

