"""Figures: maps over images, method grids, metric scatters and curves.

Plain functions over matplotlib's object API (no pyplot state, no display
needed): each builds a :class:`matplotlib.figure.Figure`, saves it when given
a path, and returns it.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ._files import atomic_path
from .maps import as_map_batch, resize_map


def _grey(image) -> np.ndarray:
    """A display image (H, W) in [0, 1] from a (C, H, W) or (H, W) tensor or array."""
    image = torch.as_tensor(image).detach().float().cpu()
    if image.dim() == 3:
        image = image.mean(0)
    low, high = image.min(), image.max()
    return ((image - low) / (high - low).clamp(min=1e-12)).numpy()


def _upsampled(attribution, size) -> np.ndarray:
    """One map (any shape as_map_batch takes for N=1, or (h, w)) at ``size``, as (H, W)."""
    attribution = torch.as_tensor(attribution).detach().float().cpu()
    if attribution.dim() == 2:
        attribution = attribution[None]
    return resize_map(as_map_batch(attribution), tuple(size), preserve_total=False)[0, 0].numpy()


def overlay(ax, image, attribution=None, *, mask=None, title: Optional[str] = None,
            alpha: float = 0.55, cmap: str = "jet") -> None:
    """Draw ``image`` in grey on ``ax``, the attribution on top, a mask as a contour.

    Parameters
    ----------
    ax : matplotlib Axes
    image : Tensor or ndarray, (C, H, W) or (H, W)
    attribution : Tensor or ndarray, optional
        A map of any resolution, ``(1, h, w)`` or ``(h, w)``; upsampled
        bilinearly to the image and scaled to its own maximum.
    mask : array of bool (H, W), optional
        Ground truth, drawn as a white contour.
    title : str, optional
    """
    grey = _grey(image)
    ax.imshow(grey, cmap="gray", interpolation="nearest")
    if attribution is not None:
        heat = _upsampled(attribution, grey.shape)
        peak = np.abs(heat).max()
        ax.imshow(heat / peak if peak > 0 else heat, cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    if mask is not None and np.asarray(mask).any():
        ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors="white", linewidths=0.8)
    if title:
        ax.set_title(title, fontsize=7)
    ax.set_axis_off()


def method_grid(images, maps: Mapping[str, object], *, masks=None, row_labels: Optional[Sequence[str]] = None,
                path: Optional[str] = None) -> Figure:
    """One row per image: the image with its ground truth, then each method's map.

    Parameters
    ----------
    images : Tensor (N, C, H, W)
    maps : dict label -> Tensor (N, 1, h, w) or (N, h, w)
    masks : array of bool (N, H, W), optional
        Ground truth per image, outlined on every panel.
    row_labels : sequence of str, optional
    path : str, optional
        Where to save the PNG.

    Returns
    -------
    Figure
    """
    n, columns = len(images), 1 + len(maps)
    figure = Figure(figsize=(1.6 * columns, 1.7 * n), dpi=110)
    axes = figure.subplots(n, columns, squeeze=False)
    for i in range(n):
        mask = None if masks is None else np.asarray(masks[i])
        overlay(axes[i, 0], images[i], mask=mask, title=(row_labels[i] if row_labels else "image"))
        for j, (label, batch) in enumerate(maps.items(), start=1):
            overlay(axes[i, j], images[i], batch[i], mask=mask, title=label if i == 0 else None)
    figure.tight_layout()
    return _save(figure, path)


def scatter(x: Mapping[str, float], y: Mapping[str, float], *, xlabel: str, ylabel: str,
            title: str = "", path: Optional[str] = None) -> Figure:
    """A labelled scatter of one point per key (e.g. deletion vs insertion AUC per method)."""
    figure = Figure(figsize=(5.2, 4.2), dpi=110)
    ax = figure.subplots()
    for label in x:
        ax.scatter(x[label], y[label], s=28)
        ax.annotate(label, (x[label], y[label]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def curves(x: Sequence[float], ys: Mapping[str, Sequence[float]], *, xlabel: str, ylabel: str,
           title: str = "", logx: bool = False, path: Optional[str] = None) -> Figure:
    """Line plot of several curves over a shared x (e.g. sensitivity-N per loss)."""
    figure = Figure(figsize=(5.2, 3.8), dpi=110)
    ax = figure.subplots()
    for label, values in ys.items():
        ax.plot(x, values, marker="o", markersize=3, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure: Figure, path: Optional[str]) -> Figure:
    if path is not None:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format=os.path.splitext(path)[1][1:] or "png")
    return figure
