"""`captum-iba evaluate` and `attribute` on real-format folders and on models the user brings.

The folders are the official NIH ChestX-ray8 and BrixIA layouts (`_realdata`),
partial downloads included; the models a torchvision ResNet-50 from a factory
module and a torchxrayvision DenseNet with random weights. Each run goes
through the command line as a user types it, at small sizes so it fits the suite.
"""

from __future__ import annotations

import json

import pytest

from _realdata import write_brixia_folder, write_factory_module, write_nih_folder
from captum_iba.app.cli import main
from captum_iba.app.store import read_maps
from captum_iba.app.methods import METHODS

QUICK = ["--images", "1", "--steps", "2", "--noise-draws", "2", "--batch-size", "4", "--insertion-steps", "4",
         "--sensitivity-masks", "2", "--extremal-iterations", "2", "--quiet"]
CLASSIFICATION = [name for name, method in METHODS.items() if "classification" in method.tasks and method.in_report]


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    return write_nih_folder(tmp_path_factory.mktemp("nih"), label_file="Data_Entry_2017_v2020.csv")


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    return tmp_path_factory.mktemp("factories")


@pytest.fixture
def factory(factories, monkeypatch):
    monkeypatch.syspath_prepend(str(factories))
    return write_factory_module(factories)


def evaluate(out, *args):
    assert main(["evaluate", "--out", str(out), *QUICK, *args]) == 0
    results = json.loads((out / "results.json").read_text())
    return results, (out / "report.md").read_text()


def test_evaluate_a_factory_resnet50_on_a_partial_nih_download(nih, factory, tmp_path):
    results, report = evaluate(tmp_path / "report", "--dataset", "nih", "--root", str(nih),
                               "--model", f"{factory}:resnet50", "--size", "64")
    assert results["layers"]["bottleneck"] == "layer1"  # 16x16 cells at 64 px: the closest to 14
    assert results["layers"]["cam"] == "layer4"
    scores = results["nih"]["scores"]
    assert set(scores) | set(results["nih"]["failed"]) == set(CLASSIFICATION)
    assert {"iba", "inverse", "multilayer", "gradcam", "torchray_gradcam"} <= set(scores)
    assert "Table 1" in report and "`layer1`" in report


def test_attribute_with_your_own_model_and_a_layer_list(nih, factory, tmp_path):
    out = tmp_path / "maps"
    base = ["attribute", "--dataset", "nih", "--root", str(nih), "--split", "test", "--out", str(out),
            "--model", f"{factory}:resnet50", "--size", "64", "--stats-samples", "4", "--workers", "0"]
    assert main([*base, "--method", "multilayer", "--multilayer-layers", "layer1,layer2", "--steps", "2",
                 "--noise-draws", "2"]) == 0
    assert main([*base, "--method", "torchray_gradcam"]) == 0
    maps = read_maps(out)
    methods = {method for _, method, _ in maps}
    assert methods == {"multilayer", "torchray_gradcam"}
    assert all(maps[key].shape == (1, 16, 16) for key in maps if key[1] == "multilayer")  # layer1 at 64 px


@pytest.mark.parametrize("args, message", [
    (["--model", "{factory}:not_a_model"], "nn.Module"),
    (["--model", "{factory}:resnet50", "--outputs", "Atelectasis=9"], "outputs"),
    (["--model", "{factory}:resnet50", "--layer", "layer9"], "layer3"),
    (["--model", "{factory}:resnet50", "--weights", "{nih}/BBox_List_2017.csv"], "BBox_List_2017.csv"),
    (["--checkpoint", "{nih}/none.pt", "--weights", "w.pt"], "--weights"),
])
def test_a_bad_model_option_is_one_line_and_writes_nothing(args, message, nih, factory, tmp_path, capsys):
    out = tmp_path / "report"
    args = [a.format(factory=factory, nih=nih) for a in args]
    assert main(["evaluate", "--out", str(out), *QUICK, "--dataset", "nih", "--root", str(nih), "--size", "64",
                 *args]) == 2
    # One error line (a factory without --weights also says, as a warning line, that it runs random weights).
    error = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if ": warning: " not in line)
    assert len(error.splitlines()) == 1 and message in error
    assert not out.exists()


def test_evaluate_and_attribute_on_a_brixia_folder(tmp_path):
    root = write_brixia_folder(tmp_path / "brixia")
    checkpoint = tmp_path / "severity.pt"
    assert main(["train", "--task", "brixia_regression", "--dataset", "phantom", "--images", "32", "--size", "32",
                 "--epochs", "1", "--out", str(checkpoint), "--quiet"]) == 0
    results, report = evaluate(tmp_path / "report", "--dataset", "brixia", "--root", str(root),
                               "--checkpoint", str(checkpoint), "--size", "32")
    assert "pcc" not in results["regression"]["scores"]["regression_deviation"]  # no zone masks on real data
    assert "Not computed: the BrixIA items have no severity map" in report
    out = tmp_path / "maps"
    assert main(["attribute", "--method", "regression", "--dataset", "brixia", "--root", str(root), "--out",
                 str(out), "--checkpoint", str(checkpoint), "--size", "32", "--steps", "2", "--noise-draws", "2",
                 "--stats-samples", "2", "--workers", "0"]) == 0
    assert {image_id for image_id, _, _ in read_maps(out)} == {"1001.dcm", "1002.dcm", "1003.dcm", "1004.dcm",
                                                               "1005.dcm"}  # 1006 is not on disk
