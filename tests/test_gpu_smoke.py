"""bench/gpu_smoke.py on a machine without CUDA: one clear line and exit 0, so CPU machines can run it as-is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = Path(__file__).resolve().parent.parent / "bench" / "gpu_smoke.py"


def test_gpu_smoke_skips_cleanly_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: run bench/gpu_smoke.py itself")
    work = tmp_path / "work"
    done = subprocess.run([sys.executable, str(SMOKE), "--work", str(work)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        "gpu_smoke: skipped, no CUDA device (torch.cuda.is_available() is False)"]
    assert not work.exists()  # nothing built, nothing trained
