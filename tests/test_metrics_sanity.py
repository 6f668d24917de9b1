"""The model-parameter randomisation test on a small trained CNN."""

import pytest
import torch
from torch import nn

from captum_iba.metrics import randomization_check

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
