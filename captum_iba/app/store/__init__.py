"""The output store of ``captum-iba attribute``, and :func:`read_maps` to read it.

One store is a folder that every process of a run writes its own part of::

    OUT/
      captum-iba-attribute.json     marker: format tag (the folder is ours)
      <method>.lock                 the writer lock of <method> while a run writes it
      <method>/                     one folder per method key ("iba", "regression-deviation", ...)
        config.json                 the configuration and its hash, the run's plan (items, batches,
                                    maps), the checksums of the files below; its own checksum
        stats/<layer>.pt            the feature statistics they were computed with (IBA family)
        trained/<method>.pt         the trained state of a method that learns (readout)
        maps.zarr/                  a Zarr group; one array per computed batch,
          b000012-<run>/            (maps, 1, h, w), one chunk: written once, never changed
        index/<run>-rank000.jsonl   append-only index: one line per map and status, each with
                                    its own checksum and the configuration's hash
        runs.jsonl                  a log: one line per finished run (processes, maps, seconds)

What is guaranteed:

* **One writer.** A run holds ``OUT/<method>.lock`` (:func:`writer_lock`,
  :mod:`~captum_iba.app.store.lock`) from before it writes anything in
  ``OUT/<method>`` until it ends; another run is refused with the holder's host,
  PID and start time. :func:`open_method_store` takes the lock for itself when
  not given the run's, so ``--overwrite`` never replaces a folder a run writes.
* **Write, then mark.** A batch's maps are written to a fresh array and made
  durable (fsync) before their ``done`` lines -- with the array's checksum
  record (:func:`~captum_iba.app.store.files.array_record`: every file's size,
  one SHA-256 over their bytes) -- are appended to the index in one write,
  itself fsynced. A batch counts as done only when all of its ``done`` lines
  are present, so a process killed at any moment, or a full disk, leaves
  nothing half-written counted as done; arrays no done batch refers to are
  swept by the next run. A batch written again (its array was missing or
  damaged) supersedes the earlier one.
* **Nothing changed goes unnoticed.** Every index line carries the SHA-256
  of its own content (:func:`~captum_iba.app.store.files.seal`), so a changed
  image id, target or row is found: the line is left out, with its batch,
  and a line that does not parse is named by file and line while the rest of
  the index reads on; the writer's next :func:`open_method_store` drops such
  lines, so its run computes their batches again. ``config.json`` carries
  its own checksum and every index line the configuration's hash: a missing,
  edited or replaced ``config.json`` is an error naming it. The statistics,
  a trained state and the Zarr group's metadata are recorded in
  ``config.json`` (size and SHA-256); a damaged one is an error naming it and
  what to do (delete it to compute it again, or ``--overwrite``).
* **A store knows whether it is complete.** The run's plan -- its items,
  batches and, where the targets can be counted up front, maps -- is
  recorded before any batch is written, so
  :func:`~captum_iba.app.store.verify.verify_store` tells ``ok`` (complete
  and intact), ``incomplete`` (intact, planned batches not done yet: a store
  killed at any moment is one of these two) and ``corrupt``, and
  :func:`read_maps` warns once (:class:`StoreWarning`) when it returns fewer
  maps than planned.
* **Checked on reading.** :func:`read_maps` checks each array against its
  record before using it, and :meth:`MethodStore.done_batches` leaves out a
  batch whose array is missing or damaged, so a rerun computes it again.
* **Old stores read.** Stores written before these checksums have none in
  their lines and ``config.json``: their lines are taken as written, their
  arrays checked for presence (metadata and every chunk) only, and their
  completeness is unknown. Their next writer records checksums for what it
  finds and writes from then on.
"""

from .files import FORMAT, MARKER, MapKey, StoreError, StoreWarning
from .folder import check_out_dir, check_writer, open_method_store, writer_lock
from .lock import WriterLock
from .method import BatchWriter, MethodStore
from .read import Maps, read_index, read_maps
from .verify import verify_store

__all__ = ["FORMAT", "MARKER", "MapKey", "StoreError", "StoreWarning", "MethodStore", "BatchWriter", "Maps",
           "WriterLock", "check_out_dir", "writer_lock", "check_writer", "open_method_store", "read_index",
           "read_maps", "verify_store"]
