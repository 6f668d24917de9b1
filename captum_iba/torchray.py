"""TorchRay-style functions for the IBA family.

TorchRay's saliency methods are plain functions,
``grad_cam(model, input, target, saliency_layer="features.norm5")``, that
return a ``(N, 1, h, w)`` map. These functions have the same call shape and
return the same kind of map, so a TorchRay benchmark loop takes IBA, Inverse
IBA, Regression IBA and Multi-layer IBA unchanged::

    from torchray.attribution.grad_cam import grad_cam
    from .torchray import iba, inverse_iba

    for x, y in loader:
        cam = grad_cam(model, x, y, saliency_layer="features.norm5")
        bits = iba(model, x, y, saliency_layer="features.denseblock3", data=train_loader)

They work without TorchRay installed. Feature statistics come from
``stats=`` or are estimated once from ``data=`` and cached per (model,
layer): a loop over images estimates only on its first call. The bottleneck
objects (and their traced prefix/suffix split) are cached the same way.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Type, Union

from torch import Tensor, nn

from .attr import IBA, InverseIBA, MultiLayerIBA, RegressionIBA
from ._validate import check_number, find_layer
from .maps import RESIZE_MODES, gaussian_blur, resize_map
from .stats import FeatureStats, estimate_stats

__all__ = ["iba", "inverse_iba", "regression_iba", "multilayer_iba", "clear_cache"]

LayerSpec = Union[str, nn.Module]

# model -> {layer name: FeatureStats}; weak, so a deleted model frees its entries.
_STATS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
# model -> {(class, layer names): attribution object}
_METHODS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def clear_cache(model: Optional[nn.Module] = None) -> None:
    """Forget cached statistics and bottlenecks (of one model, or of all)."""
    for cache in (_STATS, _METHODS):
        if model is None:
            cache.clear()
        else:
            cache.pop(model, None)


def _layer_stats(model, names: List[str], layers: List[nn.Module], stats, data, n_samples, progress):
    """Statistics per layer: given, cached, or estimated in one pass and cached."""
    cached = _STATS.setdefault(model, {})
    if stats is not None:
        stats = list(stats) if isinstance(stats, (list, tuple)) else [stats]
        if len(stats) != len(layers):
            raise ValueError(f"stats must hold one FeatureStats per layer ({len(layers)}), got {len(stats)}")
        cached.update(zip(names, stats))
        return stats
    missing = [i for i, layer_name in enumerate(names) if layer_name not in cached]
    if missing:
        if data is None:
            raise ValueError(
                f"no statistics for layer {names[missing[0]]!r}: pass stats= (FeatureStats) or "
                "data= (an iterable of input batches) to estimate them once"
            )
        estimated = estimate_stats(model, [layers[i] for i in missing], data, n_samples, progress)
        cached.update((names[i], s) for i, s in zip(missing, estimated))
    return [cached[layer_name] for layer_name in names]


def _post(resize, resize_mode: str, smooth) -> dict:
    return {"resize": resize, "resize_mode": resize_mode, "smooth": smooth}


def _method(cls: Type, model: nn.Module, names: Tuple[str, ...], layers: List[nn.Module], loss):
    """The attribution object of ``cls`` at ``layers``, cached; ``loss`` (required by the classifiers'
    methods) is its constructor's and is passed with every call too."""
    methods = _METHODS.setdefault(model, {})
    key = (cls, names)
    if key not in methods:
        methods[key] = cls(model, layers if issubclass(cls, MultiLayerIBA) else layers[0], loss=loss)
    return methods[key]


def _saliency(
    cls,
    model: nn.Module,
    input: Tensor,
    target,
    layer_specs: Sequence[LayerSpec],
    stats,
    data: Optional[Iterable],
    n_samples: int,
    post: dict,
    **options: Any,
) -> Tensor:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_post(**post)
    resolved = [find_layer(model, spec, "saliency_layers" if issubclass(cls, MultiLayerIBA) else "saliency_layer")
                for spec in layer_specs]
    names = tuple(name for name, _ in resolved)
    layers = [layer for _, layer in resolved]
    progress = options.pop("progress", False)
    layer_stats = _layer_stats(model, list(names), layers, stats, data, n_samples, progress)
    method = _method(cls, model, names, layers, options.get("loss"))
    if issubclass(cls, MultiLayerIBA):
        for bottleneck, s in zip(method.bottlenecks, layer_stats):
            bottleneck.stats = s
        saliency = method.attribute(input, target, progress=progress, **options)
    else:
        saliency = method.attribute(input, target, stats=layer_stats[0], progress=progress, **options)
    return _postprocess(saliency, input, **post)


def _check_post(resize, resize_mode: str, smooth) -> None:
    if not (isinstance(resize, bool) or (isinstance(resize, (tuple, list)) and len(resize) == 2)):
        raise ValueError(f"resize must be True, False or a (width, height) pair, got {resize!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    check_number(smooth, "smooth", minimum=0.0)


def _postprocess(saliency: Tensor, input: Tensor, resize, resize_mode: str, smooth) -> Tensor:
    """TorchRay's last two steps: resize (total bits kept), then Gaussian smoothing."""
    if resize is not False:
        # TorchRay's pair is (width, height).
        size = tuple(input.shape[-2:]) if resize is True else (resize[1], resize[0])
        saliency = resize_map(saliency, size, mode=resize_mode)
    if smooth > 0:
        # TorchRay's imsmooth: sigma a fraction of the larger side, replicated borders.
        saliency = gaussian_blur(saliency, smooth * max(saliency.shape[-2:]))
    return saliency


def iba(
    model: nn.Module,
    input: Tensor,
    target,
    saliency_layer: LayerSpec,
    *,
    stats: Optional[FeatureStats] = None,
    data: Optional[Iterable] = None,
    n_samples: int = 1000,
    resize: Union[bool, Tuple[int, int]] = False,
    resize_mode: str = "bilinear",
    smooth: float = 0.0,
    **options: Any,
) -> Tensor:
    r"""IBA saliency, TorchRay style: bits per location sufficient for ``target``.

    ``Z = lambda F + (1 - lambda) eps``, minimising ``L_model + beta L_I``
    (see :class:`captum_iba.IBA`).

    Args:
        model (nn.Module): the model.
        input (Tensor): ``(N, C, H, W)`` batch.
        target (int, list of int, or Tensor): class(es) to explain.
        saliency_layer (str or nn.Module): e.g. ``"features.denseblock3"``.
        stats (FeatureStats, optional): the layer's statistics.
        data (iterable, optional): batches to estimate the statistics from on
            the first call for this (model, layer); cached afterwards.
        n_samples (int): samples used when estimating.
        resize (bool or (W, H)): resize the map to the input size (True) or
            to ``(width, height)`` (TorchRay's order), preserving total bits.
        resize_mode (str): interpolation mode of the resize, as TorchRay's
            (``"bilinear"``, default; ``"bicubic"``, ``"nearest"``,
            ``"nearest-exact"``, ``"area"``).
        smooth (float): TorchRay's smoothing after the resize: a Gaussian of
            std ``smooth * max(h, w)`` pixels, replicated borders; 0 (default)
            disables it.
        **options: any :class:`captum_iba.IBA` option (``beta``, ``steps``,
            ``noise_draws``, ``loss``, ``seed``, ...).

    Returns:
        Tensor: ``(N, 1, h, w)`` bits (or ``(N, 1, H, W)`` with ``resize``).

    Examples::

        >>> bits = iba(model, x, 3, "features.denseblock3", data=loader,
        ...            resize=True, smooth=0.02)
    """
    return _saliency(IBA, model, input, target, [saliency_layer], stats, data, n_samples, _post(resize, resize_mode, smooth), **options)


def inverse_iba(
    model: nn.Module,
    input: Tensor,
    target,
    saliency_layer: LayerSpec,
    *,
    stats: Optional[FeatureStats] = None,
    data: Optional[Iterable] = None,
    n_samples: int = 1000,
    resize: Union[bool, Tuple[int, int]] = False,
    resize_mode: str = "bilinear",
    smooth: float = 0.0,
    **options: Any,
) -> Tensor:
    r"""Inverse IBA saliency, TorchRay style: every region informative for ``target``.

    ``Z = lambda eps + (1 - lambda) F``, minimising ``-L_model + beta L_I``
    (see :class:`captum_iba.InverseIBA`). Arguments as :func:`iba`.
    """
    return _saliency(InverseIBA, model, input, target, [saliency_layer], stats, data, n_samples, _post(resize, resize_mode, smooth), **options)


def regression_iba(
    model: nn.Module,
    input: Tensor,
    target=None,
    saliency_layer: LayerSpec = None,
    *,
    stats: Optional[FeatureStats] = None,
    data: Optional[Iterable] = None,
    n_samples: int = 1000,
    resize: Union[bool, Tuple[int, int]] = False,
    resize_mode: str = "bilinear",
    smooth: float = 0.0,
    **options: Any,
) -> Tensor:
    r"""Regression IBA saliency, TorchRay style, for a score regressor.

    Losses ``"deviation"`` ``(phi(Z) - phi(X))^2`` (default), ``"maximize"``
    ``-phi(Z)^2`` and ``"mse"`` ``(phi(Z) - y)^2`` with ``target_values=y``
    (see :class:`captum_iba.RegressionIBA`). ``target`` picks the output of a
    multi-output regressor (None for one output). Other arguments as :func:`iba`.
    """
    if saliency_layer is None:
        raise ValueError("saliency_layer is required: a layer name or module")
    return _saliency(RegressionIBA, model, input, target, [saliency_layer], stats, data, n_samples, _post(resize, resize_mode, smooth), **options)


def multilayer_iba(
    model: nn.Module,
    input: Tensor,
    target,
    saliency_layers: Sequence[LayerSpec],
    *,
    stats: Optional[Sequence[FeatureStats]] = None,
    data: Optional[Iterable] = None,
    n_samples: int = 1000,
    resize: Union[bool, Tuple[int, int]] = False,
    resize_mode: str = "bilinear",
    smooth: float = 0.0,
    **options: Any,
) -> Tensor:
    r"""Multi-layer IBA saliency, TorchRay style, at the finest layer's resolution.

    ``T(IBA_L1) & T(IBA_L2) & ...`` (paper Eq. 7); ``threshold`` and
    ``combine`` as in :class:`captum_iba.MultiLayerIBA`. Statistics of all
    layers are estimated in one pass over ``data``. Other arguments as :func:`iba`.
    """
    if isinstance(saliency_layers, (str, nn.Module)) or not saliency_layers:
        raise ValueError("saliency_layers must be a non-empty list of layer names or modules")
    return _saliency(MultiLayerIBA, model, input, target, list(saliency_layers), stats, data, n_samples, _post(resize, resize_mode, smooth), **options)

