"""How a model's inputs and outputs relate to the library's: input formats and output maps.

The library's images are 3 x H x W grey radiographs normalised with ImageNet's
mean and std (:func:`~captum_iba.cxr.schema.to_model_input`); its classifiers
output one logit per finding of :data:`~captum_iba.cxr.schema.FINDINGS`.
:class:`InputFormat` converts the images for a model that takes something
else; :func:`parse_outputs` and :func:`outputs_by_name` say which of a model's
outputs is which finding.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from ..schema import FINDINGS, IMAGE_MEAN, IMAGE_STD

__all__ = ["InputFormat", "parse_input_format", "parse_outputs", "outputs_by_name", "finding_name"]

# Other spellings of the findings: NIH's box file, torchxrayvision ("Pleural_Thickening"), any case.
_ALIASES = {"infiltrate": "Infiltration", **{name.lower(): name for name in FINDINGS}}


def finding_name(name: str) -> Optional[str]:
    """The finding of :data:`FINDINGS` that ``name`` spells (any case, ``_`` for a space, NIH's
    ``Infiltrate``), or None."""
    return _ALIASES.get(str(name).strip().replace("_", " ").lower())


def _finding(name: str, option: str) -> str:
    finding = finding_name(name)
    if finding is not None:
        return finding
    close = difflib.get_close_matches(name.strip(), FINDINGS, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(f"{option}: unknown finding {name.strip()!r}; the 8 findings are {', '.join(FINDINGS)}{hint}")


def parse_outputs(outputs: Union[str, Mapping[str, int]], num_outputs: int) -> Dict[str, int]:
    """Which model output holds which finding: ``"Atelectasis=0,Cardiomegaly=1,..."``.

    Parameters
    ----------
    outputs : str or mapping
        ``FINDING=INDEX`` items separated by commas (finding names as in
        :data:`FINDINGS`, case-insensitive; NIH's ``Infiltrate`` accepted),
        or a mapping of the same.
    num_outputs : int
        The model's number of outputs, to check the indices against.

    Returns
    -------
    dict
        Finding to output index; findings left out are missing from the model.
    """
    items = outputs.items() if isinstance(outputs, Mapping) else [
        item.partition("=")[::2] if "=" in item else (item, None) for item in str(outputs).split(",") if item.strip()
    ]
    mapping: Dict[str, int] = {}
    for name, index in items:
        if index is None:
            raise ValueError(f"outputs: expected FINDING=INDEX items separated by commas, got {name.strip()!r}")
        finding = _finding(str(name), "outputs")
        try:
            index = int(str(index).strip())
        except ValueError:
            raise ValueError(f"outputs: the index of {finding!r} must be an integer, got {index!r}") from None
        if not 0 <= index < num_outputs:
            raise ValueError(
                f"outputs: index {index} for {finding!r} is out of range: "
                f"the model has {num_outputs} outputs (0-{num_outputs - 1})"
            )
        if finding in mapping:
            raise ValueError(f"outputs: {finding!r} is given twice")
        mapping[finding] = index
    if not mapping:
        raise ValueError("outputs: expected at least one FINDING=INDEX item")
    return mapping


def outputs_by_name(names: Sequence[str]) -> Dict[str, int]:
    """Finding to output index from the model's own output names (e.g. ``model.pathologies``)."""
    mapping: Dict[str, int] = {}
    for index, name in enumerate(names):
        finding = finding_name(name)
        if finding is not None and finding not in mapping:
            mapping[finding] = index
    return mapping


@dataclass(frozen=True)
class InputFormat:
    """What a model takes: ``channels`` (1 grey or 3), values in ``[low, high]``, or ImageNet-normalised."""

    channels: int = 3
    low: float = 0.0
    high: float = 1.0
    imagenet: bool = False

    @property
    def name(self) -> str:
        """The format as :func:`parse_input_format` reads it."""
        if self.imagenet:
            return "imagenet"
        return f"{'grey' if self.channels == 1 else 'rgb'}:[{self.low:g},{self.high:g}]"

    def __call__(self, images: Tensor) -> Tensor:
        """Convert the library's images (3 x H x W, ImageNet-normalised grey) to this format."""
        if self.imagenet:
            return images
        grey = sum(images[:, c : c + 1] * s + m for c, (m, s) in enumerate(zip(IMAGE_MEAN, IMAGE_STD))) / 3
        scaled = grey * (self.high - self.low) + self.low
        return torch.cat([scaled] * 3, dim=1) if self.channels == 3 else scaled


_RANGE = re.compile(r"^\[\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\]$")


def parse_input_format(text: Union[str, InputFormat]) -> InputFormat:
    """An :class:`InputFormat` from its name.

    ``"imagenet"`` (3 channels, ImageNet mean and std: the library's own
    images, torchvision's convention), ``"xrv"`` (grey, [-1024, 1024]:
    torchxrayvision's), or a range ``"[0,1]"`` / ``"[0,255]"`` / ``"[-1,1]"``
    with an optional ``grey:`` or ``rgb:`` before it (default ``rgb``).
    """
    if isinstance(text, InputFormat):
        return text
    spec = str(text).strip().lower()
    channels_name, _, value_range = spec.rpartition(":") if ":" in spec else ("", "", spec)
    channels = {"": None, "grey": 1, "gray": 1, "1": 1, "rgb": 3, "3": 3}.get(channels_name, 0)
    match = _RANGE.match(value_range)
    if value_range == "imagenet" and channels in (None, 3):
        return InputFormat(3, imagenet=True)
    if value_range == "xrv" and channels in (None, 1):
        return InputFormat(1, -1024.0, 1024.0)
    if match and channels != 0 and float(match.group(1)) < float(match.group(2)):
        return InputFormat(channels or 3, float(match.group(1)), float(match.group(2)))
    raise ValueError(
        f"input_format: expected 'imagenet', 'xrv' or a value range such as '[0,1]', "
        f"optionally after 'grey:' or 'rgb:'; got {str(text)!r}"
    )
