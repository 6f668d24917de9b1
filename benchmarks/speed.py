"""Seconds per IBA map: the reference loop, the engine's speed options, the floors, and other methods on transformers.

Two groups of rows, each the median of ``--repeats`` interleaved repeats, in
seconds per map (s/map), on one device (``--device``; cuda when present):

``--only cnn``: DenseNet-121 at ``--size`` px (224) with 8 sigmoid outputs
(random weights, nothing downloaded), the bottleneck after
``features.denseblock3``, ``--steps`` x ``--draws`` (10 x 10: the paper's
setting), loss ``"bce"``, ``--images`` images per batched call:

* naive: the reference implementation's way -- one image at a time, the whole
  network forward and backward at every step, parameters requiring grad; it
  draws the same noise as ``IBA.attribute`` (same seed), so its maps are
  compared with the default's too;
* the variants of ``IBA.attribute(..., speed=...)`` on the batch (:func:`variants`):
  ``Speed(fuse=False)`` (the suffix as traced, buffered mixing), the default
  ``Speed()`` (the fused suffix), ``channels_last``, ``compile``, bf16 (fp16 on
  CUDA), and the ``"fast"`` preset;
* floors: ``steps`` x forward + backward of the network after the layer alone
  (``Engine.outputs``) on the ``images x draws`` rows it gets in that form --
  as traced, fused, channels-last, fused channels-last in reduced precision:
  what a loop must at least compute;
* the FLOP limit: the suffix's forward + backward FLOPs per map
  (``FlopCounterMode``) over this device's measured matmul throughput.

"diff" is the largest ``|map - default map|`` over the largest default map
value (same seed), at beta 10 and at ``--small-beta`` (0.01: the model loss
dominates). float32's own spread is printed below: the default at one thread
against ``torch.get_num_threads()``, and one image at a time against the batch.

``--only vit``: timm ViT-B/16 (``vit_base_patch16_224``, layer ``blocks[6]``) and
Swin-T (``swin_tiny_patch4_window7_224``, layer ``layers[2]``) at 224 px, 8
softmax outputs, random weights (``--only vit-b`` or ``--only swin`` for one):
IBA's default (loss ``"ce"``, ``--steps`` x ``--draws``) against
pytorch-grad-cam's ``GradCAM`` at the same layer (with its reshape transform:
``vit_reshape_transform``; timm's Swin stages are ``(N, h, w, C)``, moved to
``(N, C, h, w)``) and Captum's ``IntegratedGradients`` (``--ig-steps`` 50, zero
baseline), ``--vit-images`` images per call.

Run:  .venv/bin/python benchmarks/speed.py                 (everything: tens of minutes on a 2-core CPU)
      .venv/bin/python benchmarks/speed.py --quick         (64 px CNN, 2 steps, IG 10 steps, no compiled
                                                           variants: minutes; add --skip for them)
      .venv/bin/python benchmarks/speed.py --only vit --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

# The checkout this file is in, not whichever captum_iba is installed (a script's folder, not the
# working directory, starts sys.path).
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import captum_iba  # noqa: E402
from captum_iba import IBA, Speed  # noqa: E402
from captum_iba._engine import SPEEDS, Engine, frozen_model  # noqa: E402
from captum_iba.bottleneck import capacity, lambda_from_alpha, mean_capacity, to_bits  # noqa: E402
from captum_iba.stats import FeatureStats  # noqa: E402

GROUPS = ("cnn", "vit-b", "swin")
#: ``--only`` names: a group, or ``vit`` for both transformers.
SELECTIONS = {"cnn": ("cnn",), "vit": ("vit-b", "swin"), "vit-b": ("vit-b",), "swin": ("swin",),
              "all": GROUPS}
NAIVE = "naive loop (reference way)"


def pick_device(name=None) -> torch.device:
    """``name`` if given (``cuda`` without a GPU is an error), else cuda when present."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return device


def reduced_name(device) -> str:
    """The reduced precision timed on ``device``: fp16 on CUDA, bf16 elsewhere."""
    return "fp16" if torch.device(device).type == "cuda" else "bf16"


def variants(device: torch.device) -> Dict[str, Speed]:
    """The speed options timed on ``device``: row name -> :class:`~captum_iba.Speed`."""
    reduced = reduced_name(device)
    fast = SPEEDS["fast"]
    return {
        "default": Speed(),
        "Speed(fuse=False)": Speed(fuse=False),
        "channels_last": Speed(channels_last=True),
        "compile": Speed(compile=True),
        f"precision={reduced}": Speed(precision=reduced),
        f"fast (compile, {fast.precision}, channels_last={fast.channels_last})": fast,
    }


def skipped(name: str, skip) -> bool:
    """Whether ``--skip`` leaves the row out: its name, or the start of it (``fast``, ``precision``)."""
    return any(name == s or name.startswith(s) for s in skip)


# --------------------------------------------------------------------------- helpers


def called(fn: Callable, device) -> tuple:
    """``(seconds, result)`` of one call of ``fn``, the device synchronised on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def timed(fn: Callable, device) -> float:
    """Seconds of one call of ``fn``, the device synchronised on both sides."""
    return called(fn, device)[0]


def interleaved(runs: Dict[str, Callable], per_call: Dict[str, int], repeats: int, device) -> Dict[str, float]:
    """Median seconds per map of each run; each repeat runs every row once (a busy machine slows all alike)."""
    times = {name: [] for name in runs}
    for repeat in range(repeats):
        for name, run in runs.items():
            times[name].append(timed(run, device) / per_call[name])
            log(f"[{repeat + 1}/{repeats}] {name}: {times[name][-1]:.3f} s/map")
    return {name: statistics.median(values) for name, values in times.items()}


def relative_difference(a, b) -> float:
    """``max |a - b| / max |b|``."""
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def synthetic_stats(iba: IBA, size: int, device, n: int = 16, batch: int = 8) -> FeatureStats:
    """Statistics from random inputs: the speed does not depend on their values."""
    generator = torch.Generator().manual_seed(1)
    data = [torch.randn(batch, 3, size, size, generator=generator).to(device) for _ in range(n // batch)]
    return iba.estimate(data, n_samples=n, progress=False)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    except OSError:
        pass
    return f"cpu ({name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def load_average() -> str:
    """The load average (1, 5, 15 minutes): other work on the machine slows every row."""
    return " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def _fmt(value, spec=".1e") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(base, seconds) -> str:
    return "-" if base is None or seconds is None else f"{base / seconds:.2f}x"


# --------------------------------------------------------------------------- DenseNet-121


def naive_map(model, layer, stats, image, target, steps, draws, beta=10.0, seed=0, lr=1.0, init_alpha=5.0,
              sigma=1.0, min_std=0.01, threshold=0.01):
    """One image the reference way: the whole model forward + backward per step, parameter gradients on.

    The same algorithm and noise as ``IBA.attribute(image, target, seed=seed)``
    with loss ``"bce"``: ``(1, 1, h, w)`` bits.
    """
    mean = stats.mean.to(image)
    std = stats.std(min_std).to(image)
    active = stats.active_mask(threshold).to(image.device)
    captured = {}
    handle = layer.register_forward_hook(lambda module, args, out: captured.setdefault("f", out.detach()))
    try:
        with torch.no_grad():
            model(image)
    finally:
        handle.remove()
    f = captured["f"]
    generator = torch.Generator(device=image.device).manual_seed(seed)
    alpha = torch.full_like(f, init_alpha, requires_grad=True)
    optimizer = torch.optim.Adam([alpha], lr=lr)
    batch = image.expand(draws, *image.shape[1:])
    for _ in range(steps):
        lam = lambda_from_alpha(alpha, sigma)
        noise = mean + std * torch.randn((draws, *f.shape[1:]), generator=generator, device=f.device, dtype=f.dtype)
        z = (lam * (f * active) + (1 - lam) * (noise * active)).reshape(-1, *f.shape[1:])
        handle = layer.register_forward_hook(lambda module, args, out: z)
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
    lam = lambda_from_alpha(alpha.detach(), sigma)
    return to_bits(capacity(f, lam, mean, std, active)).sum(1, keepdim=True)


def floor_steps(iba: IBA, x, draws: int, steps: int, speed: Speed) -> Callable:
    """A run of ``steps`` x forward + backward of the suffix alone, as the engine runs it with ``speed``.

    The rows are what the suffix is handed: ``Z`` itself, or (fused) its image
    under the folded leading BatchNorm, ReLU and pool; in channels-last form
    where ``speed`` asks for it; under autocast in reduced precision.
    """
    split = iba.split()
    with torch.no_grad():
        features, context = split.features((x,), ())
    active = iba.stats.active_mask(iba.options.active_neurons_threshold).to(x.device)
    engine = Engine(split, speed, features, context, draws, active, relu=False, channels_first=True)
    rows = features if engine.leading is None else engine.leading(features)
    rows = rows.repeat_interleave(draws, 0)
    if engine.channels_last:
        rows = rows.contiguous(memory_format=torch.channels_last)
    rows = rows.requires_grad_(True)

    def run():
        with frozen_model(iba.forward_func):  # as in the loop: no parameter gradients
            for _ in range(steps):
                torch.autograd.grad(engine.outputs(rows)[:, 0].sum(), [rows])

    return run


def suffix_flops(iba: IBA, x, draws: int) -> tuple:
    """FLOPs of one forward, and of one forward + backward (input gradients only), of the suffix on x's rows."""
    split = iba.split()
    with torch.no_grad():
        features, context = split.features((x,), ())
    z = features.repeat_interleave(draws, 0).requires_grad_(True)
    expanded = split.expand(context, x.shape[0], draws)
    with frozen_model(iba.forward_func), FlopCounterMode(display=False) as counter:
        out = split.outputs(z, expanded)
        forward = counter.get_total_flops()
        out[:, 0].sum().backward()  # (autograd.grad breaks the counter)
    return forward, counter.get_total_flops()


def matmul_throughput(dtype, device, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an ``n x n`` matrix product in ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b), device) for _ in range(repeats))
    return 2 * n**3 / best


def flop_limits(iba: IBA, x, device, steps: int, draws: int) -> dict:
    """FLOPs per map and the seconds per map at this device's matmul throughput, per precision."""
    forward, total = suffix_flops(iba, x, draws)
    images = x.shape[0]
    flops = total * steps / images
    reduced = reduced_name(device)
    throughput = {"fp32": matmul_throughput(torch.float32, device),
                  reduced: matmul_throughput(torch.float16 if reduced == "fp16" else torch.bfloat16, device)}
    return {"flops": flops, "forward": forward * steps / images, "throughput": throughput,
            "limit": {k: flops / v for k, v in throughput.items()}}


def float32_spread(attribute, x, reference, betas) -> dict:
    """The default against itself, summing in another order: one thread, and one image at a time."""
    threads = torch.get_num_threads()
    spread = {}
    if threads > 1:
        torch.set_num_threads(1)
        try:
            one_thread = [attribute(beta) for beta in betas]
        finally:
            torch.set_num_threads(threads)
        spread[f"1 thread vs {threads}"] = [relative_difference(m, reference[b]) for m, b in zip(one_thread, betas)]
    alone = [torch.cat([attribute(beta, inputs=x[i : i + 1]) for i in range(x.shape[0])]) for beta in betas]
    spread["one image at a time vs the batch"] = [relative_difference(m, reference[b]) for m, b in zip(alone, betas)]
    return spread


def cnn_rows(args, device) -> None:
    """The DenseNet-121 table: naive loop, speed variants, floors, FLOP limits, map differences."""
    images = args.images or (32 if device.type == "cuda" else 8)
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=8).to(device).eval()
    layer = model.features.denseblock3
    iba = IBA(model, layer, loss="bce", steps=args.steps, noise_draws=args.draws)
    synthetic_stats(iba, args.size, device)
    x = torch.randn(images, 3, args.size, args.size, generator=torch.Generator().manual_seed(2)).to(device)
    options = {name: speed for name, speed in variants(device).items() if not skipped(name, args.skip)}
    options.setdefault("default", Speed())  # the reference of the differences
    betas = (10.0, args.small_beta)
    reduced = reduced_name(device)

    def attribute(beta=10.0, inputs=x, speed="default"):
        return iba.attribute(inputs, target=0, seed=0, beta=beta, speed=speed)

    log(f"DenseNet-121 at {args.size} px, {images} images, {args.steps} steps x {args.draws} draws, device {device}")
    cold, maps = {}, {}
    for name, speed in options.items():  # warm-up (tracing, compilation), and the maps compared
        cold[name] = timed(lambda: attribute(speed=speed), device)
        log(f"first call of {name}: {cold[name]:.1f} s")
        maps[name] = {beta: attribute(beta, speed=speed) for beta in betas}
    reference = maps["default"]
    differences = {name: [relative_difference(m[b], reference[b]) for b in betas] for name, m in maps.items()}
    if args.naive_images:
        naive = {b: torch.cat([naive_map(model, layer, iba.stats, x[i : i + 1], 0, args.steps, args.draws, beta=b)
                               for i in range(args.naive_images)]) for b in betas}
        differences[NAIVE] = [relative_difference(naive[b], reference[b][: args.naive_images]) for b in betas]

    floors = {
        "floor: suffix as traced, fp32": Speed(fuse=False),
        "floor: suffix fused, fp32 (the default's)": Speed(),
        "floor: suffix as traced, channels_last fp32": Speed(fuse=False, channels_last=True),
        f"floor: suffix fused, channels_last {reduced}": Speed(channels_last=True, precision=reduced),
    }
    runs: Dict[str, Callable] = {}
    per_call = {}
    if args.naive_images:
        runs[NAIVE] = lambda: [naive_map(model, layer, iba.stats, x[i : i + 1], 0, args.steps, args.draws)
                               for i in range(args.naive_images)]
        per_call[NAIVE] = args.naive_images
    for name, speed in options.items():
        runs[name], per_call[name] = (lambda speed=speed: attribute(speed=speed)), images
    for name, speed in floors.items():
        runs[name], per_call[name] = floor_steps(iba, x, args.draws, args.steps, speed), images
    per_map = interleaved(runs, per_call, args.repeats, device)
    spread = float32_spread(attribute, x, reference, betas) if not args.no_spread else {}
    limits = flop_limits(iba, x, device, args.steps, args.draws)
    report_cnn(args, device, iba, images, per_map, differences, cold, limits, spread)


def report_cnn(args, device, iba, images, per_map, differences, cold, limits, spread) -> None:
    print(f"\n### DenseNet-121, {args.size} px, bottleneck after features.denseblock3, {args.steps} steps x "
          f"{args.draws} draws, {images} images per call\n")
    print(f"Unit: seconds per map (s/map), median of {args.repeats} interleaved repeat(s). Device: "
          f"{describe_device(device)}; split {iba.split().mode}; torch {torch.__version__}; load average "
          f"{load_average()}.")
    print(f"Suffix forward + backward: {limits['flops'] / 1e9:.2f} GFLOP per map (forward "
          f"{limits['forward'] / 1e9:.2f}; input gradients only); matmul throughput "
          + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in limits["throughput"].items())
          + "; FLOP limits " + ", ".join(f"{k} {v:.4f} s/map" for k, v in limits["limit"].items()) + ".\n")
    naive = per_map.get(NAIVE)
    default = per_map.get("default")
    floor = per_map.get("floor: suffix fused, fp32 (the default's)")
    print(f"| row | s/map | vs naive | vs default | vs default's floor | vs FLOP limit | diff beta 10 "
          f"| diff beta {args.small_beta:g} | first call s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, seconds in per_map.items():
        precision = next((p for p in ("bf16", "fp16") if p in name), "fp32")
        limit = limits["limit"].get(precision, limits["limit"]["fp32"])
        big, small = differences.get(name, (None, None))
        print(f"| {name} | {seconds:.3f} | {_ratio(naive, seconds)} | {_ratio(default, seconds)} | "
              f"{seconds / floor:.2f}x | {seconds / limit:.1f}x ({precision}) | {_fmt(big)} | {_fmt(small)} | "
              f"{_fmt(cold.get(name), '.1f')} |")
    left_out = [name for name in variants(device) if skipped(name, args.skip) and name != "default"]
    if left_out:
        print(f"\nLeft out (--skip {' '.join(args.skip)}): {', '.join(left_out)}.")
    print("\nvs naive / vs default: speed-up (higher is faster); vs floor, vs FLOP limit: time over that "
          "(lower is faster); diff: max |map - default map| / max |default map|, same seed; first call: "
          "tracing and compilation included.")
    for name, (big, small) in spread.items():
        print(f"float32's own spread, the default, {name}: {_fmt(big)} at beta 10, {_fmt(small)} at beta "
              f"{args.small_beta:g}.")


# --------------------------------------------------------------------------- transformers


def vit_model():
    import timm

    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=8)
    return model, model.blocks[6], "blocks[6]"


def swin_model():
    import timm

    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=8)
    return model, model.layers[2], "layers[2]"


def swin_reshape_transform(tensor):
    """pytorch-grad-cam's Swin transform for token outputs; timm's stages already give ``(N, h, w, C)``."""
    from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform

    if tensor.dim() == 4:
        return tensor.permute(0, 3, 1, 2)
    side = int(round(tensor.shape[1] ** 0.5))
    return swinT_reshape_transform(tensor, side, side)


TRANSFORMERS = {
    "vit-b": ("ViT-B/16 (timm vit_base_patch16_224)", vit_model, "vit"),
    "swin": ("Swin-T (timm swin_tiny_patch4_window7_224)", swin_model, "swin"),
}


def transformer_rows(group: str, args, device) -> None:
    """IBA's default against GradCAM and Integrated Gradients on one transformer, seconds per map."""
    from captum.attr import IntegratedGradients
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    title, make, kind = TRANSFORMERS[group]
    images = args.vit_images or (8 if device.type == "cuda" else 1)
    ig_batch = args.ig_batch or (args.ig_steps if device.type == "cuda" else 10)
    torch.manual_seed(0)
    model, layer, layer_name = make()
    model = model.to(device).eval()
    iba = IBA(model, layer, loss="ce", steps=args.steps, noise_draws=args.draws)
    synthetic_stats(iba, 224, device)
    x = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(2)).to(device)
    targets = [0] * images
    reshape = vit_reshape_transform if kind == "vit" else swin_reshape_transform
    ig = IntegratedGradients(model)
    log(f"{title}, layer {layer_name}, {images} image(s), device {device}")

    def run_iba(steps=None, speed="default"):
        return iba.attribute(x, target=targets, seed=0, speed=speed, **({} if steps is None else {"steps": steps}))

    def run_cam():
        # Its hooks on the layer only while it runs: left on, they would copy the layer's output at every
        # forward pass of the other methods (and keep the copies).
        with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])

    def run_ig(n_steps=args.ig_steps):
        return ig.attribute(x, target=targets, n_steps=n_steps, internal_batch_size=min(ig_batch, n_steps * images))

    fast = SPEEDS["fast"]
    fast_name = f"IBA fast (compile, {fast.precision}, channels_last={fast.channels_last})"
    # (name, run, first call): the first calls trace and verify the split at reduced cost (IBA with one
    # step, IG with two), compile in full (the fast option: its map is the one compared), run once (GradCAM).
    methods = [("IBA default", run_iba, lambda: run_iba(steps=1)),
               (fast_name, lambda: run_iba(speed=fast), None),
               ("GradCAM (pytorch-grad-cam)", run_cam, None),
               (f"IntegratedGradients (Captum, n_steps={args.ig_steps})", run_ig, lambda: run_ig(n_steps=2))]
    methods = [m for m in methods if not skipped(m[0].replace("IBA ", ""), args.skip)]
    cold, shapes, first_maps = {}, {}, {}
    for name, run, first_call in methods:
        cold[name], first_maps[name] = called(first_call or run, device)
        shapes[name] = tuple(first_maps[name].shape[-2:])
    runs = {name: run for name, run, _ in methods}
    differences = {}
    if fast_name in runs and "IBA default" in runs:
        differences[fast_name] = relative_difference(first_maps[fast_name], run_iba())
    per_map = interleaved(runs, dict.fromkeys(runs, images), args.repeats, device)
    limits = flop_limits(iba, x, device, args.steps, args.draws)
    report_transformer(args, device, title, layer_name, iba, images, ig_batch, per_map, cold, shapes, limits,
                       differences)


def report_transformer(args, device, title, layer_name, iba, images, ig_batch, per_map, cold, shapes, limits,
                       differences) -> None:
    print(f"\n### {title}, 224 px, layer {layer_name}, {images} image(s) per call\n")
    print(f"Unit: seconds per map (s/map), median of {args.repeats} interleaved repeat(s). Device: "
          f"{describe_device(device)}; torch {torch.__version__}; load average {load_average()}. IBA: "
          f"{args.steps} steps x {args.draws} draws, loss 'ce', split {iba.split().mode}; IntegratedGradients: "
          f"zero baseline, internal_batch_size {ig_batch}.\n")
    print(f"Suffix forward + backward: {limits['flops'] / 1e9:.2f} GFLOP per map; matmul throughput "
          + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in limits["throughput"].items())
          + "; FLOP limits " + ", ".join(f"{k} {v:.4f} s/map" for k, v in limits["limit"].items()) + ".\n")
    iba_seconds = per_map["IBA default"]
    reduced = reduced_name(device)
    print("| method | s/map | vs IBA default | vs FLOP limit | map diff | map | first call s |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, seconds in per_map.items():
        precision = reduced if "fast" in name else "fp32"
        limit = f"{seconds / limits['limit'][precision]:.1f}x ({precision})" if name.startswith("IBA") else ""
        diff = f"{differences[name]:.1e}" if name in differences else ""
        print(f"| {name} | {seconds:.3f} | {iba_seconds / seconds:.2f}x | {limit} | {diff} | "
              f"{shapes[name][0]}x{shapes[name][1]} | {cold[name]:.1f} |")
    print("\nvs IBA default: IBA's time over the row's (above 1: the row is faster); vs FLOP limit: the row's "
          "time over the suffix's FLOPs at this device's matmul rate; map diff: max |map - default map| / "
          "max |default map|, same seed. First calls (not in the medians): IBA default with 1 step (tracing), "
          "IBA fast in full (compiling), GradCAM once, IntegratedGradients with n_steps=2.")


# --------------------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(SELECTIONS), default=["all"],
                        help="row groups: cnn (DenseNet-121), vit (ViT-B/16 and Swin-T), vit-b, swin; default all")
    parser.add_argument("--size", type=int, default=None, help="DenseNet input side in pixels (default 224)")
    parser.add_argument("--steps", type=int, default=None, help="IBA optimisation steps (default 10)")
    parser.add_argument("--draws", type=int, default=10, help="noise draws per step (noise_draws, default 10)")
    parser.add_argument("--images", type=int, default=None, help="DenseNet batch (default 8 CPU, 32 GPU)")
    parser.add_argument("--naive-images", type=int, default=1, help="images timed with the naive loop (0: none)")
    parser.add_argument("--vit-images", type=int, default=None, help="transformer batch (default 1 CPU, 8 GPU)")
    parser.add_argument("--ig-steps", type=int, default=None, help="IntegratedGradients n_steps (default 50)")
    parser.add_argument("--ig-batch", type=int, default=None,
                        help="IntegratedGradients internal_batch_size (default 10 CPU, n_steps GPU)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved repeats; the median is shown (default 3)")
    parser.add_argument("--small-beta", type=float, default=0.01, help="second beta of the map differences")
    parser.add_argument("--skip", nargs="*", default=None,
                        help="DenseNet variants to leave out, by name or its start (compile, fast, precision); "
                             "default none, with --quick compile and fast (their compilation takes minutes on a "
                             "CPU): --quick --skip times them too")
    parser.add_argument("--no-spread", action="store_true", help="leave out float32's own spread")
    parser.add_argument("--quick", action="store_true",
                        help="defaults for a run of minutes: 64 px DenseNet, 2 steps, no compiled variants, "
                             "IntegratedGradients n_steps 10 (options given explicitly still apply)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    args = parser.parse_args(argv)
    defaults = (dict(size=64, steps=2, repeats=3, ig_steps=10, skip=["compile", "fast"]) if args.quick
                else dict(size=224, steps=10, repeats=3, ig_steps=50, skip=[]))
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.groups = [g for g in GROUPS if any(g in SELECTIONS[s] for s in args.only)]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    print(f"benchmarks/speed.py {' '.join(sys.argv[1:] if argv is None else argv)}: seconds per map on "
          f"{describe_device(device)}; captum_iba from {Path(captum_iba.__file__).parent}")
    for group in args.groups:
        if group == "cnn":
            cnn_rows(args, device)
        else:
            transformer_rows(group, args, device)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
