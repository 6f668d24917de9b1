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
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .plan import UsageError

__all__ = ["Processes", "SetupFailed", "determinism", "shard", "batch_seed"]


class SetupFailed(Exception):
    """Process 0 failed to set the run up (it reports why); raised in the other processes."""


def shard(n_items: int, batch_size: int, rank: int, world: int) -> List[Tuple[int, range]]:
    """The batches of process ``rank`` out of ``world``.

    Batch ``b`` holds items ``b*batch_size`` up to ``(b+1)*batch_size``
    (fewer in the last one) and belongs to process ``b % world``.

    Returns
    -------
    list of (int, range)
        (batch index, item indices) in increasing order.
    """
    n_batches = math.ceil(n_items / batch_size)
    return [(b, range(b * batch_size, min(n_items, (b + 1) * batch_size))) for b in range(rank, n_batches, world)]


def batch_seed(seed: int, batch: int) -> int:
    """The noise seed of batch ``batch`` of a run seeded with ``seed``: a 63-bit integer."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


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
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as error:
            raise UsageError(f"--device: {error}") from error
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", local_rank)
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
