"""torchxrayvision classifiers by name, from the local torchxrayvision cache only.

torchxrayvision (an optional extra: ``pip install 'captum-iba[xrv]'``) fetches
its weights on first use; here they are only ever read from its cache folder
(``~/.torchxrayvision/models_data`` by default): when the file is absent, the
error names it, and its download function is disabled while the model is
built. Its conventions (one grey channel, values in [-1024, 1024], 224 px, 18
named outputs) are applied by :func:`captum_iba.cxr.models.external.external_model`.
"""

from __future__ import annotations

import difflib
import os
import types
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["xrv_model", "xrv_weights_path"]


def _import_xrv():
    try:
        with warnings.catch_warnings():  # it silences every warning of the process on import
            import torchxrayvision
    except ImportError:
        raise ImportError(
            "torchxrayvision models need the optional extra: pip install 'captum-iba[xrv]'"
        ) from None
    return torchxrayvision


def _xrv_entry(xrv, name: str) -> dict:
    known = [key for key in xrv.models.model_urls if "-" in key]
    if name not in xrv.models.model_urls:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; close: {', '.join(close)}" if close else f"; known: {', '.join(known)}"
        raise ValueError(f"model 'xrv:{name}': not a torchxrayvision model{hint}")
    return xrv.models.model_urls[name]


def xrv_weights_path(name: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Where torchxrayvision keeps the weights of model ``name`` (the file may not exist).

    Parameters
    ----------
    name : str
        A torchxrayvision weights name, e.g. ``"densenet121-res224-all"``.
    cache_dir : path, optional
        Its cache folder (default: torchxrayvision's, ``~/.torchxrayvision/models_data``).
    """
    xrv = _import_xrv()
    url = _xrv_entry(xrv, name)["weights_url"]
    folder = Path(os.fspath(cache_dir) if cache_dir is not None else xrv.utils.get_cache_dir()).expanduser()
    return folder / os.path.basename(url)


def _no_download(*args, **kwargs):
    raise RuntimeError("captum_iba does not download torchxrayvision weights")


def _pooled_features(self, x: torch.Tensor) -> torch.Tensor:
    """torchxrayvision DenseNet's ``features2`` with an out-of-place ReLU.

    Its own ReLU after ``features.norm5`` works in place, which breaks tools
    that hook that layer's output (TorchRay's Grad-CAM).
    """
    return F.adaptive_avg_pool2d(F.relu(self.features(x)), (1, 1)).flatten(1)


def xrv_model(name: str, *, pretrained: bool = True, cache_dir=None) -> nn.Module:
    """A torchxrayvision classifier by weights name, set to output logits.

    Parameters
    ----------
    name : str
        E.g. ``"densenet121-res224-all"`` or ``"resnet50-res512-all"``.
    pretrained : bool
        Load the weights from the local torchxrayvision cache (never
        downloaded). False: random weights with the named model's outputs
        (DenseNets only; for tests and dry runs).
    cache_dir : path, optional
        The cache folder, if not torchxrayvision's default.

    Returns
    -------
    nn.Module
        In eval mode, with ``pathologies`` (its output names) and
        ``input_size`` (the resolution it was trained at). Its operating-point
        calibration is switched off, so it outputs logits; its own resizing is
        left to :class:`~captum_iba.cxr.models.external.ExternalModel` (so that the
        forward traces); a DenseNet's final ReLU is made out-of-place.

    Raises
    ------
    FileNotFoundError
        If the weights are not in the cache: the message names the file.
    """
    xrv = _import_xrv()
    entry = _xrv_entry(xrv, name)
    resnet = name.startswith("resnet")
    if pretrained:
        path = xrv_weights_path(name, cache_dir)
        if not path.is_file():
            raise FileNotFoundError(
                f"model 'xrv:{name}': its weights are not in the torchxrayvision cache: looked for {str(path)!r}. "
                "Nothing is downloaded: copy the file there from a machine where torchxrayvision fetched it"
            )
        download, xrv.utils.download = xrv.utils.download, _no_download
        try:
            with warnings.catch_warnings():
                model = (xrv.models.ResNet if resnet else xrv.models.DenseNet)(weights=name, cache_dir=str(path.parent))
        finally:
            xrv.utils.download = download
    elif resnet:
        raise ValueError(f"model 'xrv:{name}': random weights (pretrained=False) are available for DenseNets only")
    else:
        model = xrv.models.DenseNet(weights=None, num_classes=len(entry["labels"]))
    if not resnet:
        model.features2 = types.MethodType(_pooled_features, model)
    model.op_threshs = None
    model.apply_sigmoid = False
    if "input_resolution" in vars(model):
        del model.input_resolution  # ExternalModel resizes; xrv's own check does not trace
    model.pathologies = list(entry["labels"])
    model.input_size = int(entry.get("input_resolution", 224))
    return model.eval()
