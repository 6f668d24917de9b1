"""The eight NIH-like findings of the phantom, drawn as they look on a radiograph.

One engine draws them all: each finding is a small function that places one
or more *lesions* in the anatomy and returns, for each, the change of density
it causes and its support (the pixels it may change). The engine zeroes the
change outside the support, so a finding's mask (the union of its lesions'
supports) holds every pixel it changed, and its boxes (one per lesion) enclose
them. Some findings come in two places (bilateral effusion, two nodules), so
that "all informative regions" can be told apart from "a sufficient region".

Opacities are written as the fraction of the local lung air they replace
(1 = as dense as soft tissue, above 1 denser), so they only show where there
is lung to fill, as on a real film.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Tuple

import numpy as np

from ._shapes import Array, Ellipse, bounding_box, noise_field, patches, plateau, ridges
from .anatomy import AIR, HEART_DENSITY, Anatomy, Lung
from ..schema import FINDINGS

__all__ = ["FindingsDrawing", "draw_findings"]

#: One lesion: (density change, support), both of shape (H, W).
Lesion = Tuple[Array, Array]


def _place(
    anatomy: Anatomy, rng: np.random.Generator, margin: float, heights: Tuple[float, float]
) -> Tuple[Lung, float, float]:
    """A random point well inside one of the lung fields (outside the heart).

    ``heights`` bounds the point's height in units of the lung's half-height
    from its centre (-1 apex, +1 base); ``margin`` is the clearance to the
    field's edges in normalised units.
    """
    heart = anatomy.heart.outline
    for _ in range(100):
        lung = anatomy.lungs[rng.integers(2)]
        y = lung.cy + rng.uniform(*heights) * lung.b
        x = lung.cx + rng.uniform(-0.75, 0.75) * float(lung.half_width(y))
        clear_of_heart = heart.radius(x, y) > 1.0 + margin / min(heart.ax, heart.ay)
        if clear_of_heart and lung.inside(x, y, margin):
            return lung, x, y
    raise RuntimeError("could not place a lesion in the lung fields; the anatomy is degenerate")


def _airspace(anatomy: Anatomy, opacity: Array, support: Array, lung: Lung) -> Lesion:
    """An opacity filling the air of one lung field (``opacity`` of the local air)."""
    return opacity * anatomy.air, support & anatomy.lung_masks[lung.side]


def _atelectasis(anatomy: Anatomy, rng: np.random.Generator) -> List[Lesion]:
    """Plate-like atelectasis: a thin dense band in a lower zone."""
    lung, x, y = _place(anatomy, rng, margin=0.04, heights=(0.0, 0.55))
    band = Ellipse(x, y, rng.uniform(0.06, 0.09), rng.uniform(0.013, 0.018), math.radians(rng.uniform(-20, 20)))
    radius = band.radius(anatomy.x, anatomy.y)
    return [_airspace(anatomy, 0.95 * plateau(radius, 0.5), radius < 1.0, lung)]


def _cardiomegaly(anatomy: Anatomy, rng: np.random.Generator) -> List[Lesion]:
    """An enlarged heart shadow: the cardiac silhouette grown about its centre."""
    enlarged = anatomy.heart.enlarged(rng.uniform(1.4, 1.6), rng.uniform(1.15, 1.25))
    grown = enlarged.profile(anatomy.x, anatomy.y) - anatomy.heart_shadow
    # The density a heart pixel has over an aerated-lung pixel (see draw_anatomy).
    over_lung = HEART_DENSITY + AIR * anatomy.lung_profile - anatomy.vessels
    return [(grown * over_lung, enlarged.contains(anatomy.x, anatomy.y))]


def _effusion(anatomy: Anatomy, rng: np.random.Generator) -> List[Lesion]:
    """Pleural fluid at a lung base (both bases in 40 %), under a meniscus rising laterally."""
    sides = anatomy.lungs if rng.random() < 0.4 else [anatomy.lungs[rng.integers(2)]]
    lesions = []
    for lung in sides:
        depth = rng.uniform(0.09, 0.2)
        towards_wall = np.clip(((anatomy.x - lung.cx) * lung.lateral / lung.a + 1.0) / 2.0, 0.0, 1.0)
        meniscus = lung.dome_base - depth - 0.07 * towards_wall**2
        fluid = np.clip((anatomy.y - meniscus) / 0.025, 0.0, 1.0)
        lesions.append(_airspace(anatomy, fluid, fluid > 0.0, lung))
    return lesions


def _infiltration(anatomy: Anatomy, rng: np.random.Generator) -> List[Lesion]:
    """Patchy, ill-defined opacities scattered over part of a lung."""
    lung, x, y = _place(anatomy, rng, margin=0.05, heights=(-0.5, 0.55))
    area = Ellipse(x, y, rng.uniform(0.07, 0.1), rng.uniform(0.09, 0.13))
    radius = area.radius(anatomy.x, anatomy.y)
    spots = patches(noise_field(rng, anatomy.x.shape[0], 0.012), 0.45)
    return [_airspace(anatomy, 0.65 * plateau(radius, 0.4) * spots, radius < 1.0, lung)]


def _round_opacity(anatomy: Anatomy, rng: np.random.Generator, radius: float, lobulation: float) -> Lesion:
    """A dense, well-defined round opacity (lobulated when ``lobulation`` > 0) in a lung."""
    lung, x, y = _place(anatomy, rng, margin=radius + 0.01, heights=(-0.65, 0.55))
    angle = np.arctan2(anatomy.y - y, anatomy.x - x)
    phase3, phase5 = (float(phase) for phase in rng.uniform(0, 2 * np.pi, size=2))
    outline = 1.0 + lobulation * (np.sin(3 * angle + phase3) + 0.5 * np.sin(5 * angle + phase5))
    rel_radius = Ellipse(x, y, radius, radius).radius(anatomy.x, anatomy.y) / outline
    return _airspace(anatomy, 1.3 * plateau(rel_radius, 0.3), rel_radius < 1.0, lung)


def _mass(anatomy: Anatomy, rng: np.random.Generator) -> List[Lesion]:
    """A large (over 3 cm) lobulated opacity."""
    return [_round_opacity(anatomy, rng, rng.uniform(0.05, 0.075), lobulation=0.1)]


def _nodule(anatomy: Anatomy, rng: np.random.Generator) -> List[Lesion]:
    """A small round opacity (two of them in 40 % of the cases)."""
    count = 2 if rng.random() < 0.4 else 1
    return [_round_opacity(anatomy, rng, rng.uniform(0.018, 0.026), lobulation=0.0) for _ in range(count)]


def _pneumonia(anatomy: Anatomy, rng: np.random.Generator) -> List[Lesion]:
    """Consolidation: a dense, fluffy-edged opacity with air bronchograms."""
    lung, x, y = _place(anatomy, rng, margin=0.06, heights=(-0.2, 0.5))
    size = anatomy.x.shape[0]
    area = Ellipse(x, y, rng.uniform(0.09, 0.12), rng.uniform(0.08, 0.11))
    radius = area.radius(anatomy.x, anatomy.y) / (1.0 + 0.12 * noise_field(rng, size, 0.03))
    bronchograms = ridges(noise_field(rng, size, 0.01), 0.25)
    return [_airspace(anatomy, 0.95 * plateau(radius, 0.3) * (1.0 - 0.5 * bronchograms), radius < 1.0, lung)]


def _pneumothorax(anatomy: Anatomy, rng: np.random.Generator) -> List[Lesion]:
    """Air around a collapsed lung: a lucent apical-lateral rim without lung markings.

    The rim lies between the chest wall and the visceral pleura, which shows as
    a thin white line at the rim's inner border.
    """
    lung = anatomy.lungs[rng.integers(2)]
    collapse = rng.uniform(0.72, 0.84)
    radius = lung.radius(anatomy.x, anatomy.y)
    apical = anatomy.y < lung.cy - 0.4 * lung.b
    lateral = (anatomy.x - lung.cx) * lung.lateral > 0.0
    rim = (radius > collapse) & (anatomy.y < lung.cy + 0.3 * lung.b) & (apical | lateral)
    pleura = np.clip(1.0 - (radius - collapse) / 0.05, 0.0, 1.0)
    lucency = -(anatomy.markings + 0.15 * anatomy.lung_profile)
    return [(lucency * (1.0 - pleura) + 0.15 * pleura, rim & anatomy.lung_masks[lung.side])]


_DRAWERS: Dict[str, Callable[[Anatomy, np.random.Generator], List[Lesion]]] = {
    "Atelectasis": _atelectasis,
    "Cardiomegaly": _cardiomegaly,
    "Effusion": _effusion,
    "Infiltration": _infiltration,
    "Mass": _mass,
    "Nodule": _nodule,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
}
assert tuple(_DRAWERS) == FINDINGS


@dataclass(frozen=True)
class FindingsDrawing:
    """The drawn findings of one image.

    Attributes
    ----------
    density : ndarray, shape (H, W)
        Density change caused by all findings together.
    masks : ndarray, shape (8, H, W), bool
        Per finding (order of :data:`~captum_iba.cxr.schema.FINDINGS`), the
        pixels it changed; empty for absent findings.
    boxes : list of (str, float, float, float, float)
        ``(finding, x, y, w, h)`` in pixels, one per lesion.
    """

    density: Array
    masks: Array
    boxes: List[Tuple[str, float, float, float, float]]


def draw_findings(anatomy: Anatomy, rngs: Mapping[str, np.random.Generator]) -> FindingsDrawing:
    """Draw findings into an anatomy.

    Parameters
    ----------
    anatomy : Anatomy
    rngs : mapping of finding name to numpy Generator
        The findings to draw, each with its own source of randomness (so that
        leaving one out does not change how the others look).

    Returns
    -------
    FindingsDrawing
    """
    shape = anatomy.x.shape
    density = np.zeros(shape, dtype=np.float32)
    masks = np.zeros((len(FINDINGS),) + shape, dtype=bool)
    boxes = []
    for name, rng in rngs.items():
        if name not in _DRAWERS:
            raise ValueError(f"finding: expected one of {FINDINGS}, got {name!r}")
        k = FINDINGS.index(name)
        for change, support in _DRAWERS[name](anatomy, rng):
            if not support.any():  # too small to cover a pixel at this size
                continue
            density += change * support
            masks[k] |= support
            boxes.append((name,) + bounding_box(support))
    return FindingsDrawing(density, masks, boxes)
