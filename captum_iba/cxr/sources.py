"""Datasets and models by name, as the command line names them."""

from __future__ import annotations

from typing import Optional

from torch import nn
from torch.utils.data import Dataset

from .brixia import BrixIA
from .checkpoints import TASKS, load_model
from .embedded import load_embedded_model
from .nih import NIHChestXray8
from .phantom import DEFAULT_SIZE, PhantomCXR

__all__ = ["DATASETS", "EMBEDDED_FOR_TASK", "open_dataset", "open_model"]

DATASETS = ("phantom", "nih", "brixia")

#: The embedded model that stands in for each task when no checkpoint is given.
EMBEDDED_FOR_TASK = {
    "nih": "nih_bce",
    "brixia_regression": "brixia_regression",
    "brixia_detectors": "brixia_detectors",
}


def open_dataset(
    name: str,
    root=None,
    *,
    task: str = "nih",
    size: Optional[int] = None,
    n: int = 64,
    seed: int = 0,
    split: Optional[str] = None,
) -> Dataset:
    """A chest X-ray dataset by name.

    Parameters
    ----------
    name : {"phantom", "nih", "brixia"}
    root : path, optional
        The dataset folder (required for "nih" and "brixia").
    task : {"nih", "brixia"}
        Which phantom ("phantom" only).
    size : int, optional
        Image side; defaults: the phantom's default size, 224 for real data.
    n, seed : int
        Number of phantom images and their seed ("phantom" only).
    split : {None, "train", "test"}
        Official split of real data.
    """
    if name == "phantom":
        return PhantomCXR(n, size=size or DEFAULT_SIZE, seed=seed, task=task)
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {DATASETS}, got {name!r}")
    if root is None:
        raise ValueError(f"dataset {name!r} is read from a folder: pass its root (--root PATH)")
    reader = NIHChestXray8 if name == "nih" else BrixIA
    return reader(root, split=split, size=size or 224)


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
        return load_embedded_model(EMBEDDED_FOR_TASK[task], **embedded_overrides)
    model = load_model(checkpoint)
    if model.task != task:
        raise ValueError(f"checkpoint {checkpoint} holds a {model.task!r} model, but a {task!r} model is needed")
    return model
