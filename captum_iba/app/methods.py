"""Every attribution method of the comparison: one registry, one suite.

:data:`METHODS` is the registry, one :class:`Method` entry per method (its
label, family, the tasks it explains, the run options that apply, and a
factory). Everything that lists methods reads it: the ``captum-iba`` command's
choices, the attribute runner and the report.
Adding a method is one :func:`register_method` call (or one entry here) plus
the module that implements it; see the README's "Extending" section.

:class:`MethodSuite` sets the methods up once for a model -- the IBA family
with feature statistics estimated in one pass, Captum's LayerGradCam,
IntegratedGradients, LRP and Saliency, TorchRay's grad_cam,
excitation_backprop and extremal_perturbation -- and
``suite.attribute(name, images, target)`` returns each method's map through
the method's own public API; nothing is re-implemented here.

A method that learns before it explains (the Readout Bottleneck,
``"readout"``) has a ``train`` hook: the suite trains it once on its
``training_data`` (or takes the trained state it is given) and the method's
``build`` reads the result from ``suite.train(name)``.

The baselines run on an in-place-free copy of the model
(:func:`inplace_free_copy`): TorchRay 1.0's hooks and Captum's LRP fail or
read modified activations when a layer's output is changed in place, as
torchvision's DenseNet does with ``F.relu(features, inplace=True)`` after
``features.norm5``. The copy has the same weights and computes the same
function; the user's model is not touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from .baselines import (_excitation_backprop, _extremal_perturbation, _gradcam, _integrated_gradients, _lrp,
                        _saliency, _torchray_gradcam, GRAD_CAM_METHODS, baseline_target, inplace_free_copy,
                        pytorch_grad_cam)
from .._validate import find_layer
from ..attr import IBA, InverseIBA, MultiLayerIBA, ReadoutIBA, RegressionIBA
from ..maps import as_map_batch
from ..stats import FeatureStats, estimate_stats

__all__ = ["Method", "METHODS", "register_method", "MethodSuite", "inplace_free_copy",
           "DEFAULT_LAYER", "DEFAULT_MULTILAYER_LAYERS", "DEFAULT_CAM_LAYER", "DEFAULT_THRESHOLD",
           "DEFAULT_READOUT_LAYERS", "READOUT_TRAINING"]

#: The IBA family's layer on the paper's DenseNet-121 at 224 px (a 14x14 grid).
DEFAULT_LAYER = "features.denseblock3"
#: Multi-layer IBA's layers: the outputs of dense blocks 1-3, as the paper.
DEFAULT_MULTILAYER_LAYERS = ("features.denseblock1", "features.denseblock2", "features.denseblock3")
#: Grad-CAM's layer: the last feature map.
DEFAULT_CAM_LAYER = "features.norm5"
DEFAULT_THRESHOLD = "top:0.3"
#: The Readout Bottleneck's readout layers: the outputs of the four dense blocks.
DEFAULT_READOUT_LAYERS = tuple(f"features.denseblock{i}" for i in range(1, 5))
#: The Readout Bottleneck's training by default (``MethodSuite(training_options={"readout": {...}})``
#: overrides any of them). beta 1, not IBA's 10: averaged over the phantom, beta 10 trains the
#: readout to all-noise maps (the model loss can fall little there: 2.4 nats on noise, 1.5 clean).
READOUT_TRAINING = {"epochs": 10, "lr": 3e-3, "beta": 1.0, "seed": 0}

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
        ``"multilayer"`` (the suite's multi-layer list), ``"readout"`` (the
        suite's layer and its readout layers) or ``""`` (none).
    options : tuple of str
        The run options that apply (``layer``, ``beta``, ``steps``,
        ``noise_draws``, ``threshold``, ``loss``); others are refused.
    attribution : type, optional
        Its Captum ``LayerAttribution`` class, for the IBA family.
    defaults : dict
        The fixed options its builder passes (recorded, e.g. ``loss``).
    train : callable, optional
        For a method that learns from data before it explains (the Readout
        Bottleneck): ``train(suite) -> state``, run once per suite on
        ``suite.training_data`` with ``suite.training_options.get(name, {})``
        (on first use, or by :meth:`MethodSuite.train`); ``build`` reads the
        state from ``suite.train(name)``. The state has ``save(path)``; a suite
        without training data or a given state (``trained=``) leaves the method
        out of :attr:`MethodSuite.names`.
    in_report : bool
        Whether the report's studies run it (False for a method whose cost
        grows with the layer's channels, such as Score-CAM's one forward pass
        per channel: 2048 per map on ResNet-50); ``attribute`` and the suite
        run it either way.
    load : callable, optional
        With ``train``: ``load(suite, path) -> state``, the state ``save`` wrote
        (the attribute runner keeps it in its store, and trains once per store).
    """

    label: str
    family: str
    tasks: Tuple[str, ...]
    build: Callable[["MethodSuite"], Callable[..., Tensor]]
    layers: str = ""
    options: Tuple[str, ...] = ()
    attribution: Optional[type] = None
    defaults: dict = field(default_factory=dict)
    train: Optional[Callable[["MethodSuite"], Any]] = None
    load: Optional[Callable[["MethodSuite", Union[str, os.PathLike]], Any]] = None
    in_report: bool = True


METHODS: Dict[str, Method] = {}


def register_method(name: str, method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` under ``name`` (a new name; returns ``method``)."""
    if not isinstance(name, str) or not name.replace("_", "").isalnum():
        raise ValueError(f"name must be a word of letters, digits and underscores, got {name!r}")
    if name in METHODS:
        raise ValueError(f"a method named {name!r} is registered already")
    if not isinstance(method, Method):
        raise TypeError(f"method must be a captum_iba.app.methods.Method, got {type(method).__name__}")
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


def _iba_entry(label: str, cls: type, tasks, layers: str = "bottleneck",
               options=BOTTLENECK_OPTIONS, **defaults) -> Method:
    builder = multilayer_method if layers == "multilayer" else bottleneck_method
    return Method(label, "captum_iba", tasks, lambda suite: builder(suite, cls, **defaults), layers=layers,
                  options=options, attribution=cls, defaults=defaults)


# The Readout Bottleneck: trained once per suite, then one forward pass per map.


def _readout_layers(suite: "MethodSuite"):
    return suite.model, suite.module(suite.layer), [suite.module(n) for n in suite.readout_layers]


def _readout_instance(suite: "MethodSuite", beta: float) -> ReadoutIBA:
    layers = suite.readout_layers
    return ReadoutIBA(*_readout_layers(suite), loss="bce", beta=beta, stats=suite.stats.get(suite.layer),
                      readout_stats=[suite.stats[n] for n in layers] if all(n in suite.stats for n in layers) else None)


def _train_readout(suite: "MethodSuite") -> ReadoutIBA:
    """A ReadoutIBA at the suite's layer, trained on ``suite.training_data`` (see :data:`READOUT_TRAINING`)."""
    options = {**READOUT_TRAINING, **suite.training_options.get("readout", {})}
    unknown = set(options) - set(READOUT_TRAINING)
    if unknown:
        raise ValueError(f"training_options['readout']: unknown options {sorted(unknown)}; "
                         f"known: {', '.join(READOUT_TRAINING)}")
    readout = _readout_instance(suite, options["beta"])
    if readout.readout_stats is None:
        raise ValueError("the readout layers have no statistics: estimate them with the suite (data=) or pass stats=")
    readout.fit(suite.training_data, epochs=options["epochs"], lr=options["lr"], seed=options["seed"],
                progress=suite.progress)
    return readout


def _readout(suite: "MethodSuite"):
    readout = suite.train("readout")
    return lambda images, target, *, seed=0, **options: readout.attribute(images, target, **options)


_BOTH = ("classification", "regression")
_CLASSIFICATION = ("classification",)
for _name, _method in {
    "iba": _iba_entry("IBA", IBA, _CLASSIFICATION, loss="bce"),
    "inverse": _iba_entry("Inverse IBA", InverseIBA, _CLASSIFICATION, loss="bce"),
    "multilayer": _iba_entry("Multi-layer IBA", MultiLayerIBA, _CLASSIFICATION,
                             layers="multilayer", options=(*BOTTLENECK_OPTIONS, "threshold"), loss="bce"),
    "regression": _iba_entry("Regression IBA", RegressionIBA, ("regression",),
                             options=(*BOTTLENECK_OPTIONS, "loss")),
    "readout": Method("Readout IBA", "captum_iba", _CLASSIFICATION, _readout, layers="readout",
                      options=("layer", "beta", "readout_epochs", "readout_images"), attribution=ReadoutIBA,
                      defaults={"loss": "bce"}, train=_train_readout,
                      load=lambda suite, path: ReadoutIBA.load(path, *_readout_layers(suite))),
    "gradcam": Method("Grad-CAM (Captum)", "captum", _BOTH, _gradcam),
    "integrated_gradients": Method("Integrated Gradients (Captum)", "captum", _BOTH, _integrated_gradients),
    "lrp": Method("LRP (Captum)", "captum", _BOTH, _lrp),
    "saliency": Method("Saliency (Captum)", "captum", _BOTH, _saliency),
    "torchray_gradcam": Method("Grad-CAM (TorchRay)", "torchray", _BOTH, _torchray_gradcam),
    "excitation_backprop": Method("Excitation Backprop (TorchRay)", "torchray", _BOTH, _excitation_backprop),
    "extremal_perturbation": Method("Extremal Perturbation (TorchRay)", "torchray", _BOTH, _extremal_perturbation),
    # --layer chooses the Grad-CAM layer only where the model has no stages to take it from (a ViT).
    **{key: Method(label, "grad-cam", _BOTH, pytorch_grad_cam(class_name), options=("layer",),
                   in_report=key != "pgc_scorecam")
       for key, (class_name, label) in GRAD_CAM_METHODS.items()},
}.items():
    register_method(_name, _method)


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
        readout_layers (sequence of str): the Readout Bottleneck's readout
            layers (default: DenseNet's four dense blocks).
        training_data (iterable, optional): re-iterable training batches for
            the methods that learn (``Method.train``), as
            :meth:`~captum_iba.attr.ReadoutIBA.fit` takes them (e.g. a list of
            ``(images, labels)``); without it (or ``trained``) they are left
            out of :attr:`names`.
        training_options (dict, optional): method name -> its training options
            (``{"readout": {"epochs": 2}}``; see :data:`READOUT_TRAINING`).
        trained (dict, optional): method name -> its trained state (e.g. a
            fitted :class:`~captum_iba.attr.ReadoutIBA`): used, not trained again.
        progress (bool): progress bars for the estimation and the training.
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
        readout_layers: Sequence[str] = DEFAULT_READOUT_LAYERS,
        training_data: Optional[Iterable] = None,
        training_options: Optional[Dict[str, dict]] = None,
        trained: Optional[Dict[str, Any]] = None,
        progress: bool = False,
    ) -> None:
        if task not in _BOTH:
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        self.model, self.task, self.progress = model, task, progress
        self.layer, self.multilayer_layers, self.cam_layer = layer, tuple(multilayer_layers), cam_layer
        self.readout_layers = tuple(readout_layers)
        self.training_data, self.training_options = training_data, dict(training_options or {})
        self.trained: Dict[str, Any] = dict(trained or {})
        for name, value in (("layer", layer), ("cam_layer", cam_layer),
                            *(("multilayer_layers", n) for n in self.multilayer_layers),
                            *(("readout_layers", n) for n in self.readout_layers if "readout" in self.names)):
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
        """The registered methods this suite runs, in registration order: those that explain its
        task and, for a method that learns, have training data or a trained state."""
        return [name for name, method in METHODS.items() if self.task in method.tasks
                and (method.train is None or self.training_data is not None or name in self.trained)]

    def stats_layers(self, names: Iterable[str]) -> Tuple[str, ...]:
        """The layers whose statistics the methods ``names`` need, each once."""
        needed = {"bottleneck": (self.layer,), "multilayer": self.multilayer_layers,
                  "readout": (self.layer, *self.readout_layers), "": ()}
        return tuple(dict.fromkeys(layer for name in names for layer in needed[METHODS[name].layers]))

    def train(self, name: str) -> Any:
        """The trained state of the learning method ``name``: given (``trained=``), or trained
        now on ``training_data`` (once; later calls return it).

        Raises:
            ValueError: ``name`` learns nothing, or there is no training data.
        """
        if name not in self.trained:
            method = METHODS.get(name)
            if method is None or method.train is None:
                raise ValueError(f"method {name!r} learns nothing: it has no train hook")
            if self.training_data is None:
                raise ValueError(f"method {name!r} needs training: pass MethodSuite(training_data=...) "
                                 f"or trained={{{name!r}: ...}}")
            self.trained[name] = method.train(self)
        return self.trained[name]

    def load_trained(self, name: str, path: Union[str, os.PathLike]) -> Any:
        """Restore the trained state of ``name`` that its ``save(path)`` wrote (``Method.load``)."""
        method = METHODS.get(name)
        if method is None or method.load is None:
            raise ValueError(f"method {name!r} has no trained state to load")
        self.trained[name] = method.load(self, path)
        return self.trained[name]

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
            maps = self._built[name](images, baseline_target(target, images), **options)
        maps = as_map_batch(maps, images.shape[0]).detach()
        # A baseline that reads its layer as (N, C, h, w) gives a token layer's (N, L, D) maps of
        # another shape without a word (Captum's LayerGradCam: 1 x D): refused here, by name.
        (h, w), (height, width) = maps.shape[-2:], images.shape[-2:]
        if abs(h * width / height - w) > 1:
            raise ValueError(f"{method.label}: expected maps of the images' aspect ratio ({height} x {width}), got "
                             f"{h} x {w}: it reads its layer as (N, C, h, w), and this model's layer is not")
        return maps
