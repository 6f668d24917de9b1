"""Today's models and methods in the application: pytorch-grad-cam beside the IBA family, timm and
HuggingFace models on the command line, the user's own package in the current folder.

Tiny configurations with random weights; nothing is downloaded (HF_HUB_OFFLINE=1).
"""

import json
import math
import os
import textwrap

import pytest
import torch

from _realdata import write_nih_folder
from _toys import tiny_densenet
from captum_iba.app.baselines import GRAD_CAM_METHODS, grid_transform, inplace_free_copy
from captum_iba.app.cli import main
from captum_iba.app.methods import METHODS, MethodSuite
from captum_iba.app.store import read_maps

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = 32
#: A timm ViT of 2 blocks, width 32, 8 px patches: a 4 x 4 grid at 32 px.
TINY_VIT = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2,embed_dim=32,num_heads=2"
RUN = ["--dataset", "phantom", "--images", "2", "--batch-size", "2", "--stats-samples", "4", "--workers", "0"]
FAST = ["--steps", "2", "--noise-draws", "2"]


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, num_classes=8).eval()


def _images(n=3, seed=0, size=SIZE):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_every_pytorch_grad_cam_method_is_registered_and_runs_in_the_suite():
    model = tiny_densenet(8)
    suite = MethodSuite(model, data=[_images(4)], n_samples=4, iba_options={"steps": 2, "noise_draws": 2})
    assert set(GRAD_CAM_METHODS) <= set(suite.names)
    x = _images(2, seed=1)
    for key in GRAD_CAM_METHODS:
        assert METHODS[key].family == "grad-cam"
        maps = suite.attribute(key, x, torch.tensor([1, 5]))
        assert maps.shape == (2, 1, SIZE, SIZE) and torch.isfinite(maps).all() and (maps >= 0).all(), key


def test_pytorch_grad_cam_gradcam_agrees_with_captums_and_reads_each_samples_own_target():
    model = tiny_densenet(8)
    # 128 px: DenseNet's last map is 4 x 4.
    suite = MethodSuite(model, data=[_images(4, size=128)], n_samples=4, iba_options={"steps": 2, "noise_draws": 2})
    x = _images(2, seed=2, size=128)
    # A random model's Grad-CAM is often all negative (then zero after the ReLU): take, per image,
    # the output whose Captum map is most positive, and the other one for the swapped targets.
    mass = torch.stack([suite.attribute("gradcam", x, torch.tensor([t, t])).flatten(1).sum(1) for t in range(8)], 1)
    target = mass.argmax(1)
    assert (mass.max(1).values > 0).all()
    ours = suite.attribute("pgc_gradcam", x, target)
    captum = torch.nn.functional.interpolate(suite.attribute("gradcam", x, target), size=(128, 128),
                                             mode="bilinear", align_corners=False)
    for k in range(2):  # same Grad-CAM up to pytorch-grad-cam's min-max scaling and its resize
        a, b = ours[k].flatten(), captum[k].flatten()
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95
    # Each sample is explained for its own target: the batch equals the images one at a time.
    alone = torch.cat([suite.attribute("pgc_gradcam", x[k:k + 1], target[k:k + 1]) for k in range(2)])
    assert torch.allclose(ours, alone, atol=1e-5)
    other = mass.argmin(1)
    assert not torch.allclose(ours, suite.attribute("pgc_gradcam", x, other), atol=1e-3)


def test_on_a_vit_the_grid_transform_is_pytorch_grad_cams_own():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    model = _vit()
    layer = model.blocks[-1].norm1
    x = _images(2, seed=3)
    transform = grid_transform(model, layer, x)
    features = []
    handle = layer.register_forward_hook(lambda m, a, out: features.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert torch.equal(transform(features[0]), vit_reshape_transform(features[0], 4, 4))
    targets = [ClassifierOutputTarget(2), ClassifierOutputTarget(6)]
    clone = inplace_free_copy(model)
    theirs = GradCAM(model=clone, target_layers=[clone.blocks[-1].norm1],
                     reshape_transform=lambda t: vit_reshape_transform(t, 4, 4))
    suite = MethodSuite(model, data=[_images(4)], n_samples=4, layer="blocks.1", cam_layer="blocks.1.norm1",
                        multilayer_layers=("blocks.0", "blocks.1"), readout_layers=("blocks.0", "blocks.1"),
                        iba_options={"steps": 2, "noise_draws": 2})
    ours = suite.attribute("pgc_gradcam", x, torch.tensor([2, 6]))
    expected = torch.from_numpy(theirs(input_tensor=x.clone().requires_grad_(True), targets=targets))[:, None]
    assert torch.allclose(ours, expected, atol=1e-5)
    iba = suite.attribute("iba", x, torch.tensor([2, 6]))
    assert iba.shape == (2, 1, 4, 4)  # the IBA family on the same model: the patch grid


def test_baselines_run_on_a_users_densenet_inside_the_wrapper(tmp_path, monkeypatch):
    """The in-place-free copy reaches the DenseNet inside ExternalModel: TorchRay's Grad-CAM runs."""
    pytest.importorskip("torchray")
    from captum_iba.cxr import wrap_model

    torch.manual_seed(0)
    import torchvision

    model = wrap_model(torchvision.models.densenet121(num_classes=8).eval())
    copy = inplace_free_copy(model)
    assert type(copy.wrapped).__name__ == "_DenseNetWithoutInplace" and type(model.wrapped).__name__ == "DenseNet"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(copy(x), model(x), atol=1e-5)
    suite = MethodSuite(model, stats={}, layer="features.denseblock3", cam_layer="features.norm5",
                        multilayer_layers=("features.denseblock3",), readout_layers=())
    maps = suite.attribute("torchray_gradcam", x, torch.tensor([3]))
    assert maps.shape[0] == 1 and torch.isfinite(maps).all()


def test_attribute_with_a_timm_vit_by_name_and_its_weights(tmp_path, capsys):
    weights = tmp_path / "vit.pt"
    torch.save(_vit().state_dict(), weights)
    out = tmp_path / "maps"
    assert main(["attribute", "--model", TINY_VIT, "--weights", str(weights), "--layer", "blocks.1", "--method",
                 "iba", "--out", str(out), *RUN, *FAST]) == 0
    assert main(["attribute", "--model", TINY_VIT, "--weights", str(weights), "--layer", "blocks.1",
                 "--method", "pgc_gradcam", "--out", str(out), *RUN]) == 0
    maps = read_maps(out)
    shapes = {method: maps[key].shape for key in maps for _, method, _ in [key]}
    assert shapes["iba"] == (1, 4, 4)  # the ViT's patch grid, whatever the phantom's size
    assert "warning" not in capsys.readouterr().err  # weights given: no random-weights warning


def test_evaluate_a_timm_vit_on_an_nih_folder(tmp_path, cache):
    """The whole report on a ViT the user names: the IBA family and pytorch-grad-cam score on its patch grid."""
    weights = tmp_path / "vit.pt"
    torch.save(_vit().state_dict(), weights)
    nih = write_nih_folder(tmp_path / "nih")
    out = tmp_path / "report"
    assert main(["evaluate", "--dataset", "nih", "--root", str(nih), "--model", TINY_VIT, "--weights", str(weights),
                 "--layer", "blocks.1", "--size", str(SIZE), "--out", str(out), "--images", "2", *FAST,
                 "--insertion-steps", "4", "--sensitivity-masks", "2", "--extremal-iterations", "2",
                 "--readout-epochs", "1", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["layers"]["bottleneck"] == "blocks.1" and results["layers"]["grid"] == [4, 4]
    scores = results["nih"]["scores"]
    for name in ("iba", "inverse", "pgc_gradcam"):
        assert math.isfinite(scores[name]["iou"]), name
    assert 0.0 <= results["nih"]["quality"]["value"] <= 1.0 and results["nih"]["quality"]["metric"] == "AUC"
    # Captum's LayerGradCam reads the token layer as (N, C, h, w): listed with the reason, not scored.
    assert "reads its layer as (N, C, h, w)" in results["nih"]["failed"]["gradcam"]
    assert "gradcam" not in scores


def test_a_timm_model_without_weights_says_it_runs_random_weights(tmp_path, capsys):
    assert main(["attribute", "--model", TINY_VIT, "--layer", "blocks.1", "--method", "iba",
                 "--out", str(tmp_path / "maps"), *RUN, *FAST]) == 0
    assert "no weights file given (--weights): it runs with the weights it was built with (random" in \
        capsys.readouterr().err


def test_attribute_with_a_huggingface_folder_and_its_own_layer_names(tmp_path):
    config = transformers.ViTConfig(image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=8)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "hf-vit")
    out = tmp_path / "maps"
    assert main(["attribute", "--model", f"hf:{tmp_path / 'hf-vit'}", "--layer", "vit.layers.1", "--method", "iba",
                 "--out", str(out), *RUN, *FAST]) == 0
    maps = read_maps(out)
    assert {maps[key].shape for key in maps} == {(1, 4, 4)}


@pytest.mark.parametrize("spec, message", [
    ("timm:vit_tiny_patch16_22", "timm has no model 'vit_tiny_patch16_22'; close names: vit_tiny_patch16_224"),
    ("timm:vit_tiny_patch16_224,depth", "expected timm:NAME[,key=value,...], got the option 'depth'"),
    ("hf:{tmp}/empty", "expected a folder with config.json and the weights"),
])
def test_a_bad_timm_or_hf_model_is_one_line_and_writes_nothing(spec, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "maps"
    assert main(["attribute", "--model", spec.format(tmp=tmp_path), "--method", "iba", "--out", str(out), *RUN]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not out.exists()


def test_model_finds_the_users_package_in_the_current_folder(tmp_path, monkeypatch):
    """``--model mylab.models:net`` run from the user's project folder, without PYTHONPATH."""
    package = tmp_path / "project" / "mylab"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(textwrap.dedent("""
        import torch
        import torchvision

        def net():
            torch.manual_seed(0)
            return torchvision.models.resnet18(num_classes=8)
    """))
    monkeypatch.chdir(tmp_path / "project")
    assert str(tmp_path / "project") not in os.sys.path
    out = tmp_path / "maps"
    assert main(["attribute", "--model", "mylab.models:net", "--method", "gradcam",
                 "--out", str(out), *RUN]) == 0
    assert len(read_maps(out)) == 2
    assert str(tmp_path / "project") not in os.sys.path  # found, and sys.path left as it was
