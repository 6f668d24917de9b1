"""Speed of insertion/deletion: batched metric against a pixel-group loop.

Scores the insertion and deletion curves of a DenseNet-121 (random weights,
8 sigmoid outputs, nothing downloaded) on random images, twice:

- ``captum_iba.metrics.insertion_deletion``: the perturbed images are built
  as a batch from the pixel ranking and scored ``--batch-size`` at a time;
  the clean image and the baseline end both curves and are scored once, so
  ``--steps`` steps cost ``2 * steps`` forward passes per image;
- a loop that, like the reference implementations (RISE), moves one group of
  pixels at a time into a working image and scores it alone: ``2 * (steps +
  1)`` passes of batch 1 per image.

Both use the same blurred baseline and pixel order; the table reports their
wall-clock and CPU times (the best of ``--repeats`` alternating runs) and the
largest difference between their curves.

Example::

    python benchmarks/metrics_speed.py --steps 100 --size 224 --images 1
"""

import argparse
import math
import time

import torch
import torchvision

from captum_iba.maps import rank_pixels, resize_map
from captum_iba.metrics import insertion_deletion
from captum_iba.metrics._core import gaussian_blur


def loop_curves(model, image, order, baseline, n_steps, target):
    """Insertion and deletion curves of one image, one pixel group per pass."""
    _, height, width = image.shape
    n_pixels = height * width
    curves = {}
    for name, start, end in (("insertion", baseline, image), ("deletion", image, baseline)):
        current = start.clone()
        scores = [torch.sigmoid(model(current[None]))[0, target]]
        moved = 0
        for step in range(1, n_steps + 1):
            # Same rounding as the metric: the nearest pixel count, halves up.
            total = math.floor(step * n_pixels / n_steps + 0.5)
            group = order[moved:total]
            rows, columns = group // width, group % width
            current[:, rows, columns] = end[:, rows, columns]
            moved = total
            scores.append(torch.sigmoid(model(current[None]))[0, target])
        curves[name] = torch.stack(scores)
    return curves["insertion"], curves["deletion"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per curve (default 100)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--images", type=int, default=1, help="number of images (default 1)")
    parser.add_argument(
        "--batch-size", type=int, default=50,
        help="max_examples_per_batch of the batched metric (default 50)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; the best is shown")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    model = torchvision.models.densenet121(weights=None, num_classes=8).eval()
    images = torch.rand(args.images, 3, args.size, args.size)
    # A coarse map, as an IBA map at a late layer, resized to the image.
    maps = resize_map(torch.rand(args.images, 1, 14, 14), args.size)
    target = 0

    def batched():
        return insertion_deletion(
            model, images, maps, target=target, n_steps=args.steps, baseline="blur",
            output_transform="sigmoid", max_examples_per_batch=args.batch_size,
        )

    def looped():
        orders, baselines = rank_pixels(maps), gaussian_blur(images)
        return [
            loop_curves(model, image, order, baseline, args.steps, target)
            for image, order, baseline in zip(images, orders, baselines)
        ]

    with torch.no_grad():
        model(images[:1])  # warm-up
        # Alternate the two, so both see the same load on a shared machine.
        timings = {"batched": [], "loop": []}
        for _ in range(args.repeats):
            for name, run in (("batched", batched), ("loop", looped)):
                wall, cpu = time.perf_counter(), time.process_time()
                result = run()
                timings[name].append((time.perf_counter() - wall, time.process_time() - cpu))
                if name == "batched":
                    batched_result = result
                else:
                    loop_result = result

    difference = max(
        max((batched_result.insertion_curve[i] - insertion).abs().max().item(),
            (batched_result.deletion_curve[i] - deletion).abs().max().item())
        for i, (insertion, deletion) in enumerate(loop_result)
    )
    rows = [
        ("batched insertion_deletion", 2 * args.steps * args.images, args.batch_size, "batched"),
        ("pixel-group loop", 2 * (args.steps + 1) * args.images, 1, "loop"),
    ]
    print(
        f"DenseNet-121, {args.images} image(s) of {args.size} px, {args.steps} steps per curve, "
        f"{torch.get_num_threads()} CPU thread(s), best of {args.repeats}"
    )
    print(f"{'method':<28} {'passes':>7} {'batch':>6} {'wall s':>8} {'CPU s':>8} {'ms/pass':>8}")
    best = {}
    for label, passes, batch, name in rows:
        wall = min(w for w, _ in timings[name])
        cpu = min(c for _, c in timings[name])
        best[name] = wall
        per_pass = 1000 * wall / passes
        print(f"{label:<28} {passes:>7} {batch:>6} {wall:>8.2f} {cpu:>8.2f} {per_pass:>8.1f}")
    print(
        f"speed-up (wall): {best['loop'] / best['batched']:.2f}x; "
        f"largest curve difference: {difference:.2e}"
    )


if __name__ == "__main__":
    main()
