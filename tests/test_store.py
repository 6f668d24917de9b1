"""The attribute store (captum_iba.app.store) and the sharding of a run, without a model."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_iba.app.store import method as store_method
from captum_iba.app.store import (BatchWriter, StoreError, StoreWarning, check_out_dir, open_method_store, read_index,
                                  read_maps)
from captum_iba.app.attribute.distributed import batch_seed, shard

CONFIG = {"method": "iba", "options": {"steps": 10}, "seed": 0}


def maps_of(batch: int, n: int) -> np.ndarray:
    """Distinct float32 maps (n, 1, 3, 3) for a batch."""
    return (np.arange(n * 9, dtype=np.float32).reshape(n, 1, 3, 3) + 100 * batch)


def keys_of(batch: int, n: int):
    return [(f"img-{batch}-{i}", i % 2) for i in range(n)]


def write_batches(out, batches, run_id="run1", config=CONFIG):
    store = open_method_store(out, "iba", config)
    writer = BatchWriter(store, run_id, rank=0)
    for batch, n in batches:
        writer.started(batch, keys_of(batch, n))
        writer.done(batch, keys_of(batch, n), maps_of(batch, n))
    return store


def test_written_maps_read_back_exactly_and_lazily(tmp_path):
    out = tmp_path / "out"
    write_batches(out, [(0, 3), (1, 2)])
    maps = read_maps(out)
    assert len(maps) == 5
    for batch, n in [(0, 3), (1, 2)]:
        for row, (image_id, target) in enumerate(keys_of(batch, n)):
            value = maps[(image_id, "iba", target)]
            assert value.dtype == np.float32 and value.shape == (1, 3, 3)
            np.testing.assert_array_equal(value, maps_of(batch, n)[row])
    index = read_index(out)
    assert [row["status"] for row in index] == ["done"] * 5
    assert {tuple(row["shape"]) for row in index} == {(1, 3, 3)}


def test_started_but_unmarked_maps_are_not_read(tmp_path):
    out = tmp_path / "out"
    store = write_batches(out, [(0, 2)])
    writer = BatchWriter(store, "run1", rank=0)
    writer.started(1, keys_of(1, 2))  # the process dies while computing batch 1
    assert set(read_maps(out)) == {(image_id, "iba", t) for image_id, t in keys_of(0, 2)}
    statuses = {(row["image_id"], row["status"]) for row in read_index(out)}
    assert ("img-1-0", "started") in statuses and ("img-0-0", "done") in statuses
    assert store.done_batches() == {0}


def test_a_batch_whose_write_fails_is_not_marked(tmp_path, monkeypatch):
    out = tmp_path / "out"
    store = write_batches(out, [(0, 2)])

    def disk_full(path):
        raise OSError("No space left on device")

    monkeypatch.setattr(store_method, "fsync_tree", disk_full)  # the maps cannot be made durable
    with pytest.raises(OSError, match="No space"):
        BatchWriter(store, "run2", rank=0).done(1, keys_of(1, 2), maps_of(1, 2))
    assert store.done_batches() == {0} and len(read_maps(out)) == 2


def test_torn_index_line_and_partly_marked_batch_do_not_count(tmp_path):
    out = tmp_path / "out"
    store = write_batches(out, [(0, 2), (1, 3)])
    index_file = next((out / "iba" / "index").glob("*.jsonl"))
    lines = index_file.read_text().splitlines(keepends=True)
    # Killed while appending batch 1's done lines: the second of its three is torn, the third missing.
    kept = [line for line in lines if '"batch": 1' not in line or '"started"' in line]
    done_1 = [line for line in lines if '"batch": 1' in line and '"done"' in line]
    index_file.write_text("".join(kept) + done_1[0] + done_1[1][:25])
    assert store.done_batches() == {0}
    assert set(read_maps(out)) == {(image_id, "iba", t) for image_id, t in keys_of(0, 2)}
    # The next run sweeps the unmarked array and can write batch 1 again.
    store = open_method_store(out, "iba", CONFIG)
    assert sorted(p.name for p in store.maps_dir.iterdir() if p.is_dir()) == ["b000000-run1"]
    writer = BatchWriter(store, "run2", rank=0)
    writer.done(1, keys_of(1, 3), maps_of(1, 3))
    assert store.done_batches() == {0, 1}
    maps = read_maps(out)
    assert len(maps) == 5
    np.testing.assert_array_equal(maps[("img-1-2", "iba", 0)], maps_of(1, 3)[2])


def test_a_line_that_does_not_parse_is_named_by_file_and_line_and_the_rest_reads(tmp_path):
    out = tmp_path / "out"
    write_batches(out, [(0, 2), (1, 2)])
    index_file = next((out / "iba" / "index").glob("*.jsonl"))
    index_file.write_text("not json\n" + index_file.read_text())
    with pytest.warns(StoreWarning, match=f"{index_file}:1: not a valid JSON line") as caught:
        maps = read_maps(out)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert len(maps) == 4  # a line that is not a map's is dropped; every batch still reads
    store = open_method_store(out, "iba", CONFIG)  # the writer drops it
    assert [problem.line for problem in store.repaired] == [1]
    assert "not json" not in index_file.read_text() and len(read_maps(out)) == 4


def test_changed_configuration_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    write_batches(out, [(0, 2)])
    changed = {**CONFIG, "options": {"steps": 3}}
    with pytest.raises(StoreError, match=r"options\.steps: 10 -> 3.*--overwrite"):
        open_method_store(out, "iba", changed)
    assert len(read_maps(out)) == 2  # untouched
    store = open_method_store(out, "iba", changed, overwrite=True)
    assert store.config == changed and len(read_maps(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["captum-iba-attribute.json", "iba"]


def test_a_configuration_without_done_maps_is_replaced(tmp_path):
    out = tmp_path / "out"
    open_method_store(out, "iba", CONFIG)
    changed = {**CONFIG, "seed": 1}
    assert open_method_store(out, "iba", changed).config == changed


def test_methods_share_a_store(tmp_path):
    out = tmp_path / "out"
    write_batches(out, [(0, 2)])
    other = open_method_store(out, "gradcam", {**CONFIG, "method": "gradcam"})
    BatchWriter(other, "run1", rank=1).done(0, keys_of(0, 2), maps_of(7, 2))
    maps = read_maps(out)
    assert len(maps) == 4
    np.testing.assert_array_equal(maps[("img-0-1", "gradcam", 1)], maps_of(7, 2)[1])
    np.testing.assert_array_equal(maps[("img-0-1", "iba", 1)], maps_of(0, 2)[1])


def test_another_tools_folder_is_refused_and_left_alone(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "results.csv").write_text("a,b\n")
    with pytest.raises(StoreError, match="not a captum-iba store.*another tool"):
        open_method_store(theirs, "iba", CONFIG)
    with pytest.raises(StoreError, match="not a captum-iba attribute store"):
        read_maps(theirs)
    assert [p.name for p in theirs.iterdir()] == ["results.csv"]


def test_another_format_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "captum-iba-attribute.json").write_text(json.dumps({"format": "captum_iba.attribute/99"}))
    with pytest.raises(StoreError, match="format 'captum_iba.attribute/99'"):
        check_out_dir(out)


def test_a_file_as_out_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="is a file"):
        check_out_dir(tmp_path / "file")
    with pytest.raises(StoreError, match="cannot be created"):
        check_out_dir(tmp_path / "file" / "out")


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 60), st.integers(1, 9), st.integers(1, 5))
def test_shards_are_disjoint_cover_everything_and_do_not_depend_on_the_process_count(n, size, world):
    alone = shard(n, size, 0, 1)
    parts = [shard(n, size, rank, world) for rank in range(world)]
    merged = sorted((b, tuple(items)) for part in parts for b, items in part)
    assert merged == [(b, tuple(items)) for b, items in alone]
    assert [i for _, items in alone for i in items] == list(range(n))


def test_batch_seeds_differ_per_batch_and_seed():
    seeds = {batch_seed(seed, batch) for seed in range(3) for batch in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(4, 7) == batch_seed(4, 7)
