"""Seconds per IBA map: the reference loop, today's loop, the speed options, the floors, the limits.

DenseNet-121 at 224 px with 8 sigmoid outputs (random weights, nothing
downloaded), the bottleneck after ``features.denseblock3``, 10 steps x 10
noise draws (the paper's setting).

Rows (each the median of ``--repeats`` interleaved repeats, s per map):

* naive: the reference implementation's way -- one image at a time, the whole
  network forward and backward at every step, parameters requiring grad;
* today: the batched ``IBA.attribute`` loop as issue 15 measured it
  (contiguous float32 suffix as traced, ``Z`` formed with ``F - eps`` per draw);
* the variants of ``IBA.attribute`` on the same batch: the default (the fused
  suffix), ``fuse=False`` (last round's default: buffer reuse only), and the
  ``channels_last`` / ``compile`` / ``precision`` options;
* floors: ``steps`` x forward + backward of the network after the layer
  alone on the ``images x draws`` rows: as traced, contiguous float32
  (today's floor), fused float32 (the default's), channels-last float32, and
  fused channels-last under bf16 autocast -- what a loop must at least compute
  in that form;
* FLOP limits: the suffix's forward + backward FLOPs per map
  (``FlopCounterMode``) over this machine's measured fp32 / bf16 (fp16 on a
  GPU) matmul throughput.

The map differences are against today's loop (float32, same seed), as the
largest absolute difference over the largest map value, at beta 10 and at
``--small-beta`` (0.01: the model loss dominates, maps of hundreds of bits).
float32's own spread is printed beside them: today's loop at one thread
against ``torch.get_num_threads()`` threads, and one image at a time against
the batch -- the same code, summing in another order.

Run:  .venv/bin/python benchmarks/speed.py            (--quick: 64 px, 2 steps, 1 repeat)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from captum_iba import IBA
from captum_iba.attr import _base
from captum_iba.bottleneck import capacity, lambda_from_alpha, mean_capacity
from captum_iba.split import frozen_model
from captum_iba.stats import FeatureStats
from captum_iba.suffix import SuffixRunner


def pick_device(name=None) -> torch.device:
    """``name`` if given (``cuda`` without a GPU is an error), else cuda when present."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return device


def variants(device: torch.device) -> dict:
    """The IBA options timed on ``device``: name -> attribute() keywords."""
    reduced = reduced_name(device)
    return {
        "default": {},
        "fuse=False (last round's default)": {"fuse": False},
        "channels_last": {"channels_last": True},
        "compile": {"compile": True},
        f"precision={reduced}": {"precision": reduced},
        f"fast: compile + {reduced} + channels_last": {"compile": True, "precision": reduced, "channels_last": True},
    }


def synthetic_stats(model, layer, size, device, n=16) -> FeatureStats:
    """Statistics from random inputs: the speed does not depend on their values."""
    iba = IBA(model, layer)
    data = [torch.randn(8, 3, size, size, device=device) for _ in range(n // 8)]
    return iba.estimate(data, n_samples=n, progress=False)


def naive_map(model, layer, stats, image, target, steps, draws, beta=10.0):
    """One image the reference way: full forward + backward, parameter gradients on."""
    mean = stats.mean.float().to(image.device)
    std = stats.std(0.01).float().to(image.device)
    active = stats.active_mask(0.01).to(image.device)
    with torch.no_grad():
        features = {}
        handle = layer.register_forward_hook(lambda m, a, out: features.setdefault("f", out))
        model(image)
        handle.remove()
    f = features["f"]
    alpha = torch.full_like(f, 5.0, requires_grad=True)
    optimizer = torch.optim.Adam([alpha], lr=1.0)
    batch = image.expand(draws, -1, -1, -1)
    for _ in range(steps):
        lam = lambda_from_alpha(alpha, 1.0)
        noise = mean + std * torch.randn(draws, *f.shape[1:], device=f.device)
        z = torch.addcmul(noise * active, lam.unsqueeze(1), (f * active).unsqueeze(1) - noise * active)
        handle = layer.register_forward_hook(lambda m, a, out: z.flatten(0, 1))
        try:
            logits = model(batch)
        finally:
            handle.remove()
        model_loss = -torch.nn.functional.logsigmoid(logits[:, target]).mean()
        loss = model_loss + beta * mean_capacity(capacity(f, lam, mean, std, active), active).sum()
        optimizer.zero_grad()
        model.zero_grad()
        loss.backward()
        optimizer.step()
    return capacity(f, lambda_from_alpha(alpha.detach(), 1.0), mean, std, active).sum(1)


def _todays_noisy_features(features, lam, noise, active=None, relu=False, **_):
    """``Z`` as today's loop formed it: ``eps + lam * (F - eps)`` with ``F - eps`` per draw."""
    if active is not None:
        features, noise = features * active, noise * active
    z = torch.addcmul(noise, lam.unsqueeze(1), features.unsqueeze(1) - noise)
    return (z.clamp(min=0) if relu else z).flatten(0, 1)


@contextlib.contextmanager
def todays_loop():
    """``IBA.attribute(..., channels_last=False)`` with today's ``Z`` operations."""
    saved = _base.noisy_features
    _base.noisy_features = _todays_noisy_features
    try:
        yield
    finally:
        _base.noisy_features = saved


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def matmul_throughput(dtype, device, n=2048, repeats=5) -> float:
    """Best FLOP/s of an ``n x n`` matrix product in ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b), device) for _ in range(repeats))
    return 2 * n**3 / best


def suffix_flops(iba, z, expanded) -> tuple:
    """FLOPs of one forward, and of one forward + backward, of the suffix on ``z``'s rows."""
    z = z.detach().requires_grad_(True)
    # Frozen as in the loop: no parameter gradients are counted.
    with frozen_model(iba.forward_func), FlopCounterMode(display=False) as counter:
        out = iba.split.outputs(z, expanded)
        forward = counter.get_total_flops()
        out[:, 0].sum().backward()  # (autograd.grad breaks the counter)
    return forward, counter.get_total_flops()


def relative_difference(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--draws", type=int, default=10, help="noise draws per step (noise_draws)")
    parser.add_argument("--images", type=int, default=None, help="batch for the batched runs (8 CPU, 32 GPU)")
    parser.add_argument("--naive-images", type=int, default=1, help="images timed with the naive loop")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is shown")
    parser.add_argument("--small-beta", type=float, default=0.01, help="second beta of the map differences")
    parser.add_argument("--skip", nargs="*", default=[], help="variant names to leave out (e.g. compile)")
    parser.add_argument("--quick", action="store_true", help="64 px, 2 steps, 1 repeat, no naive loop")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.repeats, args.naive_images = 64, 2, 1, 0
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    images = args.images or (32 if device.type == "cuda" else 8)
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=8).to(device).eval()
    layer = model.features.denseblock3
    stats = synthetic_stats(model, layer, args.size, device)
    x = torch.randn(images, 3, args.size, args.size, device=device)
    iba = IBA(model, layer, stats=stats, loss="bce", steps=args.steps, noise_draws=args.draws)
    options = {k: v for k, v in variants(device).items() if k not in args.skip}

    def attribute(beta=10.0, inputs=x, **kw):
        return iba.attribute(inputs, target=0, seed=0, beta=beta, **kw)

    features, context = iba.split.features((x,), ())
    expanded = iba.split.expand(context, images, args.draws)
    z = features.repeat_interleave(args.draws, 0).requires_grad_(True)
    floors = {
        "floor, as traced, contiguous fp32 (today's floor)": dict(fuse=False),
        "floor, fused, contiguous fp32 (the default's)": dict(fuse=True),
        "floor, as traced, channels_last fp32": dict(fuse=False, channels_last=True),
        f"floor, fused, channels_last {reduced_name(device)}": dict(fuse=True, channels_last=True,
                                                                    precision=reduced_name(device)),
    }

    with todays_loop():
        reference = {beta: attribute(beta, channels_last=False, fuse=False) for beta in (10.0, args.small_beta)}
    runs = {"today": lambda: _in_todays_loop(attribute)}
    runs.update({name: (lambda kw=kw: attribute(**kw)) for name, kw in options.items()})
    runs.update({name: floor_steps(iba, features, expanded, args.draws, args.steps, **kw) for name, kw in floors.items()})
    if args.naive_images:
        runs["naive loop (reference way)"] = lambda: [
            naive_map(model, layer, stats, x[i : i + 1], 0, args.steps, args.draws)
            for i in range(args.naive_images)
        ]
    maps_per_run = {name: images for name in runs}
    maps_per_run["naive loop (reference way)"] = args.naive_images

    spread = float32_spread(attribute, x, reference, args.small_beta)
    cold, differences = {}, {}
    for name, kw in options.items():  # warm-up (compilation), and the maps compared
        cold[name] = timed(lambda: attribute(**kw), device)
        log(f"first call of {name}: {cold[name]:.1f} s")
        differences[name] = [relative_difference(attribute(beta, **kw), reference[beta])
                             for beta in (10.0, args.small_beta)]
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved: a busy machine slows every row alike
        for name, run in runs.items():
            times[name].append(timed(run, device) / maps_per_run[name])
            log(f"{name}: {times[name][-1]:.3f} s/map")
    per_map = {name: statistics.median(values) for name, values in times.items()}
    limits = flop_limits(iba, z, expanded, device, args.steps, images)
    report(args, device, iba, per_map, differences, cold, limits, spread)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _in_todays_loop(attribute):
    with todays_loop():
        return attribute(channels_last=False, fuse=False)


def reduced_name(device) -> str:
    return "fp16" if device.type == "cuda" else "bf16"


def floor_steps(iba, features, expanded, draws, steps, **options):
    """A run of ``steps`` x forward + backward of the suffix alone, as the loop runs it with ``options``.

    The rows are what the loop hands the suffix: ``Z`` itself, or (fused) its
    image under the folded leading BatchNorm, ReLU and pool.
    """
    options = {"channels_last": False, "precision": "fp32", "compile": False, "relu_z": False, **options}
    runner = SuffixRunner(iba.split, features=features, **options)
    rows = features if runner.leading is None else runner.leading(features)
    rows = rows.repeat_interleave(draws, 0)
    if runner.channels_last:
        rows = rows.contiguous(memory_format=torch.channels_last)
    rows = rows.requires_grad_(True)
    context = runner.prepare(expanded)

    def run():
        with frozen_model(iba.forward_func):  # as in the loop: no parameter gradients
            for _ in range(steps):
                torch.autograd.grad(runner(rows, context)[:, 0].sum(), [rows])

    return run


def float32_spread(attribute, x, reference, small_beta) -> dict:
    """Today's loop against itself, summing in another order: one thread, and one image at a time."""
    threads = torch.get_num_threads()
    spread = {}
    with todays_loop():
        torch.set_num_threads(1)
        try:
            one_thread = [attribute(beta, channels_last=False, fuse=False) for beta in (10.0, small_beta)]
        finally:
            torch.set_num_threads(threads)
        spread[f"1 thread vs {threads}"] = [relative_difference(m, reference[b])
                                            for m, b in zip(one_thread, (10.0, small_beta))]
        alone = [torch.cat([attribute(beta, channels_last=False, fuse=False, inputs=x[i : i + 1])
                            for i in range(x.shape[0])]) for beta in (10.0, small_beta)]
        spread["one image at a time vs the batch"] = [relative_difference(m, reference[b])
                                                      for m, b in zip(alone, (10.0, small_beta))]
    return spread


def flop_limits(iba, z, expanded, device, steps, images) -> dict:
    """FLOPs per map and the seconds per map at this machine's matmul throughput."""
    forward, total = suffix_flops(iba, z, expanded)
    flops = total * steps / images
    reduced = torch.float16 if device.type == "cuda" else torch.bfloat16
    throughput = {"fp32": matmul_throughput(torch.float32, device), str(reduced): matmul_throughput(reduced, device)}
    return {"flops": flops, "forward": forward * steps / images, "throughput": throughput, "limit": {k: flops / v for k, v in throughput.items()}}


def report(args, device, iba, per_map, differences, cold, limits, spread) -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print(f"DenseNet-121, {args.size} px, bottleneck after features.denseblock3, {args.steps} steps x "
          f"{args.draws} draws, device {device}, split {iba.split.mode}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, median of {args.repeats}, load average {load}")
    print(f"suffix forward+backward: {limits['flops'] / 1e9:.1f} GFLOP per map (forward "
          f"{limits['forward'] / 1e9:.1f}; the backward counts the input gradients only); matmul throughput "
          + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in limits["throughput"].items())
          + "; limits " + ", ".join(f"{k} {v:.3f} s/map" for k, v in limits["limit"].items()))
    naive = per_map.get("naive loop (reference way)")
    today, floor = per_map["today"], per_map["floor, as traced, contiguous fp32 (today's floor)"]
    reduced_limit = [v for k, v in limits["limit"].items() if k != "fp32"][0]
    print(f"{'row':50s} {'s/map':>7s} {'vs naive':>9s} {'vs today':>9s} {'vs floor':>9s} "
          f"{'vs limit':>9s} {'diff b=10':>10s} {'diff small':>10s} {'cold s':>7s}")
    for name, seconds in per_map.items():
        diff = differences.get(name, (None, None))
        print(f"{name:50s} {seconds:7.3f} {_ratio(naive, seconds):>9s} {_ratio(today, seconds):>9s} "
              f"{seconds / floor:8.2f}x {seconds / _limit(name, limits, reduced_limit):8.1f}x {_fmt(diff[0]):>10s} "
              f"{_fmt(diff[1]):>10s} {_fmt(cold.get(name), '.1f'):>7s}")
    print("vs naive / vs today: speed-up (higher is faster); vs floor, vs limit: time over that row "
          "(lower is faster; the limit is the FLOP limit of the row's precision); diff: max |map - today's map| / max |today's map|, at beta 10 and "
          f"beta {args.small_beta}; cold: the first call of the variant (compilation included).")
    for name, (big, small) in spread.items():
        print(f"float32's own spread, today's loop, {name}: {_fmt(big)} at beta 10, {_fmt(small)} at beta {args.small_beta}")


def _limit(name, limits, reduced_limit) -> float:
    return reduced_limit if ("bf16" in name or "fp16" in name) else limits["limit"]["fp32"]


def _ratio(base, seconds) -> str:
    return "-" if base is None else f"{base / seconds:.2f}x"


def _fmt(value, spec=".1e") -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
