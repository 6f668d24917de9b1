"""Seconds per IBA map: the reference loop vs. captum_iba, batched, and the floor.

DenseNet-121 at 224 px with 8 sigmoid outputs, the bottleneck after
``features.denseblock3``, 10 steps x 10 noise draws (the paper's setting).

* naive: the reference implementation's way -- one image at a time, the whole
  network forward and backward at every step, parameters requiring grad;
* IBA.attribute on 1 image, and on a batch (8 on a CPU, 32 on a GPU);
* floor: ``steps`` x forward + backward of the network after the layer alone,
  on the same batch of ``images x draws`` rows -- what any implementation of
  the loop must at least compute.

Run:  .venv/bin/python benchmarks/speed.py            (add --quick for a 64 px smoke run)
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from captum_iba import IBA
from captum_iba.bottleneck import capacity, lambda_from_alpha, mean_capacity, noisy_features
from captum_iba.stats import FeatureStats


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
        z = noisy_features(f, lam, noise, active)
        handle = layer.register_forward_hook(lambda m, a, out: z)
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


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--draws", type=int, default=10, help="noise draws per step (noise_draws)")
    parser.add_argument("--images", type=int, default=None, help="batch for the batched run (8 CPU, 32 GPU)")
    parser.add_argument("--naive-images", type=int, default=2, help="images timed with the naive loop")
    parser.add_argument("--quick", action="store_true", help="64 px, 2 steps: a smoke run")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps = 64, 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images = args.images or (32 if device.type == "cuda" else 8)

    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=8).to(device).eval()
    layer = model.features.denseblock3
    stats = synthetic_stats(model, layer, args.size, device)
    x = torch.randn(images, 3, args.size, args.size, device=device)
    iba = IBA(model, layer, stats=stats, loss="bce", steps=args.steps, noise_draws=args.draws)
    iba.attribute(x[:1], target=0, seed=0)  # warm-up: tracing, allocator

    rows = []
    naive_n = min(args.naive_images, images)
    seconds = timed(lambda: [naive_map(model, layer, stats, x[i : i + 1], 0, args.steps, args.draws)
                             for i in range(naive_n)], device)
    rows.append(("naive loop (reference way)", naive_n, seconds / naive_n))
    seconds = timed(lambda: iba.attribute(x[:1], target=0, seed=0), device)
    rows.append(("IBA.attribute, 1 image", 1, seconds))
    seconds = timed(lambda: iba.attribute(x, target=0, seed=0), device)
    rows.append((f"IBA.attribute, {images} batched", images, seconds / images))

    features, context = iba.split.features((x,), ())
    z = features.repeat_interleave(args.draws, 0).requires_grad_(True)
    expanded = iba.split.expand(context, images, args.draws)

    def floor():
        for _ in range(args.steps):
            out = iba.split.outputs(z, expanded)
            torch.autograd.grad(out[:, 0].sum(), [z])

    for param in model.parameters():
        param.requires_grad_(False)
    seconds = timed(floor, device)
    rows.append((f"floor: {args.steps} x suffix fwd+bwd, {images} images", images, seconds / images))

    naive = rows[0][2]
    floor_per_map = rows[-1][2]
    print(f"DenseNet-121, {args.size} px, bottleneck after features.denseblock3, "
          f"{args.steps} steps x {args.draws} draws, device {device}, split {iba.split.mode}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'method':45s} {'maps':>5s} {'s/map':>8s} {'maps/s':>8s} {'vs naive':>9s} {'vs floor':>9s}")
    for name, n, per_map in rows:
        print(f"{name:45s} {n:5d} {per_map:8.2f} {1 / per_map:8.2f} {naive / per_map:8.1f}x "
              f"{per_map / floor_per_map:8.2f}x")


if __name__ == "__main__":
    main()
