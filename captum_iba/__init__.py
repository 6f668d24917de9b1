"""Information Bottleneck Attribution and its chest X-ray extensions as Captum methods."""

from ._engine import Speed, token_transform
from .attr import IBA, InverseIBA, MultiLayerIBA, ReadoutIBA, RegressionIBA
from .stats import FeatureStats

__all__ = ["IBA", "InverseIBA", "RegressionIBA", "MultiLayerIBA", "ReadoutIBA", "FeatureStats", "Speed",
           "token_transform"]
__version__ = "0.1.0"
