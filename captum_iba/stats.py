"""Per-neuron feature statistics at a layer: mean, std and the active mask."""

from __future__ import annotations

import io
import os
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from ._engine import capture_layer_outputs, frozen_model
from ._engine.split import cut_per_sample
from ._files import atomic_path, read_tagged
from ._progress import progress as progress_lines
from ._validate import check_positive_int

_FORMAT = "captum_iba.FeatureStats/1"
_TENSOR_KEYS = ("mean", "m2", "nonzero")


class FeatureStats:
    """Running per-neuron statistics of a layer's output (Welford / Chan).

    Every neuron of the feature map (shape ``C x h x w`` per sample) gets its
    mean, its standard deviation and the fraction of samples in which it is
    non-zero. Updates are exact merges of batch moments in float64, so the
    result does not depend on how the data is batched.

    Attributes
    ----------
    count : int
        Number of samples seen.
    mean : Tensor, shape (C, h, w), float64
    m2 : Tensor, shape (C, h, w), float64
        Sum of squared deviations from the mean.
    nonzero : Tensor, shape (C, h, w), float64
        Number of samples in which each neuron was non-zero.

    Examples
    --------
    >>> stats = FeatureStats()
    >>> stats.update(torch.randn(8, 4, 3, 3))
    >>> stats.std(min_std=0.01).shape
    torch.Size([4, 3, 3])
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Optional[Tensor] = None
        self.m2: Optional[Tensor] = None
        self.nonzero: Optional[Tensor] = None

    @property
    def shape(self) -> Optional[Tuple[int, ...]]:
        """Per-sample feature shape ``(C, h, w)``, or None before any update."""
        return None if self.mean is None else tuple(self.mean.shape)

    def update(self, features: Tensor) -> None:
        """Merge a batch of feature maps of shape ``(n, C, h, w)``."""
        batch = features.detach().to(device="cpu", dtype=torch.float64)
        if self.mean is not None and tuple(batch.shape[1:]) != self.shape:
            raise ValueError(
                f"features of shape {tuple(batch.shape[1:])} per sample do not match "
                f"the statistics gathered so far, of shape {self.shape}"
            )
        n = batch.shape[0]
        if n == 0:
            return
        batch_mean = batch.mean(0)
        batch_m2 = ((batch - batch_mean) ** 2).sum(0)
        batch_nonzero = (batch != 0).sum(0, dtype=torch.float64)
        if self.mean is None:
            self.count, self.mean, self.m2, self.nonzero = n, batch_mean, batch_m2, batch_nonzero
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.nonzero = self.nonzero + batch_nonzero
        self.count = total

    def _require_data(self) -> None:
        if not isinstance(self.count, int) or self.count < 2:
            raise ValueError(
                f"FeatureStats needs at least 2 samples, it has {self.count}: "
                "estimate it on more data"
            )

    def std(self, min_std: float = 0.01) -> Tensor:
        """Unbiased standard deviation per neuron, clamped below at ``min_std``."""
        self._require_data()
        return (self.m2 / (self.count - 1)).sqrt().clamp(min=min_std)

    def active_mask(self, threshold: float = 0.01) -> Tensor:
        """Neurons non-zero in more than ``threshold`` of the samples, bool (C, h, w)."""
        self._require_data()
        return self.nonzero / self.count > threshold

    def state_dict(self) -> dict:
        """The statistics as a dict of plain values (``count`` and the tensors), as :meth:`save` writes them."""
        self._require_data()
        return {"count": self.count, **{key: getattr(self, key) for key in _TENSOR_KEYS}}

    @classmethod
    def from_state_dict(cls, state, where: str = "state") -> "FeatureStats":
        """Statistics from :meth:`state_dict`'s dict, checked; ``where`` names its source in errors (ValueError)."""
        count = state.get("count") if isinstance(state, dict) else None
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"{where} is not a valid FeatureStats file: 'count' is missing")
        stats = cls()
        stats.count = int(count)
        for key in _TENSOR_KEYS:
            value = state.get(key)
            if not isinstance(value, Tensor):
                raise ValueError(f"{where} is not a valid FeatureStats file: {key!r} is missing")
            setattr(stats, key, value)
        stats.check(where)
        return stats

    def check(self, where: str = "stats") -> None:
        """Raise ``ValueError`` unless the statistics are usable: 2+ samples, finite, consistent."""
        self._require_data()
        problems = []
        if len({tuple(getattr(self, key).shape) for key in _TENSOR_KEYS}) != 1:
            problems.append("its tensors differ in shape")
        elif any(getattr(self, key).device.type == "meta" for key in _TENSOR_KEYS):
            problems.append("its tensors are on the meta device (no values)")
        else:
            if not (torch.isfinite(self.mean).all() and torch.isfinite(self.m2).all()):
                problems.append("its mean or variance holds NaN or Inf")
            elif (self.m2 < 0).any():
                problems.append("its variance is negative somewhere")
            if ((self.nonzero < 0) | (self.nonzero > self.count)).any():
                problems.append(f"its non-zero counts lie outside [0, count={self.count}]")
        if problems:
            raise ValueError(f"{where}: expected valid feature statistics, got statistics where {problems[0]}; "
                             "estimate them again")

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics to ``path`` atomically (temp file, then rename)."""
        payload = {"format": _FORMAT, **self.state_dict()}
        buffer = io.BytesIO()
        torch.save(payload, buffer)  # in memory first: a full disk then fails as an OSError with its errno
        with atomic_path(path) as temporary:
            temporary.write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        """Read statistics written by :meth:`save` (``weights_only=True``).

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If the file is truncated, corrupt, or not a FeatureStats file.
        """
        payload = read_tagged(path, _FORMAT, "FeatureStats", "stats")
        return cls.from_state_dict(payload, repr(os.fspath(path)))

    def __repr__(self) -> str:
        return f"FeatureStats(count={self.count}, shape={self.shape})"


def _default_inputs(batch) -> Tuple[Tensor, ...]:
    if isinstance(batch, Tensor):
        return (batch,)
    if isinstance(batch, dict) and isinstance(batch.get("image"), Tensor):
        return (batch["image"],)
    if isinstance(batch, Sequence) and len(batch) > 0 and isinstance(batch[0], Tensor):
        return (batch[0],)
    raise TypeError(
        "data must yield tensors, (input, label) tuples or dicts with an 'image' tensor; got "
        f"{type(batch).__name__}: pass batch_inputs=(batch -> inputs) for other batches"
    )


def _as_input_tuple(batch, batch_inputs: Optional[Callable]) -> Tuple[Tensor, ...]:
    if batch_inputs is None:
        return _default_inputs(batch)
    inputs = batch_inputs(batch)
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if not inputs or not all(isinstance(x, Tensor) for x in inputs):
        raise TypeError("batch_inputs must return a tensor or a tuple of tensors")
    return inputs


def iter_inputs(data, batch_inputs: Optional[Callable] = None) -> Iterator[Tuple[Tensor, ...]]:
    """Yield the model inputs of every batch of ``data`` as a tuple of tensors.

    ``data`` is one batch, as :meth:`IBA.attribute` takes ``inputs`` (a tensor,
    or a tuple of tensors for a multi-input model), or an iterable of batches:
    a tensor is the input; a tuple or list contributes its first element
    (Captum's and torchvision's ``(input, label)`` convention); a dict its
    ``"image"`` entry (the :mod:`captum_iba.cxr` items). ``batch_inputs``
    (``batch -> tensor or tuple``) replaces that convention. A map-style
    Dataset is batched 32 items at a time.
    """
    if isinstance(data, Tensor):
        yield (data,)
        return
    if isinstance(data, tuple) and data and all(isinstance(x, Tensor) for x in data):
        yield data
        return
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = torch.utils.data.DataLoader(
            data, batch_size=32, collate_fn=lambda items: _stack_inputs(items, batch_inputs)
        )
        batch_inputs = None
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a tensor, a tuple of tensors or an iterable of batches, got {type(data).__name__}"
        )
    for batch in data:
        yield _as_input_tuple(batch, batch_inputs)


def estimate_stats(
    forward_func: Callable,
    layers: Sequence[nn.Module],
    data,
    n_samples: int = 1000,
    progress: bool = True,
    additional_forward_args=None,
    batch_inputs: Optional[Callable] = None,
) -> List[FeatureStats]:
    """Estimate the statistics of several layers in one pass over ``data``.

    Each batch runs the model only until the last of ``layers`` has produced
    its output (a hook stops the forward pass there), in eval mode, without
    gradients; the model's modes are restored afterwards.

    Parameters
    ----------
    forward_func : callable
        The model (or a function of the inputs that runs it).
    layers : sequence of nn.Module
    data : Tensor, tuple of Tensor, or iterable of batches
        As accepted by :func:`iter_inputs`.
    n_samples : int
        Stop after this many samples (>= 2); the last batch is cut to fit.
    progress : bool
        Show progress (a bar on a terminal, plain lines otherwise).
    additional_forward_args : any, optional
        Extra model arguments after the inputs, passed with every batch (a
        tuple for several); tensors with one row per sample are cut with it.
    batch_inputs : callable, optional
        ``batch -> inputs`` for batches that are not tensors, ``(input,
        label)`` tuples or ``{"image": ...}`` dicts.

    Returns
    -------
    list of FeatureStats
        One per layer, in the order of ``layers``.
    """
    n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
    if batch_inputs is not None and not callable(batch_inputs):
        raise TypeError(f"batch_inputs must be callable, got {type(batch_inputs).__name__}")
    if additional_forward_args is None:
        extra: tuple = ()
    else:
        extra = additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,)
    stats = [FeatureStats() for _ in layers]
    seen = 0
    with frozen_model(forward_func), torch.no_grad():
        batches = progress_lines(iter_inputs(data, batch_inputs), desc="estimating feature statistics",
                                 enabled=progress, unit="batches")
        for number, inputs in enumerate(batches):
            n = inputs[0].shape[0] if inputs[0].dim() > 0 else 0
            rows = slice(0, min(n, n_samples - seen))
            inputs = cut_per_sample(inputs, n, rows)
            if any(x.is_floating_point() and not torch.isfinite(x).all() for x in inputs):
                raise ValueError(f"data: expected finite inputs, got NaN or Inf in batch {number} "
                                 f"(samples {seen}-{seen + rows.stop - 1})")
            outputs = capture_layer_outputs(forward_func, layers, inputs, cut_per_sample(extra, n, rows))
            for layer_stats, output in zip(stats, outputs):
                if not torch.isfinite(output).all():
                    raise ValueError(f"data: expected finite layer outputs, got NaN or Inf in batch {number} "
                                     "(check the model's weights)")
                layer_stats.update(output)
            seen += rows.stop
            if seen >= n_samples:
                break
    if seen < 2:
        raise ValueError(f"data: expected at least 2 samples to estimate feature statistics, got {seen}")
    return stats


def _stack_inputs(items: list, batch_inputs: Optional[Callable] = None) -> Tuple[Tensor, ...]:
    """Collate single dataset items into one batch of inputs."""
    rows = [_as_input_tuple(item, batch_inputs) for item in items]
    return tuple(torch.stack(column) for column in zip(*rows))
