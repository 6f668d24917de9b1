"""Datasets and models by name, as the command line names them: two registries.

:data:`DATASETS` has one :class:`DatasetSource` per reader and
:data:`MODEL_SOURCES` one :class:`ModelSource` per way of getting a model. The
CLI's choices, the attribute runner and the evaluation read them; a new reader
is one entry here plus its module in :mod:`captum_iba.cxr`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

from torch import nn
from torch.utils.data import Dataset

from ..cxr import BrixIA, NIHChestXray8, PhantomCXR, load_embedded_model
from ..cxr.checkpoints import TASKS, load_model
from ..cxr.phantom import DEFAULT_SIZE

__all__ = ["DatasetSource", "DATASETS", "ModelSource", "MODEL_SOURCES", "EMBEDDED_FOR_TASK",
           "TASKS", "register_dataset", "open_dataset", "open_model"]

#: Seed of the phantom images the embedded models were trained on (and the statistics are estimated on).
TRAINING_PHANTOM_SEED = 0
#: Seed of held-out phantom images: apart from the embedded models' training (0) and test (1) seeds.
HELD_OUT_PHANTOM_SEED = 1000


@dataclass(frozen=True)
class DatasetSource:
    """A dataset the commands can read.

    Attributes
    ----------
    label : str
        Its name in messages and reports.
    task : str or None
        What its items carry: ``"nih"`` (8 findings with masks) or ``"brixia"``
        (zones, severity, detectors); None for a source that makes either
        (the phantom, by ``--task``).
    generated : bool
        True when nothing is read from disk (no ``root``, no official split).
    open : callable
        ``open(root=..., task=..., size=..., n=..., seed=..., split=...) -> Dataset``.
    """

    label: str
    task: Optional[str]
    generated: bool
    open: Callable[..., Dataset]


DATASETS: Dict[str, DatasetSource] = {}


def register_dataset(name: str, source: DatasetSource) -> DatasetSource:
    """Add a dataset reader under ``name`` (a new name)."""
    if name in DATASETS:
        raise ValueError(f"a dataset named {name!r} is registered already")
    DATASETS[name] = source
    return source


register_dataset("phantom", DatasetSource(
    "the embedded phantom", None, True,
    lambda root=None, task="nih", size=None, n=64, seed=0, split=None:
        PhantomCXR(n, size=size or DEFAULT_SIZE, seed=seed, task=task)))
register_dataset("nih", DatasetSource(
    "NIH ChestX-ray8", "nih", False,
    lambda root, split=None, size=None, **_: NIHChestXray8(root, split=split, size=size or 224)))
register_dataset("brixia", DatasetSource(
    "BrixIA", "brixia", False,
    lambda root, split=None, size=None, **_: BrixIA(root, split=split, size=size or 224)))


def open_dataset(name: str, root=None, *, task: str = "nih", size: Optional[int] = None, n: int = 64,
                 seed: int = 0, split: Optional[str] = None) -> Dataset:
    """A chest X-ray dataset by name.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (``"phantom"``, ``"nih"``, ``"brixia"``).
    root : path, optional
        The dataset folder (required for the sources that read one).
    task : {"nih", "brixia"}
        Which phantom (generated sources only).
    size : int, optional
        Image side; defaults: the phantom's default size, 224 for real data.
    n, seed : int
        Number of phantom images and their seed (generated sources only).
    split : {None, "train", "test"}
        Official split of real data.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {', '.join(DATASETS)}, got {name!r}")
    source = DATASETS[name]
    if source.generated:
        return source.open(task=task, size=size, n=n, seed=seed)
    if root is None:
        raise ValueError(f"dataset {name!r} is read from a folder: pass its root (--root PATH)")
    return source.open(root, split=split, size=size)


#: The embedded model that stands in for each task when no model is given.
EMBEDDED_FOR_TASK = {
    "nih": "nih_bce",
    "brixia_regression": "brixia_regression",
    "brixia_detectors": "brixia_detectors",
}


@dataclass(frozen=True)
class ModelSource:
    """A way to get the model to explain: ``open(task, spec, **options) -> nn.Module``."""

    label: str
    open: Callable[..., nn.Module]


def _checkpoint(task: str, path, **_) -> nn.Module:
    model = load_model(path)
    if model.task != task:
        raise ValueError(f"checkpoint {path} holds a {model.task!r} model, but a {task!r} model is needed")
    return model


MODEL_SOURCES: Dict[str, ModelSource] = {
    "embedded": ModelSource("the embedded phantom model (trained on first use, then cached)",
                            lambda task, spec=None, **overrides: load_embedded_model(EMBEDDED_FOR_TASK[task],
                                                                                     **overrides)),
    "checkpoint": ModelSource("a file written by `captum-iba train`", _checkpoint),
}


def open_model(task: str, checkpoint=None, **embedded_overrides: int) -> nn.Module:
    """The model for ``task``: from ``checkpoint``, else the embedded phantom model.

    Parameters
    ----------
    task : {"nih", "brixia_regression", "brixia_detectors"}
    checkpoint : path, optional
        A file written by ``captum-iba train``; its task must be ``task``.
    **embedded_overrides : int
        Recipe overrides for the embedded model (see ``load_embedded_model``).
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {tuple(TASKS)}, got {task!r}")
    if checkpoint is None:
        return MODEL_SOURCES["embedded"].open(task, **embedded_overrides)
    return MODEL_SOURCES["checkpoint"].open(task, checkpoint)
