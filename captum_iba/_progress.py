"""Progress of long work: a tqdm bar on a terminal, a few plain lines elsewhere (logs, CI, pipes).

Every loop of the library and the application that can take long goes through
:func:`progress`, so one rule decides what the user sees: a bar on a terminal,
plain lines when stderr is not one or within :func:`plain_lines` (the
command line's ``--quiet``), nothing when the caller passes ``enabled=False``.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from typing import Callable, Iterable, Iterator, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: Plain-line mode prints at most one line per this many seconds (and the last one).
LINE_INTERVAL_S = 10.0

_PLAIN_LINES = contextvars.ContextVar("captum_iba_plain_lines", default=False)


@contextlib.contextmanager
def plain_lines() -> Iterator[None]:
    """Within this block, progress is shown as plain lines even on a terminal (no bars)."""
    token = _PLAIN_LINES.set(True)
    try:
        yield
    finally:
        _PLAIN_LINES.reset(token)


def progress(iterable: Iterable[T], *, desc: str, enabled: bool = True, total: Optional[int] = None,
             unit: str = "it", leave: bool = False, postfix: Optional[Callable[[], str]] = None) -> Iterator[T]:
    """Yield from ``iterable``, showing progress when ``enabled``.

    On a terminal, a tqdm bar (gone after the work unless ``leave``); when
    stderr is not a terminal, or within :func:`plain_lines`, one line
    ``desc: k/total unit`` at most every :data:`LINE_INTERVAL_S` seconds and
    one when done, instead of a bar redrawn into the log. ``postfix``, called
    after each item, adds its text (e.g. the running loss) to the bar or line.
    """
    if not enabled:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if sys.stderr.isatty() and not _PLAIN_LINES.get():
        with tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave) as bar:
            for item in bar:
                yield item
                if postfix is not None:
                    bar.set_postfix_str(postfix(), refresh=False)
        return
    of = f"/{total}" if total is not None else ""
    last, count = time.monotonic(), 0

    def line(done: str = "") -> str:
        extra = f", {postfix()}" if postfix is not None and count else ""
        return f"{desc}: {count}{of} {unit}{extra}{done}"

    for count, item in enumerate(iterable, 1):
        yield item
        if time.monotonic() - last >= LINE_INTERVAL_S:
            print(line(), file=sys.stderr, flush=True)
            last = time.monotonic()
    print(line(" done"), file=sys.stderr, flush=True)
