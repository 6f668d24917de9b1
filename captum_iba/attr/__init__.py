"""Captum layer attributions built on the information bottleneck.

``iba.py`` holds IBA and the call every variant shares, ``_loop.py`` the
optimisation as the paper states it, ``options.py`` every option and default;
``inverse.py`` and ``regression.py`` differ from IBA in one formula each;
``multilayer.py`` combines IBAs at several layers; ``readout.py`` learns the
bottleneck instead of optimising it per sample.
"""

from .iba import IBA
from .inverse import InverseIBA
from .multilayer import MultiLayerIBA, combine_layer_maps
from .options import BottleneckOptions, IBAOptions, ReadoutOptions
from .readout import ReadoutIBA
from .regression import RegressionIBA

__all__ = ["BottleneckOptions", "IBAOptions", "ReadoutOptions", "IBA", "InverseIBA", "MultiLayerIBA", "ReadoutIBA",
           "RegressionIBA", "combine_layer_maps"]
