"""Vectorised drawing primitives for the phantom, in normalised image coordinates.

Coordinates: ``x`` runs left to right and ``y`` top to bottom, both in [0, 1]
across the image, so that every shape is defined independently of the pixel
size. Profiles have compact support (exactly zero outside their shape), which
is what lets a finding change the pixels inside its mask and no others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Tuple

import numpy as np
from scipy import special

Array = np.ndarray


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> Tuple[Array, Array]:
    """Pixel-centre coordinates of a ``size`` x ``size`` image.

    Returns
    -------
    x, y : ndarray, shape (size, size), float32 in (0, 1)
        Read-only; ``x[i, j] = (j + 0.5) / size``, ``y[i, j] = (i + 0.5) / size``.
    """
    # float32 throughout the phantom: half the memory traffic of float64, ample precision.
    c = ((np.arange(size) + 0.5) / size).astype(np.float32)
    y, x = np.meshgrid(c, c, indexing="ij")
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def warped_grid(size: int, rng: np.random.Generator) -> Tuple[Array, Array]:
    """Pixel coordinates seen through a random patient pose.

    Shapes drawn in the returned coordinates appear shifted (up to 3 % of the
    image), scaled (94-104 %) and rotated (up to 3 degrees) about the centre.

    Returns
    -------
    x, y : ndarray, shape (size, size)
    """
    x, y = pixel_grid(size)
    scale = rng.uniform(0.94, 1.04)
    shift_x, shift_y = rng.uniform(-0.03, 0.03, size=2)
    angle = math.radians(rng.uniform(-3.0, 3.0))
    dx, dy = x - 0.5 - float(shift_x), y - 0.5 - float(shift_y)
    # Python floats, not numpy scalars: those would promote the float32 grids to float64.
    cos, sin = math.cos(angle), math.sin(angle)
    return 0.5 + (cos * dx + sin * dy) / scale, 0.5 + (-sin * dx + cos * dy) / scale


@dataclass(frozen=True)
class Ellipse:
    """A rotated ellipse: centre (cx, cy), semi-axes (ax, ay), angle in radians."""

    cx: float
    cy: float
    ax: float
    ay: float
    angle: float = 0.0

    def radius(self, x: Array, y: Array) -> Array:
        """Elliptic radius of each point: 0 at the centre, 1 on the boundary."""
        dx, dy = x - self.cx, y - self.cy
        if self.angle:
            cos, sin = math.cos(self.angle), math.sin(self.angle)
            dx, dy = cos * dx + sin * dy, cos * dy - sin * dx
        u, v = dx / self.ax, dy / self.ay
        return np.sqrt(u * u + v * v)

    def scaled(self, sx: float, sy: float) -> "Ellipse":
        """The ellipse with its semi-axes scaled about its centre."""
        return replace(self, ax=self.ax * sx, ay=self.ay * sy)


def plateau(radius: Array, edge: float) -> Array:
    """A flat-topped profile: 1 inside, falling linearly to 0 at ``radius`` 1.

    Parameters
    ----------
    radius : ndarray
        Elliptic (or any normalised) radius, 1 on the shape's boundary.
    edge : float in (0, 1]
        Width of the falling edge, as a fraction of the radius.
    """
    return np.clip((1.0 - radius) / edge, 0.0, 1.0)


def segment_distance(x: Array, y: Array, start: Tuple[float, float], end: Tuple[float, float]) -> Array:
    """Distance of each point to the segment from ``start`` to ``end``."""
    (x0, y0), (x1, y1) = start, end
    ex, ey = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * ex + (y - y0) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    return np.hypot(x - x0 - t * ex, y - y0 - t * ey)


def _smooth5(a: Array) -> Array:
    """Binomial [1 4 6 4 1]/16 smoothing (Gaussian of std 1 sample) along both axes, 'valid' mode."""
    a = (a[:-4] + 4 * a[1:-3] + 6 * a[2:-2] + 4 * a[3:-1] + a[4:]) / 16
    return (a[:, :-4] + 4 * a[:, 1:-3] + 6 * a[:, 2:-2] + 4 * a[:, 3:-1] + a[:, 4:]) / 16


# Std of unit white noise after _smooth5: sqrt(sum of the squared 2-D kernel) = 70 / 256.
_SMOOTH5_STD = 70.0 / 256.0


@lru_cache(maxsize=32)
def _linear_upsampling(size: int, step: float) -> Tuple[Array, Array, Array]:
    """Indices and weights of linear interpolation from samples every ``step`` pixels to ``size`` pixels."""
    t = (np.arange(size) + 0.5) / step
    below = np.floor(t).astype(np.intp)
    weight = (t - below).astype(np.float32)
    return below, below + 1, weight


def noise_field(rng: np.random.Generator, size: int, scale: float) -> Array:
    """Smooth Gaussian noise with zero mean and (about) unit standard deviation.

    Parameters
    ----------
    rng : numpy Generator
    size : int
        Output is ``size`` x ``size``.
    scale : float
        Correlation length in normalised units (the std of the smoothing kernel
        when it spans more than a pixel).

    Returns
    -------
    ndarray, shape (size, size), float32
    """
    # White noise smoothed by a binomial kernel on a grid of `step` pixels, then
    # interpolated linearly to the pixels: cheap, and no BLAS or thread pool involved.
    step = max(1.0, scale * size)
    samples = int(np.ceil(size / step)) + 2
    field = _smooth5(rng.standard_normal((samples + 4, samples + 4), dtype=np.float32)) / _SMOOTH5_STD
    if step == 1.0:
        return field[:size, :size]
    below, above, weight = _linear_upsampling(size, step)
    rows = field[below] * (1 - weight[:, None]) + field[above] * weight[:, None]
    return rows[:, below] * (1 - weight) + rows[:, above] * weight


def periodic_bands(t: Array, half_width: float) -> Array:
    """Bands of height 1 around every integer ``t``, ``half_width`` wide (in units of ``t``) at half height."""
    distance = np.abs(t - np.rint(t))
    return np.clip(1.5 - distance / half_width, 0.0, 1.0)


def ridges(noise: Array, width: float) -> Array:
    """Thin branching lines along the zero crossings of ``noise``, values in (0, 1]."""
    return np.exp(-((noise / width) ** 2))


def patches(noise: Array, coverage: float) -> Array:
    """Soft-edged patches covering about ``coverage`` of the area of unit-std ``noise``, in [0, 1]."""
    threshold = float(special.ndtri(1.0 - coverage))
    return np.clip((noise - threshold) / 0.5, 0.0, 1.0)


def bounding_box(mask: Array) -> Tuple[float, float, float, float]:
    """Pixel box ``(x, y, w, h)`` enclosing the ``True`` pixels of a non-empty 2-D mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))
