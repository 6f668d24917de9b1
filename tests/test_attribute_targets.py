"""`captum-iba attribute --target`: indices of the model's own outputs, or finding names.

The user's model is a tiny factory model of 18 outputs, of which ``--outputs``
maps four onto findings, none at its finding's own index: a target that were
counted in the 8-finding space, or a name resolved to a finding's index, would
store other numbers and other maps.
"""

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from captum_iba import IBA
from captum_iba.app import cli
from captum_iba.app.attribute.distributed import batch_seed
from captum_iba.app.attribute.plan import UsageError, _parse_targets, make_plan
from captum_iba.app.sources import ModelOutputs
from captum_iba.app.store import MethodStore, read_index, read_maps
from captum_iba.cxr import FINDINGS, PhantomCXR, collate, external_model
from captum_iba.stats import FeatureStats

#: Which of the 18 outputs holds which finding; the other 14 outputs hold none.
OUTPUTS = {"Effusion": 12, "Atelectasis": 3, "Nodule": 0, "Mass": 16}
IMAGES, SIZE, STEPS, DRAWS = 6, 32, 10, 2

FACTORY = '''
import torch
from torch import nn


class Tiny(nn.Module):
    """18 outputs: those with index % 4 < 2 see the left half of the image, the others the right half.

    The head's weights are large, so that the explained output's loss, not the information loss,
    shapes an IBA map within a few steps.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 18)
        with torch.no_grad():
            self.head.weight.mul_(1000)
            for k in range(18):
                self.head.weight[k, 8:] = 0 if k % 4 < 2 else self.head.weight[k, 8:]
                self.head.weight[k, :8] = 0 if k % 4 >= 2 else self.head.weight[k, :8]

    def forward(self, x):
        f = self.features(x)
        half = f.shape[-1] // 2
        return self.head(torch.cat([f[..., :half].mean((2, 3)), f[..., half:].mean((2, 3))], dim=1))


def tiny18():
    torch.manual_seed(0)
    return Tiny()
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """``module:function`` of the 18-output factory, importable for the test."""
    folder = tmp_path / "factories"
    folder.mkdir()
    (folder / "tiny18_factory.py").write_text(textwrap.dedent(FACTORY).lstrip())
    monkeypatch.syspath_prepend(str(folder))
    yield "tiny18_factory:tiny18"
    sys.modules.pop("tiny18_factory", None)


def model_args(factory):
    return ["--model", factory, "--outputs", ",".join(f"{k}={v}" for k, v in OUTPUTS.items()),
            "--layer", "features.3"]


def attribute(out, factory, *extra):
    """``captum-iba attribute`` with the 18-output model; its exit status."""
    return cli.main(["attribute", "--method", "iba", "--out", str(out), *model_args(factory),
                     "--images", str(IMAGES), "--batch-size", str(IMAGES), "--size", str(SIZE),
                     "--stats-samples", "8", "--steps", str(STEPS), "--noise-draws", str(DRAWS),
                     "--workers", "0", "--threads", "1", *extra])


def stored_targets(out):
    targets = {}
    for row in read_index(out):
        targets.setdefault(row["image_id"], set()).add(row["target"])
    return targets


def items():
    """The run's items (the held-out phantom, seed 1000) as one batch."""
    return collate([PhantomCXR(IMAGES, size=SIZE, seed=1000)[i] for i in range(IMAGES)])


@pytest.mark.filterwarnings("ignore:model .* no weights file given")
def test_targets_are_the_models_own_outputs_and_names_resolve_through_the_map(factory, tmp_path):
    mixed, by_index = tmp_path / "mixed", tmp_path / "by-index"
    assert attribute(mixed, factory, "--target", "10", "--target", "effusion") == 0
    assert attribute(by_index, factory, "--target", str(OUTPUTS["Effusion"])) == 0
    ids = [f"phantom-nih-1000-{i:05d}" for i in range(IMAGES)]
    # Output 10 holds no finding and is stored as 10; Effusion as the output that holds it, 12.
    assert stored_targets(mixed) == {image_id: {10, 12} for image_id in ids}
    assert stored_targets(by_index) == {image_id: {12} for image_id in ids}
    maps, indexed = read_maps(mixed), read_maps(by_index)
    for image_id in ids:
        assert np.array_equal(maps[image_id, "iba", 12], indexed[image_id, "iba", 12])
        # Output 10 sees the right half of the image, output 12 the left: so do their maps.
        for target, right in ((10, True), (12, False)):
            bits = maps[image_id, "iba", target]
            share = bits[..., bits.shape[-1] // 2:].sum() / bits.sum()
            assert share > 0.9 if right else share < 0.1, (image_id, target, share)
    # The store says what output 12 is.
    config = json.loads((mixed / "iba" / "config.json").read_text())["config"]
    assert config["targets"] == [10, 12]
    assert config["model"]["outputs"]["count"] == 18
    assert config["model"]["outputs"]["labels"] == {f: OUTPUTS.get(f) for f in FINDINGS}

    # Output 10's map is IBA's on the user's model itself at output 10 (same statistics, seed, options).
    raw = external_model(factory, outputs=OUTPUTS).wrapped
    stats = FeatureStats.load(mixed / "iba" / "stats" / "features.3.pt")
    iba = IBA(raw, raw.features[3], stats=stats, loss="bce", steps=STEPS, noise_draws=DRAWS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run
    try:
        direct = iba.attribute(items()["image"], target=10, seed=batch_seed(0, 0)).numpy()
    finally:
        torch.set_num_threads(threads)
    stored = np.stack([maps[image_id, "iba", 10] for image_id in ids])
    np.testing.assert_allclose(stored, direct, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:model .* no weights file given")
def test_the_default_targets_are_the_outputs_of_the_labels(factory, tmp_path):
    out = tmp_path / "out"
    assert attribute(out, factory) == 0
    batch = items()
    with torch.no_grad():
        scores = external_model(factory, outputs=OUTPUTS).wrapped(batch["image"])
    held = [OUTPUTS[f] for f in FINDINGS if f in OUTPUTS]  # in the label columns' order
    expected = {}
    for image_id, labels, row in zip(batch["image_id"], batch["labels"], scores):
        positives = {OUTPUTS[FINDINGS[c]] for c in torch.nonzero(labels).flatten().tolist() if FINDINGS[c] in OUTPUTS}
        expected[image_id] = positives or {held[int(row[held].argmax())]}
    assert stored_targets(out) == expected
    assert set().union(*expected.values()) <= set(OUTPUTS.values())
    assert MethodStore(out / "iba").plan["maps"] == sum(len(t) for t in expected.values())


@pytest.mark.filterwarnings("ignore:model .* no weights file given")
@pytest.mark.parametrize("target, message", [
    ("Pneumonia", "--target: expected an output index 0-17 or a name the model has an output for "
                  "(Atelectasis, Effusion, Mass, Nodule), got 'Pneumonia'"),
    ("3,18", "--target: the model has 18 outputs (0-17), got 18"),
    ("-1", "--target: the model has 18 outputs (0-17), got -1"),
])
def test_a_target_the_model_lacks_is_one_line_naming_target(target, message, factory, tmp_path, capsys):
    assert attribute(tmp_path / "out", factory, "--target", target) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if ": warning: " not in line]
    assert lines == [f"captum-iba attribute: error: {message}"]
    assert not (tmp_path / "out").exists()


def test_the_embedded_models_take_finding_names_too():
    def targets(*values):
        args = cli.build_parser().parse_args(["attribute", "--method", "iba", "--out", "unused",
                                              *(a for v in values for a in ("--target", v))])
        return make_plan(args).targets

    assert targets("Effusion", "7,infiltrate") == (2, 3, 7)
    assert targets("pneumothorax") == (FINDINGS.index("Pneumothorax"),)


def test_a_models_own_output_names_name_its_other_outputs():
    names = ("Atelectasis", "Edema", "Effusion", "Lung Opacity", "Mass")
    outputs = ModelOutputs(5, names, FINDINGS, tuple({"Atelectasis": 0, "Effusion": 2}.get(f) for f in FINDINGS))
    assert _parse_targets(["lung_opacity,EDEMA", "effusion"], outputs) == (1, 2, 3)
    # "Mass" is a finding: it resolves through the finding map only, which has no output for it.
    with pytest.raises(UsageError, match=r"^--target: .*\(Atelectasis, Effusion, Edema, Lung Opacity\), got 'Mass'$"):
        _parse_targets(["Mass"], outputs)
