"""Information Bottleneck Attribution and its chest X-ray extensions as Captum methods."""

import importlib

# Each name is imported on first use (PEP 562): importing a submodule, e.g. the command line,
# imports no torch until it needs it, so that the command handles Ctrl-C from its first moment.
_EXPORTS = {"IBA": ".attr", "InverseIBA": ".attr", "RegressionIBA": ".attr", "MultiLayerIBA": ".attr",
            "ReadoutIBA": ".attr", "FeatureStats": ".stats", "Speed": "._engine", "token_transform": "._engine"}

__all__ = ["IBA", "InverseIBA", "RegressionIBA", "MultiLayerIBA", "ReadoutIBA", "FeatureStats", "Speed",
           "token_transform"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
