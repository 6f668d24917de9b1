"""Inverse IBA (Khakzar et al. 2021): every region that carries information."""

from __future__ import annotations

from .iba import IBA


class InverseIBA(IBA):
    r"""Inverse Information Bottleneck Attribution: *all* informative regions.

    The bottleneck is turned around, ``Z = lambda * eps + (1 - lambda) * F``,
    and the model loss changes sign:

    .. math:: L = -L_{model}(\phi(Z), t) + \beta \, L_I .

    ``L_I`` is the same capacity expression in ``lambda`` as in :class:`IBA`
    (as in the reference implementation): here it charges for the noise put
    in, so the optimum blocks the regions whose removal destroys the
    prediction and leaves the rest untouched. Where IBA keeps one sufficient
    region, Inverse IBA marks each region that would carry the prediction on
    its own (e.g. both sides of a bilateral effusion).

    Takes the arguments of :class:`IBA`; ``beta`` defaults to 30, as in the
    paper's experiments.

    Examples::

        >>> from captum_iba import InverseIBA
        >>> inverse = InverseIBA(model, model.features.denseblock3, loss="bce")
        >>> inverse.estimate(loader)
        >>> bits = inverse.attribute(images, target=2)   # (N, 1, h, w)
    """

    _defaults = {"beta": 30.0}
    _sign = -1.0
    _inverse = True
