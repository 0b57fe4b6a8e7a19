"""Discovering plugins, validating a recipe and listing runs import no torch (checked in a fresh process)."""

import subprocess
import sys

from .conftest import RECIPES

CODE = f"""
import sys
from finetty.core.cli import commands as cli
from finetty.core.recipe import recipe
from finetty.core.run import rundir
from finetty.core.plugin.registry import load_plugins
reg = load_plugins()
recipe.load({str(RECIPES / 'demo-lora.yaml')!r}, [], reg)
cli.main(["runs"])
cli.main(["plugins"])
heavy = sorted(m for m in ("torch", "transformers", "peft", "datasets", "bitsandbytes") if m in sys.modules)
print("HEAVY", heavy)
"""


def test_discovery_and_validation_import_no_torch():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
