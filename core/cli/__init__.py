"""The ``finetty`` command: the parser in :mod:`.commands`, one module per command group."""

from finetty.core.cli.commands import main

__all__ = ["main"]
