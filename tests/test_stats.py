"""FeatureStats: exact running moments, active mask, persistence, estimation."""

import os

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from _toys import SmallCNN
from captum_iba import IBA, FeatureStats
from captum_iba.stats import estimate_stats


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 9), min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
)
def test_running_moments_equal_the_batch_moments(cuts, seed):
    data = torch.randn(sum(cuts) + 2, 3, 2, 2, generator=torch.Generator().manual_seed(seed)) * 3 + 1
    stats = FeatureStats()
    start = 0
    for size in cuts + [2]:
        stats.update(data[start : start + size])
        start += size
    assert stats.count == len(data)
    assert torch.allclose(stats.mean, data.double().mean(0), atol=1e-10)
    assert torch.allclose(stats.std(min_std=0.0), data.double().std(0, unbiased=True), atol=1e-10)


def test_std_clamp_and_active_mask():
    data = torch.zeros(100, 2, 1, 1)
    data[:5, 0] = 1.0  # channel 0 non-zero in 5% of the samples, channel 1 never
    stats = FeatureStats()
    stats.update(data)
    assert stats.std(min_std=0.5)[1].item() == 0.5
    assert stats.active_mask(0.01).flatten().tolist() == [True, False]
    assert stats.active_mask(0.05).flatten().tolist() == [False, False]  # "more than" the threshold


def test_update_rejects_another_shape_and_needs_two_samples():
    stats = FeatureStats()
    stats.update(torch.randn(1, 2, 3, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        stats.std()
    with pytest.raises(ValueError, match="do not match"):
        stats.update(torch.randn(4, 2, 4, 4))


def test_save_load_round_trip_is_exact(tmp_path):
    stats = FeatureStats()
    stats.update(torch.randn(7, 3, 4, 4))
    path = tmp_path / "stats.pt"
    stats.save(path)
    loaded = FeatureStats.load(path)
    assert loaded.count == stats.count
    for key in ("mean", "m2", "nonzero"):
        assert torch.equal(getattr(loaded, key), getattr(stats, key))
    assert os.listdir(tmp_path) == ["stats.pt"]  # no temp file left behind


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        FeatureStats.load(tmp_path / "missing.pt")
    stats = FeatureStats()
    stats.update(torch.randn(4, 2, 2, 2))
    good = tmp_path / "good.pt"
    stats.save(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable FeatureStats"):
        FeatureStats.load(truncated)
    other = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a FeatureStats file"):
        FeatureStats.load(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="not a readable FeatureStats"):
        FeatureStats.load(garbage)


class _Counter:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(lambda *args: setattr(self, "calls", self.calls + 1))


def test_estimation_stops_at_the_layer_and_after_n_samples():
    model = SmallCNN().train()
    head_calls = _Counter(model.head)
    batches = [(torch.randn(8, 3, 12, 12), torch.zeros(8)) for _ in range(5)]
    (stats,) = estimate_stats(model, [model.layer], batches, n_samples=20, progress=False)
    assert stats.count == 20  # the third batch is cut to fit
    assert head_calls.calls == 0  # nothing after the layer ran
    assert model.training  # restored
    with torch.no_grad():
        model.eval()
        expected = model.layer(model.stem(torch.cat([b[0] for b in batches])[:20]))
    assert torch.allclose(stats.mean, expected.double().mean(0), atol=1e-6)


def test_estimation_of_several_layers_in_one_pass():
    model = SmallCNN()
    stem_calls = _Counter(model.stem)
    data = [torch.randn(4, 3, 12, 12) for _ in range(3)]
    first, second = estimate_stats(model, [model.stem, model.layer], data, n_samples=12, progress=False)
    assert stem_calls.calls == 3  # one forward per batch, for both layers
    assert first.shape == (6, 12, 12) and second.shape == (6, 6, 6)


def test_estimation_accepts_datasets_of_dict_items():
    model = SmallCNN()
    items = [{"image": torch.randn(3, 12, 12), "labels": torch.zeros(2)} for _ in range(10)]
    dataset = torch.utils.data.TensorDataset(torch.randn(10, 3, 12, 12))  # yields 1-tuples
    (stats,) = estimate_stats(model, [model.layer], dataset, n_samples=10, progress=False)
    assert stats.count == 10
    (stats,) = estimate_stats(model, [model.layer], torch.utils.data.DataLoader(items, batch_size=4), 10, False)
    assert stats.count == 10


def test_estimation_bad_input():
    model = SmallCNN()
    with pytest.raises(ValueError, match="data: expected at least 2 samples to estimate feature statistics, got 0"):
        estimate_stats(model, [model.layer], [], progress=False)
    with pytest.raises(ValueError, match="n_samples"):
        estimate_stats(model, [model.layer], [torch.randn(4, 3, 8, 8)], n_samples=1, progress=False)
    with pytest.raises(TypeError, match="data must yield"):
        estimate_stats(model, [model.layer], ["not a batch"], progress=False)
    with pytest.raises(ValueError, match=r"reshape_transform: expected a layer output .*got \(N, 4\)"):
        IBA(model, model.head[-1], loss="ce").estimate([torch.randn(4, 3, 8, 8)], progress=False)
    with pytest.raises(ValueError, match="the forward pass never called"):
        estimate_stats(model, [nn.Conv2d(1, 1, 1)], [torch.randn(4, 3, 8, 8)], progress=False)
