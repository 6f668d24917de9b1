"""The engine the optimisation loop calls: ``phi(Z)`` from ``lambda`` and the noise, as fast as the options allow.

:class:`Engine` holds everything about *how* a step runs, none of *what* it
computes: the mixing on a reused buffer (:mod:`~captum_iba._engine.mix`), the
suffix's exact rewrites and the BatchNorm/ReLU/pool folded into the mixing
(:mod:`~captum_iba._engine.fuse`), the memory format, autocast and
``torch.compile``. :class:`Speed` chooses among them; none changes the model
(its parameters keep their dtype, memory format and values).
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from .._validate import check_choice, check_flag
from .fuse import fuse_suffix
from .mix import noisy_features
from .split import SPLIT_MODES, FxSplit

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: Largest difference of a map from the float32 default's, over the map's
#: largest value, that each precision is held to (tests and docstrings).
#: Measured on DenseNet-121 at 224 px (benchmarks/speed.py): channels_last
#: 1.2e-6 at beta 10, 2.3e-4 at beta 0.01, where Adam's normalised steps
#: amplify float32 sums taken in another order; compile 1.1e-6 / 4.1e-4; bf16
#: 4.8e-5 / 5.6e-3; fast (all three) 4.5e-5 / 5.0e-3. The fused suffix
#: (float32, in the default) moves maps 1.1e-6 / 1.4e-4 from the unfused
#: suffix's, as far as the unfused loop itself moves between 1 and 2 threads
#: (3.2e-4) or one image at a time and the batch (1.6e-4). fp16 (CUDA) is held
#: to the bf16 bound.
TOLERANCES = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 5e-2}


@dataclasses.dataclass(frozen=True)
class Speed:
    """How the network after the bottleneck runs at each step; the maps stay within :data:`TOLERANCES`.

    Presets: ``"default"`` (``Speed()``) and ``"fast"`` (compile, bf16,
    channels-last where the suffix allows it: 2.3x the default's predecessor on
    a 2-core CPU for DenseNet-121, maps within 5e-2 of the default's).

    Attributes
    ----------
    fuse : bool
        Exact rewrites of the traced suffix (default True): an eval-mode
        BatchNorm as one multiply-add, a pool before the 1x1 convolution it
        follows, a leading BatchNorm (+ReLU, +pool) folded into the noise
        mixing. Float32 maps within 1e-3 of ``fuse=False`` (measured 1.1e-6 at
        beta 10, 1.4e-4 at beta 0.01 on DenseNet-121).
    channels_last : bool or "auto"
        Build ``Z`` in ``torch.channels_last`` memory format (a ``(N, C, h, w)``
        layer whose suffix calls no ``.view``); ``"auto"`` where allowed,
        contiguous otherwise. Maps within 1e-3.
    precision : str
        ``"fp32"``, ``"bf16"`` (autocast, CPU or CUDA) or ``"fp16"`` (CUDA):
        the model runs under autocast; the bottleneck, the loss and Adam stay
        float32. Maps within 5e-2.
    compile : bool or str
        ``torch.compile`` the suffix (True: inductor, or a backend name), once
        per (model, layer, shapes, options): the first call pays the
        compilation (tens of seconds on a CPU). Maps within 1e-3.
    split : str
        ``"auto"`` (trace the model with torch.fx and run only the part after
        the layer; hooks on the whole model where it does not trace), ``"fx"``
        or ``"hooks"``: the same maps either way.
    """

    fuse: bool = True
    channels_last: Union[bool, str] = False
    precision: str = "fp32"
    compile: Union[bool, str] = False
    split: str = "auto"

    def __post_init__(self) -> None:
        check_flag(self.fuse, "speed.fuse")
        if self.channels_last != "auto":
            check_flag(self.channels_last, "speed.channels_last", "True, False or 'auto'")
        check_choice(self.precision, "speed.precision", PRECISIONS)
        check_choice(self.split, "speed.split", SPLIT_MODES)
        if not isinstance(self.compile, bool):
            backends = set(torch.compiler.list_backends(exclude_tags=())) | {"inductor"}
            check_choice(self.compile, "speed.compile", ("True", "False", *sorted(backends)))


SPEEDS = {"default": Speed(), "fast": Speed(channels_last="auto", precision="bf16", compile=True)}


def as_speed(speed) -> Speed:
    """``speed`` as a :class:`Speed`: one itself, or a preset name of :data:`SPEEDS`."""
    if isinstance(speed, Speed):
        return speed
    if isinstance(speed, str) and speed in SPEEDS:
        return SPEEDS[speed]
    raise ValueError(f"speed: expected one of {sorted(SPEEDS)} or a captum_iba.Speed, got {speed!r}")


def channels_last_refusal(split, features: Tensor, channels_first: bool) -> Optional[str]:
    """Why ``split``'s suffix cannot take a channels-last ``Z``; None if it can.

    It needs a ``(N, C, h, w)`` layer output and the fx split, and a suffix
    that calls no ``.view`` (a view of a channels-last tensor that merges
    the channel and spatial dimensions fails, where ``reshape`` copies).
    """
    if features.dim() != 4 or not channels_first:
        return "channels_last needs a layer whose output is a (N, C, h, w) map"
    if split.mode != "fx":
        return "channels_last needs the fx split: with hooks the whole model runs on contiguous inputs"
    for node in split.suffix.graph.nodes:
        if (node.op == "call_method" and node.target == "view") or (
            node.op == "call_function" and node.target is Tensor.view
        ):
            return (f"the network after the layer calls .view ({node.name}), which fails on a "
                    "channels_last tensor (reshape or flatten would not)")
    return None


#: model -> {key: compiled suffix}; entries go with the model.
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


class Engine:
    """Model outputs ``phi(Z)`` for the N x draws noisy feature maps of one step.

    Parameters
    ----------
    split : FxSplit or HookSplit
    speed : Speed
    features : Tensor, shape (N, *S)
        The layer's features ``F`` in their own layout.
    context : the split's context for the N inputs
    draws : int
        Noise draws per sample and step.
    active : Tensor of bool, shape S
        Neurons the mixing keeps; the others are zeroed in ``Z``.
    relu : bool
        Clamp ``Z`` at 0.
    channels_first : bool
        Whether ``features`` are ``(N, C, h, w)`` (the memory-format and pool options need it).

    Attributes
    ----------
    leading : LeadingAffine or None
        The suffix's first BatchNorm (+ReLU, +pool), folded into the mixing.
    channels_last : bool
        Whether ``Z`` is built channels-last.
    """

    def __init__(self, split, speed: Speed, features: Tensor, context, draws: int, active: Tensor,
                 relu: bool, channels_first: bool) -> None:
        n = features.shape[0]
        self.split, self.precision, self.device = split, speed.precision, features.device
        reason = channels_last_refusal(split, features, channels_first) if speed.channels_last else None
        if speed.channels_last is True and reason:
            raise ValueError(f"speed.channels_last=True is not possible here: {reason}")
        self.channels_last = bool(speed.channels_last) and reason is None
        if speed.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("speed.precision='fp16' needs a CUDA device; use 'bf16' on a CPU")
        if speed.compile and split.mode != "fx":
            raise ValueError("speed.compile needs the fx split (a model that traces with torch.fx); "
                             "this one runs with hooks")
        self.backend = ("inductor" if speed.compile is True else speed.compile) if speed.compile else None
        # A compiler fuses the graph as traced itself, and the rewritten BatchNorms
        # hide the conv + BatchNorm pattern from it: compile + bf16 + channels_last
        # measured 0.78 s/map fused against 0.47 as traced (DenseNet-121, 224 px).
        self.suffix, self.leading = None, None
        if split.mode == "fx":
            sides = tuple(features.shape[2:]) if channels_first and not self.channels_last else None
            fuse = speed.fuse and self.backend is None
            self.suffix, self.leading = fuse_suffix(split, not relu, sides) if fuse else (split.suffix, None)
        # What the mixing mixes: F and eps, or their images under the folded BatchNorm.
        self.active = active
        self.signal = features if self.leading is None else self.leading.apply(features, active)
        self.mix_options = (dict(active=active, relu=relu, pool=1) if self.leading is None
                            else dict(active=None, relu=self.leading.relu, pool=self.leading.pool))
        self.context = self._memory_format(split.expand(context, n, draws))
        self._buffer: Optional[Tensor] = None
        self._fn: Optional[Callable] = None

    def __call__(self, fraction: Tensor, noise: Tensor) -> Tensor:
        """Outputs ``(N * draws, ...)`` for ``Z = fraction * F + (1 - fraction) * noise``.

        ``fraction`` (N, *S) is the share of ``F`` that ``Z`` keeps; ``noise``
        is (draws, *S), shared by the samples, or (N, draws, *S).
        """
        if self.leading is not None:
            noise = self.leading.apply(noise, self.active)
        if self._buffer is None and noise.dim() == self.signal.dim():
            # One buffer for Z, rewritten every step (the previous step's graph is gone by then).
            self._buffer = self.signal.new_empty(self.signal.shape[0] * noise.shape[0] * self.signal[0].numel())
        z = noisy_features(self.signal, fraction, noise, channels_last=self.channels_last, out=self._buffer,
                           **self.mix_options)
        return self.outputs(z)

    def outputs(self, z: Tensor) -> Tensor:
        """Model outputs for the layer's features replaced by ``z`` (N * draws, *S), float32."""
        if self.suffix is None:  # the hook split: the whole model, Z put in by a hook
            with self._autocast():
                outputs = self.split.outputs(z, self.context)
        elif self.backend is None:
            with self._autocast():
                outputs = FxSplit.run(self.suffix, z, self.context)
        else:
            if self._fn is None:  # the shapes are fixed for the engine's life: look up once
                self._fn = self._compiled(z)
            outputs = FxSplit.run(self._fn, z, self.context)
        return outputs.to(z.dtype) if outputs.is_floating_point() else outputs

    def _memory_format(self, context):
        if not self.channels_last:
            return context
        rest, carried = context
        return rest, tuple(v.contiguous(memory_format=torch.channels_last)
                           if isinstance(v, Tensor) and v.dim() == 4 else v for v in carried)

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def _compiled(self, z: Tensor) -> Callable:
        suffix, owner = self.suffix, self.split.model
        rest, carried = self.context
        key = (id(self.split.layer), suffix.code, tuple(id(m) for m in owner.modules()),
               _signature((z, *carried)), self.channels_last, self.precision, self.backend)
        cache = _COMPILED.setdefault(owner, {})
        if key not in cache:
            autocast = self._autocast

            def run(*args):
                with autocast():
                    return suffix(*args)

            cache[key] = torch.compile(run, backend=self.backend, dynamic=False)
        return cache[key]


def _signature(values) -> tuple:
    return tuple(
        (tuple(v.shape), v.dtype, v.device, v.is_contiguous(memory_format=torch.channels_last))
        if isinstance(v, Tensor) else type(v).__name__
        for v in values
    )


def compiled_count(model: nn.Module) -> int:
    """How many compiled suffixes are cached for ``model`` (a function of one model: its wrapper)."""
    return len(_COMPILED.get(model, {}))
