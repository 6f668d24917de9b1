"""A procedural chest X-ray phantom with known ground truth: the embedded default dataset.

Item ``i`` of ``PhantomCXR(n, size, seed, task)`` is a function of
``(seed, i, size)`` only, so any subset can be generated independently, in any
order, by any process. Independent random streams drive the anatomy, the
choice of findings (or zone scores), each finding's look and the exposure, so
that an item can be re-rendered with a finding left out and differ only
inside that finding's mask (:meth:`PhantomCXR.item` with ``omit``).

With ``cue=`` a finding name, the phantom also draws a *cue*: a bright lead
side marker in a top corner, away from the lungs, that is no pathology but
co-occurs with that finding at set rates. A model trained on such data can
learn the marker instead of (or besides) the finding, which gives a ground
truth of what the model uses (:mod:`captum_iba.cxr.phantom.cue`). The cue has its own
random stream, so the same item drawn without it differs only inside its mask.

With ``redundant=`` or ``conjunctive=`` finding names, those findings are
drawn in two *parts*, one lesion of their kind in each lung. A redundant
finding's label needs either part (OR: each lesion alone is the finding; some
of its images show one, some both); a conjunctive finding's label needs both
(AND: some images without it show one part alone, a decoy labelled 0). A
model trained on such data gives a ground truth of *sufficient* evidence (one
lesion of a redundant finding) against *all* the evidence (both), which is
what IBA and Inverse IBA are said to find. Each part has its own random
stream, so an item drawn without a part (:meth:`PhantomCXR.item` with
``omit_parts``) differs only inside that part's mask.
"""

from __future__ import annotations

import numbers
from types import MappingProxyType
from typing import Any, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ._shapes import Array
from .anatomy import draw_anatomy
from .findings import TWO_PART_FINDINGS, draw_findings
from ..._validate import check_positive_int
from ..schema import FINDINGS, ZONES, detectors_from_zone_scores, to_model_input
from .zones import draw_zone_opacities, sample_zone_scores, zone_masks

__all__ = ["DEFAULT_SIZE", "PHANTOM_VERSION", "DEFAULT_PREVALENCE", "DEFAULT_CUE_RATES", "CUE_DENSITY",
           "BOTH_PARTS_RATE", "DECOY_RATE", "PhantomCXR"]

#: Image side (pixels) of the phantom by default and of the embedded models: small enough
#: for the four models to train in about three minutes and for attribution benchmarks to
#: run on two CPU cores, large enough for a nodule to span a few pixels. A multiple of 32,
#: so DenseNet's feature maps tile the image exactly (dense block 3: 6 x 6).
DEFAULT_SIZE = 96

#: Version of the drawing code: raise it whenever a change alters the images of a seed,
#: so that models cached from older phantoms are retrained.
PHANTOM_VERSION = 1

#: Probability of each finding per image: NIH ChestX-ray8's relative frequencies
#: (Wang et al. 2017), raised (at least 5 %) so that a CPU-sized training set holds
#: enough positives of the rare findings; still imbalanced, as weighted BCE needs.
DEFAULT_PREVALENCE: Mapping[str, float] = MappingProxyType(
    {
        "Atelectasis": 0.16,
        "Cardiomegaly": 0.06,
        "Effusion": 0.19,
        "Infiltration": 0.28,
        "Mass": 0.08,
        "Nodule": 0.09,
        "Pneumonia": 0.05,
        "Pneumothorax": 0.07,
    }
)

_TASKS = ("nih", "brixia")
# Random streams of one item (the third entry of its seed).
_ANATOMY, _CHOICE, _LOOK, _EXPOSURE, _CUE, _PARTS = range(6)

#: Default rates of the cue: on 95 % of the images with its finding, 5 % of those without.
DEFAULT_CUE_RATES = (0.95, 0.05)

#: Density of the cue marker: lead, far denser than bone, so it shows nearly white.
CUE_DENSITY = 3.0

#: Share of a redundant finding's images that show both of its lesions; the others show one,
#: in either lung equally often, so that a model learns each lesion alone as the finding.
BOTH_PARTS_RATE = 0.5

#: Share of the images without a conjunctive finding that show one of its parts alone (a
#: decoy, labelled 0), so that a model learns that one part is not the finding.
DECOY_RATE = 0.3


def _rng(seed: int, index: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream, *extra])


def _expose(density: Array, rng: np.random.Generator) -> Array:
    """Radiograph of a density map: attenuation, film response varying per image, quantum noise.

    Every step is per pixel, so a density change shows in the same pixels.

    Returns
    -------
    ndarray, shape (H, W), float32 in [0, 1]
    """
    attenuation = rng.uniform(1.0, 1.4)
    gamma, contrast, brightness = rng.uniform(0.8, 1.25), rng.uniform(0.85, 1.1), rng.uniform(-0.06, 0.06)
    noise = rng.uniform(0.01, 0.025) * rng.standard_normal(density.shape, dtype=np.float32)
    grey = 1.0 - np.exp(-attenuation * np.maximum(density, 0.0))
    return np.clip(contrast * grey**gamma + brightness + noise, 0.0, 1.0).astype(np.float32)


def _cue_mask(size: int, rng: np.random.Generator) -> Array:
    """The cue's pixels: an "L" side marker in a top corner, away from the lungs.

    About 0.16 x 0.12 of the image side, bars 0.05 thick, 3-8 % from the edges,
    in the top-left or top-right corner (at random).

    Returns
    -------
    ndarray, shape (size, size), bool
    """
    height, width = round(0.16 * size), round(0.12 * size)
    bar = max(2, round(0.05 * size))
    top, side = (int(round(rng.uniform(0.03, 0.08) * size)) for _ in range(2))
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + height, side : side + bar] = True  # the upright
    mask[top + height - bar : top + height, side : side + width] = True  # the foot
    return mask[:, ::-1].copy() if rng.random() < 0.5 else mask


def _cue_rates(rates: Sequence[float]) -> Tuple[float, float]:
    values = tuple(float(rate) for rate in rates) if isinstance(rates, (tuple, list)) else ()
    if len(values) != 2 or not all(0.0 <= rate <= 1.0 for rate in values):
        raise ValueError(f"cue_rates: expected two probabilities (with, without the finding), got {rates!r}")
    return values


def _two_part(findings: Any, option: str) -> Tuple[str, ...]:
    names = (findings,) if isinstance(findings, str) else tuple(findings)
    unknown = [name for name in names if name not in TWO_PART_FINDINGS]
    if unknown:
        raise ValueError(f"{option}: expected finding names of {TWO_PART_FINDINGS}, got {unknown}")
    return tuple(name for name in FINDINGS if name in names)


def _prevalence_array(prevalence: Optional[Mapping[str, float]]) -> Array:
    merged = dict(DEFAULT_PREVALENCE)
    if prevalence is not None:
        unknown = set(prevalence) - set(FINDINGS)
        if unknown:
            raise ValueError(f"prevalence: unknown findings {sorted(unknown)}; expected names from {FINDINGS}")
        merged.update(prevalence)
    values = np.array([merged[name] for name in FINDINGS], dtype=float)
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise ValueError(f"prevalence: expected probabilities in [0, 1], got {merged}")
    return values


class PhantomCXR(Dataset):
    """Synthetic chest X-rays with pixel-exact ground truth.

    Parameters
    ----------
    n : int
        Number of items.
    size : int, default :data:`DEFAULT_SIZE`
        Image side in pixels (at least 32).
    seed : int, default 0
        Non-negative; items of different seeds are independent.
    task : {"nih", "brixia"}
        NIH-like findings or BrixIA-like zone severities.
    prevalence : mapping of finding name to probability, optional
        NIH task only: overrides of :data:`DEFAULT_PREVALENCE`. Findings are
        drawn independently; an image keeps at most ``max_findings`` of them
        (chosen at random), which lowers the effective prevalence slightly.
    max_findings : int, default 3
        NIH task only.
    cue : str, optional
        NIH task only: a finding name. Draw a cue (a bright "L" side marker in
        a top corner, not a pathology) on an image with probability
        ``cue_rates[0]`` if it has that finding and ``cue_rates[1]`` if not.
        ``None`` (default) draws no cue and adds no keys: the items are those
        of a phantom without the option.
    cue_rates : (float, float), default (0.95, 0.05)
        The cue's rates with and without its finding.
    redundant : str or collection of str, default ()
        NIH task only: findings (of
        :data:`~captum_iba.cxr.phantom.findings.TWO_PART_FINDINGS`) drawn as
        two lesions, one per lung, either of which is the finding (its label
        is the OR of its parts). An image with the finding shows both lesions
        with probability :data:`BOTH_PARTS_RATE`, else one.
    conjunctive : str or collection of str, default ()
        NIH task only: findings drawn as two parts, one per lung, both of
        which make the finding (its label is the AND of its parts). An image
        with the finding shows both; one without it shows one part alone with
        probability :data:`DECOY_RATE`. Neither option (the default) adds keys:
        the items are those of a phantom without them.

    Notes
    -----
    NIH-like items have keys ``image`` (3 x H x W float32, see
    :func:`~captum_iba.cxr.schema.to_model_input`), ``labels`` (8 float32 0/1,
    order of :data:`~captum_iba.cxr.schema.FINDINGS`), ``masks`` (8 x H x W
    bool), ``boxes`` (list of ``(finding, x, y, w, h)`` in pixels, one per
    lesion) and ``image_id``.

    BrixIA-like items have ``image``, ``zone_scores`` (6 int64 0-3, zones
    A-F), ``score`` (float32 scalar, their sum 0-18), ``zone_masks`` (6 x H x W
    bool, tiling the lung fields), ``severity_map`` (H x W float32: each lung
    pixel its zone's score, 0 elsewhere), ``detectors`` (3 float32 0/1: a zone
    scored 3 / 2 / 0-or-1 exists) and ``image_id``.

    With a cue, NIH-like items also have ``cue`` (float32 scalar, 1 if the
    cue is drawn) and ``cue_mask`` (H x W bool, the pixels it changed; empty
    without the cue).

    With two-part findings (``redundant`` or ``conjunctive``, listed in
    :attr:`two_part` in the order of ``FINDINGS``), NIH-like items also have
    ``parts`` (T x 2 float32 0/1: which parts are drawn, image-left lung
    first) and ``part_masks`` (T x 2 x H x W bool: the pixels of each part,
    empty where not drawn). ``masks`` and ``boxes`` hold a two-part finding
    only where its label is 1: a decoy part is in ``part_masks`` alone.
    """

    def __init__(
        self,
        n: int,
        size: int = DEFAULT_SIZE,
        seed: int = 0,
        task: str = "nih",
        prevalence: Optional[Mapping[str, float]] = None,
        max_findings: int = 3,
        cue: Optional[str] = None,
        cue_rates: Sequence[float] = DEFAULT_CUE_RATES,
        redundant: Any = (),
        conjunctive: Any = (),
    ) -> None:
        self.n = check_positive_int(n, "n", minimum=0)
        self.size = check_positive_int(size, "size", minimum=32)
        self.seed = check_positive_int(seed, "seed", minimum=0)
        if task not in _TASKS:
            raise ValueError(f"task: expected one of {_TASKS}, got {task!r}")
        self.task = task
        self.prevalence = _prevalence_array(prevalence)
        self.max_findings = check_positive_int(max_findings, "max_findings", minimum=0)
        if cue is not None and (task != "nih" or cue not in FINDINGS):
            raise ValueError(f"cue: expected a finding name of {FINDINGS} on the nih task, got {cue!r} ({task})")
        self.cue = cue
        self.cue_rates = _cue_rates(cue_rates)
        self.redundant, self.conjunctive = _two_part(redundant, "redundant"), _two_part(conjunctive, "conjunctive")
        if set(self.redundant) & set(self.conjunctive):
            raise ValueError(f"redundant, conjunctive: a finding is one or the other, got "
                             f"{sorted(set(self.redundant) & set(self.conjunctive))} in both")
        if task != "nih" and (self.redundant or self.conjunctive):
            raise ValueError(f"redundant, conjunctive: two-part findings need the nih task, got {task!r}")
        #: The two-part findings, in the order of FINDINGS (the rows of ``parts`` and ``part_masks``).
        self.two_part = tuple(name for name in FINDINGS if name in self.redundant + self.conjunctive)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.item(index)

    def __repr__(self) -> str:
        cue = "" if self.cue is None else f", cue={self.cue!r}, cue_rates={self.cue_rates}"
        parts = "".join(f", {option}={value}" for option, value in
                        (("redundant", self.redundant), ("conjunctive", self.conjunctive)) if value)
        return f"PhantomCXR(n={self.n}, size={self.size}, seed={self.seed}, task={self.task!r}{cue}{parts})"

    def _index(self, index: int) -> int:
        if not isinstance(index, numbers.Integral) or not -self.n <= index < self.n:
            raise IndexError(f"index: expected an integer in [-{self.n}, {self.n}), got {index!r}")
        return int(index) % self.n

    def findings_of(self, index: int) -> List[str]:
        """Names of the findings in item ``index`` (NIH task), without rendering it."""
        rng = _rng(self.seed, self._index(index), _CHOICE)
        present = [name for name, drawn in zip(FINDINGS, rng.random(len(FINDINGS)) < self.prevalence) if drawn]
        if len(present) > self.max_findings:
            kept = set(rng.choice(present, self.max_findings, replace=False))
            present = [name for name in present if name in kept]
        return present

    def cue_of(self, index: int) -> bool:
        """Whether item ``index`` carries the cue (False without a cue option), without rendering it."""
        if self.cue is None:
            return False
        index = self._index(index)
        rate = self.cue_rates[0] if self.cue in self.findings_of(index) else self.cue_rates[1]
        return bool(_rng(self.seed, index, _CUE).random() < rate)

    def parts_of(self, index: int) -> Dict[str, Tuple[bool, bool]]:
        """Which parts of each two-part finding item ``index`` shows (image-left lung first), without rendering it.

        Returns
        -------
        dict of str to (bool, bool)
            One entry per finding of :attr:`two_part`.
        """
        index = self._index(index)
        present = self.findings_of(index)
        parts = {}
        for name in self.two_part:
            # One uniform per finding, from its own stream: adding a two-part finding leaves the others' parts.
            u = float(_rng(self.seed, index, _PARTS, FINDINGS.index(name)).random())
            if name in self.redundant:
                one = (True, False) if u < (1.0 + BOTH_PARTS_RATE) / 2 else (False, True)
                parts[name] = ((True, True) if u < BOTH_PARTS_RATE else one) if name in present else (False, False)
            elif name in present:
                parts[name] = (True, True)
            else:
                parts[name] = (u < DECOY_RATE / 2, DECOY_RATE / 2 <= u < DECOY_RATE)
        return parts

    def zone_scores_of(self, index: int) -> Array:
        """Zone scores A-F of item ``index`` (BrixIA task), shape (6,), without rendering it."""
        return sample_zone_scores(_rng(self.seed, self._index(index), _CHOICE))

    def targets(self, key: str) -> torch.Tensor:
        """One label key of every item, stacked, without rendering any image.

        Parameters
        ----------
        key : str
            ``"labels"`` (NIH task; ``"cue"`` too with a cue option, ``"parts"``
            with two-part findings); ``"zone_scores"``, ``"score"`` or
            ``"detectors"`` (BrixIA task).

        Returns
        -------
        Tensor, shape (n, ...)
            As the items hold it.
        """
        keys = ("labels",) if self.task == "nih" else ("zone_scores", "score", "detectors")
        keys += ("cue",) if self.cue is not None else ()
        keys += ("parts",) if self.two_part else ()
        if key not in keys:
            raise KeyError(f"key: a {self.task} phantom has label keys {keys}, got {key!r}")
        if key == "parts":
            rows = [list(self.parts_of(i).values()) for i in range(self.n)]
            return torch.tensor(rows, dtype=torch.float32).reshape(self.n, len(self.two_part), 2)
        if key == "cue":
            return torch.tensor([float(self.cue_of(i)) for i in range(self.n)])
        if key == "labels":
            present = [self.findings_of(i) for i in range(self.n)]
            rows = [[float(name in names) for name in FINDINGS] for names in present]
            return torch.tensor(rows, dtype=torch.float32).reshape(self.n, len(FINDINGS))
        scores = torch.from_numpy(np.stack([self.zone_scores_of(i) for i in range(self.n)]).reshape(self.n, 6))
        if key == "zone_scores":
            return scores
        return scores.sum(1).float() if key == "score" else detectors_from_zone_scores(scores)

    def item(
        self, index: int, omit: Collection[str] = (), with_cue: bool = True,
        omit_parts: Collection[Tuple[str, int]] = (),
    ) -> Dict[str, Any]:
        """Item ``index``, optionally with some of its ground truth left out of the image.

        Parameters
        ----------
        index : int
        omit : collection of str
            Finding names (NIH task) not to draw, or zone letters (BrixIA task)
            to draw with score 0. Everything else is drawn as in item ``index``,
            so the image changes only inside the omitted findings' masks (or
            zones). The labels and masks describe what was drawn. The cue
            (if any) does not depend on ``omit``: it goes with the item's
            findings, drawn or not.
        with_cue : bool, default True
            False draws the item without its cue (if it has one): the image
            then differs only inside the cue's mask, and ``cue`` is 0 and
            ``cue_mask`` empty. The intervention of :mod:`captum_iba.cxr.phantom.cue`.
        omit_parts : collection of (str, int)
            Parts of two-part findings not to draw: ``(finding, side)`` with
            side 0 (image-left lung) or 1. The image changes only inside those
            parts' masks; the labels follow the finding's rule (OR or AND) on
            the parts left.

        Returns
        -------
        dict
            See the class notes.
        """
        index = self._index(index)
        allowed = FINDINGS if self.task == "nih" else ZONES
        unknown = set(omit) - set(allowed)
        if unknown:
            raise ValueError(f"omit: expected names from {allowed}, got {sorted(unknown)}")
        omit_parts = set(omit_parts)
        wrong = [part for part in omit_parts if part not in {(name, side) for name in self.two_part for side in (0, 1)}]
        if wrong:
            raise ValueError(f"omit_parts: expected (finding, side) with a finding of {self.two_part} and side 0 "
                             f"or 1, got {wrong}")
        anatomy = draw_anatomy(self.size, _rng(self.seed, index, _ANATOMY))
        item: Dict[str, Any] = {"image_id": f"phantom-{self.task}-{self.seed}-{index:05d}"}
        if self.task == "nih":
            whole = [name for name in self.findings_of(index) if name not in omit and name not in self.two_part]
            drawn = {name: tuple(shown and name not in omit and (name, side) not in omit_parts
                                 for side, shown in enumerate(sides)) for name, sides in self.parts_of(index).items()}
            # Each finding has its own stream, keyed by its position in FINDINGS; each part, by its side too.
            rngs = {name: _rng(self.seed, index, _LOOK, FINDINGS.index(name)) for name in whole}
            parts = {name: {side: _rng(self.seed, index, _LOOK, FINDINGS.index(name), side)
                            for side, shown in enumerate(sides) if shown} for name, sides in drawn.items()}
            drawing = draw_findings(anatomy, rngs, parts)
            change = drawing.density
            present = whole + [name for name, sides in drawn.items()
                               if (any(sides) if name in self.redundant else all(sides))]
            masks = drawing.masks.copy()
            masks[[FINDINGS.index(name) for name in self.two_part if name not in present]] = False  # decoys
            item["labels"] = torch.tensor([float(name in present) for name in FINDINGS])
            item["masks"] = torch.from_numpy(masks)
            item["boxes"] = [box for box in drawing.boxes if box[0] in present]
            if self.two_part:
                item["parts"] = torch.tensor([drawn[name] for name in self.two_part], dtype=torch.float32)
                item["part_masks"] = torch.from_numpy(np.stack([drawing.part_masks[name] for name in self.two_part]))
        else:
            scores = self.zone_scores_of(index)
            scores[[ZONES.index(zone) for zone in omit]] = 0
            masks = zone_masks(anatomy)
            change = draw_zone_opacities(anatomy, masks, scores, _rng(self.seed, index, _LOOK))
            zone_scores = torch.from_numpy(scores)
            item["zone_scores"] = zone_scores
            item["score"] = zone_scores.sum().float()
            item["zone_masks"] = torch.from_numpy(masks)
            item["severity_map"] = torch.from_numpy(np.tensordot(scores, masks, axes=1).astype(np.float32))
            item["detectors"] = detectors_from_zone_scores(zone_scores)
        density = anatomy.density + change
        if self.cue is not None:
            drawn = with_cue and self.cue_of(index)
            mask = _cue_mask(self.size, _rng(self.seed, index, _CUE, 1)) if drawn else np.zeros_like(density, bool)
            if drawn:
                density = np.where(mask, density + CUE_DENSITY, density)
            item["cue"] = torch.tensor(float(drawn))
            item["cue_mask"] = torch.from_numpy(mask)
        grey = _expose(density, _rng(self.seed, index, _EXPOSURE))
        item["image"] = to_model_input(grey)
        return item
