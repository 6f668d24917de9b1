"""The normal chest of the phantom, as a map of X-ray density.

Density is in units of soft tissue (1 = a patient-thick slab of soft tissue,
0 = air outside the body). An aerated lung removes :data:`AIR` of it, bones
add to it. Every shape is drawn in the patient's pose coordinates (see
:func:`~captum_iba.cxr.phantom._shapes.warped_grid`), so anatomy varies between images
in position, size and proportions.

The image is a posterior-anterior view as radiologists read it: the patient's
right lung on the image's left, the heart bulging to the image's right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Tuple

import numpy as np

from ._shapes import Array, Ellipse, noise_field, periodic_bands, plateau, ridges, segment_distance, warped_grid

__all__ = ["AIR", "HEART_DENSITY", "Lung", "Heart", "Anatomy", "draw_anatomy"]

#: Density an aerated lung removes from the soft tissue it lies in.
AIR = 0.75

#: Density the heart adds over the soft tissue around it (blood-filled chambers).
HEART_DENSITY = 0.1


@dataclass(frozen=True)
class Lung:
    """One lung field: an egg-shaped outline (narrow apex) cut from below by the diaphragm.

    ``side`` is 0 for the image's left (the patient's right lung), 1 for the
    image's right. ``(cx, cy)`` is the outline's centre, ``a`` its half-width at
    mid-height, ``b`` its half-height; the diaphragm is lowest (``dome_base``) at
    the costophrenic angle and ``dome_height`` higher at the dome's top.
    """

    side: int
    cx: float
    cy: float
    a: float
    b: float
    dome_base: float
    dome_height: float

    @property
    def lateral(self) -> float:
        """+1 if the lung's lateral (chest-wall) side is towards larger x, else -1."""
        return 1.0 if self.side == 1 else -1.0

    def half_width(self, y: Array) -> Array:
        """Half-width of the outline at height ``y``: narrow at the apex, widest at the base."""
        t = (y - self.cy) / self.b
        return self.a * np.maximum(0.85 + 0.2 * t, 0.05)

    def radius(self, x: Array, y: Array) -> Array:
        """Normalised radius of the outline: 0 at its centre, 1 on the outline."""
        t = (y - self.cy) / self.b
        u = (x - self.cx) / self.half_width(y)
        return np.sqrt(u * u + t * t)

    def diaphragm(self, x: Array) -> Array:
        """Height ``y`` of the diaphragm's upper surface below the lung."""
        u = (x - self.cx) / (1.1 * self.a)
        return self.dome_base - self.dome_height * np.clip(1.0 - u * u, 0.0, 1.0)

    def field(self, x: Array, y: Array) -> Tuple[Array, Array]:
        """The lung field: a soft indicator in [0, 1] and the mask outside which it is 0."""
        radius, floor = self.radius(x, y), self.diaphragm(x)
        soft = plateau(radius, 0.06) * np.clip((floor - y) / 0.012, 0.0, 1.0)
        return soft, (radius < 1.0) & (y < floor)

    def inside(self, x: float, y: float, margin: float) -> bool:
        """Whether the point lies in the field with ``margin`` (normalised units) to spare."""
        clear_of_outline = self.radius(x, y) < 1.0 - margin / self.half_width(y)
        return bool(clear_of_outline and y < self.diaphragm(x) - margin)


@dataclass(frozen=True)
class Heart:
    """The cardiac silhouette: an ellipse whose part below ``floor`` is hidden by the diaphragm."""

    outline: Ellipse
    floor: float

    def profile(self, x: Array, y: Array) -> Array:
        """Soft silhouette in [0, 1], exactly 0 outside :meth:`contains`."""
        above_floor = np.clip((self.floor - y) / 0.02, 0.0, 1.0)
        return plateau(self.outline.radius(x, y), 0.12) * above_floor

    def contains(self, x: Array, y: Array) -> Array:
        """Whether points lie in the visible silhouette."""
        return (self.outline.radius(x, y) < 1.0) & (y < self.floor)

    def enlarged(self, sx: float, sy: float) -> "Heart":
        """The heart grown about its centre (it stays on the same diaphragm)."""
        return replace(self, outline=self.outline.scaled(sx, sy))


@dataclass(frozen=True)
class Anatomy:
    """A drawn normal chest.

    Attributes
    ----------
    x, y : ndarray, shape (H, W)
        Pose coordinates of every pixel.
    lungs : (Lung, Lung)
        Image-left (patient's right) and image-right lung.
    heart : Heart
    lung_masks : ndarray, shape (2, H, W), bool
        The visible lung fields (inside the outline, above the diaphragm, not
        fully hidden by the heart), image-left lung first.
    lung_profile : ndarray, shape (H, W)
        Soft indicator of both lung outlines, heart included, in [0, 1].
    heart_shadow : ndarray, shape (H, W)
        Soft cardiac silhouette in [0, 1] (see :meth:`Heart.profile`).
    vessels : ndarray, shape (H, W)
        Density of the vessels and bronchi in the lung outlines, heart ignored.
    air : ndarray, shape (H, W)
        Density removed by the air in the lungs where the heart does not hide them.
    markings : ndarray, shape (H, W)
        The visible part of ``vessels`` ("lung markings").
    density : ndarray, shape (H, W)
        Total density of the normal chest.
    """

    x: Array
    y: Array
    lungs: Tuple[Lung, Lung]
    heart: Heart
    lung_masks: Array
    lung_profile: Array
    heart_shadow: Array
    vessels: Array
    air: Array
    markings: Array
    density: Array


def _lungs(rng: np.random.Generator) -> Tuple[Lung, Lung]:
    """Two lung fields at the same height, each with its own width, position and dome."""
    cy = 0.46 + rng.uniform(-0.015, 0.015)
    b = rng.uniform(0.31, 0.34)
    lungs = []
    for side, lateral in ((0, -1.0), (1, 1.0)):
        lungs.append(
            Lung(
                side=side,
                cx=0.5 + lateral * rng.uniform(0.195, 0.215),
                cy=cy,
                a=rng.uniform(0.155, 0.175),
                b=b,
                # The right hemidiaphragm (image left) sits higher than the left.
                dome_base=cy + 0.85 * b - (0.025 if side == 0 else 0.0),
                dome_height=rng.uniform(0.06, 0.09),
            )
        )
    return lungs[0], lungs[1]


def _ribs(x: Array, y: Array, rng: np.random.Generator) -> Array:
    """Posterior ribs: bands curving down and out from the spine, within the rib cage."""
    spacing = rng.uniform(0.062, 0.072)
    phase = rng.uniform(0.0, spacing)
    lateral = np.abs(x - 0.5)
    v = (y - phase - 1.1 * lateral**2) / spacing
    bands = periodic_bands(v, 0.19)
    cage = plateau(Ellipse(0.5, 0.47, 0.41, 0.42).radius(x, y), 0.08)
    off_spine = np.clip((lateral - 0.03) / 0.02, 0.0, 1.0)
    return 0.12 * bands * cage * off_spine


def _clavicles(x: Array, y: Array, rng: np.random.Generator) -> Array:
    """Two bony bars rising from the top of the sternum out to the shoulders."""
    height = rng.uniform(0.08, 0.12)
    density = np.zeros_like(x)
    for lateral in (-1.0, 1.0):
        start = (0.5 + lateral * 0.05, height + 0.07)
        end = (0.5 + lateral * 0.31, height)
        density = np.maximum(density, plateau(segment_distance(x, y, start, end) / 0.017, 0.4))
    return 0.25 * density


def draw_anatomy(size: int, rng: np.random.Generator) -> Anatomy:
    """Draw a random normal chest.

    Parameters
    ----------
    size : int
        Image side in pixels.
    rng : numpy Generator
        Source of all the anatomy's randomness.

    Returns
    -------
    Anatomy
    """
    x, y = warped_grid(size, rng)
    lungs = _lungs(rng)
    # The heart rests on the left hemidiaphragm's dome, bulging towards the image's right.
    dome_top = lungs[1].dome_base - lungs[1].dome_height
    outline = Ellipse(
        cx=0.555 + rng.uniform(-0.015, 0.015),
        cy=dome_top - rng.uniform(0.06, 0.08),
        ax=rng.uniform(0.14, 0.155),
        ay=rng.uniform(0.11, 0.125),
        angle=math.radians(rng.uniform(15.0, 28.0)),
    )
    heart = Heart(outline, floor=dome_top + 0.01)

    body = plateau(Ellipse(0.5, 0.62, rng.uniform(0.45, 0.49), 0.66).radius(x, y), 0.06)
    soft_tissue = body * (1.0 + 0.06 * noise_field(rng, size, 0.08))
    heart_shadow = heart.profile(x, y)
    (right_soft, right_mask), (left_soft, left_mask) = (lung.field(x, y) for lung in lungs)
    lung_profile = np.maximum(right_soft, left_soft)
    air = AIR * lung_profile * (1.0 - heart_shadow)

    hila = [Ellipse(lung.cx - lung.lateral * 0.5 * lung.a, lung.cy, 0.15, 0.15) for lung in lungs]
    near_hilum = np.maximum(*[plateau(hilum.radius(x, y) / 3.0, 1.0) for hilum in hila])
    vessels = 0.12 * ridges(noise_field(rng, size, 0.008), 0.3) * (0.55 + 0.45 * near_hilum) * lung_profile
    markings = vessels * (1.0 - heart_shadow)

    lateral = np.abs(x - 0.5)
    spine = 0.3 * plateau(lateral / 0.036, 0.3) * (0.85 + 0.15 * periodic_bands(y / 0.055, 0.3))
    trachea = 0.3 * plateau(lateral / 0.02, 0.5) * np.clip((0.3 - y) / 0.03, 0.0, 1.0)
    stomach = Ellipse(lungs[1].cx + 0.03, lungs[1].dome_base + 0.06, 0.05, 0.03)
    gastric_bubble = 0.4 * plateau(stomach.radius(x, y), 0.3) * (rng.random() < 0.7)

    density = (
        soft_tissue
        + HEART_DENSITY * heart_shadow
        + spine
        + _ribs(x, y, rng)
        + _clavicles(x, y, rng)
        - air
        + markings
        - trachea
        - gastric_bubble
    )
    # The lung fields reach behind the heart's soft edge, where some air still shows.
    outside_heart = heart_shadow < 1.0
    lung_masks = np.stack([right_mask & outside_heart, left_mask & outside_heart])
    return Anatomy(x, y, lungs, heart, lung_masks, lung_profile, heart_shadow, vessels, air, markings, density)
