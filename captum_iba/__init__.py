"""Information Bottleneck Attribution and its chest X-ray extensions as Captum methods."""

from .attr import IBA, InverseIBA, MultiLayerIBA, RegressionIBA
from .stats import FeatureStats

__all__ = ["IBA", "InverseIBA", "RegressionIBA", "MultiLayerIBA", "FeatureStats"]
__version__ = "0.1.0"
