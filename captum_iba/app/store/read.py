"""Reading the attribution store: :func:`read_index` and :func:`read_maps`, every array checked.

See :mod:`captum_iba.app.store` for the layout and what is guaranteed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import zarr

from .files import MapKey, StoreError, array_problem, method_folders, read_marker
from .method import MethodStore

__all__ = ["read_index", "read_maps", "Maps", "method_stores"]


def method_stores(out_dir) -> List[MethodStore]:
    """The method folders of the store ``out_dir``.

    Raises
    ------
    StoreError
        If ``out_dir`` is not a captum-iba store (see :func:`~captum_iba.app.store.files.read_marker`).
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
        method, batch and row.
    """
    table: Dict[MapKey, dict] = {}
    for store in method_stores(out_dir):
        live = store.live_arrays()
        for row in store.rows():
            key = (row["image_id"], row["method"], row["target"])
            if row["status"] == "started" and key not in table:
                table[key] = {**row, "shape": None, "row": None}
        for rows in live.values():
            for row in rows:
                table[(row["image_id"], row["method"], row["target"])] = {
                    key: value for key, value in row.items() if key not in ("maps", "files")
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

    Raises
    ------
    StoreError
        If ``out_dir`` is not such a store; on access, if a map's array is
        missing, truncated or altered (the message names the array and its path).

    Examples
    --------
    >>> maps = read_maps("runs/nih-test")                          # doctest: +SKIP
    >>> bits = maps[("00000003_000.png", "iba", 2)]                # doctest: +SKIP
    """
    out = Path(out_dir).expanduser()
    locations = {}
    for store in method_stores(out):
        for name, rows in store.live_arrays().items():
            for row in rows:
                locations[(row["image_id"], row["method"], row["target"])] = (store.maps_dir / name, row["row"], row)
    return Maps(dict(sorted(locations.items(), key=lambda item: (item[0][1], item[1][2]["batch"], item[1][1]))), out)
