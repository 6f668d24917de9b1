"""The paper's three chest X-ray models, trained on the phantom: the embedded default.

``load_embedded_model(name)`` trains the model on this machine the first time
(a few minutes on a laptop CPU for all four) and caches it under
:func:`~captum_iba.cxr._cache.cache_dir`, keyed by everything that determines
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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ._cache import cache_dir, load_checkpoint, save_checkpoint
from .models import small_densenet
from .phantom import DEFAULT_SIZE, PHANTOM_VERSION, PhantomCXR
from .schema import collate, to_grey, to_model_input
from .training import evaluate, fit

__all__ = ["EMBEDDED_MODELS", "embedded_model_path", "load_embedded_model"]


@dataclass(frozen=True)
class _Recipe:
    """Everything that determines an embedded model's weights."""

    task: str
    loss: str
    target: str
    outputs: int
    size: int = DEFAULT_SIZE
    architecture: Tuple[Tuple[str, object], ...] = field(
        default=(("growth_rate", 12), ("block_config", (2, 2, 2, 2)), ("num_init_features", 16), ("bn_size", 2))
    )
    train_images: int = 3000
    test_images: int = 600
    epochs: int = 4
    batch_size: int = 32
    lr: float = 5e-3
    seed: int = 0

    def key(self) -> str:
        """Digest of the recipe and of the phantom's version (a new phantom means new weights)."""
        text = json.dumps({"recipe": asdict(self), "phantom": PHANTOM_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_RECIPES: Dict[str, _Recipe] = {
    "nih_bce": _Recipe(task="nih", loss="bce", target="labels", outputs=8),
    "nih_weighted_bce": _Recipe(task="nih", loss="weighted_bce", target="labels", outputs=8),
    "brixia_regression": _Recipe(task="brixia", loss="mse", target="score", outputs=1),
    "brixia_detectors": _Recipe(task="brixia", loss="bce", target="detectors", outputs=3),
}

#: Names accepted by :func:`load_embedded_model`.
EMBEDDED_MODELS = tuple(_RECIPES)


class _RenderedPhantom(Dataset):
    """Phantom items rendered once and held in memory (8-bit grey), with their targets."""

    def __init__(self, task: str, n: int, size: int, seed: int, progress: bool) -> None:
        phantom = PhantomCXR(n, size=size, seed=seed, task=task)
        loader = DataLoader(phantom, batch_size=64, collate_fn=collate)
        batches = tqdm(loader, desc=f"render {task} phantom (seed {seed})", unit="batch", disable=not progress)
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
def _rendered(task: str, n: int, size: int, seed: int, progress: bool) -> _RenderedPhantom:
    # Cached so that models of the same task (trained one after the other) share their data.
    return _RenderedPhantom(task, n, size, seed, progress)


def _build(recipe: _Recipe) -> nn.Module:
    return small_densenet(recipe.outputs, **dict(recipe.architecture))


def _train(recipe: _Recipe, progress: bool) -> Tuple[nn.Module, Dict[str, object]]:
    """Train a model by its recipe; returns it with its evaluation on held-out phantom images."""
    train = _rendered(recipe.task, recipe.train_images, recipe.size, recipe.seed, progress)
    test = _rendered(recipe.task, recipe.test_images, recipe.size, recipe.seed + 1, progress)
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
        raise ValueError(f"name: expected one of {EMBEDDED_MODELS}, got {name!r}")
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
        One of :data:`EMBEDDED_MODELS`.
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
    name : {"nih_bce", "nih_weighted_bce", "brixia_regression", "brixia_detectors"}
    progress : bool
        Show progress bars while training.
    **overrides : int
        Change the recipe (and so the cache key): ``size`` (image side),
        ``train_images``, ``test_images``, ``epochs``. For quick runs and
        tests; the defaults are the embedded models.

    Returns
    -------
    nn.Module
        A :func:`~captum_iba.cxr.small_densenet` in eval mode, with
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
