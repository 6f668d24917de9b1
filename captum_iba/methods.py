"""Every attribution method of the comparison, behind one call.

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
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attr import IBA, InverseIBA, MultiLayerIBA, RegressionIBA
from .attr._base import format_target
from .maps import as_map_batch
from .stats import FeatureStats, estimate_stats


@dataclass(frozen=True)
class MethodInfo:
    """What a method is: its display name, its family and the tasks it explains."""

    label: str
    family: str  # "captum_iba", "captum" or "torchray"
    tasks: tuple = ("classification", "regression")


METHODS: Dict[str, MethodInfo] = {
    "iba": MethodInfo("IBA", "captum_iba", ("classification",)),
    "inverse": MethodInfo("Inverse IBA", "captum_iba", ("classification",)),
    "multilayer": MethodInfo("Multi-layer IBA", "captum_iba", ("classification",)),
    "regression": MethodInfo("Regression IBA", "captum_iba", ("regression",)),
    "gradcam": MethodInfo("Grad-CAM (Captum)", "captum"),
    "integrated_gradients": MethodInfo("Integrated Gradients (Captum)", "captum"),
    "lrp": MethodInfo("LRP (Captum)", "captum"),
    "saliency": MethodInfo("Saliency (Captum)", "captum"),
    "torchray_gradcam": MethodInfo("Grad-CAM (TorchRay)", "torchray"),
    "excitation_backprop": MethodInfo("Excitation Backprop (TorchRay)", "torchray"),
    "extremal_perturbation": MethodInfo("Extremal Perturbation (TorchRay)", "torchray"),
}


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
    """The comparison's methods, set up once for one model.

    Args:
        model (nn.Module): a DenseNet-style model (layer names
            ``features.denseblock1..3``, ``features.norm5``), in eval mode.
        task (str): ``"classification"`` (one sigmoid per output, BCE) or
            ``"regression"`` (a score).
        data (iterable, optional): input batches to estimate the IBA feature
            statistics from (all layers in one pass); or pass ``stats``.
        stats (dict, optional): layer name -> FeatureStats.
        n_samples (int): samples for the estimation.
        layer (str): the IBA layer (default ``features.denseblock3``, as the paper).
        multilayer_layers (sequence of str): Multi-layer IBA's layers.
        cam_layer (str): the Grad-CAM layer (default ``features.norm5``).
        multilayer_threshold: Multi-layer IBA's threshold (default ``"top:0.3"``).
        iba_options (dict, optional): options for every IBA-family method
            (``steps``, ``batch_size``, ``beta``, ...).
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
        layer: str = "features.denseblock3",
        multilayer_layers: Sequence[str] = ("features.denseblock1", "features.denseblock2", "features.denseblock3"),
        cam_layer: str = "features.norm5",
        multilayer_threshold="top:0.3",
        iba_options: Optional[dict] = None,
        ig_steps: int = 16,
        extremal_iterations: int = 100,
        extremal_area: float = 0.1,
        progress: bool = False,
    ) -> None:
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        self.model, self.task = model, task
        self.layer, self.multilayer_layers, self.cam_layer = layer, tuple(multilayer_layers), cam_layer
        modules = dict(model.named_modules())
        for name in (layer, cam_layer, *self.multilayer_layers):
            if name not in modules:
                raise ValueError(f"the model has no layer {name!r}")
        names = list(dict.fromkeys([*self.multilayer_layers, layer]))
        if stats is None:
            if data is None:
                raise ValueError("MethodSuite needs data= to estimate the IBA statistics, or stats=")
            estimated = estimate_stats(model, [modules[n] for n in names], data, n_samples, progress)
            stats = dict(zip(names, estimated))
        self.stats = stats
        options = dict(iba_options or {})
        loss = {} if task == "regression" else {"loss": "bce"}
        self.ours = {
            "iba": IBA(model, modules[layer], stats=stats[layer], **loss, **options),
            "inverse": InverseIBA(model, modules[layer], stats=stats[layer], **loss, **options),
            "multilayer": MultiLayerIBA(
                model, [modules[n] for n in self.multilayer_layers], threshold=multilayer_threshold,
                stats=[stats[n] for n in self.multilayer_layers], **loss, **options,
            ),
            "regression": RegressionIBA(model, modules[layer], stats=stats[layer], **options),
        }
        self.ig_steps = ig_steps
        self.extremal_iterations, self.extremal_area = extremal_iterations, extremal_area
        self._baseline_model: Optional[nn.Module] = None

    @property
    def names(self) -> list:
        """The methods that explain this suite's task, in the comparison's order."""
        return [name for name, info in METHODS.items() if self.task in info.tasks]

    @property
    def baseline_model(self) -> nn.Module:
        """The in-place-free copy the baselines run on (made on first use)."""
        if self._baseline_model is None:
            self._baseline_model = inplace_free_copy(self.model)
        return self._baseline_model

    def attribute(self, name: str, images: Tensor, target=None, *, seed: int = 0, **options) -> Tensor:
        """The map of method ``name`` for ``images`` ``(N, C, H, W)``.

        ``target`` is the output to explain (int, list or tensor per sample;
        None for a single-output regressor). ``options`` go to the method
        (e.g. ``loss="mse", target_values=y`` for ``"regression"``).

        Returns:
            Tensor: ``(N, 1, h, w)`` at the method's own resolution, detached.
        """
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
        if self.task not in METHODS[name].tasks:
            raise ValueError(f"method {name!r} does not explain a {self.task} model")
        if name in self.ours:
            maps = self.ours[name].attribute(images, target, seed=seed, **options)
        else:
            target = format_target(target, images.shape[0], images.device)
            maps = getattr(self, f"_{name}")(images, target, **options)
        return as_map_batch(maps, images.shape[0])

    # Baselines: each through its library's public API.

    def _gradcam(self, images, target):
        from captum.attr import LayerGradCam

        model = self.baseline_model
        layer = dict(model.named_modules())[self.cam_layer]
        return LayerGradCam(model, layer).attribute(images, target=target, relu_attributions=True)

    def _integrated_gradients(self, images, target):
        from captum.attr import IntegratedGradients

        return IntegratedGradients(self.baseline_model).attribute(
            images, baselines=torch.zeros_like(images), target=target, n_steps=self.ig_steps,
            internal_batch_size=max(1, 64 // max(1, images.shape[0])) * images.shape[0],
        )

    def _lrp(self, images, target):
        from captum.attr import LRP

        return LRP(self.baseline_model).attribute(images, target=target)

    def _saliency(self, images, target):
        from captum.attr import Saliency

        return Saliency(self.baseline_model).attribute(images, target=target, abs=True)

    def _torchray_gradcam(self, images, target):
        from torchray.attribution.grad_cam import grad_cam

        return grad_cam(self.baseline_model, images, _torchray_target(target), saliency_layer=self.cam_layer)

    def _excitation_backprop(self, images, target):
        from torchray.attribution.excitation_backprop import excitation_backprop

        # At the paper's IBA layer: excitation backprop is meant for a mid-level layer.
        return excitation_backprop(
            self.baseline_model, images, _torchray_target(target), saliency_layer=self.layer
        )

    def _extremal_perturbation(self, images, target):
        from torchray.attribution.extremal_perturbation import extremal_perturbation

        targets = _torchray_target(target)
        targets = targets.tolist() if isinstance(targets, Tensor) else [targets] * images.shape[0]
        masks = []
        for image, image_target in zip(images, targets):  # TorchRay takes one image at a time
            mask, _ = extremal_perturbation(
                self.baseline_model, image[None], image_target,
                areas=[self.extremal_area], max_iter=self.extremal_iterations,
            )
            masks.append(mask)
        return torch.cat(masks)


def _torchray_target(target):
    """TorchRay takes an int or a tensor of per-sample indices; a regressor's only output is 0."""
    return 0 if target is None else target
