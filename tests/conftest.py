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

    return {name: load_pipeline(name) for name in ("tiny-unet", "tiny-class-unet", "tiny-sd", "tiny-sdxl", "tiny-dit")}
