"""Memory gauges: one bar per GPU and one for host RAM, with the watermark marked. Given data; calls no core."""

from __future__ import annotations

from typing import Iterable

from rich.text import Text
from textual.widgets import Static

GIB = 1024 ** 3


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / GIB:.1f}"


def gauge(label: str, used: int, total: int, width: int, watermark: float | None = None, peak: int | None = None,
          crossed: bool = False) -> Text:
    """Two lines: ``label used/total GiB  peak``, then a bar that turns red at or above the watermark ``│``."""
    fraction = used / total if total else 0.0
    over = crossed or (watermark is not None and fraction >= watermark)
    colour = "red" if over else ("yellow" if watermark is not None and fraction >= watermark - 0.1 else "green")
    bar_width = max(6, width)
    filled = min(bar_width, round(fraction * bar_width))
    mark = None if watermark is None else min(bar_width - 1, int(watermark * bar_width))
    text = Text(f"{label} ", style="bold")
    text.append(f"{_gib(used)}/{_gib(total)} GiB {fraction:.0%}", style="red bold" if over else "")
    if peak:
        text.append(f"  peak {_gib(peak)}", style="dim")
    if crossed:
        text.append("  ABOVE WATERMARK", style="bold red")
    text.append("\n")
    for cell in range(bar_width):
        if cell == mark:
            text.append("│", style="bold magenta")
        elif cell < filled:
            text.append("█", style=colour)
        else:
            text.append("░", style="dim")
    return text


class MemoryGauges(Static):
    """Set :meth:`show` with the GPUs (objects with index, used, total, peak, state), the host and the watermark."""

    DEFAULT_CSS = """
    MemoryGauges { height: auto; }
    """

    def on_resize(self) -> None:
        if self._last is not None:
            self.show(*self._last)

    _last = None

    def show(self, gpus: Iterable, host, watermark: float | None, policy: str | None = None) -> None:
        self._last = (list(gpus), host, watermark, policy)
        lines = Text()
        width = self.size.width or 30
        gpus = self._last[0]
        for gpu in gpus:
            lines.append_text(gauge(f"GPU{gpu.index}", gpu.used, gpu.total, width, watermark, gpu.peak,
                                    gpu.state == "crossed"))
            lines.append("\n")
        if host is not None:
            lines.append_text(gauge("RAM", host.used, host.total, width, None, host.peak))
            lines.append("\n")
        if watermark is not None:
            lines.append(f"│ watermark {watermark:.0%}" + (f" ({policy})" if policy else ""), style="magenta")
        elif not gpus and host is None:
            lines.append("no memory samples in this run", style="dim")
        lines.rstrip()
        self.update(lines)
