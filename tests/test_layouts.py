"""The IBA family on the layouts of today's models: timm ViT / DeiT / registers / Swin / ConvNeXt, HuggingFace ViT.

Tiny configurations with random weights (nothing is downloaded). Every method
gives finite maps on the layer's patch grid, the same seed gives the same map,
and the model is left exactly as found; a token layer through
``reshape_transform`` gives the map of the same features presented as
``(N, C, h, w)``; the leading tokens are restricted but not drawn; bad layouts
are one line naming ``reshape_transform``.
"""

import os

import pytest
import torch
from torch import nn

from captum_iba import IBA, InverseIBA, MultiLayerIBA, ReadoutIBA, RegressionIBA, Speed, token_transform
from captum_iba._engine import find_layout

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = 32
FAST = dict(steps=2, noise_draws=2)


def _vit(name="vit_tiny_patch16_224", **extra):
    torch.manual_seed(0)
    options = dict(pretrained=False, img_size=SIZE, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=5)
    return timm.create_model(name, **{**options, **extra}).eval()


def _hf_vit():
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=5)
    model = transformers.ViTForImageClassification(config).eval()
    return model


# name -> (model factory, forward, layer, the other layers of a pyramid or the blocks, grid)
MODELS = {
    "timm ViT": (lambda: _vit(), lambda m: m, lambda m: m.blocks[1], lambda m: [m.blocks[0], m.blocks[1]], (4, 4)),
    "timm DeiT": (lambda: _vit(name="deit_tiny_distilled_patch16_224"), lambda m: m, lambda m: m.blocks[1],
                  lambda m: [m.blocks[0], m.blocks[1]], (4, 4)),
    "timm ViT registers": (lambda: _vit(reg_tokens=4, no_embed_class=True), lambda m: m, lambda m: m.blocks[1],
                           lambda m: [m.blocks[0], m.blocks[1]], (4, 4)),
    "timm Swin": (lambda: timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=SIZE, depths=(1, 1, 1, 1), embed_dim=16,
        num_heads=(1, 1, 1, 1), window_size=2, num_classes=5).eval(), lambda m: m, lambda m: m.layers[1],
        lambda m: [m.layers[0], m.layers[1], m.layers[2]], (4, 4)),
    "timm ConvNeXt": (lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=5).eval(),
                      lambda m: m, lambda m: m.stages[1], lambda m: [m.stages[0], m.stages[1]], (4, 4)),
    "HF ViT": (_hf_vit, lambda m: (lambda x: m(x).logits), lambda m: m.vit.layers[1],
               lambda m: [m.vit.layers[0], m.vit.layers[1]], (4, 4)),
}


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request):
    make, forward, layer, layers, grid = MODELS[request.param]
    torch.manual_seed(0)
    model = make()
    data = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return request.param, model, forward(model), layer(model), layers(model), grid, data


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()])


def _same(before, after):
    return (before[0].keys() == after[0].keys() and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
            and before[1:] == after[1:])


def test_every_method_maps_the_patch_grid_deterministically_and_leaves_the_model(setup):
    name, model, forward, layer, layers, grid, data = setup
    x, before = data[:2], _state(model)
    iba = IBA(forward, layer, loss="ce", **FAST)
    stats = iba.estimate(data, progress=False)
    inverse = InverseIBA(forward, layer, loss="ce", stats=stats, **FAST)
    regression = RegressionIBA(forward, layer, loss="deviation", stats=stats, **FAST)
    for method, target in ((iba, 1), (inverse, [0, 3]), (regression, 2)):
        bits = method.attribute(x, target=target, seed=0)
        assert bits.shape == (2, 1, *grid), (name, type(method).__name__)
        assert torch.isfinite(bits).all() and (bits >= 0).all() and bits.sum() > 0
        assert torch.equal(bits, method.attribute(x, target=target, seed=0))
    multi = MultiLayerIBA(forward, layers, loss="ce", threshold="top:0.5", **FAST)
    multi.estimate(data, progress=False)
    fine, per_layer = multi.attribute(x, target=1, seed=0, return_layer_maps=True)
    finest = max(m.shape[-2] * m.shape[-1] for m in per_layer)
    assert fine.shape[-2] * fine.shape[-1] == finest and torch.isfinite(fine).all()
    readout = ReadoutIBA(forward, layer, [layers[0], layer], loss="ce")
    readout.estimate(data, progress=False)
    readout.fit([(data, torch.arange(8) % 5)], epochs=1, seed=0, progress=False)
    assert readout.attribute(x, target=1).shape == (2, 1, *grid)
    assert _same(before, _state(model)), name


def test_the_layouts_found_for_each_model(setup):
    name, model, forward, layer, _, grid, data = setup
    iba = IBA(forward, layer, loss="ce")
    features, _ = iba.split().features((data[:1],), ())
    layout = find_layout(model, features)
    expected = {"timm ViT": "tokens (1 leading)", "timm DeiT": "tokens (2 leading)",
                "timm ViT registers": "tokens (5 leading)", "timm Swin": "NHWC", "timm ConvNeXt": "NCHW",
                "HF ViT": "tokens (1 leading)"}[name]
    assert layout.name == expected and layout.grid[1:] == grid
    # timm models trace (the prefix runs once); HuggingFace's do not, and run whole with hooks.
    assert iba.split().mode == ("hooks" if name.startswith("HF") else "fx")


class Tokens(nn.Module):
    """Patch tokens (no class token) through a per-token block, read by a head over the tokens."""

    def __init__(self, grid=(4, 4), width=6):
        super().__init__()
        torch.manual_seed(0)
        self.grid = grid
        self.embed = nn.Conv2d(3, width, 8, stride=8)
        self.block = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.head = nn.Linear(width, 3)

    def tokens(self, x):
        return self.embed(x).flatten(2).transpose(1, 2)  # (N, h*w, D)

    def forward(self, x):
        h = self.block(self.tokens(x))
        return self.head(torch.tanh(h).mean(1) + 0.5 * h[:, 3])


class Grid(nn.Module):
    """The same model with the block's output presented as a map (N, D, h, w)."""

    def __init__(self, tokens: Tokens):
        super().__init__()
        self.tokens, self.head = tokens, tokens.head
        self.block = _AsGrid(tokens.block, tokens.grid)

    def forward(self, x):
        grid = self.block(self.tokens.tokens(x))
        h = grid.flatten(2).transpose(1, 2)
        return self.head(torch.tanh(h).mean(1) + 0.5 * h[:, 3])


class _AsGrid(nn.Module):
    def __init__(self, block, grid):
        super().__init__()
        self.inner, self.grid = block, grid

    def forward(self, tokens):
        out = self.inner(tokens)
        return out.transpose(1, 2).reshape(out.shape[0], -1, *self.grid)


def test_a_token_layer_through_reshape_transform_is_the_same_features_as_a_map():
    tokens = Tokens().double().eval()
    grid = Grid(tokens).double().eval()
    data = torch.randn(16, 3, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = data[:3]
    options = dict(loss="ce", steps=4, noise_draws=3, beta=1.0)
    through = IBA(tokens, tokens.block, token_transform(0, (4, 4)), **options)
    through.estimate(data, progress=False)
    as_map = IBA(grid, grid.block, **options)
    as_map.estimate(data, progress=False)
    ours, lam = through.attribute(x, target=[0, 1, 2], seed=5, reduce="none", return_lambda=True)
    theirs = as_map.attribute(x, target=[0, 1, 2], seed=5, reduce="none")
    assert lam.shape == (3, 16, 6)  # lambda lives in the layer's own (N, L, D) layout
    assert ours.shape == theirs.shape == (3, 6, 4, 4) and ours.sum() > 0
    # Same features, same noise per (channel, cell), same smoothing on the grid: the same map.
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_leading_tokens_are_restricted_but_not_on_the_map():
    model = _vit()
    data = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    iba = IBA(model, model.blocks[1], loss="ce", steps=3, noise_draws=2, beta=1.0)
    stats = iba.estimate(data, progress=False)
    x = data[:2]
    bits, lam = iba.attribute(x, target=1, seed=0, reduce="none", return_lambda=True)
    assert lam.shape == (2, 17, 32) and bits.shape == (2, 32, 4, 4)
    # The class token's lambda was optimised like every other feature's (it starts at sigmoid(5)).
    assert (lam[:, 0] - torch.sigmoid(torch.tensor(5.0))).abs().max() > 1e-3
    # The map is the patch tokens' capacity, in (D, h, w): the class token is left out.
    with torch.no_grad():
        features = {}
        handle = model.blocks[1].register_forward_hook(lambda m, a, out: features.setdefault("f", out))
        model(x)
        handle.remove()
    f = features["f"]
    r = (f - stats.mean.float()) / stats.std(0.01).float()
    v = (1 - lam) ** 2
    kl = 0.5 * ((lam * r) ** 2 + v - 1 - torch.log(v.clamp(min=1e-8))) * stats.active_mask(0.01)
    expected = (kl / torch.log(torch.tensor(2.0)))[:, 1:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
    assert torch.allclose(bits, expected, rtol=1e-3, atol=1e-5)


class TupleBlock(nn.Module):
    def __init__(self, first):
        super().__init__()
        self.first = first
        self.linear = nn.Linear(6, 6)

    def forward(self, x):
        y = self.linear(x)
        return (y, None) if self.first else ("not a tensor", y)


class TupleNet(nn.Module):
    def __init__(self, first=True, length=17):
        super().__init__()
        torch.manual_seed(0)
        self.length = length
        self.embed = nn.Linear(3, 6)
        self.block = TupleBlock(first)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        tokens = self.embed(x.flatten(2).transpose(1, 2)[:, : self.length])
        out = self.block(tokens)
        y = out[0] if isinstance(out[0], torch.Tensor) else out[1]
        return self.head(y.mean(1))


def test_bad_layouts_are_one_line_naming_reshape_transform():
    x = torch.randn(2, 3, 5, 5)
    data = torch.randn(8, 3, 5, 5)
    # 17 tokens and nothing says how many lead the grid.
    model = TupleNet(first=True, length=17).eval()
    with pytest.raises(ValueError, match=r"^reshape_transform: the layer returns tokens \(N, 17, 6\) and the model "
                                         r"does not say how many lead"):
        IBA(model, model.block, loss="ce").estimate(data, progress=False)
    # A transform that does not fit the token count.
    with pytest.raises(ValueError, match=r"^reshape_transform: expected a function .* got one that raised"):
        IBA(model, model.block, token_transform(1, (3, 3)), loss="ce").estimate(data, progress=False)
    # The right transform: the first element of the tuple is the bottleneck's.
    good = IBA(model, model.block, token_transform(1, (4, 4)), loss="ce", **FAST)
    good.estimate(data, progress=False)
    assert good.attribute(x, target=0, seed=0).shape == (2, 1, 4, 4)
    # A transform of the wrong rank.
    with pytest.raises(ValueError, match=r"^reshape_transform: expected a \(N, C, h, w\) tensor .* got \(1, 17, 6\)"):
        IBA(model, model.block, lambda t: t, loss="ce").estimate(data, progress=False)
    # A transform that computes instead of rearranging.
    with pytest.raises(ValueError, match=r"^reshape_transform: expected a function that only selects and rearranges"):
        IBA(model, model.block, lambda t: 2 * token_transform(1, (4, 4))(t), loss="ce").estimate(data, progress=False)
    # A tuple whose first element is not the features.
    other = TupleNet(first=False).eval()
    with pytest.raises(ValueError, match=r"^layer: expected a module returning a tensor \(or a tuple whose first "
                                         r"element is one\), got a TupleBlock returning a tuple"):
        IBA(other, other.block, loss="ce").estimate(data, progress=False)
    # Channels-last memory format needs a (N, C, h, w) layer.
    with pytest.raises(ValueError, match=r"speed.channels_last=True is not possible here: channels_last needs a layer"):
        good.attribute(x, target=0, seed=0, speed=Speed(channels_last=True))
