"""`captum-iba attribute` end to end: torchrun, crash and resume, refusals, the maps themselves.

Every run uses tiny embedded models (32 px, trained in a second into a
temporary cache) and one thread per process, so that one process and a
torchrun launch compute with the same floating-point reductions.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_iba.cxr import PhantomCXR, collate
from captum_iba.cxr.models.checkpoints import save_model
from captum_iba.app.sources import choose_layers, open_model
from captum_iba.app.store import MethodStore, read_index, read_maps
from captum_iba.app.methods import MethodSuite
from captum_iba.app import store as store_module
from captum_iba.app.cli import main as cli_main
from captum_iba.app.attribute.distributed import batch_seed
from captum_iba.stats import FeatureStats

RECIPE = {"size": 32, "train_images": 64, "test_images": 32, "epochs": 1}
EMBEDDED = ("--embedded-overrides", ",".join(f"{key}={value}" for key, value in RECIPE.items()))
IMAGES, BATCH = 24, 2


def main(argv):
    """``captum-iba attribute ARGV`` in this process; its exit status."""
    return cli_main(["attribute", *argv])
BIN = Path(sys.executable).parent


def argv(out, *extra, method="iba", model=EMBEDDED):
    return ["--method", method, "--out", str(out), "--images", str(IMAGES), "--batch-size", str(BATCH),
            *model, "--stats-samples", "32", "--workers", "0", "--threads", "1", *extra]


def iba_argv(out, *extra, **kwargs):
    return argv(out, "--steps", "3", "--noise-draws", "2", *extra, **kwargs)


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    """The store of one uninterrupted single-process IBA run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(iba_argv(out)) == 0
    return out


def save_checkpoint(path, **recipe):
    """The embedded NIH model (recipe overrides: ``recipe``) as a `captum-iba train` checkpoint."""
    architecture = {"name": "small_densenet", "growth_rate": 12, "block_config": [2, 2, 2, 2],
                    "num_init_features": 16, "bn_size": 2}
    save_model(open_model("nih", None, **{**RECIPE, **recipe}), path, task="nih",
               architecture=architecture, input_size=RECIPE["size"])
    return path


def assert_same_maps(maps, expected):
    assert sorted(maps) == sorted(expected)
    for key in expected:
        assert np.array_equal(maps[key], expected[key]), key


def assert_clean(out, method="iba"):
    """Each map indexed once, all done; every batch written once; no array left unreferenced."""
    index = read_index(out)
    keys = [(row["image_id"], row["method"], row["target"]) for row in index]
    assert len(keys) == len(set(keys)) and {row["status"] for row in index} == {"done"}
    store = MethodStore(out / method)
    arrays = store.complete_arrays()
    assert sorted(rows[0]["batch"] for rows in arrays.values()) == list(range(IMAGES // BATCH))
    assert sorted(p.name for p in store.maps_dir.iterdir() if p.is_dir()) == sorted(arrays)


def test_two_torchrun_processes_write_the_maps_of_one(reference, tmp_path):
    out = tmp_path / "out"
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "captum_iba", "attribute", *iba_argv(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes" in done.stdout and "24 computed" in done.stdout
    assert_same_maps(read_maps(out), dict(read_maps(reference)))
    assert len(list((out / "iba" / "index").glob("*-rank00[01].jsonl"))) == 2
    assert_clean(out)


def test_a_run_failing_part_way_resumes_to_the_uninterrupted_result(reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_done, marked = store_module.BatchWriter.done, []

    def done_then_fail(writer, batch, keys, maps):  # the run dies once 5 items are marked done
        real_done(writer, batch, keys, maps)
        marked.append(batch)
        if len(marked) * BATCH >= 5:
            raise RuntimeError("simulated failure")

    monkeypatch.setattr(store_module.BatchWriter, "done", done_then_fail)
    with pytest.raises(RuntimeError, match="simulated failure"):
        main(iba_argv(out))
    partial, expected = read_maps(out), dict(read_maps(reference))
    assert {image_id for image_id, _, _ in partial} == {f"phantom-nih-1000-{i:05d}" for i in range(6)}
    assert_same_maps(partial, {key: expected[key] for key in partial})
    monkeypatch.undo()
    assert main(iba_argv(out)) == 0
    assert_same_maps(read_maps(out), expected)
    assert_clean(out)
    last = MethodStore(out / "iba").runs()[-1]
    assert (last["items"], last["skipped"]) == (IMAGES - 6, 6)


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(reference, tmp_path):
    out = tmp_path / "out"
    index = out / "iba" / "index"
    killed = subprocess.Popen([sys.executable, "-m", "captum_iba", "attribute", *iba_argv(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while killed.poll() is None and not any(b'"done"' in p.read_bytes() for p in index.glob("*.jsonl")):
            time.sleep(0.002)
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert 0 < len(MethodStore(out / "iba").done_batches()) < IMAGES // BATCH  # killed part-way
    assert main(iba_argv(out)) == 0
    assert_same_maps(read_maps(out), dict(read_maps(reference)))
    assert_clean(out)


def test_a_changed_configuration_is_refused_unless_overwrite(reference, tmp_path, capsys, cache):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    expected = dict(read_maps(out))

    assert main(iba_argv(out, "--seed", "1")) == 2
    assert "seed: 0 -> 1" in capsys.readouterr().err

    retrained = save_checkpoint(tmp_path / "retrained.pt", epochs=2)
    assert main(iba_argv(out, model=("--checkpoint", str(retrained)))) == 2
    error = capsys.readouterr().err
    assert "model.weights_sha256" in error and "--overwrite" in error
    assert_same_maps(read_maps(out), expected)  # nothing was touched

    assert main(iba_argv(out, "--seed", "1", "--overwrite")) == 0
    changed = read_maps(out)
    assert sorted(changed) == sorted(expected)
    assert any(not np.array_equal(changed[key], expected[key]) for key in expected)
    assert_clean(out)


def test_the_same_weights_from_a_checkpoint_resume_the_store(reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    checkpoint = save_checkpoint(tmp_path / "same.pt")
    assert main(iba_argv(out, model=("--checkpoint", str(checkpoint)))) == 0
    assert f"0 computed, {IMAGES} already done" in capsys.readouterr().out


def expected_maps(method, task, stats, options, loss=None, threshold="top:0.3"):
    """The maps MethodSuite gives each batch of the run, with the batch's seed."""
    model_task = {"regression": "brixia_regression"}.get(method, "nih" if task == "nih" else "brixia_detectors")
    model = open_model(model_task, None, **RECIPE)
    layers = choose_layers(model, 32)  # the run's choice: the map grid closest to 14 cells
    suite = MethodSuite(model, task="regression" if method == "regression" else "classification",
                        stats=stats, multilayer_threshold=threshold, iba_options=options,
                        **layers.suite_options())
    items = PhantomCXR(IMAGES, size=32, seed=1000, task=task)
    label_key = "labels" if task == "nih" else "detectors"
    expected = {}
    for b in range(IMAGES // BATCH):
        batch = collate([items[i] for i in range(b * BATCH, (b + 1) * BATCH)])
        if method == "regression":
            rows = [(i, -1) for i in range(BATCH)]
            target, extra = None, {"loss": loss, "target_values": batch["score"]}
        else:
            top = model(batch["image"]).argmax(1).tolist()
            rows = [(i, t) for i in range(BATCH)
                    for t in (torch.nonzero(batch[label_key][i]).flatten().tolist() or [top[i]])]
            target, extra = [t for _, t in rows], {}
        images = batch["image"][[i for i, _ in rows]]
        maps = suite.attribute(method, images, target, seed=batch_seed(0, b), **extra).numpy()
        key = method if loss is None else f"{method}-{loss}"
        expected.update({(batch["image_id"][i], key, t): m for (i, t), m in zip(rows, maps)})
    return expected


@pytest.mark.parametrize("method, extra", [
    ("iba", ()),
    ("multilayer", ("--threshold", "otsu")),
    ("regression", ("--loss", "mse")),
    ("gradcam", ("--task", "brixia")),
])
def test_the_stored_maps_are_the_suites_maps_of_each_batch(method, extra, cache, tmp_path):
    out = tmp_path / "out"
    options = () if method == "gradcam" else ("--steps", "3", "--noise-draws", "2")
    assert main(argv(out, *options, *extra, method=method)) == 0
    task = "brixia" if method in ("regression", "gradcam") else "nih"
    folder = next(p for p in out.iterdir() if p.is_dir())
    stats = {p.stem: FeatureStats.load(p) for p in (folder / "stats").glob("*.pt")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run
    try:
        expected = expected_maps(method, task, stats, {"steps": 3, "noise_draws": 2},
                                 loss="mse" if method == "regression" else None, threshold="otsu")
    finally:
        torch.set_num_threads(threads)
    assert_same_maps(read_maps(out), expected)


def test_items_without_a_positive_label_are_explained_at_their_top_prediction(reference):
    maps = read_maps(reference)
    targets = {}
    for image_id, _, target in maps:
        targets.setdefault(image_id, []).append(target)
    labels = PhantomCXR(IMAGES, size=32, seed=1000).targets("labels")
    assert len(targets) == IMAGES
    for i, row in enumerate(labels):
        found = sorted(targets[f"phantom-nih-1000-{i:05d}"])
        positives = torch.nonzero(row).flatten().tolist()
        assert found == positives if positives else len(found) == 1


def run_error(capsys, args):
    assert main(args) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (("--dataset", "nih"), "--dataset nih is read from a folder: pass --root PATH"),
    (("--dataset", "nih", "--root", "/nowhere", "--method", "regression"), "--method regression explains the BrixIA"),
    (("--method", "gradcam", "--steps", "3"), "--steps does not apply to --method gradcam"),
    (("--target", "9"), "--target: the model has 8 outputs"),
    (("--method", "regression", "--task", "brixia", "--target", "0"), "--target does not apply to --method regression"),
])
def test_arguments_that_do_not_fit_are_refused_by_name(extra, message, tmp_path, capsys):
    assert message in run_error(capsys, ["--out", str(tmp_path / "out"), "--method", "iba", *extra])
    assert not (tmp_path / "out").exists()


def test_unknown_method_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--method", "magic", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "invalid choice: 'magic'" in capsys.readouterr().err


def test_a_checkpoint_of_the_wrong_task_is_refused(cache, tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "nih.pt")
    error = run_error(capsys, argv(tmp_path / "out", "--task", "brixia", method="regression",
                                   model=("--checkpoint", str(checkpoint))))
    assert "holds a 'nih' model, but a 'brixia_regression' model is needed" in error
    assert not (tmp_path / "out").exists()


def test_another_tools_folder_is_refused(tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "scan.png").write_bytes(b"")
    assert "belongs to another tool" in run_error(capsys, iba_argv(theirs))
    assert [p.name for p in theirs.iterdir()] == ["scan.png"]


def test_an_out_folder_that_cannot_be_created_is_refused_by_path(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "out"
    assert f"{out}: cannot be created" in run_error(capsys, iba_argv(out))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_folder_is_refused_by_path(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert f"{locked} is not writable" in run_error(capsys, iba_argv(locked))
    finally:
        locked.chmod(0o755)
