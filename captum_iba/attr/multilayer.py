"""Multi-layer IBA (Khakzar et al. 2021, section 2.3, Eq. 7): fine and informative."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Type, Union

import torch
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from .._progress import progress as progress_bar
from .._validate import check_choice, check_layers, check_seed
from ..maps import binarize, parse_threshold, resize_map
from ..stats import FeatureStats, estimate_stats
from .iba import IBA

COMBINE_MODES = ("masked", "intersection")


class MultiLayerIBA(LayerAttribution):
    r"""IBA at several layers, combined into one map at the finest resolution.

    Early layers have fine feature maps, but their bottleneck also keeps
    regions without predictive information; late layers are informative but
    coarse. Multi-layer IBA runs one bottleneck per layer (an :class:`IBA`,
    or the ``method`` given), brings every map to the finest layer's
    resolution (bilinear, total bits preserved), binarises each with the
    threshold ``T`` and intersects (paper Eq. 7):

    .. math:: T(IBA_{L_1}) \cap T(IBA_{L_2}) \cap \dots \cap T(IBA_{L_L})

    ``combine="intersection"`` returns that binary map; ``combine="masked"``
    (default, what the reference experiments did) returns the finest layer's
    bits inside the intersection of the coarser layers' masks, 0 elsewhere.
    With one layer, ``"masked"`` is exactly IBA.

    Layers of a pyramid (DenseNet blocks, ResNet, Swin and ConvNeXt stages)
    have grids of decreasing size: the finest gives the detail, the coarser
    ones the evidence. The blocks of a plain ViT share one grid: then every
    map is already at the finest resolution and the combination is the
    intersection of the blocks' thresholded maps on that grid (finer only in
    what it leaves out); the first layer's bits are the "masked" map.

    Examples::

        >>> from captum_iba import MultiLayerIBA
        >>> blocks = [model.features.denseblock1, model.features.denseblock2,
        ...           model.features.denseblock3]
        >>> ml = MultiLayerIBA(model, blocks, loss="bce", threshold="top:0.2")
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
        method: Type[IBA] = IBA,
        stats: Optional[Sequence[FeatureStats]] = None,
        reshape_transforms: Optional[Sequence[Optional[Callable]]] = None,
        **options: Any,
    ) -> None:
        r"""
        Args:
            forward_func (nn.Module or callable): the model.
            layers (sequence of nn.Module): distinct layers (any layout
                :class:`IBA` takes), e.g. DenseNet's ``features.denseblock1``,
                ``2`` and ``3``, or Swin's ``layers[0]``, ``layers[1]``, ``layers[2]``.
            threshold (float or str): ``"otsu"`` (default), ``"top:F"`` (keep
                the top fraction F of each map), or a value in [0, 1] on the
                L2-normalised map; see :func:`captum_iba.maps.binarize`.
            combine (str): ``"masked"`` (default) or ``"intersection"``.
            method (type): the bottleneck per layer, :class:`IBA` (default)
                or :class:`InverseIBA`.
            stats (sequence of FeatureStats, optional): one per layer.
            reshape_transforms (sequence, optional): one ``reshape_transform``
                (or None) per layer, as :class:`IBA` takes it.
            **options: the options of ``method``, shared by every layer
                (``loss`` required for classifiers; ``beta``, ``steps``, ``speed``, ...).
        """
        layers = check_layers(forward_func, layers)
        if not (isinstance(method, type) and issubclass(method, IBA)):
            raise TypeError(f"method: expected IBA, InverseIBA or another IBA class, got {method!r}")
        for name, given in (("stats", stats), ("reshape_transforms", reshape_transforms)):
            if given is not None and len(given) != len(layers):
                raise ValueError(f"{name}: expected one entry per layer ({len(layers)}), got {len(given)}")
        super().__init__(forward_func, layers)
        self.threshold = _check_threshold(threshold)
        self.combine = check_choice(combine, "combine", COMBINE_MODES)
        transforms = reshape_transforms or [None] * len(layers)
        self.bottlenecks: List[IBA] = [
            method(forward_func, layer, transforms[i], stats=None if stats is None else stats[i], **options)
            for i, layer in enumerate(layers)
        ]

    @property
    def stats(self) -> List[Optional[FeatureStats]]:
        """The statistics of every layer, in the order of ``layers``."""
        return [bottleneck.stats for bottleneck in self.bottlenecks]

    def estimate(self, data, n_samples: int = 1000, progress: bool = True, *,
                 additional_forward_args: Any = None, batch_inputs: Optional[Callable] = None) -> List[FeatureStats]:
        """Estimate every layer's statistics in one pass over ``data``, the model run to the deepest layer.

        Arguments as :meth:`IBA.estimate`; returns one FeatureStats per layer.
        """
        stats = estimate_stats(self.forward_func, self.layer, data, n_samples, progress,
                               additional_forward_args=additional_forward_args, batch_inputs=batch_inputs)
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
            seed (int, optional): noise seed, shared by the layers (None: one
                drawn from torch's global generator).
            progress (bool): progress over the layers.
            **options: options of each layer's :meth:`IBA.attribute` for this
                call (``beta``, ``internal_batch_size``, ``target_values``, ...).

        Returns:
            Tensor: ``(N, 1, h, w)`` at the finest layer's resolution: bits
            inside the intersection (``"masked"``) or a 0/1 float map
            (``"intersection"``). With ``return_layer_maps``, also a list of
            the per-layer bit maps ``(N, 1, h_k, w_k)``, in layer order.

        Examples::

            >>> binary = ml.attribute(images, target=4, combine="intersection")
        """
        threshold = self.threshold if threshold is None else _check_threshold(threshold)
        combine = self.combine if combine is None else check_choice(combine, "combine", COMBINE_MODES)
        seed = check_seed(seed)
        seed = int(torch.randint(2**62, ())) if seed is None else seed
        layer_maps = [bottleneck.attribute(inputs, target, additional_forward_args, seed=seed, **options)
                      for bottleneck in progress_bar(self.bottlenecks, desc="layers", enabled=progress)]
        combined = combine_layer_maps(layer_maps, threshold, combine)
        return (combined, layer_maps) if return_layer_maps else combined


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
    Tensor, shape (N, 1, h, w) at the finest map's resolution (the first of equal ones)
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

