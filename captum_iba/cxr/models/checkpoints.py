"""Model checkpoints for the command line: the weights and how to rebuild the model.

A checkpoint written by :func:`save_model` (``captum-iba train`` writes them)
holds the state dict, the architecture (``small_densenet`` with its options,
or ``densenet121``), the number of outputs, the task and the input size, with
a SHA-256 digest of it all; :func:`load_model` rebuilds the model from it,
and refuses metadata it does not know with one line naming the file.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple

from torch import nn

from ..._files import NoSpaceError
from ._cache import cache_dir, load_checkpoint, write_checkpoint
from .densenets import densenet121_cxr, small_densenet

__all__ = ["TASKS", "save_model", "load_model"]

#: What a checkpoint's model explains: the output it was trained on.
TASKS = {
    "nih": ("labels", 8),  # 8 findings, one sigmoid each
    "brixia_regression": ("score", 1),  # global severity 0-18
    "brixia_detectors": ("detectors", 3),  # a zone scored 3 / 2 / 0-or-1 exists
}


_SMALL_OPTIONS = ("growth_rate", "block_config", "num_init_features", "bn_size")


def _rescue_folders() -> List[Path]:
    """Where a trained model goes when its own file cannot be written: the cache, then the temporary folder."""
    return [cache_dir() / "rescued", Path(tempfile.gettempdir())]


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

    Raises
    ------
    NoSpaceError
        If ``path`` cannot be written for lack of space. A model is never
        thrown away for that: it is written to the cache's ``rescued/``
        folder or the temporary folder instead, and the one-line message
        names ``path``, the space it needs and where the model was kept.
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {tuple(TASKS)}, got {task!r}")
    meta = {"task": task, "architecture": dict(architecture), "input_size": int(input_size)}
    path = Path(path)
    try:
        write_checkpoint(path, model.state_dict(), meta)
    except NoSpaceError as error:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for folder in _rescue_folders():
            kept = folder / f"{path.stem}-{stamp}-{os.getpid()}{path.suffix or '.pt'}"
            try:
                write_checkpoint(kept, model.state_dict(), meta)
            except OSError:
                continue
            raise NoSpaceError(f"{error}; the model was written to {kept} instead: move it where there is room",
                               error.errno, path) from error
        tried = ", ".join(str(folder) for folder in _rescue_folders())
        raise NoSpaceError(f"{error}; {tried} had no room for it either: free some space and train again",
                           error.errno, path) from error


def _architecture(path: Path, meta: Any) -> Tuple[str, dict, int]:
    """``(name, options, outputs)`` of a checkpoint's metadata, checked; ValueError naming ``path`` if unusable."""
    if not isinstance(meta, dict) or "task" not in meta:
        raise ValueError(f"{path} is not a readable captum_iba checkpoint (written by `captum-iba train`)")
    if meta["task"] not in TASKS:
        raise ValueError(f"{path}: unknown task {meta['task']!r} in its metadata; known: {', '.join(TASKS)}")
    size = meta.get("input_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ValueError(f"{path}: its input_size {size!r} is not an image side in pixels (an integer >= 8)")
    options = meta.get("architecture")
    if not isinstance(options, dict) or not isinstance(options.get("name"), str):
        raise ValueError(f"{path}: its architecture {options!r} has no name (small_densenet or densenet121)")
    options = dict(options)
    name = options.pop("name")
    known = {"small_densenet": _SMALL_OPTIONS, "densenet121": ()}
    if name not in known:
        raise ValueError(f"{path}: unknown architecture {name!r}; known: {', '.join(known)}")
    unknown = sorted(set(options) - set(known[name]))
    if unknown:
        allowed = ", ".join(known[name]) or "none"
        raise ValueError(f"{path}: unknown {name} option(s) {', '.join(unknown)} (allowed: {allowed})")
    return name, options, TASKS[meta["task"]][1]


def _build(path: Path, name: str, options: dict, outputs: int) -> nn.Module:
    try:
        return small_densenet(outputs, **options) if name == "small_densenet" else densenet121_cxr(outputs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: its {name} options {options} cannot build a model ({error})") from None


def _load_weights(path: Path, model: nn.Module, state_dict: Dict[str, Any], name: str) -> None:
    """``model.load_state_dict`` with a one-line error naming ``path`` when the weights do not fit."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    other = sorted(key for key in expected.keys() & state_dict.keys()
                   if tuple(getattr(state_dict[key], "shape", ())) != tuple(expected[key].shape))
    if missing or unexpected or other:
        first = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected else
                 f"{other[0]} has shape {tuple(state_dict[other[0]].shape)}, not {tuple(expected[other[0]].shape)}")
        raise ValueError(f"{path}: its weights do not fit its architecture {name} ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected, {len(other)} of another shape; first: {first})")
    model.load_state_dict(state_dict)


def load_model(path) -> nn.Module:
    """Rebuild the model saved at ``path``, in eval mode, with ``task`` and ``input_size`` set.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        One line naming ``path``: the file is corrupt or not a captum_iba
        checkpoint, its metadata names an unknown task, architecture or
        architecture option, or its weights do not fit its architecture.
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with warnings.catch_warnings():  # its "will be rebuilt" warning is for the cache, not a user's file
        warnings.simplefilter("ignore", RuntimeWarning)
        loaded = load_checkpoint(path)
    if loaded is None:
        raise ValueError(f"{path} is not a readable captum_iba checkpoint (written by `captum-iba train`)")
    state_dict, meta = loaded
    name, options, outputs = _architecture(path, meta)
    model = _build(path, name, options, outputs)
    _load_weights(path, model, state_dict, name)
    model.task, model.input_size = meta["task"], meta["input_size"]
    return model.eval()
