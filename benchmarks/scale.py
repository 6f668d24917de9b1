"""Scaling of IBA: seconds per map over the batch size and ``internal_batch_size``, and maps/s over processes.

``--part batch`` (in one process, ``IBA.attribute``): DenseNet-121 at ``--size``
px (224) with 8 sigmoid outputs (random weights, nothing downloaded), the
bottleneck after ``features.denseblock3``, ``--steps`` x ``--draws`` (10 x 10),
``--speed`` (default), the median of ``--repeats`` interleaved calls after one
untimed call per row (it warms the shapes up -- compiled suffixes are compiled
per batch shape -- and measures the memory):

* one call on N images for each N of ``--batch-sizes`` (all N optimised at
  once): seconds per map, maps per second, peak memory;
* one call on the largest N in batches of each ``internal_batch_size`` of
  ``--internal-batch-sizes``: the same, and the largest difference of its maps
  from the one-batch maps (over their largest value; the maps are meant to be
  equal).

Peak memory, of the untimed call, is the most memory in use above its start:
on CUDA torch's own count (``max_memory_allocated``), on a CPU the bytes malloc
has handed out (glibc's ``mallinfo2``; elsewhere the resident set), sampled
every 2 ms.

``--part processes`` (``python -m captum_iba attribute``, as a user runs it):
IBA on the embedded small DenseNet (NIH-like phantom, 96 px, bottleneck after
``features.denseblock3``), 10 steps x 10 noise draws, batches of 8, ``--images``
images, for

* CPU: one process with one thread, one process with every core, and
  ``torchrun --nproc_per_node=K`` (one thread each; K = the CPU count, at most 4);
* GPU, when one is present: one process, and one per GPU when there are several.

Each configuration writes a fresh store; the rate is the store's own record
(``runs.jsonl``: maps / seconds of the attribution loop, the slowest process);
"wall" is the whole command, start-up and process launch included. The
statistics are estimated once and passed to every run (``--stats``).

Run:  .venv/bin/python benchmarks/scale.py                  (both parts)
      .venv/bin/python benchmarks/scale.py --quick          (64 px, 2 steps; 32 px phantom models: minutes)
      .venv/bin/python benchmarks/scale.py --part batch --device cuda --batch-sizes 1 8 32 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional

import torch

# The checkout this file is in, not whichever captum_iba is installed: for this process (a script's
# folder, not the working directory, starts sys.path) and for the commands it runs.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENVIRONMENT = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

from speed import describe_device, load_average, pick_device, relative_difference, timed  # noqa: E402  (beside this file)

QUICK_OVERRIDES = "size=32,train_images=64,test_images=32,epochs=1"


# --------------------------------------------------------------------------- batch sizes


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _heap_counter():
    """Bytes in use by malloc now (glibc ``mallinfo2``: freed memory the allocator keeps is not counted), or None."""
    try:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in
                        ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                         "fordblks", "keepcost")]

        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


_HEAP = _heap_counter()
#: How the CPU rows count memory.
CPU_MEMORY = ("malloc'd bytes in use (glibc mallinfo2), sampled every 2 ms" if _HEAP else
              "resident set, sampled every 2 ms (the allocator keeps some freed memory: approximate)")


class PeakMemory:
    """The largest memory in use above the start, in bytes, over a ``with`` block.

    CUDA: ``torch.cuda.max_memory_allocated``; CPU: the bytes malloc has handed
    out (glibc), else the resident set, sampled by a thread (None without either).
    """

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device, self.interval, self.peak = device, interval, None
        self._stop = threading.Event()
        self._read = _HEAP or (_rss_bytes if os.path.exists("/proc/self/statm") else None)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self._read is not None:
            self._start = self._max = self._read()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._max = max(self._max, self._read())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, self._read()) - self._start


def _measured(rows: dict, device, repeats: int) -> dict:
    """Per row: ``(median seconds, result, peak bytes)``.

    First one untimed call per row, for its result and its peak memory (the
    sampler slows a CPU; the call also warms the row's shapes up), then
    ``repeats`` timed calls of every row in turn (a busy machine slows every
    row alike).
    """
    results = {}
    for name, fn in rows.items():
        with PeakMemory(device) as memory:
            results[name] = (fn(), memory)
    times = {name: [] for name in rows}
    for repeat in range(repeats):
        for name, fn in rows.items():
            times[name].append(timed(fn, device))
            print(f"[{repeat + 1}/{repeats}] {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    return {name: (statistics.median(times[name]), result, memory.peak)
            for name, (result, memory) in results.items()}


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def batch_part(args, device) -> None:
    """Seconds per map and peak memory over N, then over internal_batch_size at the largest N."""
    import torchvision

    import captum_iba
    from captum_iba import IBA

    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=8).to(device).eval()
    iba = IBA(model, model.features.denseblock3, loss="bce", steps=args.steps, noise_draws=args.draws,
              speed=args.speed)
    generator = torch.Generator().manual_seed(1)
    iba.estimate([torch.randn(8, 3, args.size, args.size, generator=generator).to(device) for _ in range(2)],
                 n_samples=16, progress=False)
    sizes = sorted(set(args.batch_sizes or ([1, 2, 4, 8, 16, 32, 64] if device.type == "cuda" else [1, 2, 4, 8])))
    largest = sizes[-1]
    x = torch.randn(largest, 3, args.size, args.size, generator=torch.Generator().manual_seed(2)).to(device)

    def attribute(n, internal=None):
        return lambda: iba.attribute(x[:n], target=0, seed=0, internal_batch_size=internal)

    attribute(1)()  # warm-up: the split is traced and checked (each row's shapes are warmed up by its memory call)
    internals = sorted({i for i in (args.internal_batch_sizes or [1, 2, 4]) if i < largest})
    calls = {(n, None): attribute(n) for n in sizes}
    calls.update({(largest, internal): attribute(largest, internal) for internal in internals})
    measured = _measured({f"N={n}, internal_batch_size={i}": fn for (n, i), fn in calls.items()}, device,
                         args.repeats)
    one_batch = measured[f"N={largest}, internal_batch_size=None"][1]
    rows = []
    for (n, internal), (seconds, maps, peak) in zip(calls, measured.values()):
        rows.append((n, internal, seconds, peak, None if internal is None else relative_difference(maps, one_batch)))

    memory = "torch.cuda.max_memory_allocated" if device.type == "cuda" else CPU_MEMORY
    print(f"\n### IBA over the batch size: DenseNet-121, {args.size} px, bottleneck after features.denseblock3, "
          f"{args.steps} steps x {args.draws} draws, speed={args.speed!r}\n")
    print(f"Unit: seconds per map (s/map), median of {args.repeats} interleaved call(s); peak memory above the "
          f"call's start ({memory}), MiB. Device: {describe_device(device)}; split {iba.split().mode}; torch "
          f"{torch.__version__}; load average {load_average()}; "
          f"captum_iba from {Path(captum_iba.__file__).parent}.\n")
    print("| N images | internal_batch_size | s/call | s/map | maps/s | peak MiB | diff vs one batch |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, internal, seconds, peak, diff in rows:
        print(f"| {n} | {internal or 'None (all N)'} | {seconds:.2f} | {seconds / n:.3f} | {n / seconds:.2f} | "
              f"{_mib(peak)} | {'-' if diff is None else format(diff, '.1e')} |")
    print("\ndiff vs one batch: max |map - map of the one-batch call| / max |map|, same seed (the maps of an "
          "internal batch equal those of one batch up to float32 rounding).")


# --------------------------------------------------------------------------- processes


def attribute(out: Path, processes: int, device: str, threads: int, options: list) -> dict:
    """Run one ``captum-iba attribute`` configuration; returns its run record with the wall time added."""
    launcher = [sys.executable, "-m", "captum_iba", "attribute"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={processes}", "-m", "captum_iba", "attribute"]
    command = [*launcher, "--out", str(out), "--device", device, "--threads", str(threads), *options]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENVIRONMENT)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    records = (out / "iba" / "runs.jsonl").read_text().splitlines()
    return {**json.loads(records[-1]), "threads": threads, "wall": wall}


def processes_part(args) -> None:
    """Maps per second of the command line for 1 and K processes."""
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
        attribute(warm, 1, "cpu", cores, ["--images", "1", *common])
        options = ["--images", str(images), *common, "--stats", str(warm / "iba" / "stats")]
        rows = []
        for i, setting in enumerate(plan):
            rows.append(attribute(scratch / f"run-{i}", *setting, options))
            print(f"{setting}: {rows[-1]['maps_per_s']:.2f} maps/s", file=sys.stderr, flush=True)

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    size = "32 px (quick)" if args.quick else "96 px"
    print(f"\n### `python -m captum_iba attribute --method iba`: embedded small DenseNet, {size}, {images} phantom "
          f"images, {steps} steps x {draws} noise draws, batches of 8\n")
    print(f"Unit: maps per second of the attribution loop (the store's record) and seconds; torch "
          f"{torch.__version__}, {cores} CPU cores ({describe_device(torch.device('cpu')).split('(', 1)[1].split(',')[0]})"
          f"{gpu}; load average {load_average()}.\n")
    print("| processes | device | threads/process | maps | loop s | maps/s | wall s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['processes']} | {row['device']} | {row['threads']} | {row['maps']} | "
              f"{row['seconds']:.1f} | {row['maps_per_s']:.2f} | {row['wall']:.1f} |")


# --------------------------------------------------------------------------- command line


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("batch", "processes", "all"), default="all",
                        help="batch: N and internal_batch_size in one process; processes: the command line "
                             "over processes; all (default)")
    parser.add_argument("--device", default=None, help="batch part: cpu or cuda (default: cuda when present)")
    parser.add_argument("--size", type=int, default=None, help="batch part: input side in pixels (default 224)")
    parser.add_argument("--steps", type=int, default=None, help="batch part: IBA steps (default 10)")
    parser.add_argument("--draws", type=int, default=10, help="batch part: noise draws per step (default 10)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="batch part: N images per call (default 1 2 4 8 CPU, 1 ... 64 GPU)")
    parser.add_argument("--internal-batch-sizes", type=int, nargs="+", default=None,
                        help="batch part: internal_batch_size values at the largest N (default 1 2 4)")
    parser.add_argument("--speed", default="default", choices=("default", "fast"), help="batch part: IBA speed preset")
    parser.add_argument("--repeats", type=int, default=None,
                        help="batch part: timed calls per row (default 3); the median is shown")
    parser.add_argument("--images", type=int, default=128, help="processes part: phantom images (default 128)")
    parser.add_argument("--quick", action="store_true",
                        help="batch: 64 px, 2 steps; processes: 32 px models, 16 images, 3 steps x 2 draws")
    args = parser.parse_args(argv)
    defaults = dict(size=64, steps=2, repeats=3) if args.quick else dict(size=224, steps=10, repeats=3)
    for name, value in defaults.items():  # options given explicitly still apply with --quick
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.part in ("batch", "all"):
        batch_part(args, pick_device(args.device))
        sys.stdout.flush()
    if args.part in ("processes", "all"):
        processes_part(args)


if __name__ == "__main__":
    main()
