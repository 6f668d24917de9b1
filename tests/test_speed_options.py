"""The engine's speed options (``Speed``: fuse, channels_last, precision, compile) and the buffered mixing.

The fused suffix computes the unfused suffix's function and leaves hooked
modules alone; each option keeps the maps within its stated tolerance of the
float32 default; the maps in float64 are the numbers the loop gave before the
engine was taken out of it; the compiled suffix is compiled once per (model,
layer, shapes); channels_last is refused where the suffix calls ``.view``; the
model is left exactly as found.
"""

import importlib.util
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _toys import SmallCNN, tiny_densenet
from captum_iba import IBA, InverseIBA, Speed
from captum_iba._engine import TOLERANCES, Engine, channels_last_refusal, compiled_count, noisy_features
from captum_iba._engine.fuse import fuse_suffix
from captum_iba.stats import estimate_stats

SIZE = 32


def _data(n, seed):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def densenet():
    model = tiny_densenet(n_outputs=4)
    layer = model.features.denseblock2
    stats = estimate_stats(model, [layer], [_data(16, 0)], n_samples=16, progress=False)[0]
    return model, layer, stats


def _relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _map(model, layer, stats, beta, method=IBA, relu=False, **speed):
    iba = method(model, layer, stats=stats, steps=4, noise_draws=3, beta=beta, loss="ce", relu=relu)
    return iba.attribute(_data(2, 1), target=[1, 3], seed=0, speed=Speed(**speed))


@pytest.mark.parametrize("beta", [10.0, 0.01])
@pytest.mark.parametrize(
    "options, tolerance",
    [
        ({"channels_last": True}, TOLERANCES["fp32"]),
        ({"channels_last": "auto"}, TOLERANCES["fp32"]),
        ({"precision": "bf16"}, TOLERANCES["bf16"]),
        ({"compile": "aot_eager"}, TOLERANCES["fp32"]),
        ({"compile": "aot_eager", "precision": "bf16", "channels_last": True}, TOLERANCES["bf16"]),
    ],
)
def test_each_option_keeps_the_maps_within_its_tolerance(densenet, options, tolerance, beta):
    model, layer, stats = densenet
    reference = _map(model, layer, stats, beta)
    bits = _map(model, layer, stats, beta, **options)
    assert reference.abs().max() > 0
    assert _relative(bits, reference) <= tolerance


# The maps of tiny_densenet (float64, 32 px, dense block 2) that the loop gave before the engine was
# taken out of it (its mixing then rounded as eps + lambda * (F - eps)): rows = images, targets 1 and 3.
PINNED = {
    IBA: [0.006758415, 0.008870594, 0.0075041532, 0.0099899826, 0.0096798169, 0.011173694, 0.0070953098,
          0.0085401275, 0.0098376467, 0.0099571163, 0.0115606051, 0.0071045969, 0.0096570187, 0.0089553045,
          0.0072426478, 0.0066870796, 0.0112180049, 0.0083260772, 0.007750614, 0.0069271662, 0.0076201395,
          0.0078212099, 0.0085590419, 0.0099953143, 0.0080749936, 0.0083763274, 0.0085152992, 0.0077595218,
          0.0080752247, 0.0097989394, 0.0086607717, 0.0088043461],
    InverseIBA: [0.0067250458, 0.0088403513, 0.0074806836, 0.0099395289, 0.0096200855, 0.0111459342,
                 0.007068261, 0.0085060307, 0.0097913925, 0.0098729383, 0.0115026114, 0.0070746323, 0.009586328,
                 0.008900872, 0.0071960267, 0.0066483073, 0.01117152, 0.0083217934, 0.0077475799, 0.0069235367,
                 0.0076219736, 0.0078192983, 0.0085555423, 0.0100005877, 0.0080733763, 0.0084026782,
                 0.0085261526, 0.0077754371, 0.0080840221, 0.0098143029, 0.008671579, 0.0088192126],
}


@pytest.mark.parametrize("method", [IBA, InverseIBA])
@pytest.mark.parametrize("fuse", [True, False])
def test_the_maps_are_the_pinned_numbers_in_float64(method, fuse):
    model = tiny_densenet(n_outputs=4).double().eval()
    layer = model.features.denseblock2
    data = lambda n, seed: torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed),  # noqa: E731
                                       dtype=torch.float64)
    stats = estimate_stats(model, [layer], [data(32, 0)], n_samples=32, progress=False)[0]
    bits = method(model, layer, stats=stats, steps=10, noise_draws=3, loss="ce", speed=Speed(fuse=fuse)).attribute(
        data(2, 1), target=[1, 3], seed=0)
    assert torch.allclose(bits.flatten(), torch.tensor(PINNED[method], dtype=torch.float64), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("channels_last", [False, True])
def test_noisy_features_gradient_and_buffer_reuse(channels_last):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(4, 3, 4, 5, generator=g, dtype=torch.float64)
    active = torch.rand(3, 4, 5, generator=g) > 0.2
    lam = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    for relu in (False, True):
        mix = lambda lam: noisy_features(features, lam, noise, active, relu, channels_last=channels_last)  # noqa: E731
        assert torch.autograd.gradcheck(mix, (lam,))
        assert mix(lam).is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    buffer = torch.empty(2 * 4 * 60, dtype=torch.float64)
    weights = torch.randn(8, 3, 4, 5, generator=g, dtype=torch.float64)
    for _ in range(2):  # the same buffer twice; the suffix may even modify Z in place
        z = noisy_features(features, lam, noise, active, channels_last=channels_last, out=buffer)
        (grad,) = torch.autograd.grad((z.relu_() * weights).sum(), [lam])
        fresh = noisy_features(features, lam, noise, active, channels_last=channels_last)
        (expected,) = torch.autograd.grad((fresh.relu() * weights).sum(), [lam])
        assert torch.allclose(grad, expected)


class ViewAfterConv(nn.Module):
    """A head that flattens with ``.view``: breaks on a channels_last tensor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.conv = nn.Conv2d(4, 2, 3, padding=1)
        self.head = nn.Linear(2 * (SIZE // 2) ** 2, 3)

    def forward(self, x):
        h = self.conv(torch.relu(self.layer(torch.relu(self.stem(x)))))
        return self.head(h.view(h.shape[0], -1))


def test_channels_last_is_refused_for_a_view_after_a_conv():
    model = ViewAfterConv().eval()
    stats = estimate_stats(model, [model.layer], [_data(8, 0)], n_samples=8, progress=False)[0]
    iba = IBA(model, model.layer, stats=stats, steps=2, noise_draws=2, loss="ce")
    assert iba.split().mode == "fx"
    features = torch.zeros(1, 4, SIZE // 2, SIZE // 2)
    assert ".view" in channels_last_refusal(iba.split(), features, channels_first=True)
    with pytest.raises(ValueError, match=r"channels_last=True .*\.view"):
        iba.attribute(_data(1, 1), target=0, seed=0, speed=Speed(channels_last=True))
    auto = iba.attribute(_data(1, 1), target=0, seed=0, speed=Speed(channels_last="auto"))  # falls back
    assert torch.equal(auto, iba.attribute(_data(1, 1), target=0, seed=0))
    cnn = SmallCNN()
    assert channels_last_refusal(IBA(cnn, cnn.layer, loss="ce").split(), features, channels_first=True) is None
    assert "(N, C, h, w)" in channels_last_refusal(iba.split(), features, channels_first=False)


def test_the_compiled_suffix_is_compiled_once_per_model_layer_and_shape(densenet):
    dynamo = pytest.importorskip("torch._dynamo")
    model, layer, stats = densenet
    dynamo.reset()
    graphs = dynamo.utils.counters["stats"]

    def run(n, iba=None):
        iba = iba or IBA(model, layer, stats=stats, steps=2, noise_draws=2, speed=Speed(compile="aot_eager"), loss="ce")
        iba.attribute(_data(n, 1), target=0, seed=0)
        return graphs["unique_graphs"]

    first = run(2)
    assert first >= 1 and compiled_count(model) >= 1
    iba = IBA(model, layer, stats=stats, steps=2, noise_draws=2, speed=Speed(compile="aot_eager"), loss="ce")
    assert run(2, iba) == first and run(2, iba) == first  # another instance, another call: reused
    assert run(3) > first  # another batch shape compiles again


def _state(model):
    return (
        [(name, p.detach().clone(), p.dtype, p.stride(), p.requires_grad) for name, p in model.named_parameters()],
        [(name, b.clone(), b.dtype, b.stride()) for name, b in model.named_buffers()],
        [m.training for m in model.modules()],
    )


@pytest.mark.parametrize(
    "options",
    [{"channels_last": True}, {"precision": "bf16"}, {"compile": "aot_eager", "precision": "bf16", "channels_last": True}],
)
def test_the_model_is_left_exactly_as_found(options):
    model = tiny_densenet(n_outputs=4, seed=1).train()
    model.classifier.weight.requires_grad_(False)  # a mixed state, restored as it was
    layer = model.features.denseblock2
    with torch.no_grad():
        stats = estimate_stats(model, [layer], [_data(8, 0)], n_samples=8, progress=False)[0]
    before = _state(model)
    IBA(model, layer, stats=stats, steps=2, noise_draws=2, speed=Speed(**options), loss="ce").attribute(
        _data(1, 1), target=0, seed=0)
    after = _state(model)
    assert after[2] == before[2]
    for old, new in zip(before[0] + before[1], after[0] + after[1]):
        assert old[0] == new[0] and torch.equal(old[1], new[1]) and old[2:] == new[2:]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"channels_last": "yes"}, "speed.channels_last: expected True, False or 'auto', got 'yes'"),
        ({"precision": "fp8"}, "speed.precision: expected one of"),
        ({"compile": "no-such-backend"}, "speed.compile: expected one of"),
        ({"precision": "fp16"}, "CUDA"),
        ({"fuse": "yes"}, "speed.fuse: expected True or False, got 'yes'"),
    ],
)
def test_bad_speed_options_are_refused_with_their_name(densenet, options, message):
    model, layer, stats = densenet
    with pytest.raises(ValueError, match=message):
        _map(model, layer, stats, 10.0, **options)
    with pytest.raises(ValueError, match=r"speed: expected one of \['default', 'fast'\]"):
        IBA(model, layer, loss="ce", speed="quick")


def test_compile_needs_the_fx_split(densenet):
    model, layer, stats = densenet
    iba = IBA(model, layer, stats=stats, steps=2, noise_draws=2, speed=Speed(split="hooks", compile="aot_eager"),
              loss="ce")
    with pytest.raises(ValueError, match="compile needs the fx split"):
        iba.attribute(_data(1, 1), target=0)


def _benchmark():
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("speed_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_device_selection_without_a_gpu(monkeypatch):
    speed = _benchmark()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert speed.pick_device().type == "cpu"
    with pytest.raises(SystemExit, match="no CUDA"):
        speed.pick_device("cuda")
    assert "precision=fp16" in speed.variants(torch.device("cuda"))
    assert "precision=bf16" in speed.variants(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert speed.pick_device().type == "cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_and_channels_last_on_cuda_stay_within_tolerance():
    model = tiny_densenet(n_outputs=4).cuda()
    layer = model.features.denseblock2
    stats = estimate_stats(model, [layer], [_data(16, 0).cuda()], n_samples=16, progress=False)[0]
    iba = IBA(model, layer, stats=stats, steps=4, noise_draws=3, loss="ce")
    x = _data(2, 1).cuda()
    reference = iba.attribute(x, target=0, seed=0)
    assert _relative(iba.attribute(x, target=0, seed=0, speed=Speed(channels_last=True)), reference) <= TOLERANCES["fp32"]
    assert _relative(iba.attribute(x, target=0, seed=0, speed=Speed(precision="fp16")), reference) <= TOLERANCES["fp16"]
    assert _relative(iba.attribute(x, target=0, seed=0, speed="fast"), reference) <= TOLERANCES["bf16"]


def _fused_and_plain(model, layer, x):
    """Outputs of the fused suffix (after its folded leading affine) and of the plain suffix, on random Z."""
    split = IBA(model, layer, loss="ce").split()
    features, context = split.features((x,), ())
    z = torch.randn(features.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    suffix, leading = fuse_suffix(split, pool_sides=tuple(features.shape[2:]))
    y = z if leading is None else leading(z)
    return split.run(suffix, y, context), split.outputs(z, context), suffix, leading


@pytest.mark.parametrize(
    "make, layer, folded",
    [
        # After denseblock2: transition2 = BN, ReLU, 1x1 conv, pool; the pool moves
        # before the conv and all three ahead of it fold into the mixing.
        (lambda: tiny_densenet(n_outputs=4), "features.denseblock2", (True, 2)),
        (lambda: tiny_densenet(n_outputs=4), "features.denseblock3", (True, 2)),
        (lambda: tiny_densenet(n_outputs=4), "features.transition1", None),  # a dense layer follows: its BN has two users
        (lambda: tiny_densenet(n_outputs=4), "features.denseblock4", (True, 1)),  # norm5, relu, global pool
        (SmallCNN, "layer", None),
    ],
)
def test_the_fused_suffix_computes_the_plain_suffix(make, layer, folded):
    model = make().double().eval()  # as the attribution runs it
    fused, plain, suffix, leading = _fused_and_plain(model, model.get_submodule(layer), _data(3, 2).double())
    assert torch.allclose(fused, plain, rtol=1e-10, atol=1e-12)
    assert (None if leading is None else (leading.relu, leading.pool)) == folded
    # Every BatchNorm of the suffix became a multiply-add: none is called as a module any more.
    called = [suffix.get_submodule(n.target) for n in suffix.graph.nodes if n.op == "call_module"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in called)


def test_a_hooked_module_is_not_rewritten_and_its_hook_still_fires(densenet):
    model, layer, stats = densenet
    norm = model.features.transition2.norm
    calls = []
    handle = norm.register_forward_hook(lambda *a: calls.append(1))
    try:
        fused, plain, suffix, leading = _fused_and_plain(model, layer, _data(2, 2))
        assert leading is None and len(calls) == 2  # the fused and the plain suffix both ran it
        assert torch.allclose(fused, plain, rtol=1e-5, atol=1e-6)
        counts = []
        for fuse in (True, False):
            calls.clear()
            _map(model, layer, stats, 10.0, fuse=fuse)
            counts.append(len(calls))
        assert counts[0] == counts[1] >= 4  # at least once per step, as unfused
    finally:
        handle.remove()
    _, _, _, leading = _fused_and_plain(model, layer, _data(2, 2))
    assert leading is not None  # the hook gone, the fold is back (another cache entry)


@pytest.mark.parametrize("beta", [10.0, 0.01])
@pytest.mark.parametrize("method, relu", [(IBA, False), (IBA, True), (InverseIBA, False)])
def test_fused_maps_stay_within_the_float32_tolerance(densenet, method, relu, beta):
    model, layer, stats = densenet
    fused = _map(model, layer, stats, beta, method, relu=relu)
    plain = _map(model, layer, stats, beta, method, relu=relu, fuse=False)
    assert plain.abs().max() > 0
    assert _relative(fused, plain) <= TOLERANCES["fp32"]


def test_the_pooled_mixing_is_the_pooled_mix_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 3, 4, 6, generator=g, dtype=torch.float64)
    lam = torch.rand(2, 3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    buffer = torch.empty(2 * 3 * 72, dtype=torch.float64)
    weights = torch.randn(6, 3, 2, 3, generator=g, dtype=torch.float64)
    for relu in (False, True):
        pooled = lambda lam: noisy_features(features, lam, noise, None, relu, pool=2, out=buffer)  # noqa: E731
        assert torch.autograd.gradcheck(pooled, (lam,))
        (grad,) = torch.autograd.grad((pooled(lam) * weights).sum(), [lam])
        unpooled = F.avg_pool2d(noisy_features(features, lam, noise, None, relu), 2)
        (expected,) = torch.autograd.grad((unpooled * weights).sum(), [lam])
        assert torch.allclose(pooled(lam), unpooled) and torch.allclose(grad, expected)
    with pytest.raises(ValueError, match=r"pool=4 needs a contiguous 4-D Z whose sides \(4, 6\)"):
        noisy_features(features, lam, noise, pool=4)
    with pytest.raises(ValueError, match="pool=2"):
        noisy_features(features, lam, noise, pool=2, channels_last=True)


def test_a_compiled_suffix_gets_the_graph_as_traced(densenet):
    model, layer, stats = densenet
    iba = IBA(model, layer, stats=stats, loss="ce")
    features, context = iba.split().features((_data(1, 1),), ())
    active = stats.active_mask(0.01)
    fused = Engine(iba.split(), Speed(), features, context, 2, active, relu=False, channels_first=True)
    assert fused.leading is not None
    compiled = Engine(iba.split(), Speed(compile="aot_eager"), features, context, 2, active, relu=False,
                      channels_first=True)
    assert compiled.leading is None and compiled.suffix is iba.split().suffix


def test_the_fast_preset_is_compile_bf16_and_channels_last_where_allowed(densenet):
    model, layer, stats = densenet
    assert Speed() == IBA(model, layer, loss="ce").options.speed
    fast = IBA(model, layer, loss="ce", speed="fast").options.speed
    assert (fast.compile, fast.precision, fast.channels_last, fast.fuse) == (True, "bf16", "auto", True)
