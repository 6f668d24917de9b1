"""Opening a store folder: the output folder's checks, each method's folder and configuration, the writer lock."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import zarr

from ..._files import fsync_dir
from .files import (CONFIG, FORMAT, INDEX, MAPS, MARKER, SCRATCH, STATS, TRAINED, StoreError, config_hash, disk_space,
                    file_record, fsync_tree, lock_path, method_folders, read_marker, seal, write_json)
from .lock import DEFAULT_LEASE_S, WriterLock, check_lock
from .method import MethodStore


__all__ = ["check_out_dir", "config_hash", "writer_lock", "check_writer", "open_method_store"]


def _scratch(out: Path, method: str) -> Path:
    return out / f"{SCRATCH}{secrets.token_hex(4)}-{method}"


def _is_scratch_of(name: str, method: str) -> bool:
    # Exactly "-<method>" after the 8 hex digits: "regression" never claims "regression-deviation"'s.
    return name.startswith(SCRATCH) and name[len(SCRATCH) + 8:] == f"-{method}"


# The folder and its configuration.


def check_out_dir(out_dir) -> Path:
    """Check that ``out_dir`` can hold a store, without changing anything.

    It may not exist yet (it is created under a writable folder), be empty,
    or be a store of this format; it must be writable.

    Returns
    -------
    Path
        ``out_dir`` made absolute.

    Raises
    ------
    StoreError
        If it is a file, another tool's folder (not empty, no marker), a store
        whose marker was deleted, a store of another format, or not writable.
    """
    out = Path(out_dir).expanduser().absolute()
    if not out.exists():
        parent = out.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise StoreError(f"{out}: cannot be created, {parent} is not a writable folder")
        return out
    if not out.is_dir():
        raise StoreError(f"{out} is a file, not a folder")
    try:
        # Not counted: our scratch entries and the marker's temporary file, which another run
        # starting on this folder at the same moment may be writing.
        entries = [name for name in os.listdir(out) if not name.startswith((SCRATCH, f".{MARKER}."))]
    except OSError as error:
        raise StoreError(f"{out}: cannot be read ({error.strerror})") from error
    if MARKER in entries or method_folders(out, entries):
        read_marker(out)
    elif entries:
        raise StoreError(
            f"{out} is not empty and is not a captum-iba store (no {MARKER}): it belongs to "
            "another tool or holds other files; choose a new or empty folder"
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=SCRATCH, dir=out)
    except OSError as error:
        raise StoreError(f"{out} is not writable ({error.strerror})") from error
    os.close(handle)
    os.unlink(probe)
    return out


def _flatten(config: dict, prefix: str = "") -> Dict[str, object]:
    flat: Dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(stored: dict, requested: dict) -> List[str]:
    """``"key: stored -> requested"`` for every setting that differs."""
    old, new = _flatten(stored), _flatten(requested)
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)]


def _remove(path: Path) -> None:
    """Remove a method folder: renamed away first, so that no half-removed folder remains in use."""
    trash = _scratch(path.parent, path.name)
    os.replace(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash)


# The writer lock.


def writer_lock(out_dir, method: str, run_id: str, *, lease_s: float = DEFAULT_LEASE_S) -> WriterLock:
    """Take the writer lock of ``method`` in the store ``out_dir`` for the run ``run_id``.

    Creates the store folder and its marker if needed (nothing in the method's
    folder). Hold the lock for the whole run: ``with writer_lock(...) as lock:``,
    or call ``lock.release()``; see :mod:`~captum_iba.app.store.lock`.

    Returns
    -------
    WriterLock
        Held; its heartbeat thread runs until it is released.

    Raises
    ------
    StoreError
        See :func:`check_out_dir`; also when another live run holds the lock
        (the message names its host, PID and start time), or the disk is full.
    """
    out = check_out_dir(out_dir)
    with disk_space(out):
        out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).exists():
        write_json(out / MARKER, {"format": FORMAT})
    return WriterLock(lock_path(out, method), run_id, lease_s, label=str(out / method)).acquire()


def check_writer(out_dir, method: str, run_id: str) -> None:
    """Check that the run ``run_id`` holds ``method``'s writer lock (the other processes of a run).

    Raises
    ------
    StoreError
        If no run or another run holds it.
    """
    out = Path(out_dir).expanduser().absolute()
    check_lock(lock_path(out, method), run_id, label=str(out / method))


def open_method_store(out_dir, method: str, config: dict, *, plan: Optional[dict] = None, overwrite: bool = False,
                      lock: Optional[WriterLock] = None) -> "MethodStore":
    """Create or reopen the part of a store that holds ``method``'s maps (one process only).

    Parameters
    ----------
    out_dir : path
        The store; created if needed (see :func:`check_out_dir`).
    method : str
        The method key, e.g. ``"iba"`` or ``"regression-deviation"``.
    config : dict
        Everything that determines the maps (JSON-serialisable).
    plan : dict, optional
        What the run will write: ``{"items": N, "batches": B, "maps": M}``
        (``maps`` None where it is not known before the maps are computed);
        recorded before any batch, so that a store tells whether it is
        complete (:func:`~captum_iba.app.store.verify.verify_store`).
    overwrite : bool
        Replace the method's maps when they were computed with another
        configuration, or when the folder is damaged beyond what a rerun
        repairs (a missing or changed ``config.json``, a changed statistics
        file), instead of refusing. (A method folder that holds no done maps
        yet is replaced in any case: nothing is lost.)
    lock : WriterLock, optional
        The run's lock of this method (:func:`writer_lock`), held for the run.
        Without it, the lock is taken for the time of this call, so a store
        another run is writing is refused rather than changed under it.

    Returns
    -------
    MethodStore
        Its damaged and cut-short index lines dropped (listed in its
        ``repaired`` attribute: their batches are no longer done), and its
        arrays that no done batch refers to removed. A store written before
        checksums gets them (:meth:`~captum_iba.app.store.MethodStore.seal_legacy`).

    Raises
    ------
    StoreError
        See :func:`check_out_dir` and :func:`writer_lock`; also when the folder
        holds maps of the method computed with another configuration, or a
        missing, changed or unreadable ``config.json`` or recorded file, and
        ``overwrite`` is false, or ``lock`` is not the held lock of this method.
    """
    if lock is None:
        with writer_lock(out_dir, method, f"open-{secrets.token_hex(4)}") as own:
            return open_method_store(out_dir, method, config, plan=plan, overwrite=overwrite, lock=own)
    out = check_out_dir(out_dir)
    if lock.path != lock_path(out, method):
        raise StoreError(f"lock: {lock.path} is not the writer lock of {out / method}")
    lock.check()
    config = json.loads(json.dumps(config))  # as it reads back from disk
    folder = out / method
    with disk_space(folder):
        for entry in out.iterdir():  # left by a run killed while building or removing the folder
            if _is_scratch_of(entry.name, method):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        if folder.exists() and _replace(folder, method, config, overwrite):
            _remove(folder)
        if not folder.exists():
            _create_method_folder(folder, config, plan)
        store = MethodStore(folder)
        store.seal_legacy()
        store.repaired = store.repair_index()
        for relative in [name for name, problem in store.file_problems().items() if problem.startswith("missing")]:
            del store.files[relative]  # deleted to be made again: this run writes it anew
        if not (store.maps_dir / "zarr.json").is_file():
            zarr.open_group(str(store.maps_dir), mode="a")
            store.files[f"{MAPS}/zarr.json"] = file_record(store.maps_dir / "zarr.json")
        if plan is not None:
            store.set_plan(plan)
        store._write_config()
        store.sweep()
    return store


def _replace(folder: Path, method: str, config: dict, overwrite: bool) -> bool:
    """Whether the existing method folder is to be replaced, or raise why it may not be.

    Refused only where maps would be lost without ``overwrite``: a folder
    without any done map is simply replaced.
    """
    try:
        previous = MethodStore(folder)
        previous.scan()  # its lines must record this config.json
    except StoreError:
        if overwrite:
            return True
        raise
    changed = {relative: problem for relative, problem in previous.file_problems().items()
               if not problem.startswith("missing")}
    if changed and not overwrite:
        relative, problem = sorted(changed.items())[0]
        raise StoreError(f"{folder / relative}: {problem.split(': ', 1)[1]}; {_repair_advice(relative, method)}")
    if previous.config == config:
        return bool(changed)
    if previous.complete_arrays() and not overwrite:
        changes = "; ".join(_differences(previous.config, config))
        raise StoreError(
            f"{folder.parent} holds {method!r} maps computed with another configuration "
            f"({changes}); rerun with the same options to resume them, or pass "
            "--overwrite to replace them"
        )
    return True


def _repair_advice(relative: str, method: str) -> str:
    """What to do about a changed file of a method folder (``relative`` to it)."""
    replace = f"rerun with --overwrite to replace the {method!r} maps"
    if relative.startswith(f"{STATS}/"):
        return f"delete it to compute the statistics again, or {replace}"
    if relative.startswith(f"{TRAINED}/"):
        return (f"rerun with --overwrite to train it again and replace the {method!r} maps, or delete it to train "
                "it again for the maps not done yet")
    return f"delete it for the next run to write it again, or {replace}"


def _create_method_folder(folder: Path, config: dict, plan: Optional[dict]) -> None:
    """Build the folder under a scratch name and rename it into place: it appears complete, with its
    plan, or not at all."""
    scratch = _scratch(folder.parent, folder.name)
    try:
        scratch.mkdir()
        zarr.open_group(str(scratch / MAPS), mode="w")
        files = {f"{MAPS}/zarr.json": file_record(scratch / MAPS / "zarr.json")}
        write_json(scratch / CONFIG, seal({"config": config, "sha256": config_hash(config), "plan": plan,
                                           "files": files}))
        (scratch / INDEX).mkdir()
        fsync_tree(scratch)
        os.replace(scratch, folder)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    fsync_dir(folder.parent)
