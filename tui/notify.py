"""Telling the person at the other end of the SSH connection: the bell and a desktop notification.

OSC 9 (iTerm2, WezTerm, Windows Terminal, kitty, foot) and OSC 777 (rxvt-unicode, VTE terminals such as
GNOME Terminal, Konsole) travel through SSH like any other output and reach the local desktop in terminals
that support them; the rest ignore them. Off when ``FINETTY_NOTIFY=0`` or ``notifications: false`` in
``$FINETTY_HOME/tui.yaml``.
"""

from __future__ import annotations

import os
from typing import Callable

from finetty.core.text import one_line

from .settings import Settings


def _clean(text: str) -> str:
    """No control characters (:func:`~finetty.core.text.one_line`): a run's reason must not end the escape
    sequence or start another; no ``;`` either, which would end an OSC 777 field."""
    return "".join(ch if ch.isprintable() and ch != ";" else " " for ch in one_line(text))[:200]


def sequences(title: str, body: str) -> str:
    """The bell, then OSC 9 and OSC 777 notifications."""
    title, body = _clean(title), _clean(body)
    return f"\a\x1b]9;{title}: {body}\x07\x1b]777;notify;{title};{body}\x07"


class Notifier:
    """Writes notifications to the terminal through ``write`` when they are on."""

    def __init__(self, write: Callable[[str], None], settings: Settings):
        self.write = write
        self.settings = settings

    @property
    def enabled(self) -> bool:
        if os.environ.get("FINETTY_NOTIFY", "").strip().lower() in ("0", "false", "no", "off"):
            return False
        return self.settings.notifications

    def __call__(self, title: str, body: str) -> bool:
        if not self.enabled:
            return False
        self.write(sequences(title, body))
        return True
