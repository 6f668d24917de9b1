"""Sanity check: the model-parameter randomisation test (Adebayo et al., 2018)."""

import copy
import inspect
from typing import List, NamedTuple

import torch
from scipy.stats import rankdata
from skimage.metrics import structural_similarity

from .. import _validate
from .._progress import progress as progress_lines
from .._engine import owning_module
from .._validate import find_layer
from ..attr import ReadoutIBA
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


def _n_parameters(module):
    return sum(p.numel() for p in module.parameters())


def _stages(model):
    """Names of ``model``'s stages, top first (the default steps of :func:`randomization_check`)."""
    stages = []
    for name, child in model.named_children():
        # A container holding most of the weights (DenseNet's features, a ViT's
        # blocks) is the network itself: its children are the stages.
        container = any(True for _ in child.children()) and not any(True for _ in child.parameters(recurse=False))
        if container and 2 * _n_parameters(child) > _n_parameters(model):
            stages += [(f"{name}.{sub}", module) for sub, module in child.named_children()]
        else:
            stages.append((name, child))
    # Registration order follows the forward pass in most models: reverse it
    # to start from the output.
    names = [name for name, module in stages[::-1] if _resettable(module)]
    if not names:
        raise ValueError(
            "layers: expected the model to have children with parameters that reset_parameters() "
            "re-draws, got none: name the layers to randomise"
        )
    return names


def _layer_names(model, layers):
    """Names of the layers to randomise, top first."""
    if layers is None:
        return _stages(model)
    named = dict(model.named_modules())
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


def _as_attribution_fn(attribution_fn, estimate_data, n):
    """``attribution_fn`` as ``(model, inputs, target) -> maps``.

    A one-argument factory ``model -> attribution object`` is called on each
    model copy, and an object with ``estimate`` re-estimates its statistics
    there, on ``estimate_data`` (None: the inputs, ``n`` samples); an
    attribution object already bound to a model is refused, as it would keep
    explaining that model while the copies are randomised.
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
        if estimate_data is not None:
            raise ValueError(
                "estimate_data: expected None for a function (model, inputs, target), which keeps "
                "its own statistics, got a value: pass a factory model -> attribution object"
            )
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
        if isinstance(method, ReadoutIBA):
            # Its readout network learnt the original model's features; new
            # statistics alone would pair it with features it never saw.
            raise TypeError(
                "attribution_fn: expected a factory of attributions without a trained part, got one "
                "of a ReadoutIBA (its network is fitted on the model's features): pass a function "
                "(model, inputs, target) that estimates, fits and attributes on the model it is given"
            )
        if hasattr(method, "estimate"):
            if estimate_data is None and n < 2:
                raise ValueError(
                    f"estimate_data: expected data to estimate the {type(method).__name__}'s "
                    f"statistics on (2 samples or more), got None and inputs of {n} sample"
                )
            method.estimate(inputs if estimate_data is None else estimate_data, progress=False)
        elif estimate_data is not None:
            raise ValueError(
                "estimate_data: expected None for an attribution without statistics, got a value "
                f"with a {type(method).__name__}, which has no estimate()"
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
    estimate_data=None,
):
    r"""Model-parameter randomisation test (Adebayo et al., "Sanity checks").

    Layers are re-initialised one after the other, from the top of the
    network down, and the maps recomputed; a method whose maps depend on
    the model loses similarity with the original maps as the weights go.
    Everything runs on deep copies: the caller's ``model`` (its weights,
    ``requires_grad`` flags and mode) and random state are never touched.

    By default the steps are the model's *stages*: its children in
    registration order, where a child that has submodules, no parameters of
    its own and more than half of the model's parameters (DenseNet's
    ``features``, a ``Sequential`` trunk, a ViT's ``blocks``) is replaced by
    its children, one level deep; stages whose modules have no
    ``reset_parameters`` are left out, and the order is reversed (the output
    side first). A torchvision DenseNet-121 or
    :func:`~captum_iba.cxr.small_densenet` gives 11 steps: ``classifier``,
    ``features.norm5``, ``features.denseblock4``, ``features.transition3``,
    ... ``features.denseblock1``, ``features.norm0``, ``features.conv0``; a
    timm ViT-B/16 gives ``head``, ``norm``, ``blocks.11`` ... ``blocks.0``,
    ``patch_embed`` (parameters the model owns itself, such as its class
    token and position embedding, have no ``reset_parameters`` and are not
    re-drawn). ``layers`` names other steps, e.g. every ``nn.Conv2d``.

    An attribution object with ``estimate`` (:class:`~captum_iba.attr.IBA`,
    :class:`~captum_iba.attr.InverseIBA`,
    :class:`~captum_iba.attr.RegressionIBA`,
    :class:`~captum_iba.attr.MultiLayerIBA`) built by a factory has its
    bottleneck statistics estimated on every copy it explains, the original
    one included, so that its noise has the scale of the features of the
    model it explains; the ``stats`` the factory passes are replaced. With
    the statistics of the trained model kept, the randomised model's
    features meet noise of another scale, and the maps measure that mismatch,
    not the model (on the model below, cascading over the stages: Spearman
    0.06-0.12 from ``features.transition2`` down, under the 0.14-0.56 of
    re-estimated statistics, a pass for the wrong reason). A
    :class:`~captum_iba.attr.ReadoutIBA` is refused: its readout network is
    fitted on the trained model's features, so pass a function ``(model,
    inputs, target)`` that estimates, fits and attributes on the model it is
    given. Such a function keeps whatever state it has.

    What a random model gives IBA: on :func:`~captum_iba.cxr.small_densenet`
    (8 outputs) at 64 px, bottleneck at ``features.denseblock3`` (4 x 4),
    ``loss="bce"``, 32 phantom images, three random initialisations with
    statistics estimated on each: the maps are almost flat (per-map standard
    deviation 0.08-0.10 of the mean, against 0.89 for the trained
    ``nih_bce`` model) and carry little information (0.04 bits per location
    on average, against 0.44); their Spearman correlation with the trained
    model's maps is 0.14-0.18 on average (0.35 standard deviation over
    images, 16 locations per map), and with the image's intensity 0.07
    (0.16 for the trained maps). Two noise seeds on the trained model agree
    at 0.99. Passing, for IBA, is Spearman falling from there to about 0.15
    as the stages go, with maps turning flat: the cascading check on the
    trained model (8 images, ``estimate_data`` 200 phantom images) gives
    0.79-0.80 for the four stages above the bottleneck, 0.71 with
    ``features.denseblock3`` random, 0.14 with every stage random.

    Args:

        attribution_fn (Callable): A factory ``model -> attribution
                    object``, e.g. ``lambda m: IBA(m, m.layer, loss="bce")``,
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
                    the model's stages (above).
        mode (str, optional): ``"cascading"``: step k randomises layers 1..k;
                    ``"independent"``: step k randomises layer k alone.
                    Default: ``"cascading"``
        seed (int, optional): Layer k is re-drawn with seed ``seed + k``, in
                    either mode. Default: 0
        progress (bool, optional): Show a progress bar over the steps.
                    Default: False
        estimate_data (Tensor, tuple, or iterable, optional): What the
                    statistics of an attribution object with ``estimate``
                    are estimated on, at most 1000 samples, in any form
                    ``estimate`` takes (a tensor, a tuple of tensors, a
                    DataLoader or list of batches, a Dataset). Default: None,
                    the ``inputs`` themselves (at least 2 samples): they are
                    at hand in the form the model takes and from the
                    distribution being explained; pass more data for
                    statistics less tied to the few images checked.

    Returns:
        :class:`RandomizationCheckResult`, a named tuple of

        - **layers** (*list of str*): the layer randomised at each step.
        - **spearman** (*Tensor*, (L, N)): Spearman rank correlation of the
          maps with the original maps (NaN where a map is constant).
        - **ssim** (*Tensor*, (L, N)): SSIM (scikit-image, 7 x 7 window or
          the largest odd window that fits, NaN below 3 x 3) of the maps,
          each min-max scaled to [0, 1], with the original maps.

    Raises:
        TypeError: ``attribution_fn`` is an attribution object, not a
            factory, or a factory of ReadoutIBA; ``estimate_data`` is not
            data ``estimate`` reads.
        ValueError: the factory builds on another model than it is given;
            ``estimate_data`` is given where nothing is estimated, or is
            None with a single input to estimate on.

    Examples::

        >>> check = randomization_check(lambda m: IBA(m, m.features.denseblock3, loss="bce"),
        ...                             net, images, target=labels, estimate_data=loader)
        >>> check.layers[:3]   # the stages, top first
        ['classifier', 'features.norm5', 'features.denseblock4']
        >>> saliency = lambda m, x, t: Saliency(m).attribute(x, target=t, abs=False)
        >>> check = randomization_check(saliency, net, images, target=labels)
        >>> check.spearman.mean(dim=1)   # one value per step
    """
    mode = _validate.check_choice(mode, "mode", _MODES)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seed = _validate.check_positive_int(seed, "seed", minimum=0)
    if estimate_data is not None:
        _validate.check_data(estimate_data, "estimate_data")
    first_input = inputs[0] if isinstance(inputs, tuple) else inputs
    n = len(first_input)
    attribution_fn = _as_attribution_fn(attribution_fn, estimate_data, n)
    names = _layer_names(model, layers)

    original = _compute_maps(attribution_fn, copy.deepcopy(model), inputs, target, n)
    spearman, ssim = [], []
    randomised = copy.deepcopy(model)
    for step, name in enumerate(progress_lines(names, desc="randomisation", enabled=progress)):
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
