"""The ``captum-iba`` command: demo, evaluate, train, attribute, verify.

Whatever stops a command -- a refused argument, a full disk, an unreadable
file, Ctrl-C or SIGTERM -- ends in one line on standard error (exit status 2
for a refused request, 1 for a full disk, 130 for SIGINT, 143 for SIGTERM);
warnings are one line each. The signal handlers are installed before the
modules that take seconds to import (torch), so that Ctrl-C in the first
seconds is one line too; the files and stores a command writes are left
consistent, and ``attribute`` releases its writer lock.

Every choice it offers comes from a registry: methods from
:data:`captum_iba.app.methods.METHODS`, datasets from
:data:`captum_iba.app.sources.DATASETS`, tasks from
:data:`captum_iba.cxr.models.checkpoints.TASKS`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings
from typing import List, Optional

# Light imports only: the rest is imported by main(), once Ctrl-C is one line.
from .._files import NO_SPACE, error_line
from .._progress import plain_lines

#: Exit status per signal: 128 + its number, as a shell reports it.
SIGNAL_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``with`` and ``finally`` runs (a writer
    lock is released); a BaseException, so that no ``except Exception`` swallows it."""


class _StopSignals:
    """The handler of SIGINT and SIGTERM while a command runs.

    The first signal raises (``KeyboardInterrupt`` or :class:`Terminated`) in
    the main thread; a second one, while the first unwinds, ends the process
    at once with one line. ``finished`` marks the time after the command
    returned (the interpreter's exit): a signal then ends the process at once.
    """

    def __init__(self) -> None:
        self.command = "captum-iba"
        self.received: Optional[int] = None
        self.finished = False

    def __call__(self, signum, frame) -> None:
        if self.received is None and not self.finished:
            self.received = signum
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()
        try:  # what the command printed so far is kept
            sys.stdout.flush()
            print(f"\n{self.command}: {_stopped(signum)}", file=sys.stderr, flush=True)
        finally:
            os._exit(SIGNAL_STATUS[signum])


def _signal_of(error: BaseException) -> int:
    return signal.SIGINT if isinstance(error, KeyboardInterrupt) else signal.SIGTERM


def _stopped(signum: int) -> str:
    return "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"


def _command_word(argv: List[str]) -> str:
    """``captum-iba COMMAND`` for messages before the arguments are parsed."""
    words = [word for word in argv if not word.startswith("-")]
    return f"captum-iba {words[0]}" if words else "captum-iba"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``PROG: error: MESSAGE (see PROG --help)``), status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {error_line(message)} (see {self.prog} --help)\n")


def _count(minimum: int, maximum: int):
    """An argparse type: an integer in [minimum, maximum] (the library's rule for counts)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"expected an integer in [{minimum}, {maximum}], got {value}")
        return value
    return parse


def _number(minimum: float, maximum: float):
    """An argparse type: a finite number in (minimum, maximum] (the library's rule for a learning rate)."""
    def parse(text: str) -> float:
        from .._validate import check_number

        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return check_number(value, "value", minimum=minimum, strict=True, maximum=maximum, below=False)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).split(": ", 1)[1]) from None
    return parse


def _add_evaluation_options(parser: argparse.ArgumentParser, images: int) -> None:
    from .._validate import SEED_RANGE
    from .attribute.plan import MAX_BATCH_SIZE, MAX_ITEMS, MAX_NOISE_DRAWS, MAX_STEPS

    items, steps = _count(1, MAX_ITEMS), _count(1, MAX_STEPS)
    parser.add_argument("--out", default="report", help="report folder (default: report/)")
    parser.add_argument("--images", type=items, default=images, help=f"held-out images per study (default {images})")
    parser.add_argument("--seed", type=_count(*SEED_RANGE), default=0,
                        help="seed of the IBA noise and random choices")
    parser.add_argument("--steps", type=steps, default=10, help="IBA optimisation steps (default 10)")
    parser.add_argument("--noise-draws", type=_count(1, MAX_NOISE_DRAWS), default=10,
                        help="IBA noise draws per image and step (default 10)")
    parser.add_argument("--batch-size", type=_count(1, MAX_BATCH_SIZE), default=8, help="images attributed together")
    parser.add_argument("--insertion-steps", type=steps, default=16, help="insertion/deletion steps (default 16)")
    parser.add_argument("--sensitivity-masks", type=steps, default=16, help="random masks per n in sensitivity-N")
    parser.add_argument("--extremal-iterations", type=steps, default=20,
                        help="TorchRay extremal perturbation iterations per image (default 20; TorchRay's is 800)")
    parser.add_argument("--readout-epochs", type=steps, default=None,
                        help="Readout IBA's training epochs (default 10); its training is most of the time of a "
                             "report on a large model, and is cached for the next report")
    parser.add_argument("--quiet", action="store_true",
                        help="progress as plain lines (at most one every 10 s) instead of bars")


def add_model_arguments(parser: argparse.ArgumentParser, *, default: str) -> None:
    """The options that choose the model and where the bottleneck goes (evaluate, attribute)."""
    group = parser.add_argument_group("model")
    group.add_argument("--checkpoint", metavar="FILE", help=f"a model written by `captum-iba train` (default: {default})")
    group.add_argument("--model", metavar="SPEC",
                       help="your own model instead: package.module:function (a factory returning an nn.Module) "
                            "or xrv:NAME (a torchxrayvision model, e.g. xrv:densenet121-res224-all, weights from "
                            "its local cache); it explains the 8 NIH findings")
    group.add_argument("--weights", metavar="FILE", help="--model factory: a state dict to load (weights_only)")
    group.add_argument("--outputs", metavar="FINDING=K,...",
                       help="--model: which output is which finding, e.g. Atelectasis=0,Cardiomegaly=1 (default: "
                            "the model's output names, or outputs 0-7 in the paper's order)")
    group.add_argument("--input-format", metavar="FORMAT",
                       help="--model: what it takes: imagenet (default for factories), xrv (default for xrv:), "
                            "or a range such as [0,1], rgb:[0,255], grey:[-1,1]")
    group.add_argument("--random-weights", action="store_true",
                       help="--model xrv:NAME: random weights instead of the cached ones (a sanity baseline)")
    group.add_argument("--layer", metavar="NAME",
                       help="the IBA family's bottleneck (default: the DenseNet dense block or ResNet stage whose "
                            "map is closest to 14x14 cells at the image size: features.denseblock3 at 224 px, "
                            "features.denseblock2 at 96 px, layer3 of a ResNet at 224 px)")
    group.add_argument("--multilayer-layers", metavar="A,B,...",
                       help="Multi-layer IBA's layers, finest first (default: the stages up to --layer)")


#: One line for ``captum-iba attribute --help``.
ATTRIBUTE_DESCRIPTION = ("One attribution method's maps for a whole dataset, in batches, sharded over "
                         "torch.distributed (torchrun) and resumable.")


#: The description of ``captum-iba verify --help``.
VERIFY_DESCRIPTION = ("Check a store written by `captum-iba attribute`: every done array against the SHA-256 "
                      "recorded when it was written, every index line, the configuration and the statistics "
                      "against their own checksums, and the done maps against the planned ones. Exit status: "
                      "0 ok (intact and complete), 1 corrupt (rerun the attribute command to repair it), "
                      "3 incomplete (intact, planned maps not done yet: rerun it to complete them), 2 not a store.")


# The commands, imported when run (they import torch); module attributes, so that tests can replace them.


def run_demo(args) -> int:
    """The paper's evaluation on the embedded phantom and its models."""
    from .commands import run_demo as run

    return run(args)


def run_evaluate(args) -> int:
    """The same evaluation on a real dataset folder and a model: a checkpoint, or your own (--model)."""
    from .commands import run_evaluate as run

    return run(args)


def run_train(args) -> int:
    """Train a DenseNet on a dataset and write a checkpoint for evaluate/attribute."""
    from .commands import run_train as run

    return run(args)


def _run_attribute(args) -> int:
    from .attribute.runner import run

    return run(args)


def _run_verify(args) -> int:
    from .store.verify import run_verify

    return run_verify(args)


def add_attribute_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``captum-iba attribute`` to ``parser`` (their numbers are checked by
    :func:`~captum_iba.app.attribute.plan.make_plan`, before anything is read or written)."""
    from ..objectives import REGRESSION_LOSSES
    from .attribute.plan import DEFAULT_NOISE_DRAWS, DEFAULT_PHANTOM_IMAGES, DEFAULT_READOUT_IMAGES, DEFAULT_STEPS
    from .methods import DEFAULT_THRESHOLD, METHODS, READOUT_TRAINING
    from .sources import DATASETS, HELD_OUT_PHANTOM_SEED

    parser.add_argument("--method", required=True, choices=list(METHODS), help="the attribution method")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the store: created, or resumed when it holds this configuration")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace this method's maps in --out when they were computed with other options")
    parser.add_argument("--verify", action="store_true",
                        help="before resuming, compare every done array's SHA-256, not only its files' presence "
                             "and sizes: damaged batches are computed again")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=list(DATASETS), default="phantom", help="default: phantom")
    data.add_argument("--root", metavar="PATH", help="the dataset folder (nih, brixia)")
    data.add_argument("--split", choices=("train", "test"),
                      help="the official split (nih, brixia); default: every item")
    data.add_argument("--task", choices=sorted({s.task for s in DATASETS.values() if s.task}),
                      help="phantom only: NIH-like findings or BrixIA-like zones (default nih; regression: brixia)")
    data.add_argument("--images", type=int, metavar="N",
                      help=f"the first N items (phantom: N images, default {DEFAULT_PHANTOM_IMAGES})")
    data.add_argument("--phantom-seed", type=int, metavar="S",
                      help=f"phantom only: seed of its images (default {HELD_OUT_PHANTOM_SEED}, held out from training)")
    data.add_argument("--size", type=int, metavar="PX", help="image side (default: the model's input size)")

    add_model_arguments(parser, default="the embedded phantom model of the task")
    model = parser.add_argument_group("targets")
    model.add_argument("--target", action="append", metavar="K",
                       help="output to explain, an index of the model's own outputs (0-17 for an 18-output "
                            "--model) or a finding name such as Effusion (repeatable, or a comma list), stored as "
                            "that output index; default: the outputs of an item's positive labels (labels, "
                            "detectors), else of its top-scoring label")
    # Hidden: recipe overrides of the embedded model, for quick runs and tests.
    model.add_argument("--embedded-overrides", metavar="KEY=INT,...", help=argparse.SUPPRESS)

    method = parser.add_argument_group("method options")
    method.add_argument("--seed", type=int, default=0, metavar="S", help="noise seed (default 0)")
    method.add_argument("--beta", type=float, metavar="B",
                        help="weight of the information loss (default: the method's; IBA's 10, readout "
                             f"{READOUT_TRAINING['beta']:g}: averaged over the phantom, beta 10 trains the readout "
                             "to all-noise maps)")
    method.add_argument("--steps", type=int, metavar="N", help=f"optimisation steps (default {DEFAULT_STEPS})")
    method.add_argument("--noise-draws", type=int, metavar="N",
                        help=f"noise draws per image and step (default {DEFAULT_NOISE_DRAWS})")
    method.add_argument("--threshold", metavar="T", help=f"multilayer: 'top:F', 'otsu' or a value (default {DEFAULT_THRESHOLD})")
    method.add_argument("--loss", choices=list(REGRESSION_LOSSES),
                        help="regression: deviation (default), maximize, or mse against the item's score")
    method.add_argument("--readout-epochs", type=int, metavar="N",
                        help=f"readout: training epochs (default {READOUT_TRAINING['epochs']}); the readout is "
                             "trained once per store, kept in it (OUT/readout/trained/readout.pt) and reused by a rerun")
    method.add_argument("--readout-images", type=int, metavar="N",
                        help=f"readout: training items (default {DEFAULT_READOUT_IMAGES}), from the data the "
                             "statistics are estimated on (phantom: the embedded models' training images; real "
                             "data: random train-split items), one row per positive label")
    method.add_argument("--stats", metavar="PATH",
                        help="saved FeatureStats: a file (one layer) or a folder of <layer>.pt files; "
                             "default: estimated by process 0 on training data")
    method.add_argument("--stats-samples", type=int, default=1000, metavar="N",
                        help="images to estimate the statistics from (default 1000)")

    _add_compute_arguments(parser.add_argument_group("compute"))


def _add_compute_arguments(compute) -> None:
    """``attribute``'s options on how the work is run (not what it computes)."""
    compute.add_argument("--batch-size", type=int, default=8, metavar="B", help="items per batch (default 8)")
    compute.add_argument("--device", default="auto",
                         help="auto (default: cuda if available), cpu, cuda; torchrun: cuda:LOCAL_RANK")
    compute.add_argument("--threads", type=int, metavar="T",
                         help="CPU threads per process (default: torch's; torchrun sets 1)")
    compute.add_argument("--workers", type=int, default=2, metavar="W", help="data loading workers (default 2)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (imports the registries: seconds, the first time)."""
    from .._validate import SEED_RANGE
    from ..cxr.models.checkpoints import TASKS
    from ..cxr.models.training import LOSSES
    from .attribute.plan import MAX_BATCH_SIZE, MAX_ITEMS, MAX_LR, MAX_SIZE, MAX_STEPS
    from .sources import DATASETS
    from .store.verify import add_verify_arguments

    items, steps, size = _count(1, MAX_ITEMS), _count(1, MAX_STEPS), _count(1, MAX_SIZE)
    parser = OneLineParser(
        prog="captum-iba",
        description="Information Bottleneck Attribution for chest X-ray models, with the paper's evaluation.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="the paper's evaluation on the embedded phantom (no download)",
                               description=run_demo.__doc__)
    _add_evaluation_options(demo, images=16)
    demo.add_argument("--auc-images", type=items, default=200, help="held-out images for Table 3's AUC/AP")
    demo.add_argument("--size", type=size, default=None, help="train the embedded models at this size (quick runs)")
    demo.add_argument("--train-images", type=items, default=None, help="phantom images to train on (quick runs)")
    demo.add_argument("--epochs", type=steps, default=None, help="training epochs (quick runs)")
    demo.add_argument("--full", action="store_true",
                      help="the layer sweep on every study image (default: a reduced sweep on 8 images)")
    demo.add_argument("--no-cue", dest="cue", action="store_false",
                      help="leave out the cue study (and the training of its three models on a first run)")
    demo.add_argument("--no-redundant", dest="redundant", action="store_false",
                      help="leave out the redundant-evidence study (and the training of its model on a first run)")
    demo.add_argument("--redundant-images", type=int, default=None,
                      help="images per two-part finding of the redundant-evidence study (default: --images, "
                           "at least the pairs a claim's verdict needs)")
    demo.set_defaults(run=run_demo)

    evaluate = commands.add_parser("evaluate", help="the evaluation on a real dataset and checkpoint",
                                   description=run_evaluate.__doc__)
    evaluate.add_argument("--dataset", choices=[n for n, s in DATASETS.items() if not s.generated], required=True)
    evaluate.add_argument("--root", required=True, help="the dataset folder")
    evaluate.add_argument("--size", type=size, metavar="PX", help="image side (default: the model's input size)")
    add_model_arguments(evaluate, default="required unless --model")
    evaluate.add_argument("--task", choices=list(TASKS), default=None,
                          help="the checkpoint's task (default: nih for --dataset nih, else brixia_regression)")
    _add_evaluation_options(evaluate, images=64)
    evaluate.set_defaults(run=run_evaluate)

    train = commands.add_parser("train", help="train a model and write a checkpoint", description=run_train.__doc__)
    train.add_argument("--task", choices=list(TASKS), required=True)
    train.add_argument("--dataset", choices=list(DATASETS), default="phantom")
    train.add_argument("--root", default=None, help="the dataset folder (nih, brixia)")
    train.add_argument("--out", required=True, help="checkpoint file to write")
    train.add_argument("--architecture", choices=["small_densenet", "densenet121"], default="small_densenet")
    train.add_argument("--loss", choices=list(LOSSES), default=None)
    train.add_argument("--images", type=items, default=3000, help="phantom training images")
    train.add_argument("--size", type=size, default=None, help="image side (default: phantom 96, real data 224)")
    train.add_argument("--epochs", type=steps, default=4)
    train.add_argument("--batch-size", type=_count(1, MAX_BATCH_SIZE), default=32)
    train.add_argument("--lr", type=_number(0.0, MAX_LR), default=5e-3, help=f"learning rate, in (0, {MAX_LR:g}]")
    train.add_argument("--seed", type=_count(*SEED_RANGE), default=0)
    train.add_argument("--quiet", action="store_true",
                       help="progress as plain lines (at most one every 10 s) instead of bars")
    train.set_defaults(run=run_train)

    attribute = commands.add_parser("attribute", help="one method's maps for a whole dataset (sharded, resumable)",
                                    description=ATTRIBUTE_DESCRIPTION)
    add_attribute_arguments(attribute)
    attribute.set_defaults(run=_run_attribute)

    verify = commands.add_parser("verify", help="check every map of an attribute store (missing, corrupt, orphaned)",
                                 description=VERIFY_DESCRIPTION)
    add_verify_arguments(verify)
    verify.set_defaults(run=_run_verify)
    return parser


def _one_line_warning(command: str):
    """A ``warnings.showwarning`` that prints ``captum-iba COMMAND: warning: MESSAGE`` on one line."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"captum-iba {command}: warning: {error_line(message)}", file=file or sys.stderr, flush=True)
    return show


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``captum-iba ARGV``; returns the exit status.

    SIGINT and SIGTERM are handled from the start (see :class:`_StopSignals`).
    Called without ``argv`` (the program itself), the handlers stay for the
    interpreter's exit, where a signal ends the process at once; called with
    ``argv`` (from Python), the previous handlers are restored on return.
    """
    stop = _StopSignals()
    stop.command = _command_word(sys.argv[1:] if argv is None else argv)
    previous = {signum: signal.signal(signum, stop) for signum in SIGNAL_STATUS}
    try:
        args = build_parser().parse_args(argv)  # imports torch: seconds
        with warnings.catch_warnings():
            # Captum and TorchRay warn on every call about torch API changes that do not affect results.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(captum|torchray|torch)\b")
            warnings.showwarning = _one_line_warning(args.command)
            # --quiet: the same progress as plain lines, at most one each 10 s, never bars.
            with plain_lines() if getattr(args, "quiet", False) else contextlib.nullcontext():
                return _run_command(args, stop)
    except (KeyboardInterrupt, Terminated) as error:  # before the command started, or after it returned
        signum = stop.received or _signal_of(error)
        print(f"{stop.command}: {_stopped(signum)}", file=sys.stderr, flush=True)
        return SIGNAL_STATUS[signum]
    finally:
        if argv is None:
            stop.finished = True
        else:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _run_command(args, stop: _StopSignals) -> int:
    """``args.run(args)``; what stops it is one line on standard error and an exit status."""
    try:
        return args.run(args)
    except (KeyboardInterrupt, Terminated) as error:  # the stores and files written are left consistent
        signum = stop.received or _signal_of(error)
        kept = "; the maps marked done are kept: rerun the same command to complete them" \
            if args.command == "attribute" else ""
        after_bar = "\n" if sys.stderr.isatty() else ""  # a progress bar or ^C may hold the line
        print(f"{after_bar}captum-iba {args.command}: {_stopped(signum)}{kept}", file=sys.stderr, flush=True)
        return SIGNAL_STATUS[signum]
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, ImportError) as error:
        print(f"captum-iba {args.command}: error: {error_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in NO_SPACE:
            raise
        print(f"captum-iba {args.command}: error: {error_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
