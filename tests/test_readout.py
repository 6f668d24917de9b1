"""ReadoutIBA: ground truth on toys, the training data forms, save/load, the model left alone, errors.

The toys read channels of the feature map inside a known region (tests/_toys.py);
the readout network sees the feature map itself (1x1 convolutions: it judges
each location by its own features), so the training and test findings are
drawn where the model reads. A flipped loss sign, a readout that ignores the
target or the capacity term, or a map from the wrong lambda fails these tests.
"""

import os

import pytest
import torch
from captum.attr import LayerAttribution
from torch import nn

from _toys import RegionModel, SmallCNN, background, region_mask
from captum_iba.attr.readout import ReadoutIBA
from captum_iba.bottleneck import capacity, to_bits

SIZE = 16
LEFT = region_mask(SIZE, 2, 2, 6)


def _findings(n, seed):
    """Background with a finding of random strength (2 to 5) in every channel inside LEFT."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, SIZE, SIZE, generator=generator)
    x[:, :, LEFT] += (2 + 3 * torch.rand(n, generator=generator))[:, None, None]
    return x


class TwoReaders(nn.Module):
    """Three outputs: 0 constant, 1 reads channel 0 in LEFT, 2 reads channel 1 in LEFT."""

    def __init__(self, gain: float = 10.0):
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.features.bias.zero_()
        self.gain = gain

    def forward(self, x):
        means = self.features(x)[:, :2, LEFT].mean(2)
        return torch.cat([torch.zeros_like(means[:, :1]), self.gain * (means - 1.0)], 1)


def _readout(model, **options):
    # beta 10: the toys' model losses fall to about 0 where the model reads, unlike the phantom's
    # (the readout's default beta 1 is tuned there).
    readout = ReadoutIBA(model, model.features, [model.features], **{"loss": "ce", "beta": 10.0, **options})
    readout.estimate([background(64, size=SIZE)], progress=False)
    return readout


@pytest.fixture(scope="module")
def region():
    model = RegionModel([LEFT], gain=10.0)
    readout = _readout(model)
    history = readout.fit([_findings(16, seed) for seed in range(8)], epochs=30, target=1, lr=1e-2,
                          seed=0, progress=False)
    return model, readout, history


def test_trained_readout_puts_the_bits_where_the_model_reads(region):
    model, readout, history = region
    assert history[-1]["loss"] < 0.2 * history[0]["loss"]
    bits = readout.attribute(_findings(8, seed=100), target=1, reduce="none")  # held-out inputs
    per_location = bits.sum(1)
    assert per_location[:, LEFT].sum() >= 0.85 * per_location.sum()
    assert per_location[:, LEFT].mean() > 1.0  # real information, not a vanishing map
    # The model reads channel 0 only: the readout learnt to drop the others there.
    assert bits[:, 1:].sum() <= 0.05 * bits[:, 0].sum()


def test_readout_is_conditioned_on_the_target():
    # Multi-hot labels from dict batches: every image trains both findings 1 and 2.
    model = TwoReaders()
    readout = _readout(model, loss="bce")
    data = [{"image": _findings(8, seed), "labels": torch.tensor([[0.0, 1.0, 1.0]]).expand(8, 3)}
            for seed in range(8)]
    readout.fit(data, epochs=30, lr=1e-2, seed=0, progress=False)
    x = _findings(4, seed=100)
    first = readout.attribute(x, target=1, reduce="none")[:, :, LEFT].sum((0, 2))
    second = readout.attribute(x, target=2, reduce="none")[:, :, LEFT].sum((0, 2))
    assert first[0] > 10 * first[1] and second[1] > 10 * second[0]
    assert first[0] > 0.25 * LEFT.sum() * 4  # real information, not a vanishing map


def test_map_is_capacity_at_the_predicted_lambda_and_attribute_is_captum_like(region):
    model, readout, _ = region
    assert isinstance(readout, LayerAttribution)
    x = _findings(3, seed=101)
    bits, lam = readout.attribute(x, target=1, reduce="none", return_lambda=True)
    stats = readout.stats
    expected = to_bits(capacity(
        model.features(x).detach(), lam, stats.mean.float(), stats.std(0.01).float(), stats.active_mask(0.01)
    ))
    assert torch.allclose(bits, expected, rtol=1e-5, atol=1e-5)
    summed = readout.attribute(x, target=1)
    assert summed.shape == (3, 1, SIZE, SIZE) and torch.allclose(summed, bits.sum(1, keepdim=True))
    # Per sample, deterministic, and the target forms agree.
    alone = torch.cat([readout.attribute(x[i : i + 1], target=1) for i in range(3)])
    assert torch.allclose(summed, alone, atol=1e-5)
    assert torch.equal(summed, readout.attribute(x, target=[1, 1, 1]))
    assert torch.equal(summed, readout.attribute(x, target=torch.tensor(1)))
    with torch.no_grad():
        assert torch.equal(summed, readout.attribute(x, target=1))


def test_the_batch_forms_and_target_forms_train_the_same_readout():
    model = RegionModel([LEFT], gain=10.0)
    inputs = [_findings(8, seed) for seed in range(3)]
    n = 8 * len(inputs)
    forms = {
        "tensors, target int": (inputs, 1),
        "tensors, target per sample": (inputs, [1] * n),
        "(inputs, class indices)": ([(x, torch.ones(8, dtype=torch.long)) for x in inputs], None),
        "dicts, multi-hot": ([{"image": x, "labels": torch.tensor([[0.0, 1.0]]).expand(8, 2)} for x in inputs],
                             None),
    }
    x = _findings(2, seed=100)
    maps = {}
    for name, (data, target) in forms.items():
        readout = _readout(model)
        readout.fit(data, epochs=2, target=target, lr=1e-2, seed=3, progress=False)
        maps[name] = readout.attribute(x, target=1)
    first = maps.pop("tensors, target int")
    assert all(torch.equal(first, m) for m in maps.values()), "every form must give the same training rows"
    # Multi-hot rows of images without a positive label are skipped.
    readout = _readout(model)
    mixed = [{"image": inputs[0], "labels": torch.tensor([[0.0, 1.0]] * 4 + [[0.0, 0.0]] * 4)}]
    assert readout.fit(mixed, epochs=1, seed=0, progress=False)[0]["rows"] == 4


def test_save_load_round_trips_exactly_and_training_resumes(region, tmp_path):
    model, readout, _ = region
    path = tmp_path / "readout.pt"
    readout.save(path)
    assert os.listdir(tmp_path) == ["readout.pt"]  # no temporary file left behind
    loaded = ReadoutIBA.load(path, model, model.features, [model.features])
    x = _findings(3, seed=102)
    assert torch.equal(readout.attribute(x, target=1), loaded.attribute(x, target=1))
    assert loaded.options == readout.options and loaded.epochs_trained == readout.epochs_trained == 30
    assert loaded.history == readout.history
    # Adam's state travels too: one more epoch on both gives the same readout.
    more = [_findings(16, 50)]
    copy = ReadoutIBA.load(path, model, model.features, [model.features])
    copy.fit(more, target=1, lr=1e-2, seed=9, progress=False)
    loaded.fit(more, target=1, lr=1e-2, seed=9, progress=False)
    assert torch.equal(copy.attribute(x, target=1), loaded.attribute(x, target=1))
    assert not torch.equal(copy.attribute(x, target=1), readout.attribute(x, target=1))


def test_load_errors(region, tmp_path):
    model, readout, _ = region
    with pytest.raises(FileNotFoundError, match="not found"):
        ReadoutIBA.load(tmp_path / "missing.pt", model, model.features, [model.features])
    path = tmp_path / "readout.pt"
    readout.save(path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        ReadoutIBA.load(truncated, model, model.features, [model.features])
    other = tmp_path / "other.pt"
    torch.save({"format": "something else"}, other)
    with pytest.raises(ValueError, match="not a ReadoutIBA file"):
        ReadoutIBA.load(other, model, model.features, [model.features])
    cnn = SmallCNN(n_outputs=4).eval()
    with pytest.raises(ValueError, match="trained with layer and readout_layers"):
        ReadoutIBA.load(path, cnn, cnn.layer, [cnn.stem])


def _state(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
        [p.grad for p in model.parameters()],
    )


@pytest.mark.parametrize("wrapped", [False, True])
def test_model_is_left_exactly_as_found(wrapped):
    model = SmallCNN(n_outputs=4).train()
    forward = (lambda x: model(x)) if wrapped else model
    model.head[2].eval()  # a mixed state must survive too
    model.stem[0].weight.requires_grad_(False)
    before = _state(model)
    readout = ReadoutIBA(forward, model.layer, [model.stem, model.layer], loss="ce")
    readout.estimate([torch.randn(8, 3, 12, 12)], progress=False)
    readout.fit([(torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 3]))], epochs=2, seed=0, progress=False)
    readout.attribute(torch.randn(2, 3, 12, 12), target=1)
    after = _state(model)
    assert before[0] == after[0] and before[1] == after[1] and before[3] == after[3]
    assert all(torch.equal(before[2][k], after[2][k]) for k in before[2])
    assert all(g is None for g in after[4])

    def failing_loss(outputs, target):
        raise RuntimeError("loss failed")

    readout = ReadoutIBA(forward, model.layer, [model.layer], loss=failing_loss)
    readout.estimate([torch.randn(8, 3, 12, 12)], progress=False)
    with pytest.raises(RuntimeError, match="loss failed"):
        readout.fit([torch.randn(4, 3, 12, 12)], target=0, progress=False)
    after = _state(model)
    assert before[0] == after[0] and before[1] == after[1] and before[3] == after[3]


def test_bad_input():
    model = SmallCNN(n_outputs=4).eval()
    stranger = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match=r"layer\[0\]: expected a submodule of the model"):
        ReadoutIBA(model, stranger, [model.layer], loss="ce")
    with pytest.raises(ValueError, match=r"readout_layers\[1\]: expected a submodule of the model"):
        ReadoutIBA(model, model.layer, [model.stem, stranger], loss="ce")
    with pytest.raises(ValueError, match="non-empty list"):
        ReadoutIBA(model, model.layer, [], loss="ce")
    with pytest.raises(ValueError, match="non-empty list"):
        ReadoutIBA(model, model.layer, model.stem, loss="ce")
    with pytest.raises(ValueError, match="distinct"):
        ReadoutIBA(model, model.layer, [model.stem, model.stem], loss="ce")
    with pytest.raises(ValueError, match="alpha_bound"):
        ReadoutIBA(model, model.layer, [model.layer], alpha_bound=5.0, loss="ce")
    with pytest.raises(ValueError, match="hidden"):
        ReadoutIBA(model, model.layer, [model.layer], hidden=(0, 4), loss="ce")
    with pytest.raises(ValueError, match="readout_stats: expected one FeatureStats per readout layer"):
        ReadoutIBA(model, model.layer, [model.layer], readout_stats=[], loss="ce")
    # A readout layer must output a grid of features.
    with pytest.raises(ValueError, match=r"reshape_transform: .*got \(N, 4\)"):
        ReadoutIBA(model, model.layer, [model.head[-1]], loss="ce").estimate([torch.randn(4, 3, 12, 12)], progress=False)

    readout = ReadoutIBA(model, model.layer, [model.stem, model.layer], loss="ce")
    x = torch.randn(4, 3, 12, 12)
    with pytest.raises(ValueError, match="stats: expected feature statistics, got none"):
        readout.fit([x], target=0, progress=False)
    readout.estimate([x], progress=False)
    with pytest.raises(ValueError, match="not trained"):
        readout.attribute(x, target=0)
    with pytest.raises(ValueError, match="not trained"):
        readout.save("unused.pt")
    with pytest.raises(ValueError, match="epochs"):
        readout.fit([x], epochs=0, target=0, progress=False)
    with pytest.raises(ValueError, match="re-iterable"):
        readout.fit(iter([x]), epochs=2, target=0, progress=False)
    with pytest.raises(TypeError, match="data must yield"):
        readout.fit(["not a batch"], target=0, progress=False)
    with pytest.raises(ValueError, match="labels must be"):
        readout.fit([(x, torch.zeros(4, 2, 2))], progress=False)
    with pytest.raises(ValueError, match="target: expected an output index"):
        readout.fit([x], progress=False)
    with pytest.raises(ValueError, match=r"target indices must lie in \[-4, 3\]"):
        readout.fit([x], target=4, progress=False)
    readout.fit([x], target=0, seed=0, progress=False)
    with pytest.raises(ValueError, match=r"target indices must lie in \[-4, 3\]"):
        readout.attribute(x, target=[0, 1, 2, 7])
    with pytest.raises(TypeError, match="integer indices"):
        readout.attribute(x, target=torch.tensor([0.5] * 4))
    with pytest.raises(ValueError, match="one entry per sample"):
        readout.attribute(x, target=[0, 1])
    with pytest.raises(ValueError, match="target: expected an output index"):
        readout.attribute(x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        readout.attribute(torch.full((1, 3, 12, 12), float("nan")), target=0)
    with pytest.raises(ValueError, match="reduce"):
        readout.attribute(x, target=0, reduce="mean")
    with pytest.raises(ValueError, match="stats: expected statistics of the layer's output"):
        readout.attribute(torch.randn(1, 3, 16, 16), target=0)


def test_first_pass_cache_trains_the_same_readout_with_one_first_pass():
    model = TwoReaders()
    data = [{"image": _findings(8, seed), "labels": torch.tensor([[0.0, 1.0, 1.0]] * 4 + [[0.0, 0.0, 1.0]] * 4)}
            for seed in range(3)]
    calls = []
    model.features.register_forward_hook(lambda *_: calls.append(1))
    trained = {}
    for cache in (False, True):
        readout = _readout(model, loss="bce")
        calls.clear()
        history = readout.fit(data, epochs=3, lr=1e-2, seed=4, cache=cache, progress=False)
        trained[cache] = (readout.network.state_dict(), [h["loss"] for h in history], len(calls))
    (uncached, losses, passes), (cached, cached_losses, cached_passes) = trained[False], trained[True]
    assert all(torch.equal(uncached[k], cached[k]) for k in uncached) and losses == cached_losses
    # The model ran in the first epoch only (and twice once: the check that the traced parts reproduce it).
    assert (cached_passes - 2) * 3 == passes - 2
    # A shuffling DataLoader yields other batches every epoch: "auto" leaves the cache off.
    loader = torch.utils.data.DataLoader(torch.cat([d["image"] for d in data]), batch_size=8, shuffle=True)
    readout, calls[:] = _readout(model, loss="bce"), []
    readout.fit(loader, epochs=2, target=1, seed=0, progress=False)
    assert len(calls) == 2 * (passes - 2) // 3 + 2
    with pytest.raises(ValueError, match="cache: expected True, False or 'auto'"):
        readout.fit(data, cache="yes", progress=False)
