"""Regression IBA (Khakzar et al. 2021, section 2.2): IBA for score regressors."""

from __future__ import annotations

from typing import Any, Optional, Union

from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.log import log_usage
from torch import Tensor

from ..objectives import REGRESSION_LOSSES
from .iba import IBA


class RegressionIBA(IBA):
    r"""Information Bottleneck Attribution for a regression output ``phi``.

    The bottleneck of :class:`IBA` (``Z = lambda * F + (1 - lambda) * eps``)
    with a regression model loss in place of the cross-entropy:

    * ``"deviation"`` (default, the paper's DV): ``(phi(Z) - phi(X))^2``,
      keep what the clean prediction needs;
    * ``"maximize"`` (the paper's RM): ``-phi(Z)^2``, favour the regions that
      raise the score's magnitude;
    * ``"mse"``: ``(phi(Z) - y)^2`` for a given score ``y`` per sample
      (``attribute(..., target_values=y)``);
    * or a callable ``(outputs, target) -> per-row loss``.

    On a COVID-19 severity regressor (BrixIA score 0-18) the map shows which
    lung regions the score is read from. ``target`` picks the output of a
    multi-output regressor, as in Captum; a single-output model needs none.

    Takes the arguments of :class:`IBA`; ``loss`` defaults to ``"deviation"``, ``beta`` to 10.

    Examples::

        >>> from captum_iba import RegressionIBA
        >>> riba = RegressionIBA(model, model.features.denseblock3, loss="deviation")
        >>> riba.estimate(loader)
        >>> bits = riba.attribute(images)                        # (N, 1, h, w)
        >>> bits = riba.attribute(images, target_values=scores, loss="mse")
    """

    _defaults = {"loss": "deviation"}
    _losses = REGRESSION_LOSSES

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        target_values: Optional[Union[Tensor, float]] = None,
        internal_batch_size: Optional[int] = None,
        reduce: str = "sum",
        return_lambda: bool = False,
        seed: Optional[int] = None,
        progress: bool = False,
        **options: Any,
    ) -> Union[Tensor, tuple]:
        r"""Bits per feature-map location that the regression score needs.

        Args:
            inputs (Tensor or tuple of Tensor): model inputs ``(N, ...)``.
            target (int, tuple, Tensor, or list, optional): the output of a
                multi-output regressor; None for a single output ``(N,)`` or
                ``(N, 1)``.
            additional_forward_args (Any, optional): extra model arguments.
            target_values (Tensor or float, optional): the score ``y``,
                ``(N,)`` or one number, for ``loss="mse"`` (required there,
                refused by the other losses).
            internal_batch_size, reduce, return_lambda, seed, progress,
                **options: as in :meth:`IBA.attribute`.

        Returns:
            Tensor: bits ``(N, 1, h, w)`` (``(N, C, h, w)`` with
            ``reduce="none"``), or ``(bits, lambda)`` with ``return_lambda``.

        Raises:
            ValueError: ``loss="mse"`` without ``target_values``, or values of
                the wrong shape; see :meth:`IBA.attribute` for the rest.

        Examples::

            >>> riba.attribute(images, target_values=torch.tensor([6.0, 12.0]), loss="mse")
        """
        return self._explain(inputs, target, additional_forward_args, options, internal_batch_size, reduce,
                             return_lambda, seed, progress, target_values=target_values)
