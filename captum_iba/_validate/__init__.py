"""Argument validation shared by the attributions and the metrics: one place, one wording.

Every function checks one argument and returns it in the form the library
computes with, or raises a ``TypeError`` / ``ValueError`` that names the
argument and says what was expected.

Targets follow Captum's ``TargetType`` exactly (``captum._utils.common.
_select_targets``): for a batch of N samples,

* ``int`` (or a one-element integer tensor): ``output[:, t]`` for every sample;
* ``tuple`` of ints: one index into a multi-dimensional output, ``output[:, i, j]``
  for every sample (not a per-sample list);
* 1-D integer tensor or list of ints with N entries: ``output[k, t_k]``;
* list of N tuples: ``output[(k, *t_k)]``.

Indices follow Python's indexing (``-1`` is the last output). Booleans are
refused in every form: ``True`` is not an output index.
"""

from .core import *  # noqa: F401,F403
from .core import SEED_RANGE
from .core import __all__ as _core_names
from .metrics import (BASELINES, check_baseline, check_finite, check_fraction, check_images, check_labels,
                      check_max_examples, check_output_transform, check_same_batch)

__all__ = [*_core_names, "SEED_RANGE", "BASELINES", "check_baseline", "check_finite", "check_fraction", "check_images",
           "check_labels", "check_max_examples", "check_output_transform", "check_same_batch"]
