"""Durable, all-or-nothing file writes shared by every module that writes files,
and a full disk reported as one line (:func:`disk_space`)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional


# The process's umask, for the permissions of files written through a temporary file (read once).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def fsync_dir(path) -> None:
    """Make a folder's entries (new, renamed or removed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces ``path`` when the block succeeds.

    Write to the yielded path inside the ``with`` block. On success the file is
    fsynced, renamed onto ``path`` and the folder fsynced; on any exception it
    is removed and ``path`` is left as it was. The folder must exist.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide reports and stores from other users
    try:
        yield temporary
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# A full disk.

#: Errors that mean "no room to write": a full device or an exhausted quota.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceError(OSError):
    """A write failed for lack of space; the message is one line naming the path and the space.

    An ``OSError`` with the original ``errno`` (``ENOSPC`` or ``EDQUOT``) and ``filename``.
    """

    def __init__(self, message: str, errno_: int, path) -> None:
        super().__init__(message)
        self.errno, self.filename = errno_, str(path)

    def __str__(self) -> str:
        return self.args[0]


def format_size(n: float) -> str:
    """``n`` bytes in decimal units, e.g. ``"12.3 MB"``."""
    unit = "bytes"
    for larger in ("KB", "MB", "GB", "TB"):
        if n < 1000:
            break
        n, unit = n / 1000, larger
    return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"


def free_space(path) -> Optional[int]:
    """Free bytes on the device of ``path`` (or of its nearest existing parent), or None."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def no_space_message(path, error: OSError, need: Optional[int] = None) -> str:
    """``"<path>: no space left on device (<need> needed, <free> free)"`` for a failed write."""
    free = free_space(path)
    amounts = ", ".join(text for text in (
        f"{format_size(need)} needed" if need is not None else None,
        f"{format_size(free)} free" if free is not None else None) if text)
    cause = (error.strerror or "no space left on device").lower()  # or "disk quota exceeded"
    return f"{path}: {cause}{f' ({amounts})' if amounts else ''}"


@contextlib.contextmanager
def disk_space(path, need: Optional[int] = None, advice: str = "",
               error_type: Optional[Callable[[str], Exception]] = None) -> Iterator[None]:
    """Turn a write into ``path`` that fails for lack of space into one line.

    Parameters
    ----------
    path : path
        What was being written, named in the message.
    need : int, optional
        The size of what was being written, where known.
    advice : str
        Appended to the message after ``"; "`` (what the user can do).
    error_type : callable, optional
        Makes the exception raised from the message; default
        :class:`NoSpaceError`. Other errors pass unchanged.
    """
    try:
        yield
    except OSError as error:
        if error.errno not in NO_SPACE or (isinstance(error, NoSpaceError) and error_type is None):
            raise
        # A NoSpaceError from within already names the file that could not be written.
        message = str(error) if isinstance(error, NoSpaceError) else no_space_message(path, error, need)
        message += f"; {advice}" if advice else ""
        raise (error_type(message) if error_type else NoSpaceError(message, error.errno, path)) from error


# How torch's DataLoader re-raises an error of a worker process: its traceback in the message.
_WORKER_ERROR = re.compile(r"Caught \w+ in DataLoader (worker process \d+)\.\s*\nOriginal Traceback")
_EXCEPTION_NAME = re.compile(r"^[A-Za-z_][\w.]*: ")  # "package.module.SomeError: " before the message


def error_line(error) -> str:
    """An error (or a message) as one line for a command's standard error.

    A full disk the raiser did not describe reads as :func:`no_space_message`
    of the file named in the error; an error of a data-loading worker, which
    torch re-raises with the worker's traceback, reads as the worker's own
    message; any message is joined onto one line.
    """
    if isinstance(error, OSError) and error.errno in NO_SPACE and not isinstance(error, NoSpaceError):
        text = no_space_message(error.filename or "a file", error)
    else:
        text = str(error) or type(error).__name__
    worker = _WORKER_ERROR.match(text)
    if worker:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        text = f"{_EXCEPTION_NAME.sub('', last)} (in data-loading {worker.group(1)})"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def read_tagged(path, format_tag: str, kind: str, short: str) -> dict:
    """A dict that ``torch.save`` wrote with ``{"format": format_tag, ...}``, read with ``weights_only=True``.

    Raises ``FileNotFoundError`` ("``short`` file not found") when ``path`` is
    no file, and ``ValueError`` naming ``kind`` when it is unreadable or lacks the tag.
    """
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{short} file not found: {path!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for bad files
        raise ValueError(f"{path!r} is not a readable {kind} file (truncated or corrupt?): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != format_tag:
        raise ValueError(f"{path!r} is not a {kind} file (missing format tag {format_tag!r})")
    return payload
