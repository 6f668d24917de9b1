"""One registry entry reaches everything: a throwaway method and a throwaway dataset reader.

The method is IBA under another class and name (so its maps must equal IBA's,
seed for seed); it is registered with ``captum_iba.app.methods.register_method``
and found in the CLI's choices, the method suite, the attribute runner (maps
read back from the store) and the report (Table 1 of the NIH study). The dataset reader is the NIH reader under another
name. Each fixture removes its entry afterwards.
"""

import json

import pytest
import torch
from _realdata import NIH_IMAGES
from _toys import tiny_densenet

from captum_iba import IBA
from captum_iba.app.report import render as report_module
from captum_iba.app.cli import build_parser
from captum_iba.app.cli import main as cli_main
from captum_iba.app.report.evaluation import EvaluationSettings
from captum_iba.app.report.render import ReportInputs, run_report
from captum_iba.app.sources import DATASETS, DatasetSource, open_dataset, register_dataset
from captum_iba.cxr import FINDINGS, NIHChestXray8, PhantomCXR, small_densenet
from captum_iba.cxr.models.checkpoints import save_model
from captum_iba.app.store import read_maps
from captum_iba.app.methods import BOTTLENECK_OPTIONS, METHODS, Method, MethodSuite, bottleneck_method, register_method

NAME, LABEL = "throwaway_iba", "Throwaway IBA"
DATASET = "throwaway_nih"
pytestmark = pytest.mark.filterwarnings("ignore::captum_iba.cxr.MissingImagesWarning")


class ThrowawayIBA(IBA):
    """IBA under another name: the method a user adds."""


@pytest.fixture
def method():
    entry = register_method(NAME, Method(
        LABEL, "captum_iba", ("classification",), lambda suite: bottleneck_method(suite, ThrowawayIBA, loss="bce"),
        layers="bottleneck", options=BOTTLENECK_OPTIONS, attribution=ThrowawayIBA,
        defaults={"loss": "bce"}))
    yield entry
    METHODS.pop(NAME)


@pytest.fixture
def dataset():
    source = register_dataset(DATASET, DatasetSource(
        "NIH under another name", "nih", False,
        lambda root, split=None, size=None, **_: NIHChestXray8(root, split=split, size=size or 224)))
    yield source
    DATASETS.pop(DATASET)


def accepts(*argv):
    """Whether the command line parses (argparse exits on a value outside an option's choices)."""
    try:
        build_parser().parse_args(list(argv))
    except SystemExit:
        return False
    return True


def test_the_cli_offers_a_registered_method_and_forgets_it_when_removed(capsys):
    attribute = ("attribute", "--out", "x", "--method", NAME)
    assert not accepts(*attribute)
    assert "invalid choice" in capsys.readouterr().err
    entry = register_method(NAME, Method(LABEL, "captum_iba", ("classification",), lambda suite: None))
    try:
        assert accepts(*attribute)
        with pytest.raises(ValueError, match="registered already"):
            register_method(NAME, entry)
    finally:
        METHODS.pop(NAME)
    assert not accepts(*attribute)


def test_the_cli_offers_a_registered_dataset(dataset):
    assert accepts("attribute", "--out", "x", "--method", "iba", "--dataset", DATASET)
    assert accepts("train", "--task", "nih", "--out", "m.pt", "--dataset", DATASET)
    assert accepts("evaluate", "--dataset", DATASET, "--root", "r", "--checkpoint", "c.pt")
    assert not accepts("evaluate", "--dataset", "phantom", "--root", "r", "--checkpoint", "c.pt")  # generated
    with pytest.raises(ValueError, match="registered already"):
        register_dataset(DATASET, dataset)


def test_open_dataset_reads_a_registered_dataset(dataset, nih_root):
    test = open_dataset(DATASET, nih_root, size=32, split="test")
    assert test.image_ids == NIHChestXray8(nih_root, size=32, split="test").image_ids


def test_the_suite_lists_and_runs_a_registered_method(method):
    model = tiny_densenet(8)
    data = [torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    suite = MethodSuite(model, data=data, n_samples=8, iba_options={"steps": 2})
    assert suite.names[-1] == NAME and suite.stats_layers([NAME]) == (suite.layer,)
    assert NAME not in MethodSuite(model, task="regression", stats=suite.stats).names  # it explains classifiers
    images, target = data[0][:2], torch.tensor([1, 5])
    maps = suite.attribute(NAME, images, target, seed=3)
    assert maps.shape == (2, 1, 2, 2)
    assert torch.equal(maps, suite.attribute("iba", images, target, seed=3))


TINY_RUN = ["--batch-size", "2", "--embedded-overrides", "size=32,train_images=64,test_images=32,epochs=1",
            "--stats-samples", "32", "--workers", "0", "--threads", "1", "--steps", "2", "--noise-draws", "2"]


def test_the_attribute_runner_writes_a_registered_methods_maps(method, cache, tmp_path):
    out = tmp_path / "store"
    for name in (NAME, "iba"):
        assert cli_main(["attribute", "--method", name, "--out", str(out), "--images", "4", *TINY_RUN]) == 0
    maps = dict(read_maps(out))
    ours = {(image, target): array for (image, name, target), array in maps.items() if name == NAME}
    iba = {(image, target): array for (image, name, target), array in maps.items() if name == "iba"}
    assert len({image for image, _ in ours}) == 4 and sorted(ours) == sorted(iba)
    for key, array in ours.items():
        assert array.shape[0] == 1 and (array == iba[key]).all(), key


def test_the_attribute_runner_reads_a_registered_dataset(method, dataset, cache, nih_root, tmp_path):
    out = tmp_path / "store"
    assert cli_main(["attribute", "--method", NAME, "--dataset", DATASET, "--root", str(nih_root), "--split", "test",
                     "--out", str(out), *TINY_RUN]) == 0
    targets = {}
    for image, name, target in read_maps(out):
        assert name == NAME
        targets.setdefault(image, set()).add(target)
    present = [image for image in NIH_IMAGES if image.split == "test" and image.size is not None]
    assert sorted(targets) == sorted(image.name for image in present)
    for image in present:
        positive = {FINDINGS.index(label) for label in image.labels.split("|") if label in FINDINGS}
        if positive:  # each of its findings among the model's 8 outputs (Hernia is not one)
            assert targets[image.name] == positive
        else:  # none: its top prediction, one map
            assert len(targets[image.name]) == 1


def test_the_report_shows_a_registered_method(method, tmp_path):
    torch.manual_seed(0)
    inputs = ReportInputs(
        models={"nih_bce": tiny_densenet(8)},
        nih=PhantomCXR(16, size=32, seed=1000, task="nih"),
        nih_estimation=PhantomCXR(16, size=32, seed=0, task="nih"),
        images=2, auc_images=16, description="registry test",
        suite_options={"iba_options": {"steps": 2, "noise_draws": 2}, "extremal_iterations": 1, "ig_steps": 2},
    )
    settings = EvaluationSettings(batch_size=8, insertion_steps=2, sensitivity_masks=2)
    results = run_report(inputs, str(tmp_path), settings, progress=False, log=lambda *_: None)
    scores = results["nih"]["scores"]
    assert list(scores)[-1] == NAME
    for metric in ("iou", "pointing", "insertion_auc", "deletion_auc"):
        assert scores[NAME][metric] == scores["iba"][metric], metric  # the same maps as IBA's
    assert f"| {LABEL} |" in (tmp_path / "report.md").read_text()
    assert LABEL in (tmp_path / "table1_nih.csv").read_text()
    assert NAME in json.loads((tmp_path / "results.json").read_text())["nih"]["scores"]


def _tiny_checkpoint(path):
    torch.manual_seed(0)
    save_model(small_densenet(8), path, task="nih", architecture={"name": "small_densenet"}, input_size=32)
    return str(path)


def test_evaluate_hands_a_registered_nih_style_dataset_to_the_nih_study(dataset, nih_root, tmp_path, monkeypatch):
    given = {}

    def capture(inputs, out_dir, settings=None, progress=True, log=print):
        given["inputs"] = inputs
        return {"seconds_total": 0.0, "claims": []}

    monkeypatch.setattr(report_module, "run_report", capture)
    assert cli_main(["evaluate", "--dataset", DATASET, "--root", str(nih_root), "--checkpoint",
                     _tiny_checkpoint(tmp_path / "nih.pt"), "--out", str(tmp_path / "report"), "--quiet"]) == 0
    assert given["inputs"].nih is not None and given["inputs"].brixia is None
