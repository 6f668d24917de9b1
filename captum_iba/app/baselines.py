"""The baselines of the method registry, each through its library's public API (Captum, TorchRay, pytorch-grad-cam).

Each builder takes the :class:`~captum_iba.app.methods.MethodSuite` and returns
``attribute(images, target)``. They run on an in-place-free copy of the model
(:func:`inplace_free_copy`; see :mod:`captum_iba.app.methods`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._engine import capture_layer_outputs, find_layout
from .._validate import format_target

if TYPE_CHECKING:  # the suite builds the baselines; imported for the annotations only
    from .methods import MethodSuite

__all__ = ["inplace_free_copy", "baseline_target", "GRAD_CAM_METHODS", "pytorch_grad_cam"]


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


#: pytorch-grad-cam's methods in the comparison: registry key -> (its class, label).
GRAD_CAM_METHODS = {
    "pgc_gradcam": ("GradCAM", "Grad-CAM (pytorch-grad-cam)"),
    "pgc_gradcam_pp": ("GradCAMPlusPlus", "Grad-CAM++ (pytorch-grad-cam)"),
    "pgc_hirescam": ("HiResCAM", "HiResCAM (pytorch-grad-cam)"),
    "pgc_scorecam": ("ScoreCAM", "Score-CAM (pytorch-grad-cam)"),
    "pgc_eigencam": ("EigenCAM", "EigenCAM (pytorch-grad-cam)"),
    "pgc_layercam": ("LayerCAM", "LayerCAM (pytorch-grad-cam)"),
}


def grid_transform(model: nn.Module, layer: nn.Module, images: Tensor):
    """pytorch-grad-cam's ``reshape_transform`` for ``layer``: its output to ``(N, C, h, w)``.

    None for a layer that already returns ``(N, C, h, w)``; for token and
    channels-last layers, the layout the IBA family finds
    (:func:`captum_iba._engine.find_layout`), so both read the same grid.
    """
    features = capture_layer_outputs(model, [layer], (images[:1],))[0]
    layout = find_layout(model, features)
    return None if layout.index is None else layout.to_grid


def pytorch_grad_cam(class_name: str):
    """The builder of pytorch-grad-cam's ``class_name`` at the suite's Grad-CAM layer."""

    def build(suite: "MethodSuite"):
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        model = suite.baseline_model
        layer = suite.module(suite.cam_layer, model)
        cams = {}  # built on the first images: the layout is read from the layer's output

        def attribute(images, target):
            if not cams:
                cams["cam"] = getattr(pytorch_grad_cam, class_name)(
                    model=model, target_layers=[layer], reshape_transform=grid_transform(model, layer, images))
            per_sample = [0] * images.shape[0] if target is None else (
                target.tolist() if isinstance(target, Tensor) else list(target))
            # Its hooks need a graph from the input: the copy's parameters require no gradient.
            maps = cams["cam"](input_tensor=images.detach().requires_grad_(True),
                               targets=[ClassifierOutputTarget(t) for t in per_sample])
            return torch.from_numpy(maps)[:, None].to(images)

        return attribute

    return build


def baseline_target(target, images: Tensor):
    """``target`` as Captum's and TorchRay's methods take it: a per-sample tensor, or a list of tuples."""
    target = format_target(target, images.shape[0], images.device)
    return [tuple(row) for row in target.tolist()] if target is not None and target.dim() == 2 else target


def _torchray_target(target):
    """TorchRay takes an int or a tensor of per-sample indices; a regressor's only output is 0."""
    return 0 if target is None else target


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
    cleared; a torchvision DenseNet (the model itself, or one inside a wrapper
    such as :class:`~captum_iba.cxr.models.external.ExternalModel`) is wrapped
    so its functional in-place ReLU after ``features.norm5`` becomes
    out-of-place. Layer names are kept.
    """
    clone = copy.deepcopy(model).eval()
    for module in clone.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    clone = _without_inplace_densenets(clone)
    for param in clone.parameters():
        param.requires_grad_(False)
    return clone


def _without_inplace_densenets(model: nn.Module) -> nn.Module:
    """``model`` with its torchvision DenseNet (itself, or the one an ExternalModel wraps) made out-of-place."""
    import torchvision

    from ..cxr.models.external import ExternalModel

    if isinstance(model, torchvision.models.DenseNet):
        return _DenseNetWithoutInplace(model).eval()
    if isinstance(model, ExternalModel) and isinstance(model.wrapped, torchvision.models.DenseNet):
        # The wrapper calls its model's forward (its layers are the wrapper's own children).
        object.__setattr__(model, "_wrapped", _DenseNetWithoutInplace(model.wrapped).eval())
    return model
