"""Chest X-ray data and models: a ground-truth phantom (the embedded default),
readers for NIH ChestX-ray8 and BrixIA, DenseNets, training and evaluation.

Nothing is downloaded: the phantom is the default everywhere, real data is read
from a folder the user names, a user's own model comes from their factory or
torchxrayvision's local cache (:func:`external_model`), and the embedded models are trained on the
phantom on first use and cached (see :func:`load_embedded_model`).
"""

from .datasets.folders import MissingImagesWarning
from .datasets.brixia import BrixIA
from .models.adapters import InputFormat, parse_input_format, parse_outputs
from .models.embedded import EMBEDDED_MODELS, embedded_model_path, load_embedded_model
from .models.external import ExternalModel, external_model, load_weights, model_from_factory, wrap_model
from .models.layers import bottleneck_candidates, default_bottleneck
from .models.densenets import densenet121_cxr, small_densenet
from .datasets.nih import NIHChestXray8
from .phantom.dataset import DEFAULT_PREVALENCE, DEFAULT_SIZE, PhantomCXR
from .schema import DETECTORS, FINDINGS, IMAGE_MEAN, IMAGE_STD, ZONES, collate, to_grey, to_model_input
from .models.training import LOSSES, evaluate, fit, positive_weights
from .models.xrv import xrv_model, xrv_weights_path

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
    "bottleneck_candidates",
    "default_bottleneck",
]
