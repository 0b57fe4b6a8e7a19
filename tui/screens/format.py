"""Small text helpers shared by the screens."""

from __future__ import annotations

from rich.text import Text

STATUS_STYLES = {"running": "bold green", "starting": "green", "finished": "cyan", "failed": "bold red",
                 "lost": "bold red", "stopped": "yellow", "stalled": "bold yellow", "reading": "dim"}


def status_text(status: str, label: str | None = None) -> Text:
    """A status styled by its kind; ``label`` is how it reads when it says more (``stalled (for 42 s)``)."""
    return Text(label or status, style=STATUS_STYLES.get(status, ""))


def duration(seconds: float | None) -> str:
    """``42s``, ``12:05``, ``3:02:07``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def count(n: int | None) -> str:
    """``1.3M``, ``8.0B``."""
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
