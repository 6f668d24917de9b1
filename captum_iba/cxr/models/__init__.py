"""Chest X-ray models: the architectures, their training, the embedded models and the user's own.

:mod:`.densenets` (the paper's DenseNet-121 and a small DenseNet),
:mod:`.training` (fit / evaluate), :mod:`.checkpoints` (what a saved model
explains), :mod:`.embedded` (models trained on the phantom on first use and
cached by :mod:`._cache`), :mod:`.external` (a user's factory, their weights,
torchxrayvision via :mod:`.xrv`), :mod:`.adapters` (input formats and output
names) and :mod:`.layers` (where the bottleneck goes by default).
"""

from .densenets import densenet121_cxr, small_densenet
from .embedded import EMBEDDED_MODELS, embedded_model_path, load_embedded_model
from .external import ExternalModel, external_model
from .training import evaluate, fit

__all__ = ["densenet121_cxr", "small_densenet", "EMBEDDED_MODELS", "embedded_model_path", "load_embedded_model",
           "ExternalModel", "external_model", "fit", "evaluate"]
