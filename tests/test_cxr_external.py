"""Bring your own model: factories, torchxrayvision, output maps, input formats, layers, IBA on them."""

import sys

import pytest
import torch
import torchvision
from _realdata import folder_digest, write_factory_module

from captum_iba import IBA
from captum_iba._validate import find_layer
from captum_iba.cxr.models.external import OwnOutputs
from captum_iba.cxr import (
    FINDINGS,
    ExternalModel,
    InputFormat,
    default_bottleneck,
    external_model,
    model_from_factory,
    parse_input_format,
    parse_outputs,
    to_model_input,
    wrap_model,
    xrv_weights_path,
)


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """The name of a module of model factories, importable for the test."""
    name = write_factory_module(tmp_path / "factories")
    monkeypatch.syspath_prepend(str(tmp_path / "factories"))
    yield name
    sys.modules.pop(name, None)


def one_line(error):
    return "\n" not in str(error.value) and str(error.value)


def grey_images(n=2, size=64, seed=0):
    return to_model_input(torch.rand(n, size, size, generator=torch.Generator().manual_seed(seed)).numpy())


def test_factory_resnet50_wraps_transparently(factories):
    model = external_model(f"{factories}:resnet50")
    assert isinstance(model, ExternalModel) and not model.training and model.missing_findings == ()
    raw = model_from_factory(f"{factories}:resnet50")
    images = grey_images()
    with torch.no_grad():
        assert torch.allclose(model(images), raw(images), atol=1e-5)  # imagenet format: images go in as they are
    # The user's own layer names resolve on the wrapper, to the user's modules.
    assert find_layer(model, "layer3.1.conv2")[1] is model.wrapped.layer3[1].conv2
    assert model.get_submodule("layer4") is model.wrapped.layer4
    # A view, not a container: every layer once, the model's own state-dict keys, modes shared.
    assert len(list(model.modules())) == len(list(raw.modules()))
    assert list(model.state_dict()) == list(raw.state_dict())
    model.train()
    assert model.wrapped.training and model.wrapped.layer1.training
    model.eval()
    assert not model.wrapped.training and not model.wrapped.layer1.training
    assert default_bottleneck(model, 224) == "layer3" and default_bottleneck(model, 64) == "layer1"


def test_output_map_picks_and_orders_the_findings(factories):
    model = external_model(f"{factories}:resnet18_14", outputs="Effusion=4, atelectasis=13,Infiltrate=0")
    assert model.missing_findings == tuple(f for f in FINDINGS if f not in ("Effusion", "Atelectasis", "Infiltration"))
    images = grey_images()
    with torch.no_grad():
        raw, out = model.wrapped(images), model(images)
    assert out.shape == (2, 8)
    assert torch.equal(out[:, FINDINGS.index("Atelectasis")], raw[:, 13])
    assert torch.equal(out[:, FINDINGS.index("Effusion")], raw[:, 4])
    assert torch.equal(out[:, FINDINGS.index("Infiltration")], raw[:, 0])
    assert not out[:, FINDINGS.index("Mass")].any()  # missing: a constant 0, listed in missing_findings


def test_own_outputs_are_every_output_of_the_model_through_the_same_view(factories):
    model = external_model(f"{factories}:resnet18_14", outputs="Effusion=4,Atelectasis=13")
    own = model.own_outputs()
    assert isinstance(own, OwnOutputs) and not own.training and (own.num_outputs, model.num_outputs) == (14, 14)
    assert own.output_index == model.output_index == {"Atelectasis": 13, "Effusion": 4}
    assert own.get_submodule("layer3") is model.wrapped.layer3  # the same layers, under the same names
    images = grey_images()
    with torch.no_grad():
        raw, out = model.wrapped(images), own(images)
    assert out.shape == (2, 14) and torch.equal(out, raw)
    assert torch.equal(model(images)[:, FINDINGS.index("Atelectasis")], out[:, 13])


def test_input_formats_convert_the_library_images():
    grey = torch.rand(2, 16, 16)
    images = to_model_input(grey.numpy())
    assert parse_input_format("imagenet")(images) is images
    xrv = parse_input_format("xrv")(images)
    assert xrv.shape == (2, 1, 16, 16) and torch.allclose(xrv[:, 0], grey * 2048 - 1024, atol=1e-3)
    rgb = parse_input_format("rgb:[0,255]")(images)
    assert rgb.shape == (2, 3, 16, 16) and torch.allclose(rgb, grey[:, None].expand(-1, 3, -1, -1) * 255, atol=1e-3)
    assert parse_input_format("grey:[-1,1]") == InputFormat(1, -1.0, 1.0)
    assert parse_input_format("[0,1]").name == "rgb:[0,1]"
    for bad in ("hsv", "grey:imagenet", "[1,0]", "rgb:xrv", "cmyk:[0,1]"):
        with pytest.raises(ValueError, match="input_format") as raised:
            parse_input_format(bad)
        assert one_line(raised)


def test_xrv_densenet_conventions_without_weights():
    pytest.importorskip("torchxrayvision")
    model = external_model("xrv:densenet121-res224-all", pretrained=False)
    assert model.input_size == 224 and model.input_format == InputFormat(1, -1024.0, 1024.0)
    assert model.missing_findings == ()
    names = list(model.wrapped.pathologies)
    assert len(names) == 18 and all(names[model.output_index[f]] == f for f in FINDINGS)
    assert model.num_outputs == 18 and model.output_names == tuple(names)
    # A 64-px image is resized to the model's 224 px: the default bottleneck is dense block 3 (14 x 14).
    assert default_bottleneck(model, 64) == "features.denseblock3"
    seen = {}
    model.wrapped.features.conv0.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        logits, raw = model(grey_images(1)), None
    assert seen["x"].shape == (1, 1, 224, 224) and -1024 <= seen["x"].min() <= seen["x"].max() <= 1024
    with torch.no_grad():
        raw = model.wrapped(seen["x"])
    assert torch.allclose(logits[0], raw[0, [names.index(f) for f in FINDINGS]], atol=1e-5)  # logits, no calibration
    # CheXpert's model has no Infiltration, Mass nor Nodule output: reported, not skipped silently.
    chex = external_model("xrv:densenet121-res224-chex", pretrained=False, input_size=None)
    assert chex.missing_findings == ("Infiltration", "Mass", "Nodule")


def test_xrv_weights_absent_are_named_and_not_downloaded(tmp_path, monkeypatch):
    xrv = pytest.importorskip("torchxrayvision")
    monkeypatch.setattr(xrv.utils, "download", lambda *a, **k: pytest.fail("tried to download"))
    expected = xrv_weights_path("densenet121-res224-all", tmp_path)
    with pytest.raises(FileNotFoundError) as raised:
        external_model("xrv:densenet121-res224-all", cache_dir=tmp_path)
    assert one_line(raised) and str(expected) in str(raised.value) and expected.parent == tmp_path
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="densenet121-res224-all") as raised:
        external_model("xrv:densenet121-res224-al", pretrained=False)
    with pytest.raises(ValueError, match="weights"):
        external_model("xrv:densenet121-res224-all", weights=tmp_path / "w.pt", pretrained=False)


def test_xrv_weights_are_read_from_the_cache_folder(tmp_path, monkeypatch):
    xrv = pytest.importorskip("torchxrayvision")
    monkeypatch.setattr(xrv.utils, "download", lambda *a, **k: pytest.fail("tried to download"))
    torch.manual_seed(3)
    source = xrv.models.DenseNet(weights=None).eval()
    torch.nn.init.normal_(source.classifier.bias)
    torch.save(source, xrv_weights_path("densenet121-res224-all", tmp_path))  # the file format xrv caches
    model = external_model("xrv:densenet121-res224-all", cache_dir=tmp_path)
    assert torch.equal(model.classifier.bias, source.classifier.bias) and model.input_size == 224
    images = grey_images(1, size=224)
    with torch.no_grad():
        expected = source(parse_input_format("xrv")(images))[0, [source.targets.index(f) for f in FINDINGS]]
        assert torch.allclose(model(images)[0], expected, atol=1e-4)  # logits: calibration switched off


@pytest.mark.parametrize("spec", ["factory", "xrv"])
def test_iba_runs_at_the_default_layer_on_a_64_px_image(factories, spec):
    if spec == "xrv":
        pytest.importorskip("torchxrayvision")
        model = external_model("xrv:densenet121-res224-all", pretrained=False, input_size=None)
    else:
        model = external_model(f"{factories}:resnet50")
    layer = default_bottleneck(model, 64)
    assert layer == {"factory": "layer1", "xrv": "features.denseblock1"}[spec]
    iba = IBA(model, find_layer(model, layer)[1], loss="bce", steps=2, noise_draws=2)
    iba.estimate([grey_images(4, seed=1)], n_samples=4, progress=False)
    bits = iba.attribute(grey_images(2), target=FINDINGS.index("Effusion"))
    assert bits.shape == (2, 1, 16, 16) and torch.isfinite(bits).all() and (bits >= 0).all() and bits.sum() > 0
    assert not model.training


def test_weights_are_loaded_and_checked(factories, tmp_path):
    source = model_from_factory(f"{factories}:resnet18_14")
    torch.nn.init.constant_(source.fc.bias, 0.25)
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, good)
    loaded = model_from_factory(f"{factories}:resnet18_14", weights=good)
    assert torch.equal(loaded.fc.bias, torch.full((14,), 0.25)) and not loaded.training
    bad = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50(num_classes=14).state_dict(), bad)
    before = folder_digest(tmp_path)
    with pytest.raises(ValueError) as raised:
        model_from_factory(f"{factories}:resnet18_14", weights=bad)
    assert one_line(raised) and str(bad) in str(raised.value) and "do not fit" in str(raised.value)
    pickled = tmp_path / "whole_model.pt"
    torch.save(source, pickled)
    with pytest.raises(ValueError, match="weights_only") as raised:
        model_from_factory(f"{factories}:resnet18_14", weights=pickled)
    assert one_line(raised) and str(pickled) in str(raised.value)
    with pytest.raises(FileNotFoundError, match="no file"):
        model_from_factory(f"{factories}:resnet18_14", weights=tmp_path / "absent.pt")
    assert {k: v for k, v in folder_digest(tmp_path).items() if k in before} == before  # user files untouched


@pytest.mark.parametrize(
    "spec, error, words",
    [
        ("{m}:not_a_model", TypeError, ["{m}:not_a_model", "returned a str", "nn.Module"]),
        ("{m}:absent", ValueError, ["{m}:absent", "no attribute"]),
        ("no_such_module_here:f", ValueError, ["no_such_module_here", "cannot import"]),
        ("{m}", ValueError, ["package.module:function"]),
    ],
)
def test_bad_factories_get_one_line_naming_the_spec(factories, spec, error, words):
    spec = spec.format(m=factories)
    with pytest.raises(error) as raised:
        model_from_factory(spec)
    assert one_line(raised) and all(word.format(m=factories) in str(raised.value) for word in words)


@pytest.mark.parametrize(
    "outputs, words",
    [
        ("Atelectasis=0,Mass=8", ["outputs", "index 8", "'Mass'", "8 outputs (0-7)"]),
        ("Atelectasis=-1", ["outputs", "index -1", "out of range"]),
        ("Efusion=1", ["outputs", "unknown finding 'Efusion'", "Effusion"]),
        ("Mass=1,Mass=2", ["outputs", "'Mass' is given twice"]),
        ("Mass:1", ["outputs", "FINDING=INDEX", "'Mass:1'"]),
        ("Mass=one", ["outputs", "'Mass'", "integer"]),
        (" , ", ["outputs", "at least one"]),
    ],
)
def test_bad_output_maps_get_one_line_naming_the_option(outputs, words):
    with pytest.raises(ValueError) as raised:
        parse_outputs(outputs, 8)
    assert one_line(raised) and all(word in str(raised.value) for word in words), str(raised.value)


def test_a_model_without_output_names_needs_a_map(factories):
    with pytest.raises(ValueError, match=r"outputs: .* has 14 outputs and no names") as raised:
        external_model(f"{factories}:resnet18_14")
    assert one_line(raised)
    with pytest.raises(ValueError, match="index 14") as raised:
        external_model(f"{factories}:resnet18_14", outputs="Mass=14")
    with pytest.raises(ValueError, match="returns") as raised:
        wrap_model(torch.nn.Conv2d(3, 4, 3))  # a feature map, not scores
    assert one_line(raised)


def test_a_layer_the_model_lacks_is_named_with_close_names(factories):
    model = external_model(f"{factories}:resnet50")
    with pytest.raises(ValueError) as raised:
        find_layer(model, "layer5")
    assert one_line(raised) and "'layer5'" in str(raised.value) and "layer1" in str(raised.value)
    with pytest.raises(ValueError, match="no default bottleneck"):
        default_bottleneck(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()), 32)
