"""Integrity of the attribute store: every damaged array is found, a full disk is one line."""

import argparse
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from _store_worker import CONFIG, keys_of, maps_of

from captum_iba import FeatureStats
from captum_iba.app.store import files as store_files
from captum_iba.app.store import (BatchWriter, MethodStore, StoreError, StoreWarning, check_out_dir, open_method_store,
                                  read_index, read_maps)
from captum_iba.app.store.files import config_hash, seal
from captum_iba.app.store.verify import add_verify_arguments, run_verify, verify_store

BATCHES = [(0, 3), (1, 2), (2, 3)]


def finished_store(out: Path, run_id: str = "run1"):
    store = open_method_store(out, "iba", CONFIG)
    writer = BatchWriter(store, run_id, rank=0)
    for batch, n in BATCHES:
        writer.started(batch, keys_of(batch, n))
        writer.done(batch, keys_of(batch, n), maps_of(batch, n))
    return store


def assert_clean_maps(out: Path, batches=BATCHES) -> None:
    maps = read_maps(out)
    assert len(maps) == sum(n for _, n in batches)
    for batch, n in batches:
        for row, (image_id, target) in enumerate(keys_of(batch, n)):
            np.testing.assert_array_equal(maps[(image_id, "iba", target)], maps_of(batch, n)[row])


def rerun(out: Path, run_id: str, verify: bool = False):
    """What a rerun of the same command does: skip the done batches, compute the others."""
    store = open_method_store(out, "iba", CONFIG)
    done = store.done_batches(verify=verify)
    writer = BatchWriter(store, run_id, rank=0)
    for batch, n in BATCHES:
        if batch not in done:
            writer.done(batch, keys_of(batch, n), maps_of(batch, n))
    return done


def delete(path: Path) -> None:
    path.unlink()


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(position: int):
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[position % len(data)] ^= 1 << (position % 8)
        path.write_bytes(bytes(data))
    damage.__name__ = f"flip{position}"
    return damage


DAMAGES = [delete, truncate, flip(0), flip(5), flip(40), flip(-1)]
FILES = ["c/0/0/0/0", "zarr.json"]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("relative", FILES)
def test_every_damaged_array_is_reported_read_as_an_error_and_recomputed(tmp_path, damage, relative):
    out = tmp_path / "out"
    store = finished_store(out)
    damaged_batch, n = BATCHES[1]
    array = store.maps_dir / f"b{damaged_batch:06d}-run1"
    damage(array / relative)
    size_changed = damage in (delete, truncate)

    report = verify_store(out)
    assert not report.ok and [problem.path for problem in report.problems] == [array]
    assert report.problems[0].kind == ("missing" if damage is delete else "corrupt")
    assert [problem.path for problem in verify_store(out, full=False).problems] == ([array] if size_changed else [])

    maps = read_maps(out)
    with pytest.raises(StoreError) as caught:
        maps[(keys_of(damaged_batch, n)[0][0], "iba", keys_of(damaged_batch, n)[0][1])]
    message = str(caught.value)
    assert array.name in message and str(array) in message and "\n" not in message
    np.testing.assert_array_equal(maps[("img-2-2", "iba", 0)], maps_of(2, 3)[2])  # the others read

    assert store.done_batches() == ({0, 2} if size_changed else {0, 1, 2})
    done, damaged = store.resume(verify=True)
    assert done == {0, 2} and list(damaged) == [array.name]
    assert rerun(out, "run2", verify=True) == {0, 2}
    assert_clean_maps(out)
    assert verify_store(out).ok  # the damaged array is gone, superseded
    assert not array.exists()


def test_a_missing_array_folder_is_recomputed_by_a_plain_rerun(tmp_path):
    out = tmp_path / "out"
    store = finished_store(out)
    shutil.rmtree(store.maps_dir / "b000000-run1")
    [problem] = verify_store(out).problems
    assert problem.kind == "missing" and "folder is gone" in problem.detail
    assert rerun(out, "run2") == {1, 2}
    assert_clean_maps(out)
    assert verify_store(out).ok
    assert {row["array"] for row in read_index(out) if row["batch"] == 0} == {"b000000-run2"}


def test_orphaned_arrays_are_reported_and_swept_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    store = finished_store(out)
    orphan = store.maps_dir / "b000007-run9"
    zarr.open_array(store=str(orphan), mode="w", shape=(1, 1, 3, 3), dtype="float32")[...] = 1
    report = verify_store(out)
    [note] = report.notes  # harmless: no done batch refers to it
    assert note.kind == "orphaned" and note.path == orphan and report.ok
    open_method_store(out, "iba", CONFIG)
    assert verify_store(out).ok and not orphan.exists()


def test_the_verify_command_prints_each_problem_and_exits_non_zero(tmp_path, capsys):
    out = tmp_path / "out"
    store = finished_store(out)
    parser = argparse.ArgumentParser()
    add_verify_arguments(parser)
    assert run_verify(parser.parse_args([str(out)])) == 0
    assert "iba: 3 arrays, 8 maps: ok" in capsys.readouterr().out
    truncate(store.maps_dir / "b000002-run1" / "c/0/0/0/0")
    assert run_verify(parser.parse_args([str(out), "--quick"])) == 1
    printed = capsys.readouterr().out
    assert f"corrupt: {store.maps_dir / 'b000002-run1'}: its file c/0/0/0/0 has" in printed
    assert run_verify(parser.parse_args([str(tmp_path)])) == 2
    assert "not a captum-iba attribute store" in capsys.readouterr().err


LEGACY_KEYS = ("sha256", "files", "self_sha256", "config_sha256")


def _strip_checksums(out: Path) -> None:
    """Make the store look written before checksums: none in its index lines, runs log and config.json."""
    for lines in [*(out / "iba" / "index").glob("*.jsonl"), out / "iba" / "runs.jsonl"]:
        if lines.exists():
            rows = [json.loads(line) for line in lines.read_text().splitlines()]
            lines.write_text("".join(json.dumps({k: v for k, v in row.items() if k not in LEGACY_KEYS}) + "\n"
                                     for row in rows))
    config = json.loads((out / "iba" / "config.json").read_text())
    (out / "iba" / "config.json").write_text(json.dumps({"config": config["config"], "sha256": config["sha256"]}))


@pytest.mark.parametrize("damage", [delete, truncate], ids=lambda d: d.__name__)
@pytest.mark.parametrize("relative", FILES)
def test_a_store_without_checksums_still_reads_and_its_missing_or_cut_arrays_are_found(tmp_path, damage, relative):
    out = tmp_path / "out"
    finished_store(out)
    _strip_checksums(out)
    store = MethodStore(out / "iba")  # as read after the change
    assert_clean_maps(out)
    assert verify_store(out).ok and store.done_batches(verify=True) == {0, 1, 2}
    array = store.maps_dir / "b000001-run1"
    damage(array / relative)
    problem_kind = "missing" if damage is delete else "corrupt"
    [problem] = verify_store(out).problems
    assert (problem.kind, problem.path) == (problem_kind, array)
    with pytest.raises(StoreError, match=f"array b000001-run1 of 'iba' at {array}: {problem_kind}"):
        read_maps(out)[("img-1-0", "iba", 0)]
    assert store.done_batches(verify=True) == {0, 2}


def test_a_deleted_marker_is_named_as_such(tmp_path):
    out = tmp_path / "out"
    finished_store(out)
    (out / "captum-iba-attribute.json").unlink()
    for call in (check_out_dir, read_maps, verify_store, lambda o: open_method_store(o, "iba", CONFIG)):
        with pytest.raises(StoreError, match="marker file captum-iba-attribute.json is missing, yet it holds a "
                                             "captum-iba store \\(methods iba\\)"):
            call(out)


# A full disk.


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _assert_one_line_naming(error: StoreError, path: Path) -> None:
    message = str(error)
    assert "\n" not in message and str(path) in message and "no space left" in message


def test_a_full_disk_while_writing_an_array_is_one_line_and_leaves_the_store_readable(tmp_path, monkeypatch):
    out = tmp_path / "out"
    store = finished_store(out)
    with monkeypatch.context() as patch:
        patch.setattr(zarr.storage._local, "_put", _no_space)  # every file Zarr writes
        with pytest.raises(StoreError) as caught:
            BatchWriter(store, "run2", rank=0).done(3, keys_of(3, 2), maps_of(3, 2))
    _assert_one_line_naming(caught.value, store.maps_dir / "b000003-run2")
    assert "72 bytes needed" in str(caught.value)  # 2 maps of 3 x 3 float32
    assert not (store.maps_dir / "b000003-run2").exists()
    assert store.done_batches() == {0, 1, 2} and verify_store(out).ok
    assert_clean_maps(out)


def test_a_full_disk_while_marking_leaves_no_torn_line(tmp_path, monkeypatch):
    out = tmp_path / "out"
    store = finished_store(out)
    writer = BatchWriter(store, "run1", rank=0)
    before = writer.index.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):  # the disk fills up in the middle of the index lines
        if len(data) > 1:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(store_files.os, "write", half_then_full)
        with pytest.raises(StoreError) as caught:
            writer.done(3, keys_of(3, 2), maps_of(3, 2))
    _assert_one_line_naming(caught.value, writer.index)
    assert writer.index.read_bytes() == before
    assert not (store.maps_dir / "b000003-run1").exists()  # unmarked: removed
    writer.done(4, keys_of(4, 1), maps_of(4, 1))  # the next append follows complete lines
    assert store.done_batches() == {0, 1, 2, 4} and verify_store(out).ok
    assert_clean_maps(out, BATCHES + [(4, 1)])


def test_a_full_disk_while_saving_statistics_is_one_line_and_saves_nothing(tmp_path, monkeypatch):
    store = open_method_store(tmp_path / "out", "iba", CONFIG)
    stats = FeatureStats()
    stats.update(torch.randn(5, 4, 3, 3, generator=torch.Generator().manual_seed(0)))
    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_bytes", _no_space)
        with pytest.raises(StoreError) as caught:
            store.save_stats({"features": stats})
    _assert_one_line_naming(caught.value, store.folder / "stats")
    assert store.load_stats(["features"]) is None
    assert list((store.folder / "stats").iterdir()) == []  # no temporary file left
    store.save_stats({"features": stats})
    assert store.load_stats(["features"])["features"].count == stats.count


# Index lines, config.json and the statistics checked against their own checksums.


def _edit_line(index: Path, number: int, **changes) -> None:
    """Change fields of one index line, keeping it valid JSON (and its old checksum)."""
    lines = index.read_text().splitlines(keepends=True)
    lines[number - 1] = json.dumps({**json.loads(lines[number - 1]), **changes}, sort_keys=True) + "\n"
    index.write_text("".join(lines))


@pytest.mark.parametrize("changes", [{"image_id": "img-2-0"}, {"target": 0}, {"row": 0}],
                         ids=lambda c: next(iter(c)))
def test_a_changed_image_id_target_or_row_is_found_and_its_batch_never_read(tmp_path, changes):
    out = tmp_path / "out"
    store = finished_store(out)
    index = next((out / "iba" / "index").glob("*.jsonl"))
    numbers = [n for n, line in enumerate(index.read_text().splitlines(), 1)
               if '"done"' in line and '"batch": 1,' in line and '"row": 1,' in line]
    _edit_line(index, numbers[0], **changes)  # batch 1, row 1: img-1-1, target 1

    report = verify_store(out)
    assert report.status == "corrupt" and run_verify(argparse.Namespace(out=str(out), quick=True)) == 1
    [problem] = report.problems
    assert problem.path == index and f"line {numbers[0]}: differs from the checksum" in problem.detail
    with pytest.warns(StoreWarning, match=f"{index}:{numbers[0]}: .*left out"):
        maps = read_maps(out)
    assert set(maps) == {key for key in expected_keys() if not key[0].startswith("img-1-")}  # batch 1 left out
    assert store.done_batches() == {0, 2}
    rerun(out, "run2")  # drops the line, computes batch 1 again
    assert verify_store(out).ok
    assert_clean_maps(out)


def expected_keys():
    return {(image_id, "iba", target) for batch, n in BATCHES for image_id, target in keys_of(batch, n)}


def _edit_config(out: Path, consistent: bool) -> None:
    """Change the configuration in config.json; ``consistent``: its own checksums recomputed too."""
    path = out / "iba" / "config.json"
    payload = json.loads(path.read_text())
    payload["config"]["seed"] = 7
    if consistent:
        payload["sha256"] = config_hash(payload["config"])
        payload = seal(payload)
    path.write_text(json.dumps(payload))


@pytest.mark.parametrize("damage", ["deleted", "edited", "replaced"])
def test_a_missing_or_edited_config_json_is_an_error_naming_it(tmp_path, damage):
    out = tmp_path / "out"
    finished_store(out)
    config = out / "iba" / "config.json"
    if damage == "deleted":
        config.unlink()
    else:
        _edit_config(out, consistent=damage == "replaced")
    expected = {"deleted": "missing", "edited": "differs from the checksum",
                "replaced": "does not match the configuration the maps were computed with"}[damage]
    [problem] = verify_store(out).problems
    assert problem.path == config and expected in problem.detail
    for call in (read_maps, read_index, lambda o: open_method_store(o, "iba", CONFIG)):
        with pytest.raises(StoreError, match=f"{config}: .*{expected}.*--overwrite") as caught:
            call(out)
        assert "\n" not in str(caught.value)
    store = open_method_store(out, "iba", CONFIG, overwrite=True)  # replaced: computed again
    assert store.done_batches() == set() and verify_store(out).ok


def _stats():
    stats = FeatureStats()
    stats.update(torch.randn(5, 4, 3, 3, generator=torch.Generator().manual_seed(0)))
    return {"features": stats}


@pytest.mark.parametrize("checksums", [True, False], ids=["recorded", "before-checksums"])
def test_a_truncated_statistics_file_is_one_line_naming_it_and_what_to_do(tmp_path, checksums):
    out = tmp_path / "out"
    store = finished_store(out)
    store.save_stats(_stats())
    if not checksums:
        _strip_checksums(out)
    path = store.stats_path("features")
    truncate(path)
    if checksums:
        assert [problem.path for problem in verify_store(out).problems] == [path]
        with pytest.raises(StoreError) as caught:
            open_method_store(out, "iba", CONFIG)
    else:
        with pytest.raises(StoreError) as caught:
            open_method_store(out, "iba", CONFIG).load_stats(["features"])
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and "Traceback" not in message
    assert "delete it" in message and "--overwrite" in message
    path.unlink()  # as the message says: computed again by the next run
    store = open_method_store(out, "iba", CONFIG)
    assert store.load_stats(["features"]) is None
    store.save_stats(_stats())
    assert store.load_stats(["features"])["features"].count == 5 and verify_store(out).ok


def test_a_store_without_checksums_gets_them_from_its_next_writer(tmp_path):
    out = tmp_path / "out"
    finished_store(out)
    MethodStore(out / "iba").log_run({"run_id": "run1"})
    _strip_checksums(out)
    old_index = next((out / "iba" / "index").glob("*.jsonl"))
    assert verify_store(out).ok and len(read_maps(out)) == 8
    store = open_method_store(out, "iba", CONFIG)  # the next run of the method
    assert store.sealed and store.done_batches() == {0, 1, 2} and store.runs() == [{"run_id": "run1"}]
    assert "self_sha256" not in old_index.read_text()  # kept as written
    BatchWriter(store, "run2", rank=0).done(3, keys_of(3, 2), maps_of(3, 2))
    new_index = out / "iba" / "index" / "run2-rank000.jsonl"
    _edit_line(new_index, 1, image_id="img-0-0")  # lines written from now on are checked
    assert [problem.path for problem in verify_store(out).problems] == [new_index]
    with pytest.warns(StoreWarning, match=f"{new_index}:1: "):
        assert_clean_maps(out)  # batch 3 left out


def test_verify_exit_statuses_are_0_ok_1_corrupt_3_incomplete_2_no_store(tmp_path, capsys):
    out = tmp_path / "out"
    store = open_method_store(out, "iba", CONFIG, plan={"items": 8, "batches": 3, "maps": 8})
    writer = BatchWriter(store, "run1", rank=0)
    for batch, n in BATCHES[:2]:
        writer.done(batch, keys_of(batch, n), maps_of(batch, n))
    parser = argparse.ArgumentParser()
    add_verify_arguments(parser)
    assert run_verify(parser.parse_args([str(out)])) == 3
    printed = capsys.readouterr().out
    assert "iba: 2 arrays, 5 maps: incomplete: 5 of 8 planned maps (2 of 3 batches)" in printed
    writer.done(2, keys_of(2, 3), maps_of(2, 3))
    assert run_verify(parser.parse_args([str(out)])) == 0
    truncate(store.maps_dir / "b000002-run1" / "c/0/0/0/0")
    assert run_verify(parser.parse_args([str(out)])) == 1  # damage outranks what is missing
    assert "corrupt: 1 problem(s)" in capsys.readouterr().out
    assert run_verify(parser.parse_args([str(tmp_path)])) == 2
