"""The output store of ``captum-iba attribute``, and :func:`read_maps` to read it.

One store is a folder that every process of a run writes its own part of::

    OUT/
      captum-iba-attribute.json     marker: format tag (the folder is ours)
      <method>/                     one folder per method key ("iba", "regression-deviation", ...)
        config.json                 the configuration the maps were computed with, and its hash
        stats/<layer>.pt            the feature statistics they were computed with (IBA family)
        maps.zarr/                  a Zarr group; one array per computed batch,
          b000012-<run>/            (maps, 1, h, w), one chunk: written once, never changed
        index/<run>-rank000.jsonl   append-only index: one line per map and status
        runs.jsonl                  one line per finished run (processes, maps, seconds)

A batch's maps are written to a fresh array and made durable (fsync) before
their ``done`` lines are appended to the index in one write, itself fsynced:
write, then mark. A batch counts as done only when all of its ``done`` lines
are present, so a process killed at any moment leaves nothing half-written
counted as done; arrays no complete batch refers to are swept by the next run.

Only one run may write to a store at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import zarr

from .._files import atomic_path, fsync_dir
from ..stats import FeatureStats

__all__ = [
    "FORMAT",
    "StoreError",
    "MethodStore",
    "BatchWriter",
    "Maps",
    "check_out_dir",
    "open_method_store",
    "read_index",
    "read_maps",
]

#: Format tag of the marker file; another tag (or none) means the folder is not ours.
FORMAT = "captum_iba.attribute/1"
MARKER = "captum-iba-attribute.json"
_CONFIG, _MAPS, _INDEX, _STATS, _RUNS = "config.json", "maps.zarr", "index", "stats", "runs.jsonl"
# Scratch entries of the store itself: new method folders being built, old ones being removed.
_SCRATCH = ".tmp-"

#: Key of one map: (image id, method key, target index; -1 for a single-output regressor).
MapKey = Tuple[str, str, int]


class StoreError(Exception):
    """The output folder cannot be used: another tool's, not writable, or a changed configuration."""


# Durable writes.


def _fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path`` (a Zarr array just written)."""
    for folder, _, files in os.walk(path, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def _write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as JSON atomically: a temporary file in the same folder, fsync, rename."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=1, sort_keys=True))


def _append_lines(path: Path, rows: Sequence[dict], durable: bool) -> None:
    """Append one JSON line per row in a single write (fsynced if ``durable``)."""
    data = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    if durable and new:
        fsync_dir(path.parent)


def _read_lines(path: Path) -> List[dict]:
    """The complete lines of a JSON-lines file; a last line without newline (a torn write) is skipped."""
    text = path.read_text()
    lines = text.split("\n")[:-1]  # the part after the last newline is empty or torn
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise StoreError(f"{path}, line {number}: not a valid index line ({error})") from error
    return rows


# The folder and its configuration.


def _read_marker(out: Path) -> None:
    """Check that ``out`` holds our marker with our format tag."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise StoreError(f"{out}: unreadable marker file {MARKER} ({error})") from error
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        found = marker.get("format") if isinstance(marker, dict) else None
        raise StoreError(
            f"{out} holds a store of format {found!r}, not {FORMAT!r}: written by another "
            "tool or another version of captum-iba; choose a new folder"
        )


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
        of another format, or not writable.
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
        entries = os.listdir(out)
    except OSError as error:
        raise StoreError(f"{out}: cannot be read ({error.strerror})") from error
    if MARKER in entries:
        _read_marker(out)
    elif entries:
        raise StoreError(
            f"{out} is not empty and is not a captum-iba store (no {MARKER}): it belongs to "
            "another tool or holds other files; choose a new or empty folder"
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=_SCRATCH, dir=out)
    except OSError as error:
        raise StoreError(f"{out} is not writable ({error.strerror})") from error
    os.close(handle)
    os.unlink(probe)
    return out


def config_hash(config: dict) -> str:
    """SHA-256 of a configuration's canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


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
    """Remove a folder of the store: renamed away first, so that no half-removed folder remains in use."""
    trash = path.parent / f"{_SCRATCH}{secrets.token_hex(4)}"
    os.replace(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash)


def open_method_store(out_dir, method: str, config: dict, *, overwrite: bool = False) -> "MethodStore":
    """Create or reopen the part of a store that holds ``method``'s maps (one process only).

    Parameters
    ----------
    out_dir : path
        The store; created if needed (see :func:`check_out_dir`).
    method : str
        The method key, e.g. ``"iba"`` or ``"regression-deviation"``.
    config : dict
        Everything that determines the maps (JSON-serialisable).
    overwrite : bool
        Replace the method's maps when they were computed with another
        configuration, instead of refusing. (A method folder that holds no
        done maps yet is replaced in any case: nothing is lost.)

    Returns
    -------
    MethodStore
        Its batches that no complete index entry refers to are removed.

    Raises
    ------
    StoreError
        See :func:`check_out_dir`; also when the folder holds maps of the
        method computed with another configuration and ``overwrite`` is false.
    """
    out = check_out_dir(out_dir)
    config = json.loads(json.dumps(config))  # as it reads back from disk
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / MARKER).exists():
            _write_json(out / MARKER, {"format": FORMAT})
        for entry in out.glob(f"{_SCRATCH}*"):  # left by a run killed while building or removing
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        folder = out / method
        if folder.exists():
            previous = MethodStore(folder)
            if previous.config != config:
                # Refused only where maps would be lost: a folder without any is simply replaced.
                if previous.complete_arrays() and not overwrite:
                    changes = "; ".join(_differences(previous.config, config))
                    raise StoreError(
                        f"{out} holds {method!r} maps computed with another configuration "
                        f"({changes}); rerun with the same options to resume them, or pass "
                        "--overwrite to replace them"
                    )
                _remove(folder)
        if not folder.exists():
            _create_method_folder(folder, config)
    except OSError as error:
        raise StoreError(f"{out}: cannot write the store ({error})") from error
    store = MethodStore(folder)
    store.sweep()
    return store


def _create_method_folder(folder: Path, config: dict) -> None:
    """Build the folder under a scratch name and rename it into place: it appears complete or not at all."""
    scratch = folder.parent / f"{_SCRATCH}{secrets.token_hex(4)}"
    scratch.mkdir()
    _write_json(scratch / _CONFIG, {"config": config, "sha256": config_hash(config)})
    zarr.open_group(str(scratch / _MAPS), mode="w")
    (scratch / _INDEX).mkdir()
    _fsync_tree(scratch)
    os.replace(scratch, folder)
    fsync_dir(folder.parent)


# One method's maps.


class MethodStore:
    """The folder that holds one method's maps in a store.

    Parameters
    ----------
    folder : path
        ``OUT/<method key>``, as :func:`open_method_store` created it.
    """

    def __init__(self, folder) -> None:
        self.folder = Path(folder)
        self.method = self.folder.name
        try:
            payload = json.loads((self.folder / _CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise StoreError(f"{self.folder}: unreadable {_CONFIG} ({error})") from error
        self.config: dict = payload["config"]
        self.config_hash: str = payload["sha256"]

    @property
    def maps_dir(self) -> Path:
        return self.folder / _MAPS

    def rows(self) -> List[dict]:
        """Every complete line of every index file, in file order (files sorted by name)."""
        rows: List[dict] = []
        for path in sorted((self.folder / _INDEX).glob("*.jsonl")):
            rows.extend(_read_lines(path))
        return rows

    def complete_arrays(self) -> Dict[str, List[dict]]:
        """The ``done`` lines of every batch whose lines are all present, by array name."""
        done: Dict[str, List[dict]] = {}
        for row in self.rows():
            if row["status"] == "done":
                done.setdefault(row["array"], []).append(row)
        return {name: rows for name, rows in done.items() if len(rows) == rows[0]["maps"]}

    def done_batches(self) -> set:
        """Indices of the batches whose maps are all written and marked."""
        return {rows[0]["batch"] for rows in self.complete_arrays().values()}

    def sweep(self) -> None:
        """Remove arrays no complete batch refers to (left by a process killed before marking them)."""
        keep = set(self.complete_arrays())
        for entry in self.maps_dir.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry)

    def stats_path(self, layer: str) -> Path:
        return self.folder / _STATS / f"{layer}.pt"

    def load_stats(self, layers: Iterable[str]) -> Optional[Dict[str, FeatureStats]]:
        """The statistics stored for ``layers``, or None if any is missing."""
        paths = {layer: self.stats_path(layer) for layer in layers}
        if not all(path.is_file() for path in paths.values()):
            return None
        return {layer: FeatureStats.load(path) for layer, path in paths.items()}

    def save_stats(self, stats: Dict[str, FeatureStats]) -> None:
        """Keep the statistics the maps are computed with (atomic writes)."""
        (self.folder / _STATS).mkdir(exist_ok=True)
        for layer, layer_stats in stats.items():
            layer_stats.save(self.stats_path(layer))
        _fsync_tree(self.folder / _STATS)

    def log_run(self, record: dict) -> None:
        """Append a finished run's record to ``runs.jsonl``."""
        _append_lines(self.folder / _RUNS, [record], durable=True)

    def runs(self) -> List[dict]:
        """The records of the finished runs, oldest first."""
        path = self.folder / _RUNS
        return _read_lines(path) if path.exists() else []


class BatchWriter:
    """Writes one process's batches into a :class:`MethodStore` during one run.

    Parameters
    ----------
    store : MethodStore
    run_id : str
        Shared by the processes of a run; names its arrays and index files.
    rank : int
        The process; each writes its own index file, so no two processes write one file.
    """

    def __init__(self, store: MethodStore, run_id: str, rank: int) -> None:
        self.store, self.run_id = store, run_id
        self.index = store.folder / _INDEX / f"{run_id}-rank{rank:03d}.jsonl"

    def _array_name(self, batch: int) -> str:
        return f"b{batch:06d}-{self.run_id}"

    def started(self, batch: int, keys: Sequence[Tuple[str, int]]) -> None:
        """Note the maps of ``batch`` as being computed (``keys``: (image id, target) per map)."""
        name = self._array_name(batch)
        rows = [{"status": "started", "batch": batch, "array": name, "image_id": image_id,
                 "method": self.store.method, "target": target} for image_id, target in keys]
        _append_lines(self.index, rows, durable=False)

    def done(self, batch: int, keys: Sequence[Tuple[str, int]], maps: np.ndarray) -> None:
        """Write the maps of ``batch`` durably, then mark them done.

        Parameters
        ----------
        batch : int
        keys : sequence of (str, int)
            (image id, target) of each map, in the order of ``maps``.
        maps : ndarray, shape (len(keys), 1, h, w)
        """
        if maps.ndim != 4 or maps.shape[0] != len(keys):
            raise ValueError(f"maps: expected shape ({len(keys)}, 1, h, w), got {maps.shape}")
        name = self._array_name(batch)
        path = self.store.maps_dir / name
        array = zarr.open_array(store=str(path), mode="w", shape=maps.shape, chunks=maps.shape, dtype=maps.dtype)
        array[...] = maps
        _fsync_tree(path)
        fsync_dir(self.store.maps_dir)
        shape = list(maps.shape[1:])
        rows = [{"status": "done", "batch": batch, "array": name, "row": row, "maps": len(keys),
                 "image_id": image_id, "method": self.store.method, "target": target, "shape": shape}
                for row, (image_id, target) in enumerate(keys)]
        _append_lines(self.index, rows, durable=True)


# Reading.


def _method_stores(out_dir) -> List[MethodStore]:
    out = Path(out_dir).expanduser()
    if not (out / MARKER).is_file():
        raise StoreError(f"{out} is not a captum-iba attribute store (no {MARKER})")
    _read_marker(out)
    return [MethodStore(folder) for folder in sorted(out.iterdir())
            if not folder.name.startswith(_SCRATCH) and (folder / _CONFIG).is_file()]


def read_index(out_dir) -> List[dict]:
    """The index of a store: one row per map that a run marked, started or done.

    Parameters
    ----------
    out_dir : path
        A folder written by ``captum-iba attribute``.

    Returns
    -------
    list of dict
        Keys ``image_id``, ``method``, ``target``, ``shape`` (``[1, h, w]``,
        None until done), ``status`` (``"done"``, or ``"started"``: being
        computed, or interrupted), ``batch``, ``array`` and ``row`` (where the
        map lies in ``<method>/maps.zarr``; None until done). Sorted by
        method, batch and row.
    """
    table: Dict[MapKey, dict] = {}
    for store in _method_stores(out_dir):
        complete = store.complete_arrays()
        for row in store.rows():
            key = (row["image_id"], row["method"], row["target"])
            if row["status"] == "started" and key not in table:
                table[key] = {**row, "shape": None, "row": None}
        for rows in complete.values():
            for row in rows:
                table[(row["image_id"], row["method"], row["target"])] = {
                    key: value for key, value in row.items() if key != "maps"
                }
    def position(row: dict) -> tuple:
        return row["method"], row["batch"], -1 if row["row"] is None else row["row"], row["image_id"], row["target"]

    return sorted(table.values(), key=position)


class Maps(Mapping):
    """The done maps of a store, read lazily: ``maps[(image_id, method, target)]`` is an array.

    Each value is a float array of shape ``(1, h, w)`` (the ``(N, 1, h, w)``
    map of the method, one sample), read from the Zarr store on access; the
    last few batch arrays read are kept in memory. ``dict(maps)`` reads all.
    """

    _CACHED_ARRAYS = 8

    def __init__(self, locations: Dict[MapKey, Tuple[Path, int]], out_dir: Path) -> None:
        self._locations = locations
        self.out_dir = out_dir
        self._cache: "OrderedDict[Path, np.ndarray]" = OrderedDict()

    def _array(self, path: Path) -> np.ndarray:
        if path in self._cache:
            self._cache.move_to_end(path)
        else:
            self._cache[path] = zarr.open_array(store=str(path), mode="r")[...]
            if len(self._cache) > self._CACHED_ARRAYS:
                self._cache.popitem(last=False)
        return self._cache[path]

    def __getitem__(self, key: MapKey) -> np.ndarray:
        path, row = self._locations[key]
        return self._array(path)[row].copy()

    def __iter__(self) -> Iterator[MapKey]:
        return iter(self._locations)

    def __len__(self) -> int:
        return len(self._locations)

    def __repr__(self) -> str:
        return f"Maps({len(self)} maps in {str(self.out_dir)!r})"


def read_maps(out_dir) -> Maps:
    """The maps a ``captum-iba attribute`` run wrote, done ones only.

    Parameters
    ----------
    out_dir : path
        The store folder of a run (all methods written there, all processes).

    Returns
    -------
    Maps
        A read-only mapping from ``(image_id, method, target)`` to a numpy
        array of shape ``(1, h, w)``, read lazily; ``target`` is the output
        index explained (-1 for a single-output regressor); ``method`` is the
        method key (``"iba"``, ``"regression-deviation"``, ...).

    Raises
    ------
    StoreError
        If ``out_dir`` is not such a store.

    Examples
    --------
    >>> maps = read_maps("runs/nih-test")                          # doctest: +SKIP
    >>> bits = maps[("00000003_000.png", "iba", 2)]                # doctest: +SKIP
    """
    out = Path(out_dir).expanduser()
    locations = {
        (row["image_id"], row["method"], row["target"]): (out / row["method"] / _MAPS / row["array"], row["row"])
        for row in read_index(out) if row["status"] == "done"
    }
    return Maps(locations, out)
