"""Logs a person can read: worker.log holds finetty's lines, each warning once, and errors; no progress bars."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from .conftest import RECIPES, finetty, only_run

NOISE = """
import logging, warnings
from finetty.core.train import logs
print("quiet", logs.quiet_libraries(), flush=True)
from transformers.utils import logging as transformers_logging
library = transformers_logging.get_logger("transformers.modeling_utils")

def here():
    warnings.warn("the same python warning", FutureWarning)

def there():
    warnings.warn("the same python warning", FutureWarning)

for _ in range(3):
    library.warning("the same library warning")
    here()
    there()
    library.error("an error, every time")
"""


def _noise(env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", NOISE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def test_each_library_warning_once_and_every_error_and_a_switch_that_keeps_them():
    quiet = _noise({"FINETTY_LIBRARY_LOGS": ""})
    assert "quiet True" in quiet
    assert quiet.count("the same library warning") == 1, quiet
    assert quiet.count("the same python warning") == 1, quiet  # raised from two places: still once
    assert quiet.count("an error, every time") == 3, quiet

    kept = _noise({"FINETTY_LIBRARY_LOGS": "1"})
    assert "quiet False" in kept
    assert kept.count("the same library warning") == 3, kept
    assert kept.count("the same python warning") == 2, kept  # Python's default: once per place


def warning_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Warning:" in line or line.startswith(("WARNING", "warning"))]


@pytest.mark.slow
def test_a_real_runs_worker_log_has_no_progress_bars_and_no_warning_twice(tmp_path, demo_model):
    runs = tmp_path / "runs"
    result = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs),
                     "--set", "train.max_steps=3", "--set", "train.logging_steps=1", "--set", "train.save_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (only_run(runs) / "worker.log").read_text(encoding="utf-8", errors="replace")
    assert "\r" not in log and "it/s]" not in log and "s/it]" not in log, log[-3000:]
    repeated = [line for line, n in Counter(warning_lines(log)).items() if n > 1]
    assert not repeated, log[-3000:]
