"""Fixtures the demo test files share."""
import shutil

import pytest

from demo.site import build_site
from demo_runfolder import make_run


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A balanced hand-made run folder (24 scenes, no training), made once per test module."""
    run_dir = tmp_path_factory.mktemp("run")
    make_run(run_dir, build_site(seed=2, scenes=24), with_training=False)
    return str(run_dir)


@pytest.fixture
def run_copy(good_run, tmp_path):
    """A copy of ``good_run`` for a test to damage."""
    return shutil.copytree(good_run, tmp_path / "run")
