"""The user's model cache: where it is, atomic writes, verified reads.

A checkpoint is one ``torch.save`` file holding the state dict, metadata and
a SHA-256 digest of both. A file that cannot be read, or whose digest does
not match, is reported as corrupt (a warning) and treated as absent, so that
the caller rebuilds it instead of trusting it. A cache file that cannot be
written (a full disk) is skipped with a warning: the model in memory is kept.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..._hashing import tensor_digest
from ..._files import NoSpaceError, atomic_path, disk_space

__all__ = ["cache_dir", "write_checkpoint", "save_checkpoint", "load_checkpoint"]

_FORMAT = 1


def cache_dir() -> Path:
    """The package's cache folder (not created).

    ``$CAPTUM_IBA_CACHE`` if set, else ``$XDG_CACHE_HOME/captum_iba``, else
    ``~/.cache/captum_iba``.
    """
    override = os.environ.get("CAPTUM_IBA_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "captum_iba"


def _digest(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> str:
    return tensor_digest(state_dict, prefix=json.dumps(meta, sort_keys=True))


def write_checkpoint(path: Path, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write a checkpoint atomically: to a temporary file in the same folder, then renamed.

    Parameters
    ----------
    path : Path
        Destination; its folder is created if needed.
    state_dict : mapping of str to Tensor
    meta : mapping
        JSON-serialisable metadata.

    Raises
    ------
    NoSpaceError
        One line naming ``path``, the space needed and the space free, if the
        disk is full; ``path`` is then left as it was.
    OSError
        If the file cannot be written for another reason.
    """
    path = Path(path)
    state_dict = {key: value.detach().cpu() for key, value in state_dict.items()}
    payload = {"format": _FORMAT, "state_dict": state_dict, "meta": dict(meta), "sha256": _digest(state_dict, meta)}
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # in memory first: a full disk then fails as an OSError with its errno
    data = buffer.getvalue()
    with disk_space(path, len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)


def save_checkpoint(path: Path, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> bool:
    """Keep a model in the cache (:func:`write_checkpoint`), or go on without it.

    The cache only saves retraining: when the file cannot be written (a full
    disk, a read-only folder), a one-line ``RuntimeWarning`` says so and the
    caller keeps using the model it holds; nothing is left half-written.

    Returns
    -------
    bool
        Whether the checkpoint was written.
    """
    try:
        write_checkpoint(path, state_dict, meta)
    except OSError as error:
        reason = str(error) if isinstance(error, NoSpaceError) else f"{path}: {error.strerror or error}"
        warnings.warn(f"could not cache the model ({reason}); going on without the cache: "
                      "it will be trained again next time", RuntimeWarning, stacklevel=2)
        return False
    return True


def load_checkpoint(path: Path) -> Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    (state_dict, meta) or None
        None if the file does not exist, or is corrupt (with a warning).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state_dict, meta = payload["state_dict"], payload["meta"]
        intact = payload["format"] == _FORMAT and payload["sha256"] == _digest(state_dict, meta)
    except Exception as error:  # any unreadable file is corrupt, whatever the reader's complaint
        intact, reason = False, f"{type(error).__name__}: {error}"
    else:
        reason = "its content does not match its digest"
    if not intact:
        warnings.warn(f"ignoring corrupt cache file {path} ({reason}); it will be rebuilt", RuntimeWarning)
        return None
    return state_dict, meta
