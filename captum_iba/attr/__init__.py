"""Captum layer attributions built on the per-sample information bottleneck."""

from ._base import BottleneckOptions
from .iba import IBA
from .inverse import InverseIBA

__all__ = ["BottleneckOptions", "IBA", "InverseIBA"]
