"""One writer at a time per method folder of a store: a lock file with a heartbeat.

A run takes ``OUT/<method>.lock`` before it writes anything in ``OUT/<method>``
and holds it until it ends; the lock is released on return and on any
exception, Ctrl-C and SIGTERM included. The file appears atomically with its
content (a hard link of a file already written, which fails if the name
exists: of two runs that start together, exactly one creates it; ``O_CREAT |
O_EXCL`` where hard links are not supported) and holds the holder's host, PID,
run id, start time, lease and heartbeat time, which a background thread
renews every tenth of the lease.

A run that finds the lock held is refused with one line naming the holder,
unless the lock is stale:

* on the same host, when the holder's process is no longer running (killed,
  crashed): taken over, with a warning;
* from another host (a shared file system), when its heartbeat is older than
  its lease (10 minutes by default: the host crashed or lost the share):
  taken over, with a warning. The hosts' clocks must agree to well within the lease.

A stale lock is taken over by renaming it away and checking that what was
renamed is the lock judged stale (if not, it is put back), so two runs taking
over one stale lock never both succeed.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

from ..._files import fsync_dir
from .files import StoreError, disk_space

__all__ = ["DEFAULT_LEASE_S", "WriterLock", "check_lock", "read_holder"]

#: Seconds a lock from another host stays valid without a heartbeat.
DEFAULT_LEASE_S = 600.0
HOST = socket.gethostname()
_FIELDS = {"host", "pid", "run_id", "token", "started", "heartbeat", "lease_s"}
# A lock file just created is empty until its holder has written it (microseconds): read again.
_READ_TRIES, _READ_PAUSE_S = 20, 0.05


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def read_holder(path) -> Optional[dict]:
    """The content of the lock file at ``path``, or None if there is none.

    A file that stays unreadable (a holder killed between creating and
    writing it) reads as held by an unknown run since its modification time.
    """
    path = Path(path)
    for _ in range(_READ_TRIES):
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:  # not JSON, or not UTF-8
            holder = None
        if isinstance(holder, dict) and _FIELDS <= holder.keys():
            return holder
        time.sleep(_READ_PAUSE_S)
    try:
        since = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return {"host": "unknown", "pid": None, "run_id": None, "token": None, "started": _iso(since),
            "heartbeat": since, "lease_s": DEFAULT_LEASE_S}


def describe(holder: dict) -> str:
    """``"run R (host H, PID P, started T)"``."""
    return f"run {holder['run_id']} (host {holder['host']}, PID {holder['pid']}, started {holder['started']})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed process that its parent has not reaped yet is a zombie: dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stale_reason(holder: dict) -> Optional[str]:
    """Why the lock ``holder`` describes may be taken over, or None while it is held."""
    if holder["host"] == HOST and holder["pid"] is not None:
        return None if _pid_alive(holder["pid"]) else f"its process {holder['pid']} is no longer running"
    age = time.time() - holder["heartbeat"]
    if age > holder["lease_s"]:
        return f"its heartbeat is {age:.0f} s old, past its lease of {holder['lease_s']:.0f} s"
    return None


def _break(path: Path, holder: dict) -> bool:
    """Remove the stale lock ``holder``; False if the file is no longer that lock (put back)."""
    claimed = path.with_name(f".tmp-{secrets.token_hex(4)}-{path.name}")
    try:
        os.replace(path, claimed)
    except FileNotFoundError:  # another run removed it first
        return False
    try:
        if read_holder(claimed) == holder:
            return True
        try:  # a fresh lock of another run: put it back, unless a newer one took its place
            os.link(claimed, path)
        except FileExistsError:
            pass
        return False
    finally:
        claimed.unlink(missing_ok=True)


class WriterLock:
    """The writer lock of one method folder, held by one run (see the module docstring).

    Parameters
    ----------
    path : path
        The lock file, ``OUT/<method>.lock``.
    run_id : str
        The run that holds it; :func:`check_lock` checks for it (other processes of the run).
    lease_s : float
        Seconds the lock stays valid for other hosts without a heartbeat; the
        heartbeat is renewed every ``lease_s / 10``.
    label : str, optional
        What the lock protects, for messages (default: the path without ``.lock``).

    Use it as a context manager (``with WriterLock(...) as lock:``), or call
    :meth:`acquire` and :meth:`release`.
    """

    def __init__(self, path, run_id: str, lease_s: float = DEFAULT_LEASE_S, label: Optional[str] = None) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s: expected a positive number of seconds, got {lease_s!r}")
        self.path = Path(path)
        self.run_id, self.lease_s = run_id, float(lease_s)
        self.label = label or str(self.path.with_suffix(""))
        self._token = secrets.token_hex(8)
        self._content: Optional[dict] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def held(self) -> bool:
        return self._thread is not None

    def acquire(self) -> "WriterLock":
        """Take the lock, taking over a stale one with a warning.

        Raises
        ------
        StoreError
            If another live run holds it (the message names its host, PID and
            start time), or there is no space to create it.
        """
        if self.held:
            raise RuntimeError(f"{self.path}: this lock is already held")
        for _ in range(5):  # each turn, the file was released or taken over meanwhile
            if self._create():
                self._stop.clear()
                self._thread = threading.Thread(target=self._beat, name=f"lock {self.path.name}", daemon=True)
                self._thread.start()
                return self
            holder = read_holder(self.path)
            if holder is None:
                continue
            reason = stale_reason(holder)
            if reason is None:
                raise StoreError(
                    f"{self.label} is being written by another {describe(holder)}; one run at a time may "
                    f"write it: wait for that run to end (if it is gone for good, remove {self.path})")
            if _break(self.path, holder):
                warnings.warn(f"{self.label}: took over the writer lock of {describe(holder)}: {reason}",
                              RuntimeWarning, stacklevel=2)
        raise StoreError(f"{self.label}: could not take the writer lock {self.path}: other runs keep taking it")

    def _create(self) -> bool:
        """Create the lock file with its content in one step; False if it exists.

        The content is written to a temporary file first and hard-linked to the
        lock's name (the link fails if the name exists), so a process killed at
        any moment never leaves an empty lock file. Where hard links are not
        supported, the file is created with ``O_EXCL`` and then written.
        """
        now = time.time()
        content = {"host": HOST, "pid": os.getpid(), "run_id": self.run_id, "token": self._token,
                   "started": _iso(now), "heartbeat": now, "lease_s": self.lease_s}
        data = json.dumps(content, sort_keys=True).encode()
        temporary = self.path.with_name(f".tmp-{secrets.token_hex(4)}-{self.path.name}")
        with disk_space(self.path, len(data)):
            try:
                self._write(temporary, data, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                try:
                    os.link(temporary, self.path)
                except FileExistsError:
                    return False
                except OSError:  # no hard links on this file system
                    try:
                        self._write(self.path, data, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                    except FileExistsError:
                        return False
            finally:
                temporary.unlink(missing_ok=True)
            fsync_dir(self.path.parent)
        self._content = content
        return True

    @staticmethod
    def _write(path: Path, data: bytes, flags: int) -> None:
        fd = os.open(path, flags, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def _beat(self) -> None:
        """Renew the heartbeat until released; stop if the lock is no longer ours."""
        while not self._stop.wait(self.lease_s / 10):
            try:
                holder = read_holder(self.path)
            except OSError:  # a flaky share: the next beat tries again
                continue
            if holder is None or holder["token"] != self._token:
                return  # taken over: check() and the writer's checks report it
            self._content = {**self._content, "heartbeat": time.time()}
            temporary = self.path.with_name(f".tmp-{secrets.token_hex(4)}-{self.path.name}")
            try:
                temporary.write_text(json.dumps(self._content, sort_keys=True))
                os.replace(temporary, self.path)
            except OSError:  # a full disk or a flaky share: the next beat tries again
                temporary.unlink(missing_ok=True)

    def check(self) -> None:
        """Raise :class:`StoreError` unless this lock is still held by this object."""
        holder = read_holder(self.path)
        if not self.held or holder is None or holder["token"] != self._token:
            now = f"now {describe(holder)} holds it" if holder else "no run holds it now"
            raise StoreError(f"{self.label}: this run lost its writer lock {self.path} ({now})")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        if not self.held:
            return
        try:
            self._stop.set()
            self._thread.join()
        finally:  # a signal while joining must not leave the lock file behind
            self._thread = None
            holder = read_holder(self.path)
            if holder is not None and holder["token"] == self._token:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "WriterLock":
        return self if self.held else self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"WriterLock({str(self.path)!r}, run_id={self.run_id!r}, held={self.held})"


def check_lock(path, run_id: str, label: Optional[str] = None) -> None:
    """Check that the lock at ``path`` is held by the run ``run_id`` (the other processes of a run).

    Raises
    ------
    StoreError
        If no run holds it, or another run does.
    """
    holder = read_holder(path)
    label = label or str(Path(path).with_suffix(""))
    if holder is None:
        raise StoreError(f"{label}: run {run_id} does not hold the writer lock {path} (no run holds it)")
    if holder["run_id"] != run_id:
        raise StoreError(f"{label}: run {run_id} does not hold the writer lock {path}; {describe(holder)} does")
