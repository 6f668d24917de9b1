"""Exact rewrites of the traced suffix: the same function, fewer passes over the N x draws maps.

* an eval-mode ``BatchNorm2d`` becomes one multiply-add (:func:`batchnorm_affine`),
  whose backward is one multiply;
* ``AvgPool2d(Conv2d 1x1 (x))`` becomes ``Conv2d 1x1 (AvgPool2d(x))`` (DenseNet's
  transitions then convolve a quarter of the pixels);
* a suffix that starts with ``BatchNorm2d`` (and ``ReLU``, and a tiling average
  pool) has them folded into the noise mixing (:class:`LeadingAffine`).

Float32 sums are rounded in another order; modules with hooks are never rewritten.
"""

from __future__ import annotations

import copy
import dataclasses
import weakref
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
