"""`captum-iba attribute` and the other commands under stress: two writers, damage, refusals, a full disk,
Ctrl-C and SIGTERM, unreadable images.

As in test_attribute_runs.py, every run uses tiny embedded models (32 px, trained
in a second into this module's own cache) and one thread per process, so that a
run in a subprocess and one in this process compute the same maps bit for bit.
Real processes are paused with SIGSTOP where a test needs one run to be
mid-way while another starts: no test depends on timing.
"""

import errno
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_iba._files import NoSpaceError
from captum_iba.app import cli
from captum_iba.app.report import render as report_module
from captum_iba.app import store as store_module
from captum_iba.app.attribute.distributed import shard
from captum_iba.app.attribute.plan import MAX_NOISE_DRAWS, UsageError, make_plan
from captum_iba.app.store import MethodStore, StoreError, read_maps, verify_store
from captum_iba.attr.options import MAX_BETA
from captum_iba.cxr import small_densenet
from captum_iba.cxr.models._cache import write_checkpoint
from captum_iba.cxr.models.checkpoints import load_model
from captum_iba.app.methods import MethodSuite

RECIPE = {"size": 32, "train_images": 64, "test_images": 32, "epochs": 1}
EMBEDDED = ("--embedded-overrides", ",".join(f"{key}={value}" for key, value in RECIPE.items()))
IMAGES, BATCH = 24, 2


def iba_argv(out, *extra, images=IMAGES):
    return ["--method", "iba", "--out", str(out), "--images", str(images), "--batch-size", str(BATCH), *EMBEDDED,
            "--stats-samples", "32", "--workers", "0", "--threads", "1", "--steps", "3", "--noise-draws", "2", *extra]


def attribute(out, *extra, **kwargs):
    return cli.main(["attribute", *iba_argv(out, *extra, **kwargs)])


def error_lines(capsys):
    """The command's messages on stderr, without its progress lines (plain lines when not a terminal)."""
    return [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("captum-iba")]


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    """The maps of one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert attribute(out) == 0
    return dict(read_maps(out))


def assert_same_maps(out, expected):
    maps = read_maps(out)
    assert sorted(maps) == sorted(expected)
    for key in expected:
        assert np.array_equal(maps[key], expected[key]), key


# Two writers, with real processes.


ROOT = pathlib.Path(__file__).resolve().parents[1]


def checkout_env():
    """The environment of a subprocess, with this checkout first on its path (not an installed copy)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def start(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "captum_iba", "attribute", *iba_argv(out, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=checkout_env())


def pause_lock_holder(out, runs, marked=False):
    """Wait until one of ``runs`` holds the lock (and, if ``marked``, has marked a batch done); SIGSTOP it.

    A batch is marked once the next one is started: until then, an interrupt rolls its marking back.
    """
    lock, index = out / "iba.lock", out / "iba" / "index"
    while True:
        assert any(run.poll() is None for run in runs), [run.communicate() for run in runs]
        try:
            pid = json.loads(lock.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            pid = None
        holder = next((run for run in runs if run.pid == pid), None)
        if holder is not None and (not marked or any(b'"batch": 1,' in p.read_bytes() for p in index.glob("*.jsonl"))):
            holder.send_signal(signal.SIGSTOP)
            return holder
        time.sleep(0.002)


def assert_refused_by(run, holder):
    """``run`` ended with exit 2 and one line naming the holder's run, host and PID."""
    _, err = run.communicate(timeout=600)
    lines = err.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, err
    assert "is being written by another run" in lines[0] and f"PID {holder.pid}," in lines[0]


def test_of_two_identical_runs_started_together_the_second_is_refused(cache, reference, tmp_path):
    out = tmp_path / "out"
    runs = [start(out), start(out)]
    try:
        holder = pause_lock_holder(out, runs)  # paused: the other surely finds it writing
        other = next(run for run in runs if run is not holder)
        assert_refused_by(other, holder)
    finally:
        for run in runs:
            run.send_signal(signal.SIGCONT)
    _, err = holder.communicate(timeout=600)
    assert holder.returncode == 0, err
    assert_same_maps(out, reference)
    assert len(MethodStore(out / "iba").runs()) == 1 and not (out / "iba.lock").exists()


def test_overwrite_while_a_run_writes_is_refused_and_the_store_equals_a_clean_run(cache, reference, tmp_path):
    out = tmp_path / "out"
    first = start(out)
    try:
        pause_lock_holder(out, [first], marked=True)  # mid-run: some batches marked, others not
        second = start(out, "--beta", "3", "--overwrite")
        assert_refused_by(second, first)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert_same_maps(out, reference)
    assert MethodStore(out / "iba").config["options"]["beta"] is None


def test_the_lock_of_a_dead_run_is_taken_over_with_a_one_line_warning(cache, reference, tmp_path, capsys):
    out = tmp_path / "out"
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    out.mkdir()
    (out / "captum-iba-attribute.json").write_text(json.dumps({"format": store_module.FORMAT}))
    (out / "iba.lock").write_text(json.dumps({
        "host": socket.gethostname(), "pid": gone.pid, "run_id": "dead-run", "token": "0", "started": "then",
        "heartbeat": time.time(), "lease_s": 600.0}))
    assert attribute(out) == 0
    lines = error_lines(capsys)
    assert lines == [f"captum-iba attribute: warning: {out / 'iba'}: took over the writer lock of run dead-run "
                     f"(host {socket.gethostname()}, PID {gone.pid}, started then): its process {gone.pid} is no "
                     "longer running"]
    assert_same_maps(out, reference)


# Ctrl-C.


def test_ctrl_c_ends_with_one_line_and_130_and_a_rerun_completes_the_maps(cache, reference, tmp_path, capsys):
    out = tmp_path / "out"
    run = start(out)
    try:
        pause_lock_holder(out, [run], marked=True)
    finally:
        run.send_signal(signal.SIGINT)  # delivered when it goes on
        run.send_signal(signal.SIGCONT)
    _, err = run.communicate(timeout=600)
    lines = err.strip().splitlines()
    assert run.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0], err
    assert not (out / "iba.lock").exists()  # released
    assert 0 < len(MethodStore(out / "iba").done_batches()) < IMAGES // BATCH
    assert attribute(out) == 0
    assert_same_maps(out, reference)


def test_sigterm_ends_with_one_line_and_143_releases_the_lock_and_leaves_a_store_reported_incomplete(cache,
                                                                                                      tmp_path):
    out = tmp_path / "out"
    run = start(out)
    try:
        pause_lock_holder(out, [run], marked=True)
    finally:
        run.send_signal(signal.SIGTERM)  # delivered when it goes on
        run.send_signal(signal.SIGCONT)
    _, err = run.communicate(timeout=600)
    lines = [line for line in err.strip().splitlines() if line.startswith("captum-iba")]  # not the model's training
    assert run.returncode == 143 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("captum-iba attribute: terminated (SIGTERM); the maps marked done are kept")
    assert not (out / "iba.lock").exists()  # released
    assert verify_store(out).status == "incomplete"


def test_ctrl_c_while_the_command_imports_torch_is_one_line_and_130(tmp_path):
    run = subprocess.Popen([sys.executable, "-m", "captum_iba", "attribute", *iba_argv(tmp_path / "out")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=checkout_env())
    maps = pathlib.Path(f"/proc/{run.pid}/maps")
    try:
        while "libc10" not in maps.read_text():  # torch's first library is loaded: mid-import
            assert run.poll() is None, run.communicate()
            time.sleep(0.005)
    finally:
        run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 130 and err.strip().splitlines() == ["captum-iba attribute: interrupted"], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [
    ["demo"],
    ["evaluate", "--dataset", "nih", "--root", "x", "--checkpoint", "x.pt"],
    ["train", "--task", "nih", "--out", "x.pt"],
])
def test_ctrl_c_in_every_command_is_one_line_and_130(command, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, {"demo": "run_demo", "evaluate": "run_evaluate", "train": "run_train"}[command[0]],
                        interrupted)
    assert cli.main(command) == 130
    assert error_lines(capsys) == [f"captum-iba {command[0]}: interrupted"]


def test_a_billion_images_are_planned_lazily_and_ctrl_c_keeps_what_was_marked(cache, tmp_path, monkeypatch, capsys):
    mine = shard(10**12, 8, 3, 7)  # no list of 10**11 batches
    assert len(mine) == 17857142857 and mine[1] == (10, range(80, 88)) and mine.count_items() == 142857142856
    out = tmp_path / "out"
    real_done = store_module.BatchWriter.done

    def done_then_interrupted(writer, batch, keys, maps):
        real_done(writer, batch, keys, maps)
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module.BatchWriter, "done", done_then_interrupted)
    assert attribute(out, images=10**9) == 130
    assert error_lines(capsys)[-1].startswith("captum-iba attribute: interrupted")
    assert MethodStore(out / "iba").done_batches() == {0} and not (out / "iba.lock").exists()


# Damage found by `captum-iba verify`, by read_maps, and repaired by a rerun.


def chunk_of(out, batch):
    """The array of batch ``batch`` and its (one) chunk file."""
    folder = next((out / "iba" / "maps.zarr").glob(f"b{batch:06d}-*"))
    return folder, next(p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json")


def test_a_flipped_bit_and_a_deleted_chunk_are_reported_and_a_rerun_restores_the_maps(cache, reference, tmp_path,
                                                                                      capsys):
    out = tmp_path / "out"
    assert attribute(out) == 0
    (corrupt, flipped), (missing, deleted) = chunk_of(out, 3), chunk_of(out, 5)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x10
    flipped.write_bytes(bytes(data))
    deleted.unlink()
    capsys.readouterr()
    assert cli.main(["verify", str(out)]) == 1
    report = capsys.readouterr().out
    assert f"corrupt: {corrupt}: " in report and f"missing: {missing}: " in report and "2 problem(s)" in report
    with pytest.raises(StoreError, match="b00000[35]-"):
        dict(read_maps(out))  # maps are read, and checked, on access

    assert attribute(out) == 0  # the quick check finds the deleted chunk only
    assert "1 done batch(es) missing or damaged" in capsys.readouterr().err
    assert attribute(out, "--verify") == 0  # the SHA-256 finds the flipped bit
    assert "1 done batch(es) missing or damaged" in capsys.readouterr().err
    assert_same_maps(out, reference)
    assert cli.main(["verify", str(out)]) == 0


# Refused before anything is written.


def checkpoint_with_meta(path, **meta):
    """A checkpoint with a valid digest and the metadata ``meta``."""
    meta = {"task": "nih", "architecture": {"name": "small_densenet"}, "input_size": 32, **meta}
    write_checkpoint(path, small_densenet(8).state_dict(), meta)
    return str(path)


@pytest.mark.parametrize("extra, message", [
    (("--threads", "0"), "--threads: expected an integer >= 1, got 0"),
    (("--threads", str(4 * (os.cpu_count() or 1) + 1)), "--threads: expected at most"),
    (("--size", "100000"), "--size: expected at most 4096"),
    (("--batch-size", "1000000"), "--batch-size: expected at most 4096"),
    (("--device", "tpu"), "--device tpu: expected auto, cpu, cuda"),
    pytest.param(("--device", "cuda"), "--device cuda: this machine has no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    (("--target", "True"), "--target: expected an output index 0-7 or a name the model has an output for"),
    (("--images", "99999999999999999999"), "--images: expected at most 9223372036854775807"),
    (("--beta", "inf"), "--beta: expected a finite number, got inf"),
    (("--beta", "nan"), "--beta: expected a finite number, got nan"),
    (("--beta", "2e6"), "--beta: expected a number <= 1000000.0, got 2000000.0"),
    (("--noise-draws", "99999999999999999999"), "--noise-draws: expected at most 4096"),
    (("--steps", "99999999999999999999"), "--steps: expected at most 1000000"),
    (("--seed", "99999999999999999999"), "--seed: expected at most 9223372036854775807"),
    ("task", "unknown task 'chexpert'"),
    ("option", "unknown small_densenet option(s) depth"),
    ("name", "unknown architecture 'resnet'"),
])
def test_every_refused_request_is_one_line_and_writes_nothing(extra, message, tmp_path, capsys):
    metas = {"task": {"task": "chexpert"}, "option": {"architecture": {"name": "small_densenet", "depth": 3}},
             "name": {"architecture": {"name": "resnet"}}}
    if isinstance(extra, str):
        path = checkpoint_with_meta(tmp_path / "model.pt", **metas[extra])
        extra = ("--checkpoint", path)
        message = f"{path}: {message}"
        argv = [a for a in iba_argv(tmp_path / "out", *extra) if a not in EMBEDDED]
        assert cli.main(["attribute", *argv]) == 2
    else:
        assert attribute(tmp_path / "out", *extra) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("captum-iba attribute: error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def plan_of(*extra):
    return make_plan(cli.build_parser().parse_args(["attribute", *iba_argv("unused", *extra)]))


@settings(deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70))
def test_numbers_are_refused_exactly_where_the_library_refuses_them(beta, draws):
    beta_ok = 0 <= beta <= MAX_BETA  # BottleneckOptions' range; False for nan
    draws_ok = 1 <= draws <= MAX_NOISE_DRAWS
    for name, value, ok in (("--beta", repr(beta), beta_ok), ("--noise-draws", str(draws), draws_ok)):
        if ok:
            plan_of(f"{name}={value}")
        else:
            with pytest.raises(UsageError, match=f"^{name}: expected") as caught:
                plan_of(f"{name}={value}")
            assert "\n" not in str(caught.value)


@pytest.mark.parametrize("argv, message", [
    (["train", "--task", "nih", "--out", "x.pt", "--lr", "inf"], "argument --lr: expected a finite number, got inf"),
    (["train", "--task", "nih", "--out", "x.pt", "--epochs", "0"], "argument --epochs: expected an integer in [1,"),
    (["demo", "--images", "99999999999999999999"], "argument --images: expected an integer in [1, 922337203"),
    (["attribute", "--method", "iba", "--out", "x", "--images", "many"], "argument --images: invalid int value"),
])
def test_a_refused_argument_of_any_command_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    lines = error_lines(capsys)
    assert caught.value.code == 2 and len(lines) == 1 and message in lines[0], lines


def test_an_unreadable_image_read_by_a_data_loading_worker_is_one_line_naming_it(cache, nih_root, tmp_path, capsys):
    for png in nih_root.rglob("*.png"):
        png.write_bytes(png.read_bytes()[:200])  # cut short, as an interrupted copy leaves it
    out = tmp_path / "out"
    assert cli.main(["attribute", "--method", "gradcam", "--dataset", "nih", "--root", str(nih_root), "--out",
                     str(out), "--images", "4", "--batch-size", "2", "--workers", "2", *EMBEDDED]) == 2
    # Not the warning that two listed images are absent, nor the embedded model's training bars.
    lines = [line for line in error_lines(capsys) if line.startswith("captum-iba") and ": warning: " not in line]
    assert len(lines) == 1 and "Traceback" not in lines[0] and len(lines[0]) < 400, lines
    assert lines[0].startswith(f"captum-iba attribute: error: {nih_root}") and ".png: unreadable image (" in lines[0]
    assert lines[0].endswith("(in data-loading worker process 0)") or lines[0].endswith("process 1)")
    assert not (out / "gradcam.lock").exists()


def test_a_truncated_statistics_file_is_one_line_and_a_damaged_index_line_is_rebuilt(cache, tmp_path, capsys):
    out = tmp_path / "out"
    assert attribute(out, images=4) == 0
    index = next((out / "iba" / "index").glob("*.jsonl"))
    lines = index.read_text().splitlines(keepends=True)
    lines[-1] = lines[-1].replace("phantom-nih-1000-0000", "phantom-nih-1000-9999")  # another image's id
    index.write_text("".join(lines))
    assert verify_store(out).status == "corrupt"
    capsys.readouterr()
    assert attribute(out, images=4) == 0
    assert "1 damaged index line(s) dropped, their batches computed again" in capsys.readouterr().err
    assert verify_store(out).ok and all(not key[0].endswith("9999") for key in read_maps(out))

    stats = next((out / "iba" / "stats").glob("*.pt"))
    stats.write_bytes(stats.read_bytes()[:100])
    assert attribute(out, images=4) == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"captum-iba attribute: error: {stats}: ") and "Traceback" not in line
    assert "delete it" in line and "--overwrite" in line
    assert attribute(out, images=4, *("--overwrite",)) == 0 and verify_store(out).ok


def test_checkpoint_weights_that_do_not_fit_are_one_line_naming_the_file(tmp_path):
    path = tmp_path / "model.pt"
    write_checkpoint(path, small_densenet(3).state_dict(), {"task": "nih", "architecture": {"name": "small_densenet"},
                                                             "input_size": 32})
    with pytest.raises(ValueError, match=r"model\.pt: its weights do not fit .*first: classifier\.bias has shape \(3,\), not \(8,\)") as info:
        load_model(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_bool_targets_are_refused(method):
    suite = MethodSuite(small_densenet(3).eval(), layer="features.denseblock2", data=[torch.rand(4, 3, 32, 32)],
                        n_samples=4)
    with pytest.raises(TypeError, match="target"):
        suite.attribute(method, torch.rand(2, 3, 32, 32), [True, False])


# A full disk.


def no_space_for(monkeypatch, method, where):
    """Make ``pathlib.Path.<method>`` fail with ENOSPC for paths for which ``where(path)`` holds."""
    real = getattr(pathlib.Path, method)

    def write(path, *args, **kwargs):
        if where(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, method, write)


def test_a_full_disk_while_saving_statistics_is_one_line_and_releases_the_lock(cache, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    no_space_for(monkeypatch, "write_bytes", lambda path: "stats" in path.parts)
    assert attribute(out) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "no space left on device" in lines[0] and f"{out / 'iba' / 'stats'}" in lines[0]
    assert "needed" in lines[0] and "free" in lines[0]
    assert not (out / "iba.lock").exists() and not list((out / "iba").glob("stats/*"))


def test_a_full_cache_is_one_warning_and_the_trained_model_is_used(cache, reference, tmp_path, monkeypatch, capsys):
    fresh = tmp_path / "fresh-cache"
    monkeypatch.setenv("CAPTUM_IBA_CACHE", str(fresh))
    no_space_for(monkeypatch, "write_bytes", lambda path: fresh in path.parents)
    assert attribute(tmp_path / "out") == 0
    warning = [line for line in error_lines(capsys) if "warning" in line]
    assert len(warning) == 1 and warning[0].startswith("captum-iba attribute: warning: could not cache the model (")
    assert "no space left on device" in warning[0] and "going on without the cache" in warning[0]
    assert not [p for p in fresh.rglob("*") if p.is_file()]  # nothing half-written
    assert_same_maps(tmp_path / "out", reference)  # the model it trained


def test_a_full_disk_for_a_trained_checkpoint_keeps_the_model_elsewhere(cache, tmp_path, monkeypatch, capsys):
    full = tmp_path / "full"
    full.mkdir()
    no_space_for(monkeypatch, "write_bytes", lambda path: path.parent == full)
    assert cli.main(["train", "--task", "nih", "--out", str(full / "model.pt"), "--images", "16", "--size", "32",
                     "--epochs", "1", "--batch-size", "8", "--quiet"]) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"captum-iba train: error: {full / 'model.pt'}: no space left")
    kept = pathlib.Path(lines[0].split("the model was written to ")[1].split(" instead")[0])
    assert kept.parent == cache / "rescued" and "needed" in lines[0]
    model = load_model(kept)
    assert model.task == "nih" and model.input_size == 32
    assert not list(full.iterdir())


def test_a_full_disk_while_writing_a_report_is_one_line(tmp_path, monkeypatch, capsys):
    no_space_for(monkeypatch, "write_text", lambda path: path.parent == tmp_path)
    with pytest.raises(NoSpaceError) as info:
        report_module._atomic_write(str(tmp_path / "report.md"), "x" * 1500)
    assert str(info.value).startswith(f"{tmp_path / 'report.md'}: no space left on device (1.5 KB needed")
    assert info.value.errno == errno.ENOSPC and not list(tmp_path.iterdir())

    monkeypatch.setattr(cli, "run_demo", lambda args: report_module._atomic_write(str(tmp_path / "report.md"), "x"))
    assert cli.main(["demo"]) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"captum-iba demo: error: {tmp_path / 'report.md'}: no space")
