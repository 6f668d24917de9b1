"""ReadoutIBA in the application: the registry's train hook, and `captum-iba attribute --method readout`.

The runs use the tiny embedded model of tests/test_attribute_runs.py (32 px,
trained in a second into a temporary cache) and one thread, so that the
stored maps can be compared bit for bit with ReadoutIBA's own.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
from _toys import tiny_densenet

from captum_iba import ReadoutIBA
from captum_iba.app.cli import main as cli_main
from captum_iba.app.sources import choose_layers, open_model
from captum_iba.app.store import read_maps
from captum_iba.cxr import PhantomCXR, collate
from captum_iba.app.methods import METHODS, MethodSuite

RECIPE = {"size": 32, "train_images": 64, "test_images": 32, "epochs": 1}
EMBEDDED = ("--embedded-overrides", ",".join(f"{key}={value}" for key, value in RECIPE.items()))
IMAGES, BATCH = 8, 4


def argv(out, *extra, method="readout"):
    return ["attribute", "--method", method, "--out", str(out), "--images", str(IMAGES), "--batch-size", str(BATCH),
            *EMBEDDED, "--stats-samples", "32", "--workers", "0", "--threads", "1", "--readout-images", "32",
            "--readout-epochs", "2", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One readout run in a cache of its own; its store and what it printed."""
    folder = tmp_path_factory.mktemp("readout-run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPTUM_IBA_CACHE", str(folder / "cache"))
        yield folder / "out"


def test_a_run_trains_once_and_a_rerun_reuses_the_stored_readout(run, capsys, monkeypatch):
    assert cli_main(argv(run)) == 0
    out = capsys.readouterr().out
    assert "readout: trained on 32 items x 2 epochs" in out and f"{IMAGES} computed, 0 already done" in out
    trained = run / "readout" / "trained" / "readout.pt"
    written = trained.read_bytes()
    config = json.loads((run / "readout" / "config.json").read_text())["config"]
    assert config["options"]["beta"] == 1.0 and config["options"]["readout_epochs"] == 2
    assert config["training"]["items"] == 32

    def never(suite):
        raise AssertionError("a rerun must not train the readout again")

    monkeypatch.setitem(METHODS, "readout", dataclasses.replace(METHODS["readout"], train=never))
    assert cli_main(argv(run)) == 0
    out = capsys.readouterr().out
    assert "reusing the trained state" in out and f"0 computed, {IMAGES} already done" in out
    assert trained.read_bytes() == written


def test_the_stored_maps_are_the_saved_readouts_maps_of_each_batch(run):
    if not (run / "readout" / "trained" / "readout.pt").exists():
        assert cli_main(argv(run)) == 0
    config = json.loads((run / "readout" / "config.json").read_text())["config"]
    model = open_model("nih", None, **RECIPE)
    modules = dict(model.named_modules())
    layer = choose_layers(model, 32).bottleneck
    readout = ReadoutIBA.load(run / "readout" / "trained" / "readout.pt", model, modules[layer],
                              [modules[n] for n in config["options"]["readout_layers"]])
    assert readout.epochs_trained == 2 and readout.options.beta == 1.0
    items = PhantomCXR(IMAGES, size=32, seed=1000)
    expected = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run
    try:
        for b in range(IMAGES // BATCH):
            batch = collate([items[i] for i in range(b * BATCH, (b + 1) * BATCH)])
            top = model(batch["image"]).argmax(1).tolist()
            rows = [(i, t) for i in range(BATCH)
                    for t in (torch.nonzero(batch["labels"][i]).flatten().tolist() or [top[i]])]
            maps = readout.attribute(batch["image"][[i for i, _ in rows]], [t for _, t in rows]).numpy()
            expected.update({(batch["image_id"][i], "readout", t): m for (i, t), m in zip(rows, maps)})
    finally:
        torch.set_num_threads(threads)
    stored = dict(read_maps(run))
    assert sorted(stored) == sorted(expected)
    assert all(np.array_equal(stored[key], expected[key]) for key in expected)
    assert any(stored[key].max() > 0 for key in expected)  # maps of bits, not empty


def test_a_changed_training_or_a_damaged_readout_is_refused(run, capsys, tmp_path):
    if not (run / "readout").exists():
        assert cli_main(argv(run)) == 0
    capsys.readouterr()
    assert cli_main(argv(run, "--readout-epochs", "3")) == 2
    assert "options.readout_epochs: 2 -> 3" in capsys.readouterr().err
    damaged = tmp_path / "out"
    assert cli_main(argv(damaged, "--images", "4")) == 0
    (damaged / "readout" / "trained" / "readout.pt").write_bytes(b"not a readout")
    assert cli_main(argv(damaged, "--images", "4")) == 2
    assert "rerun with --overwrite to train it again" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (("--method", "iba", "--readout-epochs", "2"), "--readout-epochs does not apply to --method iba"),
    (("--method", "readout", "--steps", "3"), "--steps does not apply to --method readout"),
    (("--method", "readout", "--readout-images", "0"), "--readout-images: expected an integer >= 1"),
])
def test_readout_options_are_checked_by_name(extra, message, tmp_path, capsys):
    assert cli_main(["attribute", "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_suite_trains_a_learning_method_only_with_training_data():
    model = tiny_densenet(n_outputs=4)
    x = torch.randn(8, 3, 32, 32)
    labels = torch.tensor([[1.0, 0, 0, 1]] * 4 + [[0, 1.0, 0, 0]] * 4)
    plain = MethodSuite(model, data=[x], layer="features.denseblock2")
    assert "readout" not in plain.names and "features.denseblock4" not in plain.stats
    with pytest.raises(ValueError, match="needs training: pass MethodSuite\\(training_data"):
        plain.attribute("readout", x, 0)
    with pytest.raises(ValueError, match="learns nothing"):
        plain.train("iba")
    suite = MethodSuite(model, data=[x], layer="features.denseblock2", training_data=[(x, labels)],
                        training_options={"readout": {"epochs": 2, "beta": 0.5}})
    assert "readout" in suite.names and "features.denseblock4" in suite.stats
    readout = suite.train("readout")
    assert suite.train("readout") is readout and readout.epochs_trained == 2 and readout.options.beta == 0.5
    assert torch.equal(suite.attribute("readout", x, 1), readout.attribute(x, 1))
    # A trained state is used as given: no training data needed.
    given = MethodSuite(model, stats=suite.stats, layer="features.denseblock2", trained={"readout": readout})
    assert "readout" in given.names and torch.equal(given.attribute("readout", x, 1), readout.attribute(x, 1))
    wrong = MethodSuite(model, stats=suite.stats, layer="features.denseblock2", training_data=[(x, labels)],
                        training_options={"readout": {"epoch": 2}})
    with pytest.raises(ValueError, match="unknown options \\['epoch'\\]"):
        wrong.train("readout")


def test_the_seconds_table_adds_the_training_spread_over_the_maps():
    from captum_iba.app.report.render import _timings

    scores = {"iba": {"seconds_per_map": 0.5, "warmup_seconds": 1.0},
              "readout": {"seconds_per_map": 0.01, "warmup_seconds": 0.1}}
    results = {"nih": {"pairs": 20, "scores": scores,
                       "training": {"readout": {"training_seconds": 4.0, "epochs": 10, "rows": 300}}}}
    lines, _ = _timings(results)
    text = "\n".join(lines)
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert header == "| method | nih | nih first call | nih incl. training |"
    assert f"| {METHODS['readout'].label} | 0.010 | 0.100 | 0.210 |" in text  # 0.01 + 4.0 / 20
    assert f"| {METHODS['iba'].label} | 0.500 | 1.000 | n/a |" in text
    assert "300 rows x 10 epochs, 4.0 s" in text
