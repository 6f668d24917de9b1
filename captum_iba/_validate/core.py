"""The checks of the attributions' arguments: targets (as Captum reads them), numbers, inputs, layers."""

from __future__ import annotations

import contextlib
import difflib
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "format_target", "select_targets", "flat_targets", "check_output", "check_positive_int", "check_number",
    "check_flag", "check_choice", "check_seed", "check_data", "format_inputs", "format_additional_args",
    "check_inputs_for_model", "model_runs_on", "check_stats", "check_layer_in_model", "check_layers", "layer_names", "find_layer",
]

_TARGET_FORMS = (
    "an int, a tuple of ints (one index into a multi-dimensional output), a 1-D integer "
    "tensor or a list of ints (one per sample), or a list of tuples (one per sample)"
)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _index_tuple(value, name: str) -> Tuple[int, ...]:
    if not value or not all(_is_int(v) for v in value):
        raise TypeError(f"{name} must be a non-empty tuple of ints, got {value!r}")
    return tuple(int(v) for v in value)


def format_target(target, n: int, device=None) -> Optional[Tensor]:
    """Captum's ``target`` for ``n`` samples as an int64 index tensor, or None.

    Parameters
    ----------
    target : None, int, tuple, Tensor, list of int or list of tuple
        As Captum's ``TargetType`` (see the module docstring).
    n : int
        Number of samples.
    device : torch.device, optional
        Where the result lives.

    Returns
    -------
    None or Tensor
        Shape ``(n,)`` for the one-index forms (int, list of ints, tensor, and
        1-tuples), ``(n, k)`` for k-tuples and lists of k-tuples: row ``i``
        holds the indices into sample ``i``'s output. Negative indices are
        kept; :func:`select_targets` resolves them against the output shape.

    Raises
    ------
    TypeError
        Booleans, floats, mixed lists, or other types.
    ValueError
        A per-sample form without one entry per sample, or tuples of
        different lengths.

    Examples
    --------
    >>> format_target(2, 3)
    tensor([2, 2, 2])
    >>> format_target((1, 0), 2)
    tensor([[1, 0],
            [1, 0]])
    """
    if target is None:
        return None
    if _is_int(target):
        indices = torch.full((n,), int(target), dtype=torch.long)
    elif isinstance(target, tuple):
        row = torch.tensor(_index_tuple(target, "target (a tuple)"), dtype=torch.long)
        indices = row.expand(n, -1).clone()
    elif isinstance(target, Tensor):
        indices = _tensor_target(target, n)
    elif isinstance(target, list):
        indices = _list_target(target, n)
    else:
        raise TypeError(f"target must be None, {_TARGET_FORMS}; got {type(target).__name__}")
    if indices.dim() == 2 and indices.shape[1] == 1:
        indices = indices[:, 0]  # (t,) means what t means
    return indices.to(device) if device is not None else indices


def _tensor_target(target: Tensor, n: int) -> Tensor:
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise TypeError(f"target must hold integer indices, got a tensor of dtype {target.dtype}")
    if target.numel() == 1:  # Captum reads a one-element tensor as an int
        return target.detach().reshape(1).expand(n).long().cpu()
    if target.dim() != 1 or target.shape[0] != n:
        raise ValueError(
            f"a tensor target must be one index, or 1-D with one index per sample ({n}); "
            f"got shape {tuple(target.shape)}"
        )
    return target.detach().long().cpu()


def _list_target(target: list, n: int) -> Tensor:
    if len(target) != n:
        raise ValueError(
            f"a list target must hold one entry per sample ({n}), got {len(target)} entries; "
            "for one index into a multi-dimensional output pass a tuple"
        )
    if all(_is_int(t) for t in target):
        return torch.tensor([int(t) for t in target], dtype=torch.long)
    if all(isinstance(t, tuple) for t in target):
        rows = [_index_tuple(t, f"target[{i}]") for i, t in enumerate(target)]
        if len({len(row) for row in rows}) != 1:
            raise ValueError(f"the tuples of a list target must have one length, got {target!r}")
        return torch.tensor(rows, dtype=torch.long)
    raise TypeError(f"a list target must hold only ints or only tuples of ints, got {target!r}")


def flat_targets(target: Optional[Tensor], output_shape) -> Optional[Tensor]:
    """Indices from :func:`format_target` as flat indices into each sample's output.

    Parameters
    ----------
    target : Tensor (n,) or (n, k), or None
    output_shape : tuple of int
        The shape of one sample's output, e.g. ``(K,)``.

    Returns
    -------
    None or Tensor, shape (n,)
        Index of the selected element of ``output[i].flatten()``.

    Raises
    ------
    ValueError
        If the target does not select one value per sample (it indexes more
        or fewer dimensions than the output has) or is out of range.
    """
    if target is None:
        return None
    shape = tuple(output_shape) or (1,)  # one value per sample: index 0 (or -1) selects it
    k = 1 if target.dim() == 1 else target.shape[1]
    if len(shape) != k:
        form = "an int or one index per sample" if k == 1 else f"{k} indices per sample"
        raise ValueError(
            f"target ({form}) must select one value per sample, but the model returns outputs "
            f"of shape {shape} per sample: pass {max(len(shape), 1)} index/indices per sample "
            "(a tuple for a multi-dimensional output), or None for a single output"
        )
    columns = target.view(-1, k)
    sizes = torch.tensor(shape, dtype=torch.long, device=target.device)
    if ((columns < -sizes) | (columns >= sizes)).any():
        ranges = " x ".join(f"[{-size}, {size - 1}]" for size in shape)
        raise ValueError(
            f"target indices must lie in {ranges} for a model with outputs of shape {shape} "
            f"per sample, got {target.tolist()}"
        )
    columns = torch.where(columns < 0, columns + sizes, columns)
    strides = torch.tensor(
        [int(torch.tensor(shape[i + 1:]).prod()) for i in range(k)], dtype=torch.long,
        device=target.device,
    )
    return (columns * strides).sum(1)


def select_targets(outputs: Tensor, target: Optional[Tensor]) -> Tensor:
    """The selected output of every row, shape (M,), as Captum's ``_select_targets``.

    ``target`` comes from :func:`format_target` for the M rows; None selects
    the only output of a model with one output per row, ``(M,)`` or ``(M, 1)``.
    """
    if target is None:
        if outputs.dim() == 1:
            return outputs
        if outputs[0].numel() == 1:
            return outputs.reshape(outputs.shape[0])
        raise ValueError(
            f"target is required for a model with outputs of shape {tuple(outputs.shape[1:])} "
            "per sample: pass the index of the output to explain"
        )
    flat = flat_targets(target.to(outputs.device), outputs.shape[1:])
    return outputs.reshape(outputs.shape[0], -1).gather(1, flat[:, None])[:, 0]


def check_output(outputs, name: str = "forward_func") -> Tensor:
    """Return ``outputs`` if it is a tensor; otherwise say how to select the logits."""
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, dict):  # also HuggingFace's ModelOutput, an OrderedDict
        keys = list(outputs.keys())
        key = keys[0] if keys else "logits"
        hint = (
            f"it returned a {type(outputs).__name__} with keys {keys}: wrap the model in a "
            f"function that returns the tensor to explain, e.g. lambda x: model(x)[{key!r}]"
        )
    elif isinstance(outputs, (tuple, list)):
        hint = (
            f"it returned a {type(outputs).__name__} of {len(outputs)} values: wrap the model "
            "in a function that returns the tensor to explain, e.g. lambda x: model(x)[0]"
        )
    else:
        hint = f"it returned a {type(outputs).__name__}"
    raise TypeError(f"{name} must return one tensor of outputs (N, ...); {hint}")


def check_positive_int(value, name: str, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) in ``[minimum, maximum]``."""
    if not _is_int(value):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: expected an int {bound}, got {value!r}")
    return int(value)


def check_number(
    value, name: str, minimum: Optional[float] = None, strict: bool = False,
    maximum: Optional[float] = None, below: bool = True,
) -> float:
    """Return ``value`` if it is a finite real number (not a bool) within the bounds.

    ``minimum`` is inclusive unless ``strict``; ``maximum`` is exclusive
    unless ``below`` is False.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name}: expected a number {'>' if strict else '>='} {minimum}, got {value!r}")
    if maximum is not None and (value >= maximum if below else value > maximum):
        raise ValueError(f"{name}: expected a number {'<' if below else '<='} {maximum}, got {value!r}")
    return value


def check_flag(value, name: str, expected: str = "True or False") -> bool:
    """Return ``value`` if it is a bool (``relu="yes"`` is not one)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


def check_choice(value, name: str, choices) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


#: torch.Generator.manual_seed takes any int in [-2**63, 2**64); seeds here are the non-negative ones.
SEED_RANGE = (0, 2**63 - 1)


def check_seed(seed, name: str = "seed") -> Optional[int]:
    """Return ``seed`` if it is None or an int that torch's generators take."""
    if seed is None:
        return None
    return check_positive_int(seed, name, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1])


def check_data(data, name: str = "data"):
    """Return ``data`` if it is a form :meth:`IBA.estimate` reads: a tensor, a tuple of tensors, or batches.

    Strings and mappings are iterable but not batches (a dict would yield its keys).
    """
    batches = isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping))
    if not (isinstance(data, (Tensor, torch.utils.data.Dataset)) or batches):
        raise TypeError(f"{name}: expected a tensor, a tuple of tensors or an iterable of batches "
                        f"(a DataLoader, a list, a Dataset), got {type(data).__name__}")
    return data


def format_inputs(inputs) -> Tuple[Tensor, ...]:
    """Captum's ``inputs`` (a tensor or a tuple of tensors) as a tuple sharing the batch size, finite."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if not inputs or not all(isinstance(x, Tensor) for x in inputs):
        raise TypeError(f"inputs: expected a tensor or a tuple of tensors, got "
                        f"{type(inputs[0] if len(inputs) == 1 else inputs).__name__}")
    n = inputs[0].shape[0] if inputs[0].dim() > 0 else None
    for x in inputs:
        if x.dim() == 0 or x.shape[0] != n:
            raise ValueError("inputs: expected tensors sharing their first (batch) dimension, got shapes "
                             f"{[tuple(t.shape) for t in inputs]}")
        if x.device.type == "meta":
            raise ValueError("inputs: expected tensors with values, got a tensor on the meta device")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError("inputs: expected finite values, got NaN or Inf")
    if n == 0:
        raise ValueError("inputs: expected at least one sample, got a batch of size 0")
    return inputs


def format_additional_args(additional_forward_args, n: Optional[int] = None) -> Tuple:
    """Captum's ``additional_forward_args`` as a tuple (None: none).

    With ``n``, every tensor among them is taken to be per sample, as in
    Captum's metrics, and must have ``n`` rows; other values pass unchanged.
    """
    if additional_forward_args is None:
        return ()
    if not isinstance(additional_forward_args, tuple):
        additional_forward_args = (additional_forward_args,)
    for position, arg in enumerate(additional_forward_args if n is not None else ()):
        if isinstance(arg, torch.Tensor) and (arg.dim() == 0 or arg.shape[0] != n):
            raise ValueError(f"additional_forward_args[{position}]: expected a tensor with one row per input "
                             f"({n}), got shape {tuple(arg.shape)}")
    return additional_forward_args


def check_stats(stats, name: str = "stats", features: Optional[Tensor] = None, layer: str = "the layer"):
    """Return ``stats`` if it is None or a FeatureStats, with the shape of one sample of ``features`` if given."""
    from ..stats import FeatureStats  # stats.py uses this module

    if stats is None:
        return None
    if not isinstance(stats, FeatureStats):
        raise TypeError(f"{name}: expected a FeatureStats (or None), got {type(stats).__name__}")
    if features is not None and stats.shape != tuple(features.shape[1:]):
        raise ValueError(f"{name}: expected statistics of {layer}'s output, shape {tuple(features.shape[1:])} "
                         f"per sample, got statistics of shape {stats.shape}: estimate them at this layer "
                         "and input size")
    if features is not None:
        stats.check(name)
    return stats


def check_inputs_for_model(inputs: Tuple[Tensor, ...], model: Optional[nn.Module]) -> None:
    """Refuse inputs on another device than the model's parameters, in one line, before torch sees them."""
    first = None if model is None else next(iter(model.parameters()), None)
    if first is not None and inputs[0].device != first.device:
        raise TypeError(f"inputs: expected tensors on {first.device} (the model's parameters), "
                        f"got {inputs[0].device}")


@contextlib.contextmanager
def model_runs_on(inputs: Tuple[Tensor, ...]) -> Iterator[None]:
    """Turn torch's error for inputs the model cannot take (dtype, rank, channels) into one line naming them."""
    try:
        yield
    except RuntimeError as error:
        given = ", ".join(f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}" for x in inputs)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"inputs: expected inputs the model takes, got {given} on {inputs[0].device} "
                         f"(torch: {reason})") from error


def check_layer_in_model(forward_func, layer, name: str = "layer") -> None:
    """Raise unless ``layer`` is an ``nn.Module`` inside ``forward_func``'s module (when it has one)."""
    from .._engine.frozen import owning_module  # the engine uses this module

    if not isinstance(layer, nn.Module):
        raise TypeError(f"{name}: expected an nn.Module of the model, got {type(layer).__name__}")
    model = owning_module(forward_func)
    if model is not None and not any(m is layer for m in model.modules()):
        raise ValueError(f"{name}: expected a submodule of the model passed as forward_func, "
                         f"got a {type(layer).__name__} that is not inside it")


def check_layers(forward_func, layers, name: str = "layers") -> list:
    """``layers`` as a list of distinct submodules of ``forward_func``'s model."""
    if isinstance(layers, nn.Module) or not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"{name}: expected a non-empty list of modules, got {type(layers).__name__}")
    for i, layer in enumerate(layers):
        check_layer_in_model(forward_func, layer, f"{name}[{i}]")
    if len({id(layer) for layer in layers}) != len(layers):
        raise ValueError(f"{name}: expected distinct modules, got a layer twice")
    return list(layers)


def layer_names(forward_func, layers) -> Optional[list]:
    """The qualified names of ``layers`` in ``forward_func``'s model (None without one)."""
    from .._engine.frozen import owning_module

    model = owning_module(forward_func)
    if model is None:
        return None
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(layer)] for layer in layers]


def find_layer(model: nn.Module, layer, name: str = "layer") -> Tuple[str, nn.Module]:
    """``(qualified name, module)`` of a layer of ``model`` given by name or as a module.

    Raises
    ------
    ValueError
        A name the model does not have (listing the closest names), or a
        module that is not inside the model.
    TypeError
        Anything but a string or a module.
    """
    if isinstance(layer, nn.Module):
        found = next((qualified for qualified, m in model.named_modules() if m is layer), None)
        if found is None:
            raise ValueError(f"{name} ({type(layer).__name__}) is not a submodule of the model")
        return found, layer
    if not isinstance(layer, str):
        raise TypeError(f"{name} must be a layer name or an nn.Module, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer == "" or layer not in modules:
        close = difflib.get_close_matches(layer, [n for n in modules if n], n=5, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ValueError(f"{name} {layer!r} is not a layer of the model{hint}")
    return layer, modules[layer]

