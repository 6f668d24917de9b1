"""Chest X-ray data and models: a ground-truth phantom (the embedded default),
readers for NIH ChestX-ray8 and BrixIA, DenseNets, training and evaluation.

Nothing is downloaded: the phantom is the default everywhere, real data is read
from a folder the user names, a user's own model comes from their factory or
torchxrayvision's local cache (:func:`external_model`), and the embedded models are trained on the
phantom on first use and cached (see :func:`load_embedded_model`).
"""

from ._files import MissingImagesWarning
from .brixia import BrixIA
from .adapters import InputFormat, parse_input_format, parse_outputs
from .embedded import EMBEDDED_MODELS, embedded_model_path, load_embedded_model
from .external import ExternalModel, external_model, load_weights, model_from_factory, wrap_model
from .layers import bottleneck_candidates, default_bottleneck, find_layer
from .models import densenet121_cxr, small_densenet
from .nih import NIHChestXray8
from .phantom import DEFAULT_PREVALENCE, DEFAULT_SIZE, PhantomCXR
from .schema import DETECTORS, FINDINGS, IMAGE_MEAN, IMAGE_STD, ZONES, collate, to_grey, to_model_input
from .training import LOSSES, evaluate, fit, positive_weights
from .xrv import xrv_model, xrv_weights_path

__all__ = [
    "PhantomCXR",
    "NIHChestXray8",
    "BrixIA",
    "MissingImagesWarning",
    "densenet121_cxr",
    "small_densenet",
    "fit",
    "evaluate",
    "positive_weights",
    "LOSSES",
    "load_embedded_model",
    "embedded_model_path",
    "EMBEDDED_MODELS",
    "DEFAULT_SIZE",
    "DEFAULT_PREVALENCE",
    "FINDINGS",
    "ZONES",
    "DETECTORS",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "collate",
    "to_model_input",
    "to_grey",
    "external_model",
    "model_from_factory",
    "load_weights",
    "wrap_model",
    "ExternalModel",
    "xrv_model",
    "xrv_weights_path",
    "InputFormat",
    "parse_input_format",
    "parse_outputs",
    "find_layer",
    "bottleneck_candidates",
    "default_bottleneck",
]
