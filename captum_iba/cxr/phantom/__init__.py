"""The ground-truth phantom: synthetic chest X-rays whose findings, zones, cue and parts are known pixel by pixel.

:mod:`.dataset` (:class:`PhantomCXR`, the images and labels) draws each image
from :mod:`.anatomy` (lungs, heart), :mod:`.findings` (the eight findings'
lesions, whole or in two parts), :mod:`.zones` (BrixIA's six lung zones and
their opacities) and :mod:`._shapes` (the drawing primitives); :mod:`.cue`
holds the side-marker cue and the intervention that tests what a model uses,
:mod:`.parts` the interventions on two-part findings (sufficient against all
evidence).
"""

from .dataset import (BOTH_PARTS_RATE, DECOY_RATE, DEFAULT_CUE_RATES, DEFAULT_PREVALENCE, DEFAULT_SIZE,
                      PHANTOM_VERSION, PhantomCXR)

__all__ = ["PhantomCXR", "DEFAULT_SIZE", "DEFAULT_PREVALENCE", "DEFAULT_CUE_RATES", "PHANTOM_VERSION",
           "BOTH_PARTS_RATE", "DECOY_RATE"]
