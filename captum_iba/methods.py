"""Every attribution method of the comparison: one registry, one suite.

:data:`METHODS` is the registry, one :class:`Method` entry per method (its
label, family, the tasks it explains, the run options that apply, and a
factory). Everything that lists methods reads it: the ``captum-iba`` command's
choices, the attribute runner, the report, and :mod:`captum_iba.torchray`.
Adding a method is one :func:`register_method` call (or one entry here) plus
the module that implements it; see the README's "Extending" section.

:class:`MethodSuite` sets the methods up once for a model -- the IBA family
with feature statistics estimated in one pass, Captum's LayerGradCam,
IntegratedGradients, LRP and Saliency, TorchRay's grad_cam,
excitation_backprop and extremal_perturbation -- and
``suite.attribute(name, images, target)`` returns each method's map through
the method's own public API; nothing is re-implemented here.

The baselines run on an in-place-free copy of the model
(:func:`inplace_free_copy`): TorchRay 1.0's hooks and Captum's LRP fail or
read modified activations when a layer's output is changed in place, as
torchvision's DenseNet does with ``F.relu(features, inplace=True)`` after
``features.norm5``. The copy has the same weights and computes the same
function; the user's model is not touched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validate import find_layer, format_target
from .attr import IBA, InverseIBA, MultiLayerIBA, RegressionIBA
from .maps import as_map_batch
from .stats import FeatureStats, estimate_stats

__all__ = ["Method", "METHODS", "register_method", "MethodSuite", "inplace_free_copy",
           "DEFAULT_LAYER", "DEFAULT_MULTILAYER_LAYERS", "DEFAULT_CAM_LAYER", "DEFAULT_THRESHOLD"]

#: The IBA family's layer on the paper's DenseNet-121 at 224 px (a 14x14 grid).
DEFAULT_LAYER = "features.denseblock3"
#: Multi-layer IBA's layers: the outputs of dense blocks 1-3, as the paper.
DEFAULT_MULTILAYER_LAYERS = ("features.denseblock1", "features.denseblock2", "features.denseblock3")
#: Grad-CAM's layer: the last feature map.
DEFAULT_CAM_LAYER = "features.norm5"
DEFAULT_THRESHOLD = "top:0.3"

#: The options of an IBA-family method that a run may set (``captum-iba attribute --beta ...``).
BOTTLENECK_OPTIONS = ("layer", "beta", "steps", "noise_draws")


@dataclass(frozen=True)
class Method:
    """One attribution method: what it is and how the suite builds it.

    Attributes
    ----------
    label : str
        Display name in tables and figures.
    family : str
        ``"captum_iba"``, ``"captum"`` or ``"torchray"``: whose implementation runs
        (recorded with the library version in a store's configuration).
    tasks : tuple of str
        The models it explains: ``"classification"``, ``"regression"``.
    build : callable
        ``build(suite) -> attribute``. For the IBA family (``attribution`` set),
        ``attribute(images, target, *, seed, **options)``; for the others
        ``attribute(images, target, **options)`` with ``target`` already a
        per-sample tensor (or an int). Either returns maps ``(N, ...)``.
    layers : str
        Whose feature statistics it needs: ``"bottleneck"`` (the suite's layer),
        ``"multilayer"`` (the suite's multi-layer list) or ``""`` (none).
    options : tuple of str
        The run options that apply (``layer``, ``beta``, ``steps``,
        ``noise_draws``, ``threshold``, ``loss``); others are refused.
    attribution : type, optional
        Its Captum ``LayerAttribution`` class, for the IBA family.
    function : str, optional
        Its name in :mod:`captum_iba.torchray`, where it has a TorchRay-style function.
    """

    label: str
    family: str
    tasks: Tuple[str, ...]
    build: Callable[["MethodSuite"], Callable[..., Tensor]]
    layers: str = ""
    options: Tuple[str, ...] = ()
    attribution: Optional[type] = None
    function: Optional[str] = None
    defaults: dict = field(default_factory=dict)


METHODS: Dict[str, Method] = {}


def register_method(name: str, method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` under ``name`` (a new name; returns ``method``)."""
    if not isinstance(name, str) or not name.replace("_", "").isalnum():
        raise ValueError(f"name must be a word of letters, digits and underscores, got {name!r}")
    if name in METHODS:
        raise ValueError(f"a method named {name!r} is registered already")
    if not isinstance(method, Method):
        raise TypeError(f"method must be a captum_iba.methods.Method, got {type(method).__name__}")
    METHODS[name] = method
    return method


# Builders of the IBA family: the class at the suite's layer(s), the suite's options.


def bottleneck_method(suite: "MethodSuite", cls: type, **defaults) -> Callable[..., Tensor]:
    """``cls`` (a one-layer IBA-family class) at the suite's layer, as a bound ``attribute``."""
    method = cls(suite.model, suite.module(suite.layer), stats=suite.stats.get(suite.layer),
                 **defaults, **suite.iba_options)
    return method.attribute


def multilayer_method(suite: "MethodSuite", cls: type = MultiLayerIBA, **defaults) -> Callable[..., Tensor]:
    """``cls`` over the suite's multi-layer list, as a bound ``attribute``."""
    layers = suite.multilayer_layers
    method = cls(suite.model, [suite.module(name) for name in layers], threshold=suite.multilayer_threshold,
                 stats=[suite.stats.get(name) for name in layers], **defaults, **suite.iba_options)
    return method.attribute


def _iba_entry(label: str, cls: type, tasks, function: str, layers: str = "bottleneck",
               options=BOTTLENECK_OPTIONS, **defaults) -> Method:
    builder = multilayer_method if layers == "multilayer" else bottleneck_method
    return Method(label, "captum_iba", tasks, lambda suite: builder(suite, cls, **defaults), layers=layers,
                  options=options, attribution=cls, function=function, defaults=defaults)


# The baselines, each through its library's public API, on the in-place-free copy.


def _gradcam(suite: "MethodSuite"):
    from captum.attr import LayerGradCam

    gradcam = LayerGradCam(suite.baseline_model, suite.module(suite.cam_layer, suite.baseline_model))
    return lambda images, target: gradcam.attribute(images, target=target, relu_attributions=True)


def _integrated_gradients(suite: "MethodSuite"):
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(suite.baseline_model)

    def attribute(images, target):
        batch = max(1, 64 // max(1, images.shape[0])) * images.shape[0]
        return ig.attribute(images, baselines=torch.zeros_like(images), target=target,
                            n_steps=suite.ig_steps, internal_batch_size=batch)

    return attribute


def _lrp(suite: "MethodSuite"):
    from captum.attr import LRP

    return lambda images, target: LRP(suite.baseline_model).attribute(images, target=target)


def _saliency(suite: "MethodSuite"):
    from captum.attr import Saliency

    return lambda images, target: Saliency(suite.baseline_model).attribute(images, target=target, abs=True)


def _torchray_gradcam(suite: "MethodSuite"):
    from torchray.attribution.grad_cam import grad_cam

    return lambda images, target: grad_cam(suite.baseline_model, images, _torchray_target(target),
                                           saliency_layer=suite.cam_layer)


def _excitation_backprop(suite: "MethodSuite"):
    from torchray.attribution.excitation_backprop import excitation_backprop

    # At the IBA layer: excitation backprop is meant for a mid-level layer.
    return lambda images, target: excitation_backprop(suite.baseline_model, images, _torchray_target(target),
                                                      saliency_layer=suite.layer)


def _extremal_perturbation(suite: "MethodSuite"):
    from torchray.attribution.extremal_perturbation import extremal_perturbation

    def attribute(images, target):
        targets = _torchray_target(target)
        targets = targets.tolist() if isinstance(targets, Tensor) else [targets] * images.shape[0]
        masks = [extremal_perturbation(suite.baseline_model, image[None], image_target, areas=[suite.extremal_area],
                                       max_iter=suite.extremal_iterations)[0]
                 for image, image_target in zip(images, targets)]  # TorchRay takes one image at a time
        return torch.cat(masks)

    return attribute


def _baseline_target(target, images: Tensor):
    """``target`` as Captum's and TorchRay's methods take it: a per-sample tensor, or a list of tuples."""
    target = format_target(target, images.shape[0], images.device)
    return [tuple(row) for row in target.tolist()] if target is not None and target.dim() == 2 else target


def _torchray_target(target):
    """TorchRay takes an int or a tensor of per-sample indices; a regressor's only output is 0."""
    return 0 if target is None else target


_BOTH = ("classification", "regression")
_CLASSIFICATION = ("classification",)
for _name, _method in {
    "iba": _iba_entry("IBA", IBA, _CLASSIFICATION, "iba", loss="bce"),
    "inverse": _iba_entry("Inverse IBA", InverseIBA, _CLASSIFICATION, "inverse_iba", loss="bce"),
    "multilayer": _iba_entry("Multi-layer IBA", MultiLayerIBA, _CLASSIFICATION, "multilayer_iba",
                             layers="multilayer", options=(*BOTTLENECK_OPTIONS, "threshold"), loss="bce"),
    "regression": _iba_entry("Regression IBA", RegressionIBA, ("regression",), "regression_iba",
                             options=(*BOTTLENECK_OPTIONS, "loss")),
    "gradcam": Method("Grad-CAM (Captum)", "captum", _BOTH, _gradcam),
    "integrated_gradients": Method("Integrated Gradients (Captum)", "captum", _BOTH, _integrated_gradients),
    "lrp": Method("LRP (Captum)", "captum", _BOTH, _lrp),
    "saliency": Method("Saliency (Captum)", "captum", _BOTH, _saliency),
    "torchray_gradcam": Method("Grad-CAM (TorchRay)", "torchray", _BOTH, _torchray_gradcam),
    "excitation_backprop": Method("Excitation Backprop (TorchRay)", "torchray", _BOTH, _excitation_backprop),
    "extremal_perturbation": Method("Extremal Perturbation (TorchRay)", "torchray", _BOTH, _extremal_perturbation),
}.items():
    register_method(_name, _method)


class _DenseNetWithoutInplace(nn.Module):
    """torchvision DenseNet's forward with an out-of-place final ReLU, same layer names."""

    def __init__(self, densenet: nn.Module) -> None:
        super().__init__()
        self.features = densenet.features
        self.classifier = densenet.classifier

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x))
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


def inplace_free_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every in-place activation made out-of-place.

    Modules with an ``inplace`` flag (``nn.ReLU(inplace=True)``, ...) get it
    cleared; a torchvision DenseNet is wrapped so its functional in-place ReLU
    after ``features.norm5`` becomes out-of-place. Layer names are kept.
    """
    import torchvision

    clone = copy.deepcopy(model).eval()
    for module in clone.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    if isinstance(clone, torchvision.models.DenseNet):
        clone = _DenseNetWithoutInplace(clone).eval()
    for param in clone.parameters():
        param.requires_grad_(False)
    return clone


class MethodSuite:
    """The registry's methods, set up once for one model (each built on first use).

    Args:
        model (nn.Module): the model, in eval mode.
        task (str): ``"classification"`` (one sigmoid per output, BCE) or
            ``"regression"`` (a score).
        data (iterable, optional): input batches to estimate the IBA feature
            statistics from (every layer the task's methods need, in one pass);
            or pass ``stats``.
        stats (dict, optional): layer name -> FeatureStats.
        n_samples (int): samples for the estimation.
        layer (str): the IBA layer (default ``features.denseblock3``, as the paper).
        multilayer_layers (sequence of str): Multi-layer IBA's layers.
        cam_layer (str): the Grad-CAM layer (default ``features.norm5``).
        multilayer_threshold: Multi-layer IBA's threshold (default ``"top:0.3"``).
        iba_options (dict, optional): options for every IBA-family method
            (``steps``, ``noise_draws``, ``beta``, ...).
        ig_steps (int): Integrated Gradients' steps.
        extremal_iterations (int): Extremal Perturbation's iterations per image
            (TorchRay's default 800 is minutes per image on a CPU).
        extremal_area (float): Extremal Perturbation's area.
        progress (bool): progress bar for the estimation.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        task: str = "classification",
        data: Optional[Iterable] = None,
        stats: Optional[Dict[str, FeatureStats]] = None,
        n_samples: int = 200,
        layer: str = DEFAULT_LAYER,
        multilayer_layers: Sequence[str] = DEFAULT_MULTILAYER_LAYERS,
        cam_layer: str = DEFAULT_CAM_LAYER,
        multilayer_threshold=DEFAULT_THRESHOLD,
        iba_options: Optional[dict] = None,
        ig_steps: int = 16,
        extremal_iterations: int = 100,
        extremal_area: float = 0.1,
        progress: bool = False,
    ) -> None:
        if task not in _BOTH:
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        self.model, self.task = model, task
        self.layer, self.multilayer_layers, self.cam_layer = layer, tuple(multilayer_layers), cam_layer
        for name, value in (("layer", layer), ("cam_layer", cam_layer),
                            *(("multilayer_layers", n) for n in self.multilayer_layers)):
            find_layer(model, value, name)
        if stats is None:
            if data is None:
                raise ValueError("MethodSuite needs data= to estimate the IBA statistics, or stats=")
            names = self.stats_layers(self.names)
            estimated = estimate_stats(model, [self.module(n) for n in names], data, n_samples, progress)
            stats = dict(zip(names, estimated))
        self.stats = dict(stats)
        self.multilayer_threshold = multilayer_threshold
        self.iba_options = dict(iba_options or {})
        self.ig_steps = ig_steps
        self.extremal_iterations, self.extremal_area = extremal_iterations, extremal_area
        self._baseline_model: Optional[nn.Module] = None
        self._built: Dict[str, Callable[..., Tensor]] = {}

    @property
    def names(self) -> list:
        """The registered methods that explain this suite's task, in registration order."""
        return [name for name, method in METHODS.items() if self.task in method.tasks]

    def stats_layers(self, names: Iterable[str]) -> Tuple[str, ...]:
        """The layers whose statistics the methods ``names`` need, each once."""
        needed = {"bottleneck": (self.layer,), "multilayer": self.multilayer_layers, "": ()}
        return tuple(dict.fromkeys(layer for name in names for layer in needed[METHODS[name].layers]))

    def module(self, name: str, model: Optional[nn.Module] = None) -> nn.Module:
        """The submodule called ``name`` of ``model`` (default: the suite's model)."""
        return find_layer(self.model if model is None else model, name, "layer")[1]

    @property
    def baseline_model(self) -> nn.Module:
        """The in-place-free copy the baselines run on (made on first use)."""
        if self._baseline_model is None:
            self._baseline_model = inplace_free_copy(self.model)
        return self._baseline_model

    def attribute(self, name: str, images: Tensor, target=None, *, seed: int = 0, **options) -> Tensor:
        """The map of method ``name`` for ``images`` ``(N, C, H, W)``.

        ``target`` is the output to explain (as Captum takes it; None for a
        single-output regressor). ``options`` go to the method (e.g.
        ``loss="mse", target_values=y`` for ``"regression"``).

        Returns:
            Tensor: ``(N, 1, h, w)`` at the method's own resolution, detached.
        """
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
        method = METHODS[name]
        if self.task not in method.tasks:
            raise ValueError(f"method {name!r} does not explain a {self.task} model")
        if name not in self._built:
            self._built[name] = method.build(self)
        if method.attribution is not None:
            maps = self._built[name](images, target, seed=seed, **options)
        else:
            maps = self._built[name](images, _baseline_target(target, images), **options)
        return as_map_batch(maps, images.shape[0]).detach()
