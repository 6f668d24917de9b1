"""A process that writes a store on command, for the tests of concurrent runs (tests/test_store_lock.py),
and the small store the property tests write (tests/test_store_properties.py).

Reads commands from stdin, one per line, and answers one line each on stdout:

* ``lock OUT RUN``: take the writer lock of "iba" in OUT for run RUN and open the
  store with :data:`CONFIG`; answers ``held <pid>`` or ``refused <the error>``;
* ``write BATCH N``: write batch BATCH of N maps (checked against the lock); ``wrote BATCH``;
* ``release``: release the lock; ``released``.

It answers ``ready`` once imported. Without stdin commands it is also the
source of the maps and keys the tests expect, and of :func:`write_store`.
"""

import sys

import numpy as np

CONFIG = {"method": "iba", "options": {"steps": 10}, "seed": 0}


def maps_of(batch: int, n: int) -> np.ndarray:
    """Distinct float32 maps (n, 1, 3, 3) for a batch."""
    return np.arange(n * 9, dtype=np.float32).reshape(n, 1, 3, 3) + 100 * batch


def keys_of(batch: int, n: int):
    return [(f"img-{batch}-{i}", i % 2) for i in range(n)]


#: A small store's batches (index, maps) and the plan it records.
BATCHES = [(0, 3), (1, 2), (2, 3)]
PLAN = {"items": 6, "batches": len(BATCHES), "maps": sum(n for _, n in BATCHES)}


def expected_maps() -> dict:
    """The maps of a store :func:`write_store` completed, by key."""
    return {(image_id, "iba", target): maps_of(batch, n)[row]
            for batch, n in BATCHES for row, (image_id, target) in enumerate(keys_of(batch, n))}


def write_store(out, stats, run_id: str = "run1") -> None:
    """Write, or complete, a small store with every kind of file: config with plan, statistics
    (``{layer: FeatureStats}``), arrays, index lines, the runs log. What a run of the command does."""
    from captum_iba.app.store import BatchWriter, open_method_store

    store = open_method_store(out, "iba", CONFIG, plan=PLAN)
    if store.load_stats(stats) is None:
        store.save_stats(stats)
    done = store.done_batches()
    writer = BatchWriter(store, run_id, rank=0)
    for batch, n in BATCHES:
        if batch not in done:
            writer.started(batch, keys_of(batch, n))
            writer.done(batch, keys_of(batch, n), maps_of(batch, n))
    store.log_run({"run_id": run_id, "maps": PLAN["maps"]})


def serve() -> None:
    import os

    from captum_iba.app.store import BatchWriter, StoreError, open_method_store, writer_lock

    lock = store = None
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "lock":
            out, run_id = args
            try:
                lock = writer_lock(out, "iba", run_id)
                store = open_method_store(out, "iba", CONFIG, lock=lock)
                print("held", os.getpid(), flush=True)
            except StoreError as error:
                print("refused", error, flush=True)
        elif command == "write":
            batch, n = map(int, args)
            BatchWriter(store, lock.run_id, rank=0, locked=True).done(batch, keys_of(batch, n), maps_of(batch, n))
            print("wrote", batch, flush=True)
        elif command == "release":
            lock.release()
            print("released", flush=True)


if __name__ == "__main__":
    serve()
