"""The ``finetty`` command: the parser in :mod:`.commands`, one module per command group.

``finetty`` with no arguments opens the terminal app, and nothing else is imported first: the parser,
rich's tables and the run commands cost a tenth of a second that the app's first frame would wait for."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    if not (sys.argv[1:] if argv is None else argv):
        from finetty.tui.app import run_app  # the terminal app; imported only when it is asked for

        return run_app()
    from finetty.core.cli.commands import main as run_command

    return run_command(argv)


__all__ = ["main"]
