"""Captum layer attributions built on the per-sample information bottleneck."""

from ._base import BottleneckOptions
from .iba import IBA
from .inverse import InverseIBA
from .multilayer import MultiLayerIBA, combine_layer_maps
from .readout import ReadoutIBA
from .regression import RegressionIBA

__all__ = ["BottleneckOptions", "IBA", "InverseIBA", "MultiLayerIBA", "ReadoutIBA", "RegressionIBA",
           "combine_layer_maps"]
