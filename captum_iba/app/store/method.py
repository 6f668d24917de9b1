"""One method's part of the attribution store: :class:`MethodStore` and :class:`BatchWriter`.

See :mod:`captum_iba.app.store` for the layout and what is guaranteed.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import zarr

from ..._files import fsync_dir
from ...stats import FeatureStats
from .files import (CONFIG, INDEX, MAPS, RUNS, STATS, StoreError, append_lines, array_problem, array_record,
                          disk_space, fsync_tree, lock_path, read_lines)
from .lock import check_lock

__all__ = ["MethodStore", "BatchWriter"]


class MethodStore:
    """The folder that holds one method's maps in a store.

    Parameters
    ----------
    folder : path
        ``OUT/<method key>``, as :func:`~captum_iba.app.store.open_method_store` created it.
    """

    def __init__(self, folder) -> None:
        self.folder = Path(folder)
        self.method = self.folder.name
        try:
            payload = json.loads((self.folder / CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise StoreError(f"{self.folder}: unreadable {CONFIG} ({error})") from error
        self.config: dict = payload["config"]
        self.config_hash: str = payload["sha256"]

    @property
    def maps_dir(self) -> Path:
        return self.folder / MAPS

    def rows(self) -> List[dict]:
        """Every complete line of every index file, in file order (files sorted by name)."""
        rows: List[dict] = []
        for path in sorted((self.folder / INDEX).glob("*.jsonl")):
            rows.extend(read_lines(path))
        return rows

    def complete_arrays(self) -> Dict[str, List[dict]]:
        """The ``done`` lines of every batch whose lines are all present, by array name."""
        done: Dict[str, List[dict]] = {}
        for row in self.rows():
            if row["status"] == "done":
                done.setdefault(row["array"], []).append(row)
        return {name: rows for name, rows in done.items() if len(rows) == rows[0]["maps"]}

    def live_arrays(self) -> Dict[str, List[dict]]:
        """Of :meth:`complete_arrays`, the latest written of each batch (a batch written
        again, because its array was missing or damaged, supersedes the earlier one)."""
        latest: Dict[int, Tuple[str, List[dict]]] = {}
        for name, rows in self.complete_arrays().items():
            batch = rows[0]["batch"]
            if batch not in latest or rows[0].get("written", 0) >= latest[batch][1][0].get("written", 0):
                latest[batch] = (name, rows)
        return dict(latest.values())

    def check_arrays(self, full: bool = False) -> Dict[str, str]:
        """The live arrays that are missing or damaged: array name -> what is wrong.

        ``full`` compares every array's SHA-256 (reads every byte); otherwise
        every file's presence and size (see :func:`~captum_iba.app.store.files.array_problem`).
        """
        problems = {name: array_problem(self.maps_dir / name, rows[0], full)
                    for name, rows in self.live_arrays().items()}
        return {name: problem for name, problem in problems.items() if problem is not None}

    def done_batches(self, verify: bool = False) -> set:
        """Indices of the batches whose maps are all written, marked and intact.

        A batch whose array is missing or damaged is left out, so a rerun
        computes it again: by default its files' presence and sizes are
        checked, with ``verify`` their SHA-256 as well.
        """
        return self.resume(verify)[0]

    def resume(self, verify: bool = False) -> Tuple[set, Dict[str, str]]:
        """:meth:`done_batches` and :meth:`check_arrays` in one pass: what a rerun skips,
        and the arrays it computes again (name -> what is wrong), to tell the user."""
        live, damaged = self.live_arrays(), self.check_arrays(verify)
        return {rows[0]["batch"] for name, rows in live.items() if name not in damaged}, damaged

    def sweep(self) -> None:
        """Remove arrays no live batch refers to (left by a killed process, or superseded)."""
        keep = set(self.live_arrays())
        for entry in self.maps_dir.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry)

    def stats_path(self, layer: str) -> Path:
        return self.folder / STATS / f"{layer}.pt"

    def load_stats(self, layers: Iterable[str]) -> Optional[Dict[str, FeatureStats]]:
        """The statistics stored for ``layers``, or None if any is missing."""
        paths = {layer: self.stats_path(layer) for layer in layers}
        if not all(path.is_file() for path in paths.values()):
            return None
        return {layer: FeatureStats.load(path) for layer, path in paths.items()}

    def save_stats(self, stats: Dict[str, FeatureStats]) -> None:
        """Keep the statistics the maps are computed with (atomic writes).

        Raises
        ------
        StoreError
            If the disk is full (no statistics file is then half-written).
        """
        folder = self.folder / STATS
        need = sum(getattr(value, "nbytes", 0) for layer_stats in stats.values()
                   for value in vars(layer_stats).values())
        with disk_space(folder, need):
            folder.mkdir(exist_ok=True)
            for layer, layer_stats in stats.items():
                layer_stats.save(self.stats_path(layer))
            fsync_tree(folder)

    def log_run(self, record: dict) -> None:
        """Append a finished run's record to ``runs.jsonl``."""
        append_lines(self.folder / RUNS, [record], durable=True)

    def runs(self) -> List[dict]:
        """The records of the finished runs, oldest first."""
        path = self.folder / RUNS
        return read_lines(path) if path.exists() else []


class BatchWriter:
    """Writes one process's batches into a :class:`MethodStore` during one run.

    Parameters
    ----------
    store : MethodStore
    run_id : str
        Shared by the processes of a run; names its arrays and index files.
    rank : int
        The process; each writes its own index file, so no two processes write one file.
    locked : bool
        Check before marking each batch that the run ``run_id`` still holds the
        method's writer lock (:func:`~captum_iba.app.store.writer_lock`), and stop if not.
    """

    def __init__(self, store: MethodStore, run_id: str, rank: int, *, locked: bool = False) -> None:
        self.store, self.run_id, self.locked = store, run_id, locked
        self.index = store.folder / INDEX / f"{run_id}-rank{rank:03d}.jsonl"

    def _array_name(self, batch: int) -> str:
        return f"b{batch:06d}-{self.run_id}"

    def started(self, batch: int, keys: Sequence[Tuple[str, int]]) -> None:
        """Note the maps of ``batch`` as being computed (``keys``: (image id, target) per map)."""
        name = self._array_name(batch)
        rows = [{"status": "started", "batch": batch, "array": name, "image_id": image_id,
                 "method": self.store.method, "target": target} for image_id, target in keys]
        append_lines(self.index, rows, durable=False)

    def done(self, batch: int, keys: Sequence[Tuple[str, int]], maps: np.ndarray) -> None:
        """Write the maps of ``batch`` durably, then mark them done with their checksum record.

        Parameters
        ----------
        batch : int
        keys : sequence of (str, int)
            (image id, target) of each map, in the order of ``maps``.
        maps : ndarray, shape (len(keys), 1, h, w)

        Raises
        ------
        StoreError
            If the disk is full (the batch is then not marked, and its partial
            array removed), or with ``locked``, if the run lost its lock.
        """
        if maps.ndim != 4 or maps.shape[0] != len(keys):
            raise ValueError(f"maps: expected shape ({len(keys)}, 1, h, w), got {maps.shape}")
        name = self._array_name(batch)
        path = self.store.maps_dir / name
        try:
            with disk_space(path, maps.nbytes):
                array = zarr.open_array(store=str(path), mode="w", shape=maps.shape, chunks=maps.shape,
                                        dtype=maps.dtype)
                array[...] = maps
                fsync_tree(path)
                fsync_dir(self.store.maps_dir)
            if self.locked:
                check_lock(lock_path(self.store.folder.parent, self.store.method), self.run_id,
                           label=str(self.store.folder))
            shape, written, record = list(maps.shape[1:]), time.time(), array_record(path)
            rows = [{"status": "done", "batch": batch, "array": name, "row": row, "maps": len(keys),
                     "image_id": image_id, "method": self.store.method, "target": target, "shape": shape,
                     "written": written, **record}
                    for row, (image_id, target) in enumerate(keys)]
            append_lines(self.index, rows, durable=True)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # not marked: nothing refers to it; frees the space
            raise
        for earlier in self.store.maps_dir.glob(f"b{batch:06d}-*"):  # superseded now
            if earlier.name != name:
                shutil.rmtree(earlier, ignore_errors=True)
