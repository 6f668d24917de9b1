"""ReadoutIBA against per-sample IBA: training time, seconds per map, agreement, localisation.

Two parts, each timed in one run on this machine:

* phantom: the embedded ``nih_bce`` model (``load_embedded_model``, 96 px),
  bottleneck after ``features.denseblock2`` (12 x 12 cells), readout layers
  dense blocks 1-4. The readout is trained on phantom images (seed 11, labels
  from the loader: one row per positive finding) and evaluated on held-out
  images (seed 12), one map per (image, positive finding): Pearson
  correlation with per-sample IBA maps at the same layer, Otsu IoU and the
  pointing game against the finding masks (tolerance 15 px at 224 px, scaled).
* densenet121: torchvision's DenseNet-121 (random weights, 8 sigmoid outputs)
  at 224 px, bottleneck after ``features.denseblock3`` as in
  ``benchmarks/speed.py``, readout layers dense blocks 2-4 (or ``--shallow``:
  up to the bottleneck only). Random inputs: only the speed is measured.

Per-sample IBA runs batched (``IBA.attribute`` on ``--iba-batch`` maps at
once), 10 steps x 10 noise draws, beta 10, BCE loss.

Run:  .venv/bin/python benchmarks/readout.py          (--quick for a smoke run)
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torch.utils.data import DataLoader

from captum_iba import IBA
from captum_iba.attr.readout import ReadoutIBA
from captum_iba.cxr import PhantomCXR, collate, load_embedded_model
from captum_iba.metrics import localization_iou, map_correlation, pointing_game


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def in_batches(fn, n, batch):
    """``fn(start, stop)`` over ``range(n)`` in chunks, concatenated."""
    return torch.cat([fn(i, min(i + batch, n)) for i in range(0, n, batch)])


def held_out_pairs(n_images, size, seed):
    """One row per (image, positive finding): images, finding index, finding mask."""
    images, targets, masks = [], [], []
    for item in PhantomCXR(n_images, size=size, seed=seed):
        for finding in item["labels"].nonzero()[:, 0].tolist():
            images.append(item["image"])
            targets.append(finding)
            masks.append(item["masks"][finding])
    return torch.stack(images), torch.tensor(targets), torch.stack(masks)


def phantom_part(args):
    model = load_embedded_model("nih_bce", progress=False)
    size, f = model.input_size, model.features
    readout = ReadoutIBA(model, f.denseblock2, [f.denseblock1, f.denseblock2, f.denseblock3, f.denseblock4],
                         loss="bce", beta=args.beta)
    loader = lambda n, seed: DataLoader(PhantomCXR(n, size=size, seed=seed), batch_size=args.batch,  # noqa: E731
                                        collate_fn=collate)
    readout.estimate(loader(args.stats_images, 10), n_samples=args.stats_images, progress=False)
    train = list(loader(args.train_images, 11))  # rendered once, outside the timed training
    history, train_s = timed(lambda: readout.fit(train, epochs=args.epochs, lr=args.lr, seed=0, progress=False))

    images, targets, masks = held_out_pairs(args.test_images, size, 12)
    n = len(images)
    readout.attribute(images[:2], target=targets[:2])  # warm-up
    readout_maps, readout_s = timed(lambda: in_batches(
        lambda i, j: readout.attribute(images[i:j], target=targets[i:j]), n, args.readout_batch))
    iba = IBA(model, f.denseblock2, loss="bce", stats=readout.stats)
    iba_maps, iba_s = timed(lambda: in_batches(
        lambda i, j: iba.attribute(images[i:j], target=targets[i:j], seed=0), n, args.iba_batch))

    tolerance = max(1, round(15 * size / 224))
    print(f"phantom: embedded nih_bce, {size} px, bottleneck features.denseblock2 "
          f"{tuple(readout_maps.shape[-2:])}, readout layers denseblock1-4, torch threads {torch.get_num_threads()}")
    print(f"  training: {args.train_images} images, {history[-1]['rows']} rows/epoch, {args.epochs} epochs, "
          f"lr {args.lr}, beta {args.beta}: {train_s:.1f} s; last epoch loss {history[-1]['loss']:.3f} "
          f"(model {history[-1]['model_loss']:.3f}, information {history[-1]['information_loss']:.3f} nats)")
    print(f"  held out: {args.test_images} images, {n} (image, finding) maps")
    print(f"  s/map  ReadoutIBA {readout_s / n:.5f}   IBA batched ({args.iba_batch}) {iba_s / n:.4f}   "
          f"speed-up {iba_s / readout_s:.1f}x")
    print(f"  s/map including training: {(readout_s + train_s) / n:.4f}")
    pearson = map_correlation(readout_maps, iba_maps)
    print(f"  Pearson(ReadoutIBA, IBA) per map: mean {pearson.nanmean():.3f}, median {pearson.nanmedian():.3f}")
    for name, maps in (("ReadoutIBA", readout_maps), ("IBA", iba_maps)):
        iou = localization_iou(maps, masks, threshold="otsu", labels=targets, num_classes=8)
        hits = pointing_game(maps, masks, tolerance=tolerance, labels=targets, num_classes=8)
        print(f"  {name:10s} Otsu IoU: mean over maps {iou.iou.nanmean():.3f}, over findings "
              f"{iou.mean_iou:.3f}; pointing game ({tolerance} px): {hits.accuracy:.3f}")


def densenet_part(args):
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=8).eval()
    f, size = model.features, args.size
    layers = [f.denseblock2, f.denseblock3] if args.shallow else [f.denseblock2, f.denseblock3, f.denseblock4]
    readout = ReadoutIBA(model, f.denseblock3, layers, loss="bce", hidden=tuple(args.hidden))
    data = [torch.randn(4, 3, size, size) for _ in range(args.dn_batches)]
    readout.estimate(data, n_samples=4 * args.dn_batches, progress=False)
    _, train_s = timed(lambda: readout.fit(data, epochs=1, target=0, seed=0, progress=False))
    x = torch.randn(args.dn_images, 3, size, size)
    readout.attribute(x[:1], target=0)  # warm-up
    _, readout_s = timed(lambda: readout.attribute(x, target=0))
    iba = IBA(model, f.denseblock3, loss="bce", stats=readout.stats)
    iba.attribute(x[:1], target=0, seed=0, steps=1)  # warm-up: tracing
    _, iba_s = timed(lambda: iba.attribute(x, target=0, seed=0))
    n = args.dn_images
    print(f"densenet121: {size} px, bottleneck features.denseblock3, readout layers "
          f"{'denseblock2-3' if args.shallow else 'denseblock2-4'}, hidden {tuple(args.hidden)}")
    print(f"  training: {4 * args.dn_batches} random images, 1 epoch: {train_s:.1f} s "
          f"({train_s / (4 * args.dn_batches):.2f} s per training image)")
    print(f"  s/map  ReadoutIBA {readout_s / n:.4f}   IBA batched ({n}) {iba_s / n:.3f}   "
          f"speed-up {iba_s / readout_s:.1f}x")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("phantom", "densenet121", "both"), default="both")
    parser.add_argument("--stats-images", type=int, default=256)
    parser.add_argument("--train-images", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--beta", type=float, default=1.0, help="readout's beta (IBA keeps its 10)")
    parser.add_argument("--batch", type=int, default=16, help="training batch (images)")
    parser.add_argument("--test-images", type=int, default=30)
    parser.add_argument("--iba-batch", type=int, default=16, help="maps per batched IBA.attribute call")
    parser.add_argument("--readout-batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224, help="DenseNet-121 input side")
    parser.add_argument("--dn-images", type=int, default=8, help="DenseNet-121 maps timed")
    parser.add_argument("--dn-batches", type=int, default=2, help="DenseNet-121 training batches of 4")
    parser.add_argument("--hidden", type=int, nargs=2, default=(256, 256), help="DenseNet-121 readout widths")
    parser.add_argument("--shallow", action="store_true", help="DenseNet-121 readout up to the bottleneck")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.stats_images, args.train_images, args.epochs, args.test_images = 32, 32, 1, 6
        args.size, args.dn_images, args.dn_batches = 64, 2, 1
    if args.part in ("phantom", "both"):
        phantom_part(args)
    if args.part in ("densenet121", "both"):
        densenet_part(args)


if __name__ == "__main__":
    main()
