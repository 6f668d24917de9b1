"""The files of the attribution store (:mod:`captum_iba.app.store`).

The layout's names, the folder's marker, durable writes, a full disk, and the
checksums of arrays, lines and files; shared by :mod:`captum_iba.app.store`
(the layout) and the modules it is split into: ``lock`` (the writer lock),
``method`` (one method's maps), ``read`` and ``verify`` (reading and checking).

Every array's files are summed up, when its batch is marked done, by a record
``{"sha256": ..., "files": {relative path: size}}`` kept in its index lines:
the SHA-256 runs over each file's relative path, size and bytes exactly as
written (Zarr metadata and compressed chunks, in path order), so a missing,
shortened, extended or altered file -- a single flipped bit included -- no
longer matches. Stores written before checksums have no record: for them only
the presence of the metadata and of every chunk can be checked.

Every JSON line (index, runs) and ``config.json`` carry their own checksum,
``"self_sha256"``: the SHA-256 of the canonical JSON of their other content
(:func:`seal`), so a changed image id, target, row or number is found
(:func:`seal_problem`). The other files of a method folder (statistics, a
trained state, the Zarr group's metadata) are summed up by
:func:`file_record` in ``config.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import zarr
from ..._files import atomic_path, fsync_dir
from ..._files import disk_space as _disk_space


#: Format tag of the marker file; another tag (or none) means the folder is not ours.
FORMAT = "captum_iba.attribute/1"
MARKER = "captum-iba-attribute.json"
CONFIG, MAPS, INDEX, STATS, TRAINED, RUNS = "config.json", "maps.zarr", "index", "stats", "trained", "runs.jsonl"
#: The key of a line's (or config.json's) own checksum.
SEAL = "self_sha256"
# Scratch entries of the store itself: ".tmp-<8 hex>-<name>", e.g. a method folder being built or removed.
SCRATCH = ".tmp-"

#: Key of one map: (image id, method key, target index; -1 for a single-output regressor).
MapKey = Tuple[str, str, int]


class StoreError(Exception):
    """The store cannot be used as asked: another tool's folder, not writable, a full disk,
    a changed configuration, another run writing it, or a missing or damaged file."""


class StoreWarning(UserWarning):
    """Maps left out on reading: a damaged index line, or a store not complete yet."""


# The folder.


def lock_path(out: Path, method: str) -> Path:
    """The writer lock of ``OUT/<method>``: beside the folder, which ``--overwrite`` replaces."""
    return out / f"{method}.lock"


def method_folders(out: Path, entries: Iterable[str]) -> List[str]:
    """The ``entries`` of ``out`` that are method folders of a captum-iba store.

    A folder with maps or an index but no ``config.json`` counts, so that a
    deleted configuration is reported rather than its maps silently ignored.
    """
    return sorted(name for name in entries if not name.startswith(SCRATCH)
                  and ((out / name / MAPS).is_dir() or (out / name / INDEX).is_dir()))


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
        marker = json.loads((out / MARKER).read_bytes())
    except (OSError, ValueError) as error:  # JSON and UTF-8 errors are ValueErrors
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
    """Append one JSON line per row, each with its checksum (:func:`seal`), in a single write
    (fsynced if ``durable``).

    If the write fails part-way (a full disk), the file is cut back to its
    previous length, so no torn line is left for the next append to follow.
    """
    data = "".join(json.dumps(seal(row), sort_keys=True) + "\n" for row in rows).encode()
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


@dataclass
class LineProblem:
    """A line of a JSON-lines file that is not used: damaged, or cut short by an interrupted write.

    Attributes
    ----------
    path : Path
    line : int
        Its number, from 1.
    detail : str
        What is wrong with it.
    damaged : bool
        True for a changed line (it does not parse, or differs from its
        checksum); False for a last line without its newline, which a process
        killed while appending leaves.
    """

    path: Path
    line: int
    detail: str
    damaged: bool = True

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.detail}"


def read_lines(path: Path, sealed: bool = True) -> Tuple[List[Tuple[int, dict]], List[LineProblem]]:
    """The usable lines of a JSON-lines file, and the others.

    Parameters
    ----------
    path : Path
    sealed : bool
        Every line must carry its checksum (:func:`seal`); otherwise lines
        without one (written before checksums) are taken as they are.

    Returns
    -------
    rows : list of (int, dict)
        Line number and content of every line that parses and matches its checksum.
    problems : list of LineProblem
        The lines that do not, and a last line without newline (a torn write).
    """
    lines = path.read_bytes().split(b"\n")
    rows, problems = [], []
    for number, line in enumerate(lines[:-1], 1):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            problems.append(LineProblem(path, number, f"not a valid JSON line ({error})"))
            continue
        problem = seal_problem(row, required=sealed)
        if problem is not None:
            problems.append(LineProblem(path, number, problem))
        else:
            rows.append((number, {key: value for key, value in row.items() if key != SEAL}))
    if lines[-1]:  # the part after the last newline is empty, or a write cut short
        problems.append(LineProblem(path, len(lines), "an incomplete last line (a write cut short, or its "
                                    "newline damaged)", damaged=False))
    return rows, problems


def rewrite_lines(path: Path, rows: Sequence[dict]) -> None:
    """Replace a JSON-lines file by ``rows``, each with its checksum, atomically."""
    text = "".join(json.dumps(seal(row), sort_keys=True) + "\n" for row in rows)
    with disk_space(path, len(text)), atomic_path(path) as temporary:
        temporary.write_text(text)


# Checksums of lines and files.


def _canonical(payload: dict) -> bytes:
    return json.dumps({key: value for key, value in payload.items() if key != SEAL}, sort_keys=True,
                      separators=(",", ":")).encode()


def seal(payload: dict) -> dict:
    """``payload`` (as it reads back from JSON) with its own checksum under :data:`SEAL`."""
    payload = json.loads(json.dumps({key: value for key, value in payload.items() if key != SEAL}))
    return {**payload, SEAL: hashlib.sha256(_canonical(payload)).hexdigest()}


def seal_problem(payload, required: bool = True) -> Optional[str]:
    """What is wrong with a line or file read back against its checksum, or None.

    ``required``: a payload without a checksum is a problem (otherwise it is
    taken as written before checksums).
    """
    if not isinstance(payload, dict):
        return f"not a JSON object (a {type(payload).__name__})"
    if SEAL not in payload:
        return "its checksum is missing (changed after it was written)" if required else None
    if payload[SEAL] != hashlib.sha256(_canonical(payload)).hexdigest():
        return "differs from the checksum written with it (changed after it was written)"
    return None


def file_record(path: Path) -> dict:
    """``{"size": ..., "sha256": ...}`` of a file, as :func:`file_problem` checks it."""
    data = path.read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_problem(path: Path, record: dict) -> Optional[str]:
    """``"missing: ..."`` or ``"corrupt: ..."`` for a file that no longer matches its record, or None."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing: the file is gone"
    if len(data) != record["size"]:
        return f"corrupt: it has {len(data)} bytes, {record['size']} were written"
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        return "corrupt: its bytes differ from the SHA-256 recorded when it was written"
    return None


def config_hash(config: dict) -> str:
    """SHA-256 of a configuration's canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


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
