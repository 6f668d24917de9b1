"""Sanity check: the model-parameter randomisation test (Adebayo et al., 2018)."""

import copy
import inspect
from typing import List, NamedTuple

import torch
from scipy.stats import rankdata
from skimage.metrics import structural_similarity
from tqdm.auto import tqdm

from .. import _validate
from .._engine import owning_module
from .._validate import find_layer
from ..maps import as_map_batch
from ._core import pearson

__all__ = ["RandomizationCheckResult", "randomization_check"]

_MODES = ("cascading", "independent")


class RandomizationCheckResult(NamedTuple):
    """Result of :func:`randomization_check` for L layers and N inputs."""

    layers: List[str]
    """The names of the randomised layers, in the order of the steps."""
    spearman: torch.Tensor
    """(L, N) Spearman rank correlation with the original maps, per step."""
    ssim: torch.Tensor
    """(L, N) SSIM with the original maps, per step."""


def _can_redraw(module):
    """Whether ``module`` owns parameters and can re-draw them."""
    owns_parameters = any(True for _ in module.parameters(recurse=False))
    return owns_parameters and hasattr(module, "reset_parameters")


def _resettable(module):
    """The modules inside ``module`` (itself included) that can re-draw their parameters."""
    return [sub for sub in module.modules() if _can_redraw(sub)]


def _layer_names(model, layers):
    """Names of the layers to randomise, top first."""
    named = dict(model.named_modules())
    if layers is None:
        names = [name for name, module in named.items() if _can_redraw(module)]
        # Registration order follows the forward pass in most models: reverse
        # it to start from the output.
        return names[::-1]
    if isinstance(layers, (str, torch.nn.Module)):
        layers = [layers]
    names = []
    for layer in layers:
        name, _ = find_layer(model, layer, "layers")
        if not _resettable(named[name]):
            raise ValueError(
                f"layers: module {name!r} has no parameters that reset_parameters() re-draws"
            )
        names.append(name)
    if not names:
        raise ValueError("layers must name at least one layer")
    return names


def _randomise(model, name, seed):
    """Re-draw the parameters of ``model``'s module ``name`` from its initialiser."""
    module = model.get_submodule(name)
    devices = sorted({p.device.index for p in module.parameters() if p.is_cuda})
    # A forked RNG: seeded re-draws, and the caller's random state left alone.
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for sub in _resettable(module):
            sub.reset_parameters()


def _as_attribution_fn(attribution_fn):
    """``attribution_fn`` as ``(model, inputs, target) -> maps``.

    A one-argument factory ``model -> attribution object`` is called on each
    model copy; an attribution object already bound to a model is refused, as
    it would keep explaining that model while the copies are randomised.
    """
    if hasattr(attribution_fn, "attribute"):
        raise TypeError(
            f"attribution_fn is a {type(attribution_fn).__name__} bound to a model, so the "
            "randomised copies would be ignored: pass a factory that builds it on the model it is "
            "given, e.g. lambda model: IBA(model, model.layer, stats=stats)"
        )
    if not callable(attribution_fn):
        raise TypeError(
            "attribution_fn must be a factory model -> attribution object, or a function "
            "(model, inputs, target) -> maps"
        )
    if _required_positional(attribution_fn) != 1:
        return attribution_fn

    def from_factory(model, inputs, target):
        method = attribution_fn(model)
        if not hasattr(method, "attribute"):
            raise TypeError(
                "attribution_fn with one argument must return an attribution object (with "
                f".attribute), got {type(method).__name__}"
            )
        bound = owning_module(getattr(method, "forward_func", None))
        layers = getattr(method, "layer", None)
        layers = layers if isinstance(layers, (list, tuple)) else [layers]
        if (bound is not None and bound is not model) or not all(
            layer is None or any(layer is m for m in model.modules()) for layer in layers
        ):
            raise ValueError(
                "attribution_fn must build the attribution on the model (and its layers) it is "
                "given, e.g. lambda model: IBA(model, model.layer), not on the original model"
            )
        return method.attribute(inputs, target=target)

    return from_factory


def _required_positional(function) -> int:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: the old form
        return 3
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty)


def _compute_maps(attribution_fn, model, inputs, target, n):
    attributions = attribution_fn(model, inputs, target)
    return as_map_batch(attributions, n, "attribution_fn's result")[:, 0].cpu().double()


def _spearman(original, randomised):
    """Spearman correlation per sample of (N, H, W) maps (average ranks for ties)."""
    ranks = [
        torch.from_numpy(rankdata(maps.flatten(1).numpy(), axis=1))
        for maps in (original, randomised)
    ]
    return pearson(*ranks)


def _ssim(original, randomised):
    """SSIM per sample of (N, H, W) maps, each min-max scaled to [0, 1]."""

    def scaled(maps):
        flat = maps.flatten(1)
        low = flat.min(dim=1).values[:, None, None]
        spread = (flat.max(dim=1).values[:, None, None] - low).clamp_min(1e-12)
        return ((maps - low) / spread).numpy()

    height, width = original.shape[-2:]
    # skimage's window is 7 x 7; smaller maps need an odd window that fits.
    window = min(7, height - (1 - height % 2), width - (1 - width % 2))
    if window < 3:
        return torch.full((len(original),), torch.nan, dtype=torch.float64)
    return torch.tensor(
        [
            structural_similarity(a, b, data_range=1.0, win_size=window)
            for a, b in zip(scaled(original), scaled(randomised))
        ],
        dtype=torch.float64,
    )


def randomization_check(
    attribution_fn,
    model,
    inputs,
    target=None,
    layers=None,
    mode="cascading",
    seed=0,
    progress=False,
):
    r"""Model-parameter randomisation test (Adebayo et al., "Sanity checks").

    Layers are re-initialised one after the other, from the top of the
    network down, and the maps recomputed; a method whose maps depend on
    the model loses similarity with the original maps as the weights go.
    Everything runs on deep copies: the caller's ``model`` and its random
    state are never touched.

    Args:

        attribution_fn (Callable): A factory ``model -> attribution
                    object``, e.g. ``lambda m: IBA(m, m.layer, stats=s)``,
                    whose ``attribute(inputs, target=target)`` gives the
                    maps; or ``attribution_fn(model, inputs, target)``
                    returning maps of shape (N, H, W), (N, 1, h, w) or (N,
                    C, H, W) (summed over channels), e.g. ``lambda m, x, t:
                    Saliency(m).attribute(x, target=t, abs=False)``. Either
                    is called with copies of ``model``; an attribution
                    object itself (bound to the original model) is refused.
        model (nn.Module): The trained model.
        inputs (Tensor or tuple): Passed to ``attribution_fn`` unchanged,
                    first dimension N.
        target (int, list, Tensor, or None, optional): Passed to
                    ``attribution_fn`` unchanged. Default: None
        layers (list, optional): Names or modules of ``model`` to randomise,
                    in the order of the steps (top first). A module is
                    re-initialised by ``reset_parameters()`` of every
                    submodule that has one, so a block can be named. Default:
                    every module that owns parameters and has
                    ``reset_parameters``, in reverse registration order.
        mode (str, optional): ``"cascading"``: step k randomises layers 1..k;
                    ``"independent"``: step k randomises layer k alone.
                    Default: ``"cascading"``
        seed (int, optional): Layer k is re-drawn with seed ``seed + k``, in
                    either mode. Default: 0
        progress (bool, optional): Show a progress bar over the steps.
                    Default: False

    Returns:
        :class:`RandomizationCheckResult`, a named tuple of

        - **layers** (*list of str*): the layer randomised at each step.
        - **spearman** (*Tensor*, (L, N)): Spearman rank correlation of the
          maps with the original maps (NaN where a map is constant).
        - **ssim** (*Tensor*, (L, N)): SSIM (scikit-image, 7 x 7 window or
          the largest odd window that fits, NaN below 3 x 3) of the maps,
          each min-max scaled to [0, 1], with the original maps.

    Raises:
        TypeError: ``attribution_fn`` is an attribution object, not a factory.
        ValueError: the factory builds on another model than it is given.

    Examples::

        >>> check = randomization_check(lambda m: IBA(m, m.layer, stats=stats), net,
        ...                             images, target=labels)
        >>> saliency = lambda m, x, t: Saliency(m).attribute(x, target=t, abs=False)
        >>> check = randomization_check(saliency, net, images, target=labels)
        >>> check.layers[0], check.spearman.mean(dim=1)   # top layer first
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    attribution_fn = _as_attribution_fn(attribution_fn)
    seed = _validate.check_positive_int(seed, "seed", minimum=0)
    names = _layer_names(model, layers)
    first_input = inputs[0] if isinstance(inputs, tuple) else inputs
    n = len(first_input)

    original = _compute_maps(attribution_fn, copy.deepcopy(model), inputs, target, n)
    spearman, ssim = [], []
    randomised = copy.deepcopy(model)
    for step, name in enumerate(tqdm(names, desc="randomisation", disable=not progress)):
        if mode == "independent":
            randomised = copy.deepcopy(model)
        _randomise(randomised, name, seed + step)
        maps = _compute_maps(attribution_fn, randomised, inputs, target, n)
        if maps.shape != original.shape:
            raise ValueError(
                f"attribution_fn returned maps of shape {tuple(maps.shape)} after randomising "
                f"{name!r}, but {tuple(original.shape)} before"
            )
        spearman.append(_spearman(original, maps))
        ssim.append(_ssim(original, maps))
    return RandomizationCheckResult(
        layers=names, spearman=torch.stack(spearman), ssim=torch.stack(ssim)
    )
