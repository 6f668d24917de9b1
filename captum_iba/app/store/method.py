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
from .files import (CONFIG, INDEX, MAPS, RUNS, SEAL, STATS, TRAINED, LineProblem, StoreError, append_lines,
                    array_problem, array_record, config_hash, disk_space, file_problem, file_record, fsync_tree,
                    lock_path, read_lines, rewrite_lines, seal, seal_problem, write_json)
from .lock import check_lock

__all__ = ["MethodStore", "BatchWriter", "read_config"]

#: The keys of a config.json written before checksums; any other key means it carries its own.
_LEGACY_CONFIG_KEYS = {"config", "sha256"}
# What an index line holds, by status: the key and its type.
_STARTED = {"status": str, "batch": int, "array": str, "image_id": str, "method": str, "target": int}
_DONE = {**_STARTED, "row": int, "maps": int, "shape": list}


def _advice(method: str) -> str:
    return (f"restore it, or rerun the command that wrote {method!r} with --overwrite to compute its maps again")


def read_config(path: Path) -> dict:
    """The content of a method folder's ``config.json``, checked against its checksums.

    Raises
    ------
    StoreError
        Naming the file: missing, unreadable, changed since it was written
        (its own checksum), or a configuration that differs from its SHA-256.
    """
    method = path.parent.name
    if not path.is_file():
        raise StoreError(f"{path}: missing: the configuration the {method!r} maps were computed with is gone; "
                         + _advice(method))
    try:
        payload = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StoreError(f"{path}: unreadable ({error}); {_advice(method)}") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict) \
            or not isinstance(payload.get("sha256"), str):
        raise StoreError(f"{path}: not a configuration file (expected the keys config and sha256); "
                         + _advice(method))
    if set(payload) != _LEGACY_CONFIG_KEYS:  # written with its own checksum: every byte is covered
        problem = seal_problem(payload)
        if problem is not None:
            raise StoreError(f"{path}: {problem}; {_advice(method)}")
    if config_hash(payload["config"]) != payload["sha256"]:
        raise StoreError(f"{path}: edited: its configuration no longer matches the SHA-256 written with it; "
                         + _advice(method))
    return payload


def _row_problem(row: dict, method: str) -> Optional[str]:
    """Why a line that parses is not an index line of ``method``, or None."""
    expected = _DONE if row.get("status") == "done" else _STARTED
    if row.get("status") not in ("started", "done"):
        return f"not an index line (status {row.get('status')!r})"
    for key, kind in expected.items():
        value = row.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"not an index line ({key}: expected {kind.__name__}, got {value!r})"
    if row["method"] != method:
        return f"a line of method {row['method']!r} in the index of {method!r}"
    return None


class MethodStore:
    """The folder that holds one method's maps in a store.

    Parameters
    ----------
    folder : path
        ``OUT/<method key>``, as :func:`~captum_iba.app.store.open_method_store` created it.

    Attributes
    ----------
    config : dict
        The configuration the maps were computed with.
    config_hash : str
        Its SHA-256; every index line records it.
    plan : dict or None
        ``{"items", "batches", "maps"}`` planned by the run that opened it
        (``maps`` None where not known up front); None where none was recorded.
    files : dict
        ``{relative path: {"size", "sha256"}}`` of its other files (statistics,
        a trained state, the Zarr group's metadata).
    sealed : bool
        Its lines carry their own checksums (False for stores written before them).

    Raises
    ------
    StoreError
        If its ``config.json`` is missing, unreadable or changed (see :func:`read_config`).
    """

    def __init__(self, folder) -> None:
        self.folder = Path(folder)
        self.method = self.folder.name
        payload = read_config(self.folder / CONFIG)
        self.config: dict = payload["config"]
        self.config_hash: str = payload["sha256"]
        self.sealed: bool = SEAL in payload
        self.plan: Optional[dict] = payload.get("plan")
        self.files: Dict[str, dict] = dict(payload.get("files", {}))
        # Index files written before checksums, kept when the store was first reopened by a writer.
        self.legacy_index = set(payload.get("legacy_index", []))
        #: The index lines the writer's :func:`~captum_iba.app.store.open_method_store` dropped.
        self.repaired: List[LineProblem] = []
        self._payload = payload

    @property
    def maps_dir(self) -> Path:
        return self.folder / MAPS

    def _write_config(self) -> None:
        """Write ``config.json`` with the plan and the file records, if they changed (the writer only)."""
        payload = {"config": self.config, "sha256": self.config_hash, "plan": self.plan, "files": self.files}
        if self.legacy_index:
            payload["legacy_index"] = sorted(self.legacy_index)
        payload = seal(payload)
        if payload != self._payload:
            write_json(self.folder / CONFIG, payload)
            self._payload, self.sealed = payload, True

    # The index.

    def scan(self) -> Tuple[List[dict], List[LineProblem]]:
        """Every usable index line (files sorted by name, in file order), and the lines left out.

        A line is left out when it does not parse, differs from its checksum,
        is not an index line, or is a last line cut short; the rest of the
        index is read on.

        Raises
        ------
        StoreError
            If the index lines record another configuration than ``config.json``
            (it was replaced or edited together with its checksums).
        """
        rows: List[dict] = []
        problems: List[LineProblem] = []
        for path in sorted((self.folder / INDEX).glob("*.jsonl")):
            found, bad = read_lines(path, sealed=self.sealed and path.name not in self.legacy_index)
            problems.extend(bad)
            for number, row in found:
                problem = _row_problem(row, self.method)
                if problem is not None:
                    problems.append(LineProblem(path, number, problem))
                    continue
                recorded = row.get("config_sha256", self.config_hash)
                if recorded != self.config_hash:
                    raise StoreError(
                        f"{self.folder / CONFIG}: does not match the configuration the maps were computed with "
                        f"({path}:{number} records SHA-256 {recorded[:12]}..., {CONFIG} {self.config_hash[:12]}...); "
                        + _advice(self.method))
                rows.append(row)
        return rows, problems

    def rows(self) -> List[dict]:
        """Every usable index line (see :meth:`scan`)."""
        return self.scan()[0]

    def complete_arrays(self, rows: Optional[List[dict]] = None) -> Dict[str, List[dict]]:
        """The ``done`` lines of every batch whose lines are all present, by array name.

        Complete means one line for each of the batch's rows ``0 .. maps - 1``,
        all naming the same batch. ``rows``: the usable lines, if already read.
        """
        done: Dict[str, List[dict]] = {}
        for row in self.rows() if rows is None else rows:
            if row["status"] == "done":
                done.setdefault(row["array"], []).append(row)

        def complete(lines: List[dict]) -> bool:
            first = lines[0]
            return (sorted(line["row"] for line in lines) == list(range(first["maps"]))
                    and all(line["batch"] == first["batch"] and line["maps"] == first["maps"] for line in lines))

        return {name: sorted(lines, key=lambda line: line["row"]) for name, lines in done.items() if complete(lines)}

    def live_arrays(self, rows: Optional[List[dict]] = None) -> Dict[str, List[dict]]:
        """Of :meth:`complete_arrays`, the latest written of each batch (a batch written
        again, because its array was missing or damaged, supersedes the earlier one)."""
        latest: Dict[int, Tuple[str, List[dict]]] = {}
        for name, lines in self.complete_arrays(rows).items():
            batch = lines[0]["batch"]
            if batch not in latest or lines[0].get("written", 0) >= latest[batch][1][0].get("written", 0):
                latest[batch] = (name, lines)
        return dict(latest.values())

    def check_arrays(self, full: bool = False, live: Optional[Dict[str, List[dict]]] = None) -> Dict[str, str]:
        """The live arrays that are missing or damaged: array name -> what is wrong.

        ``full`` compares every array's SHA-256 (reads every byte); otherwise
        every file's presence and size (see :func:`~captum_iba.app.store.files.array_problem`).
        ``live``: :meth:`live_arrays`, if already read.
        """
        live = self.live_arrays() if live is None else live
        problems = {name: array_problem(self.maps_dir / name, lines[0], full) for name, lines in live.items()}
        return {name: problem for name, problem in problems.items() if problem is not None}

    def done_batches(self, verify: bool = False) -> set:
        """Indices of the batches whose maps are all written, marked and intact.

        A batch whose array is missing or damaged, or one of whose index lines
        is damaged, is left out, so a rerun computes it again: by default its
        array's files' presence and sizes are checked, with ``verify`` their
        SHA-256 as well.
        """
        return self.resume(verify)[0]

    def resume(self, verify: bool = False) -> Tuple[set, Dict[str, str]]:
        """:meth:`done_batches` and :meth:`check_arrays` in one pass: what a rerun skips,
        and the arrays it computes again (name -> what is wrong), to tell the user."""
        live = self.live_arrays()
        damaged = self.check_arrays(verify, live)
        return {lines[0]["batch"] for name, lines in live.items() if name not in damaged}, damaged

    def repair_index(self) -> List[LineProblem]:
        """Drop the index lines that :meth:`scan` leaves out, rewriting the files that hold them.

        For the writer of the method only (it holds the writer lock): the
        batches of dropped ``done`` lines are no longer done, so its run
        computes them again. Returns the lines dropped.
        """
        _, problems = self.scan()
        for path in sorted({problem.path for problem in problems}):
            found, _ = read_lines(path, sealed=self.sealed and path.name not in self.legacy_index)
            valid = [row for _, row in found if _row_problem(row, self.method) is None]
            rewrite_lines(path, valid)
        return problems

    def sweep(self) -> None:
        """Remove arrays no live batch refers to (left by a killed process, or superseded)."""
        keep = set(self.live_arrays())
        for entry in self.maps_dir.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry)

    # The plan and the other files.

    def set_plan(self, plan: dict) -> None:
        """Record what the run plans (``{"items", "batches", "maps"}``) before any batch of it is written."""
        self.plan = json.loads(json.dumps(plan))
        self._write_config()

    def record_files(self, relatives: Iterable[str]) -> None:
        """Record the size and SHA-256 of files of the folder (paths relative to it) in ``config.json``."""
        for relative in relatives:
            self.files[relative] = file_record(self.folder / relative)
        self._write_config()

    def file_problems(self) -> Dict[str, str]:
        """The recorded files that are missing or changed: relative path -> what is wrong."""
        problems = {relative: file_problem(self.folder / relative, record) for relative, record in self.files.items()}
        return {relative: problem for relative, problem in problems.items() if problem is not None}

    def seal_legacy(self) -> None:
        """Give a store written before checksums its own: its files recorded as they are, its
        index files kept as written before checksums (their lines carry none)."""
        if self.sealed:
            return
        self.legacy_index = {path.name for path in (self.folder / INDEX).glob("*.jsonl")}
        present = [path for path in [self.maps_dir / "zarr.json", *sorted((self.folder / STATS).glob("*.pt")),
                                     *sorted((self.folder / TRAINED).glob("*"))] if path.is_file()]
        legacy_runs = self.folder / RUNS
        if legacy_runs.is_file():  # its lines carry no checksums: sealed as they are
            rewrite_lines(legacy_runs, [row for _, row in read_lines(legacy_runs, sealed=False)[0]])
        self.record_files(str(path.relative_to(self.folder)) for path in present)

    def stats_path(self, layer: str) -> Path:
        return self.folder / STATS / f"{layer}.pt"

    def load_stats(self, layers: Iterable[str]) -> Optional[Dict[str, FeatureStats]]:
        """The statistics stored for ``layers``, or None if any is missing (or was saved
        by a run killed before recording it).

        Raises
        ------
        StoreError
            Naming the file, if one is damaged or unreadable, and what to do.
        """
        paths = {layer: self.stats_path(layer) for layer in layers}
        relative = {layer: f"{STATS}/{layer}.pt" for layer in layers}
        if not all(path.is_file() and (relative[layer] in self.files or not self.sealed)
                   for layer, path in paths.items()):
            return None
        stats = {}
        for layer, path in paths.items():
            advice = (f"delete it to compute the statistics again, or rerun with --overwrite to replace the "
                      f"{self.method!r} maps")
            problem = file_problem(path, self.files[relative[layer]]) if relative[layer] in self.files else None
            if problem is not None:
                raise StoreError(f"{path}: damaged statistics file ({problem.split(': ', 1)[1]}); {advice}")
            try:
                stats[layer] = FeatureStats.load(path)
            except ValueError as error:
                cause = str(error).split(": ", 1)[-1].splitlines()[0]
                raise StoreError(f"{path}: unreadable statistics file ({cause}); {advice}") from error
        return stats

    def save_stats(self, stats: Dict[str, FeatureStats]) -> None:
        """Keep the statistics the maps are computed with (atomic writes), and record their checksums.

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
            self.record_files(f"{STATS}/{layer}.pt" for layer in stats)

    def log_run(self, record: dict) -> None:
        """Append a finished run's record to ``runs.jsonl`` (a log: no map depends on it)."""
        append_lines(self.folder / RUNS, [record], durable=True)

    def runs(self) -> List[dict]:
        """The records of the finished runs, oldest first (damaged lines left out: see :meth:`run_problems`)."""
        path = self.folder / RUNS
        return [row for _, row in read_lines(path, sealed=self.sealed)[0]] if path.exists() else []

    def run_problems(self) -> List[LineProblem]:
        """The lines of ``runs.jsonl`` left out by :meth:`runs`."""
        path = self.folder / RUNS
        return read_lines(path, sealed=self.sealed)[1] if path.exists() else []


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
                 "method": self.store.method, "target": target, "config_sha256": self.store.config_hash}
                for image_id, target in keys]
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
                     "written": written, "config_sha256": self.store.config_hash, **record}
                    for row, (image_id, target) in enumerate(keys)]
            append_lines(self.index, rows, durable=True)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # not marked: nothing refers to it; frees the space
            raise
        for earlier in self.store.maps_dir.glob(f"b{batch:06d}-*"):  # superseded now
            if earlier.name != name:
                shutil.rmtree(earlier, ignore_errors=True)
