"""Multi-layer IBA (Khakzar et al. 2021, section 2.3, Eq. 7): fine and informative."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Type, Union

import torch
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..maps import binarize, parse_threshold, resize_map
from ..split import check_layer_in_model, frozen_model
from ..stats import FeatureStats, estimate_stats
from ..split_shared import SharedPrefix
from ._base import BottleneckAttribution, format_additional_args, format_inputs
from .iba import IBA

_COMBINE_MODES = ("masked", "intersection")


class MultiLayerIBA(LayerAttribution):
    r"""IBA at several layers, combined into one map at the finest resolution.

    Early layers have fine feature maps, but their bottleneck also keeps
    regions without predictive information; late layers are informative but
    coarse. Multi-layer IBA runs one bottleneck per layer, brings every map
    to the finest layer's resolution (bilinear, total bits preserved),
    binarises each with the threshold ``T`` and intersects (paper Eq. 7):

    .. math:: T(IBA_{L_1}) \cap T(IBA_{L_2}) \cap \dots \cap T(IBA_{L_L})

    ``combine="intersection"`` returns that binary map; ``combine="masked"``
    (default, what the reference experiments did) returns the finest layer's
    bits inside the intersection of the coarser layers' masks, 0 elsewhere.
    With one layer, ``"masked"`` is exactly IBA.

    The layers of one network nest (the part before dense block 3 contains
    the part before dense block 1): each call runs that shared part once, up
    to the deepest layer, and gives every layer's bottleneck its own feature
    map (:class:`captum_iba.split_shared.SharedPrefix`); the maps equal those
    of separate :class:`IBA` runs.

    Args:
        forward_func (nn.Module or callable): the model.
        layers (sequence of nn.Module): distinct submodules with 4-D outputs,
            e.g. DenseNet's ``features.denseblock1``, ``2`` and ``3``.
        threshold (float or str): ``"otsu"`` (default), ``"top:F"`` (keep the
            top fraction F of each map), or a value in [0, 1] on the
            L2-normalised map; see :func:`captum_iba.maps.binarize`.
        combine (str): ``"masked"`` (default) or ``"intersection"``.
        method (type): the bottleneck per layer, :class:`IBA` (default) or
            :class:`InverseIBA`.
        stats (sequence of FeatureStats, optional): one per layer.
        **options: bottleneck options shared by every layer (``beta``,
            ``steps``, ``loss``, the speed options ``channels_last``,
            ``precision``, ``compile``, ...; see :class:`IBA`).

    Examples::

        >>> from captum_iba import MultiLayerIBA
        >>> blocks = [model.features.denseblock1, model.features.denseblock2,
        ...           model.features.denseblock3]
        >>> ml = MultiLayerIBA(model, blocks, threshold="top:0.2", loss="bce")
        >>> ml.estimate(loader)                   # one pass fills all three
        >>> fine, per_layer = ml.attribute(images, target=4, return_layer_maps=True)
    """

    def __init__(
        self,
        forward_func: Callable,
        layers: Sequence[nn.Module],
        *,
        threshold: Union[float, str] = "otsu",
        combine: str = "masked",
        method: Type[BottleneckAttribution] = IBA,
        stats: Optional[Sequence[FeatureStats]] = None,
        **options: Any,
    ) -> None:
        layers = list(layers) if isinstance(layers, (list, tuple)) else layers
        if not isinstance(layers, list) or not layers:
            raise ValueError("layers must be a non-empty list of modules")
        for i, layer in enumerate(layers):
            check_layer_in_model(forward_func, layer, name=f"layers[{i}]")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("layers must be distinct: a layer appears twice")
        if not (isinstance(method, type) and issubclass(method, BottleneckAttribution)):
            raise TypeError(f"method must be IBA, InverseIBA or another bottleneck class, got {method!r}")
        if stats is not None and len(stats) != len(layers):
            raise ValueError(f"stats must hold one FeatureStats per layer ({len(layers)}), got {len(stats)}")
        super().__init__(forward_func, layers)
        self.threshold = _check_threshold(threshold)
        self.combine = _check_combine(combine)
        self.bottlenecks: List[BottleneckAttribution] = [
            method(forward_func, layer, stats=None if stats is None else stats[i], **options)
            for i, layer in enumerate(layers)
        ]
        self._shared: Optional[SharedPrefix] = None

    @property
    def stats(self) -> List[Optional[FeatureStats]]:
        """The statistics of every layer, in the order of ``layers``."""
        return [bottleneck.stats for bottleneck in self.bottlenecks]

    def estimate(
        self,
        data,
        n_samples: int = 1000,
        progress: bool = True,
        *,
        additional_forward_args: Any = None,
        batch_inputs: Optional[Callable] = None,
    ) -> List[FeatureStats]:
        """Estimate every layer's statistics in one pass over ``data``.

        Each batch runs the model once, up to the deepest of the layers.
        See :meth:`IBA.estimate` for the arguments; returns one FeatureStats
        per layer.
        """
        stats = estimate_stats(
            self.forward_func, self.layer, data, n_samples, progress,
            additional_forward_args=additional_forward_args, batch_inputs=batch_inputs,
        )
        for bottleneck, layer_stats in zip(self.bottlenecks, stats):
            bottleneck.stats = layer_stats
        return stats

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        threshold: Union[float, str, None] = None,
        combine: Optional[str] = None,
        return_layer_maps: bool = False,
        seed: Optional[int] = None,
        progress: bool = False,
        **options: Any,
    ) -> Union[Tensor, Tuple[Tensor, List[Tensor]]]:
        r"""One map at the finest layer's resolution.

        Args:
            inputs (Tensor or tuple of Tensor): model inputs ``(N, ...)``.
            target (int, tuple, Tensor, or list, optional): as in Captum
                (see :meth:`IBA.attribute`).
            additional_forward_args (Any, optional): extra model arguments.
            threshold (float or str, optional): overrides the constructor's.
            combine (str, optional): ``"masked"`` or ``"intersection"``,
                overrides the constructor's.
            return_layer_maps (bool): also return each layer's own map.
            seed (int, optional): noise seed, shared by the layers.
            progress (bool): progress bar over the layers.
            **options: bottleneck options for this call (see :class:`IBA`).

        Returns:
            Tensor: ``(N, 1, h, w)`` at the finest layer's resolution: bits
            inside the intersection (``"masked"``) or a 0/1 float map
            (``"intersection"``). With ``return_layer_maps``, also a list of
            the per-layer bit maps ``(N, 1, h_k, w_k)``, in layer order.

        Examples::

            >>> binary = ml.attribute(images, target=4, combine="intersection")
        """
        threshold = self.threshold if threshold is None else _check_threshold(threshold)
        combine = self.combine if combine is None else _check_combine(combine)
        target_values = options.pop("target_values", None)
        prepared = self._shared_features(inputs, additional_forward_args)
        extra = {} if target_values is None else {"target_values": target_values}
        layer_maps = [
            bottleneck._attribute(
                inputs, target, additional_forward_args, options, "sum", False, seed, False,
                prepared=layer_prepared, **extra,
            )
            for bottleneck, layer_prepared in tqdm(
                list(zip(self.bottlenecks, prepared)), disable=not progress, desc="layers", leave=False
            )
        ]
        combined = combine_layer_maps(layer_maps, threshold, combine)
        return (combined, layer_maps) if return_layer_maps else combined


    def _shared_features(self, inputs, additional_forward_args) -> List[Tuple]:
        """Every layer's ``(features, context)`` from one run of the shared prefix.

        The layers' splits are cut from one trace (:class:`SharedPrefix`) and
        given to the bottlenecks, so each suffix takes the context computed here.
        """
        if self._shared is None:
            with frozen_model(self.forward_func):
                self._shared = SharedPrefix(
                    self.forward_func, self.layer, self.bottlenecks[0].split_mode
                )
            for bottleneck, split in zip(self.bottlenecks, self._shared.splits):
                bottleneck._split = split
        inputs = format_inputs(inputs)
        args = format_additional_args(additional_forward_args)
        with frozen_model(self.forward_func), torch.no_grad():
            return self._shared.features(inputs, args)


def combine_layer_maps(layer_maps: Sequence[Tensor], threshold, combine: str = "masked") -> Tensor:
    """Combine per-layer maps as Multi-layer IBA does.

    Parameters
    ----------
    layer_maps : sequence of Tensor, each (N, 1, h_k, w_k)
    threshold : float or str
        See :func:`captum_iba.maps.binarize`.
    combine : {"masked", "intersection"}

    Returns
    -------
    Tensor, shape (N, 1, h, w) at the finest map's resolution
        ``"intersection"``: 1.0 where every thresholded map is on, else 0.
        ``"masked"``: the finest map where every *other* thresholded map is
        on, else 0.
    """
    finest = max(range(len(layer_maps)), key=lambda i: layer_maps[i].shape[-2] * layer_maps[i].shape[-1])
    size = tuple(layer_maps[finest].shape[-2:])
    masks = [binarize(resize_map(m, size), threshold) for m in layer_maps]
    if combine == "intersection":
        return torch.stack(masks).all(0).to(layer_maps[finest].dtype)
    inside = torch.ones_like(masks[finest])
    for i, mask in enumerate(masks):
        if i != finest:
            inside &= mask
    return layer_maps[finest] * inside


def _check_threshold(threshold):
    parse_threshold(threshold)  # raises with the accepted forms
    return threshold


def _check_combine(combine: str) -> str:
    if combine not in _COMBINE_MODES:
        raise ValueError(f"combine must be one of {_COMBINE_MODES}, got {combine!r}")
    return combine
