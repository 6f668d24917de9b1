"""Chest X-ray data and models: a ground-truth phantom (the embedded default),
readers for NIH ChestX-ray8 and BrixIA, DenseNets, training and evaluation.

Nothing is downloaded: the phantom is the default everywhere, real data is read
from a folder the user names, and the embedded models are trained on the
phantom on first use and cached (see :func:`load_embedded_model`).
"""

from ._files import MissingImagesWarning
from .brixia import BrixIA
from .embedded import EMBEDDED_MODELS, embedded_model_path, load_embedded_model
from .models import densenet121_cxr, small_densenet
from .nih import NIHChestXray8
from .phantom import DEFAULT_PREVALENCE, DEFAULT_SIZE, PhantomCXR
from .schema import DETECTORS, FINDINGS, IMAGE_MEAN, IMAGE_STD, ZONES, collate, to_grey, to_model_input
from .training import LOSSES, evaluate, fit, positive_weights

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
]
