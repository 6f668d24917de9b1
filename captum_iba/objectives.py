"""Model losses ``L_model`` for the bottleneck objective, one value per row.

Every loss maps the model outputs for a batch of noisy feature maps
``phi(Z)`` of shape ``(M, ...)`` to ``M`` losses. ``target`` holds the output
index of every row as :func:`captum_iba._validate.format_target` gives it
(or None for a single-output model); ``reference`` one value per row for the
losses that compare against a score.

* ``"ce"``        ``-log softmax(phi(Z))[t]`` (multi-class);
* ``"bce"``       ``-log sigmoid(phi(Z)[t])``: the target finding labelled 1
  (multilabel chest X-ray models, one sigmoid per finding);
* ``"mse"``       ``(phi(Z)[t] - y)^2`` with a given score ``y``;
* ``"maximize"``  ``-phi(Z)[t]^2`` (the paper's RM);
* ``"deviation"`` ``(phi(Z)[t] - phi(X)[t])^2`` against the clean prediction
  (the paper's DV).

A callable ``(outputs, target) -> per-row loss`` may stand in for a name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch.nn.functional as F
from torch import Tensor

from ._validate import flat_targets, select_targets


def _cross_entropy(outputs: Tensor, target: Optional[Tensor], reference) -> Tensor:
    if target is None:
        raise ValueError("target is required for loss 'ce': the class to explain")
    flat = flat_targets(target, outputs.shape[1:])
    return -F.log_softmax(outputs.flatten(1), dim=1).gather(1, flat[:, None])[:, 0]


def _binary_cross_entropy(outputs: Tensor, target: Optional[Tensor], reference) -> Tensor:
    return -F.logsigmoid(select_targets(outputs, target))


def _squared_error(outputs: Tensor, target: Optional[Tensor], reference: Tensor) -> Tensor:
    return (select_targets(outputs, target) - reference) ** 2


def _maximize(outputs: Tensor, target: Optional[Tensor], reference) -> Tensor:
    return -select_targets(outputs, target) ** 2


@dataclass(frozen=True)
class Objective:
    """A model loss and the reference score it compares against.

    Attributes
    ----------
    name : str
    function : callable
        ``(outputs (M, ...), target (M,) or None, reference (M,) or None) -> (M,)``.
    reference : {None, "target_values", "clean"}
        What ``reference`` holds: nothing, the scores the user passes as
        ``target_values``, or the model's own prediction on the clean input.
    """

    name: str
    function: Callable
    reference: Optional[str] = None

    def __call__(self, outputs: Tensor, target: Optional[Tensor], reference=None) -> Tensor:
        losses = self.function(outputs, target, reference)
        if not isinstance(losses, Tensor) or losses.shape != (outputs.shape[0],):
            got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(
                f"loss {self.name!r} must return one value per row, shape ({outputs.shape[0]},); "
                f"got {got}"
            )
        return losses


CLASSIFICATION_LOSSES = {
    "ce": Objective("ce", _cross_entropy),
    "bce": Objective("bce", _binary_cross_entropy),
}
REGRESSION_LOSSES = {
    "mse": Objective("mse", _squared_error, reference="target_values"),
    "maximize": Objective("maximize", _maximize),
    "deviation": Objective("deviation", _squared_error, reference="clean"),
}


def get_objective(loss: Union[str, Callable], allowed: dict) -> Objective:
    """Resolve a loss name from ``allowed``, or wrap a callable ``(outputs, target)``."""
    if callable(loss):
        name = getattr(loss, "__name__", type(loss).__name__)
        return Objective(name, lambda outputs, target, reference: loss(outputs, target))
    if isinstance(loss, str) and loss in allowed:
        return allowed[loss]
    raise ValueError(
        f"loss must be one of {sorted(allowed)} or a callable (outputs, target) -> "
        f"per-sample loss, got {loss!r}"
    )
