"""How the network after the bottleneck runs at each step: memory format, precision, compilation.

Three execution options of the bottleneck attributions, none of which changes
the model (its parameters keep their dtype, memory format and values):

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
import weakref
from typing import Callable, Optional, Tuple

import torch
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
#: are opt-in.
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
    device : torch.device
        Where the features live (autocast and the fp16 check need it).

    Attributes
    ----------
    channels_last : bool
        Whether ``Z`` is to be built channels-last.
    reason : str or None
        Why ``channels_last="auto"`` fell back to contiguous.
    """

    def __init__(self, split, channels_last, precision: str, compile, device: torch.device) -> None:
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
        if self.backend is None:
            with self._autocast():
                outputs = self.split.outputs(z, context)
        else:
            # Carried tensors are copied outside the compiled graph, as FxSplit.outputs does.
            carried = tuple(v.clone() if isinstance(v, Tensor) else v for v in context)
            if self._fn is None:  # the shapes are fixed for the runner's life: look up once
                self._fn = self._compiled(z, carried)
            outputs = self._fn(z, *carried)
        return outputs.to(z.dtype) if outputs.is_floating_point() else outputs

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def _compiled(self, z: Tensor, carried: Tuple) -> Callable:
        model = self.split.suffix
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

