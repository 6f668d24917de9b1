"""Progress: a bar on a terminal, plain lines in a log or under ``--quiet``, and the loss in both."""

import io

import pytest

from captum_iba import _progress
from captum_iba._progress import plain_lines, progress
from captum_iba.app.cli import main


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def every_item(monkeypatch):
    monkeypatch.setattr(_progress, "LINE_INTERVAL_S", 0.0)  # a line per item, so each one can be checked


def test_a_log_gets_plain_lines_with_the_postfix(monkeypatch, every_item):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    seen = {"n": 0}

    def count():
        return f"seen {seen['n']}"

    for _ in progress(range(3), desc="work", unit="batch", postfix=count):
        seen["n"] += 1
    lines = log.getvalue().splitlines()
    assert lines == ["work: 1/3 batch, seen 1", "work: 2/3 batch, seen 2", "work: 3/3 batch, seen 3",
                     "work: 3/3 batch, seen 3 done"]
    assert "\r" not in log.getvalue()


def test_plain_lines_replace_the_bar_on_a_terminal(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert list(progress(range(4), desc="bar")) == [0, 1, 2, 3]
    assert "\r" in terminal.getvalue()  # tqdm redraws its bar in place
    terminal.seek(0)
    terminal.truncate()
    with plain_lines():
        assert list(progress(range(4), desc="lines")) == [0, 1, 2, 3]
    assert terminal.getvalue() == "lines: 4/4 it done\n"
    assert not _progress._PLAIN_LINES.get()  # the mode ends with the block


def test_disabled_progress_prints_nothing(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    assert list(progress(iter("abc"), desc="silent", enabled=False)) == ["a", "b", "c"]
    assert log.getvalue() == ""


def test_quiet_training_prints_lines_with_the_loss(tmp_path, capsys, monkeypatch, every_item):
    monkeypatch.setattr("sys.stderr", _Terminal())  # a terminal: --quiet still gives lines, not bars
    import sys

    assert main(["train", "--task", "nih", "--images", "16", "--size", "32", "--epochs", "2", "--out",
                 str(tmp_path / "m.pt"), "--quiet"]) == 0
    err = sys.stderr.getvalue()
    assert "\r" not in err
    fit = [line for line in err.splitlines() if line.startswith("fit (bce): ")]
    assert fit[-1].startswith("fit (bce): 2/2 batch, epoch 2, loss ") and fit[-1].endswith(" done"), fit
    assert float(fit[-1].split("loss ")[1].split()[0]) > 0
