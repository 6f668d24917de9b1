"""Properties of the attribute store: nothing silent.

* any single flipped bit in any file of a finished store is reported by
  ``verify`` (the runs log, on which no map depends, as a note), and
  ``read_maps`` never returns a wrong map for it;
* a store whose writer is killed at any file operation is complete or
  reported incomplete, never corrupt and never "ok" with maps missing; a rerun
  completes it;
* every line carries its own checksum: any change of a field is found;
  lines that do not parse are named by file and line, and the rest reads;
* ``verify`` counts the done maps against the planned ones.

Stores are the small one of ``_store_worker.write_store`` (3 batches, 8 maps).
"""

import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from _store_worker import BATCHES, CONFIG, PLAN, expected_maps, keys_of, maps_of, write_store
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_iba import FeatureStats
from captum_iba.app.store import BatchWriter, StoreError, StoreWarning, open_method_store, read_maps, verify_store
from captum_iba.app.store.files import SEAL, read_lines, seal, seal_problem
from captum_iba.app.store.verify import EXIT_STATUS

MARKER, RUNS = "captum-iba-attribute.json", "iba/runs.jsonl"


def make_stats() -> dict:
    stats = FeatureStats()
    stats.update(torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0)))
    return {"features": stats}


STATS = make_stats()  # made here, not in a forked writer: no torch compute after a fork


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished store, and its files (relative paths)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    write_store(out, STATS)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return out, files


@contextlib.contextmanager
def copy_of(out: Path):
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "out"
        shutil.copytree(out, copy)
        yield copy


def flip(path: Path, position: int, bit: int) -> int:
    """Flip one bit of the file; returns the byte's index."""
    data = bytearray(path.read_bytes())
    index = position % len(data)
    data[index] ^= 1 << bit
    path.write_bytes(bytes(data))
    return index


def test_the_finished_store_holds_every_kind_of_file(finished):
    out, files = finished
    kinds = {MARKER, "iba/config.json", "iba/maps.zarr/zarr.json", "iba/stats/features.pt", RUNS}
    assert kinds <= set(files)
    assert any(f.startswith("iba/index/") for f in files) and any(f.endswith("c/0/0/0/0") for f in files)
    assert any(f.startswith("iba/maps.zarr/b") and f.endswith("/zarr.json") for f in files)
    report = verify_store(out)
    assert report.ok and not report.notes
    assert {key: value for key, value in read_maps(out).items()}.keys() == expected_maps().keys()


def assert_flip_reported(out: Path, relative: str, index: int, size: int) -> None:
    if relative == MARKER:
        with pytest.raises(StoreError, match=f"{out}.*(marker|not a captum-iba|a store of format)"):
            verify_store(out)  # the folder is not taken for a store
        return
    report = verify_store(out)
    if relative == RUNS:  # a log of finished runs: noted, the store stays ok
        assert report.status == "ok" and any(RUNS in str(note) for note in report.notes), report.lines()
        return
    last_newline = relative.startswith("iba/index/") and index == size - 1
    # A flipped last newline reads as a write cut short: its batch is not done, the store incomplete.
    assert report.status == ("incomplete" if last_newline else "corrupt"), (relative, index, report.lines())


def assert_no_wrong_map(out: Path) -> None:
    """read_maps returns each map it returns exactly, or raises on access; never another's map."""
    expected = expected_maps()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        try:
            maps = read_maps(out)
        except StoreError:  # a changed marker or configuration: refused
            return
    assert set(maps) <= set(expected)
    for key in maps:
        try:
            value = maps[key]
        except StoreError:
            continue
        np.testing.assert_array_equal(value, expected[key])


def test_a_flipped_bit_at_the_start_middle_and_end_of_every_file_is_reported(finished):
    out, files = finished
    for relative in files:
        size = (out / relative).stat().st_size
        for position in (0, size // 2, size - 1):
            with copy_of(out) as copy:
                index = flip(copy / relative, position, position % 8)
                assert_flip_reported(copy, relative, index, size)
                assert_no_wrong_map(copy)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(0, 2**20), st.integers(0, 7))
def test_any_single_flipped_bit_in_any_file_is_reported_by_verify(finished, data, position, bit):
    out, files = finished
    relative = data.draw(st.sampled_from(files), label="file")
    with copy_of(out) as copy:
        size = (copy / relative).stat().st_size
        index = flip(copy / relative, position, bit)
        assert_flip_reported(copy, relative, index, size)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(0, 2**20), st.integers(0, 7))
def test_after_any_single_flipped_bit_read_maps_never_returns_another_images_map(finished, data, position, bit):
    out, files = finished
    relative = data.draw(st.sampled_from([f for f in files if f != MARKER]), label="file")
    with copy_of(out) as copy:
        flip(copy / relative, position, bit)
        assert_no_wrong_map(copy)


# A writer killed at any file operation (fork: the killed process is a real one, killed with SIGKILL).


class Killer:
    """Counts the file operations of the process; at operation ``at`` it kills the process with
    SIGKILL (a write: after writing half of it, as a kill in the middle of it would)."""

    def __init__(self, at: int) -> None:
        self.at, self.count = at, 0

    def step(self, partial=None) -> None:
        self.count += 1
        if self.count == self.at:
            if partial is not None:
                partial()
            os.kill(os.getpid(), signal.SIGKILL)

    def arm(self) -> None:
        real = {name: getattr(os, name) for name in ("write", "fsync", "replace", "link", "mkdir", "unlink",
                                                     "ftruncate", "rename")}

        def counted(name):
            def call(*args, **kwargs):
                self.step()
                return real[name](*args, **kwargs)
            return call

        def write(fd, data):
            self.step(lambda: real["write"](fd, bytes(data)[: len(data) // 2]))
            return real["write"](fd, data)

        for name in real:
            setattr(os, name, counted(name))
        os.write = write
        real_bytes, real_text, real_put = pathlib.Path.write_bytes, pathlib.Path.write_text, zarr.storage._local._put

        def write_bytes(path, data):
            self.step(lambda: real_bytes(path, bytes(data)[: len(data) // 2]))
            return real_bytes(path, data)

        def write_text(path, text, *args, **kwargs):
            self.step(lambda: real_text(path, text[: len(text) // 2]))
            return real_text(path, text, *args, **kwargs)

        def put(path, value, *args, **kwargs):
            self.step()
            return real_put(path, value, *args, **kwargs)

        pathlib.Path.write_bytes, pathlib.Path.write_text, zarr.storage._local._put = write_bytes, write_text, put


def write_in_a_child(out: Path, at: int):
    """Write the small store in a forked process killed at file operation ``at``.

    Returns ``(killed, operations)``: whether it was killed, and how many it
    counted when it was not.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 3
        try:
            os.close(read_end)
            killer = Killer(at)
            killer.arm()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                write_store(out, STATS, run_id="child")
            count = killer.count
            killer.at = -1
            os.write(write_end, str(count).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end) as answer:
        counted = answer.read()
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True, None
    assert os.WEXITSTATUS(status) == 0, "the writer failed"
    return False, int(counted)


@pytest.fixture(scope="module")
def operations(tmp_path_factory):
    """How many file operations a whole write of the small store takes."""
    killed, count = write_in_a_child(tmp_path_factory.mktemp("count") / "out", at=-1)
    assert not killed and count > 20
    return count


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_a_store_killed_at_any_moment_is_complete_or_reported_incomplete_and_a_rerun_completes_it(operations, data):
    at = data.draw(st.integers(1, operations + 1), label="killed at operation")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        killed, _ = write_in_a_child(out, at)
        assert killed == (at <= operations)
        try:
            report = verify_store(out)
        except StoreError as error:  # killed before the marker was written
            assert "not a captum-iba attribute store" in str(error) and killed
        else:
            assert report.status in ("ok", "incomplete"), report.lines()
            if report.status == "ok":  # never ok with maps missing
                assert dict(read_maps(out)).keys() == expected_maps().keys()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the killed writer's lock is taken over
            write_store(out, STATS, run_id="rerun")
        report = verify_store(out)
        assert report.status == "ok" and not report.notes, report.lines()
        maps = read_maps(out)
        assert maps.keys() == expected_maps().keys()
        for key, value in expected_maps().items():
            np.testing.assert_array_equal(maps[key], value)


# Lines and their checksums.

ROWS = st.fixed_dictionaries({
    "status": st.sampled_from(["started", "done"]), "batch": st.integers(0, 10**9), "row": st.integers(0, 4096),
    "image_id": st.text(min_size=1, max_size=30), "target": st.integers(-1, 10**6),
    "written": st.floats(0, 2e9, allow_nan=False), "shape": st.lists(st.integers(1, 4096), min_size=3, max_size=3)})


@given(ROWS, st.data())
def test_a_sealed_line_reads_back_intact_and_any_changed_field_is_found(row, data):
    line = json.loads(json.dumps(seal(row), sort_keys=True))
    assert seal_problem(line) is None and {k: v for k, v in line.items() if k != SEAL} == row
    field = data.draw(st.sampled_from(sorted(row)), label="field")
    changed = data.draw(st.one_of(st.integers(), st.text(), st.floats(allow_nan=False), st.none())
                        .filter(lambda value: json.dumps(value) != json.dumps(row[field])), label="value")
    assert seal_problem({**line, field: changed}) is not None
    assert seal_problem({k: v for k, v in line.items() if k != field}) is not None  # a field removed
    assert seal_problem({**line, "extra": 1}) is not None  # a field added


@given(st.lists(st.tuples(st.integers(0, 30), st.binary(min_size=1, max_size=40)
                          .filter(lambda b: b"\n" not in b)), min_size=1, max_size=4))
def test_lines_that_do_not_parse_are_named_by_file_and_line_and_the_rest_reads(insertions):
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        write_store(out, STATS)
        index = next((out / "iba" / "index").glob("*.jsonl"))
        lines = index.read_bytes().split(b"\n")[:-1]
        garbage = set()
        for position, junk in insertions:  # each junk line is not JSON: b"\x00" prefix
            position = min(position, len(lines))
            lines.insert(position, b"\x00" + junk)
            garbage = {g + (g >= position) for g in garbage} | {position}
        index.write_bytes(b"".join(line + b"\n" for line in lines))
        expected_lines = sorted(g + 1 for g in garbage)
        _, problems = read_lines(index)
        assert [problem.line for problem in problems] == expected_lines
        report = verify_store(out)
        assert report.status == "corrupt"
        assert sorted(int(str(p).split("line ")[1].split(":")[0]) for p in report.problems) == expected_lines
        with pytest.warns(StoreWarning) as caught:
            maps = read_maps(out)
        named = [re.match(rf"{re.escape(str(index))}:(\d+): ", str(w.message)) for w in caught]
        assert [int(match.group(1)) for match in named if match] == expected_lines
        assert maps.keys() == expected_maps().keys()  # inserted lines take nothing away
        store = open_method_store(out, "iba", CONFIG, plan=PLAN)  # the writer drops them
        assert [problem.line for problem in store.repaired] == expected_lines
        assert verify_store(out).ok


@given(st.lists(st.booleans(), min_size=len(BATCHES), max_size=len(BATCHES)))
def test_verify_counts_the_done_maps_against_the_planned_ones(done):
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        store = open_method_store(out, "iba", CONFIG, plan=PLAN)
        writer = BatchWriter(store, "run1", rank=0)
        for (batch, n), is_done in zip(BATCHES, done):
            writer.started(batch, keys_of(batch, n))
            if is_done:
                writer.done(batch, keys_of(batch, n), maps_of(batch, n))
        report = verify_store(out)
        maps = sum(n for (_, n), is_done in zip(BATCHES, done) if is_done)
        if all(done):
            assert report.status == "ok" and EXIT_STATUS[report.status] == 0
            with warnings.catch_warnings():
                warnings.simplefilter("error", StoreWarning)  # a complete store reads without a warning
                assert len(read_maps(out)) == maps
            return
        message = f"incomplete: {maps} of {PLAN['maps']} planned maps ({sum(done)} of {len(BATCHES)} batches)"
        assert report.status == "incomplete" and EXIT_STATUS[report.status] == 3
        assert any(message in line for line in report.lines()), report.lines()
        with pytest.warns(StoreWarning, match=f"{maps} of {PLAN['maps']} planned maps") as caught:
            assert len(read_maps(out)) == maps
        assert len(caught) == 1
