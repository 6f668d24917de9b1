"""The model-parameter randomisation test: a small trained CNN, its default steps on DenseNets and a ViT."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from captum_iba.attr import IBA, InverseIBA, MultiLayerIBA, ReadoutIBA
from captum_iba.cxr import small_densenet
from captum_iba.metrics import randomization_check
from captum_iba.stats import estimate_stats

SIZE = 16


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * SIZE * SIZE // 16, 2)
        self.unused = nn.Linear(3, 3)  # registered, never called

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def blob_images(n, generator):
    """Noise with a bright blob; the class says whether it is left or right."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = 0.2 * torch.randn(n, 1, SIZE, SIZE, generator=generator)
    rows = torch.randint(2, SIZE - 5, (n,), generator=generator)
    columns = torch.randint(1, SIZE // 2 - 4, (n,), generator=generator) + labels * SIZE // 2
    for image, row, column in zip(images, rows, columns):
        image[0, row:row + 3, column:column + 3] += 1.0
    return images, labels


@pytest.fixture(scope="module")
def trained():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = SmallCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        images, labels = blob_images(32, generator)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    images, labels = blob_images(6, generator)
    assert (model(images).argmax(dim=1) == labels).float().mean() >= 0.8
    return model, images, labels


def gradient(model, inputs, target):
    """Plain input gradient, by backward(): it fills the parameters' .grad too."""
    inputs = inputs.clone().requires_grad_()
    model(inputs)[torch.arange(len(inputs)), target].sum().backward()
    return inputs.grad


def test_gradients_lose_rank_correlation_when_the_model_is_randomised(trained):
    model, images, labels = trained
    check = randomization_check(gradient, model, images, labels)
    assert check.layers == ["unused", "fc", "conv2", "conv1"]
    assert check.spearman.shape == check.ssim.shape == (4, len(images))
    # Randomising a layer the forward pass never uses changes nothing.
    assert torch.allclose(check.spearman[0], torch.ones(len(images), dtype=torch.float64))
    assert torch.allclose(check.ssim[0], torch.ones(len(images), dtype=torch.float64), atol=1e-6)
    # Each step takes some of the ranking (randomising the top layer alone
    # may flip its sign); with every layer randomised little is left.
    rank_similarity = check.spearman.abs().mean(dim=1)
    assert rank_similarity[-1] < 0.3 < rank_similarity[1] < 0.9
    assert (check.ssim[1:] < 0.9).all() and check.ssim[-1].abs().mean() < 0.3


def test_the_callers_model_and_random_state_are_untouched(trained):
    model, images, labels = trained
    state = {name: value.clone() for name, value in model.state_dict().items()}
    rng_state = torch.get_rng_state()
    randomization_check(gradient, model, images, labels, layers=["conv2", model.conv1])
    assert all(torch.equal(value, state[name]) for name, value in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_cascading_accumulates_and_independent_does_not(trained):
    model, images, labels = trained
    layers = ["fc", "conv1"]
    cascading = randomization_check(gradient, model, images, labels, layers=layers)
    independent = randomization_check(
        gradient, model, images, labels, layers=layers, mode="independent"
    )
    # The first step randomises the same layer with the same seed in both modes.
    assert torch.allclose(cascading.spearman[0], independent.spearman[0])
    # Step 2 of the independent mode is conv1 alone, with the seed of step 2.
    conv1_alone = randomization_check(gradient, model, images, labels, layers=["conv1"], seed=1)
    assert torch.allclose(independent.spearman[1], conv1_alone.spearman[0])
    assert not torch.allclose(cascading.spearman[1], independent.spearman[1])
    # Seeds change the randomised weights, hence the result.
    reseeded = randomization_check(gradient, model, images, labels, layers=layers, seed=1)
    assert not torch.allclose(reseeded.spearman[0], cascading.spearman[0])


def test_randomization_check_rejects_bad_arguments(trained):
    model, images, labels = trained
    with pytest.raises(ValueError, match="mode"):
        randomization_check(gradient, model, images, labels, mode="top-down")
    with pytest.raises(ValueError, match="'fc2' is not a layer of the model; close names: fc"):
        randomization_check(gradient, model, images, labels, layers=["fc2"])
    with pytest.raises(ValueError, match="not a submodule of the model"):
        randomization_check(gradient, model, images, labels, layers=[nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="attribution_fn's result has batch size 1 but 6"):
        randomization_check(
            lambda m, x, t: gradient(m, x, t)[:1], model, images, labels, layers=["fc"]
        )


# ------------------------------------------------------------------ the default steps: the stages

DENSENET_STAGES = [
    "classifier", "features.norm5", "features.denseblock4", "features.transition3",
    "features.denseblock3", "features.transition2", "features.denseblock2", "features.transition1",
    "features.denseblock1", "features.norm0", "features.conv0",
]


def image_sum(model, inputs, target):
    """A map that ignores the model: the steps are listed at no cost."""
    return inputs.sum(1)


def recording(records):
    """An ``attribution_fn`` that stores each model it is given (a copy, as it was then)."""

    def record(model, inputs, target):
        records.append(copy.deepcopy(model.state_dict()))
        return inputs.sum(1)

    return record


def changed(before, after):
    return {name for name, value in after.items() if not torch.equal(value, before[name])}


def test_the_default_steps_are_densenet121s_stages_top_first():
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None).eval()
    check = randomization_check(image_sum, model, torch.rand(1, 3, 32, 32))
    # The children, features expanded (it holds 87% of the weights), those without parameters left out.
    assert check.layers == DENSENET_STAGES
    assert check.spearman.shape == (11, 1)


def test_the_small_densenets_stages_are_randomised_whole_and_in_turn():
    torch.manual_seed(0)
    model = small_densenet(8).eval()
    records = []
    check = randomization_check(recording(records), model, torch.rand(2, 3, 32, 32))
    assert check.layers == DENSENET_STAGES
    original, *steps = records
    assert len(steps) == len(DENSENET_STAGES)
    # Cascading: step k has re-drawn the weights of stages 1..k and nothing else
    # (BatchNorm's fresh ones and zeros are re-drawn as ones and zeros: only
    # the convolutions and the classifier are seen to change).
    for k, state in enumerate(steps, start=1):
        inside = tuple(stage + "." for stage in DENSENET_STAGES[:k])
        moved = changed(original, state)
        assert moved and all(name.startswith(inside) for name in moved)
        weights = [name for name, p in model.named_parameters() if p.dim() > 1 and name.startswith(inside)]
        assert weights and set(weights) <= moved


def test_a_vits_blocks_are_stages_one_by_one():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=8
    ).eval()
    records = []
    check = randomization_check(recording(records), model, torch.rand(2, 3, 32, 32))
    assert check.layers == ["head", "norm", "blocks.1", "blocks.0", "patch_embed"]
    # The model's own parameters have no reset_parameters(): no stage re-draws them.
    assert changed(records[0], records[-1]).isdisjoint({"cls_token", "pos_embed"})


# ------------------------------------------------------------------ IBA: statistics of the model explained

def iba_factory(built, stats, **options):
    """A factory of IBA objects at ``conv2`` that keeps what it built, with a copy of its model."""

    def build(model):
        iba = IBA(model, model.conv2, loss="ce", stats=stats, steps=2, noise_draws=2, **options)
        built.append((iba, copy.deepcopy(model)))
        return iba

    return build


def same_stats(a, b):
    return a.count == b.count and all(
        torch.allclose(getattr(a, key), getattr(b, key)) for key in ("mean", "m2", "nonzero")
    )


def test_iba_statistics_are_estimated_on_each_randomised_copy(trained):
    model, images, labels = trained
    stale = IBA(model, model.conv2, loss="ce").estimate(blob_images(64, torch.Generator().manual_seed(1))[0],
                                                       progress=False)
    built = []
    check = randomization_check(iba_factory(built, stale), model, images, labels)
    assert check.layers == ["unused", "fc", "conv2", "conv1"]
    assert len(built) == 1 + len(check.layers)  # the original model's maps are computed the same way
    for (iba, copy_then), name in zip(built, ["original", *check.layers]):
        # The default estimate_data: the inputs.
        fresh = IBA(copy_then, copy_then.conv2, loss="ce").estimate(images, progress=False)
        assert same_stats(iba.stats, fresh), name
        assert not same_stats(iba.stats, stale), name
    # Randomising conv2 and below changes the features, hence the statistics.
    assert not torch.allclose(built[3][0].stats.mean, built[0][0].stats.mean)
    assert torch.allclose(built[2][0].stats.mean, built[0][0].stats.mean)  # fc is above conv2

    data = blob_images(20, torch.Generator().manual_seed(2))[0]
    built = []
    randomization_check(iba_factory(built, stale), model, images, labels, layers=["conv1"],
                        estimate_data=[data[:8], data[8:]])
    for iba, copy_then in built:
        assert iba.stats.count == 20
        assert same_stats(iba.stats, IBA(copy_then, copy_then.conv2, loss="ce").estimate(data, progress=False))


def test_inverse_and_multilayer_iba_are_estimated_too(trained):
    model, images, labels = trained
    built = []

    def inverse(m):
        built.append((InverseIBA(m, m.conv2, loss="ce", steps=2, noise_draws=2), copy.deepcopy(m)))
        return built[-1][0]

    def multilayer(m):
        built.append((MultiLayerIBA(m, [m.conv1, m.conv2], loss="ce", steps=2, noise_draws=2),
                      copy.deepcopy(m)))
        return built[-1][0]

    for factory in (inverse, multilayer):
        randomization_check(factory, model, images, labels, layers=["conv1"])
    for method, copy_then in built:
        fresh = estimate_stats(copy_then, [copy_then.conv1, copy_then.conv2], images, progress=False)
        stats = method.stats if isinstance(method.stats, list) else [None, method.stats]
        assert all(s is None or same_stats(s, f) for s, f in zip(stats, fresh))


def test_the_callers_model_is_untouched_by_estimating(trained):
    model, images, labels = trained
    model = copy.deepcopy(model)
    model.conv1.weight.requires_grad_(False)  # a frozen stem, as fine-tuning leaves it
    state = {name: value.clone() for name, value in model.state_dict().items()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    randomization_check(iba_factory([], None), model, images, labels, layers=["conv2", "conv1"])
    assert all(torch.equal(value, state[name]) for name, value in model.state_dict().items())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert not flags["conv1.weight"] and flags["conv1.bias"]
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_estimate_data_is_checked_in_one_line(trained):
    model, images, labels = trained
    factory = iba_factory([], None)
    for bad, given in [(5, "int"), ("images", "str"), ({"image": images}, "dict")]:
        with pytest.raises(TypeError) as error:
            randomization_check(factory, model, images, labels, layers=["fc"], estimate_data=bad)
        assert str(error.value) == (
            "estimate_data: expected a tensor, a tuple of tensors or an iterable of batches "
            f"(a DataLoader, a list, a Dataset), got {given}"
        )
    with pytest.raises(ValueError, match=r"^estimate_data: expected None for a function .*got a value"):
        randomization_check(gradient, model, images, labels, layers=["fc"], estimate_data=images)
    with pytest.raises(ValueError, match=r"^estimate_data: expected data .*got None and inputs of 1 sample"):
        randomization_check(factory, model, images[:1], labels[:1], layers=["fc"])
    readout = lambda m: ReadoutIBA(m, m.conv2, [m.conv1], loss="ce")  # noqa: E731
    with pytest.raises(TypeError, match=r"^attribution_fn: .*ReadoutIBA.*pass a function"):
        randomization_check(readout, model, images, labels, layers=["fc"])
