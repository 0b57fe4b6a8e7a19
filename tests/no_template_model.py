"""A base model without a chat template: the tiny demo with its template taken out of the tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def without_template(demo_model: Path, target: Path) -> Path:
    """A copy of the demo model folder whose tokenizer has no chat template (as many base models ship)."""
    shutil.copytree(demo_model, target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    config = target / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    return target
