"""BrixIA-like severity of the phantom: six lung zones, each scored 0-3.

Each lung field is cut into three zones of equal height (A, B, C in the
image-left lung, top to bottom; D, E, F in the image-right lung), so the zones
tile the lung fields exactly. A zone's score is drawn as an opacity of matching
strength inside the zone and nowhere else, following BrixIA's definitions:
1 interstitial infiltrates (reticular lines), 2 interstitial and alveolar
infiltrates (lines and patches), 3 predominantly alveolar (dense consolidation).
"""

from __future__ import annotations

import numpy as np

from ._shapes import Array, noise_field, patches, ridges
from .anatomy import Anatomy
from ..schema import ZONES

__all__ = ["zone_masks", "sample_zone_scores", "draw_zone_opacities"]


def zone_masks(anatomy: Anatomy) -> Array:
    """The six zones A-F of the anatomy's lung fields.

    Returns
    -------
    ndarray, shape (6, H, W), bool
        Disjoint masks whose union is the lung fields.
    """
    rows = np.arange(anatomy.x.shape[0])[:, None]
    masks = []
    for lung_mask in anatomy.lung_masks:
        filled = np.flatnonzero(lung_mask.any(axis=1))
        top, height = filled[0], filled[-1] + 1 - filled[0]
        thirds = (rows - top) * 3 // height  # 0, 1, 2 from the apex down
        masks.extend(lung_mask & (thirds == k) for k in range(3))
    return np.stack(masks)


def sample_zone_scores(rng: np.random.Generator) -> Array:
    """Random zone scores with realistic structure.

    A patient-level severity sets the overall level; lower zones tend to score
    higher than upper ones (as in COVID-19 pneumonia), with per-zone noise.

    Returns
    -------
    ndarray, shape (6,), int64 in 0-3
    """
    severity = rng.uniform(0.0, 1.0)
    basal_tilt = np.tile([-0.35, 0.0, 0.35], 2)
    level = 3.4 * severity - 0.2 + basal_tilt + rng.normal(0.0, 0.7, size=len(ZONES))
    return np.clip(np.rint(level), 0, 3).astype(np.int64)


def draw_zone_opacities(anatomy: Anatomy, masks: Array, scores: Array, rng: np.random.Generator) -> Array:
    """Density change of the zones' opacities.

    Parameters
    ----------
    anatomy : Anatomy
    masks : ndarray, shape (6, H, W), bool
        From :func:`zone_masks`.
    scores : ndarray, shape (6,), ints 0-3
    rng : numpy Generator
        Texture of the opacities; drawn the same whatever the scores, so that
        changing one zone's score changes that zone only.

    Returns
    -------
    ndarray, shape (H, W)
        Zero outside the zones with a score above 0.
    """
    size = anatomy.x.shape[0]
    reticular = ridges(noise_field(rng, size, 0.01), 0.35)
    alveolar = patches(noise_field(rng, size, 0.015), 0.5)
    score_map = np.zeros(anatomy.x.shape, dtype=np.intp)
    for mask, score in zip(masks, scores):
        score_map[mask] = score
    # Fraction of the local lung air replaced, per score 0-3: a base level plus
    # reticular lines (interstitial) and patches (alveolar).
    base = np.array([0.0, 0.12, 0.3, 0.65], dtype=np.float32)[score_map]
    lines = np.array([0.0, 0.4, 0.25, 0.0], dtype=np.float32)[score_map]
    filling = np.array([0.0, 0.0, 0.35, 0.3], dtype=np.float32)[score_map]
    return (base + lines * reticular + filling * alveolar) * anatomy.air
