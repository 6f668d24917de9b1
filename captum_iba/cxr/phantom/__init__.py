"""The ground-truth phantom: synthetic chest X-rays whose findings, zones and cue are known pixel by pixel.

:mod:`.dataset` (:class:`PhantomCXR`, the images and labels) draws each image
from :mod:`.anatomy` (lungs, heart), :mod:`.findings` (the eight findings'
lesions), :mod:`.zones` (BrixIA's six lung zones and their opacities) and
:mod:`._shapes` (the drawing primitives); :mod:`.cue` holds the side-marker
cue and the intervention that tests what a model uses.
"""

from .dataset import DEFAULT_CUE_RATES, DEFAULT_PREVALENCE, DEFAULT_SIZE, PHANTOM_VERSION, PhantomCXR

__all__ = ["PhantomCXR", "DEFAULT_SIZE", "DEFAULT_PREVALENCE", "DEFAULT_CUE_RATES", "PHANTOM_VERSION"]
