"""Reading the attribution store: :func:`read_index` and :func:`read_maps`, every array checked.

See :mod:`captum_iba.app.store` for the layout and what is guaranteed.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import zarr

from .files import LineProblem, MapKey, StoreError, StoreWarning, array_problem, method_folders, read_marker
from .method import MethodStore

__all__ = ["read_index", "read_maps", "Maps", "method_stores", "completeness"]


def method_stores(out_dir) -> List[MethodStore]:
    """The method folders of the store ``out_dir``.

    Raises
    ------
    StoreError
        If ``out_dir`` is not a captum-iba store (see :func:`~captum_iba.app.store.files.read_marker`),
        or a method's ``config.json`` is missing, unreadable or changed.
    """
    out = Path(out_dir).expanduser()
    read_marker(out)
    return [MethodStore(out / name) for name in method_folders(out, [p.name for p in out.iterdir()])]


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
        map lies in ``<method>/maps.zarr``; None until done); done rows also
        have ``written`` (seconds since the epoch) and ``sha256`` (of the
        array's files; absent in stores written before checksums). Sorted by
        method, batch and row. Index lines that are damaged are left out,
        with a :class:`~captum_iba.app.store.files.StoreWarning` naming each
        file and line.

    Raises
    ------
    StoreError
        As :func:`read_maps`.
    """
    table: Dict[MapKey, dict] = {}
    for store in method_stores(out_dir):
        rows, problems = store.scan()
        _warn_left_out(store, problems)
        live = store.live_arrays(rows)
        for row in rows:
            key = (row["image_id"], row["method"], row["target"])
            if row["status"] == "started" and key not in table:
                table[key] = {**row, "shape": None, "row": None}
        for rows in live.values():
            for row in rows:
                table[(row["image_id"], row["method"], row["target"])] = {
                    key: value for key, value in row.items() if key not in ("maps", "files", "config_sha256")
                }

    def position(row: dict) -> tuple:
        return row["method"], row["batch"], -1 if row["row"] is None else row["row"], row["image_id"], row["target"]

    return sorted(table.values(), key=position)


class Maps(Mapping):
    """The done maps of a store, read lazily: ``maps[(image_id, method, target)]`` is an array.

    Each value is a float array of shape ``(1, h, w)`` (the ``(N, 1, h, w)``
    map of the method, one sample), read from the Zarr store on access after
    its array is checked against the checksum recorded when it was written;
    the last few batch arrays read are kept in memory. ``dict(maps)`` reads all.
    A missing or damaged array raises :class:`StoreError` naming it and its path.
    """

    _CACHED_ARRAYS = 8

    def __init__(self, locations: Dict[MapKey, Tuple[Path, int, dict]], out_dir: Path) -> None:
        self._locations = locations
        self.out_dir = out_dir
        self._cache: "OrderedDict[Path, np.ndarray]" = OrderedDict()

    def _array(self, path: Path, record: dict) -> np.ndarray:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        problem = array_problem(path, record, full=True)
        if problem is None:
            try:
                data = zarr.open_array(store=str(path), mode="r")[...]
            except Exception as error:  # zarr and its codecs raise many kinds on damaged files
                problem = f"corrupt: unreadable ({type(error).__name__}: {error})"
        if problem is not None:
            raise StoreError(
                f"array {path.name} of {path.parent.parent.name!r} at {path}: {problem}; rerun the command "
                "that wrote it to compute it again (captum-iba verify lists every damaged array)")
        self._cache[path] = data
        if len(self._cache) > self._CACHED_ARRAYS:
            self._cache.popitem(last=False)
        return data

    def __getitem__(self, key: MapKey) -> np.ndarray:
        path, row, record = self._locations[key]
        return self._array(path, record)[row].copy()

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
        array of shape ``(1, h, w)``, read lazily and checked against its
        checksum; ``target`` is the output index explained (-1 for a
        single-output regressor); ``method`` is the method key (``"iba"``,
        ``"regression-deviation"``, ...).

    Warns
    -----
    StoreWarning
        Once per damaged index line, naming its file and line: the maps of its
        batch are left out (never another image's map in their place); and
        once if fewer maps than planned are returned (a store not complete
        yet), saying how many of how many.

    Raises
    ------
    StoreError
        If ``out_dir`` is not such a store, or a method's ``config.json`` is
        missing, unreadable, or not the configuration its index lines record;
        on access, if a map's array is missing, truncated or altered (the
        message names the array and its path).

    Examples
    --------
    >>> maps = read_maps("runs/nih-test")                          # doctest: +SKIP
    >>> bits = maps[("00000003_000.png", "iba", 2)]                # doctest: +SKIP
    """
    out = Path(out_dir).expanduser()
    locations = {}
    partial = []
    for store in method_stores(out):
        rows, problems = store.scan()
        _warn_left_out(store, problems)
        live = store.live_arrays(rows)
        for name, lines in live.items():
            for row in lines:
                locations[(row["image_id"], row["method"], row["target"])] = (store.maps_dir / name, row["row"], row)
        shortfall = completeness(store, live)
        if shortfall is not None:
            partial.append(f"{store.method} {shortfall}")
    if partial:
        warnings.warn(f"{out}: not complete: {'; '.join(partial)}; the maps returned are those done so far: rerun the "
                      "command that wrote it to complete it (captum-iba verify OUT says what is missing)",
                      StoreWarning, stacklevel=2)
    return Maps(dict(sorted(locations.items(), key=lambda item: (item[0][1], item[1][2]["batch"], item[1][1]))), out)


def completeness(store: MethodStore, live: Dict[str, List[dict]], damaged=()) -> Optional[str]:
    """``"136 of 314 planned maps (17 of 40 batches)"`` if the done batches of ``live`` (less the
    arrays ``damaged``) fall short of the store's plan; None if complete or no plan was recorded."""
    if not store.plan:
        return None
    done = {name: lines for name, lines in live.items() if name not in damaged}
    batches = len({lines[0]["batch"] for lines in done.values()} & set(range(store.plan["batches"])))
    maps = sum(len(lines) for lines in done.values())
    if batches >= store.plan["batches"]:
        return None
    of_batches = f"{batches} of {store.plan['batches']} batches"
    if store.plan.get("maps") is not None:
        return f"{maps} of {store.plan['maps']} planned maps ({of_batches})"
    return f"{of_batches} planned ({maps} maps)"


def _warn_left_out(store: MethodStore, problems: List[LineProblem]) -> None:
    """One warning per damaged index line: the maps of its batch are not returned."""
    for problem in problems:
        if problem.damaged:
            warnings.warn(f"{problem}: this index line is left out, and the maps of its batch with it; "
                          f"rerun the command that wrote {store.method!r} to compute them again",
                          StoreWarning, stacklevel=3)
