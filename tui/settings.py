"""The app's own settings: ``$FINETTY_HOME/tui.yaml``.

```yaml
notifications: true          # bell + OSC 9 / OSC 777 when a run ends or crosses the memory watermark
keys: {runs.new: n, monitor.stop: s}   # rebind any binding by its id (see the help screen, F1)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from finetty.core import paths

FILE = "tui.yaml"


@dataclass
class Settings:
    notifications: bool = True
    keys: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        path = path or paths.home() / FILE
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            text = ""
        data = {}
        if text.strip():  # (yaml is imported only for a file that says something: the app's first frame waits)
            import yaml

            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError:
                data = {}
        if not isinstance(data, dict):
            data = {}
        keys = data.get("keys") if isinstance(data.get("keys"), dict) else {}
        return cls(notifications=bool(data.get("notifications", True)),
                   keys={str(k): str(v) for k, v in keys.items()}, path=path)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        import yaml

        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"notifications": self.notifications, "keys": self.keys}), encoding="utf-8")
        tmp.replace(self.path)
