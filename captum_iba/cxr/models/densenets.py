"""DenseNets for chest X-rays: DenseNet-121 as in the paper, and a small one for CPUs.

Both are :class:`torchvision.models.DenseNet` instances, so they share the
layer names the paper uses (``features.denseblock1`` ... ``features.denseblock4``,
``features.norm5``) and ``classifier``; they output raw scores (logits for
classifiers, the score itself for regressors) and take inputs made by
:func:`~captum_iba.cxr.schema.to_model_input`.
"""

from __future__ import annotations

import os
import re
from typing import Dict, Optional, Sequence, Union

import torch
from torch import nn
from torchvision.models import DenseNet, densenet121

__all__ = ["densenet121_cxr", "small_densenet"]

# Old torchvision checkpoints spell "norm.1" where the current DenseNet has "norm1".
_OLD_DENSE_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _check_outputs(num_outputs: int) -> None:
    if not isinstance(num_outputs, int) or isinstance(num_outputs, bool) or num_outputs < 1:
        raise ValueError(f"num_outputs: expected a positive integer, got {num_outputs!r}")


def small_densenet(
    num_outputs: int,
    *,
    growth_rate: int = 12,
    block_config: Sequence[int] = (2, 2, 2, 2),
    num_init_features: int = 16,
    bn_size: int = 2,
) -> DenseNet:
    """A small DenseNet with DenseNet-121's layer names, fast enough to train on a CPU.

    Parameters
    ----------
    num_outputs : int
        Width of the output layer (8 findings, 3 detectors, 1 score, ...).
    growth_rate, block_config, num_init_features, bn_size
        As :class:`torchvision.models.DenseNet`; ``block_config`` needs four
        entries so that ``features.denseblock1`` ... ``denseblock4`` exist.

    Returns
    -------
    torchvision.models.DenseNet
        Randomly initialised; input (N, 3, H, W) with H, W >= 32, output (N, num_outputs).
    """
    _check_outputs(num_outputs)
    if len(block_config) != 4:
        raise ValueError(f"block_config: expected 4 dense blocks (as DenseNet-121), got {tuple(block_config)}")
    return DenseNet(
        growth_rate=growth_rate,
        block_config=tuple(block_config),
        num_init_features=num_init_features,
        bn_size=bn_size,
        num_classes=num_outputs,
    )


def _normalise_keys(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip a ``module.`` prefix (DataParallel) and rename old torchvision dense-layer keys."""
    renamed = {}
    for key, value in state_dict.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        match = _OLD_DENSE_LAYER_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def densenet121_cxr(num_outputs: int, weights: Optional[Union[str, os.PathLike]] = None) -> DenseNet:
    """DenseNet-121 with a new output layer, as the paper's chest X-ray models.

    Parameters
    ----------
    num_outputs : int
        Width of the new output layer.
    weights : path, optional
        A local state-dict file (nothing is downloaded): either a whole model
        of this shape, or DenseNet-121 weights with another head (e.g.
        torchvision's ImageNet file), of which the features are loaded and the
        new head is left randomly initialised. ``module.`` prefixes and old
        torchvision key names are accepted.

    Returns
    -------
    torchvision.models.DenseNet
        Input (N, 3, H, W), H, W >= 32 (224 as the paper); output (N, num_outputs).
    """
    _check_outputs(num_outputs)
    model = densenet121(weights=None)
    model.classifier = nn.Linear(model.classifier.in_features, num_outputs)
    if weights is None:
        return model
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights: no file at {os.fspath(weights)!r}")
    state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]  # a training checkpoint wrapping the weights
    state_dict = _normalise_keys(state_dict)
    expected = model.state_dict()
    if state_dict.get("classifier.weight", expected["classifier.weight"]).shape != expected["classifier.weight"].shape:
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith("classifier.")}
    missing = [key for key in expected if key not in state_dict and not key.startswith("classifier.")]
    unexpected = [key for key in state_dict if key not in expected]
    misshapen = [key for key, value in state_dict.items() if key in expected and value.shape != expected[key].shape]
    if missing or unexpected or misshapen:
        raise ValueError(
            f"weights: {os.fspath(weights)!r} does not fit DenseNet-121: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(misshapen)} misshapen tensors "
            f"(e.g. {(missing + unexpected + misshapen)[:3]})"
        )
    model.load_state_dict(state_dict, strict=False)
    return model
