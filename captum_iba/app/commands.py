"""The commands that evaluate and train: ``captum-iba demo``, ``evaluate`` and ``train``.

Each takes the parsed arguments of :mod:`captum_iba.app.cli` and returns an
exit status; the report itself is :mod:`captum_iba.app.report.render`'s.
"""

from __future__ import annotations

import torch

from ..cxr.models.checkpoints import TASKS
from .report.evaluation import EvaluationSettings
from .attribute.plan import layer_options, model_options
from .sources import DATASETS, HELD_OUT_PHANTOM_SEED, TRAINING_PHANTOM_SEED, choose_layers, image_size

__all__ = ["run_demo", "run_evaluate", "run_train"]

#: Images of the demo's layer sweep unless ``--full``: the sweep attributes 3 methods at every stage.
REDUCED_SWEEP_IMAGES = 8
#: Held-out phantom items searched for images that carry the cue (not rendered until chosen).
CUE_POOL = 1000
#: Held-out phantom items searched for images that show both parts of a two-part finding.
REDUNDANT_POOL = 1000


def _settings(args) -> EvaluationSettings:
    return EvaluationSettings(batch_size=args.batch_size, insertion_steps=args.insertion_steps,
                              sensitivity_masks=args.sensitivity_masks, seed=args.seed)


def _suite_options(args) -> dict:
    options = {"iba_options": {"steps": args.steps, "noise_draws": args.noise_draws},
               "extremal_iterations": args.extremal_iterations}
    if args.readout_epochs is not None:
        options["training_options"] = {"readout": {"epochs": args.readout_epochs}}
    return options


def _print_summary(results: dict, out: str) -> None:
    from .report.render import headline_table

    print(f"\nreport written to {out}/report.md ({results['seconds_total']:.0f} s)")
    if "nih" in results:
        print(headline_table(results))
    for claim in results["claims"]:  # the verdict with what it rests on: the pairs, the model's quality
        model = f"; model {claim['model']}" if claim["model"] else ""
        print(f"- {claim['claim']}: {claim['verdict']} ({claim['measured']}{model})")


def run_demo(args) -> int:
    """The paper's evaluation on the embedded phantom and its models."""
    from ..cxr import EMBEDDED_MODELS, PhantomCXR, load_embedded_model
    from ..cxr.models.embedded import CUE_FINDING, CUE_MODELS, REDUNDANT_MODELS, REDUNDANT_PHANTOM, VIT_MODELS
    from .report.render import ReportInputs, run_report
    from .report.studies import MIN_CLAIM_PAIRS

    overrides = {k: v for k, v in (("size", args.size), ("train_images", args.train_images),
                                   ("test_images", args.train_images), ("epochs", args.epochs)) if v}
    models = {}
    for name in (*EMBEDDED_MODELS, *(CUE_MODELS if args.cue else ()), *(REDUNDANT_MODELS if args.redundant else ()),
                 *(VIT_MODELS if _has_timm() else ())):
        models[name] = load_embedded_model(name, **overrides)
        print(f"model {name}: {_quality(models[name].metrics)}")
    size = models["nih_bce"].input_size
    layers = choose_layers(models["nih_bce"], size)
    auc_images = max(args.images, args.auc_images)
    sweep_images = args.images if args.full else min(args.images, REDUCED_SWEEP_IMAGES)
    sweep_kind = "complete" if args.full else "reduced: `captum-iba demo --full` runs it on every study image"
    # The cue and redundant-evidence studies are claims' tests: at least the pairs a verdict needs.
    cue_images = max(args.images, MIN_CLAIM_PAIRS)
    redundant_images = args.redundant_images or cue_images
    inputs = ReportInputs(
        models=models,
        nih=PhantomCXR(auc_images, size=size, seed=HELD_OUT_PHANTOM_SEED, task="nih"),
        brixia=PhantomCXR(args.images, size=size, seed=HELD_OUT_PHANTOM_SEED, task="brixia"),
        nih_estimation=PhantomCXR(256, size=size, seed=TRAINING_PHANTOM_SEED, task="nih"),
        brixia_estimation=PhantomCXR(256, size=size, seed=TRAINING_PHANTOM_SEED, task="brixia"),
        images=args.images,
        auc_images=auc_images,
        description=(f"Embedded default: the procedural chest X-ray phantom at {size} px and the embedded "
                     f"models trained on it (captum_iba.cxr). Evaluated on held-out phantom images "
                     f"(seed {HELD_OUT_PHANTOM_SEED}): {args.images} per study, {auc_images} for AUC/AP, "
                     f"{sweep_images} for the layer sweep ({sweep_kind}), {cue_images} for the cue study, "
                     f"{redundant_images} per two-part finding for the redundant-evidence study. "
                     f"Command: `captum-iba demo --images {args.images} --seed {args.seed}"
                     f"{' --full' if args.full else ''}`."),
        suite_options={**_suite_options(args), **layers.suite_options()},
        sweep_images=sweep_images,
        cue=PhantomCXR(CUE_POOL, size=size, seed=HELD_OUT_PHANTOM_SEED, task="nih", cue=CUE_FINDING)
        if args.cue else None,
        cue_images=cue_images,
        redundant=PhantomCXR(REDUNDANT_POOL, size=size, seed=HELD_OUT_PHANTOM_SEED, task="nih", **REDUNDANT_PHANTOM)
        if args.redundant else None,
        redundant_images=redundant_images,
    )
    results = run_report(inputs, args.out, _settings(args))
    _print_summary(results, args.out)
    return 0


def _has_timm() -> bool:
    """The embedded ViTs are timm models: without the extra the demo says so and runs the rest."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        print("the ViT study is left out: it needs timm (pip install 'captum-iba[timm]')")
        return False
    return True


def _quality(metrics: dict) -> str:
    if "mae" in metrics:
        return f"MAE {metrics['mae']:.2f} on {metrics['n']} held-out phantom images"
    return f"mean AUC {metrics['mean_auc']:.3f}, mean AP {metrics['mean_ap']:.3f} on {metrics['n']} held-out images"


def run_evaluate(args) -> int:
    """The same evaluation on a real dataset folder and a model: a checkpoint, or your own (--model)."""
    from .report.render import ReportInputs, run_report
    from .sources import open_dataset, open_model

    if args.checkpoint is None and args.model is None:
        raise ValueError("evaluate needs a model: --checkpoint FILE (from `captum-iba train`) or --model SPEC")
    key = DATASETS[args.dataset].task  # what its items carry: "nih" or "brixia"
    task = args.task or ("nih" if key == "nih" else "brixia_regression")
    model = open_model(task, args.checkpoint, **model_options(args))
    size = image_size(model, args.size)
    layers = choose_layers(model, size, *layer_options(args))
    name = {"nih": "nih_bce", "brixia_regression": "brixia_regression", "brixia_detectors": "brixia_detectors"}[task]
    boxed = key == "nih"  # localisation needs the images with boxes
    test = open_dataset(args.dataset, args.root, size=size, split="test", boxed=boxed)
    train = open_dataset(args.dataset, args.root, size=size, split="train")
    estimation = torch.utils.data.Subset(
        train, torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:256].tolist())
    inputs = ReportInputs(
        models={name: model}, images=args.images, auc_images=max(args.images, 200),
        description=(f"{args.dataset} at {args.root}, model {args.model or args.checkpoint} ({task}) at {size} px; "
                     f"{args.images} test-split images per study" + (" (images with boxes)" if boxed else "") + "; "
                     f"bottleneck `{layers.bottleneck}` ({layers.grid[0]}x{layers.grid[1]} cells)."),
        suite_options={**_suite_options(args), **layers.suite_options()},
        **{key: test, f"{key}_estimation": estimation},
    )
    results = run_report(inputs, args.out, _settings(args))
    _print_summary(results, args.out)
    return 0


def run_train(args) -> int:
    """Train a DenseNet on a dataset and write a checkpoint for evaluate/attribute."""
    from ..cxr import densenet121_cxr, fit, evaluate, small_densenet
    from ..cxr.models.checkpoints import save_model
    from .sources import open_dataset

    target, outputs = TASKS[args.task]
    phantom_task = "nih" if args.task == "nih" else "brixia"
    size = args.size or (None if DATASETS[args.dataset].generated else 224)
    train = open_dataset(args.dataset, args.root, task=phantom_task, size=size, n=args.images, seed=0, split="train")
    test = open_dataset(args.dataset, args.root, task=phantom_task, size=size, n=max(64, args.images // 5), seed=1,
                        split="test")
    size = train[0]["image"].shape[-1]
    if args.architecture == "densenet121":
        model, architecture = densenet121_cxr(outputs), {"name": "densenet121"}
    else:
        model, architecture = small_densenet(outputs), {"name": "small_densenet"}
    loss = args.loss or ("mse" if target == "score" else "bce")
    fit(model, train, loss, target=target, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed)
    quality = evaluate(model, test, target=target)
    save_model(model, args.out, task=args.task, architecture=architecture, input_size=size)
    print(f"wrote {args.out}: {args.task} model, {_quality(quality)}")
    return 0
