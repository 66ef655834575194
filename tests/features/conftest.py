"""Setup shared by the features tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test process, as in tests/model: the suite runs one pytest worker per core, and two
    OpenMP threads each on a shared 2-core machine wait on each other's barriers (ResNet-101 to C4 on three 96 px
    images: 0.2 s on one thread, 1 to 8 s on two). Results do not depend on it; subprocesses set OMP_NUM_THREADS."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
