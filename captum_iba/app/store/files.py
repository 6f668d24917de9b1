"""The files of the attribution store (:mod:`captum_iba.app.store`).

The layout's names, the folder's marker, durable writes, a full disk, and the
checksums of arrays; shared by :mod:`captum_iba.app.store` (the layout) and the
modules it is split into: ``store_lock`` (the writer lock), ``store_method``
(one method's maps), ``store_read`` and ``store_verify`` (reading and checking).

Every array's files are summed up, when its batch is marked done, by a record
``{"sha256": ..., "files": {relative path: size}}`` kept in its index lines:
the SHA-256 runs over each file's relative path, size and bytes exactly as
written (Zarr metadata and compressed chunks, in path order), so a missing,
shortened, extended or altered file -- a single flipped bit included -- no
longer matches. Stores written before checksums have no record: for them only
the presence of the metadata and of every chunk can be checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import zarr
from ..._files import atomic_path, fsync_dir
from ..._files import disk_space as _disk_space


#: Format tag of the marker file; another tag (or none) means the folder is not ours.
FORMAT = "captum_iba.attribute/1"
MARKER = "captum-iba-attribute.json"
CONFIG, MAPS, INDEX, STATS, RUNS = "config.json", "maps.zarr", "index", "stats", "runs.jsonl"
# Scratch entries of the store itself: ".tmp-<8 hex>-<name>", e.g. a method folder being built or removed.
SCRATCH = ".tmp-"

#: Key of one map: (image id, method key, target index; -1 for a single-output regressor).
MapKey = Tuple[str, str, int]


class StoreError(Exception):
    """The store cannot be used as asked: another tool's folder, not writable, a full disk,
    a changed configuration, another run writing it, or a missing or damaged array."""


# The folder.


def lock_path(out: Path, method: str) -> Path:
    """The writer lock of ``OUT/<method>``: beside the folder, which ``--overwrite`` replaces."""
    return out / f"{method}.lock"


def method_folders(out: Path, entries: Iterable[str]) -> List[str]:
    """The ``entries`` of ``out`` that are method folders of a captum-iba store."""
    return sorted(name for name in entries if not name.startswith(SCRATCH)
                  and (out / name / CONFIG).is_file() and (out / name / MAPS).is_dir())


def read_marker(out: Path) -> None:
    """Check that ``out`` holds our marker with our format tag.

    Raises
    ------
    StoreError
        If the marker is missing (saying so when ``out`` otherwise holds a
        captum-iba store: a deleted marker), unreadable, or of another format.
    """
    if not (out / MARKER).is_file():
        methods = method_folders(out, os.listdir(out)) if out.is_dir() else []
        if methods:
            raise StoreError(
                f"{out}: its marker file {MARKER} is missing, yet it holds a captum-iba store (methods "
                f"{', '.join(methods)}); restore the marker as {json.dumps({'format': FORMAT})} to use it, "
                "or choose a new folder")
        raise StoreError(f"{out} is not a captum-iba attribute store (no {MARKER})")
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


# A full disk.


def disk_space(path, need: Optional[int] = None):
    """Turn a write into ``path`` that fails for lack of space into one :class:`StoreError` line.

    ``need`` is the size of what was being written, where known. Other errors
    pass unchanged. Callers leave nothing half-written counted as done: the
    error is raised before any index line marks it. (See :func:`captum_iba._files.disk_space`.)
    """
    return _disk_space(path, need, error_type=StoreError,
                       advice="the maps marked done so far are intact: free some space and rerun the same command")


# Durable writes.


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path`` (a Zarr array just written)."""
    for folder, _, files in os.walk(path, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as JSON atomically: a temporary file in the same folder, fsync, rename."""
    text = json.dumps(payload, indent=1, sort_keys=True)
    with disk_space(path, len(text)), atomic_path(path) as temporary:
        temporary.write_text(text)


def append_lines(path: Path, rows: Sequence[dict], durable: bool) -> None:
    """Append one JSON line per row in a single write (fsynced if ``durable``).

    If the write fails part-way (a full disk), the file is cut back to its
    previous length, so no torn line is left for the next append to follow.
    """
    data = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()
    new = not path.exists()
    with disk_space(path, len(data)):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(data):  # a write may be short: the rest follows or fails
                    written += os.write(fd, data[written:])
                if durable:
                    os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        if durable and new:
            fsync_dir(path.parent)


def read_lines(path: Path) -> List[dict]:
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


# Checksums of arrays.


def _array_files(path: Path) -> List[str]:
    return sorted(str(Path(folder, name).relative_to(path).as_posix())
                  for folder, _, names in os.walk(path) for name in names)


def array_record(path: Path) -> dict:
    """The checksum record of the array at ``path``: its files' sizes and one SHA-256 over them."""
    digest, files = hashlib.sha256(), {}
    for relative in _array_files(path):
        data = (path / relative).read_bytes()
        files[relative] = len(data)
        digest.update(relative.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return {"sha256": digest.hexdigest(), "files": files}


def array_problem(path: Path, record: dict, full: bool) -> Optional[str]:
    """What is wrong with the array at ``path`` against its ``record``, or None.

    Parameters
    ----------
    path : Path
        The array's folder.
    record : dict
        An index line of its batch; ``sha256`` and ``files`` are absent in
        stores written before checksums, which are checked for presence only.
    full : bool
        Also compare the SHA-256 (reads every byte); otherwise check that
        every file is there with its size. (Arrays without a record are then
        decoded: a damaged chunk may still decode, to wrong values.)

    Returns
    -------
    str or None
        ``"missing: ..."`` or ``"corrupt: ..."`` and what was found.
    """
    if not path.is_dir():
        return "missing: the array's folder is gone"
    files: Optional[Dict[str, int]] = record.get("files")
    if files is None:
        return _legacy_problem(path, full)
    for relative, size in files.items():
        try:
            found = (path / relative).stat().st_size
        except FileNotFoundError:
            return f"missing: its file {relative} is gone"
        if found != size:
            return f"corrupt: its file {relative} has {found} bytes, {size} were written"
    if full and array_record(path)["sha256"] != record["sha256"]:
        return "corrupt: its bytes differ from the SHA-256 recorded when it was written"
    return None


def _legacy_problem(path: Path, full: bool) -> Optional[str]:
    """An array without a checksum record: its metadata and every chunk must be present (and decode, if ``full``)."""
    if not (path / "zarr.json").is_file():
        return "missing: its metadata zarr.json is gone (no checksum recorded: written before checksums)"
    try:
        array = zarr.open_array(store=str(path), mode="r")
        initialized = array.nchunks_initialized
        if full and initialized == array.nchunks:
            array[...]
    except Exception as error:  # zarr and its codecs raise many kinds on damaged files
        return f"corrupt: unreadable ({type(error).__name__}: {error})"
    if initialized != array.nchunks:
        return (f"missing: {array.nchunks - initialized} of its {array.nchunks} chunks are gone "
                "(no checksum recorded: written before checksums)")
    return None
