"""The paper's three chest X-ray models, trained on the phantom: the embedded default.

``load_embedded_model(name)`` trains the model on this machine the first time
(a few minutes on a laptop CPU for all four) and caches it under
:func:`~captum_iba.cxr.models._cache.cache_dir`, keyed by everything that determines
the weights (the recipe, the phantom's version, the image size); later calls
load it. A corrupt cache file is detected and rebuilt.

=====================  ============================================  =========================
name                   model                                          loss
=====================  ============================================  =========================
``nih_bce``            8 findings (NIH-like phantom)                  BCE
``nih_weighted_bce``   8 findings (NIH-like phantom)                  weighted BCE (Eq. 8)
``brixia_regression``  global severity score 0-18                     MSE (Eq. 9)
``brixia_detectors``   a zone scored 3 / 2 / 0-or-1 exists            BCE
=====================  ============================================  =========================

Three more models, trained the same way on the NIH-like phantom with the cue
option (see :class:`~captum_iba.cxr.PhantomCXR`), are the ground truth of what
a model uses (:mod:`captum_iba.cxr.phantom.cue`); they are not among the paper's four
(:data:`EMBEDDED_MODELS`) but in :data:`CUE_MODELS`:

========================  ==========================================================  ============
name                      training data                                               loss
========================  ==========================================================  ============
``nih_cue``               a side marker on 95 % of the Cardiomegaly images, 5 % else  BCE
``nih_cue_clean``         the same images with no marker                              BCE
``nih_cue_weighted_bce``  as ``nih_cue``                                              weighted BCE
========================  ==========================================================  ============

Two Vision Transformers (:func:`~captum_iba.cxr.models.vit.small_vit`, timm
needed), trained the same way, are the token-layout models of the ViT study
(:data:`VIT_MODELS`): ``nih_vit`` (8 findings, BCE) and
``brixia_regression_vit`` (severity score, MSE).

One more, in :data:`REDUNDANT_MODELS`, is the ground truth of *sufficient*
against *all* evidence (:mod:`captum_iba.app.report.redundant`): trained on
the phantom with two-part findings (:data:`REDUNDANT_PHANTOM`), Mass drawn as
two lesions either of which is the finding (OR) and Effusion as two parts
(one per lung base) both of which are (AND, bilateral effusion):

=================  ===================================================================  ====
name               training data                                                        loss
=================  ===================================================================  ====
``nih_redundant``  Mass as two lesions, each sufficient; Effusion as two parts, both     BCE
                   needed; each on 30 % of the images, no other finding
=================  ===================================================================  ====
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ._cache import cache_dir, load_checkpoint, save_checkpoint
from .densenets import small_densenet
from ..._progress import progress as progress_lines
from ..phantom.dataset import BOTH_PARTS_RATE, DECOY_RATE, DEFAULT_CUE_RATES, DEFAULT_SIZE, PHANTOM_VERSION, PhantomCXR
from ..schema import FINDINGS, collate, to_grey, to_model_input
from .training import evaluate, fit
from .vit import small_vit

__all__ = ["EMBEDDED_MODELS", "CUE_MODELS", "VIT_MODELS", "CUE_FINDING", "REDUNDANT_MODELS", "REDUNDANT_PHANTOM",
           "embedded_model_path", "load_embedded_model"]

#: The finding the cue models' marker goes with: the phantom's hardest (a subtle
#: enlargement of the heart), so that the marker is the easier route to the label.
CUE_FINDING = "Cardiomegaly"

#: The redundant-evidence phantom (:class:`~captum_iba.cxr.PhantomCXR`'s keywords): a finding whose
#: lesions are each sufficient (OR) and one whose parts are jointly needed (AND), of different
#: looks (a round opacity, fluid at the bases) so that a part of one is not taken for the other;
#: each on 30 % of the images and no other finding, so that a small training set holds
#: enough of each kind of image (one part, both) and no other lesion overlaps a part.
REDUNDANT_PHANTOM = MappingProxyType({
    "redundant": ("Mass",), "conjunctive": ("Effusion",),
    "prevalence": MappingProxyType({name: 0.3 if name in ("Mass", "Effusion") else 0.0 for name in FINDINGS}),
})


@dataclass(frozen=True)
class _Recipe:
    """Everything that determines an embedded model's weights."""

    task: str
    loss: str
    target: str
    outputs: int
    size: int = DEFAULT_SIZE
    family: str = "densenet"
    architecture: Tuple[Tuple[str, object], ...] = field(
        default=(("growth_rate", 12), ("block_config", (2, 2, 2, 2)), ("num_init_features", 16), ("bn_size", 2))
    )
    train_images: int = 3000
    test_images: int = 600
    epochs: int = 4
    batch_size: int = 32
    lr: float = 5e-3
    seed: int = 0
    cue: Optional[str] = None
    cue_rates: Tuple[float, float] = DEFAULT_CUE_RATES
    redundant: Tuple[str, ...] = ()
    conjunctive: Tuple[str, ...] = ()
    prevalence: Tuple[Tuple[str, float], ...] = ()

    def phantom_options(self) -> Dict[str, object]:
        """The :class:`PhantomCXR` keywords of the recipe's data beyond its task and size."""
        options: Dict[str, object] = {} if self.cue is None else {"cue": self.cue, "cue_rates": self.cue_rates}
        if self.redundant or self.conjunctive:
            options.update(redundant=self.redundant, conjunctive=self.conjunctive)
        if self.prevalence:
            options["prevalence"] = dict(self.prevalence)
        return options

    def key(self) -> str:
        """Digest of the recipe and of the phantom's version (a new phantom means new weights)."""
        recipe = asdict(self)
        if self.cue is None:  # the models without a cue keep the keys they had before the option
            del recipe["cue"], recipe["cue_rates"]
        for name in ("redundant", "conjunctive", "prevalence"):  # as for the cue
            if not recipe[name]:
                del recipe[name]
        if self.redundant or self.conjunctive:  # the phantom's rates of one part, both parts, decoys
            recipe["part_rates"] = (BOTH_PARTS_RATE, DECOY_RATE)
        if self.family == "densenet":  # as for the cue: the DenseNets keep their keys
            del recipe["family"]
        text = json.dumps({"recipe": recipe, "phantom": PHANTOM_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_RECIPES: Dict[str, _Recipe] = {
    "nih_bce": _Recipe(task="nih", loss="bce", target="labels", outputs=8),
    "nih_weighted_bce": _Recipe(task="nih", loss="weighted_bce", target="labels", outputs=8),
    "brixia_regression": _Recipe(task="brixia", loss="mse", target="score", outputs=1),
    "brixia_detectors": _Recipe(task="brixia", loss="bce", target="detectors", outputs=3),
}
#: The paper's four models.
EMBEDDED_MODELS = tuple(_RECIPES)

# Fewer images than the paper's models, so that each trains in well under a minute.
_CUE_RECIPE = _Recipe(task="nih", loss="bce", target="labels", outputs=8, train_images=2000, test_images=400,
                      cue=CUE_FINDING)
_RECIPES.update(
    {
        "nih_cue": _CUE_RECIPE,
        "nih_cue_clean": replace(_CUE_RECIPE, cue_rates=(0.0, 0.0)),
        "nih_cue_weighted_bce": replace(_CUE_RECIPE, loss="weighted_bce"),
    }
)
#: The models of the cue study (:mod:`captum_iba.cxr.phantom.cue`); also accepted by :func:`load_embedded_model`.
CUE_MODELS = tuple(name for name in _RECIPES if name not in EMBEDDED_MODELS)

# The ViTs (timm, an extra): a 12 x 12 patch grid at 96 px, near the paper's 14 x 14. A ViT learns
# more slowly than the DenseNet: ten epochs at lr 1e-3 (on 3000 images: mean AUC 0.83 in about two
# minutes on two cores, against 0.55 with the DenseNet's four at 5e-3); the regressor on 2000.
_VIT_RECIPE = _Recipe(task="nih", loss="bce", target="labels", outputs=8, family="vit",
                      architecture=(("dim", 64), ("depth", 4), ("heads", 4)), epochs=10, lr=1e-3)
_RECIPES.update({"nih_vit": _VIT_RECIPE,
                 "brixia_regression_vit": replace(_VIT_RECIPE, task="brixia", loss="mse", target="score", outputs=1,
                                                  train_images=2000)})
#: The embedded Vision Transformers (need ``timm``); also accepted by :func:`load_embedded_model`.
VIT_MODELS = ("nih_vit", "brixia_regression_vit")
# Half the cue models' images and one epoch fewer: seconds on two idle cores (about a minute when
# they are shared), and the model follows both rules by intervention (see the study).
_RECIPES["nih_redundant"] = _Recipe(task="nih", loss="bce", target="labels", outputs=8, train_images=1000,
                                    test_images=200, epochs=3, redundant=REDUNDANT_PHANTOM["redundant"],
                                    conjunctive=REDUNDANT_PHANTOM["conjunctive"],
                                    prevalence=tuple(REDUNDANT_PHANTOM["prevalence"].items()))
#: The model of the redundant-evidence study; also accepted by :func:`load_embedded_model`.
REDUNDANT_MODELS = ("nih_redundant",)


class _RenderedPhantom(Dataset):
    """Phantom items rendered once and held in memory (8-bit grey), with their targets."""

    def __init__(self, phantom: PhantomCXR, progress: bool) -> None:
        task, seed = phantom.task, phantom.seed
        loader = DataLoader(phantom, batch_size=64, collate_fn=collate)
        batches = progress_lines(loader, desc=f"render {task} phantom (seed {seed})", unit="batch", enabled=progress)
        self.grey = torch.cat([(to_grey(batch["image"]) * 255).round().to(torch.uint8) for batch in batches])
        keys = ("labels",) if task == "nih" else ("score", "detectors")
        self._targets = {key: phantom.targets(key) for key in keys}

    def __len__(self) -> int:
        return len(self.grey)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        item = {key: values[index] for key, values in self._targets.items()}
        item["image"] = to_model_input(self.grey[index].numpy() / np.float32(255))
        return item

    def targets(self, key: str) -> torch.Tensor:
        return self._targets[key]


@lru_cache(maxsize=2)
def _rendered(task: str, n: int, size: int, seed: int, options: Tuple[Tuple[str, object], ...],
              progress: bool) -> _RenderedPhantom:
    # Cached so that models of the same data (trained one after the other) share it; the
    # options come as sorted pairs, hashable (a prevalence as pairs too, made a dict again).
    keywords = {key: dict(value) if key == "prevalence" else value for key, value in options}
    return _RenderedPhantom(PhantomCXR(n, size=size, seed=seed, task=task, **keywords), progress)


def _build(recipe: _Recipe) -> nn.Module:
    if recipe.family == "vit":
        return small_vit(recipe.outputs, size=recipe.size, **dict(recipe.architecture))
    return small_densenet(recipe.outputs, **dict(recipe.architecture))


def _train(recipe: _Recipe, progress: bool) -> Tuple[nn.Module, Dict[str, object]]:
    """Train a model by its recipe; returns it with its evaluation on held-out phantom images."""
    options = tuple(sorted((key, tuple(value.items()) if key == "prevalence" else value)
                           for key, value in recipe.phantom_options().items()))
    train = _rendered(recipe.task, recipe.train_images, recipe.size, recipe.seed, options, progress)
    test = _rendered(recipe.task, recipe.test_images, recipe.size, recipe.seed + 1, options, progress)
    torch.manual_seed(recipe.seed)
    model = _build(recipe)
    fit(
        model,
        train,
        recipe.loss,
        target=recipe.target,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        seed=recipe.seed,
        progress=progress,
    )
    return model, evaluate(model, test, target=recipe.target)


_RECIPE_OVERRIDES = ("size", "train_images", "test_images", "epochs")


def _recipe(name: str, overrides: Dict[str, int]) -> _Recipe:
    if name not in _RECIPES:
        raise ValueError(f"name: expected one of {tuple(_RECIPES)}, got {name!r}")
    unknown = set(overrides) - set(_RECIPE_OVERRIDES)
    if unknown:
        raise TypeError(f"unexpected recipe overrides {sorted(unknown)}; accepted: {_RECIPE_OVERRIDES}")
    for key, value in overrides.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}: expected a positive integer, got {value!r}")
    return replace(_RECIPES[name], **overrides)


def embedded_model_path(name: str, **overrides: int) -> Path:
    """Cache file of an embedded model (it may not exist yet).

    Parameters
    ----------
    name : str
        One of :data:`EMBEDDED_MODELS`, :data:`CUE_MODELS` or :data:`REDUNDANT_MODELS`.
    **overrides : int
        As :func:`load_embedded_model`.
    """
    return _cache_path(name, _recipe(name, overrides))


def _cache_path(name: str, recipe: _Recipe) -> Path:
    return cache_dir() / "models" / f"{name}-{recipe.key()}.pt"


def load_embedded_model(name: str, *, progress: bool = True, **overrides: int) -> nn.Module:
    """One of the paper's models, trained on the phantom (on first use) and cached.

    Parameters
    ----------
    name : str
        One of :data:`EMBEDDED_MODELS` (``"nih_bce"``, ``"nih_weighted_bce"``,
        ``"brixia_regression"``, ``"brixia_detectors"``), :data:`CUE_MODELS`,
        :data:`VIT_MODELS` or :data:`REDUNDANT_MODELS`.
    progress : bool
        Show progress bars while training.
    **overrides : int
        Change the recipe (and so the cache key): ``size`` (image side),
        ``train_images``, ``test_images``, ``epochs``. For quick runs and
        tests; the defaults are the embedded models.

    Returns
    -------
    nn.Module
        A :func:`~captum_iba.cxr.small_densenet` (or, for :data:`VIT_MODELS`,
        a :func:`~captum_iba.cxr.models.vit.small_vit`) in eval mode, with
        ``input_size`` (the image side it was trained at, the phantom's
        default) and ``metrics`` (its :func:`~captum_iba.cxr.evaluate` result
        on held-out phantom images).
    """
    recipe = _recipe(name, overrides)
    path = _cache_path(name, recipe)
    cached = load_checkpoint(path)
    model = _build(recipe)
    if cached is not None:
        state_dict, meta = cached
        model.load_state_dict(state_dict)
        metrics = meta["metrics"]
    else:
        model, metrics = _train(recipe, progress)
        save_checkpoint(path, model.state_dict(), {"name": name, "recipe": asdict(recipe), "metrics": metrics})
    model.input_size = recipe.size
    model.metrics = metrics
    return model.eval()
