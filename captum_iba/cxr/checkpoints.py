"""Model checkpoints for the command line: the weights and how to rebuild the model.

A checkpoint written by :func:`save_model` (``captum-iba train`` writes them)
holds the state dict, the architecture (``small_densenet`` with its options,
or ``densenet121``), the number of outputs, the task and the input size, with
a SHA-256 digest of it all; :func:`load_model` rebuilds the model from it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Dict

from torch import nn

from ._cache import load_checkpoint, save_checkpoint
from .models import densenet121_cxr, small_densenet

__all__ = ["TASKS", "save_model", "load_model"]

#: What a checkpoint's model explains: the output it was trained on.
TASKS = {
    "nih": ("labels", 8),  # 8 findings, one sigmoid each
    "brixia_regression": ("score", 1),  # global severity 0-18
    "brixia_detectors": ("detectors", 3),  # a zone scored 3 / 2 / 0-or-1 exists
}


def save_model(model: nn.Module, path, *, task: str, architecture: Dict[str, Any], input_size: int) -> None:
    """Write ``model`` to ``path`` atomically.

    Parameters
    ----------
    model : nn.Module
    path : str or Path
    task : {"nih", "brixia_regression", "brixia_detectors"}
    architecture : dict
        ``{"name": "small_densenet", **options}`` or ``{"name": "densenet121"}``.
    input_size : int
        Image side the model was trained at, in pixels.
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {tuple(TASKS)}, got {task!r}")
    meta = {"task": task, "architecture": dict(architecture), "input_size": int(input_size)}
    save_checkpoint(Path(path), model.state_dict(), meta)


def load_model(path) -> nn.Module:
    """Rebuild the model saved at ``path``, in eval mode, with ``task`` and ``input_size`` set.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is corrupt or not a captum_iba checkpoint.
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with warnings.catch_warnings():  # its "will be rebuilt" warning is for the cache, not a user's file
        warnings.simplefilter("ignore", RuntimeWarning)
        loaded = load_checkpoint(path)
    if loaded is None or "task" not in loaded[1]:
        raise ValueError(f"{path} is not a readable captum_iba checkpoint (written by `captum-iba train`)")
    state_dict, meta = loaded
    options = dict(meta["architecture"])
    name = options.pop("name")
    outputs = TASKS[meta["task"]][1]
    if name == "small_densenet":
        model = small_densenet(outputs, **options)
    elif name == "densenet121":
        model = densenet121_cxr(outputs)
    else:
        raise ValueError(f"{path}: unknown architecture {name!r}")
    model.load_state_dict(state_dict)
    model.task, model.input_size = meta["task"], meta["input_size"]
    return model.eval()
