"""Shared test configuration: hypothesis profiles and the fixtures several test modules use.

``quick`` (the default, for CI and ``make test``) keeps the property suites
well under a minute; ``HYPOTHESIS_PROFILE=thorough`` runs many more examples.

Helper modules (``_toys.py``, ``_realdata.py``, ``_store_worker.py``) are
imported by name: ``tests/`` is on ``sys.path`` through ``pythonpath`` in
``pyproject.toml``'s ``[tool.pytest.ini_options]``, whatever the directory
pytest is started from.
"""

import os

import pytest
from _realdata import BRIXIA_HEADER, gradient, write_nih_folder
from hypothesis import HealthCheck, settings
from PIL import Image

settings.register_profile(
    "quick", max_examples=8, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A model cache of this module's own: the user's is never touched."""
    folder = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPTUM_IBA_CACHE", str(folder))
        yield folder


@pytest.fixture
def nih_root(tmp_path):
    """An NIH ChestX-ray8 folder in the official format (``_realdata.NIH_IMAGES``; two listed images absent)."""
    return write_nih_folder(tmp_path / "nih")


@pytest.fixture
def brixia_root(tmp_path):
    """A BrixIA folder of PNG and JPG images only (no pydicom needed): three rows, one score missing its leading 0."""
    root = tmp_path / "brixia"
    (root / "png").mkdir(parents=True)
    (root / "jpg").mkdir()
    Image.fromarray(gradient(120, 100)).save(root / "png" / "1001.png")
    Image.fromarray(gradient(64, 64)).save(root / "png" / "1002.png")
    Image.fromarray(gradient(64, 64)).save(root / "jpg" / "1003.jpg")
    rows = [
        "1001.dcm;20200301;CR;100;120;Carestream;MONOCHROME2;012321;9;0;1;11;M;65",
        "1002.dcm;20200302;DX;64;64;Agfa;MONOCHROME1;333000;9;1;2;12;F;70",
        "1003.dcm;20200303;CR;64;64;Agfa;MONOCHROME2;12221;8;0;3;13;F;50",  # a spreadsheet dropped the leading 0
    ]
    (root / "metadata_global_v2.csv").write_text("\n".join([BRIXIA_HEADER] + rows) + "\n")
    return root
