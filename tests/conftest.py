"""Shared test set-up: never touch the network; GPU tests skip cleanly without CUDA."""

import os

# Tests (and the notebook kernels nbval starts, which inherit this environment) stay offline.
os.environ.setdefault("ATTENTION_LAB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# No OMP_NUM_THREADS here: every chapter that trains or times sets its own threads (as a user's machine would
# run it), so the tests see each chapter's real cost; library tests with tiny tensors use the one_thread fixture.

import pytest
import torch

# Without a GPU, Triton kernels run under the interpreter on CPU tensors. The flag must be set before any
# module defining kernels is imported, so it is set here, once, for every test file and notebook kernel.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one CPU thread avoids waking others and oversubscribing a busy 2-core machine.

    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
