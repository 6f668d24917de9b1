"""Attribution-map utilities shared by the metrics and Multi-layer IBA.

Every function takes and returns a batch of single-channel maps of shape
``(N, 1, H, W)``; :func:`as_map_batch` brings the shapes attribution methods
return to that form. The functions are plain (no state, no in-place changes
to their arguments) in the style of scikit-image.
"""

import math
import numbers

import torch
import torch.nn.functional as F
from skimage.filters import threshold_otsu

__all__ = ["as_map_batch", "resize_map", "gaussian_blur", "parse_threshold", "binarize", "rank_pixels"]

_THRESHOLD_FORMS = (
    "a number in [0, 1] (a value on the per-sample L2-normalised map), "
    "'top:F' with F in (0, 1] (keep the top fraction F of the pixels), "
    "or 'otsu' (Otsu's threshold per sample)"
)


def as_map_batch(attributions, n=None, name="attributions"):
    """Bring attributions to a batch of single-channel maps.

    Parameters
    ----------
    attributions : torch.Tensor
        Shape ``(N, H, W)``, ``(N, 1, h, w)`` or ``(N, C, H, W)``; channels
        are summed, as a per-pixel attribution is the sum over the pixel's
        channels.
    n : int, optional
        The expected batch size (usually the number of inputs).
    name : str, optional
        The argument's name in error messages.

    Returns
    -------
    maps : torch.Tensor
        Shape ``(N, 1, H, W)``, floating point, detached, a new tensor (never
        a view of ``attributions``). Integer input becomes the default float
        dtype; floating input keeps its dtype.

    Raises
    ------
    TypeError
        If ``attributions`` is not a tensor.
    ValueError
        If the rank is not 3 or 4, if the batch size differs from ``n``, or
        if the attributions contain NaN or Inf.

    Examples
    --------
    >>> as_map_batch(torch.ones(2, 3, 4, 4)).shape
    torch.Size([2, 1, 4, 4])
    """
    value = attributions
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() == 3:
        value = value.unsqueeze(1)
    elif value.dim() != 4:
        raise ValueError(
            f"{name} must have shape (N, H, W), (N, 1, h, w) or (N, C, H, W), "
            f"got shape {tuple(value.shape)}"
        )
    if n is not None and value.shape[0] != n:
        raise ValueError(
            f"{name} has batch size {value.shape[0]} but {n} were expected (one map per input)"
        )
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    maps = value.detach().sum(dim=1, keepdim=True)
    if not torch.isfinite(maps).all():
        raise ValueError(f"{name} contain NaN or Inf")
    return maps


def size_pair(size):
    """``size`` (an int: a square, or a pair) as a pair ``(H, W)`` of positive ints."""
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    size = tuple(size)
    if len(size) != 2 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise ValueError(f"size must be a positive int or a pair (H, W), got {size!r}")
    return int(size[0]), int(size[1])


RESIZE_MODES = ("bilinear", "bicubic", "nearest", "nearest-exact", "area")


def resize_map(maps, size, preserve_total=True, mode="bilinear"):
    """Resize maps (bilinearly by default), by default preserving their total.

    Parameters
    ----------
    maps : torch.Tensor
        Attribution maps in any shape :func:`as_map_batch` accepts.
    size : int or tuple of int
        The target ``(H, W)`` (an int means a square).
    preserve_total : bool, optional
        Keep the map's sum over pixels (for IBA: the total information in
        bits): scaled by ``(h * w) / (H * W)``, and a non-negative map then
        rescaled so its total is exactly what it was (for any sizes); a map
        with negative values keeps the area scaling, exact up to interpolation
        at the borders. Default True.
    mode : str, optional
        ``torch.nn.functional.interpolate``'s mode: ``"bilinear"`` (default),
        ``"bicubic"``, ``"nearest"``, ``"nearest-exact"`` or ``"area"``.

    Returns
    -------
    resized : torch.Tensor
        Shape ``(N, 1, H, W)``; a copy of the maps when the size already
        matches.

    Notes
    -----
    Upsampling is Captum's ``LayerAttribution.interpolate(maps, size,
    "bilinear")``; downsampling adds antialiasing, so a large map's total is
    not lost between the sampled pixels.

    Examples
    --------
    >>> bits = torch.rand(1, 1, 7, 7)
    >>> resized = resize_map(bits, 224)
    >>> bool(torch.isclose(resized.sum(), bits.sum()))
    True
    """
    maps = as_map_batch(maps)
    height, width = size_pair(size)
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    h, w = maps.shape[-2:]
    if (h, w) == (height, width):
        return maps
    smooth_modes = mode in ("bilinear", "bicubic")
    resized = F.interpolate(
        maps, size=(height, width), mode=mode,
        align_corners=False if smooth_modes else None,
        antialias=smooth_modes and (height < h or width < w),
    )
    if preserve_total:
        resized = resized * (h * w / (height * width))
        # Interpolation at the borders (and antialiasing) moves a little mass; a non-negative map
        # (bits) is rescaled so its total is exactly what it was. A positive factor per map: every
        # ranking, threshold and correlation of the metrics is unchanged by it.
        total, now = maps.sum((-2, -1), keepdim=True), resized.sum((-2, -1), keepdim=True)
        exact = (maps >= 0).flatten(-2).all(-1)[..., None, None] & (now > 0)
        resized = torch.where(exact, resized * (total / torch.where(exact, now, torch.ones_like(now))), resized)
    return resized


def gaussian_blur(images, sigma, kernel_size=None):
    """Blur each channel of (N, C, H, W) images with a normalised Gaussian.

    Parameters
    ----------
    images : torch.Tensor, shape (N, C, H, W)
    sigma : float
        Standard deviation in pixels (> 0).
    kernel_size : int, optional
        Odd kernel size; default ``2 * ceil(4 * sigma) + 1`` (TorchRay's
        ``imsmooth``).

    Returns
    -------
    torch.Tensor, shape (N, C, H, W)
        Borders are padded by replication, so they are not darkened as zero
        padding would.
    """
    if kernel_size is None:
        kernel_size = 2 * math.ceil(4 * sigma) + 1
    offsets = torch.arange(kernel_size, dtype=images.dtype, device=images.device)
    offsets = offsets - (kernel_size - 1) / 2
    profile = torch.exp(-0.5 * (offsets / sigma) ** 2)
    profile = profile / profile.sum()
    channels = images.shape[1]
    pad = kernel_size // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    # Separable: a horizontal, then a vertical 1-D pass, one group per channel.
    rows = F.conv2d(padded, profile.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, profile.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def parse_threshold(threshold):
    """Validate and normalise a threshold specification.

    Parameters
    ----------
    threshold : float or str
        One of

        - a number ``t`` in [0, 1]: keep the pixels whose value on the
          per-sample L2-normalised map is above ``t``;
        - ``"top:F"`` with ``F`` in (0, 1]: keep the top fraction ``F`` of
          the pixels;
        - ``"otsu"``: keep the pixels above Otsu's threshold
          (``skimage.filters.threshold_otsu``) of each map.

    Returns
    -------
    kind : str
        ``"value"``, ``"top"`` or ``"otsu"``.
    parameter : float or None
        The value ``t``, the fraction ``F``, or None for Otsu.

    Raises
    ------
    ValueError
        On any other specification, naming the accepted forms.

    Examples
    --------
    >>> parse_threshold("top:0.1")
    ('top', 0.1)
    >>> parse_threshold(0.5)
    ('value', 0.5)
    """
    if isinstance(threshold, numbers.Real) and not isinstance(threshold, bool):
        if 0.0 <= threshold <= 1.0:
            return "value", float(threshold)
    elif isinstance(threshold, str):
        if threshold == "otsu":
            return "otsu", None
        if threshold.startswith("top:"):
            try:
                fraction = float(threshold[len("top:"):])
            except ValueError:
                fraction = math.nan
            if 0.0 < fraction <= 1.0:
                return "top", fraction
    raise ValueError(f"threshold must be {_THRESHOLD_FORMS}; got {threshold!r}")


def rank_pixels(maps):
    """Order the pixels of each map from the highest value to the lowest.

    Parameters
    ----------
    maps : torch.Tensor
        Attribution maps in any shape :func:`as_map_batch` accepts.

    Returns
    -------
    order : torch.Tensor
        Long tensor of shape ``(N, H * W)``: flat pixel indices (``row * W +
        col``), highest value first. Ties go to the lower flat index first, so
        the order is deterministic.

    Examples
    --------
    >>> rank_pixels(torch.tensor([[[1.0, 3.0], [3.0, 0.0]]])).tolist()
    [[1, 2, 0, 3]]
    """
    flat = as_map_batch(maps).flatten(1)
    # A stable sort keeps equal values in index order.
    return torch.sort(flat, dim=1, descending=True, stable=True).indices


def binarize(maps, threshold):
    """Threshold each map of a batch.

    Parameters
    ----------
    maps : torch.Tensor
        Attribution maps in any shape :func:`as_map_batch` accepts.
    threshold : float or str
        A specification accepted by :func:`parse_threshold`.

    Returns
    -------
    masks : torch.Tensor
        Boolean, shape ``(N, 1, H, W)``.

    Notes
    -----
    - Value thresholds compare ``map / ||map||_2`` (per sample) with the
      value, strictly; an all-zero map gives an empty mask.
    - ``"top:F"`` keeps exactly ``max(1, round(F * H * W))`` pixels (halves
      round up); among equal values the lower flat index is kept first.
    - ``"otsu"`` keeps the pixels strictly above the threshold; a constant map
      has no threshold that separates anything and gives an empty mask.

    Examples
    --------
    >>> m = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    >>> binarize(m, "top:0.5").flatten().tolist()
    [False, False, True, True]
    """
    kind, parameter = parse_threshold(threshold)
    maps = as_map_batch(maps)
    n, _, height, width = maps.shape
    flat = maps.flatten(1)
    if kind == "value":
        norms = flat.norm(dim=1, keepdim=True)
        normalised = flat / norms.clamp_min(torch.finfo(flat.dtype).tiny)
        keep = normalised > parameter
    elif kind == "top":
        n_keep = max(1, math.floor(parameter * height * width + 0.5))
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep.scatter_(1, rank_pixels(maps)[:, :n_keep], True)
    else:
        keep = torch.zeros_like(flat, dtype=torch.bool)
        for i, row in enumerate(flat.cpu().double().numpy()):
            if row.min() < row.max():
                # Otsu is affine-invariant; rescaling to [0, 1] keeps its histogram
                # well-defined when the values span a tiny range far from zero.
                row = (row - row.min()) / (row.max() - row.min())
                keep[i] = torch.from_numpy(row > threshold_otsu(row))
    return keep.view(n, 1, height, width)
