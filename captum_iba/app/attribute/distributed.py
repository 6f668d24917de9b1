"""The processes of a run: one, or many under ``torchrun``, and what they share.

Sharding and seeds are functions of the batch index alone, never of the number
of processes: batch ``b`` goes to process ``b % K`` and gets the noise seed
derived from the run's seed and ``b``, so K processes write the maps of one,
bit for bit (on the same kind of device, with the same threads per process).
``torch.distributed`` is initialised only when ``WORLD_SIZE`` > 1: NCCL on GPUs
(each process on ``cuda:LOCAL_RANK``), gloo on CPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Sequence
from typing import Callable, Iterable, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .plan import UsageError

__all__ = ["Processes", "SetupFailed", "Shard", "determinism", "shard", "batch_seed", "check_device", "quiet_worker"]


class SetupFailed(Exception):
    """Process 0 failed to set the run up (it reports why); raised in the other processes."""


class Shard(Sequence):
    """The batches of one process, made on access: a run of a billion items holds no list of them.

    Entry ``i`` is ``(b, items)``: the batch index and the range of its item indices.
    """

    def __init__(self, n_items: int, batch_size: int, rank: int, world: int) -> None:
        self.n_items, self.batch_size = n_items, batch_size
        self.batches = range(rank, math.ceil(n_items / batch_size), world)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Tuple[int, range]:
        if not isinstance(i, int):
            raise TypeError(f"a Shard is indexed by int, got {type(i).__name__}")
        b = self.batches[i]
        return b, self.items_of(b)

    def items_of(self, b: int) -> range:
        """The item indices of batch ``b``."""
        return range(b * self.batch_size, min(self.n_items, (b + 1) * self.batch_size))

    def count_items(self, batches: Optional[Iterable[int]] = None) -> int:
        """How many items the shard's batches hold; with ``batches``, only those of them in the shard."""
        if batches is not None:
            return sum(len(self.items_of(b)) for b in batches if b in self.batches)
        if not self.batches:
            return 0
        return len(self.batches) * self.batch_size - (self.batch_size - len(self.items_of(self.batches[-1])))


def shard(n_items: int, batch_size: int, rank: int, world: int) -> Shard:
    """The batches of process ``rank`` out of ``world``.

    Batch ``b`` holds items ``b*batch_size`` up to ``(b+1)*batch_size``
    (fewer in the last one) and belongs to process ``b % world``.

    Returns
    -------
    Shard
        A sequence of (batch index, item indices), in increasing order, made
        on access.
    """
    return Shard(n_items, batch_size, rank, world)


def batch_seed(seed: int, batch: int) -> int:
    """The noise seed of batch ``batch`` of a run seeded with ``seed``: a 63-bit integer."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def quiet_worker(worker_id: int) -> None:
    """A DataLoader's ``worker_init_fn``: its workers leave SIGINT to the main process, and end
    quietly (exit status 0) on SIGTERM.

    The main process handles both signals (one line, the writer lock released)
    and stops its workers itself. A worker that raised on them would print its
    own traceback; one killed by SIGTERM would make the main process report a
    worker failure instead; SIGTERM must still end it, as the main process's
    exit stops its workers with SIGTERM.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_worker)


def _end_worker(signum, frame) -> None:
    os._exit(0)


def check_device(device: str, local_rank: int = 0) -> torch.device:
    """``--device`` as a torch device this machine has (``cuda`` becomes ``cuda:local_rank``).

    Raises
    ------
    UsageError
        Naming ``--device``: not a device name, or a GPU this machine does not have.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device}: expected auto, cpu, cuda, cuda:K or mps") from None
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank) if resolved.index is None else resolved
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if resolved.index >= count:
            have = f"only {count} CUDA GPU(s) (cuda:0-{count - 1})" if count else "no CUDA GPU"
            raise UsageError(f"--device {device}: this machine has {have}; use --device cpu or auto")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available on this machine; use --device cpu or auto")
    elif resolved.type not in ("cpu", "mps"):
        raise UsageError(f"--device {device}: expected auto, cpu, cuda, cuda:K or mps")
    return resolved


class Processes:
    """This process's place in a ``torchrun`` launch (or a lone process) and the collectives a run needs.

    ``torch.distributed`` is initialised only when ``WORLD_SIZE`` > 1: with
    NCCL when the device is a GPU (each process takes ``cuda:LOCAL_RANK``),
    with gloo on CPU.
    """

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = check_device(device, local_rank)
        if self.world > 1:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()

    def share(self, make: Callable[[], object]) -> object:
        """``make()`` run by process 0, its result (or its exception) given to every process."""
        outcome: list = [None]
        if self.rank == 0:
            try:
                outcome = [(make(), None)]
            except Exception as error:  # every process must fail with it, not wait for a result
                outcome = [(None, error)]
        if self.world > 1:
            dist.broadcast_object_list(outcome, src=0)
        value, error = outcome[0]
        if error is not None:
            if self.rank == 0:
                raise error
            raise SetupFailed(str(error))
        return value

    def gather(self, value: object) -> list:
        """``value`` of every process, in rank order."""
        if self.world == 1:
            return [value]
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values


@contextlib.contextmanager
def determinism(device: torch.device, threads: Optional[int]) -> Iterator[None]:
    """Fix what changes floating-point results within a process; restore it afterwards."""
    saved = torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]
