"""Every code block of README.md, run in the README's order in one folder, as a reader would.

What the README leaves to its reader is made here and stated in one place:

- **Python blocks** run in one namespace, the blocks after one another (a reader's session:
  ``iba`` of the IBA block is the one the Inverse IBA block reuses). Before each block, its
  entry of :data:`SETUP` (found by a line of the block) puts the names the README assumes:
  ``model`` (a DenseNet with ``features.denseblock1..4``, random weights: a model nobody
  trained here), ``train_loader`` ((image, label) batches), ``images``, ``severity_model``, ...
- **Shell blocks** run every command line: ``captum-iba`` through its entry point in this
  process, ``torchrun`` and ``make`` as subprocesses. The README's folders are made as the
  README says they look: ``/data/ChestX-ray8`` an NIH folder in the official layout,
  ``/data/BrixIA`` a BrixIA folder, ``mylab/models.py`` a factory module in the current folder
  with ``densenet121_nih.pt`` its state dict, the torchxrayvision weights a pickled model in
  ``~/.torchxrayvision/models_data/`` (``HOME`` is this test's folder), and every ``*.pt``
  checkpoint the README says comes from ``captum-iba train`` is written by ``captum-iba train``.
  On this 2-core machine without GPUs, :func:`_at_test_size` appends the options that make a
  command small (image side, images, steps) and caps torchrun's processes per node at 2; the
  two-node launch runs both nodes here. ``make demo`` and ``make test`` are checked with
  ``make -n`` (the suite is what ``make test`` runs; ``tests/test_cli_demo.py`` runs the demo).
- **The store layout** (the one unlabelled block) is checked against the store the shell blocks
  wrote: every file and folder it lists is there.

A README block that no rule here covers fails :func:`test_every_block_has_a_rule`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from _realdata import NIH_IMAGES, write_brixia_folder, write_nih_folder
from torch.utils.data import DataLoader, TensorDataset

from captum_iba.app.cli import main
from captum_iba.cxr import small_densenet

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.lang or 'text'}"


def readme_blocks():
    text = README.read_text()
    return [Block(text[: m.start()].count("\n") + 1, m.group(1), m.group(2))
            for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


BLOCKS = readme_blocks()


# What the Python blocks assume. Each setup returns the names it puts in the namespace.


def _images(n, size=64, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _loader(n, size=64, outputs=8):
    labels = torch.randint(0, 2, (n, outputs), generator=torch.Generator().manual_seed(1)).float()
    return DataLoader(TensorDataset(_images(n, size, seed=1), labels), batch_size=8)


def _densenet(outputs=8):
    torch.manual_seed(0)
    return small_densenet(outputs).eval()


class _DictOutput(torch.nn.Module):
    """A model that returns a dict, as HuggingFace's ModelOutput; its trunk is ``features``."""

    def __init__(self):
        super().__init__()
        net = _densenet()
        self.features, self.classifier = net.features, net

    def forward(self, x):
        return {"logits": self.classifier(x)}


def _classifier(ns):
    return {"model": _densenet(), "train_loader": _loader(32), "images": _images(3)}


def _dict_model(ns):
    return {"model": _DictOutput(), "loader": _loader(16), "images": _images(4)}


def _vit(ns):
    return {"train_loader": _loader(4, size=224), "images": _images(1, size=224)}


def _methods(ns):
    return {"model": _densenet(), "train_loader": _loader(32), "images": _images(3), "effusion_index": 2,
            "nodule_index": 5, "severity_model": _densenet(outputs=1), "brixia_scores": torch.rand(3) * 18}


def _torchray(ns):
    return {"x": _images(2), "target": 2}


def _metrics(ns):
    bits = ns["bits"]
    masks = torch.zeros(len(bits), 1, 64, 64)
    masks[..., 16:40, 8:30] = 1
    # ``bits`` is the TorchRay block's map of ``x``: the metrics score it on those images.
    return {"regressor": ns["severity_model"], "masks_or_boxes": masks, "masks": masks, "images": ns["x"],
            "target": [2, 5][: len(bits)], "severity_maps": torch.rand(len(bits), 1, 64, 64)}


#: A line of a Python block -> the setup run before it.
SETUP = {
    'iba = IBA(model, model.features.denseblock3, loss="bce")   # multilabel': _classifier,
    'iba = IBA(lambda x: model(x)["logits"]': _dict_model,
    'vit = timm.create_model(': _vit,
    "from captum_iba import IBA\niba = IBA(model": _methods,
    "cam = grad_cam(model, x, target": _torchray,
    "curves = insertion_deletion(": _metrics,
}


def _setup_of(block):
    found = [setup for marker, setup in SETUP.items() if marker in block.text]
    return found[0] if len(found) == 1 else None


# The shell blocks: what a command line needs here.


def _commands(block):
    """The block's commands: comments dropped, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", block.text)
    return [line.split("#")[0].strip() for line in joined.splitlines() if line.split("#")[0].strip()]


#: Options appended to each ``captum-iba`` subcommand (the last of an option wins): small enough for the suite.
TEST_SIZE = {
    "evaluate": ["--size", "32", "--images", "1", "--steps", "2", "--noise-draws", "2", "--insertion-steps", "4",
                 "--sensitivity-masks", "2", "--extremal-iterations", "2", "--readout-epochs", "1", "--quiet"],
    "attribute": ["--size", "32"],
    "train": ["--size", "32", "--epochs", "1", "--quiet"],
    "verify": [],
}
#: The embedded model at the test's size (a hidden option, the recipe's overrides), and the phantom's images.
EMBEDDED = ["--embedded-overrides", "size=32,train_images=64,test_images=16,epochs=1", "--images", "8"]


#: ``attribute``'s options for the methods they apply to (the others refuse them): option -> value.
METHOD_SIZE = {"steps": "2", "noise_draws": "2"}


def _at_test_size(argv):
    from captum_iba.app.methods import METHODS

    command = argv[0]
    extra = list(TEST_SIZE[command])
    if command == "attribute":
        method = METHODS[argv[argv.index("--method") + 1]]
        extra += [item for name, value in METHOD_SIZE.items() if name in method.options
                  for item in (f"--{name.replace('_', '-')}", value)]
        extra += ["--stats-samples", "8"] if method.layers else []
    if command in ("evaluate", "attribute") and "--checkpoint" not in argv and "--model" not in argv:
        extra += EMBEDDED
    return [*argv, *extra]


#: What each make target the README names runs (as ``make -n`` prints it).
MAKE_RUNS = {"demo": "captum-iba demo", "test": "pytest"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shell:
    """Runs the README's command lines in the session's folder."""

    def __init__(self, folder, paths, env):
        self.folder, self.paths, self.env = folder, paths, env
        self.last_attribute = {}  # --out -> the arguments of the last attribute run into it

    def substitute(self, line):
        for readme_path, here in self.paths.items():
            line = line.replace(readme_path, str(here))
        return line

    def run(self, line):
        line = self.substitute(line)
        argv = shlex.split(line)
        if argv[0] == "make":
            done = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            assert MAKE_RUNS[argv[1]] in done.stdout, done.stdout
        elif argv[0] == "captum-iba":
            self.captum_iba(argv[1:])
        elif argv[0] == "torchrun":
            self.torchrun(argv)
        else:
            raise AssertionError(f"README command without a rule in tests/test_readme.py: {line}")

    def captum_iba(self, argv):
        if "..." in argv:  # "attribute ... --out DIR --verify": the arguments of the run into DIR
            out = argv[argv.index("--out") + 1]
            position = argv.index("...")
            argv = [*argv[:position], *self.last_attribute[out], *argv[position + 1:]]
        if argv[0] == "attribute":
            out = argv[argv.index("--out") + 1]
            self.last_attribute[out] = [a for a in argv[1:] if a not in ("--out", out)]
        assert main(_at_test_size(argv)) == 0, argv
        if argv[0] == "evaluate":
            _check_report(self.folder / "report", argv)

    def torchrun(self, argv):
        options, module = argv[1:argv.index("-m")], argv[argv.index("-m"):]
        options = [re.sub(r"--nproc_per_node=\d+", "--nproc_per_node=2", o) for o in options]
        module = module[:2] + _at_test_size(module[2:])
        if "--nnodes=2" not in options:
            done = subprocess.run([str(BIN / "torchrun"), *options, *module], cwd=self.folder, env=self.env,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            return
        port = _free_port()
        options = [o.replace("--nproc_per_node=2", "--nproc_per_node=1").replace("host0:29400", f"127.0.0.1:{port}")
                   for o in options]
        nodes = [subprocess.Popen([str(BIN / "torchrun"), *[o.replace("$NODE_RANK", str(rank)) for o in options],
                                   *module], cwd=self.folder, env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
        for node in nodes:
            _, stderr = node.communicate(timeout=600)
            assert node.returncode == 0, stderr[-3000:]


def _check_report(out, argv):
    """What every report of ``evaluate`` holds: the IBA family scored, every method scored or listed with its error."""
    from captum_iba.app.methods import METHODS

    results, report = json.loads((out / "results.json").read_text()), (out / "report.md").read_text()
    study = results["regression" if "brixia" in argv else "nih"]
    assert {"iba", "inverse"} & set(study["scores"]) or "regression_deviation" in study["scores"]
    for name, error in study["failed"].items():  # said, not hidden
        assert METHODS[name].label in report and error.split(":")[0] in report
    if "xrv:densenet121-res224-all" in argv:  # torchxrayvision's DenseNet sees 224 px: dense block 3 is 14x14
        assert results["layers"]["bottleneck"] == "features.denseblock3" and results["layers"]["grid"] == [14, 14]
        assert {"gradcam", "excitation_backprop"} <= set(study["scores"])


# The session: one folder, the reader's files in it, one namespace.


#: The official layout's images, 00000003_000.png with an Effusion (output 2) as the README's store example reads.
README_NIH = tuple(replace(image, labels="Effusion|Nodule") if image.name == "00000003_000.png" else image
                   for image in NIH_IMAGES)

_FACTORY = '''\
import torchvision


def densenet121():
    """torchvision's DenseNet-121 with the 8 findings as outputs."""
    return torchvision.models.densenet121(weights=None, num_classes=8)
'''


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reader")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("HOME", str(folder))  # torchxrayvision's cache: ~/.torchxrayvision/models_data
        patch.setenv("CAPTUM_IBA_CACHE", str(folder / "cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("OMP_NUM_THREADS", "1")
        data = folder / "data"
        nih = write_nih_folder(data / "ChestX-ray8", label_file="Data_Entry_2017_v2020.csv", images=README_NIH)
        brixia = write_brixia_folder(data / "BrixIA")
        (folder / "shared").mkdir()
        # The user's own model: a package in the current folder and its weights.
        (folder / "mylab").mkdir()
        (folder / "mylab" / "__init__.py").write_text("")
        (folder / "mylab" / "models.py").write_text(_FACTORY)
        patch.syspath_prepend(str(folder))
        import mylab.models

        torch.manual_seed(0)
        torch.save(mylab.models.densenet121().state_dict(), folder / "densenet121_nih.pt")
        # torchxrayvision's cache holds its models pickled whole.
        import torchxrayvision as xrv

        from captum_iba.cxr.models.xrv import xrv_weights_path

        weights = xrv_weights_path("densenet121-res224-all")
        weights.parent.mkdir(parents=True)
        torch.save(xrv.models.DenseNet(weights=None, num_classes=18), weights)
        # The checkpoints the README says `captum-iba train` writes.
        for name in ("nih.pt", "nih_densenet121.pt"):
            assert main(["train", "--task", "nih", "--dataset", "nih", "--root", str(nih), "--out", name,
                         *TEST_SIZE["train"]]) == 0
        shutil.copy(folder / "nih_densenet121.pt", folder / "shared" / "nih_densenet121.pt")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(folder)])}
        paths = {"/data/ChestX-ray8": nih, "/data/BrixIA": brixia,
                 "/shared/": f"{folder / 'shared'}/"}
        yield {"folder": folder, "namespace": {}, "shell": Shell(folder, paths, env)}
    from captum_iba.app.methods import METHODS

    METHODS.pop("strict_iba", None)  # the README's registration example, undone for the other tests
    for name in [name for name in sys.modules if name == "mylab" or name.startswith("mylab.")]:
        del sys.modules[name]  # the reader's package: another test's mylab is another folder's


def test_every_block_has_a_rule():
    """Each SETUP entry belongs to one block (blocks without one continue the session), and every
    block is Python, shell or the store layout."""
    assert BLOCKS, "no code block found in README.md"
    for marker in SETUP:
        owners = [block.line for block in BLOCKS if marker in block.text]
        assert len(owners) == 1, f"SETUP entry {marker!r} matches the README blocks at lines {owners}"
    for block in BLOCKS:
        assert block.lang in ("python", "bash", ""), f"README block at line {block.line}: language {block.lang!r}"
    assert sum(block.lang == "" for block in BLOCKS) == 1, "one unlabelled block: the store layout"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_readme_block(block, session):
    if block.lang == "python":
        namespace = session["namespace"]
        setup = _setup_of(block)
        if setup is not None:
            namespace.update(setup(namespace))
        exec(compile(block.text, f"README.md:{block.line}", "exec"), namespace)
    elif block.lang == "bash":
        for line in _commands(block):
            session["shell"].run(line)
    else:
        _check_store_layout(block, session["folder"] / "runs" / "nih-test")


def _check_store_layout(block, store):
    """Every file and folder the layout lists is in the store the README's commands wrote.

    ``OUT`` is ``runs/nih-test``, ``<method>`` its Inverse IBA folder (a method with statistics),
    other ``<...>`` any name, the batch number of ``b000012-`` any batch. Not checked: ``trained/`` (a method that learns, the readout, has
    it) and ``<method>.lock`` (there only while a run writes).
    """
    parents, checked = {}, 0
    for line in block.text.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not re.fullmatch(r"[\w<>.-]+(/[\w<>.-]*)?/?", name) or name.startswith(("trained", "<method>.lock")):
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        parent = parents.get(depth - 1, store.parent)
        pattern = re.sub(r"^b\d{6}-", "b??????-", name.rstrip("/").replace("OUT", store.name).replace("<method>", "inverse"))
        found = sorted(parent.glob(re.sub(r"<[^>]+>", "*", pattern)))
        assert found, f"README store layout: {name} (at {parent}) is not in the store"
        parents[depth] = found[0]
        checked += 1
    assert checked == 9, checked  # OUT, its marker, <method> and its six entries
    assert json.loads((store / "captum-iba-attribute.json").read_text()) == {"format": "captum_iba.attribute/1"}
