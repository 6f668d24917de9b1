"""Checking a whole attribution store: :func:`verify_store` and ``captum-iba verify OUT``.

Every array a done batch refers to is checked against the checksum record
written with it (see :mod:`~captum_iba.app.store.files`): missing (its folder
or one of its files is gone) or corrupt (a file of another size, bytes that
differ from the SHA-256, or unreadable). Arrays that no done batch refers to
are orphaned: left by an interrupted run, or superseded by a batch written
again; the next run of the method removes them. While a run holds a method's
writer lock, its arrays not yet marked are not orphans and are not reported.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from .files import StoreError, lock_path
from .lock import describe, read_holder, stale_reason
from .method import MethodStore
from .read import method_stores

__all__ = ["Problem", "MethodReport", "StoreReport", "verify_store", "add_verify_arguments", "run_verify"]


@dataclass
class Problem:
    """One missing, corrupt, orphaned or unreadable part of a store."""

    method: str
    kind: str  #: ``"missing"``, ``"corrupt"``, ``"orphaned"`` or ``"unreadable"``
    path: Path
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"


@dataclass
class MethodReport:
    """What was checked in one method's folder."""

    method: str
    arrays: int = 0
    maps: int = 0
    writer: Optional[str] = None  #: the run writing it now, if any
    problems: List[Problem] = field(default_factory=list)


@dataclass
class StoreReport:
    """The result of :func:`verify_store`: ``ok`` when no method has a problem."""

    out: Path
    full: bool
    methods: List[MethodReport]

    @property
    def problems(self) -> List[Problem]:
        return [problem for method in self.methods for problem in method.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> List[str]:
        """The report as text lines, one per method and one per problem."""
        how = "every array's SHA-256" if self.full else "every array's files and sizes"
        lines = [f"{self.out} ({how}):"]
        for method in self.methods:
            status = "ok" if not method.problems else f"{len(method.problems)} problem(s)"
            writing = f"; being written by {method.writer}" if method.writer else ""
            lines.append(f"  {method.method}: {method.arrays} arrays, {method.maps} maps: {status}{writing}")
            lines.extend(f"    {problem}" for problem in method.problems)
        if not self.methods:
            lines.append("  no maps yet")
        if not self.ok:
            lines.append(f"{len(self.problems)} problem(s): rerun the commands that wrote these methods; a rerun "
                         "computes missing and damaged batches again (pass --verify to it for damage only a "
                         "checksum shows) and removes orphaned arrays")
        return lines


def _check_method(store: MethodStore, full: bool) -> MethodReport:
    report = MethodReport(store.method)
    holder = read_holder(lock_path(store.folder.parent, store.method))
    if holder is not None and stale_reason(holder) is None:
        report.writer = describe(holder)
    try:
        live = store.live_arrays()
        damaged = store.check_arrays(full)
    except StoreError as error:  # an index line that is not JSON
        report.problems.append(Problem(store.method, "unreadable", store.folder / "index", str(error)))
        return report
    report.arrays, report.maps = len(live), sum(len(rows) for rows in live.values())
    for name, problem in sorted(damaged.items()):
        kind, detail = problem.split(": ", 1)
        report.problems.append(Problem(store.method, kind, store.maps_dir / name, detail))
    if report.writer is None:
        for entry in sorted(store.maps_dir.iterdir()):
            if entry.is_dir() and entry.name not in live:
                report.problems.append(Problem(
                    store.method, "orphaned", entry, "no done batch refers to it (left by an interrupted run, "
                    "or superseded); the next run of this method removes it"))
    return report


def verify_store(out_dir, full: bool = True) -> StoreReport:
    """Check every array of the store ``out_dir``; list what is missing, corrupt or orphaned.

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
        (if any), and the problems found; ``report.ok`` if there are none.

    Raises
    ------
    StoreError
        If ``out_dir`` is not a captum-iba store.
    """
    out = Path(out_dir).expanduser().absolute()
    return StoreReport(out, full, [_check_method(store, full) for store in method_stores(out)])


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``captum-iba verify``."""
    parser.add_argument("out", metavar="OUT", help="the store folder (--out of captum-iba attribute)")
    parser.add_argument("--quick", action="store_true",
                        help="check each array's files and sizes only, not their SHA-256 (no full read)")


def run_verify(args: argparse.Namespace) -> int:
    """Run ``captum-iba verify``: print the report; 0 if the store is intact, 1 if not, 2 if it is no store."""
    try:
        report = verify_store(args.out, full=not args.quick)
    except StoreError as error:
        print(f"captum-iba verify: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()), flush=True)
    return 0 if report.ok else 1
