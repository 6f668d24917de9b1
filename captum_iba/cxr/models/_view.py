"""A module that is a view of another: it shares the model's children, parameters and buffers."""

from __future__ import annotations

from torch import nn

__all__ = ["ModelView"]


class ModelView(nn.Module):
    """Shares ``model``'s children, parameters and buffers under the model's own names.

    The model's layer names resolve on the view unchanged, its ``state_dict``
    has the model's keys, and ``.to()``, ``.eval()`` and ``.requires_grad_()``
    act on the model; the model itself is ``view.wrapped`` (not a child: its
    children are the view's already, so tools that walk the children meet
    every layer once).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # Share, not copy: the same dicts, so what acts on the view acts on the model.
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self._non_persistent_buffers_set = model._non_persistent_buffers_set
        object.__setattr__(self, "_wrapped", model)

    @property
    def wrapped(self) -> nn.Module:
        """The model this is a view of."""
        return self._wrapped

    def train(self, mode: bool = True) -> "ModelView":
        super().train(mode)
        self._wrapped.training = mode  # its children share ours; its own flag does not
        return self
