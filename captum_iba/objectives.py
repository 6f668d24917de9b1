"""Model losses ``L_model`` for the bottleneck objective, one value per row.

Every loss maps the model outputs for a batch of noisy feature maps
``phi(Z)`` of shape ``(M, ...)`` to ``M`` losses. ``target`` holds one output
index per row (or None for a single-output model); ``reference`` one value per
row for the losses that compare against a score.

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


def select_outputs(outputs: Tensor, target: Optional[Tensor]) -> Tensor:
    """The target output of every row, shape (M,).

    Parameters
    ----------
    outputs : Tensor, shape (M,) or (M, K)
    target : Tensor of int64, shape (M,), or None
        None selects the only output of a single-output model.
    """
    if target is None:
        if outputs.dim() == 1:
            return outputs
        if outputs.dim() == 2 and outputs.shape[1] == 1:
            return outputs[:, 0]
        raise ValueError(
            f"target is required for a model with outputs of shape {tuple(outputs.shape[1:])} "
            "per sample: pass the index of the output to explain"
        )
    return outputs.reshape(outputs.shape[0], -1).gather(1, target[:, None])[:, 0]


def _cross_entropy(outputs: Tensor, target: Optional[Tensor], reference) -> Tensor:
    if target is None:
        raise ValueError("target is required for loss 'ce': the class to explain")
    return -F.log_softmax(outputs.flatten(1), dim=1).gather(1, target[:, None])[:, 0]


def _binary_cross_entropy(outputs: Tensor, target: Optional[Tensor], reference) -> Tensor:
    return -F.logsigmoid(select_outputs(outputs, target))


def _squared_error(outputs: Tensor, target: Optional[Tensor], reference: Tensor) -> Tensor:
    return (select_outputs(outputs, target) - reference) ** 2


def _maximize(outputs: Tensor, target: Optional[Tensor], reference) -> Tensor:
    return -select_outputs(outputs, target) ** 2


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
