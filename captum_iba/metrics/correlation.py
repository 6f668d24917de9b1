"""Correlation of attribution maps with reference maps (the paper's PCC)."""

from ..maps import as_map_batch, resize_map
from ._core import pearson

__all__ = ["map_correlation"]


def map_correlation(attributions, reference_maps):
    r"""Pearson correlation of each map with its reference map.

    The paper's severity-map PCC: each pixel of the reference holds, for
    instance, the severity score of its lung zone; the attribution map and
    the reference are flattened and correlated, per sample. The map is
    first resized (bilinearly) to the reference's size; the correlation does
    not depend on the maps' scale.

    Args:

        attributions (Tensor): Maps of shape (N, H, W), (N, 1, h, w) or
                    (N, C, H, W) (summed over channels).
        reference_maps (Tensor): One reference per map, in the same shapes.

    Returns:
        *Tensor* of shape (N,): the correlation per sample, in [-1, 1]; NaN
        where either map is constant (the correlation is undefined).

    Examples::

        >>> maps = regression_iba.attribute(images)        # (N, 1, 14, 14)
        >>> severity = torch.stack([item["severity_map"] for item in items])
        >>> map_correlation(maps, severity)                # (N,)
    """
    references = as_map_batch(reference_maps, None, "reference_maps")
    maps = as_map_batch(attributions, references.shape[0], "attributions")
    maps = resize_map(maps, tuple(references.shape[-2:])).to(references.device)
    return pearson(maps.flatten(1), references.flatten(1))
