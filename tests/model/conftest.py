"""Fixtures for the ImageBERT tests: a small synthetic dataset and a tiny model."""
import os

import pytest
import torch

from model.imagebert import ImageBert
from model.synthetic import write_synthetic
from imagebert_testlib import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine is shared: one intra-op thread is both kinder and, under contention, faster.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """200 synthetic images (40 held out for test), 2 captions each, D=16."""
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(str(out), images=200, feature_dim=16, test_images=40, seed=1)
    return str(out)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return ImageBert(tiny_config())
