"""The default relevance model, trained once per test run and shared: the relevance tests and the filter's
end-to-end test load it (``tests/conftest.py`` makes these fixtures available to every test)."""
from __future__ import annotations

import os

import pytest

from tests.relevance.scenes import make_pairs


@pytest.fixture(scope="session")
def train_rows() -> list[dict]:
    """600 crawled pairs on 150 pages, 15% of them planted mismatches (weak positives)."""
    return make_pairs(150, seed=1)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, train_rows) -> str:
    """A relevance model trained on ``train_rows`` with the default recipe (read-only for the tests).

    Trained once per test run (about 40 s of CPU): pytest-xdist's worker processes each have their own
    session, so the first to get here trains it in the base folder they share, under a lock, and the others
    wait for it and load the same files.

    Its three members train one after the other in this process (``processes=1``): the same weights as in member
    processes (``test_ensemble_averages_its_members_and_saves_as_one_model``), without the 4 s of CPU each member
    process spends importing torch (and torch._dynamo, which AdamW imports): 40 s of CPU instead of 60, on a
    2-core machine whose other core runs the other test worker.
    """
    from filelock import FileLock

    from filters.relevance.config import TrainConfig
    from filters.relevance.train import train

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # each worker's base folder lies in the run's own
    out = shared / "relevance-default-model"
    with FileLock(str(shared / "relevance-default-model.lock")):
        if not out.exists():
            partial = shared / "relevance-default-model.partial"
            summary = train(train_rows, str(partial), TrainConfig(processes=1))
            assert summary["trained_on"] + summary["held_out"] == len(train_rows)
            os.replace(partial, out)
    return str(out)
