"""Models, training, evaluation and the cache of embedded models."""

import math
import os

import pytest
import torch
from torch import nn

from captum_iba.cxr import (
    EMBEDDED_MODELS,
    FINDINGS,
    PhantomCXR,
    densenet121_cxr,
    embedded_model_path,
    evaluate,
    fit,
    load_embedded_model,
    positive_weights,
    small_densenet,
)
from captum_iba.cxr.models import _cache, embedded

PAPER_LAYERS = [f"features.denseblock{k}" for k in range(1, 5)]
PAPER_LAYERS += ["features.norm5", "features.transition3", "classifier"]


def only(*findings, p=0.5):
    return {name: (p if name in findings else 0.0) for name in FINDINGS}


# ---------------------------------------------------------------- models


def test_small_densenet_has_the_paper_layer_names():
    model = small_densenet(8)
    assert set(PAPER_LAYERS) <= dict(model.named_modules()).keys()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 8)
    with pytest.raises(ValueError, match="block_config: expected 4 dense blocks"):
        small_densenet(3, block_config=(2, 2, 2))
    with pytest.raises(ValueError, match="num_outputs"):
        small_densenet(0)


def test_densenet121_layer_names_and_local_weights(tmp_path):
    model = densenet121_cxr(3)
    assert set(PAPER_LAYERS) <= dict(model.named_modules()).keys()
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    # A DataParallel checkpoint of another head (e.g. 14 outputs): features load, the head stays new.
    other = densenet121_cxr(14)
    torch.save({f"module.{k}": v for k, v in other.state_dict().items()}, tmp_path / "other.pth")
    loaded = densenet121_cxr(3, weights=tmp_path / "other.pth")
    layer = "features.denseblock3.denselayer5.conv2.weight"
    assert torch.equal(loaded.state_dict()[layer], other.state_dict()[layer])
    assert loaded.classifier.out_features == 3
    # A whole model of the same shape loads exactly.
    torch.save(model.state_dict(), tmp_path / "same.pth")
    same = densenet121_cxr(3, weights=tmp_path / "same.pth").eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(same(x), model(x))
    torch.save(small_densenet(3).state_dict(), tmp_path / "small.pth")
    with pytest.raises(ValueError, match="does not fit DenseNet-121"):
        densenet121_cxr(3, weights=tmp_path / "small.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        densenet121_cxr(3, weights=tmp_path / "missing.pth")


# ---------------------------------------------------------------- training


def test_positive_weights_are_negatives_over_positives():
    targets = torch.tensor([[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.float32)
    assert positive_weights(targets).tolist() == pytest.approx([3 / 2, 1.0, 2 / 3])


@pytest.mark.parametrize("loss", ["bce", "weighted_bce", "mse"])
def test_training_starts_at_the_prior_and_weights_the_loss(loss):
    """A model blind to its input (zero weights) and a vanishing learning rate: the outputs stay at
    the bias fit chose (the loss's best constant) and the first epoch's loss is the paper's loss of
    that constant, Eq. 8 (BCE with the positive term weighted by negatives/positives) or Eq. 9."""
    task = "brixia" if loss == "mse" else "nih"
    data = PhantomCXR(16, size=32, seed=0, task=task, prevalence=None if loss == "mse" else only("Mass", "Nodule"))
    targets = data.targets("score").reshape(-1, 1) if loss == "mse" else data.targets("labels")
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, targets.shape[1]))
    nn.init.zeros_(model[1].weight)
    fit(model, data, loss, epochs=1, batch_size=5, lr=1e-12, progress=False)
    bias = model[1].bias.detach()
    if loss == "mse":
        assert torch.allclose(bias, targets.mean(0), atol=1e-4)
        assert model.loss_curve_[0] == pytest.approx(targets.var(unbiased=False).item(), rel=1e-4)
        return
    positives = targets.sum(0)
    weight = (len(targets) - positives) / positives if loss == "weighted_bce" else torch.ones(8)
    weight[positives == 0] = 1.0
    rate = targets.mean(0).clamp(1e-3, 1 - 1e-3)
    assert torch.allclose(bias, torch.log(weight * rate / (1 - rate)), atol=1e-4)
    p = torch.sigmoid(bias)
    expected = -(weight * targets * torch.log(p) + (1 - targets) * torch.log(1 - p)).mean()
    assert model.loss_curve_[0] == pytest.approx(expected.item(), rel=1e-4)
    if loss == "weighted_bce":  # balanced: every class with positives starts at even odds
        drawn = [FINDINGS.index("Mass"), FINDINGS.index("Nodule")]
        assert torch.allclose(bias[drawn], torch.zeros(2), atol=1e-4)


def test_fit_learns_findings_on_a_tiny_phantom():
    train = PhantomCXR(256, size=64, seed=0, prevalence=only("Effusion", "Mass"))
    test = PhantomCXR(64, size=64, seed=1, prevalence=only("Effusion", "Mass"))
    torch.manual_seed(0)
    model = fit(small_densenet(8), train, "weighted_bce", epochs=6, batch_size=16, lr=5e-3, progress=False)
    assert not model.training and len(model.loss_curve_) == 6
    assert model.loss_curve_[-1] < 0.6 * model.loss_curve_[0]
    result = evaluate(model, test)
    assert result["auc"]["Effusion"] > 0.85 and result["auc"]["Mass"] > 0.85
    assert math.isnan(result["auc"]["Nodule"])  # no positives in the test set: undefined, left out of the mean
    assert result["mean_auc"] == pytest.approx((result["auc"]["Effusion"] + result["auc"]["Mass"]) / 2)
    assert result["n"] == 64


class Scores(nn.Module):
    """A stand-in model whose outputs are written in the image's first pixels."""

    def __init__(self, width):
        super().__init__()
        self.width = width
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x[:, 0, 0, : self.width]


def scored_items(outputs, key, targets):
    images = [torch.nn.functional.pad(o, (0, 8 - len(o))).expand(3, 1, 8).clone() for o in outputs]
    return [{"image": image, key: t} for image, t in zip(images, targets)]


def test_evaluate_classification_metrics_per_class():
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    outputs = torch.stack([targets[:, 0] * 2 - 1, torch.zeros(4), -targets[:, 2]], dim=1)  # perfect, constant, reversed
    result = evaluate(Scores(3), scored_items(outputs, "detectors", targets))
    assert list(result["auc"]) == ["score_3", "score_2", "score_0_1"]
    assert result["auc"]["score_3"] == 1.0 and result["ap"]["score_3"] == 1.0
    assert math.isnan(result["auc"]["score_2"]) and math.isnan(result["ap"]["score_2"])
    assert result["auc"]["score_0_1"] == 0.0 and result["ap"]["score_0_1"] == 0.5
    assert result["mean_auc"] == 0.5 and result["mean_ap"] == 0.75


def test_evaluate_regression_mae():
    scores = torch.tensor([0.0, 4.0, 9.0, 18.0])
    outputs = torch.full((4, 1), 5.0)
    result = evaluate(Scores(1), scored_items(outputs, "score", scores))
    assert result == {"mae": pytest.approx((5 + 1 + 4 + 13) / 4), "n": 4}


def test_fit_bad_arguments():
    data = PhantomCXR(4, size=32)
    with pytest.raises(ValueError, match="loss: expected one of"):
        fit(small_densenet(8), data, "focal")
    with pytest.raises(KeyError, match="target: the dataset's items have no key 'score'"):
        fit(small_densenet(1), data, "mse")
    with pytest.raises(ValueError, match="epochs: expected an int >= 1"):
        fit(small_densenet(8), data, epochs=0)


# ---------------------------------------------------------------- embedded models and their cache


@pytest.fixture
def tiny_recipes(monkeypatch, tmp_path):
    """Embedded models trained in a second, in a private cache folder; counts trainings."""
    monkeypatch.setenv("CAPTUM_IBA_CACHE", str(tmp_path / "cache"))
    for name, recipe in embedded._RECIPES.items():
        tiny = embedded._Recipe(
            task=recipe.task, loss=recipe.loss, target=recipe.target, outputs=recipe.outputs,
            size=32, train_images=32, test_images=16, epochs=1, batch_size=16,
        )
        monkeypatch.setitem(embedded._RECIPES, name, tiny)
    trainings = []
    train = embedded._train

    def counted(recipe, progress):
        trainings.append(recipe)
        return train(recipe, progress)

    monkeypatch.setattr(embedded, "_train", counted)
    return trainings


def test_embedded_model_is_cached_and_reloads_identically(tiny_recipes):
    model = load_embedded_model("brixia_detectors", progress=False)
    assert not model.training and model.input_size == 32 and "mean_auc" in model.metrics
    path = embedded_model_path("brixia_detectors")
    assert path.is_file() and os.listdir(path.parent) == [path.name]  # no temporary file left behind
    again = load_embedded_model("brixia_detectors", progress=False)
    assert len(tiny_recipes) == 1, "a cached model must not be retrained"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), again(x)) and repr(again.metrics) == repr(model.metrics)  # repr: NaN != NaN


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_corrupt_cache_file_is_rebuilt(tiny_recipes, damage):
    load_embedded_model("brixia_regression", progress=False)
    path = embedded_model_path("brixia_regression")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # readable, but weights that do not match the digest
        payload = torch.load(path, weights_only=True)
        payload["state_dict"]["classifier.bias"] += 1.0
        torch.save(payload, path)
    with pytest.warns(RuntimeWarning, match="corrupt cache file"):
        model = load_embedded_model("brixia_regression", progress=False)
    assert len(tiny_recipes) == 2 and model.metrics["mae"] >= 0
    assert _cache.load_checkpoint(path) is not None  # the rebuilt file is sound


def test_cache_key_follows_the_training_configuration(tiny_recipes, monkeypatch):
    paths = {name: embedded_model_path(name) for name in EMBEDDED_MODELS}
    assert len(set(paths.values())) == 4
    recipe = embedded._RECIPES["nih_bce"]
    monkeypatch.setitem(embedded._RECIPES, "nih_bce", embedded._Recipe(**{**recipe.__dict__, "epochs": 2}))
    assert embedded_model_path("nih_bce") != paths["nih_bce"]
    with pytest.raises(ValueError, match="name: expected one of"):
        load_embedded_model("chexnet")


def test_cache_folder_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPTUM_IBA_CACHE", str(tmp_path / "mine"))
    assert _cache.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("CAPTUM_IBA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.cache_dir() == tmp_path / "xdg" / "captum_iba"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _cache.cache_dir() == tmp_path / "home" / ".cache" / "captum_iba"
