"""The speed machinery the bottleneck loop calls, kept apart from the algorithm.

* :mod:`.frozen` -- the model behind ``forward_func``, frozen and restored exactly;
* :mod:`.split` -- the traced prefix/suffix split of the model at the layer, and the hook fallback;
* :mod:`.layouts` -- where a layer's output holds its grid: ``(N, C, h, w)``, ``(N, h, w, C)``, tokens;
* :mod:`.mix` -- the noise mixing of N x draws maps on one reused buffer;
* :mod:`.fuse` -- exact rewrites of the suffix (BatchNorm as multiply-add, pool moves, folds);
* :mod:`.engine` -- :class:`Engine`, one step's ``phi(Z)``, and :class:`Speed`, its options.
"""

from .engine import SPEEDS, TOLERANCES, Engine, Speed, as_speed, channels_last_refusal, compiled_count
from .frozen import frozen_model, owning_module
from .layouts import Layout, find_layout, token_transform
from .mix import noisy_features
from .split import LayerReusedError, capture_layer_outputs, make_split

__all__ = ["Engine", "Speed", "SPEEDS", "TOLERANCES", "as_speed", "channels_last_refusal", "compiled_count",
           "frozen_model", "owning_module", "Layout", "find_layout", "token_transform",
           "noisy_features", "LayerReusedError", "capture_layer_outputs", "make_split"]
