"""The writer lock of the attribute store: one writer at a time, with real processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _store_worker import CONFIG, keys_of, maps_of

from captum_iba.app.store import (BatchWriter, MethodStore, StoreError, WriterLock, check_writer, open_method_store,
                                  read_maps, writer_lock)
from captum_iba.app.store.lock import HOST, read_holder

WORKER = str(Path(__file__).with_name("_store_worker.py"))


class Worker:
    """A separate process that writes a store on command (tests/_store_worker.py)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1)

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def answer(self) -> str:
        line = self.process.stdout.readline()
        assert line, f"the worker ended with status {self.process.wait()}"
        return line.strip()

    def ask(self, command: str) -> str:
        self.send(command)
        return self.answer()

    def close(self) -> None:
        self.process.kill()  # an orderly exit of torch and zarr takes seconds
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


def start_workers(n: int):
    workers = [Worker() for _ in range(n)]
    for worker in workers:
        assert worker.answer() == "ready"
    return workers


@pytest.fixture(scope="module")
def pair():
    """Two workers for the module (starting one takes seconds: it imports torch)."""
    workers = start_workers(2)
    yield workers
    for worker in workers:
        worker.close()


def test_of_two_writers_started_together_the_second_is_refused_every_time(tmp_path, pair):
    first, second = pair
    for attempt in range(10):
        out = tmp_path / f"out{attempt}"  # a new store each time: folder, marker and lock made concurrently
        order = [first, second] if attempt % 2 else [second, first]
        for worker in order:
            worker.send(f"lock {out} run-{worker.process.pid}")
        answers = {worker: worker.answer() for worker in order}
        holders = [worker for worker, answer in answers.items() if answer.startswith("held")]
        assert len(holders) == 1, answers
        holder = holders[0]
        refused = answers[second if holder is first else first]
        assert refused.startswith("refused") and "\n" not in refused
        assert f"run run-{holder.process.pid} (host {HOST}, PID {holder.process.pid}, started " in refused
        assert str(out / "iba") in refused
        assert holder.ask("release") == "released"
        assert not (out / "iba.lock").exists()
        assert MethodStore(out / "iba").config == CONFIG


def test_overwrite_while_another_run_writes_is_refused_and_changes_nothing(tmp_path, pair):
    out = tmp_path / "out"
    writer = pair[0]
    assert writer.ask(f"lock {out} run-a").startswith("held")
    assert writer.ask("write 0 3") == "wrote 0"
    changed = {**CONFIG, "options": {"steps": 3}}
    for overwrite in (True, False):
        with pytest.raises(StoreError, match=f"being written by another run run-a .*PID {writer.process.pid}"):
            open_method_store(out, "iba", changed, overwrite=overwrite)
    check_writer(out, "iba", "run-a")  # what the other processes of run-a check
    with pytest.raises(StoreError, match="run run-b does not hold the writer lock.*run run-a"):
        check_writer(out, "iba", "run-b")
    assert writer.ask("write 1 2") == "wrote 1"
    assert writer.ask("release") == "released"
    maps = read_maps(out)
    assert len(maps) == 5 and MethodStore(out / "iba").config == CONFIG
    for batch, n in [(0, 3), (1, 2)]:
        for row, (image_id, target) in enumerate(keys_of(batch, n)):
            np.testing.assert_array_equal(maps[(image_id, "iba", target)], maps_of(batch, n)[row])
    assert open_method_store(out, "iba", changed, overwrite=True).config == changed  # now that it is free


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path):
    out = tmp_path / "out"
    (writer,) = start_workers(1)
    assert writer.ask(f"lock {out} run-a").startswith("held")
    assert writer.ask("write 0 2") == "wrote 0"
    writer.process.send_signal(signal.SIGKILL)
    writer.close()
    assert read_holder(out / "iba.lock")["pid"] == writer.process.pid  # left behind
    with pytest.warns(RuntimeWarning, match=f"took over .*run-a.*PID {writer.process.pid}.*no longer running"):
        lock = writer_lock(out, "iba", "run-b")
    with lock:
        assert read_holder(out / "iba.lock")["run_id"] == "run-b"
        store = open_method_store(out, "iba", CONFIG, lock=lock)
        assert store.done_batches() == {0}
    assert not (out / "iba.lock").exists()


def _foreign_lock(path: Path, heartbeat: float) -> None:
    path.write_text(json.dumps({"host": "elsewhere", "pid": 4242, "run_id": "run-x", "token": "x",
                                "started": "2024-01-01T00:00:00+00:00", "heartbeat": heartbeat, "lease_s": 600.0}))


def test_a_lock_from_another_host_holds_until_its_lease_expires(tmp_path):
    out = tmp_path / "out"
    open_method_store(out, "iba", CONFIG)
    _foreign_lock(out / "iba.lock", heartbeat=time.time())
    with pytest.raises(StoreError, match="run run-x \\(host elsewhere, PID 4242, started 2024-01-01"):
        writer_lock(out, "iba", "run-b")
    _foreign_lock(out / "iba.lock", heartbeat=time.time() - 3600)
    with pytest.warns(RuntimeWarning, match="run-x .*heartbeat is 3[0-9]{3} s old, past its lease of 600 s"):
        with writer_lock(out, "iba", "run-b"):
            assert read_holder(out / "iba.lock")["host"] == HOST


def test_the_heartbeat_is_renewed_and_the_lock_released_on_an_exception(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyError):
        with writer_lock(out, "iba", "run-a", lease_s=0.5) as lock:
            first = read_holder(lock.path)["heartbeat"]
            for _ in range(400):  # renewed every 0.05 s; waits at most 20 s on a loaded machine
                if read_holder(lock.path)["heartbeat"] > first:
                    break
                time.sleep(0.05)
            assert read_holder(lock.path)["heartbeat"] > first
            assert read_holder(lock.path)["lease_s"] == 0.5
            raise KeyError("the run fails")
    assert not lock.held and not (out / "iba.lock").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]  # no heartbeat file left


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    out = tmp_path / "out"
    with writer_lock(out, "iba", "run-a"):
        with pytest.raises(StoreError, match=f"PID {os.getpid()}"):
            open_method_store(out, "iba", CONFIG)
        open_method_store(out, "gradcam", CONFIG)  # another method's folder has its own lock


def test_a_writer_that_lost_its_lock_marks_nothing(tmp_path):
    out = tmp_path / "out"
    with writer_lock(out, "iba", "run-a") as lock:
        store = open_method_store(out, "iba", CONFIG, lock=lock)
        writer = BatchWriter(store, "run-a", rank=0, locked=True)
        writer.done(0, keys_of(0, 2), maps_of(0, 2))
        taken = {**read_holder(lock.path), "run_id": "run-b", "token": "b"}  # as if taken over
        lock.path.write_text(json.dumps(taken))
        with pytest.raises(StoreError, match="run run-a does not hold the writer lock.*run run-b"):
            writer.done(1, keys_of(1, 2), maps_of(1, 2))
        with pytest.raises(StoreError, match="lost its writer lock"):
            lock.check()
        assert store.done_batches() == {0}
        assert sorted(p.name for p in store.maps_dir.iterdir() if p.is_dir()) == ["b000000-run-a"]
    assert lock.path.exists()  # not ours any more: left to its holder


def test_a_lock_of_another_method_is_not_accepted(tmp_path):
    out = tmp_path / "out"
    with writer_lock(out, "gradcam", "run-a") as lock:
        with pytest.raises(StoreError, match="is not the writer lock of"):
            open_method_store(out, "iba", CONFIG, lock=lock)
    with pytest.raises(ValueError, match="lease_s"):
        WriterLock(out / "iba.lock", "run-a", lease_s=0)
