"""`captum-iba demo` end to end at a tiny size, and the command's errors."""

import json
import math

import pytest
import torch
from _realdata import NIH_IMAGES

from captum_iba.app.cli import main
from captum_iba.cxr import FINDINGS, small_densenet
from captum_iba.cxr.models.checkpoints import save_model
from captum_iba.app.report.claims import VERDICTS
from captum_iba.app.report.paper import CLAIMS
from captum_iba.app.report.redundant import REDUNDANT_METHODS
from captum_iba.app.methods import METHODS
from captum_iba.app.report.vit import VIT_METHODS

TINY = ["--size", "32", "--train-images", "64", "--epochs", "1", "--images", "4", "--auc-images", "16",
        "--steps", "2", "--insertion-steps", "4", "--sensitivity-masks", "4", "--extremal-iterations", "2",
        "--redundant-images", "3", "--quiet"]
FIGURES = ["fig1_inverse_vs_iba.png", "fig2_insertion_deletion.png", "fig3a_regression.png",
           "fig3b_sensitivity_n.png", "fig3b_sensitivity_cells.png", "fig4_methods.png", "sweep_layers.png"]
TABLES = ["table1_nih.csv", "table2_detectors.csv", "table3_bce_vs_weighted.csv", "severity_pcc.csv",
          "sweep_layers.csv", "cue_methods.csv", "redundant_methods.csv"]


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:  # never the user's cache; their value comes back afterwards
        patch.setenv("CAPTUM_IBA_CACHE", str(root / "cache"))
        runs = []
        for name in ("first", "second"):
            assert main(["demo", *TINY, "--out", str(root / name)]) == 0
            runs.append(root / name)
        yield runs


def _finite(value):
    return isinstance(value, float) and math.isfinite(value)


def test_every_table_and_figure_with_finite_numbers_for_every_method(demo_runs):
    out = demo_runs[0]
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for name in TABLES:
        assert len((out / name).read_text().splitlines()) >= 3, name
    results = json.loads((out / "results.json").read_text())
    classification = [k for k, v in METHODS.items() if "classification" in v.tasks and v.in_report]
    nih = results["nih"]["scores"]
    assert sorted(nih) == sorted(classification)  # TorchRay's methods included
    for method, scores in nih.items():
        for metric in ("iou", "pointing", "insertion_auc", "deletion_auc", "seconds_per_map"):
            assert _finite(scores[metric]), (method, metric)
    assert sorted(results["detectors"]["scores"]) == sorted(classification)
    assert all(_finite(v["iou"]) for v in results["detectors"]["scores"].values())
    regression = results["regression"]["scores"]
    for loss in ("mse", "maximize", "deviation"):
        scores = regression[f"regression_{loss}"]
        assert _finite(scores["pcc"]) and all(_finite(v) for v in scores["sensitivity_n"].values())
    assert _finite(regression["random"]["pcc"])
    assert all(_finite(results["table3"][m][k]) for m in ("bce", "weighted_bce") for k in ("iou", "mean_auc"))
    assert [c["id"] for c in results["claims"]] == [c.id for c in CLAIMS]  # one row per paper claim
    assert all(c["published"] and c["measured"] for c in results["claims"])
    sweep = results["sweep"]
    assert len(sweep["stages"]) >= 2 and set(sweep["rows"]) == {"iba", "inverse", "multilayer", "regression_deviation"}
    assert all(_finite(row[stage]["iou"]) for name, row in sweep["rows"].items() if name != "regression_deviation"
               for stage in sweep["stages"])
    cue = results["cue"]
    assert set(cue["intervention"]) == {"nih_cue", "nih_cue_clean", "nih_cue_weighted_bce"}
    assert set(cue["methods"]) == {"iba", "inverse", "saliency", "integrated_gradients"}
    assert results["layers"]["bottleneck"] in sweep["stages"]  # chosen by the map's resolution
    assert {c["verdict"] for c in results["claims"]} <= set(VERDICTS)
    vit = results["vit"]  # the ViT study: every method of it has finite scores on the patch grid
    assert sorted(vit["scores"]) == sorted(VIT_METHODS) and vit["layers"]["layer"] == "blocks.2"
    assert all(_finite(v["iou"]) for v in vit["scores"].values())
    assert vit["layers"]["layout"].startswith("tokens (N, 17, 64): 1 class token, then a 4x4 patch grid")
    assert _finite(vit["severity"]["pcc"]["regression"]) and "random" in vit["severity"]["pcc"]
    redundant = results["redundant"]["findings"]
    assert {name: entry["rule"] for name, entry in redundant.items()} == {"Mass": "or", "Effusion": "and"}
    for entry in redundant.values():
        assert entry["pairs"] == 3 and set(entry["methods"]) == set(REDUNDANT_METHODS)
        assert all(_finite(row["reached"]) and _finite(row["drop"]) for row in entry["methods"].values())
    sufficiency = next(c for c in results["claims"] if c["id"] == "inverse_all_regions")
    assert sufficiency["measured"].startswith("OR (Mass, 3 pairs")
    assert "AND (Effusion, 3 pairs" in sufficiency["measured"]
    assert sufficiency["verdict"] == "too few pairs"
    report = (out / "report.md").read_text()
    for heading in ("Table 1", "Table 2", "Table 3", "Severity-map correlation", "Sensitivity-N",
                    "The Vision Transformer", "Severity-map correlation, ViT regressor",
                    "Sufficient or all evidence", "claims", "Seconds per map", "Figures"):
        assert heading in report, heading
    for name in FIGURES:
        assert f"({name})" in report


def test_same_seed_same_numbers(demo_runs):
    def numbers(path):
        results = json.loads((path / "results.json").read_text())
        for study in ("nih", "detectors", "regression"):
            for scores in results[study]["scores"].values():
                scores.pop("seconds_per_map")
                scores.pop("warmup_seconds")
        return {k: results[k] for k in ("nih", "detectors", "regression", "table3", "claims", "sweep", "cue",
                                        "redundant")}

    assert numbers(demo_runs[0]) == numbers(demo_runs[1])


def test_evaluate_errors(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert main(["evaluate", "--dataset", "nih", "--root", str(tmp_path), "--checkpoint", str(missing)]) == 2
    assert f"checkpoint not found: {missing}" in capsys.readouterr().err
    checkpoint = tmp_path / "model.pt"
    save_model(small_densenet(8), checkpoint, task="nih", architecture={"name": "small_densenet"}, input_size=32)
    absent = tmp_path / "no-such-folder"
    assert main(["evaluate", "--dataset", "nih", "--root", str(absent), "--checkpoint", str(checkpoint)]) == 2
    assert str(absent) in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "brixia", "--root", str(tmp_path), "--checkpoint", str(checkpoint)]) == 2
    assert "'nih' model" in capsys.readouterr().err  # the default brixia task needs a regressor
    not_a_checkpoint = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(1)}, not_a_checkpoint)
    assert main(["evaluate", "--dataset", "nih", "--root", str(tmp_path), "--checkpoint", str(not_a_checkpoint)]) == 2
    assert "not a readable captum_iba checkpoint" in capsys.readouterr().err


def test_train_writes_a_checkpoint_that_evaluate_loads(tmp_path, monkeypatch):
    from captum_iba.cxr.models.checkpoints import load_model

    out = tmp_path / "detectors.pt"
    assert main(["train", "--task", "brixia_detectors", "--images", "32", "--size", "32", "--epochs", "1",
                 "--out", str(out), "--quiet"]) == 0
    model = load_model(out)
    assert model.task == "brixia_detectors" and model.input_size == 32
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def _tiny_checkpoint(path, task, outputs):
    torch.manual_seed(0)
    save_model(small_densenet(outputs), path, task=task, architecture={"name": "small_densenet"}, input_size=32)
    return str(path)


IMAGES = 4
QUICK = ["--images", str(IMAGES), "--steps", "2", "--insertion-steps", "4", "--sensitivity-masks", "4",
         "--extremal-iterations", "2", "--quiet"]


def boxed_test_findings():
    """(image, finding) pairs of an NIH folder's test split: one per boxed finding of a present image.

    Counted from the folder's builder (``_realdata``), where the box file
    lists only an image's positive findings; several boxes of one finding make
    one pair. Also returns how many present test images have a finding.
    """
    test = [image for image in NIH_IMAGES if image.split == "test" and image.size is not None]
    with_findings = [image for image in test if image.labels != "No Finding"]
    return sum(len({box[0] for box in image.boxes}) for image in test), len(with_findings)


def test_evaluate_on_real_data_folders(nih_root, brixia_root, tmp_path):
    checkpoint = _tiny_checkpoint(tmp_path / "nih.pt", "nih", 8)
    out = tmp_path / "nih-report"
    assert main(["evaluate", "--dataset", "nih", "--root", str(nih_root), "--checkpoint", checkpoint,
                 "--out", str(out), *QUICK]) == 0
    results = json.loads((out / "results.json").read_text())
    pairs, images_with_findings = boxed_test_findings()
    assert images_with_findings <= IMAGES  # --images reaches every test image with a finding
    assert results["nih"]["pairs"] == pairs > 0
    assert set(results["nih"]["scores"]["iba"]["class_iou"]) == set(FINDINGS)
    assert all(_finite(v["iou"]) for v in results["nih"]["scores"].values())

    checkpoint = _tiny_checkpoint(tmp_path / "brixia.pt", "brixia_regression", 1)
    out = tmp_path / "brixia-report"
    assert main(["evaluate", "--dataset", "brixia", "--root", str(brixia_root), "--checkpoint", checkpoint,
                 "--out", str(out), *QUICK]) == 0
    report = (out / "report.md").read_text()
    assert "no severity map" in report  # BrixIA ships no lung masks: said, not faked
    results = json.loads((out / "results.json").read_text())
    assert all(_finite(v) for v in results["regression"]["scores"]["regression_deviation"]["sensitivity_n"].values())
