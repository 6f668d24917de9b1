"""Per-neuron feature statistics at a layer: mean, std and the active mask."""

from __future__ import annotations

import io
import os
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._files import atomic_path
from .split import capture_layer_outputs, frozen_model

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
        if self.count < 2:
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

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics to ``path`` atomically (temp file, then rename)."""
        self._require_data()
        payload = {"format": _FORMAT, "count": self.count}
        payload.update({key: getattr(self, key) for key in _TENSOR_KEYS})
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
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"stats file not found: {path!r}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for bad files
            raise ValueError(
                f"{path!r} is not a readable FeatureStats file (truncated or corrupt?): {error}"
            ) from error
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path!r} is not a FeatureStats file (missing format tag {_FORMAT!r})")
        stats = cls()
        stats.count = int(payload["count"])
        shapes = set()
        for key in _TENSOR_KEYS:
            value = payload.get(key)
            if not isinstance(value, Tensor):
                raise ValueError(f"{path!r} is not a valid FeatureStats file: {key!r} is missing")
            setattr(stats, key, value)
            shapes.add(tuple(value.shape))
        if len(shapes) != 1:
            raise ValueError(f"{path!r} is not a valid FeatureStats file: tensors differ in shape")
        return stats

    def __repr__(self) -> str:
        return f"FeatureStats(count={self.count}, shape={self.shape})"


def iter_inputs(data: Iterable) -> Iterator[Tensor]:
    """Yield model inputs from tensors, ``(input, label, ...)`` tuples or dict items.

    A batch that is a tensor is the input; a tuple or list contributes its
    first element (Captum's and torchvision's ``(input, label)`` convention);
    a dict contributes its ``"image"`` entry (the :mod:`captum_iba.cxr` items).
    """
    for batch in data:
        if isinstance(batch, Tensor):
            yield batch
        elif isinstance(batch, dict) and "image" in batch:
            yield batch["image"]
        elif isinstance(batch, Sequence) and len(batch) > 0 and isinstance(batch[0], Tensor):
            yield batch[0]
        else:
            raise TypeError(
                "data must yield tensors, (input, label) tuples or dicts with an 'image' "
                f"tensor; got {type(batch).__name__}"
            )


def estimate_stats(
    forward_func: Callable,
    layers: Sequence[nn.Module],
    data: Iterable,
    n_samples: int = 1000,
    progress: bool = True,
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
    data : iterable
        Batches as accepted by :func:`iter_inputs`.
    n_samples : int
        Stop after this many samples (>= 2); the last batch is cut to fit.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    list of FeatureStats
        One per layer, in the order of ``layers``.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2, got {n_samples!r}")
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = torch.utils.data.DataLoader(data, batch_size=32, collate_fn=_stack_inputs)
    stats = [FeatureStats() for _ in layers]
    seen = 0
    with frozen_model(forward_func), torch.no_grad(), tqdm(
        total=n_samples, disable=not progress, desc="estimating feature statistics", unit="img"
    ) as bar:
        for batch in iter_inputs(data):
            batch = batch[: n_samples - seen]
            outputs = capture_layer_outputs(forward_func, layers, (batch,))
            for layer_stats, output in zip(stats, outputs):
                layer_stats.update(output)
            seen += batch.shape[0]
            bar.update(batch.shape[0])
            if seen >= n_samples:
                break
    if seen < 2:
        raise ValueError(
            f"data yielded {seen} sample(s); estimating feature statistics needs at least 2"
        )
    return stats


def _stack_inputs(items: list) -> Tensor:
    """Collate single dataset items into one input batch."""
    return torch.stack(list(iter_inputs(items)))
