"""Progress of long work: a tqdm bar on a terminal, a few plain lines elsewhere (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: Plain-line mode prints at most one line per this many seconds (and the last one).
LINE_INTERVAL_S = 10.0


def progress(iterable: Iterable[T], *, desc: str, enabled: bool = True, total: Optional[int] = None,
             unit: str = "it", leave: bool = False) -> Iterator[T]:
    """Yield from ``iterable``, showing progress when ``enabled``.

    On a terminal, a tqdm bar (gone after the work unless ``leave``); when
    stderr is not a terminal, one line ``desc: k/total unit`` at most every
    :data:`LINE_INTERVAL_S` seconds and one when done, instead of a bar
    redrawn into the log.
    """
    if not enabled:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if sys.stderr.isatty():
        yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave)
        return
    of = f"/{total}" if total is not None else ""
    last, count = time.monotonic(), 0
    for count, item in enumerate(iterable, 1):
        yield item
        if time.monotonic() - last >= LINE_INTERVAL_S:
            print(f"{desc}: {count}{of} {unit}", file=sys.stderr, flush=True)
            last = time.monotonic()
    print(f"{desc}: {count}{of} {unit} done", file=sys.stderr, flush=True)
