"""Checking a whole attribution store: :func:`verify_store` and ``captum-iba verify OUT``.

Every array a done batch refers to is checked against the checksum record
written with it (see :mod:`~captum_iba.app.store.files`): missing (its folder
or one of its files is gone) or corrupt (a file of another size, bytes that
differ from the SHA-256, or unreadable). So are every index line (against its
own checksum), ``config.json`` (against its own, and against the
configuration its index lines record) and the other recorded files
(statistics, a trained state, the Zarr group's metadata).

The store's state is one of:

* ``ok`` (exit status 0): nothing damaged, and every planned batch done;
* ``incomplete`` (exit status 3): nothing damaged, but planned batches are
  not done yet (interrupted, or being written by a run now), or the store
  holds no maps yet; a rerun of the command completes it;
* ``corrupt`` (exit status 1): something written was changed or lost; a rerun
  computes the damaged batches again (``--verify`` for damage only a checksum
  shows), or says what to do.

``captum-iba verify`` exits 2 when the folder is no store (or its marker
file is unreadable). Notes do not change the state: arrays no done batch
refers to (orphaned: left by an interrupted run, or superseded by a batch
written again; the next run of the method removes them -- while a run holds
the method's writer lock, its arrays not yet marked are not orphans), a last
index line cut short by an interrupted write, and damaged lines of
``runs.jsonl`` (a log of finished runs: no map depends on it).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from .files import CONFIG, INDEX, StoreError, lock_path, method_folders, read_marker
from .lock import describe, read_holder, stale_reason
from .method import MethodStore
from .read import completeness

__all__ = ["Problem", "MethodReport", "StoreReport", "verify_store", "add_verify_arguments", "run_verify",
           "EXIT_STATUS"]

#: ``captum-iba verify``'s exit status per state (2: not a store).
EXIT_STATUS = {"ok": 0, "corrupt": 1, "incomplete": 3}


@dataclass
class Problem:
    """One missing, corrupt, unreadable or orphaned part of a store."""

    method: str
    kind: str  #: ``"missing"``, ``"corrupt"``, ``"unreadable"``, ``"orphaned"`` or ``"note"``
    path: Path
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"


@dataclass
class MethodReport:
    """What was checked in one method's folder.

    ``problems`` are damage (the store is corrupt); ``notes`` change nothing
    (orphaned arrays, a cut-short last line, a damaged log line);
    ``incomplete`` says how far the done maps fall short of the plan.
    """

    method: str
    arrays: int = 0
    maps: int = 0
    writer: Optional[str] = None  #: the run writing it now, if any
    problems: List[Problem] = field(default_factory=list)
    notes: List[Problem] = field(default_factory=list)
    incomplete: Optional[str] = None
    planned: bool = True  #: a plan was recorded, so completeness is known


@dataclass
class StoreReport:
    """The result of :func:`verify_store`; ``status`` is ``"ok"``, ``"incomplete"`` or ``"corrupt"``."""

    out: Path
    full: bool
    methods: List[MethodReport]

    @property
    def problems(self) -> List[Problem]:
        return [problem for method in self.methods for problem in method.problems]

    @property
    def notes(self) -> List[Problem]:
        return [note for method in self.methods for note in method.notes]

    @property
    def status(self) -> str:
        if self.problems:
            return "corrupt"
        if not self.methods or any(method.incomplete for method in self.methods):
            return "incomplete"
        return "ok"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def lines(self) -> List[str]:
        """The report as text lines: one per method, problem and note, and the verdict."""
        how = "every array's SHA-256" if self.full else "every array's files and sizes"
        lines = [f"{self.out} ({how}):"]
        for method in self.methods:
            if method.problems:
                status = f"{len(method.problems)} problem(s)"
            elif method.incomplete:
                status = f"incomplete: {method.incomplete}"
            else:
                status = "ok" if method.planned else "ok (no plan recorded: whether maps are missing is unknown)"
            writing = f"; being written by {method.writer}" if method.writer else ""
            lines.append(f"  {method.method}: {method.arrays} arrays, {method.maps} maps: {status}{writing}")
            lines.extend(f"    {problem}" for problem in method.problems + method.notes)
        if not self.methods:
            lines.append("  no maps yet")
        verdicts = {
            "ok": "ok",
            "incomplete": "incomplete: rerun the commands that wrote these methods to complete them",
            "corrupt": (f"corrupt: {len(self.problems)} problem(s): rerun the commands that wrote these methods; a "
                        "rerun computes missing and damaged batches again (pass --verify to it for damage only a "
                        "checksum shows) and says what to do about a damaged configuration or statistics file"),
        }
        lines.append(verdicts[self.status])
        return lines


def _check_method(folder: Path, full: bool) -> MethodReport:
    report = MethodReport(folder.name)
    try:
        store = MethodStore(folder)
        rows, line_problems = store.scan()
    except StoreError as error:  # config.json missing, changed, or not the one its lines record
        report.problems.append(Problem(folder.name, "corrupt", folder / CONFIG, str(error).split(": ", 1)[1]))
        return report
    holder = read_holder(lock_path(folder.parent, store.method))
    if holder is not None and stale_reason(holder) is None:
        report.writer = describe(holder)
    for line in line_problems:
        target = report.problems if line.damaged else report.notes
        kind = "unreadable" if line.damaged else "note"
        target.append(Problem(store.method, kind, line.path,
                              f"line {line.line}: {line.detail}; the maps of its batch are left out"))
    live = store.live_arrays(rows)
    damaged = store.check_arrays(full, live)
    report.arrays, report.maps = len(live), sum(len(lines) for lines in live.values())
    for name, problem in sorted(damaged.items()):
        kind, detail = problem.split(": ", 1)
        report.problems.append(Problem(store.method, kind, store.maps_dir / name, detail))
    for relative, problem in sorted(store.file_problems().items()):
        kind, detail = problem.split(": ", 1)
        report.problems.append(Problem(store.method, kind, folder / relative, detail))
    report.planned = bool(store.plan)
    report.incomplete = completeness(store, live, damaged)
    if store.plan and report.incomplete is None and store.plan.get("maps") is not None:
        held = sum(len(lines) for name, lines in live.items() if name not in damaged)
        if held != store.plan["maps"]:
            report.problems.append(Problem(store.method, "corrupt", folder / INDEX,
                                           f"every planned batch is done, but they hold {held} maps, "
                                           f"{store.plan['maps']} were planned"))
    for line in store.run_problems():
        report.notes.append(Problem(store.method, "note", line.path,
                                    f"line {line.line}: {line.detail} (a log of finished runs: no map depends on it)"))
    if report.writer is None:
        for entry in sorted(store.maps_dir.iterdir()) if store.maps_dir.is_dir() else []:
            if entry.is_dir() and entry.name not in live:
                report.notes.append(Problem(
                    store.method, "orphaned", entry, "no done batch refers to it (left by an interrupted run, "
                    "or superseded); the next run of this method removes it"))
    return report


def verify_store(out_dir, full: bool = True) -> StoreReport:
    """Check every part of the store ``out_dir``: is it intact, and is it complete.

    Parameters
    ----------
    out_dir : path
        A folder written by ``captum-iba attribute``.
    full : bool
        Compare every array's SHA-256 (reads every byte); otherwise check that
        each array's files are there with their sizes.

    Returns
    -------
    StoreReport
        Per method: the done arrays and maps checked, the run writing it now
        (if any), the problems and notes found, and how far it falls short of
        its plan; ``report.status`` is ``"ok"``, ``"incomplete"`` or ``"corrupt"``.

    Raises
    ------
    StoreError
        If ``out_dir`` is not a captum-iba store, or its marker is unreadable.
    """
    out = Path(out_dir).expanduser().absolute()
    read_marker(out)
    folders = method_folders(out, [path.name for path in out.iterdir()])
    return StoreReport(out, full, [_check_method(out / name, full) for name in folders])


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``captum-iba verify``."""
    parser.add_argument("out", metavar="OUT", help="the store folder (--out of captum-iba attribute)")
    parser.add_argument("--quick", action="store_true",
                        help="check each array's files and sizes only, not their SHA-256 (no full read)")


def run_verify(args: argparse.Namespace) -> int:
    """Run ``captum-iba verify``: print the report; exit status 0 ok, 1 corrupt, 3 incomplete, 2 no store."""
    try:
        report = verify_store(args.out, full=not args.quick)
    except StoreError as error:
        print(f"captum-iba verify: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()), flush=True)
    return EXIT_STATUS[report.status]
