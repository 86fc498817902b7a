import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

# $OMP_NUM_THREADS when set (CI sets 2), else at most 2: the suite is sized for a 2-core machine.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="session")
def tiny_pipes():
    """Every tiny pipeline family, built once per session (they are never modified by tests)."""
    from denoisefeat.models import load_pipeline
    from denoisefeat.tiny import TINY_BUILDERS

    return {name: load_pipeline(name) for name in TINY_BUILDERS}


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: tiny models run ~10x slower on two threads of a busy 2-core machine.

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; the setting is restored after.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
