"""The eight NIH-like findings of the phantom, drawn as they look on a radiograph.

One engine draws them all: each finding is a small function that places one
or more *lesions* in the anatomy and returns, for each, the change of density
it causes and its support (the pixels it may change). The engine zeroes the
change outside the support, so a finding's mask (the union of its lesions'
supports) holds every pixel it changed, and its boxes (one per lesion) enclose
them. Some findings come in two places (bilateral effusion, two nodules), so
that "all informative regions" can be told apart from "a sufficient region".

Every finding but Cardiomegaly lies in one lung and can also be drawn in
*parts* (``draw_findings(..., parts=)``): one lesion of its kind in each lung
named, each with its own randomness, so that a part can be left out without
changing the other. :class:`~captum_iba.cxr.PhantomCXR` uses them for findings
whose label needs either part (redundant evidence) or both (joint evidence).

Opacities are written as the fraction of the local lung air they replace
(1 = as dense as soft tissue, above 1 denser), so they only show where there
is lung to fill, as on a real film.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ._shapes import Array, Ellipse, bounding_box, noise_field, patches, plateau, ridges
from .anatomy import AIR, HEART_DENSITY, Anatomy, Lung
from ..schema import FINDINGS

__all__ = ["TWO_PART_FINDINGS", "FindingsDrawing", "draw_findings"]

#: One lesion: (density change, support), both of shape (H, W).
Lesion = Tuple[Array, Array]


def _place(
    anatomy: Anatomy, rng: np.random.Generator, margin: float, heights: Tuple[float, float],
    side: Optional[int] = None,
) -> Tuple[Lung, float, float]:
    """A random point well inside one of the lung fields (outside the heart).

    ``heights`` bounds the point's height in units of the lung's half-height
    from its centre (-1 apex, +1 base); ``margin`` is the clearance to the
    field's edges in normalised units; ``side`` picks the lung (0 image-left,
    1 image-right; None: either, at random).
    """
    heart = anatomy.heart.outline
    for _ in range(100):
        lung = anatomy.lungs[rng.integers(2) if side is None else side]
        y = lung.cy + rng.uniform(*heights) * lung.b
        x = lung.cx + rng.uniform(-0.75, 0.75) * float(lung.half_width(y))
        clear_of_heart = heart.radius(x, y) > 1.0 + margin / min(heart.ax, heart.ay)
        if clear_of_heart and lung.inside(x, y, margin):
            return lung, x, y
    raise RuntimeError("could not place a lesion in the lung fields; the anatomy is degenerate")


def _airspace(anatomy: Anatomy, opacity: Array, support: Array, lung: Lung) -> Lesion:
    """An opacity filling the air of one lung field (``opacity`` of the local air)."""
    return opacity * anatomy.air, support & anatomy.lung_masks[lung.side]


def _atelectasis(anatomy: Anatomy, rng: np.random.Generator, side: Optional[int] = None) -> List[Lesion]:
    """Plate-like atelectasis: a thin dense band in a lower zone."""
    lung, x, y = _place(anatomy, rng, margin=0.04, heights=(0.0, 0.55), side=side)
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


def _effusion(anatomy: Anatomy, rng: np.random.Generator, side: Optional[int] = None) -> List[Lesion]:
    """Pleural fluid at a lung base (both in 40 %, unless ``side`` names one), under a meniscus rising laterally."""
    if side is None:
        sides = anatomy.lungs if rng.random() < 0.4 else [anatomy.lungs[rng.integers(2)]]
    else:
        sides = [anatomy.lungs[side]]
    lesions = []
    for lung in sides:
        depth = rng.uniform(0.09, 0.2)
        towards_wall = np.clip(((anatomy.x - lung.cx) * lung.lateral / lung.a + 1.0) / 2.0, 0.0, 1.0)
        meniscus = lung.dome_base - depth - 0.07 * towards_wall**2
        fluid = np.clip((anatomy.y - meniscus) / 0.025, 0.0, 1.0)
        lesions.append(_airspace(anatomy, fluid, fluid > 0.0, lung))
    return lesions


def _infiltration(anatomy: Anatomy, rng: np.random.Generator, side: Optional[int] = None) -> List[Lesion]:
    """Patchy, ill-defined opacities scattered over part of a lung."""
    lung, x, y = _place(anatomy, rng, margin=0.05, heights=(-0.5, 0.55), side=side)
    area = Ellipse(x, y, rng.uniform(0.07, 0.1), rng.uniform(0.09, 0.13))
    radius = area.radius(anatomy.x, anatomy.y)
    spots = patches(noise_field(rng, anatomy.x.shape[0], 0.012), 0.45)
    return [_airspace(anatomy, 0.65 * plateau(radius, 0.4) * spots, radius < 1.0, lung)]


def _round_opacity(
    anatomy: Anatomy, rng: np.random.Generator, radius: float, lobulation: float, side: Optional[int]
) -> Lesion:
    """A dense, well-defined round opacity (lobulated when ``lobulation`` > 0) in a lung."""
    lung, x, y = _place(anatomy, rng, margin=radius + 0.01, heights=(-0.65, 0.55), side=side)
    angle = np.arctan2(anatomy.y - y, anatomy.x - x)
    phase3, phase5 = (float(phase) for phase in rng.uniform(0, 2 * np.pi, size=2))
    outline = 1.0 + lobulation * (np.sin(3 * angle + phase3) + 0.5 * np.sin(5 * angle + phase5))
    rel_radius = Ellipse(x, y, radius, radius).radius(anatomy.x, anatomy.y) / outline
    return _airspace(anatomy, 1.3 * plateau(rel_radius, 0.3), rel_radius < 1.0, lung)


def _mass(anatomy: Anatomy, rng: np.random.Generator, side: Optional[int] = None) -> List[Lesion]:
    """A large (over 3 cm) lobulated opacity."""
    return [_round_opacity(anatomy, rng, rng.uniform(0.05, 0.075), lobulation=0.1, side=side)]


def _nodule(anatomy: Anatomy, rng: np.random.Generator, side: Optional[int] = None) -> List[Lesion]:
    """A small round opacity (two of them in 40 % of the cases; one when ``side`` names the lung)."""
    count = 2 if side is None and rng.random() < 0.4 else 1
    return [_round_opacity(anatomy, rng, rng.uniform(0.018, 0.026), lobulation=0.0, side=side) for _ in range(count)]


def _pneumonia(anatomy: Anatomy, rng: np.random.Generator, side: Optional[int] = None) -> List[Lesion]:
    """Consolidation: a dense, fluffy-edged opacity with air bronchograms."""
    lung, x, y = _place(anatomy, rng, margin=0.06, heights=(-0.2, 0.5), side=side)
    size = anatomy.x.shape[0]
    area = Ellipse(x, y, rng.uniform(0.09, 0.12), rng.uniform(0.08, 0.11))
    radius = area.radius(anatomy.x, anatomy.y) / (1.0 + 0.12 * noise_field(rng, size, 0.03))
    bronchograms = ridges(noise_field(rng, size, 0.01), 0.25)
    return [_airspace(anatomy, 0.95 * plateau(radius, 0.3) * (1.0 - 0.5 * bronchograms), radius < 1.0, lung)]


def _pneumothorax(anatomy: Anatomy, rng: np.random.Generator, side: Optional[int] = None) -> List[Lesion]:
    """Air around a collapsed lung: a lucent apical-lateral rim without lung markings.

    The rim lies between the chest wall and the visceral pleura, which shows as
    a thin white line at the rim's inner border.
    """
    lung = anatomy.lungs[rng.integers(2) if side is None else side]
    collapse = rng.uniform(0.72, 0.84)
    radius = lung.radius(anatomy.x, anatomy.y)
    apical = anatomy.y < lung.cy - 0.4 * lung.b
    lateral = (anatomy.x - lung.cx) * lung.lateral > 0.0
    rim = (radius > collapse) & (anatomy.y < lung.cy + 0.3 * lung.b) & (apical | lateral)
    pleura = np.clip(1.0 - (radius - collapse) / 0.05, 0.0, 1.0)
    lucency = -(anatomy.markings + 0.15 * anatomy.lung_profile)
    return [(lucency * (1.0 - pleura) + 0.15 * pleura, rim & anatomy.lung_masks[lung.side])]


# Each drawer takes (anatomy, rng) and, for the findings of TWO_PART_FINDINGS, the lung side of a part.
_DRAWERS: Dict[str, Callable[..., List[Lesion]]] = {
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

#: The findings that can be drawn in parts, one lesion per lung (all but Cardiomegaly: one heart).
TWO_PART_FINDINGS = tuple(name for name in FINDINGS if name != "Cardiomegaly")


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
    part_masks : dict of str to ndarray, shape (2, H, W), bool
        Per finding drawn in parts, the pixels of its part in the image-left
        (0) and image-right (1) lung; empty for a part not drawn.
    """

    density: Array
    masks: Array
    boxes: List[Tuple[str, float, float, float, float]]
    part_masks: Dict[str, Array] = field(default_factory=dict)


def draw_findings(
    anatomy: Anatomy,
    rngs: Mapping[str, np.random.Generator],
    parts: Mapping[str, Mapping[int, np.random.Generator]] = MappingProxyType({}),
) -> FindingsDrawing:
    """Draw findings into an anatomy.

    Parameters
    ----------
    anatomy : Anatomy
    rngs : mapping of finding name to numpy Generator
        The findings to draw whole, each with its own source of randomness (so
        that leaving one out does not change how the others look).
    parts : mapping of finding name to {side: numpy Generator}
        Findings of :data:`TWO_PART_FINDINGS` to draw in parts: one lesion in
        each lung side named (0 image-left, 1 image-right), each with its own
        source of randomness. A finding is either in ``rngs`` or here.

    Returns
    -------
    FindingsDrawing
    """
    shape = anatomy.x.shape
    density = np.zeros(shape, dtype=np.float32)
    masks = np.zeros((len(FINDINGS),) + shape, dtype=bool)
    boxes = []
    part_masks = {}

    def draw(name: str, lesions: List[Lesion]) -> Array:
        drawn = np.zeros(shape, dtype=bool)
        for change, support in lesions:
            if not support.any():  # too small to cover a pixel at this size
                continue
            density[...] += change * support  # in place, so the density stays float32
            drawn |= support
            boxes.append((name,) + bounding_box(support))
        masks[FINDINGS.index(name)] |= drawn
        return drawn

    for name in (*rngs, *parts):
        if name not in _DRAWERS:
            raise ValueError(f"finding: expected one of {FINDINGS}, got {name!r}")
    for name, rng in rngs.items():
        draw(name, _DRAWERS[name](anatomy, rng))
    for name, sides in parts.items():
        if name not in TWO_PART_FINDINGS or name in rngs or not set(sides) <= {0, 1}:
            raise ValueError(f"parts: expected findings of {TWO_PART_FINDINGS} (not also in rngs) with sides 0 "
                             f"and 1, got {name!r}: {sorted(sides)}")
        part_masks[name] = np.zeros((2,) + shape, dtype=bool)
        for side, rng in sides.items():
            part_masks[name][side] = draw(name, _DRAWERS[name](anatomy, rng, side))
    return FindingsDrawing(density, masks, boxes, part_masks)
