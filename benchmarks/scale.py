"""Maps per second of `captum-iba attribute` for 1 and K processes.

IBA on the embedded small DenseNet (NIH-like phantom, 96 px, bottleneck after
``features.denseblock3``), 10 steps x 10 noise draws, batches of 8 images:

* CPU: one process with one thread, one process with every core, and
  ``torchrun --nproc_per_node=K`` (one thread each; K = the CPU count, at most 4);
* GPU, when one is present: one process, and one per GPU when there are several.

Each configuration writes a fresh store; the rate is the store's own record
(``runs.jsonl``: maps / seconds of the attribution loop, the slowest process);
"wall" is the whole command, start-up and process launch included. The
statistics are estimated once and passed to every run (``--stats``).

Run:  .venv/bin/python benchmarks/scale.py            (add --quick for a 32 px smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

QUICK_OVERRIDES = "size=32,train_images=64,test_images=32,epochs=1"


def attribute(out: Path, processes: int, device: str, threads: int, options: list) -> dict:
    """Run one configuration; returns its run record with the wall time added."""
    launcher = [sys.executable, "-m", "captum_iba.scale"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={processes}", "-m", "captum_iba.scale"]
    command = [*launcher, "--out", str(out), "--device", device, "--threads", str(threads), *options]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    records = (out / "iba" / "runs.jsonl").read_text().splitlines()
    return {**json.loads(records[-1]), "threads": threads, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="32 px models, 16 images, 3 steps x 2 draws")
    args = parser.parse_args()

    images, steps, draws = (16, 3, 2) if args.quick else (args.images, 10, 10)
    common = ["--method", "iba", "--batch-size", "8", "--workers", "0",
              "--steps", str(steps), "--noise-draws", str(draws)]
    if args.quick:
        common += ["--embedded-overrides", QUICK_OVERRIDES, "--stats-samples", "64"]
    cores = os.cpu_count() or 1
    plan = [(1, "cpu", 1), (1, "cpu", cores)] + ([(min(cores, 4), "cpu", 1)] if cores > 1 else [])
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        plan += [(1, "cuda", 1)] + ([(gpus, "cuda", 1)] if gpus > 1 else [])

    with tempfile.TemporaryDirectory(prefix="captum-iba-scale-bench-") as scratch:
        scratch = Path(scratch)
        # Estimate the statistics once (and train the embedded model if it is not cached yet).
        warm = scratch / "warm-up"
        subprocess.run([sys.executable, "-m", "captum_iba.scale", "--out", str(warm), "--device", "cpu",
                        "--images", "1", *common], check=True, stdout=subprocess.DEVNULL)
        options = ["--images", str(images), *common, "--stats", str(warm / "iba" / "stats")]
        rows = [attribute(scratch / f"run-{i}", *setting, options) for i, setting in enumerate(plan)]

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    print(f"IBA, embedded small DenseNet, {images} phantom images, {steps} steps x {draws} noise draws, "
          f"batches of 8; torch {torch.__version__}, {cores} CPU cores{gpu}")
    print("| processes | device | threads/process | maps | loop s | maps/s | wall s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['processes']} | {row['device']} | {row['threads']} | {row['maps']} | "
              f"{row['seconds']:.1f} | {row['maps_per_s']:.2f} | {row['wall']:.1f} |")


if __name__ == "__main__":
    main()
